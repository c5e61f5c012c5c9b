"""The linear model's round: per-variant sufficient statistics, and the pooled OLS fit.

In its one round (the regression phase's round 2, or 3 after the HWE round) every site
returns, per variant, the packed ``X'X``, ``X'y``, ``y'y`` and ``n`` over its complete
samples with a called genotype (:func:`pipeline.stats.glm.linear_statistics`, standardized covariates and phenotype,
hard calls or dosages: :mod:`~pipeline.analyses.gwas.site_data`),
plus 1 where its own minor allele count is non-zero and below its policy minimum: there
it sends zeros instead of its statistics, as for a variant it does not hold (a small
cell is left out of the variant's sums, not the variant out of the results; see
:mod:`~pipeline.analyses.gwas.outputs`). The coordinator solves every variant's normal
equations from the sums in float64 (:func:`pipeline.stats.glm.linear_fit`): the OLS
pooled over the sites that were not left out, then scales the genotype's effect back to
the phenotype's units.

With privacy terms (:mod:`~pipeline.analyses.gwas.privacy`) a site sends only ``xtx``,
``xty`` and ``yty`` (``n`` is ``xtx``'s intercept entry, and no ``below_min`` flag: it
would depend on one person), rounded to the noise's scale bits, plus its noise. The
coordinator fits the noisy sums (:func:`noisy_linear_fit`): a variant whose noisy
``X'X`` is not positive definite or whose residual sum of squares is not positive is
``NOT_TESTED``, and the standard error adds the noise's first-order variance to the
sampling variance, so the tests account for the noise instead of mistaking it for signal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import stats as scipy_stats

from pipeline.analyses.census import below_minimum
from pipeline.analyses.gwas.outputs import regression_result
from pipeline.analyses.gwas.privacy import add_noise, noise_sd, noisy_real
from pipeline.analyses.gwas.site_data import SiteData, complete_calls
from pipeline.analyses.gwas.spec import (
    MAX_SCALE_BITS,
    MIN_SCALE_BITS,
    plan_regression_layout,
)
from pipeline.analyses.gwas.state import RegressionState
from pipeline.analyses.protocol import Result, SiteContext
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Layout, Real
from pipeline.privacy import secret_generator
from pipeline.stats import glm

__all__ = ["NOISY_FIELDS", "linear_layout", "linear_result", "linear_site_statistics", "noisy_linear_fit",
           "split_phenotypes"]

NOISY_FIELDS = ("xtx", "xty", "yty")
"""What a site sends in the statistics round with privacy."""


def linear_layout(state: RegressionState) -> Layout:
    """``xtx``, ``xty``, ``yty`` (fixed point, bounded by n_max * max_abs_z^2), ``n`` and ``below_min`` per variant.

    The genotype's entries (``C'g``, ``g'g``, ``g'y``) are reals already (products with
    standardized values), so dosages change no field: only ``n`` and ``below_min`` are counts.

    With privacy only ``xtx``, ``xty``, ``yty``, at the noise's scale bits, with room for the site's noise.
    """
    p = state.parameters
    v, k = len(state.variant_ids), state.num_coefficients
    bound = p.statistic_bound
    noise = state.statistics_noise
    if noise is not None:
        shapes = {"xtx": (v, glm.packed_size(k)), "xty": (v, k + 1), "yty": (v,)}
        values = sum(int(np.prod(shape)) for shape in shapes.values())
        return plan_regression_layout([noisy_real(name, shape, bound, noise, values) for name, shape in shapes.items()],
                                      state.num_participants, hint="lower max_samples_per_site or max_abs_z")

    def real(name: str, shape: tuple[int, ...]) -> Real:
        return Real(name, shape, bound, min_scale_bits=MIN_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    return plan_regression_layout(
        [real("xtx", (v, glm.packed_size(k))), real("xty", (v, k + 1)), real("yty", (v,)),
         Count("n", (v,), p.max_samples_per_site), Count("below_min", (v,), 1)],
        state.num_participants, hint="lower max_samples_per_site or max_abs_z",
    )


def linear_site_statistics(state: RegressionState, dataset: Dataset, site: SiteContext, data: SiteData,
                           covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """The site's contribution to the statistics round (zeros for the variants it does not hold); with privacy, noisy sums.

    ``phenotype`` may be (samples, P): several phenotypes of the same complete samples in
    one pass over the genotype rows (their ``X'X``, ``n`` and flags are the same), giving
    ``xty`` (variants, P, k + 1) and ``yty`` (variants, P) (:func:`split_phenotypes`).

    Exact sums: a variant where the site's own minor allele count is a small cell
    (:func:`~pipeline.analyses.census.below_minimum`) is left out, zeros as for a variant it
    does not hold, and only its flag is sent, so the cell never enters a sum. With privacy
    nothing is left out and no flag is sent: the noise protects small cells, and a flag
    would depend on one person.
    """
    v, k = len(state.variant_ids), covariates.shape[1]
    several = phenotype.ndim == 2
    per = phenotype.shape[1:]
    out = {"xtx": np.zeros((v, glm.packed_size(k))), "xty": np.zeros((v, *per, k + 1)), "yty": np.zeros((v, *per)),
           "n": np.zeros(v, np.int64), "below_min": np.zeros(v, np.int64)}
    noise = state.statistics_noise
    for rows, calls in complete_calls(state, dataset, data, site.cache):
        if several:  # the other phenotypes ride along as covariate columns: one product with the genotypes
            stats = split_phenotypes(glm.linear_statistics(calls, np.column_stack([covariates, phenotype[:, 1:]]),
                                                           phenotype[:, 0]), k, phenotype.shape[1])
        else:
            stats = glm.linear_statistics(calls, covariates, phenotype)
        called = np.rint(stats["n"]).astype(np.int64)
        if noise is None:
            out["below_min"][rows] = below_minimum(called, stats["alt_count"], site)
        kept = out["below_min"][rows] == 0
        for name in ("xtx", "xty", "yty"):
            out[name][rows[kept]] = stats[name][kept]
        out["n"][rows[kept]] = called[kept]
    if noise is not None:
        return add_noise({name: out[name] for name in NOISY_FIELDS}, noise, rng=secret_generator())
    return out


def split_phenotypes(stats: Mapping[str, np.ndarray], k: int, count: int) -> dict[str, np.ndarray]:
    """Each phenotype's statistics from one fit whose covariates were ``[C, y_2..y_P]`` and phenotype ``y_1``.

    The packed ``X'X`` of ``[C, y_2..y_P, g]`` and its ``X'y_1``, ``y_1'y_1`` hold every
    phenotype's ``[C, g]'y_j`` and ``y_j'y_j``; ``[C, g]'[C, g]`` is the same for all.

    Args:
        stats: :func:`pipeline.stats.glm.linear_statistics` over ``k + count - 1`` covariate columns.
        k: the columns of ``C`` (intercept first).
        count: P, the phenotypes.

    Returns:
        ``xtx`` (variants, packed(k)), ``xty`` (variants, P, k + 1), ``yty`` (variants, P), and ``n``, ``alt_count``.
    """
    wide = k + count - 1
    full = glm.unpack_symmetric(stats["xtx"], wide)  # over [C, y_2..y_P, g]
    chosen = [*range(k), wide]  # C and g
    extra = np.arange(k, wide)
    xty = np.concatenate([np.asarray(stats["xty"])[:, None, chosen],
                          np.moveaxis(full[:, chosen][:, :, extra], 2, 1)], axis=1)
    yty = np.column_stack([stats["yty"], full[:, extra, extra]])
    return {"xtx": glm.pack_symmetric(full[:, chosen][:, :, chosen], k), "xty": xty, "yty": yty,
            "n": stats["n"], "alt_count": stats["alt_count"]}


def noisy_linear_fit(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray, noise_variance: float) -> glm.LinearFit:
    """OLS of every variant from noisy sums, each entry carrying independent noise of ``noise_variance``.

    ``n`` is ``xtx``'s intercept entry. A variant whose ``X'X`` is not positive definite
    (or not finite), or whose residual sum of squares is not positive, gets
    ``NOT_TESTED``: its estimate would be an artefact of the noise. The genotype's
    ``beta = e_g' A^-1 b`` moves by ``w' (db - dA beta)`` (``w = A^-1 e_g``) under noise
    ``dA``, ``db``: with iid noise per packed entry its variance is
    ``tau^2 (|w|^2 + sum_(i<=j) (w_i b_j + w_j b_i)^2)`` (halved terms on the diagonal),
    added to the sampling variance. First order in the noise: where the noise is not small
    beside ``X'X``, the standard error is too small.
    """
    xtx, xty, yty = (np.asarray(a, np.float64) for a in (xtx, xty, yty))
    k = xty.shape[1] - 1
    matrix = glm.unpack_symmetric(xtx, k)
    finite = np.all(np.isfinite(xtx), axis=1) & np.all(np.isfinite(xty), axis=1) & np.isfinite(yty)
    eye = np.eye(k + 1)
    matrix[~finite] = eye
    positive = finite & (np.linalg.eigvalsh(matrix)[:, 0] > 0)
    # Identity systems where the noisy one is not positive definite: the batched solves never fail.
    xtx = np.where(positive[:, None], xtx, glm.pack_symmetric(eye, k))
    xty = np.where(positive[:, None], xty, 0.0)
    yty = np.where(positive, yty, 1.0)
    matrix[~positive] = eye
    n = xtx[:, 0]
    fit = glm.linear_fit(xtx, xty, yty, n)
    inverse = np.linalg.inv(matrix)
    coefficients = np.einsum("vij,vj->vi", inverse, xty)
    rss = yty - np.einsum("vi,vi->v", coefficients, xty)
    testable = positive & (rss > 0)
    w = inverse[:, :, -1]
    rows, cols = glm.packed_index(k)
    slope = w[:, rows] * coefficients[:, cols] + w[:, cols] * coefficients[:, rows]
    slope = np.where(rows == cols, 0.5 * slope, slope)
    noise = noise_variance * (np.sum(w**2, axis=1) + np.sum(slope**2, axis=1))
    status = np.where(testable, fit.status, glm.STATUS.index("NOT_TESTED")).astype(np.int8)
    ok = status == 0
    with np.errstate(invalid="ignore"):
        se = np.sqrt(fit.standard_error**2 + noise)
        t = fit.beta / se
    p = 2.0 * scipy_stats.t.sf(np.abs(t), np.maximum(fit.df, 1.0))
    nan = np.where(ok, 1.0, np.nan)
    return glm.LinearFit(fit.beta * nan, se * nan, t * nan, p * nan, fit.df, status)


def linear_result(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> Result:
    """The pooled OLS of every variant from the round's sums, in the phenotype's units (noisy ones with privacy)."""
    noise = state.statistics_noise
    if noise is not None:
        return _noisy_result(state, total, num_sites, noise_sd(noise, num_sites) ** 2)
    n = np.asarray(total["n"], np.int64)
    fit = glm.linear_fit(total["xtx"], total["xty"], total["yty"], n)
    scale = float(state.standardization.sd[-1])
    k = state.num_coefficients
    alt = np.asarray(total["xtx"], np.float64)[:, k * (k + 1) // 2]
    return regression_result(state, fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value,
                             fit.status, n, alt, np.asarray(total["below_min"], np.int64), num_sites,
                             layout=linear_layout(state))


def _noisy_result(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int, noise_variance: float) -> Result:
    """:func:`linear_result` from noisy sums: ``n`` and the ALT count read off ``xtx``, clipped to what they can be."""
    fit = noisy_linear_fit(total["xtx"], total["xty"], total["yty"], noise_variance)
    scale = float(state.standardization.sd[-1])
    k = state.num_coefficients
    xtx = np.asarray(total["xtx"], np.float64)
    n = np.rint(np.clip(xtx[:, 0], 0.0, None)).astype(np.int64)
    alt = np.clip(xtx[:, k * (k + 1) // 2], 0.0, 2.0 * n)
    return regression_result(state, fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value,
                             fit.status, n, alt, np.zeros(len(n), np.int64), num_sites, layout=linear_layout(state))
