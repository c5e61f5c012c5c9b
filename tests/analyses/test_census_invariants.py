"""The census' per-variant invariants: every impossible total fails naming the variant and the invariant.

Coordinator side, the census refuses counts no honest sites give (:func:`check_counts`)
and a table that breaks an invariant (:func:`check_census_table`) before publishing;
site side, a dataset holding a variant twice is refused before it is counted twice.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from pipeline.analyses import SiteCache, census
from pipeline.analyses.census import (
    CENSUS,
    COUNT_FIELDS,
    FLAG_FIELD,
    HWE_FIELD,
    TYPED_FIELD,
    CensusParameters,
    check_census_table,
    check_counts,
)
from pipeline.analyses.gwas.outputs import check_variant_sums
from pipeline.analyses.gwas.site_data import _refuse_repeated_rows
from pipeline.dataset import open_dataset
from pipeline.errors import InputError, ProtocolError
from pipeline.federation.in_memory import run_in_memory
from tests.federation import runtime_support as rs

IDS = ["chr1:100:A:G", "chr1:200:C:T", "chr1:300:G:A"]
N = 50


def _counts(hom_ref=(20, 30, 10), het=(10, 10, 10), hom_alt=(5, 5, 20), missing=(5, 5, 10)) -> dict[str, np.ndarray]:
    return {name: np.array(v, np.int64) for name, v in zip(COUNT_FIELDS, (hom_ref, het, hom_alt, missing))}


def _state(ids=IDS, **spec):
    state = CENSUS.init({"min_allele_count": 0, **spec}, ("a", "b"))
    return CENSUS.coordinator_step(state, 0, {"variant_id": np.array(ids)}, 2)[0]


def _total(counts, n=N, below=(0, 0, 0), typed=(2, 2, 2), hwe_fail=(0, 0, 0)):
    return {**counts, FLAG_FIELD: np.array(below, np.int64), TYPED_FIELD: np.array(typed, np.int64),
            HWE_FIELD: np.array(hwe_fail, np.int64), "n_samples": np.array([n], np.int64)}


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"typed": (2, 3, 2)}, "the summed typed is 3, expected in [0, the 2 sites minus those that left it out]"),
    ({"typed": (2, 2, 2), "below": (0, 1, 0)}, "the summed typed is 2, expected in [0, the 2 sites minus those"),
    ({"typed": (2, 0, 2)}, "the summed typed is 0, expected at most n_hom_ref + n_het + n_hom_alt + n_missing = 50, and 0 only"),
    ({"hwe_fail": (0, 3, 0), "typed": (2, 2, 2)}, "the summed hwe_fail is 3, expected in [0, the sites that typed it = 2]"),
])
def test_census_invariants__site_flags_no_honest_sites_give_are_refused(flags, fragment):
    """A site cannot both type a variant and leave it out, type it without a sample, or fail HWE where it did not type."""
    with pytest.raises(ProtocolError, match=f"variant {IDS[1]}") as caught:
        CENSUS.coordinator_step(_state(), 1, _total(_counts(), **flags), 2)
    assert fragment in str(caught.value), str(caught.value)


def test_census_invariants__honest_counts_pass_and_publish():
    _, done, result = CENSUS.coordinator_step(_state(), 1, _total(_counts()), 2)
    assert done
    table = result.tables["census_variants"].to_pydict()
    assert all(0 <= r <= 1 for r in table["call_rate"])
    assert all(a <= 2 * N for a in table["allele_number"])
    assert all(v >= 0 for v in table["n_not_typed"])


@pytest.mark.parametrize("name", COUNT_FIELDS)
def test_census_invariants__a_negative_count_is_refused(name):
    counts = _counts()
    counts[name][1] = -3
    with pytest.raises(ProtocolError, match=f"variant {IDS[1]}: the summed {name} is -3, expected at least 0"):
        CENSUS.coordinator_step(_state(), 1, _total(counts), 2)


def test_census_invariants__negative_n_samples_is_refused():
    with pytest.raises(ProtocolError, match="n_samples is -1, expected at least 0"):
        check_counts(_counts(), -1, IDS, below_min=np.zeros(3, np.int64), num_sites=2)


def test_census_invariants__counts_above_n_would_give_negative_not_typed_and_call_rate_above_1():
    # 200 + 30 + 20 + 0 = 250 > N = 100: n_not_typed -150, call rate 2.5, allele_number 500 > 2N
    counts = _counts(hom_ref=(20, 200, 10), het=(10, 30, 10), hom_alt=(5, 20, 20), missing=(5, 0, 10))
    with pytest.raises(ProtocolError) as caught:
        CENSUS.coordinator_step(_state(), 1, _total(counts, n=100), 2)
    message = str(caught.value)
    for fragment in (f"variant {IDS[1]}", "exceeds n_samples = 100", "n_not_typed would be -150", "call_rate 2.5",
                     "allele_number 500 against 2N = 200"):
        assert fragment in message, message


def test_census_invariants__called_exactly_n_passes():
    counts = _counts(hom_ref=(25, 30, 10), het=(10, 10, 10), hom_alt=(10, 5, 20), missing=(5, 5, 10))
    check_counts(counts, N, IDS, below_min=np.zeros(3, np.int64), num_sites=2)


@pytest.mark.parametrize("below", [(0, -1, 0), (0, 0, 3)])
def test_census_invariants__site_flags_outside_0_to_num_sites_are_refused(below):
    with pytest.raises(ProtocolError, match=f"variant {IDS[1] if below[1] else IDS[2]}: the summed below_min"):
        CENSUS.coordinator_step(_state(), 1, _total(_counts(), below=below), 2)


def _table() -> pa.Table:
    return census.census_table(np.array(IDS), _counts(), N, CensusParameters.parse({"min_allele_count": 0}),
                               below_min=np.zeros(3, np.int64))


def _broken(column: str, value: float, row: int = 1) -> pa.Table:
    table = _table()
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


BROKEN = {
    "n_not_typed": (-300, "the summed n_not_typed is -300, expected at least 0"),
    "call_rate": (1.32, "the summed call_rate is 1.32, expected in [0, 1]"),
    "allele_count": (-1, "the summed allele_count is -1, expected at least 0"),
    "allele_number": (130, "the summed allele_number is 130, expected 2 x (n_hom_ref + n_het + n_hom_alt) = 90"),
    "alt_allele_frequency": (1.5, "the summed alt_allele_frequency is 1.5, expected in [0, 1]"),
}


@pytest.mark.parametrize("column", sorted(BROKEN))
def test_check_census_table__each_broken_invariant_names_the_variant(column):
    value, message = BROKEN[column]
    check_census_table(_table(), N)  # the honest table passes
    with pytest.raises(ProtocolError, match=f"census: variant {IDS[1]}: " + message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)").replace("+", r"\+")):
        check_census_table(_broken(column, value), N)


def test_check_census_table__allele_count_above_allele_number_and_allele_number_above_2n():
    with pytest.raises(ProtocolError, match=f"variant {IDS[1]}: the summed allele_count is 91, expected at most allele_number = 90"):
        check_census_table(_broken("allele_count", 91), N)
    # a table of 90 alleles claims fewer samples than it counts: allele_number > 2N and the classes exceed N
    with pytest.raises(ProtocolError, match=f"variant {IDS[0]}: the summed allele_number is 70, expected at most 2N = 60"):
        check_census_table(_table(), 30)


def test_check_census_table__classes_must_add_up_to_n_for_exact_sums_only():
    table = _broken("n_not_typed", 7)
    with pytest.raises(ProtocolError, match=rf"variant {IDS[1]}: .* is 57, expected N = 50"):
        check_census_table(table, N)
    check_census_table(table, N, exact=False)  # noisy sums are clamped, their classes need not add up


def test_check_census_table__rows_not_published_are_not_judged():
    table = _broken("call_rate", 1.32)
    publishable = table.column("publishable").to_pylist()
    publishable[1] = False
    index = table.schema.get_field_index("publishable")
    check_census_table(table.set_column(index, table.schema.field(index), pa.array(publishable)), N)


# --- a dataset holding a variant twice ---------------------------------------------------------


@pytest.fixture
def duplicated(tmp_path):
    """Site a holds chr22:100:A:G twice (in two chunks); site b does not hold it but has many samples."""
    ids = ["chr22:100:A:G", "chr22:200:A:G", "chr22:100:A:G"]
    a = rs.write_dataset(tmp_path / "a", ids, rs.random_genotypes(1, 3, 100, missing_rate=0.0), chunk_size=2)
    b = rs.write_dataset(tmp_path / "b", ["chr22:200:A:G"], rs.random_genotypes(2, 1, 300), sample_prefix="B")
    return {"a": a, "b": b}


def test_site_variant_counts__refuses_a_dataset_holding_a_variant_twice(duplicated):
    with pytest.raises(InputError, match=r"a: variant chr22:100:A:G is stored twice \(in chunk-00000 and chunk-00001"):
        census.site_variant_counts(open_dataset(duplicated["a"]), SiteCache())


@pytest.mark.parametrize("sites", [("a",), ("a", "b")])
def test_census_end_to_end__a_duplicated_variant_fails_naming_it(duplicated, sites):
    with pytest.raises(InputError, match="variant chr22:100:A:G is stored twice"):
        run_in_memory(CENSUS, {"min_allele_count": 0}, {name: duplicated[name] for name in sites})


def test_census_end_to_end__without_the_site_check_the_coordinator_still_refuses(duplicated, monkeypatch):
    monkeypatch.setattr(census, "refuse_duplicate_ids", lambda *args: None)
    with pytest.raises(ProtocolError, match="variant chr22:100:A:G: .*exceeds n_samples = 100.*n_not_typed would be -100"):
        run_in_memory(CENSUS, {"min_allele_count": 0}, {"a": duplicated["a"]})


# --- GWAS per-variant sums --------------------------------------------------------------------------


def _gwas_state(v: int = 3, complete: int = 40):
    return SimpleNamespace(variant_ids=tuple(IDS[:v]), standardization=SimpleNamespace(n=complete))


@pytest.mark.parametrize("field, n, alt, below, expected", [
    ("n", [10, -1, 10], [0, 0, 0], [0, 0, 0], "the summed n is -1, expected at least 0"),
    ("n", [10, 41, 10], [0, 0, 0], [0, 0, 0], "the summed n is 41, expected at most the 40 complete samples"),
    ("alt_count", [10, 10, 10], [0, 21, 0], [0, 0, 0], "the summed alt_count is 21, expected in [0, 2n = 20]"),
    ("alt_count", [10, 10, 10], [0, -1, 0], [0, 0, 0], "the summed alt_count is -1"),
    ("below_min", [10, 10, 10], [0, 0, 0], [0, -1, 0], "the summed below_min is -1, expected in [0, the 3 sites]"),
    ("below_min", [10, 10, 10], [0, 0, 0], [0, 4, 0], "the summed below_min is 4, expected in [0, the 3 sites]"),
    ("n", [10, 5, 10], [0, 0, 0], [0, 3, 0], "the summed n is 5, expected 0 where all 3 sites were below their own minimum"),
])
def test_gwas_variant_sums__each_invariant_names_the_variant(field, n, alt, below, expected):
    state = _gwas_state()
    check_variant_sums(state, np.array([10, 40, 0]), np.array([0.0, 80.0, 0.0]), np.array([0, 2, 3]), 3)  # extremes pass
    with pytest.raises(ProtocolError) as caught:
        check_variant_sums(state, np.array(n), np.array(alt, float), np.array(below), 3)
    assert f"gwas: variant {IDS[1]}: {expected}" in str(caught.value)


def test_gwas_site_rows__a_variant_read_twice_is_refused(tmp_path):
    state = _gwas_state()
    dataset = SimpleNamespace(path=tmp_path / "site")
    seen = np.zeros(3, bool)
    _refuse_repeated_rows(dataset, state, np.array([0, 2]), seen)
    seen[[0, 2]] = True
    with pytest.raises(InputError, match=f"variant {IDS[2]} is stored twice"):
        _refuse_repeated_rows(dataset, state, np.array([1, 2]), seen)
    with pytest.raises(InputError, match=f"variant {IDS[1]} is stored twice"):
        _refuse_repeated_rows(dataset, state, np.array([1, 1]), np.zeros(3, bool))
