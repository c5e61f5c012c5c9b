"""Categorical covariates and the site covariate: equal to pooled OLS (linear) or IRLS (logistic) with the same dummy
coding, and to plink2 --glm.

The cohort carries ``centre`` (text: north everywhere and most common, east, south, west
at some sites, and ``rare_x`` held by two of alpha's samples, below ``min_level_count``)
and ``batch`` (numeric codes 1, 2, 10, declared categorical). The pooled references drop
the rare level's samples, as the sites do.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import outputs
from pipeline.analyses import SiteContext
from pipeline.analyses.gwas import GWAS, GwasParameters, RegressionState
from pipeline.analyses.gwas.covariates import LEVEL_KEYS, natural_key
from pipeline.analyses.gwas.outputs import DATA_FILE, metadata, write_outputs
from pipeline.analyses.gwas.regression import LEVELS_ROUND, REGRESSION
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.federation.rounds import PREFLIGHT_STAGE
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

BASE = {"model": "linear", "phenotype": "quant_trait", "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
CATEGORICAL = {**BASE, "covariates": ["age", "sex", "centre", "batch"], "categorical": ["centre", "batch"]}
LOGISTIC = {**CATEGORICAL, "model": "logistic", "phenotype": "binary_trait", "reference": {"centre": "east"}, "firth": False}
"""The logistic job names centre's reference (east), not plink2's default (the most common: north); without the Firth
refit (tested in test_gwas), every estimate is the maximum-likelihood fit, as IRLS's, and the job is quicker."""
CENTRES = {"alpha": ("north", "east", "south"), "beta": ("north", "south", "west"), "gamma": ("north", "east", "west")}


def _add_columns(path, columns: dict[str, pa.Array]) -> None:
    table = pq.read_table(path / "samples.parquet")
    for name, values in columns.items():
        table = table.append_column(name, values)
    outputs.write_table(table, path / "samples.parquet", "samples")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    sites = gs.make_cohort(tmp_path_factory.mktemp("covariates"), seed=5, sizes=(90, 80, 70), num_variants=16)
    rng = np.random.default_rng(11)
    factors = {}
    for name, site in sites.items():
        n = len(site.quant)
        centre = rng.choice(np.asarray(CENTRES[name], object), n, p=(0.5, 0.25, 0.25))
        if name == "alpha":  # two complete samples with a level no other sample has
            centre[np.flatnonzero(np.isfinite(site.quant) & np.isfinite(site.age))[:2]] = "rare_x"
        centre[rng.random(n) < 0.03] = None
        batch = rng.choice([1.0, 2.0, 10.0], n)
        shift = {"north": 0.0, "east": 0.8, "south": -0.5, "west": 0.3, "rare_x": 5.0, None: 0.0}
        site.quant = site.quant + np.array([shift[c] for c in centre]) + 0.2 * (batch == 10)
        gs.write_phenotypes(site.path, {"age": site.age, "sex": site.sex, "quant_trait": site.quant, "binary_trait": site.binary})
        _add_columns(site.path, {"centre": pa.array(centre.tolist(), pa.string()), "batch": pa.array(batch)})
        factors[name] = (centre, batch)
    return sites, factors


def _dummies(values: np.ndarray, levels: list[str]) -> np.ndarray:
    return np.column_stack([(values == level).astype(np.float64) for level in levels])


def _pooled(cohort, variant_id: str, *, categorical: bool, site_dummies: tuple[str, ...] = (),
            phenotype: str = "quant_trait", centre_columns: tuple[str, ...] = ("east", "south", "west")):
    """[1, age, sex, (centre and batch dummies), (site dummies), g] and y over the complete samples with a call.

    ``centre_columns``: centre's levels with a column (the reference, dropped, is the level not listed).
    """
    sites, factors = cohort
    rows, ys = [], []
    for name, site in sites.items():
        if variant_id not in site.ids:
            continue
        centre, batch = factors[name]
        g = site.genotypes(variant_id)
        y = site.quant if phenotype == "quant_trait" else site.binary
        keep = np.isfinite(y) & np.isfinite(site.age) & np.isfinite(g)
        parts = [np.ones(len(g)), site.age, site.sex]
        if categorical:
            keep &= (centre != None) & (centre != "rare_x")
            parts += [_dummies(centre.astype(str), list(centre_columns)), _dummies(batch, [2.0, 10.0])]
        parts += [np.full(len(g), float(name == other)) for other in site_dummies]
        rows.append(np.column_stack([*parts, g])[keep])
        ys.append(y[keep])
    return np.concatenate(rows), np.concatenate(ys)


