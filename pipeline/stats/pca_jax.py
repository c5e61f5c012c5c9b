"""The site products of federated PCA as jitted JAX kernels, in float64.

64-bit types are switched on only inside these functions (``jax.enable_x64``), never
globally: float32 sums over thousands of variants lose ~1e-6 relative precision. Blocks
are cut into tiles of a few fixed shapes so a site compiles each kernel a handful of
times per job. :mod:`pipeline.stats.pca` checks the arrays and imports this module with
a site's first product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

TILE_VARIANTS = 2048
"""Most variants handed to a kernel at once (smaller blocks are padded to a power of two)."""

_MIN_TILE = 64


def _standardized_tile(calls: jax.Array, mean: jax.Array, inv_scale: jax.Array) -> jax.Array:
    values = (calls.astype(jnp.float64) - mean[:, None]) * inv_scale[:, None]
    return jnp.where(calls >= 0, values, 0.0)


@jax.jit
def _project_tile(calls: jax.Array, mean: jax.Array, inv_scale: jax.Array, basis: jax.Array) -> jax.Array:
    """(samples, width): this tile's part of ``G V``."""
    return _standardized_tile(calls, mean, inv_scale).T @ basis


@jax.jit
def _back_tile(calls: jax.Array, mean: jax.Array, inv_scale: jax.Array, scores: jax.Array) -> jax.Array:
    """(tile, width): this tile's rows of ``G^T (G V)``."""
    return _standardized_tile(calls, mean, inv_scale) @ scores


def _tiles(num_variants: int) -> list[tuple[int, int, int]]:
    """(start, stop, padded size) of each tile: full tiles, then one power-of-two tail."""
    out = []
    for start in range(0, num_variants, TILE_VARIANTS):
        stop = min(start + TILE_VARIANTS, num_variants)
        size = TILE_VARIANTS if stop - start == TILE_VARIANTS else max(_MIN_TILE, 1 << (stop - start - 1).bit_length())
        out.append((start, stop, size))
    return out


def _pad(array: np.ndarray, size: int, fill: float) -> np.ndarray:
    if array.shape[0] == size:
        return array
    pad = [(0, size - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, pad, constant_values=fill)


def project(calls: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``G V`` of checked arrays (:func:`pipeline.stats.pca.project`)."""
    with jax.enable_x64(True):
        total = jnp.zeros((calls.shape[1], basis.shape[1]), jnp.float64)
        for start, stop, size in _tiles(calls.shape[0]):
            total = total + _project_tile(
                _pad(calls[start:stop], size, -1), _pad(mean[start:stop], size, 0.0),
                _pad(inv_scale[start:stop], size, 0.0), _pad(basis[start:stop], size, 0.0),
            )
        return np.asarray(total, np.float64)


def gram_product(calls: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``G^T (G V)`` of checked arrays (:func:`pipeline.stats.pca.gram_product`): ``G V`` first, then each
    tile's rows of ``G^T (G V)``."""
    scores = project(calls, mean, inv_scale, basis)
    out = np.empty(basis.shape, np.float64)
    with jax.enable_x64(True):
        for start, stop, size in _tiles(calls.shape[0]):
            part = _back_tile(
                _pad(calls[start:stop], size, -1), _pad(mean[start:stop], size, 0.0),
                _pad(inv_scale[start:stop], size, 0.0), scores,
            )
            out[start:stop] = np.asarray(part, np.float64)[: stop - start]
    return out
