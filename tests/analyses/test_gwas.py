"""The federated GWAS (census -> regression) through the real secure-aggregation protocol
in Z_2^64, against pooled fits computed directly on the concatenated data: numpy lstsq for
the linear model, a textbook IRLS loop for the logistic one, and plink2 --glm when installed."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats as scipy_stats

from pipeline.analyses import SiteCache, SiteContext
from pipeline.analyses.gwas import GWAS, GwasParameters, RegressionState, write_outputs
from pipeline.analyses.gwas.outputs import check_variant_sums
from pipeline.analyses.gwas.site_data import design, site_data
from pipeline.analyses.registry import get_analysis
from pipeline.dataset import open_dataset
from pipeline.encoding import Layout, Ring
from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.federation.in_memory import default_context, run_in_memory
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

BASE = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
LINEAR = {**BASE, "model": "linear", "phenotype": "quant_trait"}
LOGISTIC = {**BASE, "model": "logistic", "phenotype": "binary_trait"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.make_cohort(tmp_path_factory.mktemp("gwas"))


@pytest.fixture(scope="module")
def linear_run(cohort):
    return run_in_memory(GWAS, LINEAR, gs.dataset_paths(cohort), secure=True, seed=5)


@pytest.fixture(scope="module")
def logistic_run(cohort):
    return run_in_memory(GWAS, LOGISTIC, gs.dataset_paths(cohort), secure=True, seed=6)


def _rows(run):
    return run.result.tables["gwas"].to_pylist()


def test_gwas_linear__secure_equals_pooled_lstsq(cohort, linear_run):
    rows = _rows(linear_run)
    assert len(rows) >= 40
    for row in rows:
        x, y = gs.pooled_design(cohort, row["variant_id"], "quant_trait")
        beta, se = gs.pooled_ols(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6)
        p = 2 * scipy_stats.t.sf(abs(beta / se), len(y) - x.shape[1])
        assert row["p_value"] == pytest.approx(p, rel=1e-5)
        frequency = x[:, -1].sum() / (2 * len(y))
        assert row["effect_allele_frequency"] == pytest.approx(frequency, rel=1e-9)


def test_gwas_linear__rounds_are_census_rsids_moments_statistics_in_the_64_bit_ring(linear_run):
    phases = [state.phase for _, state in linear_run.states]
    assert phases == [0, 0, 2, 2, 2]  # census keys + counts, then (no PCA) rs IDs + moments + statistics
    summary = linear_run.result.summary
    assert summary["encoding"]["ring"] == "R64"
    assert min(summary["encoding"]["scale_bits"][name] for name in ("xtx", "xty", "yty")) >= 20
    assert "census" in summary["phases"] and summary["num_samples"] > 250
    assert set(linear_run.result.tables) == {"gwas", "gwas_status"}  # census counts stay out of the state and result
    assert linear_run.states[-1][1].carried == {} and linear_run.states[-1][1].tables == {}
    round_index, state = linear_run.states[-1]
    layout = GWAS.layout(state, round_index)
    assert isinstance(layout, Layout) and layout.ring is Ring.R64
    layout.check_bit_budget(3)
    for sites in (3, 10, 100):  # scale bits shrink with the number of sites, the budget always holds
        wide = dataclasses.replace(state, inner=dataclasses.replace(state.inner, num_participants=sites))
        layout = GWAS.layout(wide, round_index)
        layout.check_bit_budget(sites)
        assert min(f.encoding.scale_bits for f in layout.fields if f.name in ("xtx", "xty", "yty")) >= 20


def test_gwas_linear__missing_phenotypes_and_genotypes_change_n_per_variant(cohort, linear_run):
    n = {row["variant_id"]: row["n"] for row in _rows(linear_run)}
    assert len(set(n.values())) > 5
    complete = sum(int((np.isfinite(s.quant) & np.isfinite(s.age)).sum()) for s in cohort.values())
    assert max(n.values()) < complete


def test_gwas_logistic__secure_equals_pooled_irls(cohort, logistic_run):
    rows = [r for r in _rows(logistic_run) if r["beta"] is not None]
    assert len(rows) >= 40
    for row in rows:
        x, y = gs.pooled_design(cohort, row["variant_id"], "binary_trait")
        beta, se = gs.pooled_irls(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-5)
        assert row["standard_error"] == pytest.approx(se, rel=1e-5)
        assert row["p_value"] == pytest.approx(2 * scipy_stats.norm.sf(abs(beta / se)), rel=1e-4)
    assert 3 <= logistic_run.result.summary["newton_rounds"] <= 10


@pytest.fixture(scope="module")
def separated(tmp_path_factory):
    """Two sites; variant 2: carriers are exactly the cases; variant 3: no ALT allele among controls."""
    root = tmp_path_factory.mktemp("separation")
    ids = [f"chr1:{p}:A:G" for p in (10, 20, 30)]
    rng = np.random.default_rng(3)
    paths, pooled = {}, []
    for name in ("a", "b"):
        n = 80
        binary = (rng.random(n) < 0.5).astype(np.float64)
        age = rng.normal(50, 5, n)
        calls = rng.binomial(2, 0.3, size=(3, n)).astype(np.int8)
        calls[1] = np.where(binary == 1, 1, 0)
        calls[2] = np.where(binary == 0, 0, calls[2])
        path = gs.rs.write_dataset(root / name, ids, calls)
        gs.write_phenotypes(path, {"age": age, "binary_trait": binary})
        paths[name] = path
        pooled.append((calls, age, binary))
    return ids, paths, pooled


def _status(run) -> dict[str, str]:
    table = run.result.tables["gwas_status"]
    return dict(zip(table.column("variant_id").to_pylist(), table.column("status").to_pylist()))


def test_gwas_logistic__separation_reported_without_firth(separated):
    ids, paths, _ = separated
    run = run_in_memory(GWAS, {**LOGISTIC, "covariates": ["age"], "firth": False}, paths, secure=True, seed=1)
    assert _status(run) == {ids[0]: "OK", ids[1]: "SEPARATION", ids[2]: "SEPARATION"}
    rows = {r["variant_id"]: r for r in _rows(run)}
    assert rows[ids[1]]["beta"] is None and rows[ids[2]]["p_value"] is None
    assert rows[ids[0]]["beta"] is not None


def test_gwas_logistic__firth_fallback_equals_pooled_firth(separated):
    ids, paths, pooled = separated
    run = run_in_memory(GWAS, {**LOGISTIC, "covariates": ["age"]}, paths, secure=True, seed=1)
    status = _status(run)
    firth = dict(zip(run.result.tables["gwas_status"].column("variant_id").to_pylist(),
                     run.result.tables["gwas_status"].column("firth").to_pylist()))
    assert status[ids[0]] == "OK" and not firth[ids[0]]
    assert status[ids[2]] == "OK" and firth[ids[2]]
    assert firth[ids[1]] and status[ids[1]] in ("OK", "FIRTH_CONVERGE_FAIL")
    x = np.concatenate([np.column_stack([np.ones(len(a)), a, c[2].astype(float)]) for c, a, _ in pooled])
    y = np.concatenate([b for _, _, b in pooled])
    beta, se = gs.pooled_firth(x, y)
    row = {r["variant_id"]: r for r in _rows(run)}[ids[2]]
    assert row["beta"] == pytest.approx(beta, rel=1e-5)
    assert row["standard_error"] == pytest.approx(se, rel=1e-5)
    assert run.result.summary["firth"]["variants"] == 2


def _assert_states_round_trip(run) -> None:
    """Every round's state is plain JSON and reads back equal, with the same layout and the same JSON."""
    for round_index, state in run.states:
        data = state.to_json()
        assert json.loads(json.dumps(data)) == data
        restored = GWAS.state_from_json(data)
        assert restored == state
        assert restored.to_json() == data
        assert GWAS.layout(restored, round_index) == GWAS.layout(state, round_index)


