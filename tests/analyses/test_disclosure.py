"""What a job's results reveal of a site: its contributing sets, its refusals, its clipped values.

Contributing sets are checked against the samples table filtered directly with pyarrow and
the train / held-out split recomputed from its definition (SHA-256 of seed and sample ID),
and against the sample counts the site steps really send. Refusals must give the analyst a
code and the job's own spec keys and column names, never a number of the site's. Values
beyond a job's bound are clipped at the site: a run equals the run on data clipped before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.analyses import GENOTYPES, Contribution, SiteCache, SiteContext
from pipeline.analyses.census import CENSUS, COUNT_FIELDS
from pipeline.analyses.gwas import GWAS, REGRESSION
from pipeline.analyses.gwas.regression import moments_round
from pipeline.analyses.gwas.site_data import site_data as gwas_site_data
from pipeline.analyses.pca import PCA, PcaParameters, select_variants
from pipeline.analyses.registry import ANALYSIS_NAMES, get_analysis
from pipeline.analyses.secure_sum import SECURE_SUM
from pipeline.analyses.train import TRAIN
from pipeline.dataset import open_dataset
from pipeline.errors import PolicyRefusal
from pipeline.federation.in_memory import default_context, run_in_memory
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs
from tests.models import training_support as ts

SITES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, gs.Site]:
    """Three sites with missing phenotypes and covariates; a few samples of beta lack phenotypes altogether."""
    sites = gs.make_cohort(tmp_path_factory.mktemp("disclosure"), sizes=(60, 50, 40), num_variants=20)
    path = sites["beta"].path / "samples.parquet"
    table = pq.read_table(path)
    flags = np.ones(table.num_rows, bool)
    flags[[3, 7, 11]] = False
    table = table.set_column(table.schema.get_field_index("has_phenotypes"), "has_phenotypes", pa.array(flags))
    pq.write_table(table, path)
    return sites


def _samples(path: Path) -> pa.Table:
    return pq.read_table(path / "samples.parquet")


def naive_complete(path: Path, columns: list[str]) -> frozenset[str]:
    """Sample IDs with every column non-null and non-NaN, and has_phenotypes, by pyarrow filtering."""
    table = _samples(path)
    mask = pc.equal(table.column("has_phenotypes"), True)
    for name in columns:
        column = table.column(name)
        mask = pc.and_(mask, pc.and_(pc.is_valid(column), pc.invert(pc.is_nan(column))))
    return frozenset(table.filter(mask).column("sample_id").to_pylist())


def naive_held_out(sample_id: str, *, seed: int, fraction: float) -> bool:
    """The split's definition: the first 8 bytes of SHA-256("genofed-split:seed:id"), little-endian, below fraction x 2^64."""
    digest = hashlib.sha256(f"genofed-split:{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") < int(fraction * 2**64)


def _context(name: str, **overrides) -> SiteContext:
    return dataclasses.replace(default_context(name), **overrides)


def _no_digit_of(count: int, refusal: PolicyRefusal) -> None:
    """The analyst's view of a refusal names no number at all (so none of the site's count)."""
    seen = refusal.for_analyst()
    assert str(count) in str(refusal), "the detail, which stays at the site, keeps the count"
    assert not re.search(r"\d", seen), seen
    assert not any(digit in seen for digit in str(count))


# --------------------------------------------------------------------------- contributing sets


def test_contributions__every_analysis_declares_the_hook_and_sorts_its_variables(cohort):
    dataset = open_dataset(cohort["beta"].path)
    states = {
        "secure_sum": SECURE_SUM.init({"vector": {"source": "test", "length": 4}}, SITES),
        "census": CENSUS.init({}, SITES),
        "pca": PCA.init({"k": 2}, SITES),
        "gwas": GWAS.init({"phenotype": "quant_trait", "covariates": ["sex", "age"]}, SITES),
        "train": TRAIN.init({"target": "quant_trait", "task": "quantitative", "covariates": ["sex", "age"]}, SITES),
    }
    assert set(states) == set(ANALYSIS_NAMES)
    for name, state in states.items():
        contributions = get_analysis(name).contributions(state, dataset, _context("beta"))
        for contribution in contributions:
            assert isinstance(contribution, Contribution) and contribution.samples
            assert list(contribution.variables) == sorted(contribution.variables), name