@pytest.fixture(scope="module")
def categorical_run(cohort):
    sites, _ = cohort
    return run_in_memory(GWAS, CATEGORICAL, gs.dataset_paths(sites), secure=True, seed=1)


@pytest.fixture(scope="module")
def logistic_run(cohort):
    sites, _ = cohort
    return run_in_memory(GWAS, LOGISTIC, gs.dataset_paths(sites), secure=True, seed=3)


def _rows(run):
    return run.result.tables["gwas"].to_pylist()


def _regression_states(run) -> list[RegressionState]:
    return [s.inner for _, s in run.states if isinstance(s.inner, RegressionState)]


def test_covariates__categorical_levels_are_agreed_and_the_most_common_is_the_reference(categorical_run):
    final = _regression_states(categorical_run)[-1]
    assert final.factors.levels == (("east", "north", "south", "west"), ("1", "2", "10"))  # natural order; no rare_x
    assert "rare_x" not in str([s.to_json() for s in _regression_states(categorical_run)])
    # plink2's reference: the most common level (north; batch's by count), the others one column each.
    centre = [c for c in final.columns if c.startswith("centre=")]
    assert centre == ["centre=east", "centre=south", "centre=west"]
    assert len([c for c in final.columns if c.startswith("batch=")]) == 2
    assert sorted(["b10", "b9", "B", "a"], key=natural_key) == ["a", "B", "b9", "b10"]


def test_covariates__categorical_equals_pooled_ols_with_the_same_dummies(cohort, categorical_run):
    compared = 0
    for row in _rows(categorical_run):
        if row["beta"] is None:
            continue
        x, y = _pooled(cohort, row["variant_id"], categorical=True)  # the genotype's fit does not depend on the reference
        beta, se = gs.pooled_ols(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6)
        compared += 1
    assert compared >= 10


def test_covariates__categorical_logistic_equals_pooled_irls_with_the_same_dummies(cohort, logistic_run):
    centre = ("north", "south", "west")  # the spec's reference, east, dropped
    final = _regression_states(logistic_run)[-1]
    assert [c for c in final.columns if c.startswith("centre=")] == [f"centre={level}" for level in centre]
    assert len([c for c in final.columns if c.startswith("batch=")]) == 2
    compared = 0
    for row in _rows(logistic_run):
        if row["beta"] is None:
            continue
        x, y = _pooled(cohort, row["variant_id"], categorical=True, phenotype="binary_trait", centre_columns=centre)
        beta, se = gs.pooled_irls(x, y)
        assert row["n"] == len(y), row["variant_id"]
        assert row["beta"] == pytest.approx(beta, rel=1e-5), row["variant_id"]
        assert row["standard_error"] == pytest.approx(se, rel=1e-5), row["variant_id"]
        compared += 1
    assert compared >= 10


def test_covariates__logistic_withholds_collinear_designs_as_linear_does(categorical_run, logistic_run):
    """A variant one site holds lacks the levels only other sites have: its covariates are collinear over its samples
    (plink2's VIF_INFINITE), so neither model publishes an estimate the design does not determine."""
    def vif(run):
        table = run.result.tables["gwas_status"].to_pydict()
        return {v for v, s in zip(table["variant_id"], table["status"]) if s == "VIF_TOO_HIGH"}

    assert vif(logistic_run) == vif(categorical_run) and len(vif(logistic_run)) >= 5


def test_covariates__metadata_adjusted_covariates_are_the_fitted_columns(categorical_run, logistic_run, tmp_path):
    """GWAS-SSF's adjusted_covariates: each categorical covariate's levels but the reference, as the fit's columns."""
    linear = categorical_run.result.summary
    assert linear["covariates"] == ["age", "sex", "centre", "batch"]  # the spec's, as before
    assert linear["covariate_columns"] == list(_regression_states(categorical_run)[-1].columns)
    assert metadata(linear, "")["adjusted_covariates"] == ["age", "sex", "centre=east", "centre=south", "centre=west",
                                                           *[c for c in linear["covariate_columns"] if c.startswith("batch=")]]
    write_outputs(logistic_run.result, tmp_path)
    meta = yaml.safe_load((tmp_path / f"{DATA_FILE}-meta.yaml").read_text())
    assert meta["adjusted_covariates"] == list(_regression_states(logistic_run)[-1].columns)
    assert meta["adjusted_covariates"][:5] == ["age", "sex", "centre=north", "centre=south", "centre=west"]
    assert len(meta["adjusted_covariates"]) == 7  # and batch's two levels but its reference
    # A summary written before the fitted columns were recorded: the spec's covariates and PCs.
    assert metadata({"covariates": ["age", "sex"], "pcs": 2}, "")["adjusted_covariates"] == ["age", "sex", "PC1", "PC2"]


