"""The GWAS with differential privacy: every noisy round accounted, the noise as calibrated, the fit of noisy sums.

The job's rounds together must spend at most the rho of its (epsilon, delta) target; the
released minus the exact sums must follow the sum of the sites' discrete Gaussian noise
of the calibrated sigma; one person's largest contribution must stay within the declared
sensitivity (checked against contributions computed by the site kernels); the noisy fit
must equal the exact fit without noise and its first-order standard error must match
Monte Carlo; and combinations without a noisy mode must be refused, not run exactly.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math

import numpy as np
import pytest
import yaml

from pipeline.analyses import SiteCache, SiteContext
from pipeline.analyses.census import CensusState
from pipeline.analyses.gwas import (
    GWAS,
    REGRESSION,
    GwasParameters,
    RegressionState,
    write_outputs,
)
from pipeline.analyses.gwas.linear import NOISY_FIELDS, noisy_linear_fit
from pipeline.analyses.gwas.privacy import (
    CENSUS_SHARE,
    DP_SCALE_BITS,
    MOMENTS_SHARE,
    STATISTICS_SHARE,
    statistics_sensitivity,
)
from pipeline.analyses.gwas.regression import moments_round
from pipeline.dataset import open_dataset
from pipeline.encoding import Layout
from pipeline.errors import ConfigurationError
from pipeline.federation.in_memory import run_in_memory
from pipeline.federation.localhost import federate
from pipeline.privacy import rho_for_epsilon
from pipeline.stats import glm
from tests.analyses import gwas_support as gs

TERMS = {"epsilon": 3.0, "delta": 1e-6, "honest_sites": 2}
DP = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1, "model": "linear",
      "phenotype": "quant_trait", "max_abs_value": 100, "max_abs_z": 5, "privacy": TERMS}
SCALE = float(1 << DP_SCALE_BITS)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.make_cohort(tmp_path_factory.mktemp("gwas-dp"))


@pytest.fixture(scope="module")
def runs(cohort):
    """The DP job with plain sums and through the secure-aggregation protocol (threshold 2 of 3)."""
    return {mode: run_in_memory(GWAS, DP, gs.dataset_paths(cohort), secure=mode == "secure", threshold=2, seed=4)
            for mode in ("plain", "secure")}


@pytest.fixture(scope="module")
def dp_run(runs):
    return runs["plain"]


def _context(name: str) -> SiteContext:
    return SiteContext(name=name, min_samples=5, min_allele_count=0, share_variant_keys=True, cache=SiteCache())


@pytest.mark.parametrize("mode", ["plain", "secure"])
def test_gwas_privacy__runs_and_says_what_it_released(runs, mode, tmp_path):
    dp_run = runs[mode]
    summary = dp_run.result.summary
    privacy = summary["privacy"]
    assert privacy["epsilon"] <= TERMS["epsilon"] == privacy["target_epsilon"] and privacy["delta"] == TERMS["delta"]
    assert privacy["honest_sites"] == 2 and privacy["sites_adding_noise"] == 3
    assert [(r["phase"], r["round"]) for r in privacy["rounds"]] == [("census", "counts"), ("gwas", "moments"),
                                                                       ("gwas", "statistics")]
    assert "differentially private" in summary["disclosure"] and "key round" in summary["disclosure"]
    assert summary["phases"]["census"]["privacy"]["sigma"] == privacy["rounds"][0]["sigma"]
    round_index, state = dp_run.states[-1]
    layout = GWAS.layout(state, round_index)
    assert isinstance(layout, Layout) and [f.name for f in layout.fields] == list(NOISY_FIELDS)
    assert {f.encoding.scale_bits for f in layout.fields} == {DP_SCALE_BITS}
    statuses = set(dp_run.result.tables["gwas_status"].column("status").to_pylist())
    assert statuses <= {"OK", "NOT_TESTED", "VIF_TOO_HIGH", "CONST_ALLELE", "TOO_FEW_SAMPLES"}  # nothing withheld by flags
    write_outputs(dp_run.result, tmp_path)
    meta = yaml.safe_load((tmp_path / "gwas.tsv.gz-meta.yaml").read_text())
    assert "differentially private" in meta["author_notes"].lower() and "noisy" in meta["analysis_software"]
    assert meta["differential_privacy"]["epsilon"] == privacy["epsilon"]
    assert gzip.decompress((tmp_path / "gwas.tsv.gz").read_bytes()).startswith(b"chromosome\t")  # the file stays plain GWAS-SSF


@pytest.mark.parametrize("mode", ["plain", "secure"])
def test_gwas_privacy__the_rounds_rho_add_up_to_the_jobs_budget(runs, mode):
    dp_run = runs[mode]
    spends = [(r, GWAS.privacy_spend(state, r)) for r, state in dp_run.states]
    noisy = [spend for _, spend in spends if spend is not None]
    assert [r for r, spend in spends if spend is None] == [0, 2]  # only the key unions are exact: census keys, rs IDs
    assert len(noisy) == 3
    budget = rho_for_epsilon(TERMS["epsilon"], TERMS["delta"])
    total = sum(spend.rho for spend in noisy)
    assert total == pytest.approx(dp_run.result.summary["privacy"]["rho"], rel=1e-12)
    assert 0.995 * budget <= total <= budget
    for spend, share in zip(noisy, (CENSUS_SHARE, MOMENTS_SHARE, STATISTICS_SHARE)):
        assert 0.99 * share * budget <= spend.rho <= share * budget
        assert spend.honest_sites == 2
    census = [state.inner for _, state in dp_run.states if isinstance(state.inner, CensusState)][-1]
    assert census.noise == noisy[0]  # the census phase calibrated on its share, as the summary accounts it


def test_gwas_privacy__released_minus_exact_follows_the_calibrated_noise(cohort, dp_run):
    """Thousands of noisy values from repeated site steps of both noisy regression rounds, in ring units."""
    _, phased = dp_run.states[-1]
    noisy_state = phased.inner
    exact_state = dataclasses.replace(noisy_state, parameters=dataclasses.replace(noisy_state.parameters, privacy=None))
    datasets = {name: open_dataset(site.path) for name, site in cohort.items()}
    contexts = {name: _context(name) for name in cohort}
    moments = moments_round(noisy_state.parameters)
    for local_round, fields, noise in ((moments, ("n_samples", "sum", "sum_squares"), noisy_state.moments_noise),
                                       (moments + 1, NOISY_FIELDS, noisy_state.statistics_noise)):
        exact = {}
        for name in cohort:
            step = REGRESSION.site_step(exact_state, local_round, datasets[name], contexts[name])
            if local_round == moments:  # the noisy moments are of x / max_abs_value
                a = noisy_state.parameters.max_abs_value
                step = {"n_samples": step["n_samples"], "sum": step["sum"] / a, "sum_squares": step["sum_squares"] / a**2}
            exact[name] = {f: np.rint(np.asarray(step[f], np.float64) * SCALE) for f in fields}
        residuals = []
        for _ in range(3000 if local_round == moments else 40):
            summed = 0
            for name in cohort:
                step = REGRESSION.site_step(noisy_state, local_round, datasets[name], contexts[name])
                assert set(step) == set(fields)
                ring = np.concatenate([np.asarray(step[f], np.float64).ravel() * SCALE - exact[name][f].ravel() for f in fields])
                assert np.array_equal(ring, np.rint(ring))  # rint(x 2^s) + k: the noise is whole ring units
                summed = summed + ring
            residuals.append(summed)
        values = np.concatenate(residuals)
        variance = len(cohort) * noise.sigma**2  # N_Z(0, sigma^2) has variance sigma^2 to 1e-10 here (sigma > 3)
        assert noise.sigma > 3 and values.size > 20_000
        assert abs(values.mean()) < 5 * math.sqrt(variance / values.size)
        assert abs(values.var() / variance - 1) < 5 * math.sqrt(2 / values.size) + 0.01
        sd = math.sqrt(variance)
        assert abs(np.mean(np.abs(values) <= sd) - 0.6827) < 0.02 and abs(np.mean(np.abs(values) <= 2 * sd) - 0.9545) < 0.01


def test_gwas_privacy__one_persons_contribution_stays_within_the_sensitivity():
    """The declared bound against contributions the site kernel computes for single people."""
    z, covariates, variants = 5.0, 2, 7
    k = covariates + 1
    bound = statistics_sensitivity(variants, k, z)
    values = variants * (glm.packed_size(k) + k + 2)
    real_l2, real_l1 = (bound.l2 - math.sqrt(values)) / SCALE, (bound.l1 - values) / SCALE
    rng = np.random.default_rng(0)

    def contribution(c: np.ndarray, y: float, calls: np.ndarray) -> np.ndarray:
        stats = glm.linear_statistics(calls[:, None], np.concatenate([[1.0], c])[None, :], np.array([y]))
        return np.concatenate([stats[f].reshape(variants, -1) for f in ("xtx", "xty", "yty")], axis=1).ravel()

    worst = contribution(np.full(covariates, z), z, np.full(variants, 2, np.int8))
    assert np.linalg.norm(worst) == pytest.approx(real_l2) and np.abs(worst).sum() == pytest.approx(real_l1)
    for _ in range(200):
        person = contribution(rng.uniform(-z, z, covariates), rng.uniform(-z, z), rng.integers(-1, 3, variants).astype(np.int8))
        assert np.linalg.norm(person) <= real_l2 and np.abs(person).sum() <= real_l1
    assert statistics_sensitivity(4 * variants, k, z).l2 == pytest.approx(2 * real_l2 * SCALE + math.sqrt(4 * values))


def test_gwas_privacy__sigma_is_derived_from_the_terms_and_the_state_never_stored(dp_run):
    _, phased = dp_run.states[-1]
    state = phased.inner
    sent = state.to_json()
    assert "sigma" not in str(sent)
    again = RegressionState.from_json(sent)
    assert again.statistics_noise == state.statistics_noise and again.moments_noise == state.moments_noise
    more = dataclasses.replace(state, variant_ids=state.variant_ids + tuple(f"22:{p}:A:G" for p in range(2000, 2100)))
    assert more.statistics_noise.sigma > state.statistics_noise.sigma  # privacy covers all of a person's variants
    wider = dataclasses.replace(state, parameters=dataclasses.replace(state.parameters, max_abs_z=10.0))
    assert wider.statistics_noise.sigma > 3.5 * state.statistics_noise.sigma  # noise grows like max_abs_z^2


def test_gwas_privacy__exact_stays_the_default(cohort):
    exact = run_in_memory(GWAS, {key: value for key, value in DP.items() if key != "privacy"}, gs.dataset_paths(cohort))
    assert all(GWAS.privacy_spend(state, r) is None for r, state in exact.states)
    assert "privacy" not in exact.result.summary
    round_index, state = exact.states[-1]
    assert [f.name for f in GWAS.layout(state, round_index).fields] == ["xtx", "xty", "yty", "n", "below_min"]


@pytest.mark.parametrize("change", [{"model": "logistic", "phenotype": "binary_trait"}, {"pcs": 2}])
def test_gwas_privacy__combinations_without_a_noisy_mode_are_refused(change):
    with pytest.raises(ConfigurationError, match="gwas with privacy supports model: linear with pcs: 0"):
        GWAS.init({**DP, **change}, gs.SITES)
    GWAS.init({key: value for key, value in {**DP, **change}.items() if key != "privacy"}, gs.SITES)  # exact: fine


def test_gwas_privacy__a_malformed_privacy_block_names_the_key():
    with pytest.raises(ConfigurationError, match="gwas: privacy must be"):
        GwasParameters.parse({**DP, "privacy": {"epsilon": 0.0, "delta": 1e-6}})
    with pytest.raises(ConfigurationError, match="privacy"):
        GwasParameters.parse({**DP, "privacy": {"epsilon": 1.0}})
    parameters = GwasParameters.parse(DP)
    assert GwasParameters.from_json(parameters.to_json()) == parameters
    assert parameters.census_spec()["privacy"]["epsilon"] < TERMS["epsilon"]  # the census' share only


@pytest.fixture(scope="module")
def statistics():
    """Exact sufficient statistics of 3 variants over 5000 samples (intercept, 2 covariates)."""
    rng = np.random.default_rng(0)
    n = 5000
    covariates = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    calls = rng.binomial(2, 0.3, size=(3, n)).astype(np.int8)
    phenotype = 0.1 * calls[0] + 0.3 * covariates[:, 1] + rng.normal(size=n)
    return glm.linear_statistics(calls, covariates, phenotype)


def test_gwas_privacy__the_noisy_fit_without_noise_is_the_exact_fit(statistics):
    exact = glm.linear_fit(statistics["xtx"], statistics["xty"], statistics["yty"], statistics["n"])
    fit = noisy_linear_fit(statistics["xtx"], statistics["xty"], statistics["yty"], 0.0)
    np.testing.assert_allclose(fit.beta, exact.beta, rtol=1e-12)
    np.testing.assert_allclose(fit.standard_error, exact.standard_error, rtol=1e-12)
    np.testing.assert_allclose(fit.p_value, exact.p_value, rtol=1e-9)


def test_gwas_privacy__the_noisy_fits_standard_error_matches_monte_carlo(statistics):
    tau, draws = 30.0, 4000
    exact = glm.linear_fit(statistics["xtx"], statistics["xty"], statistics["yty"], statistics["n"])
    fit = noisy_linear_fit(statistics["xtx"], statistics["xty"], statistics["yty"], tau**2)
    predicted = np.sqrt(fit.standard_error**2 - exact.standard_error**2)
    rng = np.random.default_rng(1)
    v = len(statistics["yty"])
    xtx = np.tile(statistics["xtx"], (draws, 1)) + rng.normal(0, tau, (draws * v, statistics["xtx"].shape[1]))
    xty = np.tile(statistics["xty"], (draws, 1)) + rng.normal(0, tau, (draws * v, statistics["xty"].shape[1]))
    noisy = glm.linear_fit(xtx, xty, np.tile(statistics["yty"], draws), np.tile(statistics["n"], draws))
    observed = noisy.beta.reshape(draws, v).std(axis=0)
    np.testing.assert_allclose(predicted, observed, rtol=0.06)  # first order; Monte Carlo error ~1.1% per variant


def test_gwas_privacy__noise_that_breaks_the_fit_marks_the_variant_not_tested(statistics):
    xtx, xty, yty = (np.array(statistics[name], np.float64) for name in ("xtx", "xty", "yty"))
    xtx[0, -1] = -xtx[0, -1]  # g'g < 0: not positive definite
    yty[1] = 0.5 * yty[1] - 1e6  # residual sum of squares below 0
    xtx[2, 0] = np.nan
    fit = noisy_linear_fit(xtx, xty, yty, 1.0)
    assert [glm.STATUS[s] for s in fit.status] == ["NOT_TESTED"] * 3
    assert np.all(np.isnan(fit.beta)) and np.all(np.isnan(fit.p_value))


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """3 sites x 4000 samples, 5 variants (the first causal): where the noise at a large epsilon is small."""
    root = tmp_path_factory.mktemp("gwas-dp-large")
    rng = np.random.default_rng(4)
    ids = [f"chr1:{p}:A:G" for p in (10, 20, 30, 40, 50)]
    paths = {}
    for name in ("a", "b", "c"):
        n = 4000
        calls = rng.binomial(2, rng.uniform(0.1, 0.5, (5, 1)), size=(5, n)).astype(np.int8)
        calls[rng.random((5, n)) < 0.02] = -1
        age = rng.normal(50, 10, n).round()
        y = 0.02 * age + 0.3 * np.where(calls[0] >= 0, calls[0], 0) + rng.normal(size=n)
        path = gs.rs.write_dataset(root / name, ids, calls)
        gs.write_phenotypes(path, {"age": age, "quant_trait": y})
        paths[name] = path
    return ids, paths


def test_gwas_privacy__estimates_differ_from_exact_by_about_the_noise_they_report(large):
    ids, paths = large
    spec = {**DP, "covariates": ["age"], "privacy": {**TERMS, "epsilon": 50.0}}
    exact = {r["variant_id"]: r for r in run_in_memory(GWAS, {k: v for k, v in spec.items() if k != "privacy"},
                                                       paths).result.tables["gwas"].to_pylist()}
    noisy = run_in_memory(GWAS, spec, paths, secure=True, threshold=2, seed=2).result.tables["gwas"].to_pylist()
    assert [r["variant_id"] for r in noisy] == ids and all(r["beta"] is not None for r in noisy)
    for row in noisy:
        truth = exact[row["variant_id"]]
        noise = math.sqrt(row["standard_error"] ** 2 - truth["standard_error"] ** 2)
        assert 0.0 < noise < truth["standard_error"]  # at epsilon 50 the noise is below the sampling error
        assert abs(row["beta"] - truth["beta"]) < 5 * noise
        assert abs(row["n"] - truth["n"]) < 0.02 * truth["n"]
    assert noisy[0]["p_value"] < 1e-8 and exact[ids[0]]["p_value"] < 1e-8  # the causal variant


@pytest.mark.network
def test_gwas_privacy__site_agents_record_every_noisy_round_within_the_jobs_budget(tmp_path):
    """Through ``genofed federate``: the coordinator fills in honest_sites, each site books the three noisy rounds."""
    cohort = gs.make_cohort(tmp_path / "data", seed=6)
    spec = {**{key: value for key, value in DP.items() if key != "privacy"}, "analysis": "gwas", "min_allele_count": 5,
            "stage_timeout": 60, "privacy": {"epsilon": 3.0, "delta": 1e-6}}
    summary = federate([site.path for site in cohort.values()], spec, tmp_path / "run", timeout=300)
    assert summary["status"] == "done"
    privacy = summary["summary"]["privacy"]
    assert privacy["epsilon"] <= 3.0 and privacy["honest_sites"] == 3  # threshold 3 of 3, no colluder
    books = sorted((tmp_path / "run" / "federation" / "sites").glob("*/state/privacy-spend.jsonl"))
    assert len(books) == 3
    for book in books:
        entries = [json.loads(line) for line in book.read_text().splitlines()]
        assert [e["round_index"] for e in entries] == [1, 3, 4]  # census counts, moments, statistics (2: rs IDs)
        assert sum(e["rho"] for e in entries) == pytest.approx(privacy["rho"], rel=1e-12)
        assert sum(e["rho"] for e in entries) <= rho_for_epsilon(3.0, 1e-6)
