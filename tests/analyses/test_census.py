"""The census analysis run through the real secure-aggregation protocol in memory,
checked against pooled counts computed directly from the concatenated genotype matrices."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline import dataset as dataset_io
from pipeline.analyses import KeyUnion, SiteCache, SiteContext, census
from pipeline.analyses.census import CENSUS, COUNT_FIELDS
from pipeline.encoding import Layout, Ring
from pipeline.errors import ProtocolError
from pipeline.secagg.driver import run_round
from pipeline.secagg.messages import Stage
from pipeline.stats.hwe import hwe_exact_p
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    """Three sites with overlapping, different variant sets and different sample counts."""
    tmp = tmp_path_factory.mktemp("census")
    positions = {"alpha": range(100, 140), "beta": range(110, 150), "gamma": list(range(100, 120)) + [500, 501]}
    sizes = {"alpha": 40, "beta": 25, "gamma": 33}
    data = {}
    for i, name in enumerate(SITES):
        ids = rs.variant_ids(positions[name])
        calls = rs.random_genotypes(10 + i, len(ids), sizes[name])
        data[name] = (ids, calls, rs.write_dataset(tmp / name, ids, calls))
    return data


def _context(name: str, *, share: bool = True, min_allele_count: int = 0) -> SiteContext:
    return SiteContext(name=name, min_samples=5, min_allele_count=min_allele_count, share_variant_keys=share)


def naive_pooled(cohort, union: list[str], names=SITES) -> dict[str, np.ndarray]:
    """Counts over the concatenated (variants x all samples) matrix; -9 marks 'not typed'."""
    columns = []
    for name in names:
        ids, calls, _ = cohort[name]
        matrix = np.full((len(union), calls.shape[1]), -9, np.int8)
        row = {v: i for i, v in enumerate(ids)}
        for j, variant in enumerate(union):
            if variant in row:
                matrix[j] = calls[row[variant]]
        columns.append(matrix)
    pooled = np.concatenate(columns, axis=1)
    return {
        "n_hom_ref": (pooled == 0).sum(1), "n_het": (pooled == 1).sum(1), "n_hom_alt": (pooled == 2).sum(1),
        "n_missing": (pooled == -1).sum(1), "n_not_typed": (pooled == -9).sum(1), "n_samples": pooled.shape[1],
    }


def naive_site_hwe(cohort, union: list[str], names=SITES) -> np.ndarray:
    """(sites, variants) each site's own HWE exact p from its own matrix; NaN where it does not have the variant."""
    p = np.full((len(names), len(union)), np.nan)
    for s, name in enumerate(names):
        ids, calls, _ = cohort[name]
        row = {v: i for i, v in enumerate(ids)}
        for j, variant in enumerate(union):
            if variant in row:
                g = calls[row[variant]]
                p[s, j] = hwe_exact_p([(g == 0).sum()], [(g == 1).sum()], [(g == 2).sum()])[0]
    return p


def _run_census(cohort, parameters: dict, contexts: dict[str, SiteContext], *, dropouts=None, names=SITES):
    state = CENSUS.init(parameters, tuple(names))
    assert isinstance(CENSUS.layout(state, 0), KeyUnion)
    datasets = {name: dataset_io.open_dataset(cohort[name][2]) for name in names}
    keys = [CENSUS.site_step(state, 0, datasets[n], contexts[n])["variant_id"] for n in names]
    union = np.unique(np.concatenate(keys))
    state, done, _ = CENSUS.coordinator_step(state, 0, {"variant_id": union}, len(names))
    assert not done
    layout = CENSUS.layout(state, 1)
    assert isinstance(layout, Layout)
    contributions = [CENSUS.site_step(state, 1, datasets[n], contexts[n]) for n in names]
    outcome = run_round([layout.encode(c) for c in contributions], threshold=2, ring=layout.ring, dropouts=dropouts, seed=7)
    total = layout.decode(outcome.total, len(outcome.survivors))
    state, done, result = CENSUS.coordinator_step(state, 1, total, len(outcome.survivors))
    assert done and result is not None
    return state, layout, result, outcome