def test_gwas__state_round_trips_through_json_at_every_round(linear_run, separated):
    _assert_states_round_trip(linear_run)
    assert isinstance(linear_run.states[-1][1].inner, RegressionState)
    _, paths, _ = separated
    firth_run = run_in_memory(GWAS, {**LOGISTIC, "covariates": ["age"]}, paths, seed=1)
    inner = [state.inner for _, state in firth_run.states if isinstance(state.inner, RegressionState)]
    assert any(s.newton is not None and s.newton.counts is not None for s in inner)  # Newton rounds after the first
    firth = [s.firth for s in inner if s.firth is not None]
    assert {f.next_round.value for f in firth} == {"information", "score"} and any(f.inverse is not None for f in firth)
    _assert_states_round_trip(firth_run)


def test_gwas__with_pcs_state_round_trips_and_sites_keep_their_scores(cohort, tmp_path):
    pca = {"window_bp": 1, "maf": 0.01, "min_allele_count": 1, "min_call_rate": 0.0, "typed_at_all_sites": False}
    run = run_in_memory(GWAS, {**LINEAR, "pcs": 2, "pca": pca}, gs.dataset_paths(cohort), seed=3)
    assert run.result.summary["covariates"] == ["age", "sex"] and "pca" in run.result.summary["phases"]
    _assert_states_round_trip(run)
    final = run.states[-1][1]
    assert isinstance(final.inner, RegressionState) and final.inner.pca is not None and final.inner.pca.has_loadings
    site = default_context("alpha")
    dataset = open_dataset(cohort["alpha"].path)
    in_pca_phase = [state for _, state in run.states if state.phase == GWAS.phase_named("pca")][-1]
    assert GWAS.site_finish(in_pca_phase, dataset, site, tmp_path / "early") is None  # a job that ended in the PCA phase
    written = GWAS.site_finish(final, dataset, site, tmp_path / "done")
    assert written["num_samples"] == len(cohort["alpha"].age) and written["components"] == 2
    assert (tmp_path / "done" / "pca_scores.parquet").is_file() and not (tmp_path / "early").exists()


