"""Per-variant regression kernels of the federated GWAS: site statistics and pooled fits.

A site holds covariates ``C`` (samples x k, column 0 the intercept), a phenotype ``y``
and genotypes ``G`` (variants x samples): int8 hard calls, or float dosages in [0, 2],
negative (or NaN) where missing (:func:`genotype_rows`). For variant ``v`` the
design is ``X_v = [C, g_v]`` restricted to the samples with a called genotype. Its
sufficient statistics are additive over sites, which is what makes the federated fit
equal the pooled one:

* linear model: ``X_v'X_v`` (only the unique entries of the symmetric matrix, "packed"),
  ``X_v'y``, ``y'y`` and ``n_v``, all over the called samples. ``C'C`` over the called
  samples is ``C'C`` over all samples minus ``sum_{missing} c c'``, computed for a whole
  tile of variants at once by one scatter-add over the tile's missing calls (few, so far
  cheaper than a product with the dense missing mask).
* logistic model, at the current coefficients ``theta_v``: the score ``X_v'(y - p)`` and
  the packed Fisher information ``X_v' W X_v``, for every variant at once.

Site kernels are ``jit``-ed JAX functions of a tile of variants (the logistic one a
function of one variant, ``vmap``-ed over the tile), compiled once per tile shape; they
run in float64 (``jax.enable_x64`` around the call, never flipped globally) because the
pooled fit must be exact to 1e-6. The linear statistics also have a NumPy engine, the
default on a CPU (:func:`pipeline.backends.choose_engine`, ``GENOFED_GLM_ENGINE``): XLA
converts a whole int8 tile to float64 before its product, eight bytes of memory traffic
per genotype, where NumPy converts slabs of a few dozen variants that stay in the CPU's
cache and hands each to BLAS (5x faster here). The two agree to float64 rounding (the
sums are added in another order), not bit for bit. The coordinator's solves are batched
numpy in float64.

Packed order of a ``(k+1) x (k+1)`` matrix (genotype last): the upper triangle of the
covariate block row by row, then the genotype column ``C'g``, then ``g'g``
(:func:`packed_index`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import special

from pipeline.backends import choose_engine

__all__ = [
    "STATUS",
    "LinearFit",
    "LogisticStep",
    "firth_statistics",
    "genomic_inflation",
    "genotype_rows",
    "linear_fit",
    "linear_statistics",
    "logistic_statistics",
    "newton_step",
    "pack_symmetric",
    "packed_index",
    "packed_size",
    "t_test_p",
    "tile_variants",
    "unpack_symmetric",
    "wald_test",
]

STATUS = ("OK", "CONST_ALLELE", "VIF_TOO_HIGH", "TOO_FEW_SAMPLES", "SEPARATION", "UNFINISHED", "BELOW_SITE_MIN_ALLELE_COUNT",
          "NOT_TESTED", "FIRTH_CONVERGE_FAIL", "HWE_CLUSTER_FAIL")
"""Per-variant outcome codes (plink2 ``--glm`` ERRCODE names where plink2 has one; ``HWE_CLUSTER_FAIL``:
withheld before the fit by the GWAS's ancestry-cluster Hardy-Weinberg round)."""

MAX_VIF = 50.0
"""plink2's default ``--vif``: a genotype this collinear with the covariates is not tested."""

_TILE_ELEMENTS = 1 << 23
"""Genotype entries per kernel call: bounds a tile's float64 temporaries to ~64 MiB each."""


def packed_size(num_covariates: int) -> int:
    """Number of unique entries of the ``(k+1) x (k+1)`` symmetric design matrix."""
    d = num_covariates + 1
    return d * (d + 1) // 2


@lru_cache(maxsize=32)
def packed_index(num_covariates: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the packed entries: covariate triangle, then ``C'g``, then ``g'g``."""
    k = num_covariates
    rows, cols = np.triu_indices(k)
    rows = np.concatenate([rows, np.arange(k), [k]])
    cols = np.concatenate([cols, np.full(k, k), [k]])
    return rows.astype(np.int64), cols.astype(np.int64)


def unpack_symmetric(packed: np.ndarray, num_covariates: int) -> np.ndarray:
    """(..., P) packed entries -> (..., k+1, k+1) symmetric matrices."""
    rows, cols = packed_index(num_covariates)
    d = num_covariates + 1
    packed = np.asarray(packed, np.float64)
    out = np.zeros((*packed.shape[:-1], d, d))
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out


def tile_variants(num_samples: int) -> int:
    """Variants per kernel call for ``num_samples`` samples (a power of two, 64..4096)."""
    tile = 4096
    while tile > 64 and tile * max(num_samples, 1) > _TILE_ELEMENTS:
        tile //= 2
    return tile


def covariate_products(covariates: np.ndarray) -> np.ndarray:
    """(n, k(k+1)/2): per sample, the upper triangle of ``c c'`` in packed order."""
    rows, cols = np.triu_indices(covariates.shape[1])
    return covariates[:, rows] * covariates[:, cols]


def assemble_linear(xp, base, cross, squares, called):  # type: ignore[no-untyped-def]
    """Packed X'X, X'y, y'y and n from the called samples' covariate sums ``base`` and ``[C'g, g'y]`` (NumPy or jnp)."""
    k = cross.shape[1] - 1
    cc_size = k * (k + 1) // 2
    xtx = xp.concatenate([base[:, :cc_size], cross[:, :k], squares[:, None]], axis=1)
    xty = xp.concatenate([base[:, cc_size : cc_size + k], cross[:, k:]], axis=1)
    return xtx, xty, base[:, -1], called


def genotype_rows(genotypes: np.ndarray) -> np.ndarray:
    """A block of genotypes as the kernels take it: int8 hard calls as they are, dosages as floats with every
    missing value (negative or NaN) exactly -1.

    The NumPy engine corrects each missing call's product by adding back one ``-1`` times
    its sample's values, so a missing value must be -1 and nothing else.
    """
    genotypes = np.asarray(genotypes)
    if not np.issubdtype(genotypes.dtype, np.floating):
        return genotypes.astype(np.int8, copy=False)
    return np.where(genotypes >= 0, genotypes, genotypes.dtype.type(-1))


def padded_tiles(genotypes: np.ndarray, tile: int):
    """(start, stop, padded tile) over the rows, in the rows' dtype; padding rows are hom-ref (their results are dropped)."""
    num_variants = genotypes.shape[0]
    for start in range(0, num_variants, tile):
        stop = min(start + tile, num_variants)
        part = genotypes[start:stop]
        if stop - start < tile:
            part = np.concatenate([part, np.zeros((tile - (stop - start), genotypes.shape[1]), genotypes.dtype)])
        yield start, stop, np.ascontiguousarray(part)


ENGINES = ("numpy", "jax")
ENV_ENGINE = "GENOFED_GLM_ENGINE"

_SLAB_BYTES = 1 << 20
"""float64 genotypes the NumPy engine converts at once: they stay in the CPU's L2 cache for BLAS."""


def _numpy_linear_tile(calls: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray, per_sample: np.ndarray,
                       total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_linear_tile_fn` with NumPy: slabs converted to float64 in cache, each one BLAS product.

    ``calls`` come from :func:`genotype_rows`. A missing call (-1) enters the slab's
    products as is; the products are then put right with the same scatter-add over the
    missing calls that corrects the covariate block:
    adding back ``[c, y]`` of each missing call's sample cancels its ``-1 * [c, y]``, and
    each one added 1 to ``g'g``.
    """
    num_variants, num_samples = calls.shape
    design = np.column_stack([covariates, phenotype])
    cross = np.empty((num_variants, design.shape[1]))
    squares = np.empty(num_variants)
    slab = max(1, _SLAB_BYTES // (8 * max(num_samples, 1)))
    scratch = np.empty((min(slab, num_variants), num_samples))
    missing = []
    for start in range(0, num_variants, slab):
        part = calls[start : start + slab]
        g = scratch[: part.shape[0]]
        np.copyto(g, part)
        np.matmul(g, design, out=cross[start : start + part.shape[0]])
        squares[start : start + part.shape[0]] = np.einsum("ij,ij->i", g, g)
        hits = np.flatnonzero(part < 0)
        if hits.size:
            missing.append(hits + start * num_samples)
    variant, sample = np.divmod(np.concatenate(missing), num_samples) if missing else (np.zeros(0, np.int64),) * 2
    correction = np.zeros((num_variants, per_sample.shape[1] + design.shape[1]))
    if variant.size:
        rows, first = np.unique(variant, return_index=True)  # flat indices ascend: grouped by variant
        correction[rows] = np.add.reduceat(np.concatenate([per_sample, design], axis=1)[sample], first, axis=0)
    missing_count = np.bincount(variant, minlength=num_variants)
    cross += correction[:, per_sample.shape[1] :]
    squares -= missing_count
    base = total[None, :] - correction[:, : per_sample.shape[1]]
    return assemble_linear(np, base, cross, squares, (num_samples - missing_count).astype(np.float64))


def linear_statistics(call_dosage: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray, *,
                      engine: str | None = None) -> dict[str, np.ndarray]:
    """A site's linear-model sufficient statistics for a block of variants.

    Args:
        call_dosage: (variants, samples) int8 hard calls or float dosages, negative or NaN = missing.
        covariates: (samples, k) float64, column 0 the intercept; only complete samples.
        phenotype: (samples,) float64, no missing values.
        engine: ``"numpy"`` or ``"jax"``; None chooses by JAX's backend (NumPy on a CPU).

    Returns:
        ``xtx`` (variants, packed), ``xty`` (variants, k+1), ``yty`` and ``n`` (variants,),
        ``alt_count`` (variants,): float64 arrays, sums over each variant's called samples
        (``alt_count``: the ALT dosage sum, an integer for hard calls).
    """
    call_dosage = genotype_rows(call_dosage)
    covariates = np.asarray(covariates, np.float64)
    phenotype = np.asarray(phenotype, np.float64)
    num_variants = call_dosage.shape[0]
    k = covariates.shape[1]
    per_sample = np.concatenate([covariate_products(covariates), covariates * phenotype[:, None], (phenotype**2)[:, None]], axis=1)
    total = per_sample.sum(axis=0)
    out = {
        "xtx": np.zeros((num_variants, packed_size(k))), "xty": np.zeros((num_variants, k + 1)),
        "yty": np.zeros(num_variants), "n": np.zeros(num_variants),
    }
    if choose_engine(engine, engines=ENGINES, env_var=ENV_ENGINE, what="GLM") == "numpy":
        out["xtx"], out["xty"], out["yty"], out["n"] = _numpy_linear_tile(call_dosage, covariates, phenotype, per_sample, total)
    else:
        # The JAX engine: imported when it is chosen.
        from pipeline.stats import glm_jax

        glm_jax.linear_tiles(call_dosage, covariates, phenotype, per_sample, total, out)
    out["alt_count"] = out["xtx"][:, k * (k + 1) // 2].copy()  # C'g with c_0 = 1: the ALT allele count
    return out


def logistic_statistics(call_dosage: np.ndarray, theta: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """A site's logistic-model score and Fisher information for a block of variants.

    Args:
        call_dosage: (variants, samples) int8 hard calls or float dosages, negative or NaN = missing.
        theta: (variants, k+1) current coefficients (covariates, then genotype).
        covariates: (samples, k) float64 with the intercept in column 0.
        phenotype: (samples,) 0/1 float64.

    Returns:
        ``score`` (variants, k+1), ``information`` (variants, packed), ``loglik`` (variants,).
    """
    call_dosage = genotype_rows(call_dosage)
    covariates = np.asarray(covariates, np.float64)
    phenotype = np.asarray(phenotype, np.float64)
    num_variants, k = call_dosage.shape[0], covariates.shape[1]
    out = {"score": np.zeros((num_variants, k + 1)), "information": np.zeros((num_variants, packed_size(k))), "loglik": np.zeros(num_variants)}
    # The logistic kernels are JAX's only: imported by the first logistic job.
    from pipeline.stats import glm_jax

    glm_jax.logistic_tiles(call_dosage, np.asarray(theta, np.float64), covariates, phenotype, out)
    return out


def firth_statistics(call_dosage: np.ndarray, theta: np.ndarray, inverse: np.ndarray, covariates: np.ndarray,
                     phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """A site's Firth-penalized score and Fisher information for a block of variants.

    Args:
        call_dosage: (variants, samples) int8 hard calls or float dosages, negative or NaN = missing.
        theta: (variants, k+1) current coefficients.
        inverse: (variants, k+1, k+1) the federation's inverse information of the
            previous round (zeros for the plain score).
        covariates, phenotype: as :func:`logistic_statistics`.

    Returns:
        ``score`` (variants, k+1) and ``information`` (variants, packed).
    """
    call_dosage = genotype_rows(call_dosage)
    covariates = np.asarray(covariates, np.float64)
    phenotype = np.asarray(phenotype, np.float64)
    num_variants, k = call_dosage.shape[0], covariates.shape[1]
    out = {"score": np.zeros((num_variants, k + 1)), "information": np.zeros((num_variants, packed_size(k)))}
    # The logistic kernels are JAX's only: imported by the first logistic job.
    from pipeline.stats import glm_jax

    glm_jax.firth_tiles(call_dosage, np.asarray(theta, np.float64), np.asarray(inverse, np.float64), covariates, phenotype, out)
    return out


def pack_symmetric(matrix: np.ndarray, num_covariates: int) -> np.ndarray:
    """(..., k+1, k+1) symmetric matrices -> (..., P) packed entries (inverse of :func:`unpack_symmetric`)."""
    rows, cols = packed_index(num_covariates)
    return np.asarray(matrix)[..., rows, cols]


class LinearFit(NamedTuple):
    """Per-variant OLS results (NaN where ``status`` is not OK)."""

    beta: np.ndarray
    standard_error: np.ndarray
    t_statistic: np.ndarray
    p_value: np.ndarray
    df: np.ndarray
    status: np.ndarray  # indices into STATUS


def _genotype_vif(matrix: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centred variance of g, VIF of g against the covariates) from X'X (genotype last)."""
    d = matrix.shape[-1]
    covariate_block = matrix[:, : d - 1, : d - 1]
    cross = matrix[:, : d - 1, d - 1]
    gg = matrix[:, d - 1, d - 1]
    sum_g = matrix[:, 0, d - 1]
    centred = gg - np.divide(sum_g**2, n, out=np.zeros_like(gg), where=n > 0)
    solved = _safe_solve(covariate_block, cross)
    residual = gg - np.einsum("vi,vi->v", cross, solved)
    with np.errstate(divide="ignore", invalid="ignore"):
        vif = np.where(residual > 0, centred / residual, np.inf)
    return centred, vif


def _safe_solve(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched solve; singular systems give NaN instead of failing the whole batch."""
    try:
        return np.linalg.solve(matrix, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(rhs.shape, np.nan)
        for index in range(matrix.shape[0]):
            try:
                out[index] = np.linalg.solve(matrix[index], rhs[index])
            except np.linalg.LinAlgError:
                pass
        return out


def _covariates_aliased(matrix: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Whether a variant's covariates (intercept aside) are collinear over its samples: plink2's ``VIF_INFINITE``.

    A factor's level absent among the samples with a call (a variant one site holds, where another site's level
    or site column is empty) leaves no genotype estimate the design determines.
    """
    d = matrix.shape[-1] - 1  # intercept and covariates
    if d < 2:
        return np.zeros(matrix.shape[0], bool)
    sums = matrix[:, 0, 1:d]
    count = np.where(n > 0, n, 1.0)[:, None, None]
    centred = matrix[:, 1:d, 1:d] - sums[:, :, None] * sums[:, None, :] / count
    variance = np.einsum("vii->vi", centred)
    raw = np.einsum("vii->vi", matrix[:, 1:d, 1:d])
    constant = ~np.all(variance > 1e-9 * np.maximum(raw, 1.0), axis=1)
    scale = np.sqrt(np.where(variance > 0, variance, 1.0))
    correlation = centred / (scale[:, :, None] * scale[:, None, :])
    finite = np.all(np.isfinite(correlation), axis=(1, 2))
    correlation[~finite] = np.eye(d - 1)
    return constant | ~finite | ~(np.linalg.eigvalsh(correlation)[:, 0] > 1e-9)


def null_information_aliased(information: np.ndarray, num_covariates: int) -> np.ndarray:
    """(variants,) bool: :func:`_covariates_aliased` from the logistic Fisher information at the null fit (packed).

    At the null fit every sample has the same weight p(1 - p), so the information is that
    weight times X'X over the variant's samples; its (0, 0) entry stands in for n, and the
    collinearity test, scale-free, is the linear model's (plink2's ``VIF_INFINITE`` for both).
    """
    matrix = unpack_symmetric(np.asarray(information, np.float64), num_covariates)
    return _covariates_aliased(matrix, matrix[:, 0, 0])


def _check_design(matrix: np.ndarray, n: np.ndarray, num_parameters: int) -> np.ndarray:
    """Status codes shared by both models: too few samples, constant genotype, collinearity."""
    status = np.zeros(matrix.shape[0], np.int8)
    centred, vif = _genotype_vif(matrix, n)
    gg = matrix[:, -1, -1]
    status[~(vif <= MAX_VIF) | _covariates_aliased(matrix, n)] = STATUS.index("VIF_TOO_HIGH")
    status[centred <= 1e-9 * np.maximum(gg, 1.0)] = STATUS.index("CONST_ALLELE")
    status[n <= num_parameters] = STATUS.index("TOO_FEW_SAMPLES")
    return status


def linear_fit(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray, n: np.ndarray) -> LinearFit:
    """Pooled OLS of every variant from summed sufficient statistics (t test as plink2 --glm).

    ``beta`` and its standard error are the genotype's; the residual variance has
    ``n - (k + 1)`` degrees of freedom and the p-value is two-sided from Student's t.
    """
    xty = np.asarray(xty, np.float64)
    num_covariates = xty.shape[1] - 1
    matrix = unpack_symmetric(xtx, num_covariates)
    n = np.asarray(n, np.float64)
    status = _check_design(matrix, n, num_covariates + 1)
    ok = status == 0
    matrix[~ok] = np.eye(num_covariates + 1)
    scale = np.sqrt(np.einsum("vii->vi", matrix))
    scaled = matrix / (scale[:, :, None] * scale[:, None, :])
    inverse = np.linalg.inv(scaled) / (scale[:, :, None] * scale[:, None, :])
    coefficients = np.einsum("vij,vj->vi", inverse, xty)
    df = n - (num_covariates + 1)
    rss = np.asarray(yty, np.float64) - np.einsum("vi,vi->v", coefficients, xty)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma2 = np.maximum(rss, 0.0) / df
        se = np.sqrt(sigma2 * inverse[:, -1, -1])
        beta = coefficients[:, -1]
        t = beta / se
    p = t_test_p(t, df)
    nan = np.where(ok, 1.0, np.nan)
    return LinearFit(beta * nan, se * nan, t * nan, p * nan, df, status)


def t_test_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Student's t statistics with ``df`` degrees of freedom (at least 1).

    ``scipy.special`` evaluates the same function as ``scipy.stats.t.sf`` does, bit for bit,
    without importing ``scipy.stats`` (half a second at every site's start).
    """
    return 2.0 * special.stdtr(np.maximum(df, 1.0), -np.abs(t))


class LogisticStep(NamedTuple):
    """One Newton-Raphson update of every variant's coefficients."""

    theta: np.ndarray  # (variants, k+1) updated coefficients
    step: np.ndarray  # (variants,) largest absolute change
    variance: np.ndarray  # (variants,) inverse-information diagonal entry of the genotype at the old theta
    inverse: np.ndarray  # (variants, k+1, k+1) inverse information at the old theta (identity where singular)


def newton_step(theta: np.ndarray, score: np.ndarray, information: np.ndarray, *, max_step: float = 5.0) -> LogisticStep:
    """``theta + I^-1 U`` for all variants at once (steps capped at ``max_step`` per coefficient)."""
    num_covariates = theta.shape[1] - 1
    matrix = unpack_symmetric(information, num_covariates)
    diag = np.einsum("vii->vi", matrix)
    bad = ~np.all(diag > 0, axis=1) | ~np.all(np.isfinite(matrix), axis=(1, 2))
    matrix[bad] = np.eye(num_covariates + 1)
    scale = np.sqrt(np.einsum("vii->vi", matrix))
    scaled = matrix / (scale[:, :, None] * scale[:, None, :])
    with np.errstate(invalid="ignore", over="ignore"):
        condition = np.linalg.cond(scaled)
    bad |= ~(condition < 1e13)
    scaled[bad] = np.eye(num_covariates + 1)
    inverse = np.linalg.inv(scaled) / (scale[:, :, None] * scale[:, None, :])
    delta = np.einsum("vij,vj->vi", inverse, score)
    largest = np.max(np.abs(delta), axis=1)
    factor = np.where(largest > max_step, max_step / np.maximum(largest, 1e-300), 1.0)
    delta = np.where(bad[:, None], 0.0, delta * factor[:, None])
    step = np.where(bad, np.inf, np.max(np.abs(delta), axis=1))
    variance = np.where(bad, np.nan, inverse[:, -1, -1])
    return LogisticStep(theta + delta, step, variance, inverse)


def wald_test(beta: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(standard error, z, two-sided normal p-value) of coefficients with the given variances."""
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(variance)
        z = beta / se
    return se, z, 2.0 * special.ndtr(-np.abs(z))


def genomic_inflation(p_value: np.ndarray) -> float:
    """lambda_GC: median 1-df chi-square of the p-values over its expectation (NaN ignored)."""
    p = np.asarray(p_value, np.float64)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    # chi2.isf is decreasing, so the median chi-square is that of the middle p-values: two isf calls, not one per variant.
    middle = np.unique([(p.size - 1) // 2, p.size // 2])
    chi2 = special.chdtri(1, np.clip(np.partition(p, middle)[middle], 1e-300, 1.0))
    return float(np.mean(chi2) / (2.0 * special.gammaincinv(0.5, 0.5)))  # the median of chi2(1), as scipy.stats.chi2.ppf

