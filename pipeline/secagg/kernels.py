"""The jax engine of secure aggregation's masks: sum masked vectors, make and remove masks.

The coordinator's work per round is O(n * d) for n sites and d ring elements: summing
the masked vectors, then regenerating from recovered seeds and removing the surviving
sites' self masks and the pairwise masks shared with dropped sites. Both are single
jitted calls here (the ChaCha20 masks of all seeds come from one ``vmap``-ed call,
reduced chunk by chunk), so they run unchanged on a GPU when JAX has one. AES-CTR masks,
and every mask on a CPU, are OpenSSL's (:mod:`pipeline.secagg.masks`, which checks the
arguments and imports this module only when the jax engine is chosen).

Ring arithmetic wraps modulo 2^bits. Ring.R32 uses uint32 natively. Ring.R64 uses
(lo, hi) uint32 pairs with explicit carries (see :mod:`pipeline.secagg.pairs`), because
JAX has no uint64 unless the global ``jax_enable_x64`` flag is set, which library code
must not flip. Inputs and outputs are numpy arrays of the ring's dtype; the pair
representation never leaks out of this module.

Sign convention of :func:`unmask_device`: ``negate[i]`` is True where seed ``i``'s mask
was added with -1; unmasking removes every mask with its sign.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.errors import ConfigurationError
from pipeline.secagg import chacha20_jax, masks
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
    mask_words = signed_mask_sum_traced(key_words, negate, num_elements, ring_bits, chunk_blocks)
    if ring_bits == 32:
        return total_words - mask_words
    neg_lo, neg_hi = pairs_neg(mask_words[0::2], mask_words[1::2])
    lo, hi = pairs_add(total_words[0::2], total_words[1::2], neg_lo, neg_hi)
    return jnp.stack([lo, hi], axis=-1).reshape(-1)


def unmask_device(total: np.ndarray, keys: np.ndarray, negate: np.ndarray, ring: Ring) -> jax.Array:
    """``total`` less the signed ChaCha20 masks of checked seeds, as ring words on the JAX device.

    The jax engine of :func:`pipeline.secagg.masks.unmask`, which checks the arguments.
    """
    return _unmask_jit(
        jnp.asarray(np.ascontiguousarray(total).view("<u4")),
        jnp.asarray(keys.view("<u4")),
        jnp.asarray(negate),
        num_elements=total.size,
        ring_bits=ring.modulus_bits,
        chunk_blocks=chacha20_jax.chunk_blocks_for(keys.shape[0], total.size * ring.words),
    )


def _signed_sum_reducer(negate: jax.Array, ring_bits: int) -> Any:
    """Reduce one chunk of m keystreams (m, w) to their signed sum in the ring, as words."""

    def reduce(words: jax.Array) -> jax.Array:
        flip = negate[:, None]
        if ring_bits == 32:
            signed = jnp.where(flip, jnp.uint32(0) - words, words)
            return jnp.sum(signed, axis=0, dtype=jnp.uint32)
        lo, hi = words[:, 0::2], words[:, 1::2]
        neg_lo, neg_hi = pairs_neg(lo, hi)
        total_lo, total_hi = pairs_sum(jnp.where(flip, neg_lo, lo), jnp.where(flip, neg_hi, hi), axis=0)
        return jnp.stack([total_lo, total_hi], axis=-1).reshape(-1)

    return reduce


def signed_mask_sum_traced(
    key_words: jax.Array, negate: jax.Array, num_elements: int, ring_bits: int, chunk_blocks: int
) -> jax.Array:
    """Signed sum of ChaCha20 masks as ring words (traceable; the last three arguments static).

    Args:
        key_words: (m, 8) uint32 seeds read little-endian.
        negate: (m,) bool, True where the sign is -1.
        num_elements: ring elements per mask.
        ring_bits: 32 or 64.
        chunk_blocks: ChaCha20 blocks per chunk (see :func:`chacha20_jax.chunk_blocks_for`).

    Returns:
        (num_elements * ring_bits // 32,) uint32 words; for R64 read pairs as
        little-endian uint64 (on the host: ``np.asarray(words).view('<u8')``).
    """
    m = key_words.shape[0]
    nonce_words = jnp.zeros((m, 3), dtype=jnp.uint32)
    return chacha20_jax.keystream_words_traced(
        key_words,
        nonce_words,
        jnp.uint32(masks.MASK_COUNTER),
        num_elements * ring_bits // 32,
        chunk_blocks,
        reduce=_signed_sum_reducer(negate, ring_bits),
    )


@functools.partial(jax.jit, static_argnames=("num_elements", "ring_bits", "chunk_blocks"))
def _mask_sum_jit(
    key_words: jax.Array, negate: jax.Array, *, num_elements: int, ring_bits: int, chunk_blocks: int
) -> jax.Array:
    return signed_mask_sum_traced(key_words, negate, num_elements, ring_bits, chunk_blocks)


def mask_sum_device(keys: np.ndarray, negate: np.ndarray, length: int, ring: Ring) -> jax.Array:
    """Signed sum of ChaCha20 masks as ring words on the JAX device (see :func:`signed_mask_sum_traced`)."""
    words = length * ring.words
    return _mask_sum_jit(
        jnp.asarray(np.ascontiguousarray(keys).view("<u4")),
        jnp.asarray(negate),
        num_elements=int(length),
        ring_bits=ring.modulus_bits,
        chunk_blocks=chacha20_jax.chunk_blocks_for(keys.shape[0], words),
    )