def _site_minor(calls: np.ndarray, samples: np.ndarray) -> int:
    called = calls[samples & (calls >= 0)].astype(int)
    return int(min(called.sum(), 2 * called.size - called.sum()))


def test_gwas__a_site_below_its_minimum_is_left_out_of_the_variant_not_the_variant_withheld(cohort):
    contexts = {name: default_context(name) for name in cohort}
    contexts["beta"] = SiteContext(name="beta", min_samples=1, min_allele_count=4, share_variant_keys=True)
    spec = {**LINEAR, "min_allele_count": 1}  # below beta's own minimum: beta takes part and flags its small cells
    run = run_in_memory(GWAS, spec, gs.dataset_paths(cohort), secure=True, seed=2, contexts=contexts)
    beta = cohort["beta"]
    complete = np.isfinite(beta.quant) & np.isfinite(beta.age)  # the samples the site fits on
    # The regression counts the complete samples: a small cell there leaves beta out of the variant's sums.
    left_out = {v for j, v in enumerate(beta.ids) if 0 < _site_minor(beta.calls[j], complete) < 4}
    status = {r["variant_id"]: r for r in run.result.tables["gwas_status"].to_pylist()}
    rows = {r["variant_id"]: r for r in _rows(run)}
    # Which variants the census passes is the census' rule; each one it passes is fitted here.
    assert left_out & set(rows), "the cohort should have rare variants at site beta that other sites hold"
    others = {name: site for name, site in cohort.items() if name != "beta"}
    for variant, outcome in status.items():
        assert outcome["n_sites_left_out"] == int(variant in left_out), variant
        if variant in left_out and not any(variant in site.ids for site in others.values()):
            assert outcome["status"] == "BELOW_SITE_MIN_ALLELE_COUNT" and variant not in rows  # nothing remains
            continue
        assert outcome["status"] != "BELOW_SITE_MIN_ALLELE_COUNT"
        x, y = gs.pooled_design(others if variant in left_out else cohort, variant, "quant_trait")
        beta_, se = gs.pooled_ols(x, y)
        assert rows[variant]["n"] == len(y)
        assert rows[variant]["beta"] == pytest.approx(beta_, rel=1e-6)
        assert rows[variant]["standard_error"] == pytest.approx(se, rel=1e-6)
    assert run.result.summary["variants"]["with_sites_left_out"] == len(left_out & set(status))


