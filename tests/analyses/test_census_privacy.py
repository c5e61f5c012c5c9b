"""The census with differential privacy: noise added by the sites in the ring, calibrated on the honest sites.

The released counts minus the exact pooled counts must follow the sum of the sites'
discrete Gaussian noise of the calibrated sigma; one site's noise alone must not meet the
target; the sigma must come from the public terms and the union, so no state the
coordinator hands out can shrink it; and the whole job runs through the real SecAgg
protocol.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import dataset as dataset_io
from pipeline.analyses import SiteCache, SiteContext
from pipeline.analyses.census import (
    CENSUS,
    COUNT_FIELDS,
    FLAG_FIELD,
    CensusState,
    census_sensitivity,
)
from pipeline.errors import ConfigurationError
from pipeline.federation.in_memory import run_in_memory
from pipeline.federation.job_spec import complete_privacy
from pipeline.privacy import (
    PrivacyTerms,
    distributed_discrete_gaussian_rho,
    zcdp_to_approx_dp,
)
from tests.analyses.test_census import SITES, cohort, naive_pooled  # noqa: F401 -- the shared fixture

TERMS = {"epsilon": 3.0, "delta": 1e-6, "honest_sites": 2}


def _context(name: str) -> SiteContext:
    return SiteContext(name=name, min_samples=5, min_allele_count=0, share_variant_keys=True, cache=SiteCache())


def _counts_state(cohort) -> CensusState:  # noqa: F811 -- the fixture
    union = tuple(sorted(set().union(*(ids for ids, _, _ in cohort.values()))))
    state = CENSUS.init({"privacy": TERMS, "min_allele_count": 0}, SITES)
    return CensusState(state.parameters, state.num_participants, union)


def test_dp_census__runs_through_secure_aggregation_and_says_what_it_released(cohort):  # noqa: F811
    datasets = {name: path for name, (_, _, path) in cohort.items()}
    contexts = {name: _context(name) for name in SITES}
    run = run_in_memory(CENSUS, {"privacy": TERMS, "min_allele_count": 0}, datasets, secure=True, threshold=2, seed=1,
                        contexts=contexts)
    summary = run.result.summary
    privacy = summary["privacy"]
    assert privacy["epsilon"] <= TERMS["epsilon"] and privacy["delta"] == TERMS["delta"]
    assert privacy["honest_sites"] == 2 and privacy["sites_adding_noise"] == 3
    assert "differentially private" in summary["disclosure"]
    table = run.result.tables["census_variants"].to_pydict()
    exact = naive_pooled(cohort, table["variant_id"])
    published = np.array(table["publishable"])
    assert published.any()
    released = np.array(table["n_het"], dtype=object)[published].astype(np.int64)
    assert (released >= 0).all()
    assert not np.array_equal(released, exact["n_het"][published])  # noisy, not exact
    assert np.abs(released - exact["n_het"][published]).max() < 10 * privacy["count_noise_sd"]


def test_dp_census__released_minus_exact_follows_the_calibrated_noise(cohort):  # noqa: F811
    """Thousands of noisy values from repeated site steps, summed as the ring sums them."""
    state = _counts_state(cohort)
    sigma = state.noise.sigma
    exact_state = CensusState(CENSUS.init({}, SITES).parameters, len(SITES), state.variant_ids)
    datasets = {name: dataset_io.open_dataset(path) for name, (_, _, path) in cohort.items()}
    contexts = {name: _context(name) for name in SITES}
    fields = (*COUNT_FIELDS, "n_samples")
    exact = {field: sum(CENSUS.site_step(exact_state, 1, datasets[n], contexts[n])[field] for n in SITES) for field in fields}
    residuals = []
    for _ in range(120):
        steps = [CENSUS.site_step(state, 1, datasets[name], contexts[name]) for name in SITES]
        assert all(FLAG_FIELD not in step for step in steps)
        residuals += [np.asarray(sum(step[field] for step in steps) - exact[field]).ravel() for field in fields]
    values = np.concatenate(residuals).astype(np.float64)
    expected_variance = len(SITES) * sigma**2  # a discrete Gaussian's variance is sigma^2 within 1e-10 here (sigma > 3)
    assert sigma > 3 and values.size > 20_000
    standard_error = math.sqrt(expected_variance / values.size)
    assert abs(values.mean()) < 5 * standard_error
    assert abs(values.var() / expected_variance - 1) < 5 * math.sqrt(2 / values.size) + 0.01
    # The shape too: the fraction within one and two standard deviations of a Gaussian sum.
    sd = math.sqrt(expected_variance)
    assert abs(np.mean(np.abs(values) <= sd) - 0.6827) < 0.02 and abs(np.mean(np.abs(values) <= 2 * sd) - 0.9545) < 0.01


def test_dp_census__one_sites_noise_alone_does_not_meet_the_target(cohort):  # noqa: F811
    state = _counts_state(cohort)
    noise = state.noise
    sensitivity = census_sensitivity(len(state.variant_ids))
    assert noise.epsilon <= TERMS["epsilon"] < 1.05 * TERMS["epsilon"]
    alone = zcdp_to_approx_dp(distributed_discrete_gaussian_rho(sensitivity.l2, sensitivity.l1, noise.sigma, 1), TERMS["delta"])
    assert alone > 1.3 * TERMS["epsilon"]


def test_dp_census__sigma_comes_from_the_terms_and_the_union_not_from_the_state_sent(cohort):  # noqa: F811
    state = _counts_state(cohort)
    sent = state.to_json()
    assert "noise" not in sent and "sigma" not in str(sent)
    again = CensusState.from_json(sent)
    assert again.noise == state.noise
    # More variants, more noise per count: one person's privacy covers all of their genotypes.
    wider = CensusState(state.parameters, 3, state.variant_ids + tuple(f"22:{p}:A:G" for p in range(900, 1000)))
    assert wider.noise.sigma > state.noise.sigma
    layout = CENSUS.layout(state, 1)
    names = [field.name for field in layout.fields]
    assert FLAG_FIELD not in names and set(names) == {*COUNT_FIELDS, "n_samples"}


def test_dp_census__the_coordinator_fills_in_the_honest_sites_from_the_threshold():
    spec = {"analysis": "census", "privacy": {"epsilon": 1.0, "delta": 1e-6, "max_colluding": 1}}
    assert complete_privacy(spec, 3)["privacy"]["honest_sites"] == 2
    assert complete_privacy({"analysis": "census"}, 3) == {"analysis": "census"}
    with pytest.raises(ConfigurationError, match="no site's noise would be guaranteed"):
        complete_privacy({**spec, "privacy": {**spec["privacy"], "max_colluding": 3}}, 3)
    with pytest.raises(ConfigurationError, match="honest_sites"):
        complete_privacy({**spec, "privacy": {**spec["privacy"], "honest_sites": 3}}, 3)
    with pytest.raises(ConfigurationError, match="privacy"):
        CENSUS.init({"privacy": {"epsilon": -1, "delta": 1e-6}}, SITES)
    assert PrivacyTerms(1.0, 1e-6, 1, 2) == CENSUS.init({"privacy": complete_privacy(spec, 3)["privacy"]}, SITES).parameters.privacy
