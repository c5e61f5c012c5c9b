"""Several phenotypes in one GWAS job: each equals its own one-phenotype job and the pooled fit.

The cohort carries ``quant_b`` (the same missing values as ``quant_trait``: one shared
pass), ``quant_c`` (more missing values: its own pass), ``binary_b`` (a second 0/1 trait)
and ``quant_near`` (``quant_trait`` with two more missing values at one site: a release
two samples apart, which the ledger refuses).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from pipeline.analyses.gwas import (
    GWAS,
    GwasParameters,
    PhenotypesState,
    RegressionState,
)
from pipeline.analyses.gwas.phenotypes import shared_passes
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.federation.ledger import ReleaseLedger
from tests.analyses import gwas_support as gs

BASE = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
LINEAR = ("quant_trait", "quant_b", "quant_c")
LOGISTIC = ("binary_trait", "binary_b")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    sites = gs.make_cohort(tmp_path_factory.mktemp("phenotypes"), sizes=(70, 60, 50), num_variants=16)
    rng = np.random.default_rng(3)
    extra = {}
    for name, site in sites.items():
        n = len(site.quant)
        quant_b = np.where(np.isfinite(site.quant), 0.3 * site.quant + rng.normal(0, 1, n), np.nan)
        quant_c = np.where(rng.random(n) < 0.2, np.nan, quant_b + rng.normal(0, 1, n))
        binary_b = np.where(rng.random(n) < 0.1, np.nan, (rng.random(n) < 0.4).astype(np.float64))
        quant_near = site.quant.copy()
        if name == "alpha":
            quant_near[np.flatnonzero(np.isfinite(site.quant) & np.isfinite(site.age))[:2]] = np.nan
        gs.write_phenotypes(site.path, {"age": site.age, "sex": site.sex, "quant_trait": site.quant,
                                        "binary_trait": site.binary, "quant_b": quant_b, "quant_c": quant_c,
                                        "binary_b": binary_b, "quant_near": quant_near})
        extra[name] = {"quant_b": quant_b, "quant_c": quant_c, "binary_b": binary_b}
    return sites, extra


def _run(cohort, spec, seed):
    sites, _ = cohort
    return run_in_memory(GWAS, {**BASE, **spec}, gs.dataset_paths(sites), secure=True, seed=seed)


@pytest.fixture(scope="module")
def linear_runs(cohort):
    several = _run(cohort, {"model": "linear", "phenotypes": list(LINEAR)}, 1)
    return several, {name: _run(cohort, {"model": "linear", "phenotype": name}, 2) for name in LINEAR}


def _same_tables(several, single, name):
    for table in ("gwas", "gwas_status"):
        got, expected = several.result.tables[f"{table}.{name}"].to_pydict(), single.result.tables[table].to_pydict()
        assert got.keys() == expected.keys()
        for column, values in expected.items():
            if column in ("beta", "standard_error", "p_value", "statistic", "effect_allele_frequency"):
                assert np.allclose(np.array(got[column], float), np.array(values, float), rtol=1e-9, atol=0, equal_nan=True)
            else:
                assert got[column] == values, column


def test_linear__each_phenotype_equals_its_own_job_and_shares_a_pass_where_its_samples_do(linear_runs):
    several, singles = linear_runs
    summary = several.result.summary
    assert summary["phenotypes"] == list(LINEAR)
    assert summary["regression_passes"] == [["quant_trait", "quant_b"], ["quant_c"]]
    assert set(several.result.tables) == {f"{t}.{p}" for t in ("gwas", "gwas_status") for p in LINEAR}
    assert len(several.states) == len(singles["quant_trait"].states)  # one census, one statistics round for all
    for name in LINEAR:
        _same_tables(several, singles[name], name)
        mine, theirs = summary["by_phenotype"][name], singles[name].result.summary
        for key in ("lambda_gc", "num_samples", "variants", "top_hits", "phenotype"):
            assert mine[key] == theirs[key], key
    assert summary["by_phenotype"]["quant_c"]["num_samples"] < summary["by_phenotype"]["quant_b"]["num_samples"]


@pytest.mark.parametrize("name", ["quant_b", "quant_c"])
def test_linear__equals_pooled_ols(cohort, linear_runs, name):
    sites, extra = cohort
    renamed = {site: dataclasses.replace(s, quant=extra[site][name]) for site, s in sites.items()}
    rows = linear_runs[0].result.tables[f"gwas.{name}"].to_pylist()
    assert len(rows) >= 10
    gs.assert_equals_pooled_ols(rows, renamed)


def test_logistic__each_binary_phenotype_equals_its_own_job(cohort):
    several = _run(cohort, {"model": "logistic", "phenotypes": list(LOGISTIC)}, 3)
    assert isinstance(several.states[-1][1].inner, PhenotypesState)
    for name in LOGISTIC:
        single = _run(cohort, {"model": "logistic", "phenotype": name}, 4)
        _same_tables(several, single, name)
        assert several.result.summary["by_phenotype"][name]["num_cases"] == single.result.summary["num_cases"]


def test_one_phenotype_in_a_list_is_the_one_phenotype_job():
    state = GWAS.phases[-1].analysis.init({**BASE, "phenotypes": ["y"], "variant_ids": ["chr1:5:A:G"]}, ("a",))
    assert isinstance(state, RegressionState) and state.parameters == GwasParameters.parse({**BASE, "phenotype": "y"})


@pytest.mark.parametrize("spec, match", [
    ({"phenotype": "a", "phenotypes": ["b", "c"]}, "not both"),
    ({"phenotypes": ["a", "b", "a"]}, "repeated"),
    ({"phenotypes": []}, "non-empty"),
    ({"phenotypes": ["a", "age"]}, "also listed as a covariate"),
    ({"phenotypes": ["a", "b/c"]}, "letters, digits"),
    ({"phenotypes": ["a", "b"], "model": "logistic", "hwe_samples": "controls"}, "hwe_samples"),
    ({"phenotypes": ["a", "b"], "privacy": {"epsilon": 3.0, "delta": 1e-6}}, "privacy"),
    ({}, "needs 'phenotype' or 'phenotypes'"),
])
def test_spec_errors(spec, match):
    with pytest.raises(ConfigurationError, match=match):
        GwasParameters.parse({**BASE, **spec})


def test_outputs__every_file_is_named_after_its_phenotype(linear_runs, tmp_path):
    several, _ = linear_runs
    written = GWAS.write_outputs(several.result, tmp_path)
    assert sorted(written) == sorted(p.name for p in tmp_path.iterdir())
    for name in LINEAR:
        for file in (f"gwas.{name}.tsv.gz", f"gwas.{name}.tsv.gz.tbi", f"gwas.{name}.tsv.gz-meta.yaml",
                     f"manhattan.{name}.png", f"qq.{name}.png"):
            assert file in written
        meta = yaml.safe_load((tmp_path / f"gwas.{name}.tsv.gz-meta.yaml").read_text())
        assert meta["data_file_name"] == f"gwas.{name}.tsv.gz" and meta["trait_description"] == [name]
    assert not (tmp_path / "gwas.tsv.gz").exists()


def test_disclosure__two_phenotypes_a_few_samples_apart_are_refused_as_two_jobs_would_be(cohort, tmp_path):
    """The attack: a phenotype that is another minus two people's values, in the same job, to difference them out."""
    sites, _ = cohort
    names = tuple(sorted(sites))
    dataset = open_dataset(sites["alpha"].path)
    ledger = ReleaseLedger(tmp_path / "ledger.jsonl")

    def check(phenotypes):
        state = GWAS.init({**BASE, "model": "linear", "phenotypes": phenotypes}, names)
        contributions = GWAS.contributions(state, dataset, default_context("alpha"))
        ledger.check(ledger.candidates("job-1", "gwas", contributions, names), min_samples=5, min_set_difference=5,
                     site="alpha")
        return contributions

    assert len(check(["quant_trait", "quant_b"])) == 3  # one release per phenotype, and the census; same sets pass
    with pytest.raises(PolicyRefusal) as refused:
        check(["quant_trait", "quant_near"])
    assert refused.value.code == "set-too-close"


def test_shared_passes__a_pair_shares_only_where_every_site_said_so():
    # pairs (0,1) (0,2) (1,2); 3 sites
    assert shared_passes(np.array([3, 2, 2]), 3, 3) == ((0, 1), (2,))
    assert shared_passes(np.array([3, 3, 3]), 3, 3) == ((0, 1, 2),)
    assert shared_passes(np.array([0, 0, 3]), 3, 3) == ((0,), (1, 2))