def test_gwas__outputs_tsv_metadata_and_plots(linear_run, tmp_path):
    written = write_outputs(linear_run.result, tmp_path)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    lines = gzip.decompress((tmp_path / "gwas.tsv.gz").read_bytes()).decode().splitlines()
    assert lines[0].split("\t") == ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta",
                                    "standard_error", "effect_allele_frequency", "p_value", "n", "variant_id"]
    first = lines[1].split("\t")
    assert first[0] == "22" and first[2] == "G" and first[3] == "A"
    assert first[9] == f"22_{first[1]}_A_G"  # the spec's chromosome_position_other_effect; the table keeps chr22:pos:A:G
    assert linear_run.result.tables["gwas"].column("variant_id")[0].as_py() == f"chr22:{first[1]}:A:G"
    positions = [int(line.split("\t")[1]) for line in lines[1:]]
    assert positions == sorted(positions) and len(lines) - 1 == linear_run.result.tables["gwas"].num_rows
    meta = yaml.safe_load((tmp_path / "gwas.tsv.gz-meta.yaml").read_text())
    assert meta["file_type"] == "GWAS-SSF v1.1" and meta["data_file_name"] == "gwas.tsv.gz"
    assert meta["samples"][0]["sample_size"] == linear_run.result.summary["num_samples"]
    assert meta["genome_assembly"] == "NR" and meta["adjusted_covariates"] == ["age", "sex"]
    for png in ("manhattan.png", "qq.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert get_analysis("gwas") is GWAS


def test_gwas__spec_errors_name_the_key():
    with pytest.raises(ConfigurationError, match="phenotype"):
        GwasParameters.parse({"model": "linear"})
    with pytest.raises(ConfigurationError, match="model"):
        GwasParameters.parse({"phenotype": "y", "model": "probit"})
    with pytest.raises(ConfigurationError, match="unknown spec key"):
        GwasParameters.parse({"phenotype": "y", "covariate": ["age"]})
    with pytest.raises(ConfigurationError, match="pcs"):
        GWAS.init({"phenotype": "y", "pcs": -1}, ("a", "b"))


# --------------------------------------------------------------------------- plink2


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_gwas__agrees_with_plink2_glm(cohort, linear_run, logistic_run, tmp_path, model):
    if shutil.which("plink2") is None:
        pytest.skip("plink2 is not installed")
    gs.write_pooled_plink_inputs(cohort, tmp_path)
    phenotype = "quant_trait" if model == "linear" else "binary_trait"
    reference = gs.plink2_glm(tmp_path, phenotype)
    run = linear_run if model == "linear" else logistic_run
    compared = 0
    for row in _rows(run):
        theirs = reference[row["variant_id"]]
        if theirs.get("ERRCODE", ".") != "." or row["beta"] is None:
            continue
        sign = 1.0 if theirs["A1"] == "G" else -1.0
        if "BETA" in theirs:
            beta = float(theirs["BETA"])
        else:  # OR is printed to 6 digits (too coarse for a small log-odds ratio); Z * SE is not
            beta = float(theirs["Z_STAT"]) * float(theirs["LOG(OR)_SE"])
        assert int(theirs["OBS_CT"]) == row["n"]
        assert sign * beta == pytest.approx(row["beta"], rel=1e-4)
        assert -np.log10(float(theirs["P"])) == pytest.approx(-np.log10(row["p_value"]), abs=1e-3)
        compared += 1
    assert compared >= 40


def _outlier_sites(tmp_path: Path, outlier: float) -> dict[str, Path]:
    ids = [f"chr1:{p}:A:G" for p in (10, 20)]
    rng = np.random.default_rng(9)
    paths = {}
    for name in ("a", "b"):
        calls = rng.binomial(2, 0.4, size=(2, 60)).astype(np.int8)
        age = rng.normal(50, 1, 60)
        if name == "b":
            age[0] = outlier  # a unit error: beyond max_abs_value, and far beyond max_abs_z standard deviations
        path = gs.rs.write_dataset(tmp_path / name, ids, calls)
        gs.write_phenotypes(path, {"age": age, "quant_trait": rng.normal(size=60)})
        paths[name] = path
    return paths


def test_gwas__a_value_beyond_max_abs_value_is_clipped_at_the_site_as_if_the_data_were(tmp_path, caplog):
    spec = {**LINEAR, "covariates": ["age"], "max_abs_value": 1000}
    with caplog.at_level("INFO", logger="pipeline.analyses.bounds"):
        clipped = run_in_memory(GWAS, spec, _outlier_sites(tmp_path / "raw", 5000.0))
    assert any("clipped 1 value(s) of 'age' to +-max_abs_value" in r.getMessage() for r in caplog.records)
    preclipped = run_in_memory(GWAS, spec, _outlier_sites(tmp_path / "pre", 1000.0))
    assert clipped.result.tables["gwas"].equals(preclipped.result.tables["gwas"])
    assert clipped.states[-1][1].inner.moments == preclipped.states[-1][1].inner.moments


def test_gwas__a_value_beyond_max_abs_z_is_clipped_at_the_site_not_refused(tmp_path):
    paths = _outlier_sites(tmp_path, 5000.0)
    run = run_in_memory(GWAS, {**LINEAR, "covariates": ["age"], "max_abs_z": 5}, paths)
    assert run.result.tables["gwas"].num_rows == 2
    state = run.states[-1][1].inner
    data = site_data(state, open_dataset(paths["b"]), SiteCache())
    covariates, phenotype = design(data, state)
    z = (data.raw[:, 0] - state.moments.mean[0]) / state.moments.sd[0]
    assert np.abs(z).max() > 5
    np.testing.assert_array_equal(covariates[:, 1], np.clip(z, -5, 5))
    y = (data.phenotype - state.moments.mean[1]) / state.moments.sd[1]
    np.testing.assert_array_equal(phenotype, np.clip(y, -5, 5))


def test_gwas__impossible_per_variant_sums_are_refused_not_published(linear_run):
    state = linear_run.states[-1][1].inner
    v = len(state.variant_ids)
    n = np.full(v, state.standardization.n, np.int64)
    check_variant_sums(state, n, n.astype(float), np.zeros(v, np.int64), 3)  # honest extremes pass
    too_many = n.copy()
    too_many[1] += 1  # one sample more than the federation's complete samples
    with pytest.raises(ProtocolError, match=f"variant {state.variant_ids[1]}: the summed n"):
        check_variant_sums(state, too_many, n.astype(float), np.zeros(v, np.int64), 3)
    with pytest.raises(ProtocolError, match="alt_count"):
        check_variant_sums(state, n, 2.0 * n + 3, np.zeros(v, np.int64), 3)
    with pytest.raises(ProtocolError, match="below_min"):
        check_variant_sums(state, n, n.astype(float), np.full(v, 4, np.int64), 3)


def test_gwas_logistic__hwe_in_controls_tests_a_risk_variant_that_departs_in_cases(tmp_path):
    """A strong recessive risk allele is out of HWE over all samples (cases are hom-alt), not in the controls: with
    hwe_samples: controls it is tested, as PLINK 1.9's --hwe on case/control data would keep it."""
    rng = np.random.default_rng(8)
    ids = [f"chr1:{p}:A:G" for p in (100, 200, 300)]
    paths = {}
    for name in ("one", "two"):
        controls = (rng.random((3, 400)) < 0.25).astype(np.int8) + (rng.random((3, 400)) < 0.25).astype(np.int8)
        cases = (rng.random((3, 200)) < 0.25).astype(np.int8) + (rng.random((3, 200)) < 0.25).astype(np.int8)
        cases[0, :150] = 2
        calls = np.concatenate([controls, cases], axis=1)
        paths[name] = rs.write_dataset(tmp_path / name, ids, calls)
        gs.write_phenotypes(paths[name], {"case": np.repeat([0.0, 1.0], [400, 200])})
    spec = {"model": "logistic", "phenotype": "case", "min_allele_count": 1, "min_call_rate": 0.0, "hwe_p": 1e-6}
    everyone = run_in_memory(GWAS, spec, paths)
    in_controls = run_in_memory(GWAS, {**spec, "hwe_samples": "controls"}, paths)
    assert ids[0] not in {r["variant_id"] for r in _rows(everyone)}  # failed the census' HWE filter, never tested
    tested = {r["variant_id"]: r for r in _rows(in_controls)}
    assert set(tested) == set(ids) and tested[ids[0]]["p_value"] < 1e-20
    with pytest.raises(ConfigurationError, match="hwe_samples: controls needs a case/control phenotype"):
        GwasParameters.parse({**LINEAR, "hwe_samples": "controls"})
