"""The regression phase of a GWAS: the moments round, then the linear or logistic rounds.

Round 0, *moments*: per site the count of complete samples and the sums and sums of
squares of every covariate (PCs included) and of the phenotype over them, each value
clipped to ``±max_abs_value`` at the site. The coordinator publishes their means and
SDs; every site standardizes with them and clips the standardized values to
``±max_abs_z``, so each value of the fixed-point encoding is bounded by ``max_abs_z``
(the genotype's fit is invariant to this reparametrization: the intercept absorbs the
shift). A value beyond either bound is clipped, never refused: a refusal would tell
the analyst that the site holds such a value, and bisecting the bound over jobs would
read it off. The number clipped per column stays in the site's log.

From round 1 on, :class:`Regression` dispatches to the model's rounds:
:mod:`~pipeline.analyses.gwas.linear` (one round) or
:mod:`~pipeline.analyses.gwas.logistic` (Newton rounds, then the Firth refit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses.gwas.linear import (
    linear_layout,
    linear_result,
    linear_site_statistics,
)
from pipeline.analyses.gwas.logistic import (
    firth_update,
    logistic_layout,
    logistic_site_statistics,
    newton_update,
    start_newton,
)
from pipeline.analyses.gwas.outputs import write_outputs
from pipeline.analyses.gwas.site_data import design, site_data
from pipeline.analyses.gwas.spec import (
    MAX_SCALE_BITS,
    MIN_MOMENT_SCALE_BITS,
    GwasParameters,
    plan_regression_layout,
)
from pipeline.analyses.gwas.state import Moments, RegressionState
from pipeline.analyses.pca import PCA
from pipeline.analyses.protocol import (
    Analysis,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
)
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Layout, Real
from pipeline.analyses.bounds import check_sample_bound
from pipeline.errors import ConfigurationError, InputError

__all__ = ["CARRIED_KEYS", "MOMENTS_ROUND", "REGRESSION", "Regression"]

MOMENTS_ROUND = 0
CARRIED_KEYS = ("variant_ids", "pca_state")
"""Keys of the regression's spec handed over by the earlier phases (QC-passing variants, PCA state)."""


