"""The logistic model's rounds: federated Newton-Raphson over all variants, and the Firth fallback.

Every round each site returns, for the variants still iterating, the score and the
packed Fisher information at the public coefficients (the first round also the
per-variant allele counts among cases and controls); the coordinator updates every
coefficient vector in one batched solve (:func:`pipeline.stats.glm.newton_step`).
Wald tests at convergence. Separation (an allele absent from the cases or the
controls, or a coefficient beyond :data:`MAX_COEFFICIENT`) and non-convergence are
reported per variant (``SEPARATION``, ``UNFINISHED``), as plink2 does.

A site whose own minor allele count of a variant is non-zero and below its policy
minimum is left out of that variant in every round (Newton and Firth): it sends zeros
for it, as for a variant it does not hold, and the fit is the pooled fit of the other
sites (:mod:`~pipeline.analyses.gwas.outputs` says why and what is published).

With ``firth: true`` those variants are then refitted with Firth's penalized likelihood
(plink2's firth-fallback): one iteration is two rounds at the same coefficients,
``information`` (the sum of the sites' Fisher information, whose inverse becomes
public) and ``score`` (each site's modified score, whose hat diagonal needs that
inverse), then the step ``I^-1 U*``, at most 5 per coefficient as logistf's ``maxstep``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from pipeline.analyses.census import below_minimum
from pipeline.analyses.gwas.outputs import (
    VariantFits,
    check_variant_sums,
    regression_result,
)
from pipeline.analyses.gwas.site_data import SiteData, complete_calls
from pipeline.analyses.gwas.spec import (
    MAX_SCALE_BITS,
    MIN_SCALE_BITS,
    plan_regression_layout,
)
from pipeline.analyses.gwas.state import (
    ALLELE_SUMS,
    COUNT_NAMES,
    FirthRound,
    FirthState,
    NewtonState,
    RegressionState,
    VariantCounts,
)
from pipeline.analyses.protocol import Result, SiteContext, StepResult
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Declaration, Layout, Real
from pipeline.stats import glm

__all__ = ["MAX_COEFFICIENT", "firth_update", "logistic_fits", "logistic_layout", "logistic_result", "logistic_site_statistics", "newton_update", "start_newton"]

MAX_COEFFICIENT = 30.0
"""A logistic coefficient beyond this (log-odds per unit) means the fit diverges: separation."""


def _null_intercept(cases: float) -> float:
    """The intercept-only model's log-odds at a case fraction of ``cases``."""
    return math.log(cases / (1.0 - cases))


def start_newton(num_variants: int, num_coefficients: int, cases: float) -> NewtonState:
    """Every variant at the null model (intercept at the pooled log-odds), all still iterating."""
    theta = np.zeros((num_variants, num_coefficients + 1))
    theta[:, 0] = _null_intercept(cases)
    return NewtonState(iteration=0, theta=theta, active=np.arange(num_variants),
                       status=np.full(num_variants, glm.STATUS.index("UNFINISHED"), np.int8),
                       variance=np.full(num_variants, np.nan))


def _first_round(state: RegressionState) -> bool:
    """Whether the next round is the first Newton round (the one that also sums the counts)."""
    return state.firth is None and state.logistic_fit.iteration == 0