def test_covariates__categorical_agrees_with_plink2_glm(cohort, categorical_run, tmp_path):
    if shutil.which("plink2") is None:
        pytest.skip("plink2 is not installed")
    sites, factors = cohort
    gs.write_pooled_plink_inputs(sites, tmp_path)
    header, *lines = (tmp_path / "pheno.tsv").read_text().splitlines()
    extra = []  # the rare level's samples are incomplete at their site: missing here too
    for name in sites:
        centre, batch = factors[name]
        extra += [f"{'NONE' if c is None or c == 'rare_x' else c}\tb{int(b)}" for c, b in zip(centre, batch)]
    (tmp_path / "pheno.tsv").write_text("\n".join([f"{header}\tcentre\tbatch", *(f"{a}\t{b}" for a, b in zip(lines, extra))]) + "\n")
    done = subprocess.run(["plink2", "--vcf", str(tmp_path / "pooled.vcf"), "--pheno", str(tmp_path / "pheno.tsv"),
                           "--pheno-name", "quant_trait", "--covar", str(tmp_path / "pheno.tsv"), "--covar-name",
                           "age,sex,centre,batch", "--glm", "hide-covar", "--threads", "1", "--out", str(tmp_path / "q")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    head, *body = (tmp_path / "q.quant_trait.glm.linear").read_text().splitlines()
    names = head.lstrip("#").split("\t")
    reference = {r["ID"]: r for r in (dict(zip(names, line.split("\t"))) for line in body)}
    compared = 0
    for row in _rows(categorical_run):
        theirs = reference[row["variant_id"]]
        if theirs["ERRCODE"] != "." or row["beta"] is None:
            continue
        sign = 1.0 if theirs["A1"] == "G" else -1.0
        assert int(theirs["OBS_CT"]) == row["n"]
        assert sign * float(theirs["BETA"]) == pytest.approx(row["beta"], rel=1e-4, abs=1e-6)
        assert -np.log10(float(theirs["P"])) == pytest.approx(-np.log10(row["p_value"]), abs=1e-3)
        compared += 1
    assert compared >= 10


def _sharing(name: str) -> SiteContext:
    return dataclasses.replace(default_context(name), share_site_metrics=True)


def test_covariates__site_covariate_equals_pooled_ols_with_site_dummies(cohort):
    sites, _ = cohort
    spec = {**BASE, "covariates": ["age", "sex"], "site_covariate": True}
    run = run_in_memory(GWAS, spec, gs.dataset_paths(sites), secure=True, seed=2,
                        contexts={name: _sharing(name) for name in sites})
    final = _regression_states(run)[-1]
    reference = max(sites, key=lambda name: int(np.sum(np.isfinite(sites[name].quant) & np.isfinite(sites[name].age))))
    others = tuple(name for name in sorted(sites) if name != reference)
    assert final.columns == ("age", "sex", *(f"site={name}" for name in others))
    assert metadata(run.result.summary, "")["adjusted_covariates"] == ["age", "sex", *(f"site={name}" for name in others)]
    compared = 0
    for row in _rows(run):
        if not all(row["variant_id"] in site.ids for site in sites.values()):
            assert row["beta"] is None  # a site without the variant leaves its column empty
            continue
        x, y = _pooled(cohort, row["variant_id"], categorical=False, site_dummies=others)
        beta, se = gs.pooled_ols(x, y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6)
        compared += 1
    assert compared >= 5


def test_covariates__a_site_not_sharing_site_metrics_declines_the_site_covariate(cohort):
    sites, _ = cohort
    state = GWAS.init({**BASE, "covariates": ["age"], "site_covariate": True}, tuple(sorted(sites)))
    with pytest.raises(PolicyRefusal, match="share site metrics") as refusal:
        GWAS.contributions(state, open_dataset(sites["alpha"].path), default_context("alpha"))
    assert refusal.value.code == "policy"
    assert GWAS.contributions(state, open_dataset(sites["alpha"].path), _sharing("alpha"))


# --------------------------------------------------------------------------- types, before any census


def test_covariates__what_the_spec_alone_shows_wrong_is_refused_at_submission():
    with pytest.raises(ConfigurationError, match="not among the covariates"):
        GwasParameters.parse({"phenotype": "y", "covariates": ["age"], "categorical": ["centre"]})
    with pytest.raises(ConfigurationError, match="not categorical covariates"):
        GwasParameters.parse({"phenotype": "y", "covariates": ["centre"], "reference": {"centre": "north"}})
    with pytest.raises(ConfigurationError, match="exact only"):
        GwasParameters.parse({"phenotype": "y", "covariates": ["centre"], "categorical": ["centre"],
                              "privacy": {"epsilon": 3.0, "delta": 1e-6}})
    plain = GwasParameters.parse({"phenotype": "y", "covariates": ["age"]})
    assert "categorical" not in plain.to_json() and GwasParameters.from_json(plain.to_json()) == plain


@pytest.mark.parametrize("spec, public", [
    ({"covariates": ["age", "centre"]},
     "the covariate column 'centre' is not numeric but text; list it under categorical to one-hot encode it"),
    ({"covariates": ["age", "clinic"], "categorical": ["clinic"]}, "the categorical covariate column 'clinic' is missing"),
    ({"phenotype": "centre", "covariates": ["age"]}, "the phenotype column 'centre' is not numeric"),
])
def test_covariates__a_column_of_the_wrong_type_is_declined_at_the_preflight_before_any_census(cohort, tmp_path, spec, public):
    sites, _ = cohort
    engine, job_id = rs.run_job_in_process(tmp_path, gs.dataset_paths(sites), "gwas", {**BASE, **spec})
    status = engine.status(job_id)
    assert status["status"] == "failed"
    for name in sites:
        assert f"{name} declined it (spec-mismatch: {public})" in status["error"], status["error"]
    stages = [stage for stored in engine.store.rounds(job_id) for stage in engine.store.stages(job_id, stored.round_index)]
    assert [s.stage for s in stages] == [PREFLIGHT_STAGE]  # no census round ran


# --------------------------------------------------------------------------- disclosure


def test_covariates__a_level_unique_to_one_person_never_leaves_the_site_nor_enters_a_sum(cohort, categorical_run):
    """The attack: the analyst knows Bob is alpha's only 'rare_x' and reads whether the level exists and Bob's phenotype
    off its column (X'y of a one-person dummy is Bob's value). The level is not in the union, Bob's sample is in no
    sum and in no contributing set, and a column of the analyst's choosing that names each person is sent empty."""
    sites, factors = cohort
    alpha = open_dataset(sites["alpha"].path)
    bob = [f"alpha-{i}" for i in np.flatnonzero(factors["alpha"][0] == "rare_x")]
    state = next(s for r, s in categorical_run.states if isinstance(s.inner, RegressionState) and r - s.offset == LEVELS_ROUND)
    keys = REGRESSION.site_step(state.inner, LEVELS_ROUND, alpha, default_context("alpha"))[LEVEL_KEYS]
    assert sorted(keys) == ["0\teast", "0\tnorth", "0\tsouth", "1\t1", "1\t10", "1\t2"]
    released = GWAS.contributions(categorical_run.states[0][1], alpha, default_context("alpha"))[0]
    assert len(bob) == 2 and not released.samples & set(bob)
    # One person per level (a column naming each sample): nothing is sent, no sample contributes.
    ids = pq.read_table(sites["alpha"].path / "samples.parquet").column("sample_id")
    _add_columns(sites["alpha"].path, {"person": ids})
    try:
        spec = {**CATEGORICAL, "covariates": ["age", "person"], "categorical": ["person"]}
        inner = dataclasses.replace(state.inner, parameters=GwasParameters.parse(spec))
        assert REGRESSION.site_step(inner, LEVELS_ROUND, open_dataset(sites["alpha"].path),
                                    default_context("alpha"))[LEVEL_KEYS].size == 0
    finally:
        table = pq.read_table(sites["alpha"].path / "samples.parquet")
        outputs.write_table(table.drop_columns(["person"]), sites["alpha"].path / "samples.parquet", "samples")


def test_covariates__the_analyst_or_coordinator_cannot_lower_a_site_s_level_minimum(cohort, categorical_run):
    sites, _ = cohort
    strict = SiteContext(name="alpha", min_samples=1, min_allele_count=10, share_variant_keys=True)
    alpha = open_dataset(sites["alpha"].path)
    with pytest.raises(PolicyRefusal, match="min_level_count") as refusal:
        GWAS.contributions(categorical_run.states[0][1], alpha, strict)  # the job's min_level_count: 5
    assert refusal.value.code == "policy"
    state = next(s.inner for r, s in categorical_run.states if isinstance(s.inner, RegressionState) and r - s.offset == LEVELS_ROUND)
    forged = dataclasses.replace(state, parameters=dataclasses.replace(state.parameters, min_level_count=1))
    with pytest.raises(PolicyRefusal, match="min_level_count"):
        REGRESSION.site_step(forged, LEVELS_ROUND, alpha, dataclasses.replace(strict, min_allele_count=2))
