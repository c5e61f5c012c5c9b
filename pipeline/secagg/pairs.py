"""Z_(2^64) ring elements on the JAX side, as (lo, hi) uint32 pairs.

JAX only has 64-bit integers when ``jax_enable_x64`` is set, a global switch library
code must not flip. Device kernels therefore represent an R64 element as two uint32
words ``(lo, hi)`` with explicit carries (:func:`pairs_add`, :func:`pairs_neg`,
:func:`pairs_sum`); the layout of those words is exactly the little-endian memory
layout of a numpy uint64 array, so :func:`to_pairs` and :func:`from_pairs` are free
views on the host.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["to_pairs", "from_pairs", "pairs_add", "pairs_neg", "pairs_sum"]



def to_pairs(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split uint64 elements into (lo, hi) uint32 arrays (host side; a strided view)."""
    words = np.ascontiguousarray(vector, dtype=np.uint64).view("<u4").reshape(*np.shape(vector), 2)
    return words[..., 0], words[..., 1]


def from_pairs(lo: Any, hi: Any) -> np.ndarray:
    """Join (lo, hi) uint32 arrays into uint64 elements (host side)."""
    lo = np.asarray(lo, dtype=np.uint32)
    hi = np.asarray(hi, dtype=np.uint32)
    words = np.stack([lo, hi], axis=-1).astype("<u4")
    return words.view("<u8")[..., 0].astype(np.uint64, copy=False)


def pairs_add(a_lo: jax.Array, a_hi: jax.Array, b_lo: jax.Array, b_hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a + b) mod 2^64 on (lo, hi) uint32 pairs: the carry is ``lo < a_lo`` after wrapping."""
    lo = a_lo + b_lo
    carry = (lo < a_lo).astype(jnp.uint32)
    return lo, a_hi + b_hi + carry


def pairs_neg(lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(-x) mod 2^64 on (lo, hi) uint32 pairs: ``~x + 1``, the +1 carries into hi when lo is 0."""
    carry = (lo == 0).astype(jnp.uint32)
    return jnp.uint32(0) - lo, ~hi + carry


def pairs_sum(lo: jax.Array, hi: jax.Array, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Sum mod 2^64 along ``axis`` of (lo, hi) uint32 pairs, as one variadic XLA reduction."""

    def add(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return pairs_add(a[0], a[1], b[0], b[1])

    zero = jnp.uint32(0)
    total_lo, total_hi = jax.lax.reduce((lo, hi), (zero, zero), add, (axis,))
    return total_lo, total_hi
