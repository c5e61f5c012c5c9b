from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.harmonize.alleles import minimal_representation, trim_alleles
from pipeline.harmonize.multiallelic import split_block
from tests.harmonize.records import make_block


@pytest.mark.parametrize(
    ("ref", "alt", "pos", "expected"),
    [
        ("A", "G", 10, ("A", "G", 10)),
        ("ACG", "ATG", 10, ("C", "T", 11)),
        ("ACG", "A", 10, ("ACG", "A", 10)),
        ("ACGT", "ACGTT", 10, ("G", "GT", 12)),
        ("CAT", "CGT", 20, ("A", "G", 21)),
        ("ACGT", "AT", 5, ("ACG", "A", 5)),
        ("GAT", "GATAT", 3, ("G", "GAT", 3)),
        ("AAC", "TTC", 1, ("AA", "TT", 1)),
    ],
)
def test_trim_alleles__examples(ref, alt, pos, expected):
    assert trim_alleles(ref, alt, pos) == expected


def naive_minimal(ref: str, alt: str, pos: int) -> tuple[str, str, int]:
    """Slow reference: strip the longest common suffix, then prefix, keeping one base each."""
    suffix = 0
    while suffix < min(len(ref), len(alt)) - 1 and ref[len(ref) - 1 - suffix] == alt[len(alt) - 1 - suffix]:
        suffix += 1
    ref, alt = ref[: len(ref) - suffix], alt[: len(alt) - suffix]
    prefix = 0
    while prefix < min(len(ref), len(alt)) - 1 and ref[prefix] == alt[prefix]:
        prefix += 1
    return ref[prefix:], alt[prefix:], pos + prefix


alleles = st.text(alphabet="ACGT", min_size=1, max_size=6)


@given(ref=alleles, alt=alleles, pad_left=st.text(alphabet="ACGT", max_size=3), pad_right=st.text(alphabet="ACGT", max_size=3))
def test_trim_alleles__equals_naive_and_is_idempotent(ref, alt, pad_left, pad_right):
    padded = (pad_left + ref + pad_right, pad_left + alt + pad_right, 100)
    result = trim_alleles(*padded)
    assert result == naive_minimal(*padded)
    assert trim_alleles(*result) == result
    r, a, _ = result
    if r != a:
        assert min(len(r), len(a)) == 1 or (r[0] != a[0] and r[-1] != a[-1])


def test_minimal_representation__counts_and_drops_identical():
    block = make_block([(10, "ACG", "ATG", ["0/1"]), (20, "A", "A", ["0/1"]), (30, "C", "T", ["1/1"])])
    batch = minimal_representation()(split_block(block))
    assert batch.ref == ("C", "C") and batch.alt == ("T", "T")
    assert batch.position.tolist() == [11, 30]
    assert batch.source_position.tolist() == [10, 30]
    assert batch.counts["trimmed"] == 1
    assert batch.counts["dropped"]["alt_equals_ref"] == 1
    np.testing.assert_array_equal(batch.allele[:, 0], [[0, 1], [1, 1]])
