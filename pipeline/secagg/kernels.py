"""The coordinator's vectorized kernels: sum masked vectors, regenerate and remove masks.

The coordinator's work per round is O(n * d) for n sites and d ring elements: summing
the masked vectors, then regenerating from recovered seeds and removing the surviving
sites' self masks and the pairwise masks shared with dropped sites. Both are single
jitted calls here (the masks of all seeds come from one ``vmap``-ed ChaCha20 call,
reduced chunk by chunk), so they run unchanged on a GPU when JAX has one.

Ring arithmetic wraps modulo 2^bits. Ring.R32 uses uint32 natively. Ring.R64 uses
(lo, hi) uint32 pairs with explicit carries (see :mod:`pipeline.secagg.pairs`), because
JAX has no uint64 unless the global ``jax_enable_x64`` flag is set, which library code
must not flip. Inputs and outputs are numpy arrays of the ring's dtype; the pair
representation never leaks out of this module.

Sign convention of :func:`unmask`: ``pair_signs[i]`` is the sign with which a surviving
site *added* ``PRG(pair_seeds[i])`` to its masked input; self masks were added with +1.
Unmasking removes them all: ``total - sum PRG(self) - sum pair_signs[i] * PRG(pair_i)``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.errors import ConfigurationError
from pipeline.secagg import chacha20, masks
from pipeline.encoding import Ring
from pipeline.secagg.pairs import from_pairs, pairs_add, pairs_neg, pairs_sum, to_pairs


@jax.jit
def _sum32(masked: jax.Array) -> jax.Array:
    return jnp.sum(masked, axis=0, dtype=jnp.uint32)


@jax.jit
def _sum64(lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    return pairs_sum(lo, hi, axis=0)


def ring_sum(masked: Any) -> np.ndarray:
    """Sum of the sites' masked vectors modulo 2^bits (the ring is read from the dtype).

    Args:
        masked: (n_sites, d) uint32 or uint64, numpy or JAX.

    Returns:
        (d,) array of the same dtype.

    Raises:
        ConfigurationError: if the array is not 2-D or not a ring dtype.
    """
    if np.ndim(masked) != 2:
        raise ConfigurationError(f"ring_sum expects (n_sites, d) masked vectors, got shape {np.shape(masked)}")
    ring = Ring.from_dtype(masked.dtype)
    if ring is Ring.R32:
        return np.asarray(_sum32(jnp.asarray(masked)))
    lo, hi = to_pairs(np.asarray(masked))
    total_lo, total_hi = _sum64(jnp.asarray(lo), jnp.asarray(hi))
    return from_pairs(total_lo, total_hi)


@functools.partial(jax.jit, static_argnames=("num_elements", "ring_bits", "chunk_blocks"))
def _unmask_jit(
    total_words: jax.Array,
    key_words: jax.Array,
    negate: jax.Array,
    *,
    num_elements: int,
    ring_bits: int,
    chunk_blocks: int,
) -> jax.Array:
    mask_words = masks.signed_mask_sum_traced(key_words, negate, num_elements, ring_bits, chunk_blocks)
    if ring_bits == 32:
        return total_words - mask_words
    neg_lo, neg_hi = pairs_neg(mask_words[0::2], mask_words[1::2])
    lo, hi = pairs_add(total_words[0::2], total_words[1::2], neg_lo, neg_hi)
    return jnp.stack([lo, hi], axis=-1).reshape(-1)


def unmask(
    total: np.ndarray,
    self_mask_seeds: Sequence[bytes],
    pair_seeds: Sequence[bytes],
    pair_signs: Sequence[int],
    ring: Ring,
    *,
    engine: str | None = None,
) -> np.ndarray:
    """Remove the surviving sites' self masks and the dropped sites' pairwise masks.

    Args:
        total: (d,) ring sum of the surviving sites' masked vectors.
        self_mask_seeds: the self-mask seed of every surviving site.
        pair_seeds: pairwise seeds between a surviving and a dropped site.
        pair_signs: the sign (+1/-1) with which the surviving site added each pair mask.
        ring: the job's ring (must match ``total``'s dtype).
        engine: ``"openssl"``, ``"jax"`` or None for :func:`chacha20.default_engine`.

    Returns:
        (d,) the sum of the surviving sites' encoded inputs (a new array).

    Raises:
        ConfigurationError: bad shapes, dtype, seeds or signs.
    """
    total = np.asarray(total)
    if total.ndim != 1 or total.dtype != ring.dtype:
        raise ConfigurationError(
            f"unmask expects a 1-D {ring.dtype} sum for {ring.name}, got shape {total.shape} dtype {total.dtype}"
        )
    seeds = list(self_mask_seeds) + list(pair_seeds)
    signs = [1] * len(self_mask_seeds) + [int(s) for s in pair_signs]
    if len(pair_signs) != len(pair_seeds):
        raise ConfigurationError(f"got {len(pair_seeds)} pair seeds but {len(pair_signs)} pair signs")
    keys, negate = masks.parse_seeds(seeds, signs)
    if chacha20.resolve_engine(engine) == "openssl" or keys.shape[0] == 0 or total.size == 0:
        return masks.masked_copy(np.ascontiguousarray(total), seeds, [-s for s in signs], engine="openssl")
    chacha20.check_counter(masks.MASK_COUNTER, -(-total.size * ring.words // chacha20.BLOCK_WORDS))
    total_words = np.ascontiguousarray(total).view("<u4")
    words = _unmask_jit(
        jnp.asarray(total_words),
        jnp.asarray(keys.view("<u4")),
        jnp.asarray(negate),
        num_elements=total.size,
        ring_bits=ring.modulus_bits,
        chunk_blocks=chacha20.chunk_blocks_for(keys.shape[0], total.size * ring.words),
    )
    return masks.words_to_ring(words, ring)
