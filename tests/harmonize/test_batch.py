from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.harmonize.batch import call_dosage, concat_blocks, to_block
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


def test_call_dosage__diploid_lookup_equals_general_rule():
    from pipeline.harmonize.batch import _general_dosage

    combos = np.array([[[a, b] for a in range(-2, 2) for b in range(-2, 2)]], dtype=np.int8)
    np.testing.assert_array_equal(call_dosage(combos), _general_dosage(combos))
    rng = np.random.default_rng(0)
    allele = rng.integers(-2, 2, size=(50, 40, 2)).astype(np.int8)
    np.testing.assert_array_equal(call_dosage(allele), _general_dosage(allele))
