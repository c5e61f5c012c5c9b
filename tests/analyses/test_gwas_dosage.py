"""GWAS on imputed dosages: sites regress on their stored dosages (else hard calls), as plink2 --vcf dosage=DS --glm.

Dosages are multiples of 1/16, which plink2's 1/16384 grid holds exactly, so the pooled
references (numpy, plink2) see the values the sites regress on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyses.gwas import GWAS
from pipeline.dataset import dosage_or_call
from pipeline.federation.in_memory import run_in_memory
from pipeline.stats import glm
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

BASE = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
LINEAR = {**BASE, "model": "linear", "phenotype": "quant_trait"}
LOGISTIC = {**BASE, "model": "logistic", "phenotype": "binary_trait"}
MODELS = {"linear": LINEAR, "logistic": LOGISTIC}


def _make_cohort(root: Path, *, without_dosage: tuple[str, ...] = (), seed: int = 4) -> dict[str, gs.Site]:
    """Three sites, 12 common variants (gamma lacks the last two); dosages near the true genotype with some DS
    missing (the hard call stands in), some GT missing (the DS stands in) and some both (missing)."""
    rng = np.random.default_rng(seed)
    sites = {}
    for index, (name, n) in enumerate(zip(gs.SITES, (120, 100, 80))):
        ids = rs.variant_ids(range(100, 110 if name == "gamma" else 112))
        frequency = rng.uniform(0.15, 0.5, (len(ids), 1))
        truth = rng.binomial(2, frequency, (len(ids), n))
        dosage = np.clip(np.round((truth + rng.normal(0, 0.35, truth.shape)) * 16) / 16, 0.0, 2.0)
        calls = np.rint(dosage).astype(np.int8)
        calls[rng.random(calls.shape) < 0.05] = -1
        dosage[rng.random(dosage.shape) < 0.05] = np.nan
        age = rng.normal(55 + 3 * index, 10, n).round()
        sex = rng.integers(1, 3, n).astype(np.float64)
        signal = 0.4 * truth[0] + 0.3 * truth[3]
        quant = 0.5 + 0.02 * age - 0.3 * sex + signal + rng.normal(0, 1, n)
        binary = (-2.0 + 0.03 * age + 0.3 * sex + signal + rng.logistic(0, 1, n) > 0.7).astype(np.float64)
        age[rng.random(n) < 0.03] = np.nan
        quant[rng.random(n) < 0.05] = np.nan
        binary[rng.random(n) < 0.05] = np.nan
        stored = None if name in without_dosage else dosage.astype(np.float32)
        path = rs.write_dataset(root / name, ids, calls, sample_prefix=name, chunk_size=5, dosage=stored)
        gs.write_phenotypes(path, {"age": age, "sex": sex, "quant_trait": quant, "binary_trait": binary})
        sites[name] = gs.Site(ids, calls, age, sex, quant, binary, path, dosage=None if stored is None else dosage)
    return sites


def _hard_calls(sites: dict[str, gs.Site]) -> dict[str, gs.Site]:
    return {name: gs.Site(s.ids, s.calls, s.age, s.sex, s.quant, s.binary, s.path) for name, s in sites.items()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _make_cohort(tmp_path_factory.mktemp("dosage"))


@pytest.fixture(scope="module")
def runs(cohort):
    paths = gs.dataset_paths(cohort)
    return {model: run_in_memory(GWAS, spec, paths, secure=True, seed=7) for model, spec in MODELS.items()}


def _rows(run) -> dict[str, dict]:
    return {row["variant_id"]: row for row in run.result.tables["gwas"].to_pylist()}


def _assert_equals_pooled(run, sites: dict[str, gs.Site], model: str) -> None:
    rows = _rows(run)
    assert len(rows) == 12
    for variant, row in rows.items():
        x, y = gs.pooled_design(sites, variant, MODELS[model]["phenotype"])
        beta, se = gs.pooled_ols(x, y) if model == "linear" else gs.pooled_irls(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6 if model == "linear" else 1e-5)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6 if model == "linear" else 1e-5)
        assert row["effect_allele_frequency"] == pytest.approx(x[:, -1].mean() / 2, rel=1e-9)


def _allele_sum_scale_bits(run) -> int:
    """Fractional bits of the logistic first round's ALT sums among cases (0: an integer count)."""
    for round_index, state in run.states:
        layout = GWAS.layout(state, round_index)
        if "alt_case" in [field.name for field in getattr(layout, "fields", ())]:
            return layout.field("alt_case").encoding.scale_bits
    raise AssertionError("no logistic first round")