def test_census__equals_pooled_counts_and_pooled_hwe(cohort):
    contexts = {n: _context(n) for n in SITES}
    params = {"min_allele_count": 0, "hwe_p": 1e-6, "min_call_rate": 0.9}
    state, layout, result, _ = _run_census(cohort, params, contexts)
    union = sorted(set().union(*(cohort[n][0] for n in SITES)))
    assert list(state.variant_ids) == union
    assert layout.ring is Ring.R32
    table = result.tables["census_variants"].to_pydict()
    expected = naive_pooled(cohort, union)
    for name in (*COUNT_FIELDS, "n_not_typed"):
        np.testing.assert_array_equal(table[name], expected[name], err_msg=name)
    assert result.summary["num_samples"] == expected["n_samples"] == 98
    p = hwe_exact_p(expected["n_hom_ref"], expected["n_het"], expected["n_hom_alt"])
    np.testing.assert_allclose(np.array(table["hwe_p_value"], float), p, rtol=1e-12)
    called = expected["n_hom_ref"] + expected["n_het"] + expected["n_hom_alt"]
    typed_samples = called + expected["n_missing"]  # a site without the variant has no missing calls there
    np.testing.assert_allclose(table["call_rate"], called / typed_samples)
    frequency = (expected["n_het"] + 2 * expected["n_hom_alt"]) / (2 * called)
    np.testing.assert_allclose(table["alt_allele_frequency"], frequency)
    assert table["pass_qc"] == [f == "PASS" for f in table["filter"]]
    assert all(("call_rate" in f) == (c / t < 0.9) for f, c, t in zip(table["filter"], called, typed_samples))
    per_site = naive_site_hwe(cohort, union)
    assert table["n_sites_typed"] == [int(np.isfinite(per_site[:, j]).sum()) for j in range(len(union))]
    failing = (per_site < 1e-6).sum(axis=0)  # NaN (not typed) compares False
    assert table["n_sites_hwe_fail"] == failing.tolist()
    assert all(("hwe" in f) == (n > 0) for f, n in zip(table["filter"], failing))
    assert result.tables["filter"].column_names == ["variant_id", "pass_qc", "filter"]


def test_census__dropout_sums_the_survivors(cohort):
    contexts = {n: _context(n) for n in SITES}
    state, _, result, outcome = _run_census(cohort, {"min_allele_count": 0}, contexts, dropouts={1: Stage.MASKED_INPUT})
    assert outcome.survivors == frozenset({1, 3})
    expected = naive_pooled(cohort, list(state.variant_ids), names=("alpha", "gamma"))
    table = result.tables["census_variants"].to_pydict()
    for name in (*COUNT_FIELDS, "n_not_typed"):
        np.testing.assert_array_equal(table[name], expected[name], err_msg=name)


def test_census__key_step_shares_only_keys_above_the_site_minimum(cohort):
    ids, calls, path = cohort["alpha"]
    state = CENSUS.init({"min_allele_count": 30}, SITES)
    keys = CENSUS.site_step(state, 0, dataset_io.open_dataset(path), _context("alpha", min_allele_count=30))["variant_id"]
    allele_count = np.where(calls >= 0, calls, 0).sum(1)
    allele_number = 2 * (calls >= 0).sum(1)
    minor = np.minimum(allele_count, allele_number - allele_count)
    assert sorted(keys.tolist()) == sorted(v for v, m in zip(ids, minor) if m >= 30)
    assert 0 < len(keys) < len(ids)
    silent = CENSUS.site_step(state, 0, dataset_io.open_dataset(path), _context("alpha", share=False))
    assert silent["variant_id"].size == 0


def test_census__variants_below_the_minimum_are_not_published(cohort):
    contexts = {n: _context(n) for n in SITES}
    _, _, result, _ = _run_census(cohort, {"min_allele_count": 20}, contexts)
    table = result.tables["census_variants"].to_pydict()
    minor = [min(ac, an - ac) if ac is not None else None for ac, an in zip(table["allele_count"], table["allele_number"])]
    for publishable, count, m, passing in zip(table["publishable"], table["n_het"], minor, table["pass_qc"]):
        if publishable:
            assert m >= 20 and count is not None
        else:
            assert count is None and m is None and not passing
    assert 0 < sum(table["publishable"]) < len(table["publishable"])