def moments_layout(state: RegressionState) -> Layout:
    """The sample count, and the sums of raw values (bounded by ``max_abs_value``) and of their squares.

    Sites clip their values to ``±max_abs_value`` (:func:`~.site_data.site_data`), so over
    n <= ``max_samples_per_site`` samples a sum is at most n x max_abs_value and a sum of
    squares n x max_abs_value^2, both within :attr:`GwasParameters.raw_moment_bound`
    (max_abs_value >= 1). Only used to standardize, so a few fractional bits suffice.
    """
    p = state.parameters
    m = len(state.columns) + 1
    bound = p.raw_moment_bound

    def real(name: str) -> Real:
        return Real(name, (m,), bound, min_scale_bits=MIN_MOMENT_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    return plan_regression_layout([Count("n_samples", (1,), p.max_samples_per_site), real("sum"), real("sum_squares")],
                                  state.num_participants, hint="lower max_samples_per_site or max_abs_value")


def published_moments(state: RegressionState, total: Mapping[str, np.ndarray]) -> RegressionState:
    """The pooled means and SDs (and for the logistic model, every variant at the null fit).

    Raises:
        InputError: fewer than 2 complete samples, or a binary phenotype without cases or controls.
        ConfigurationError: a covariate or the phenotype is constant.
    """
    n = int(np.asarray(total["n_samples"]).reshape(-1)[0])
    names = [*state.columns, state.parameters.phenotype]
    if n < 2:
        raise InputError(f"gwas: {n} complete samples across the sites (phenotype and every covariate present); nothing to test")
    mean = np.asarray(total["sum"], np.float64) / n
    variance = np.maximum(np.asarray(total["sum_squares"], np.float64) / n - mean**2, 0.0)
    sd = np.sqrt(variance)
    constant = [name for name, s, mu in zip(names, sd, mean) if not s > 1e-9 * max(1.0, abs(mu))]
    if constant:
        raise ConfigurationError(f"gwas: {constant} are constant across the complete samples; drop them from the spec")
    state = dataclasses.replace(state, moments=Moments(n, mean, sd))
    if state.parameters.model == "logistic":
        cases = mean[-1]
        if not 0.0 < cases < 1.0:
            raise InputError(f"gwas: the binary phenotype {names[-1]!r} has no {'cases' if cases == 0 else 'controls'} among complete samples")
        state = dataclasses.replace(state, newton=start_newton(len(state.variant_ids), state.num_coefficients, float(cases)))
    return state


class Regression(Analysis[RegressionState]):
    """The regression rounds of a GWAS (the last phase; see the module docstring)."""

    name = "gwas_regression"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> RegressionState:
        """Parameters, the variants to test (QC-passing) and the PCA state, from the earlier phases.

        Raises:
            ConfigurationError: a wrong spec key or value.
            InputError: no variant passed the census' QC filter.
        """
        parameters = GwasParameters.parse(spec, ignore=CARRIED_KEYS)
        variant_ids = tuple(str(v) for v in spec.get("variant_ids", []))
        if not variant_ids:
            raise InputError("gwas: no variant passed the census QC filter; relax min_call_rate, hwe_p or maf")
        pca_json = spec.get("pca_state")
        pca = None if pca_json is None else PCA.state_from_json(pca_json)
        return RegressionState(parameters=parameters, num_participants=len(participants), variant_ids=variant_ids, pca=pca)

    def state_from_json(self, data: Mapping[str, Any]) -> RegressionState:
        return RegressionState.from_json(data)

    def layout(self, state: RegressionState, round_index: int) -> RoundLayout:
        """Round 0: moments; then per-variant statistics (linear) or Newton rounds (logistic)."""
        if round_index == MOMENTS_ROUND:
            return moments_layout(state)
        if state.parameters.model == "linear":
            return linear_layout(state)
        return logistic_layout(state)

    def site_step(self, state: RegressionState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's moments, linear statistics or Newton contributions (see the module docstring).

        Raw values beyond ``max_abs_value`` and standardized ones beyond ``max_abs_z`` are
        clipped at the site (:mod:`.site_data`), never refused.

        Raises:
            PolicyRefusal: (code ``policy``) more complete samples than the job's max_samples_per_site.
            InputError: a missing or non-numeric column, or a binary phenotype not coded 0/1.
        """
        p = state.parameters
        data = site_data(state, dataset, site.cache)
        check_sample_bound(len(data.phenotype), p.max_samples_per_site, site=site.name,
                           public=f"the site has more complete samples of {p.phenotype!r} and the covariates "
                                  f"{list(p.covariates)} than the job's max_samples_per_site allows")
        if round_index == MOMENTS_ROUND:
            values = np.column_stack([data.raw, data.phenotype])
            return {"n_samples": np.array([len(data.phenotype)], np.int64), "sum": values.sum(axis=0),
                    "sum_squares": (values**2).sum(axis=0)}
        covariates, phenotype = design(data, state)
        if p.model == "linear":
            return linear_site_statistics(state, dataset, site, data, covariates, phenotype)
        return logistic_site_statistics(state, dataset, site, data, covariates, phenotype)

    def coordinator_step(
        self, state: RegressionState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[RegressionState]:
        """Round 0: publish means/SDs; then the linear fit, or one Newton (or Firth) update of every variant."""
        if round_index == MOMENTS_ROUND:
            return published_moments(state, total), False, None
        if state.parameters.model == "linear":
            return state, True, linear_result(state, total, num_sites)
        if state.firth is not None:
            return firth_update(state, total, num_sites)
        return newton_update(state, total, num_sites)

    def site_finish(self, state: RegressionState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Keeps this site's PC scores at the site (``pca_scores.parquet``) when the job ran a PCA phase."""
        if state.pca is None:
            return None
        return PCA.site_finish(state.pca, dataset, site, out_dir)

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """gwas.tsv (+ its GWAS-SSF metadata YAML), manhattan.png and qq.png in ``out_dir``."""
        return write_outputs(result, out_dir)


REGRESSION = Regression()
