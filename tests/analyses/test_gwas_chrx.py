"""chrX in the federated GWAS, as plink2 --glm fits it: sex a covariate of chrX variants outside the PARs only,
males coded 0/2 there, samples of unknown sex left out of them, PAR variants autosomal.

References: OLS and IRLS on the pooled individuals, computed directly with the chrX rule written out here, and
``plink2 --glm`` (``--split-par b38``, sex from a .psam) on the pooled VCF with haploid male calls.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyses.gwas import GWAS, PhenotypesState
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.federation.ledger import ReleaseLedger
from tests.analyses import chrx_support as cs
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")
BASE = {"covariates": ["age"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
LINEAR = {**BASE, "model": "linear", "phenotype": "quant_trait"}
LOGISTIC = {**BASE, "model": "logistic", "phenotype": "binary_trait"}
AUTOSOMAL, PAR, NON_PAR = cs.AUTOSOMAL, cs.PAR, cs.NON_PAR


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("chrx")
    return {name: cs.make_site(root, name, i, n) for i, (name, n) in enumerate(zip(SITES, (140, 110, 90)))}


def _paths(cohort) -> dict[str, Path]:
    return {name: site["path"] for name, site in cohort.items()}


@pytest.fixture(scope="module")
def linear_run(cohort):
    return run_in_memory(GWAS, LINEAR, _paths(cohort), secure=True, seed=1)


@pytest.fixture(scope="module")
def logistic_run(cohort):
    return run_in_memory(GWAS, LOGISTIC, _paths(cohort), secure=True, seed=2)


def pooled_chrx_design(cohort, variant_id: str, phenotype: str, *, x_sex: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """[1, age, (sex,) g] and y over the pooled samples plink2 fits: sex only for chrX outside the PARs, and there
    only samples of known sex."""
    on_x = variant_id in NON_PAR and x_sex
    rows, ys = [], []
    for site in cohort.values():
        g = site["calls"][site["ids"].index(variant_id)].astype(np.float64)
        g[g < 0] = np.nan
        y = site[phenotype]
        ok = np.isfinite(y) & np.isfinite(site["age"]) & np.isfinite(g)
        if on_x:
            ok &= np.isin(site["sex"], (1.0, 2.0))
        columns = [np.ones(ok.sum()), site["age"][ok], *([site["sex"][ok]] if on_x else []), g[ok]]
        rows.append(np.column_stack(columns))
        ys.append(y[ok])
    return np.vstack(rows), np.concatenate(ys)


def _rows(run) -> dict[str, dict]:
    return {row["variant_id"]: row for row in run.result.tables["gwas"].to_pylist()}


def _assert_every_variant_equals_pooled(cohort, run, phenotype: str, fit, *, rel: float) -> None:
    rows = _rows(run)
    assert set(rows) == set(AUTOSOMAL + PAR + NON_PAR)
    for variant, row in rows.items():
        x, y = pooled_chrx_design(cohort, variant, phenotype)
        beta, se = fit(x, y)
        assert row["n"] == len(y), variant
        assert row["beta"] == pytest.approx(beta, rel=rel, abs=1e-8), variant
        assert row["standard_error"] == pytest.approx(se, rel=rel), variant


def test_linear__every_variant_equals_pooled_ols_with_sex_on_chrx_only(cohort, linear_run):
    _assert_every_variant_equals_pooled(cohort, linear_run, "quant_trait", gs.pooled_ols, rel=1e-6)
    summary = linear_run.result.summary
    assert summary["covariates"] == ["age"]
    assert summary["chrx"]["variants"] == len(NON_PAR) and summary["chrx"]["covariate_columns"] == ["age", "sex"]
    unknown_complete = sum(int(np.count_nonzero(np.isfinite(s["quant_trait"]) & ~np.isfinite(s["sex"]))) for s in cohort.values())
    assert summary["num_samples"] - summary["chrx"]["num_samples"] == unknown_complete > 0


def test_logistic__every_variant_equals_pooled_irls_with_sex_on_chrx_only(cohort, logistic_run):
    _assert_every_variant_equals_pooled(cohort, logistic_run, "binary_trait", gs.pooled_irls, rel=1e-5)


def test_x_sex_false__chrx_is_fitted_as_an_autosome_as_plink2_no_x_sex(cohort):
    run = run_in_memory(GWAS, {**LINEAR, "x_sex": False}, _paths(cohort), secure=False, seed=3)
    assert "chrx" not in run.result.summary
    for variant in NON_PAR[:3]:
        x, y = pooled_chrx_design(cohort, variant, "quant_trait", x_sex=False)
        beta, _ = gs.pooled_ols(x, y)
        assert _rows(run)[variant]["beta"] == pytest.approx(beta, rel=1e-6)


def test_only_chrx_variants__one_part(cohort):
    run = run_in_memory(GWAS, {**LINEAR, "regions": ["chrX:3000000-6000000"]}, _paths(cohort), secure=False, seed=4)
    rows = _rows(run)
    assert set(rows) == set(NON_PAR)
    x, y = pooled_chrx_design(cohort, NON_PAR[0], "quant_trait")
    assert rows[NON_PAR[0]]["beta"] == pytest.approx(gs.pooled_ols(x, y)[0], rel=1e-6)


def test_several_phenotypes__each_fitted_in_both_parts_equals_pooled_ols(cohort):
    spec = {**BASE, "model": "linear", "phenotypes": ["quant_trait", "binary_trait"]}
    run = run_in_memory(GWAS, spec, _paths(cohort), secure=False, seed=5)
    summary = run.result.summary
    assert sorted(summary["by_phenotype"]) == ["binary_trait", "quant_trait"]
    assert all(len(group) == 1 or "(chrX)" not in " ".join(group) or all("(chrX)" in g for g in group)
               for group in summary["regression_passes"])
    for name in ("quant_trait", "binary_trait"):
        rows = {row["variant_id"]: row for row in run.result.tables[f"gwas.{name}"].to_pylist()}
        for variant in (AUTOSOMAL[0], PAR[0], NON_PAR[0], NON_PAR[-1]):
            x, y = pooled_chrx_design(cohort, variant, name)
            beta, _ = gs.pooled_ols(x, y)
            assert (rows[variant]["n"], rows[variant]["beta"]) == (len(y), pytest.approx(beta, rel=1e-6)), (name, variant)
        assert summary["by_phenotype"][name]["chrx"]["variants"] == len(NON_PAR)


def test_privacy__chrx_outside_the_pars_is_refused_with_the_fix(cohort):
    from pipeline.analyses.gwas.phenotypes import REGRESSIONS

    spec = {**LINEAR, "privacy": {"epsilon": 3.0, "delta": 1e-6}, "variant_ids": NON_PAR, "census_variants": len(NON_PAR)}
    with pytest.raises(ConfigurationError, match="x_sex: false"):
        REGRESSIONS.init(spec, SITES)


def test_state_round_trips_through_json(cohort):
    from pipeline.analyses.gwas.phenotypes import REGRESSIONS

    state = REGRESSIONS.init({**LINEAR, "variant_ids": AUTOSOMAL + NON_PAR}, SITES)
    assert isinstance(state, PhenotypesState) and state.parts == ("autosomal", "chrX")
    again = REGRESSIONS.state_from_json(state.to_json())
    assert again.parts == state.parts and again.single(1).parameters.covariates == ("age", "sex")
    assert again.single(1).variant_ids == tuple(NON_PAR) and again.single(0).variant_ids == tuple(AUTOSOMAL)


def test_disclosure__the_chrx_part_is_a_release_and_a_few_unknown_sex_samples_are_refused(cohort, tmp_path):
    """The attack: the two parts' moments differ by the unknown-sex samples' values; with one or two of them a
    job would read those people's phenotype off the difference. The site's ledger sees the chrX part as its own
    release and refuses sets 1 to 4 apart."""
    site = cohort["alpha"]
    names = tuple(sorted(cohort))
    ledger = ReleaseLedger(tmp_path / "ledger.jsonl")

    def check(path, spec=LINEAR):
        state = GWAS.init(spec, names)
        contributions = GWAS.contributions(state, open_dataset(path), default_context("alpha"))
        ledger.check(ledger.candidates("job-1", "gwas", contributions, names), min_samples=5, min_set_difference=5,
                     site="alpha")
        return contributions

    contributions = check(site["path"])
    assert any("sex" in c.variables for c in contributions)  # the chrX part: six samples apart, allowed
    few = rs.write_dataset(tmp_path / "few", site["ids"], site["calls"], sample_prefix="alpha")
    sex = site["sex"].copy()
    sex[~np.isfinite(sex)] = 1.0
    sex[np.flatnonzero(np.isfinite(site["quant_trait"]))[:2]] = np.nan  # two complete samples of unknown sex
    gs.write_phenotypes(few, {"age": site["age"], "sex": sex, "quant_trait": site["quant_trait"],
                              "binary_trait": site["binary_trait"]})
    with pytest.raises(PolicyRefusal) as refused:
        check(few)
    assert refused.value.code == "set-too-close" and "'sex'" in str(refused.value)
    check(few, {**LINEAR, "samples": "sex == 1 or sex == 2"})  # the fix the README gives: the parts' sets coincide


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 not installed")
def test_linear__equals_plink2_glm_with_split_par_on_the_pooled_vcf(cohort, linear_run, tmp_path):
    cs.write_vcf(cohort, tmp_path / "pooled")
    done = subprocess.run(
        ["plink2", "--vcf", str(tmp_path / "pooled.vcf"), "--psam", str(tmp_path / "pooled.psam"), "--split-par", "b38",
         "--pheno", str(tmp_path / "pooled.pheno.tsv"), "--pheno-name", "quant_trait", "--covar", str(tmp_path / "pooled.pheno.tsv"),
         "--covar-name", "age", "--glm", "hide-covar", "no-firth", "cols=+a1freq,+beta", "--threads", "1",
         "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = gs.read_plink2_table(tmp_path / "out.quant_trait.glm.linear")
    assert {expected[v]["CHROM"] for v in PAR} == {"PAR1"}
    rows = _rows(linear_run)
    assert set(rows) == set(expected)
    for variant, row in rows.items():
        reference = expected[variant]
        assert row["n"] == int(reference["OBS_CT"]), variant
        assert row["effect_allele_frequency"] == pytest.approx(float(reference["A1_FREQ"]), rel=1e-5), variant
        assert row["beta"] == pytest.approx(float(reference["BETA"]), rel=1e-4, abs=1e-6), variant
        assert row["standard_error"] == pytest.approx(float(reference["SE"]), rel=1e-4), variant


def test_one_sex_only__the_chrx_part_has_no_sex_column_as_plink2_adds_none(cohort, tmp_path):
    females = {}
    for name, site in cohort.items():
        path = rs.write_dataset(tmp_path / name, site["ids"], site["calls"], sample_prefix=name)
        sex = np.where(np.isfinite(site["sex"]), 2.0, np.nan)
        gs.write_phenotypes(path, {"age": site["age"], "sex": sex, "quant_trait": site["quant_trait"],
                                   "binary_trait": site["binary_trait"]})
        females[name] = {**site, "sex": sex, "path": path}
    run = run_in_memory(GWAS, LINEAR, _paths(females), secure=False, seed=6)
    assert run.result.summary["chrx"]["covariate_columns"] == ["age"]
    for variant in NON_PAR[:3]:
        x, y = pooled_chrx_design(females, variant, "quant_trait")
        beta, se = gs.pooled_ols(np.delete(x, 2, axis=1), y)  # the constant sex column dropped
        row = _rows(run)[variant]
        assert (row["n"], row["beta"], row["standard_error"]) == (len(y), pytest.approx(beta, rel=1e-6),
                                                                  pytest.approx(se, rel=1e-6))


def test_attack_through_the_runtime__a_site_with_two_unknown_sex_samples_declines_and_the_job_goes_on(cohort, tmp_path):
    """The differencing attack run as a real job (coordinator engine, site agents with their ledgers): the site whose
    autosomal and chrX parts would differ by two people declines at the start, before it sends anything, and the
    others finish without it."""
    site = cohort["alpha"]
    few = rs.write_dataset(tmp_path / "alpha", site["ids"], site["calls"], sample_prefix="alpha")
    sex = np.where(np.isfinite(site["sex"]), site["sex"], 1.0)
    sex[np.flatnonzero(np.isfinite(site["quant_trait"]))[:2]] = np.nan
    gs.write_phenotypes(few, {"age": site["age"], "sex": sex, "quant_trait": site["quant_trait"],
                              "binary_trait": site["binary_trait"]})
    engine, job_id = rs.run_job_in_process(tmp_path / "run", {**_paths(cohort), "alpha": few}, "gwas", LINEAR)
    status = engine.status(job_id)
    assert status["status"] == "done", status
    assert list(status["declined"]) == ["alpha"] and status["declined"]["alpha"].startswith("set-too-close")
    summary = engine.results(job_id)["summary"]
    assert summary["sites"] == ["beta", "gamma"] and summary["chrx"]["variants"] == len(NON_PAR)