def naive_site_minor(cohort, name: str) -> dict[str, int]:
    """Each variant's minor allele count among one site's called samples, from its matrix."""
    ids, calls, _ = cohort[name]
    out = {}
    for variant, row in zip(ids, calls):
        called = row[row >= 0].astype(int)
        out[variant] = int(min(called.sum(), 2 * called.size - called.sum()))
    return out


def test_census__site_with_a_higher_minimum_takes_part_and_its_small_cells_are_left_out(cohort):
    """A site whose own minimum is above the job's leaves its small cells out; the others' counts are published."""
    contexts = {n: _context(n) for n in SITES}
    contexts["beta"] = _context("beta", min_allele_count=5)  # above the job's publish threshold of 1
    state, layout, result, _ = _run_census(cohort, {"min_allele_count": 1, "min_call_rate": 0.0, "hwe_p": 0.0}, contexts)
    assert layout.field("below_min").shape == (len(state.union),)
    union = list(state.variant_ids)
    # Variants only beta holds enter the union only at or above its minimum (the key round).
    flagged = {v for v, m in naive_site_minor(cohort, "beta").items() if 0 < m < 5} & set(union)
    table = result.tables["census_variants"].to_pydict()
    assert flagged and flagged < set(union)
    pooled = naive_pooled(cohort, union)
    others = naive_pooled(cohort, union, names=("alpha", "gamma"))  # beta's small cells enter no sum
    for j, variant in enumerate(union):
        expected = others if variant in flagged else pooled
        allele_count = expected["n_het"][j] + 2 * expected["n_hom_alt"][j]
        allele_number = 2 * (expected["n_hom_ref"][j] + expected["n_het"][j] + expected["n_hom_alt"][j])
        assert table["n_sites_left_out"][j] == int(variant in flagged)
        if min(allele_count, allele_number - allele_count) >= 1:
            assert table["publishable"][j] and table["filter"][j] == "PASS"
            for name in COUNT_FIELDS:
                assert table[name][j] == expected[name][j], (variant, name)
            # beta's samples count as not typed where it left the variant out
            beta_samples = cohort["beta"][1].shape[1]
            assert table["n_not_typed"][j] == pooled["n_not_typed"][j] + (beta_samples if variant in flagged else 0)
        else:
            assert not table["publishable"][j] and table["filter"][j] == "min_allele_count"
    assert any(table["publishable"][union.index(v)] for v in flagged)  # published, not withheld for everyone
    assert result.summary["variants"]["with_sites_left_out"] == len(flagged)
    assert result.summary["variants"]["publishable"] == sum(table["publishable"])


def test_census__hwe_fails_only_on_a_sites_own_evidence(tmp_path):
    """Two sites each in Hardy-Weinberg equilibrium at different allele frequencies fail plink2's pooled --hwe (Wahlund
    effect), and pass here; a variant out of equilibrium at one site fails. Reference: each site's own exact test."""
    rng = np.random.default_rng(11)
    names = ("alpha", "beta")
    ids = rs.variant_ids([100, 200, 300])

    def hwe_calls(p: float, n: int) -> np.ndarray:
        return (rng.random(n) < p).astype(np.int8) + (rng.random(n) < p).astype(np.int8)

    alpha = np.stack([hwe_calls(0.05, 400), hwe_calls(0.3, 400), hwe_calls(0.3, 400)])
    beta = np.stack([hwe_calls(0.9, 400), hwe_calls(0.3, 400), np.repeat(np.int8(1), 400)])  # 300: all het at beta
    cohort = {name: (ids, calls, rs.write_dataset(tmp_path / name, ids, calls)) for name, calls in zip(names, (alpha, beta))}
    contexts = {n: _context(n) for n in names}
    _, _, result, _ = _run_census(cohort, {"min_allele_count": 0, "hwe_p": 1e-6, "min_call_rate": 0.0}, contexts, names=names)
    table = result.tables["census_variants"].to_pydict()
    own = naive_site_hwe(cohort, ids, names=names)
    assert table["hwe_p_value"][0] < 1e-6 and own[:, 0].min() > 1e-6  # pooled fails, each site passes
    assert table["filter"] == ["PASS", "PASS", "hwe"]
    assert table["n_sites_hwe_fail"] == (own < 1e-6).sum(axis=0).tolist() == [0, 0, 1]


