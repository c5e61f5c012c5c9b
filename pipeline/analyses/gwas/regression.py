"""The regression phase of a GWAS: the rs ID round, the moments round, then the linear or logistic rounds.

Round 0, *rs IDs*: a key union of the rs IDs the sites' datasets record for the tested
variants (:mod:`~pipeline.analyses.gwas.rsid`, where the rule is); no sum, no sample.

Round 1, *levels*, only with ``categorical`` covariates: a key union of the levels the
sites' complete cases hold (:mod:`~pipeline.analyses.gwas.covariates`, where the
disclosure rule is); the rounds below then come one later.

Round 1 (or 2), *HWE within ancestry clusters*, only with ``hwe_within: ancestry_clusters``:
each site's 0/1 Hardy-Weinberg flags within clusters of its own samples' PC scores; the
coordinator withholds the flagged variants from the rest (:mod:`~pipeline.analyses.gwas.hwe_clusters`).
The rounds below then come one later (:func:`moments_round`).

Round 1 (or 2), *moments*: per site the count of complete samples and the sums and sums of
squares of every covariate (PCs included) and of the phenotype over them, each value
clipped to ``±max_abs_value`` at the site. The coordinator publishes their means and
SDs; every site standardizes with them and clips the standardized values to
``±max_abs_z``, so each value of the fixed-point encoding is bounded by ``max_abs_z``
(the genotype's fit is invariant to this reparametrization: the intercept absorbs the
shift). A value beyond either bound is clipped, never refused: a refusal would tell
the analyst that the site holds such a value, and bisecting the bound over jobs would
read it off. The number clipped per column stays in the site's log.

From round 2 (or 3) on, :class:`Regression` dispatches to the model's rounds:
:mod:`~pipeline.analyses.gwas.linear` (one round) or
:mod:`~pipeline.analyses.gwas.logistic` (Newton rounds, then the Firth refit).

With privacy terms (:mod:`~pipeline.analyses.gwas.privacy`) the moments round sends
``n``, the sums of ``x / A`` and of ``(x / A)^2`` (``A = max_abs_value``, so one person
moves each by at most 1), rounded to :data:`~.privacy.DP_SCALE_BITS` bits, plus the
site's noise. The coordinator publishes means and SDs from the noisy sums
(:func:`noisy_moments`); only the standardization (and so which values reach the
``max_abs_z`` clip) depends on them, never the fit's reparametrization-invariant
genotype effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses.bounds import check_sample_bound
from pipeline.analyses.gwas.chrx import SEX
from pipeline.analyses.gwas.covariates import (
    LEVEL_KEYS,
    Factors,
    check_site_policy,
    kept_columns,
    levels_layout,
    resolve_levels,
    site_levels,
)
from pipeline.analyses.gwas.hwe_clusters import (
    hwe_clusters_layout,
    screen_hwe,
    site_hwe_flags,
)
from pipeline.analyses.gwas.linear import (
    linear_layout,
    linear_result,
    linear_site_statistics,
    published_short_form,
    short_form_declarations,
    site_short_form_flags,
)
from pipeline.analyses.gwas.logistic import (
    firth_update,
    logistic_layout,
    logistic_site_statistics,
    newton_update,
    start_newton,
)
from pipeline.analyses.gwas.outputs import write_outputs
from pipeline.analyses.gwas.privacy import add_noise, noise_sd, noisy_real
from pipeline.analyses.gwas.rsid import (
    RSID_KEYS,
    resolve_rsids,
    rsid_layout,
    site_rsid_pairs,
)
from pipeline.analyses.gwas.site_data import complete_cases, design, site_data
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
from pipeline.errors import ConfigurationError, InputError
from pipeline.json_arrays import decode_array
from pipeline.privacy import Spend, secret_generator

__all__ = ["CARRIED_KEYS", "HWE_ROUND", "LEVELS_ROUND", "REGRESSION", "RSID_ROUND", "Regression", "moments_round"]

RSID_ROUND = 0
LEVELS_ROUND = 1
"""The categorical covariates' levels round, run only with ``categorical`` covariates."""
HWE_ROUND = 1
"""The ancestry-cluster Hardy-Weinberg round, run only with ``hwe_within: ancestry_clusters`` (one later after a levels round)."""


def _hwe_round(parameters: GwasParameters) -> int:
    return HWE_ROUND + bool(parameters.categorical)


