from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.harmonize.batch import (
    call_dosage,
    concat_blocks,
    in_position_order,
    to_block,
)
from pipeline.harmonize.multiallelic import split_block
from tests.harmonize.records import make_block


def test_call_dosage__ploidy_and_missing():
    allele = np.array([[[0, 0], [0, 1], [1, 1], [-1, 1], [-1, -1], [1, -2], [0, -2], [-1, -2]]], dtype=np.int8)
    assert call_dosage(allele).tolist() == [[0, 1, 2, -1, -1, 2, 0, -1]]
    assert call_dosage(allele).dtype == np.int8


def test_call_dosage__triploid_counts_alt_alleles():
    allele = np.array([[[0, 1, 1], [1, 1, 1], [0, -1, 1], [1, -2, -2]]], dtype=np.int8)
    assert call_dosage(allele).tolist() == [[2, 3, -1, 2]]


def test_to_block__variant_table_follows_schema():
    block = to_block(split_block(make_block([(5, "A", "C,G", ["1/2", "0/0"])], contig="chr2")))
    schemas.validate(block.variants, "variants")
    assert block.variants.column("variant_id").to_pylist() == ["chr2:5:A:C", "chr2:5:A:G"]
    assert block.call_dosage.tolist() == [[1, 0], [1, 0]]


def test_concat_blocks__sorts_by_position_and_fills_missing_ds():
    first = to_block(split_block(make_block([(9, "A", "C", ["0/1"])], ds=[[[0.7]]])))
    second = to_block(split_block(make_block([(3, "A", "C", ["1/1"])])))
    block = concat_blocks([first, second], num_samples=1)
    assert block.variants.column("base_pair_location").to_pylist() == [3, 9]
    assert block.call_dosage.tolist() == [[2], [1]]
    assert np.isnan(block.dosage[0, 0]) and block.dosage[1, 0] == np.float32(0.7)
    assert isinstance(block.variants, pa.Table)


def test_in_position_order__sorted_blocks_pass_as_they_are_else_one_sorted_block():
    first = to_block(split_block(make_block([(3, "A", "C", ["0/1"])], ds=[[[0.7]]])))
    empty = to_block(split_block(make_block([])))
    second = to_block(split_block(make_block([(9, "A", "C", ["1/1"])])))
    ordered = in_position_order([first, empty, second], num_samples=1)
    assert len(ordered) == 2 and ordered[0] is first and ordered[1] is second  # no copy of the genotypes
    (joined,) = in_position_order([second, first], num_samples=1)
    assert joined.variants.column("base_pair_location").to_pylist() == [3, 9]
    assert joined.call_dosage.tolist() == [[1], [2]]
    assert in_position_order([empty], num_samples=1) == []


def test_call_dosage__diploid_lookup_equals_general_rule():
    from pipeline.harmonize.batch import _general_dosage

    combos = np.array([[[a, b] for a in range(-2, 2) for b in range(-2, 2)]], dtype=np.int8)
    np.testing.assert_array_equal(call_dosage(combos), _general_dosage(combos))
    rng = np.random.default_rng(0)
    allele = rng.integers(-2, 2, size=(50, 40, 2)).astype(np.int8)
    np.testing.assert_array_equal(call_dosage(allele), _general_dosage(allele))


def test_call_dosage__lookup_in_slices_equals_a_per_call_rule(monkeypatch):
    """Every pair of allele values a slot can hold (unsplit ALTs too), over more rows than one lookup slice, a
    non-contiguous input included, against the rule written per call."""
    from pipeline.harmonize import batch

    def by_hand(a0: int, a1: int) -> int:
        slots = [a for a in (a0, a1) if a != -2]
        if not slots or -1 in slots:
            return -1
        return 2 * (slots[0] == 1) if len(slots) == 1 else sum(a == 1 for a in slots)

    monkeypatch.setattr(batch, "_LOOKUP_CELLS", 16)
    rng = np.random.default_rng(4)
    allele = rng.integers(-2, 4, size=(37, 11, 2)).astype(np.int8)
    expected = np.array([[by_hand(int(a0), int(a1)) for a0, a1 in row] for row in allele], dtype=np.int8)
    np.testing.assert_array_equal(call_dosage(allele), expected)
    np.testing.assert_array_equal(call_dosage(allele[:, ::-1]), expected[:, ::-1])