def test_census__min_sites_typed_and_call_rate_over_the_typing_sites(tmp_path):
    names = ("alpha", "beta")
    shared, private = rs.variant_ids([100, 200]), rs.variant_ids([300])
    calls = rs.random_genotypes(3, 3, 30, missing_rate=0.0)
    cohort = {"alpha": (shared + private, calls, rs.write_dataset(tmp_path / "alpha", shared + private, calls)),
              "beta": (shared, calls[:2], rs.write_dataset(tmp_path / "beta", shared, calls[:2]))}
    contexts = {n: _context(n) for n in names}
    _, _, result, _ = _run_census(cohort, {"min_allele_count": 0, "hwe_p": 0.0, "min_call_rate": 0.99, "min_sites_typed": 2},
                                  contexts, names=names)
    table = result.tables["census_variants"].to_pydict()
    # 300 is typed by alpha only: fully called there (call rate 1, not 0.5 as over all 60 samples), but one site < 2.
    assert table["n_sites_typed"] == [2, 2, 1] and table["n_not_typed"] == [0, 0, 30]
    assert table["call_rate"] == [1.0, 1.0, 1.0]
    assert table["filter"] == ["PASS", "PASS", "sites_typed"]


def test_census__site_flag_is_one_only_where_its_own_count_is_a_small_cell(cohort):
    state = CENSUS.init({"min_allele_count": 0}, SITES)
    ids, _, path = cohort["gamma"]
    union = sorted(set(ids) | {"chr22:99999:A:G"})  # one variant gamma does not hold
    state = dataclasses.replace(state, variant_ids=tuple(union))
    out = CENSUS.site_step(state, 1, dataset_io.open_dataset(path), _context("gamma", min_allele_count=6))
    minor = naive_site_minor(cohort, "gamma")
    expected = [int(0 < minor[v] < 6) if v in minor else 0 for v in union]
    assert out["below_min"].tolist() == expected and 0 < sum(expected) < len(union)


def test_census__impossible_flags_fail_the_round(cohort):
    counts = {name: np.zeros(2, np.int64) for name in COUNT_FIELDS}
    with pytest.raises(ProtocolError, match="variant b: the summed below_min is 4"):
        census.check_counts(counts, 10, ["a", "b"], below_min=np.array([0, 4]), num_sites=3)
    census.check_counts(counts, 10, ["a", "b"], below_min=np.array([3, 0]), num_sites=3)


def test_census__ring_widens_when_the_bit_budget_requires(cohort):
    state = CENSUS.init({"max_samples_per_site": 2**30}, SITES)
    state = dataclasses.replace(state, variant_ids=("chr22:1:A:G",))
    assert CENSUS.layout(state, 1).ring is Ring.R64


def test_site_variant_counts__equal_the_per_block_counts_and_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from pipeline.analyses import census
    from pipeline.stats.counts import count_variants

    ids = rs.variant_ids(range(100, 123))
    calls = rs.random_genotypes(3, len(ids), 9)
    dataset = dataset_io.open_dataset(rs.write_dataset(tmp_path / "site", ids, calls, chunk_size=5))
    cache = SiteCache()
    got_ids, got_counts = census.site_variant_counts(dataset, cache)
    assert got_ids.to_pylist() == ids
    np.testing.assert_array_equal(got_counts, np.stack(count_variants(calls)))

    def no_reading(*args, **kwargs):
        raise AssertionError("the genotypes were read again")

    monkeypatch.setattr(dataset_io.Dataset, "read_block", no_reading)
    monkeypatch.setattr(dataset_io.Dataset, "iter_blocks", no_reading)
    again_ids, again_counts = census.site_variant_counts(dataset_io.open_dataset(tmp_path / "site"), cache)
    assert again_ids.equals(got_ids)
    np.testing.assert_array_equal(again_counts, got_counts)


def test_site_variant_counts__a_rewritten_dataset_is_read_again(tmp_path: Path):
    from pipeline.analyses import census

    ids = rs.variant_ids(range(100, 110))
    first = rs.random_genotypes(4, len(ids), 7)
    path = rs.write_dataset(tmp_path / "site", ids, first)
    cache = SiteCache()
    census.site_variant_counts(dataset_io.open_dataset(path), cache)
    second = np.where(first == 0, np.int8(2), first)  # same shape and IDs, other calls
    rs.write_dataset(path, ids, second)
    _, counts = census.site_variant_counts(dataset_io.open_dataset(path), cache)
    np.testing.assert_array_equal(counts[2], (second == 2).sum(axis=1))


