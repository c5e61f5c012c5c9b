"""The JAX engine of the GWAS site kernels: jitted float64 functions of a tile of variants.

Each kernel is compiled once per tile shape (the logistic and Firth ones are functions of
one variant, ``vmap``-ed over the tile) and runs in float64 (``jax.enable_x64`` around
the call, never flipped globally) because the pooled fit must be exact to 1e-6. The
linear statistics also have a NumPy engine, the default on a CPU; the logistic and Firth
statistics are JAX's only. :mod:`pipeline.stats.glm` checks the inputs, lays out the
results and imports this module when a JAX kernel runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.stats.glm import (
    assemble_linear,
    covariate_products,
    padded_tiles,
    tile_variants,
)


def _linear_tile_fn(calls: jax.Array, missing_variant: jax.Array, missing_sample: jax.Array, covariates: jax.Array,
                    phenotype: jax.Array, per_sample: jax.Array, total: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A tile's packed X'X, X'y, y'y and n over each variant's called samples.

    The covariate block over the called samples is the total minus the sum of
    ``per_sample`` rows over the missing calls, given as (variant, sample) pairs: missing
    calls are few, so this scatter-add costs far less than a dense product with the
    missing mask. Pairs padded to a fixed length point at variant ``tile`` (dropped).
    """
    tile = calls.shape[0]
    called = calls >= 0
    g = jnp.where(called, calls, 0).astype(jnp.float64)
    correction = jax.ops.segment_sum(per_sample[missing_sample], missing_variant, num_segments=tile + 1)[:tile]
    base = total[None, :] - correction  # [C'C triangle, C'y, y'y] over the called samples
    cross = g @ jnp.concatenate([covariates, phenotype[:, None]], axis=1)  # [C'g, g'y]
    return assemble_linear(jnp, base, cross, jnp.sum(g * g, axis=1), jnp.sum(called, axis=1).astype(jnp.float64))


_linear_tile = jax.jit(_linear_tile_fn)


def _missing_pairs(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variant, sample) of the tile's missing calls, padded to a power of two (padding -> variant ``tile``)."""
    variant, sample = np.nonzero(tile < 0)
    size = max(256, 1 << int(np.ceil(np.log2(max(variant.size, 1)))))
    padded_variant = np.full(size, tile.shape[0], np.int32)
    padded_sample = np.zeros(size, np.int32)
    padded_variant[: variant.size] = variant
    padded_sample[: sample.size] = sample
    return padded_variant, padded_sample


def linear_tiles(call_dosage: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray, per_sample: np.ndarray,
                 total: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """The linear statistics of :func:`pipeline.stats.glm.linear_statistics`, tile by tile, into ``out``."""
    num_samples = call_dosage.shape[1]
    with jax.enable_x64(True):
        arguments = (jnp.asarray(covariates), jnp.asarray(phenotype), jnp.asarray(per_sample), jnp.asarray(total))
        for start, stop, tile in padded_tiles(call_dosage, tile_variants(num_samples)):
            missing_variant, missing_sample = _missing_pairs(tile)
            results = _linear_tile(jnp.asarray(tile), jnp.asarray(missing_variant), jnp.asarray(missing_sample), *arguments)
            for name, values in zip(("xtx", "xty", "yty", "n"), results):
                out[name][start:stop] = np.asarray(values)[: stop - start]


def _logistic_one(calls: jax.Array, theta: jax.Array, covariates: jax.Array, phenotype: jax.Array,
                  products: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One variant's score, packed Fisher information and log-likelihood at ``theta``."""
    called = calls >= 0
    weight = called.astype(jnp.float64)
    g = jnp.where(called, calls, 0).astype(jnp.float64)
    eta = covariates @ theta[:-1] + g * theta[-1]
    p = jax.nn.sigmoid(eta)
    residual = (phenotype - p) * weight
    w = p * (1.0 - p) * weight
    score = jnp.concatenate([residual @ covariates, jnp.sum(residual * g)[None]])
    wg = w * g
    information = jnp.concatenate([w @ products, wg @ covariates, jnp.sum(wg * g)[None]])
    loglik = jnp.sum(weight * (phenotype * jax.nn.log_sigmoid(eta) + (1.0 - phenotype) * jax.nn.log_sigmoid(-eta)))
    return score, information, loglik


_logistic_tile = jax.jit(jax.vmap(_logistic_one, in_axes=(0, 0, None, None, None)))


def logistic_tiles(call_dosage: np.ndarray, theta: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray,
                   out: dict[str, np.ndarray]) -> None:
    """The score, information and log-likelihood of :func:`pipeline.stats.glm.logistic_statistics`, into ``out``."""
    num_samples, k = call_dosage.shape[1], covariates.shape[1]
    tile_size = tile_variants(num_samples)
    with jax.enable_x64(True):
        arguments = (jnp.asarray(covariates), jnp.asarray(phenotype), jnp.asarray(covariate_products(covariates)))
        for start, stop, tile in padded_tiles(call_dosage, tile_size):
            theta_tile = np.zeros((tile_size, k + 1))
            theta_tile[: stop - start] = theta[start:stop]
            results = _logistic_tile(jnp.asarray(tile), jnp.asarray(theta_tile), *arguments)
            for name, values in zip(("score", "information", "loglik"), results):
                out[name][start:stop] = np.asarray(values)[: stop - start]


def _firth_one(calls: jax.Array, theta: jax.Array, inverse: jax.Array, covariates: jax.Array, phenotype: jax.Array,
               products: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One variant's Firth-modified score and Fisher information at ``theta``.

    The modified score is ``X'(y - p + h (1/2 - p))`` with the hat diagonal
    ``h_i = w_i x_i' inverse x_i``; ``inverse`` is the public inverse information of the
    previous round (zeros: the plain score).
    """
    called = calls >= 0
    weight = called.astype(jnp.float64)
    g = jnp.where(called, calls, 0).astype(jnp.float64)
    x = jnp.concatenate([covariates, g[:, None]], axis=1)
    p = jax.nn.sigmoid(x @ theta)
    w = p * (1.0 - p) * weight
    h = w * jnp.sum((x @ inverse) * x, axis=1)
    score = x.T @ ((phenotype - p + h * (0.5 - p)) * weight)
    wg = w * g
    information = jnp.concatenate([w @ products, wg @ covariates, jnp.sum(wg * g)[None]])
    return score, information


_firth_tile = jax.jit(jax.vmap(_firth_one, in_axes=(0, 0, 0, None, None, None)))


def firth_tiles(call_dosage: np.ndarray, theta: np.ndarray, inverse: np.ndarray, covariates: np.ndarray,
                phenotype: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """The Firth score and information of :func:`pipeline.stats.glm.firth_statistics`, into ``out``."""
    num_samples, k = call_dosage.shape[1], covariates.shape[1]
    tile_size = tile_variants(num_samples * (k + 1))
    with jax.enable_x64(True):
        arguments = (jnp.asarray(covariates), jnp.asarray(phenotype), jnp.asarray(covariate_products(covariates)))
        for start, stop, tile in padded_tiles(call_dosage, tile_size):
            theta_tile = np.zeros((tile_size, k + 1))
            inverse_tile = np.zeros((tile_size, k + 1, k + 1))
            theta_tile[: stop - start] = theta[start:stop]
            inverse_tile[: stop - start] = inverse[start:stop]
            results = _firth_tile(jnp.asarray(tile), jnp.asarray(theta_tile), jnp.asarray(inverse_tile), *arguments)
            for name, values in zip(("score", "information"), results):
                out[name][start:stop] = np.asarray(values)[: stop - start]