def test_dosage_or_call__dosage_where_present_else_the_hard_call_else_missing():
    calls = np.array([[0, 1, -1, 2, -1]], np.int8)
    dosage = np.array([[0.25, np.nan, 1.5, np.nan, np.nan]], np.float32)
    assert dosage_or_call(calls, dosage).tolist() == [[0.25, 1.0, 1.5, 2.0, -1.0]]
    assert dosage_or_call(calls, None) is calls
    assert dosage_or_call(calls[:, :1], np.array([[2.5]], np.float32)).tolist() == [[2.0]]  # clipped to [0, 2]


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_linear_statistics__dosages_with_missing_values_equal_the_products_over_the_present_ones(engine):
    rng = np.random.default_rng(1)
    values = rng.integers(0, 33, (9, 40)) / 16
    values[rng.random(values.shape) < 0.1] = np.nan
    covariates = np.column_stack([np.ones(40), rng.normal(size=40)])
    phenotype = rng.normal(size=40)
    stats = glm.linear_statistics(values.astype(np.float32), covariates, phenotype, engine=engine)
    rows, cols = glm.packed_index(2)
    for v, g in enumerate(values):
        present = np.isfinite(g)
        x = np.column_stack([covariates[present], g[present]])
        np.testing.assert_allclose(stats["xtx"][v], (x.T @ x)[rows, cols], rtol=1e-12)
        np.testing.assert_allclose(stats["xty"][v], x.T @ phenotype[present], rtol=1e-12)
        assert stats["n"][v] == present.sum() and stats["alt_count"][v] == pytest.approx(g[present].sum())


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_gwas_dosage__secure_equals_the_pooled_fit_on_the_pooled_dosages(cohort, runs, model):
    _assert_equals_pooled(runs[model], cohort, model)
    assert runs[model].result.summary["parameters"]["dosages"] == "auto"
    if model == "logistic":  # dosage sums are reals in the secure sum
        assert _allele_sum_scale_bits(runs[model]) >= 20


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_gwas_dosage__equals_plink2_glm_on_the_pooled_vcf_with_ds(cohort, runs, tmp_path, model):
    """The same samples (OBS_CT), A1_FREQ (the mean dosage / 2), and the fit to plink2's own precision.

    plink2 prints 6 digits and its fits are not exact in double precision: its linear
    betas are off the exact OLS by up to 7e-6 standard errors here (so a beta near 0
    differs by more than 1e-5 relative), and its dosage logistic standard errors by up to
    2.4e-3 relative (its hard-call ones by 3e-6). The exact references are the pooled
    numpy fits above, which the job equals to 1e-6 (linear) and 1e-5 (logistic).
    """
    if shutil.which("plink2") is None:
        pytest.skip("plink2 is not installed")
    gs.write_pooled_plink_inputs(cohort, tmp_path)
    reference = gs.plink2_glm(tmp_path, MODELS[model]["phenotype"], vcf_options=("dosage=DS",), columns="cols=+a1freq,+beta")
    for variant, row in _rows(runs[model]).items():
        theirs = reference[variant]
        assert theirs["ERRCODE"] == "."
        alt = theirs["A1"] == "G"
        assert int(theirs["OBS_CT"]) == row["n"]
        eaf = row["effect_allele_frequency"] if alt else 1.0 - row["effect_allele_frequency"]
        assert float(theirs["A1_FREQ"]) == pytest.approx(eaf, abs=1e-6)  # printed to 6 digits
        se = row["standard_error"]
        assert (1.0 if alt else -1.0) * float(theirs["BETA"]) == pytest.approx(row["beta"], abs=1e-5 * se)
        assert float(theirs["SE"]) == pytest.approx(se, rel=1e-5 if model == "linear" else 5e-3)


def test_gwas_dosage__a_site_without_dosages_regresses_on_its_hard_calls(tmp_path):
    sites = _make_cohort(tmp_path, without_dosage=("beta",))
    run = run_in_memory(GWAS, LINEAR, gs.dataset_paths(sites), secure=True, seed=8)
    _assert_equals_pooled(run, sites, "linear")
    with_dosages = _rows(run)
    hard = _hard_calls(sites)
    x, y = gs.pooled_design(hard, rs.variant_ids([100])[0], "quant_trait")
    assert with_dosages[rs.variant_ids([100])[0]]["beta"] != pytest.approx(gs.pooled_ols(x, y)[0], rel=1e-3)


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_gwas_dosage__hard_calls_option_is_the_hard_call_regression(cohort, tmp_path, model):
    paths = gs.dataset_paths(cohort)
    run = run_in_memory(GWAS, {**MODELS[model], "dosages": "hard_calls"}, paths, secure=True, seed=9)
    _assert_equals_pooled(run, _hard_calls(cohort), model)
    if model == "logistic":  # hard-call sums stay integer counts
        assert _allele_sum_scale_bits(run) == 0
    if model == "linear":  # the same job on the datasets without their dosage column
        plain = _make_cohort(tmp_path, without_dosage=gs.SITES)
        before = run_in_memory(GWAS, MODELS[model], gs.dataset_paths(plain), secure=True, seed=9)
        assert _rows(run) == _rows(before)