def test_census__impossible_counts_from_a_lying_site_fail_the_round_instead_of_being_published(cohort):
    contexts = {n: _context(n) for n in SITES}
    state = CENSUS.init({"min_allele_count": 0}, SITES)
    datasets = {name: dataset_io.open_dataset(cohort[name][2]) for name in SITES}
    keys = [CENSUS.site_step(state, 0, datasets[n], contexts[n])["variant_id"] for n in SITES]
    state, _, _ = CENSUS.coordinator_step(state, 0, {"variant_id": np.unique(np.concatenate(keys))}, len(SITES))
    layout = CENSUS.layout(state, 1)
    contributions = [CENSUS.site_step(state, 1, datasets[n], contexts[n]) for n in SITES]
    # gamma claims 1000 hom-ref calls at the first variant: within the declared bound of one
    # site's counts, but more than the samples all sites have together.
    contributions[2] = {**contributions[2], "n_hom_ref": contributions[2]["n_hom_ref"].copy()}
    contributions[2]["n_hom_ref"][0] = 1000
    outcome = run_round([layout.encode(c) for c in contributions], threshold=2, ring=layout.ring, seed=3)
    total = layout.decode(outcome.total, len(outcome.survivors))
    with pytest.raises(ProtocolError, match=f"variant {state.variant_ids[0]}.*exceeds n_samples"):
        CENSUS.coordinator_step(state, 1, total, len(SITES))


def test_census__hwe_in_controls_only_keeps_a_variant_that_departs_in_cases(tmp_path):
    """A risk allele enriched in cases departs from HWE over all samples; PLINK 1.9 tested controls only, as here."""
    from tests.analyses.gwas_support import write_phenotypes

    rng = np.random.default_rng(5)
    names = ("alpha", "beta")
    ids = rs.variant_ids([100, 200])
    cohort = {}
    for index, name in enumerate(names):
        controls = (rng.random((2, 300)) < 0.2).astype(np.int8) + (rng.random((2, 300)) < 0.2).astype(np.int8)
        cases = np.stack([np.full(300, 2, np.int8), controls[1][::-1]])  # variant 100: every case hom-alt
        calls = np.concatenate([controls, cases], axis=1)
        path = rs.write_dataset(tmp_path / name, ids, calls, sample_prefix=f"{name}-")
        write_phenotypes(path, {"case": np.repeat([0.0, 1.0], 300)})
        cohort[name] = (ids, calls, path)
    contexts = {n: _context(n) for n in names}
    spec = {"min_allele_count": 0, "hwe_p": 1e-6, "min_call_rate": 0.0}
    _, _, everyone, _ = _run_census(cohort, spec, contexts, names=names)
    _, _, in_controls, _ = _run_census(cohort, {**spec, "hwe_controls": "case"}, contexts, names=names)
    assert everyone.tables["census_variants"].column("filter").to_pylist() == ["hwe", "PASS"]
    assert in_controls.tables["census_variants"].column("filter").to_pylist() == ["PASS", "PASS"]
    controls_only = {n: (ids, calls[:, :300], path) for n, (ids, calls, path) in cohort.items()}
    assert (naive_site_hwe(controls_only, ids, names=names) > 1e-6).all()  # the reference: each site's controls


def test_census__hwe_controls_column_is_checked_before_any_count(tmp_path):
    from pipeline.errors import SpecMismatch
    from tests.analyses.gwas_support import write_phenotypes

    ids = rs.variant_ids([100])
    path = rs.write_dataset(tmp_path / "site", ids, rs.random_genotypes(1, 1, 10))
    write_phenotypes(path, {"case": np.array([0, 1, 2, 0, 1, 0, 1, 0, 1, 0], float)})
    dataset = dataset_io.open_dataset(path)
    for column, public in (("case", "not coded 0/1"), ("missing_column", "is missing")):
        state = CENSUS.init({"hwe_controls": column}, SITES)
        with pytest.raises(SpecMismatch) as caught:
            CENSUS.contributions(state, dataset, _context("alpha"))
        assert public in caught.value.public