def moments_round(parameters: GwasParameters) -> int:
    """The moments round's number: after the rs ID round, the levels round and the HWE round, those the job has."""
    return _hwe_round(parameters) + (parameters.hwe_within == "ancestry_clusters")


def _has_levels_round(parameters: GwasParameters, round_index: int) -> bool:
    return round_index == LEVELS_ROUND and bool(parameters.categorical)


def _has_hwe_round(parameters: GwasParameters, round_index: int) -> bool:
    return round_index == _hwe_round(parameters) and parameters.hwe_within == "ancestry_clusters"

CARRIED_KEYS = ("variant_ids", "pca_state", "census_variants", "census_complete")
"""Keys of the regression's spec handed over by the earlier phases (QC-passing variants, PCA state,
the census' union size, which variants the census saw complete: :func:`.linear.short_form_candidates`)."""


def moments_layout(state: RegressionState) -> Layout:
    """The sample count, and the sums of raw values (bounded by ``max_abs_value``) and of their squares.

    Sites clip their values to ``±max_abs_value`` (:func:`~.site_data.site_data`), so over
    n <= ``max_samples_per_site`` samples a sum is at most n x max_abs_value and a sum of
    squares n x max_abs_value^2, both within :attr:`GwasParameters.raw_moment_bound`
    (max_abs_value >= 1). Only used to standardize, so a few fractional bits suffice.

    With privacy every field is real at the noise's scale bits, the sums are of ``x / A``
    and ``(x / A)^2`` (at most n_max each), and each bound has room for the site's noise.
    """
    p = state.parameters
    m = len(state.columns) + 1
    noise = state.moments_noise
    hint = "lower max_samples_per_site or max_abs_value"
    if noise is not None:
        n_max = float(p.max_samples_per_site)
        values = 1 + 2 * m
        return plan_regression_layout([noisy_real("n_samples", (1,), n_max, noise, values),
                                       noisy_real("sum", (m,), n_max, noise, values),
                                       noisy_real("sum_squares", (m,), n_max, noise, values)],
                                      state.num_participants, hint=hint)
    bound = p.raw_moment_bound

    def real(name: str) -> Real:
        return Real(name, (m,), bound, min_scale_bits=MIN_MOMENT_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    return plan_regression_layout([Count("n_samples", (1,), p.max_samples_per_site), real("sum"), real("sum_squares"),
                                   *short_form_declarations(state)], state.num_participants, hint=hint)


def published_moments(state: RegressionState, total: Mapping[str, np.ndarray]) -> RegressionState:
    """The pooled means and SDs (and for the logistic model, every variant at the null fit).

    Raises:
        InputError: fewer than 2 complete samples, or a binary phenotype without cases or controls.
        ConfigurationError: a covariate or the phenotype is constant.
    """
    n = int(np.asarray(total["n_samples"]).reshape(-1)[0])
    if n < 2:
        raise InputError(f"gwas: {n} complete samples across the sites (phenotype and every covariate present); nothing to test")
    mean = np.asarray(total["sum"], np.float64) / n
    variance = np.maximum(np.asarray(total["sum_squares"], np.float64) / n - mean**2, 0.0)
    sd = np.sqrt(variance)
    columns = kept_columns(state.parameters, state.factors, total["sum"])
    if state.parameters.sex_required and _constant(sd, mean, state.all_columns.index(SEX)):
        columns = tuple(c for c in (state.all_columns if columns is None else columns) if c != SEX)  # one sex: plink2 adds none
    if columns is not None:  # each factor's reference level and empty levels dropped
        index = [*(state.all_columns.index(name) for name in columns), len(state.all_columns)]
        mean, sd = mean[index], sd[index]
    names = [*(state.columns if columns is None else columns), state.parameters.phenotype]
    constant = [name for i, name in enumerate(names) if _constant(sd, mean, i)]
    if constant:
        raise ConfigurationError(f"gwas: {constant} are constant across the complete samples; drop them from the spec")
    state = dataclasses.replace(state, moments=Moments(n, mean, sd, columns, published_short_form(state, total)))
    if state.parameters.model == "logistic":
        cases = mean[-1]
        if not 0.0 < cases < 1.0:
            raise InputError(f"gwas: the binary phenotype {names[-1]!r} has no {'cases' if cases == 0 else 'controls'} among complete samples")
        state = dataclasses.replace(state, newton=start_newton(len(state.variant_ids), state.num_coefficients, float(cases)))
    return state


def _constant(sd: np.ndarray, mean: np.ndarray, i: int) -> bool:
    """Whether column ``i`` is constant over the complete samples (its SD is rounding next to its mean)."""
    return not sd[i] > 1e-9 * max(1.0, abs(mean[i]))


def noisy_moments(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> RegressionState:
    """Means and SDs from the moments round's noisy sums (privacy): post-processing only.

    The mean is clipped to ``±A`` and the variance to ``[floor, A^2]``, where ``floor`` is
    (a first-order bound on) the noise's standard deviation in the variance,
    ``(A^2 + 2 |mean| A) tau / n``: a noisy variance can be negative, and an underestimated
    SD would clip (bias) many standardized values at ``max_abs_z``, while an overestimated
    one only costs precision. No column is refused as constant: the noise hides it.

    Raises:
        InputError: the noisy count of complete samples is below 2.
    """
    noise = state.moments_noise
    assert noise is not None
    a = state.parameters.max_abs_value
    n = int(np.rint(float(np.asarray(total["n_samples"]).reshape(-1)[0])))
    if n < 2:
        raise InputError(f"gwas: {n} complete samples (a noisy count) across the sites; nothing to test")
    tau = noise_sd(noise, num_sites)  # of each noisy sum of x / A or (x / A)^2
    mean = np.clip(a * np.asarray(total["sum"], np.float64) / n, -a, a)
    second = np.clip(a * a * np.asarray(total["sum_squares"], np.float64) / n, 0.0, a * a)
    floor = (a * a + 2.0 * np.abs(mean) * a) * tau / n
    variance = np.minimum(np.maximum(second - mean**2, floor), a * a)
    return dataclasses.replace(state, moments=Moments(n, mean, np.sqrt(variance)))


def _census_complete(carried: Any) -> np.ndarray | None:
    """The census' complete-variant mask as carried in the spec (:func:`~pipeline.json_arrays.encode_array`), if any."""
    return None if carried is None else np.asarray(decode_array(carried), bool)


class Regression(Analysis[RegressionState]):
    """The regression rounds of a GWAS (the last phase; see the module docstring)."""

    name = "gwas_regression"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> RegressionState:
        """Parameters, the variants to test (QC-passing) and the PCA state, from the earlier phases.

        Raises:
            ConfigurationError: a wrong spec key or value; with privacy, no census union
                size handed over, or noise beyond what the sampler draws.
            InputError: no variant passed the census' QC filter.
        """
        parameters = GwasParameters.parse(spec, ignore=CARRIED_KEYS)
        variant_ids = tuple(str(v) for v in spec.get("variant_ids", []))
        if not variant_ids:
            raise InputError("gwas: no variant passed the census QC filter; relax min_call_rate, hwe_p or maf")
        pca_json = spec.get("pca_state")
        pca = None if pca_json is None else PCA.state_from_json(pca_json)
        census_variants = spec.get("census_variants")
        if parameters.privacy is not None and not isinstance(census_variants, int):
            raise ConfigurationError("gwas: with privacy the regression phase needs census_variants (the census phase's "
                                     "union size) to account the job's whole budget; run it as part of a gwas job")
        factors = None
        if parameters.categorical or parameters.site_covariate:
            factors = Factors(sites=tuple(participants) if parameters.site_covariate else ())
        state = RegressionState(parameters=parameters, num_participants=len(participants), variant_ids=variant_ids,
                                pca=pca, census_variants=census_variants if parameters.privacy is not None else None,
                                factors=factors, census_complete=_census_complete(spec.get("census_complete")))
        if parameters.privacy is not None:
            # Computing the rounds' noise now refuses, before any round of the phase, noise the sampler cannot draw.
            _noises = (state.moments_noise, state.statistics_noise)
        return state

    def state_from_json(self, data: Mapping[str, Any]) -> RegressionState:
        return RegressionState.from_json(data)

    def layout(self, state: RegressionState, round_index: int) -> RoundLayout:
        """Round 0: the rs ID union; (the HWE flags;) moments; then per-variant statistics (linear) or Newton rounds (logistic)."""
        if round_index == RSID_ROUND:
            return rsid_layout()
        if _has_levels_round(state.parameters, round_index):
            return levels_layout()
        if _has_hwe_round(state.parameters, round_index):
            return hwe_clusters_layout(state)
        if round_index == moments_round(state.parameters):
            return moments_layout(state)
        if state.parameters.model == "linear":
            return linear_layout(state)
        return logistic_layout(state)

    def site_step(self, state: RegressionState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's rs ID pairs, HWE flags, moments, linear statistics or Newton contributions (see the module docstring).

        Raw values beyond ``max_abs_value`` and standardized ones beyond ``max_abs_z`` are
        clipped at the site (:mod:`.site_data`), never refused.

        Raises:
            PolicyRefusal: (code ``policy``) more complete samples than the job's max_samples_per_site.
            InputError: a missing or non-numeric column, or a binary phenotype not coded 0/1.
        """
        if round_index == RSID_ROUND:
            return {RSID_KEYS: site_rsid_pairs(state.variant_ids, dataset, site)}
        p = state.parameters
        check_site_policy(p, site)
        if _has_levels_round(p, round_index):
            cases = [complete_cases(p.single(name), dataset) for name in p.all_phenotypes]
            return {LEVEL_KEYS: site_levels([c.keep for c in cases], cases[0].categories)}
        if _has_hwe_round(p, round_index):
            return site_hwe_flags(state, dataset, site)
        data = site_data(state, dataset, site.cache, site=site.name)
        check_sample_bound(len(data.phenotype), p.max_samples_per_site, site=site.name,
                           public=f"the site has more complete samples of {p.phenotype!r} and the covariates "
                                  f"{list(p.covariates)} than the job's max_samples_per_site allows")
        if round_index == moments_round(p):
            values = np.column_stack([data.raw, data.phenotype])
            noise = state.moments_noise
            if noise is not None:  # differential privacy: sums of x / A, so one person moves each by <= 1
                values = values / p.max_abs_value
                sums = {"n_samples": np.array([float(len(data.phenotype))]), "sum": values.sum(axis=0),
                        "sum_squares": (values**2).sum(axis=0)}
                return add_noise(sums, noise, rng=secret_generator())
            return {"n_samples": np.array([len(data.phenotype)], np.int64), "sum": values.sum(axis=0),
                    "sum_squares": (values**2).sum(axis=0), **site_short_form_flags(state, dataset, site, data)}
        covariates, phenotype = design(data, state)
        if p.model == "linear":
            return linear_site_statistics(state, dataset, site, data, covariates, phenotype)
        return logistic_site_statistics(state, dataset, site, data, covariates, phenotype)

    def coordinator_step(
        self, state: RegressionState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[RegressionState]:
        """Round 0: keep the rs IDs; (withhold the HWE-flagged variants;) publish means/SDs; then the linear fit, or one
        Newton (or Firth) update.

        Raises:
            ProtocolError: (round 0) the union holds a string that is not an rs ID pair (:func:`.rsid.resolve_rsids`);
                (HWE round) flags no honest sites give (:func:`.hwe_clusters.screen_hwe`).
            InputError: (HWE round) every tested variant was flagged.
        """
        if round_index == RSID_ROUND:
            return dataclasses.replace(state, rsids=resolve_rsids(total[RSID_KEYS], state.variant_ids)), False, None
        if _has_levels_round(state.parameters, round_index):
            assert state.factors is not None
            levels = resolve_levels(total[LEVEL_KEYS], state.parameters)
            return dataclasses.replace(state, factors=dataclasses.replace(state.factors, levels=levels)), False, None
        if _has_hwe_round(state.parameters, round_index):
            return screen_hwe(state, total, num_sites), False, None
        if round_index == moments_round(state.parameters):
            if state.moments_noise is not None:
                return noisy_moments(state, total, num_sites), False, None
            return published_moments(state, total), False, None
        if state.parameters.model == "linear":
            return state, True, linear_result(state, total, num_sites)
        if state.firth is not None:
            return firth_update(state, total, num_sites)
        return newton_update(state, total, num_sites)

    def privacy_spend(self, state: RegressionState, round_index: int) -> Spend | None:
        """The moments and statistics rounds' noise and privacy, when the job asked for differential privacy."""
        if round_index == RSID_ROUND or _has_levels_round(state.parameters, round_index) or \
                _has_hwe_round(state.parameters, round_index):
            return None
        return state.moments_noise if round_index == moments_round(state.parameters) else state.statistics_noise

    def site_finish(self, state: RegressionState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Keeps this site's PC scores at the site (``pca_scores.parquet``) when the job ran a PCA phase."""
        if state.pca is None:
            return None
        return PCA.site_finish(state.pca, dataset, site, out_dir)

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """gwas.tsv.gz (+ its tabix index and GWAS-SSF metadata YAML), manhattan.png, qq.png and the regional plots in ``out_dir``."""
        return write_outputs(result, out_dir)


REGRESSION = Regression()