def test_contributions__census_and_pca_count_every_sample_over_the_genotypes(cohort):
    for name, site in cohort.items():
        dataset = open_dataset(site.path)
        expected = frozenset(_samples(site.path).column("sample_id").to_pylist())
        assert len(expected) == dataset.num_samples
        for analysis, state in ((CENSUS, CENSUS.init({}, SITES)), (PCA, PCA.init({"k": 2}, SITES))):
            assert analysis.contributions(state, dataset, _context(name)) == (Contribution(expected, (GENOTYPES,)),)
        # n_samples, what the counts round sends, is that set's size
        counted = CENSUS.site_step(dataclasses.replace(CENSUS.init({}, SITES), variant_ids=tuple(site.ids)), 1, dataset,
                                   _context(name))
        assert int(counted["n_samples"][0]) == len(expected)


def test_contributions__secure_sum_involves_no_sample(cohort):
    dataset = open_dataset(cohort["alpha"].path)
    for vector in ({"source": "test", "length": 3}, {"source": "file", "path": "v.npy", "length": 3}):
        assert SECURE_SUM.contributions(SECURE_SUM.init({"vector": vector}, SITES), dataset, _context("alpha")) == ()


@pytest.mark.parametrize("spec", [
    {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"]},
    {"model": "logistic", "phenotype": "binary_trait", "covariates": ["age"]},
    {"model": "linear", "phenotype": "quant_trait", "covariates": []},
])
def test_contributions__gwas_complete_cases_and_every_sample_for_its_census(cohort, spec):
    state = GWAS.init(spec, SITES)
    for name, site in cohort.items():
        dataset = open_dataset(site.path)
        regression, census = GWAS.contributions(state, dataset, _context(name))
        expected = naive_complete(site.path, [spec["phenotype"], *spec["covariates"]])
        assert regression == Contribution(expected, tuple(sorted((spec["phenotype"], *spec["covariates"], GENOTYPES))))
        assert census == Contribution(frozenset(_samples(site.path).column("sample_id").to_pylist()), (GENOTYPES,))
        assert len(expected) < len(census.samples)  # the cohort has missing values at every site
        # the regression's site step fits on exactly that set: its moments round counts it
        regression_state = REGRESSION.init({**spec, "variant_ids": list(site.ids)}, SITES)
        moments = REGRESSION.site_step(regression_state, moments_round(regression_state.parameters), dataset, _context(name))
        assert int(moments["n_samples"][0]) == len(expected)
        data = gwas_site_data(regression_state, dataset, SiteCache())
        ids = np.asarray(_samples(site.path).column("sample_id").to_pylist(), dtype=object)
        assert frozenset(ids[data.keep].tolist()) == expected


def test_contributions__gwas_reads_no_genotype(cohort, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("contributions read genotypes")

    dataset = open_dataset(cohort["alpha"].path)
    monkeypatch.setattr(type(dataset), "read_block", no_reading)
    monkeypatch.setattr(type(dataset), "iter_blocks", no_reading)
    state = GWAS.init({"phenotype": "quant_trait", "covariates": ["age"], "pcs": 2}, SITES)
    assert len(GWAS.contributions(state, dataset, _context("alpha"))) == 2
    train = TRAIN.init({"target": "quant_trait", "task": "quantitative", "covariates": ["age"]}, SITES)
    assert len(TRAIN.contributions(train, dataset, _context("alpha"))) == 2


@pytest.mark.parametrize("features, genotypes", [
    ({"variants": "all"}, True), ({"variants": ["chr22:100:A:G"]}, True), ({"variants": []}, False),
])
def test_contributions__train_splits_the_usable_samples_into_training_and_held_out(cohort, features, genotypes):
    spec = {"target": "quant_trait", "task": "quantitative", "covariates": ["age", "sex"], "features": features,
            "holdout_fraction": 0.3, "seed": 11}
    state = TRAIN.init(spec, SITES)
    variables = tuple(sorted(("quant_trait", "age", "sex", *((GENOTYPES,) if genotypes else ()))))
    for name, site in cohort.items():
        usable = naive_complete(site.path, ["quant_trait", "age", "sex"])
        held = frozenset(s for s in usable if naive_held_out(s, seed=11, fraction=0.3))
        training = usable - held
        assert held and training
        contributions = TRAIN.contributions(state, open_dataset(site.path), _context(name))
        assert contributions == (Contribution(training, variables), Contribution(held, variables))


def test_contributions__train_sets_are_the_ones_the_site_steps_count(cohort):
    spec = {"target": "binary_trait", "covariates": ["age"], "features": {"variants": list(cohort["alpha"].ids[:3])},
            "rounds": 1}
    state = TRAIN.init(spec, SITES)
    assert TRAIN.phases[state.phase].name == "moments"
    for name, site in cohort.items():
        dataset = open_dataset(site.path)
        training, held = TRAIN.contributions(state, dataset, _context(name))
        sums = TRAIN.site_step(state, 0, dataset, _context(name))
        assert (int(sums["n_train"][0]), int(sums["n_holdout"][0])) == (len(training.samples), len(held.samples))


def test_contributions__an_empty_held_out_set_is_no_release(tmp_path):
    path = ts.write_dataset(tmp_path / "tiny", rs.variant_ids([100]), np.zeros((1, 2), np.int8),
                            {"age": np.array([50.0, 60.0]), "binary_trait": np.array([0.0, 1.0])}, prefix="t")
    spec = {"target": "binary_trait", "covariates": ["age"], "features": {"variants": []}, "holdout_fraction": 0.01}
    (training,) = TRAIN.contributions(TRAIN.init(spec, ("tiny",)), open_dataset(path), _context("tiny"))
    assert training.samples == {"t0", "t1"}


# --------------------------------------------------------------------------- refusals


def test_refusals__census_and_pca_sample_bound_is_a_policy_code_without_numbers(cohort):
    dataset = open_dataset(cohort["alpha"].path)
    for analysis, state in ((CENSUS, CENSUS.init({"max_samples_per_site": 7}, SITES)),
                            (PCA, PCA.init({"k": 2, "max_samples_per_site": 7}, SITES))):
        with pytest.raises(PolicyRefusal) as caught:
            analysis.site_step(state, 0, dataset, _context("alpha"))
        assert caught.value.code == "policy" and "max_samples_per_site" in caught.value.public
        _no_digit_of(dataset.num_samples, caught.value)


def test_refusals__gwas_sample_bound_names_the_spec_keys_and_columns_only(cohort):
    site = cohort["alpha"]
    spec = {"phenotype": "quant_trait", "covariates": ["age"], "max_samples_per_site": 3, "variant_ids": list(site.ids)}
    with pytest.raises(PolicyRefusal) as caught:
        state = REGRESSION.init(spec, SITES)
        REGRESSION.site_step(state, moments_round(state.parameters), open_dataset(site.path), _context("alpha"))
    refusal = caught.value
    assert refusal.code == "policy"
    assert "'quant_trait'" in refusal.public and "'age'" in refusal.public and "max_samples_per_site" in refusal.public
    _no_digit_of(len(naive_complete(site.path, ["quant_trait", "age"])), refusal)


def test_refusals__train_below_k_is_too_few_samples_naming_only_the_columns(cohort):
    site = cohort["gamma"]
    usable = len(naive_complete(site.path, ["binary_trait", "age", "sex"]))
    base = {"target": "binary_trait", "covariates": ["age", "sex"]}
    for features, phase in (({"variants": []}, "moments"), ({"variants": list(site.ids), "screen_top": 2}, "screen")):
        state = TRAIN.init({**base, "features": features}, SITES)
        assert TRAIN.phases[state.phase].name == phase
        with pytest.raises(PolicyRefusal) as caught:
            TRAIN.site_step(state, 0, open_dataset(site.path), _context("gamma", min_samples=usable + 1))
        refusal = caught.value
        assert refusal.code == "too-few-samples"
        assert "'binary_trait'" in refusal.public and "['age', 'sex']" in refusal.public
        _no_digit_of(usable, refusal)
    state = TRAIN.init({**base, "features": {"variants": []}, "max_samples_per_site": 5}, SITES)
    with pytest.raises(PolicyRefusal) as caught:
        TRAIN.site_step(state, 0, open_dataset(site.path), _context("gamma"))
    assert caught.value.code == "policy" and "max_samples_per_site" in caught.value.public
    _no_digit_of(usable, caught.value)


def test_refusals__a_census_below_the_sites_minimum_is_no_longer_declined(cohort):
    state = CENSUS.init({"min_allele_count": 1}, SITES)
    dataset = open_dataset(cohort["beta"].path)
    strict = _context("beta", min_allele_count=50)
    keys = CENSUS.site_step(state, 0, dataset, strict)["variant_id"]
    counted = CENSUS.site_step(dataclasses.replace(state, variant_ids=tuple(cohort["beta"].ids)), 1, dataset, strict)
    assert keys.size == 0 and set(counted) == {*COUNT_FIELDS, "below_min", "typed", "hwe_fail", "n_samples"}
    left_out = counted["below_min"].astype(bool)
    assert left_out.any()  # its small cells are left out of the sums, not sent
    assert all(not counted[name][left_out].any() for name in COUNT_FIELDS) and not counted["typed"][left_out].any()


# --------------------------------------------------------------------------- clipping


def _quantitative_sites(root: Path, *, covariate_outlier: float, target_outlier: float) -> dict[str, Path]:
    rng = np.random.default_rng(4)
    ids = rs.variant_ids(range(100, 150, 10))
    paths = {}
    for index, name in enumerate(("one", "two")):
        n = 70
        calls = rng.binomial(2, 0.3, size=(len(ids), n)).astype(np.int8)
        age = rng.normal(50, 8, n)
        trait = 0.05 * age + calls[0] + rng.normal(0, 1, n)
        if index == 1:
            age[5] = covariate_outlier
            trait[9] = target_outlier
        paths[name] = ts.write_dataset(root / name, ids, calls, {"age": age, "quant_trait": trait}, prefix=f"{name}_")
    return paths


def test_clipping__train_values_beyond_max_abs_value_equal_the_run_on_clipped_data(tmp_path, caplog):
    spec = {"target": "quant_trait", "task": "quantitative", "covariates": ["age"], "features": {"variants": "all"},
            "rounds": 2, "max_abs_value": 100.0, "local": {"epochs": 1, "batch_size": 16, "learning_rate": 0.05}}
    with caplog.at_level("INFO", logger="pipeline.analyses.bounds"):
        clipped = run_in_memory(TRAIN, spec, _quantitative_sites(tmp_path / "raw", covariate_outlier=3000.0,
                                                                  target_outlier=-250.0))
    messages = [r.getMessage() for r in caplog.records]
    assert any("clipped 1 value(s) of 'age' to +-max_abs_value" in m for m in messages)
    assert any("clipped 1 value(s) of 'quant_trait' to +-max_abs_value" in m for m in messages)
    preclipped = run_in_memory(TRAIN, spec, _quantitative_sites(tmp_path / "pre", covariate_outlier=100.0,
                                                                 target_outlier=-100.0))
    got, want = (json.loads(json.dumps(run.result.summary)) for run in (clipped, preclipped))
    assert got["model"] == want["model"]
    assert got["metrics"] == want["metrics"] and got["history"] == want["history"]


def test_clipping__gwas_moments_stay_within_their_layout_bound(tmp_path):
    paths = _quantitative_sites(tmp_path, covariate_outlier=9e5, target_outlier=0.0)
    spec = {"phenotype": "quant_trait", "covariates": ["age"], "max_abs_value": 100.0, "min_call_rate": 0.0, "hwe_p": 0.0,
            "min_allele_count": 1}
    run = run_in_memory(GWAS, spec, paths, secure=True, seed=1)
    assert run.result.tables["gwas"].num_rows > 0
    state = run.states[-1][1].inner
    data = gwas_site_data(state, open_dataset(paths["two"]), SiteCache())
    assert np.abs(data.raw).max() == 100.0 and np.abs(data.phenotype).max() <= 100.0


# --------------------------------------------------------------------------- PCA on the census' flags


def test_pca__variants_a_site_flags_are_not_selected():
    union = rs.variant_ids(range(100, 110))
    rng = np.random.default_rng(0)
    hom_ref = rng.integers(20, 40, 10)
    het = rng.integers(10, 30, 10)
    hom_alt = rng.integers(5, 15, 10)
    n = int((hom_ref + het + hom_alt).max())
    total = {"n_hom_ref": hom_ref, "n_het": het, "n_hom_alt": hom_alt, "n_missing": n - (hom_ref + het + hom_alt),
             "below_min": np.zeros(10, np.int64), "n_samples": np.array([n])}
    parameters = PcaParameters.parse({"k": 2, "window_bp": 1, "maf": 0.0, "min_call_rate": 0.0})
    everything, _ = select_variants(parameters, union, total, 3)
    assert everything.variant_ids == tuple(union)
    flags = np.zeros(10, np.int64)
    flags[[2, 5]] = [1, 3]
    selection, _ = select_variants(parameters, union, {**total, "below_min": flags}, 3)
    assert selection.variant_ids == tuple(v for j, v in enumerate(union) if j not in (2, 5))


def test_pca__a_site_with_a_higher_minimum_takes_part(cohort):
    contexts = {name: default_context(name) for name in cohort}
    contexts["beta"] = SiteContext("beta", min_samples=1, min_allele_count=4, share_variant_keys=True)
    spec = {"k": 2, "window_bp": 1, "maf": 0.0, "min_call_rate": 0.0, "typed_at_all_sites": False, "min_allele_count": 1}
    run = run_in_memory(PCA, spec, {name: site.path for name, site in cohort.items()}, contexts=contexts)
    beta = cohort["beta"]
    flagged = set()
    for j, variant in enumerate(beta.ids):
        called = beta.calls[j][beta.calls[j] >= 0].astype(int)
        if 0 < min(called.sum(), 2 * called.size - called.sum()) < 4:
            flagged.add(variant)
    selected = set(run.result.tables["pca_loadings"].column("variant_id").to_pylist())
    assert flagged and selected and not selected & flagged


def test_sample_bound__bisection_learns_only_the_power_of_two_above_the_count():
    """Bisecting max_samples_per_site over many jobs must not find a site's sample count."""
    from pipeline.analyses.bounds import check_sample_bound
    from pipeline.errors import PolicyRefusal

    def declines(count: int, bound: int) -> bool:
        try:
            check_sample_bound(count, bound, site="alpha", public="too many")
        except PolicyRefusal as refusal:
            assert refusal.code == "policy" and refusal.public == "too many"
            return True
        return False

    # Every count from 65 to 128 answers every bound the same way: they look alike to the analyst.
    answers = {tuple(declines(count, bound) for bound in range(1, 300)) for count in range(65, 129)}
    assert len(answers) == 1
    assert declines(100, 127) and not declines(100, 128) and not declines(1, 1) and declines(3, 3)
