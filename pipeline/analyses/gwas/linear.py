"""The linear model's round: per-variant sufficient statistics, and the pooled OLS fit.

In round 1 every site returns, per variant, the packed ``X'X``, ``X'y``, ``y'y`` and
``n`` over its complete samples with a called genotype
(:func:`pipeline.stats.glm.linear_statistics`, standardized covariates and phenotype),
plus 1 where its own minor allele count is non-zero and below its policy minimum. The
coordinator solves every variant's normal equations from the sums in float64
(:func:`pipeline.stats.glm.linear_fit`): the pooled OLS, then scales the genotype's
effect back to the phenotype's units.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.analyses.census import below_minimum
from pipeline.analyses.gwas.outputs import regression_result
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
from pipeline.stats import glm

__all__ = ["linear_layout", "linear_result", "linear_site_statistics"]


def linear_layout(state: RegressionState) -> Layout:
    """``xtx``, ``xty``, ``yty`` (fixed point, bounded by n_max * max_abs_z^2), ``n`` and ``below_min`` per variant."""
    p = state.parameters
    v, k = len(state.variant_ids), state.num_coefficients
    bound = p.statistic_bound

    def real(name: str, shape: tuple[int, ...]) -> Real:
        return Real(name, shape, bound, min_scale_bits=MIN_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    return plan_regression_layout(
        [real("xtx", (v, glm.packed_size(k))), real("xty", (v, k + 1)), real("yty", (v,)),
         Count("n", (v,), p.max_samples_per_site), Count("below_min", (v,), 1)],
        state.num_participants, hint="lower max_samples_per_site or max_abs_z",
    )


def linear_site_statistics(state: RegressionState, dataset: Dataset, site: SiteContext, data: SiteData,
                           covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """The site's contribution to round 1 (zeros for the variants it does not hold)."""
    v, k = len(state.variant_ids), covariates.shape[1]
    out = {"xtx": np.zeros((v, glm.packed_size(k))), "xty": np.zeros((v, k + 1)), "yty": np.zeros(v),
           "n": np.zeros(v, np.int64), "below_min": np.zeros(v, np.int64)}
    for rows, calls in complete_calls(state, dataset, data):
        stats = glm.linear_statistics(calls, covariates, phenotype)
        for name in ("xtx", "xty", "yty"):
            out[name][rows] = stats[name]
        called = np.rint(stats["n"]).astype(np.int64)
        out["n"][rows] = called
        out["below_min"][rows] = below_minimum(called, np.rint(stats["alt_count"]).astype(np.int64), site)
    return out


def linear_result(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> Result:
    """The pooled OLS of every variant from the round's sums, in the phenotype's units."""
    n = np.asarray(total["n"], np.int64)
    fit = glm.linear_fit(total["xtx"], total["xty"], total["yty"], n)
    scale = float(state.standardization.sd[-1])
    k = state.num_coefficients
    alt = np.asarray(total["xtx"], np.float64)[:, k * (k + 1) // 2]
    return regression_result(state, fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value,
                             fit.status, n, alt, np.asarray(total["below_min"], np.int64), num_sites,
                             layout=linear_layout(state))