def logistic_layout(state: RegressionState) -> Layout:
    """``score`` and ``information`` of the variants still iterating (the first round also their counts).

    The ALT allele sums (``alt_count``, ``alt_case``) are counts with ``dosages:
    hard_calls``; otherwise sites may sum dosages, so they are reals bounded by
    2 n_max, with every fractional bit the budget leaves (at least :data:`MIN_SCALE_BITS`:
    dosages on plink2's 1/16384 grid pass exactly).
    """
    p = state.parameters
    k = state.num_coefficients
    active = len(state.firth.active) if state.firth is not None else len(state.logistic_fit.active)
    bound = p.statistic_bound

    def real(name: str, shape: tuple[int, ...], bound: float) -> Real:
        return Real(name, shape, bound, min_scale_bits=MIN_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    declarations: list[Declaration] = [real("score", (active, k + 1), bound),
                                       real("information", (active, glm.packed_size(k)), bound)]
    if _first_round(state):
        alleles = 2 * p.max_samples_per_site
        declarations += [Count(name, (active,), alleles) if name not in ALLELE_SUMS or p.integer_genotypes
                         else real(name, (active,), float(alleles)) for name in COUNT_NAMES[:-1]]
        declarations.append(Count("below_min", (active,), 1))
    return plan_regression_layout(declarations, state.num_participants, hint="lower max_samples_per_site or max_abs_z")


def logistic_site_statistics(state: RegressionState, dataset: Dataset, site: SiteContext, data: SiteData,
                             covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """The site's score and information (plain or Firth-modified) of the variants still iterating.

    A variant where the site's own minor allele count among its complete samples is
    non-zero and below its policy minimum (:func:`~pipeline.analyses.census.below_minimum`)
    is left out: zeros for its score, information and counts, as for a variant the site
    does not hold, with its 0/1 flag sent in the first round. The flag is recomputed from
    the same calls every round, Newton and Firth alike: the complete samples and their
    calls do not change within a job, so the site is left out of the same variants in
    every round, and every round's sums are of the same samples.
    """
    k = covariates.shape[1]
    firth = state.firth
    inverse: np.ndarray | None
    if firth is None:
        newton = state.logistic_fit
        active = newton.active
        theta_active = newton.theta[active]
        inverse = None
    else:
        active = firth.index[firth.active]
        theta_active = firth.theta[firth.active]
        if firth.next_round is FirthRound.SCORE:
            assert firth.inverse is not None
            inverse = glm.unpack_symmetric(firth.inverse[firth.active], k)
        else:
            inverse = np.zeros((len(active), k + 1, k + 1))
    slot = np.full(len(state.variant_ids), -1, np.int64)
    slot[active] = np.arange(len(active))
    a = len(active)
    out = {"score": np.zeros((a, k + 1)), "information": np.zeros((a, glm.packed_size(k)))}
    first = _first_round(state)
    if first:
        out.update({name: np.zeros(a, np.float64 if name in ALLELE_SUMS else np.int64) for name in COUNT_NAMES})
    case = phenotype == 1.0
    for rows, calls in complete_calls(state, dataset, data, site.cache, keep_rows=True):
        where = slot[rows]
        use = where >= 0
        if not use.any():
            continue
        calls = calls[use]
        called = calls >= 0
        dosage = np.where(called, calls, 0).astype(np.float64)  # hard calls or dosages (then -1 where missing)
        small = below_minimum(called.sum(axis=1), dosage.sum(axis=1), site)
        if first:
            out["below_min"][where[use]] = small
        # Left out: the variants where the site's own count is a small cell get zeros, as the ones it does not hold.
        kept = small == 0
        if not kept.any():
            continue
        into = where[use][kept]
        if not kept.all():
            calls, called, dosage = calls[kept], called[kept], dosage[kept]
        if inverse is None:
            stats = glm.logistic_statistics(calls, theta_active[into], covariates, phenotype)
        else:
            stats = glm.firth_statistics(calls, theta_active[into], inverse[into], covariates, phenotype)
        out["score"][into] = stats["score"]
        out["information"][into] = stats["information"]
        if first:
            out["n"][into] = called.sum(axis=1)
            out["n_case"][into] = (called & case).sum(axis=1)
            out["alt_count"][into] = dosage.sum(axis=1)
            out["alt_case"][into] = dosage[:, case].sum(axis=1)
    if first and state.parameters.integer_genotypes:
        for name in ALLELE_SUMS:
            out[name] = np.rint(out[name]).astype(np.int64)  # sums of hard calls: exact integers
    return out


def _design_status(n: np.ndarray, alt_count: np.ndarray, num_parameters: int) -> np.ndarray:
    """TOO_FEW_SAMPLES or CONST_ALLELE from the summed counts (0 where the design is fine)."""
    status = np.where((alt_count == 0) | (alt_count == 2 * n), glm.STATUS.index("CONST_ALLELE"), 0)
    return np.where(n <= num_parameters, glm.STATUS.index("TOO_FEW_SAMPLES"), status).astype(np.int8)


def _separated(counts: VariantCounts) -> np.ndarray:
    """Variants whose ALT or REF allele is absent from the cases or from the controls."""
    alt_control = counts.alt_count - counts.alt_case
    ref_case = 2 * counts.n_case - counts.alt_case
    ref_control = 2 * (counts.n - counts.n_case) - alt_control
    return (counts.alt_case == 0) | (alt_control == 0) | (ref_case == 0) | (ref_control == 0)


def newton_update(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> StepResult[RegressionState]:
    """One Newton step of every variant still iterating; at the end the Firth refit or the result."""
    p = state.parameters
    newton = state.logistic_fit
    active = newton.active
    theta, status, variance = newton.theta.copy(), newton.status.copy(), newton.variance.copy()
    if newton.iteration == 0:
        counts = VariantCounts.from_total(total)
        separated = _separated(counts)
        aliased = glm.null_information_aliased(np.asarray(total["information"]), theta.shape[1] - 1)
        status[active[aliased]] = glm.STATUS.index("VIF_TOO_HIGH")  # as the linear model, plink2's VIF_INFINITE
        separated &= ~aliased
    else:
        aliased = np.zeros(len(active), bool)
        counts = newton.summed_counts
        separated = np.zeros(len(active), bool)
    step = glm.newton_step(theta[active], np.asarray(total["score"]), np.asarray(total["information"]))
    theta[active] = step.theta
    variance[active] = step.variance
    diverged = ~np.isfinite(step.step) | (np.max(np.abs(step.theta[:, 1:]), axis=1) > MAX_COEFFICIENT)
    converged = step.step <= p.tolerance
    diverged &= ~aliased
    status[active[separated | diverged]] = glm.STATUS.index("SEPARATION")
    status[active[converged & ~separated & ~diverged & ~aliased]] = glm.STATUS.index("OK")
    still = active[~(separated | diverged | converged | aliased)]
    iteration = newton.iteration + 1
    newton = NewtonState(iteration=iteration, theta=theta, active=still, status=status, variance=variance, counts=counts)
    if still.size and iteration < p.max_iterations:
        return dataclasses.replace(state, newton=newton), False, None
    design = _design_status(counts.n, counts.alt_count, len(state.columns) + 2)
    status = np.where(design != 0, design, status)
    state = dataclasses.replace(state, newton=dataclasses.replace(newton, status=status))
    failed = np.flatnonzero(np.isin(status, (glm.STATUS.index("SEPARATION"), glm.STATUS.index("UNFINISHED"))))
    if p.firth and failed.size:
        cases = float(state.standardization.mean[-1])
        firth = FirthState.start(failed, state.num_coefficients, _null_intercept(cases))
        return dataclasses.replace(state, firth=firth), False, None
    return state, True, logistic_result(state, num_sites)


def firth_update(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> StepResult[RegressionState]:
    """One round of the Firth refit (see the module docstring); at the end the result."""
    p = state.parameters
    firth = state.firth
    assert firth is not None
    k = state.num_coefficients
    active = firth.active
    theta, variance, status = firth.theta.copy(), firth.variance.copy(), firth.status.copy()
    inverse = firth.inverse.copy() if firth.inverse is not None else np.zeros((len(firth.index), glm.packed_size(k)))
    step = glm.newton_step(theta[active], np.asarray(total["score"]), np.asarray(total["information"]))
    inverse[active] = glm.pack_symmetric(step.inverse, k)
    variance[active] = step.variance
    if firth.next_round is FirthRound.INFORMATION:
        still = active
    else:
        theta[active] = step.theta
        diverged = ~np.isfinite(step.step) | (np.max(np.abs(step.theta[:, 1:]), axis=1) > MAX_COEFFICIENT)
        converged = (step.step <= p.tolerance) & ~diverged
        status[active[converged]] = glm.STATUS.index("OK")
        still = active[~(diverged | converged)]
    iteration = firth.iteration + (firth.next_round is FirthRound.SCORE)
    following = FirthRound.SCORE if firth.next_round is FirthRound.INFORMATION else FirthRound.INFORMATION
    firth = FirthState(index=firth.index, active=still, theta=theta, inverse=inverse, iteration=iteration,
                       next_round=following, variance=variance, status=status)
    state = dataclasses.replace(state, firth=firth)
    if still.size and iteration < p.max_iterations:
        return state, False, None
    return state, True, logistic_result(state, num_sites)


def logistic_result(state: RegressionState, num_sites: int) -> Result:
    """Wald tests of every variant at its final fit (Firth's where refitted)."""
    return regression_result(state, logistic_fits(state, num_sites), num_sites, layout=logistic_layout(state))


def logistic_fits(state: RegressionState, num_sites: int) -> VariantFits:
    """Every variant's Wald test at its final fit (Firth's where refitted), its sums checked.

    Raises:
        ProtocolError: sums no honest sites can give (:func:`~.outputs.check_variant_sums`).
    """
    newton = state.logistic_fit
    counts = newton.summed_counts
    theta, variance, status = newton.theta.copy(), newton.variance.copy(), newton.status.copy()
    firth_used = np.zeros(len(status), bool)
    if state.firth is not None:
        index = state.firth.index
        theta[index] = state.firth.theta
        variance[index] = state.firth.variance
        status[index] = state.firth.status
        firth_used[index] = True
    beta = theta[:, -1]
    se, z, p_value = glm.wald_test(beta, variance)
    nan = np.where(status == 0, 1.0, np.nan)
    alt = counts.alt_count.astype(np.float64)
    check_variant_sums(state, counts.n, alt, counts.below_min, num_sites)
    return VariantFits(beta * nan, se * nan, z * nan, p_value * nan, status, counts.n, alt, counts.below_min, firth_used)
