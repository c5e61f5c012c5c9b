from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import FastaError
from pipeline.harmonize.alleles import minimal_representation
from pipeline.harmonize.chain import chain
from pipeline.harmonize.multiallelic import split_block
from pipeline.harmonize.reference import check_reference, complement, flag_strand_ambiguous, is_strand_ambiguous
from tests.harmonize.records import DictReference, make_block

#                  1234567890123456789012345
SEQUENCE = "ACGTACGTAGGATTACAGATTACAG"
REFERENCE = DictReference({"chr1": SEQUENCE})


def _harmonize(records, ds=None, reference=REFERENCE):
    step = chain(split_block, minimal_representation(), check_reference(reference), flag_strand_ambiguous())
    return step(make_block(records, ds=ds))


def test_check_reference__matching_ref_is_kept_unchanged():
    batch = _harmonize([(2, "C", "T", ["0/1", "1/1"])])
    assert (batch.ref, batch.alt) == (("C",), ("T",))
    assert not batch.swapped.any() and batch.ref_checked.all()
    assert batch.counts["ref_checked"] == 1


def test_check_reference__swap_recodes_calls_and_ds():
    batch = _harmonize([(2, "T", "C", ["0/1", "1/1", "0/0", "./1", "1"])], ds=[[[0.9], [1.8], [0.1], [1.0], [1.0]]])
    assert (batch.ref, batch.alt) == (("C",), ("T",))
    assert batch.swapped.tolist() == [True]
    assert batch.allele[0].tolist() == [[1, 0], [0, 0], [1, 1], [-1, 0], [0, -2]]
    # haploid DS 1.0 is stored as 2.0, swapped to 0.0
    np.testing.assert_allclose(batch.ds[0], [1.1, 0.2, 1.9, 1.0, 0.0], rtol=1e-6)
    assert batch.counts["swapped"] == 1


def test_check_reference__strand_flip_complements_alleles():
    # position 2 is C: G>A on the other strand is C>T; position 3 is G: A>C is T>G, i.e. G>T swapped
    batch = _harmonize([(2, "G", "A", ["0/1"]), (3, "A", "C", ["1/1"])])
    assert batch.ref == ("C", "G") and batch.alt == ("T", "T")
    assert batch.strand_flipped.tolist() == [True, True]
    assert batch.swapped.tolist() == [False, True]
    assert batch.allele[:, 0].tolist() == [[0, 1], [0, 0]]
    assert batch.counts["strand_flipped"] == 2 and batch.counts["swapped"] == 1


def test_check_reference__ambiguous_snps_are_flagged_never_flipped():
    # position 1 is A: A/T kept; T/A swapped assuming forward strand; C/G at an A is dropped
    batch = _harmonize([(1, "A", "T", ["0/1"]), (5, "T", "A", ["1/1"]), (1, "C", "G", ["0/1"])])
    assert batch.ref == ("A", "A") and batch.alt == ("T", "T")
    assert batch.strand_ambiguous.tolist() == [True, True]
    assert batch.strand_flipped.tolist() == [False, False]
    assert batch.swapped.tolist() == [False, True]
    assert batch.counts["dropped"]["ref_mismatch"] == 1
    assert batch.counts["strand_ambiguous"] == 2


def test_check_reference__indel_swap_and_mismatch():
    # positions 11-12 are GA: GA>G and G>GA match as written; GC>G claims a C the FASTA lacks,
    # read the other way round it is G>GC (REF matches); TA>T matches neither way.
    batch = _harmonize([(11, "GA", "G", ["0/1"]), (11, "G", "GA", ["1/1"]), (11, "GC", "G", ["0/1"]), (11, "TA", "T", ["0/1"])])
    assert batch.ref == ("GA", "G", "G") and batch.alt == ("G", "GA", "GC")
    assert batch.swapped.tolist() == [False, False, True]
    assert batch.allele[2, 0].tolist() == [1, 0]
    assert batch.counts["dropped"]["ref_mismatch"] == 1


def test_check_reference__past_contig_end_is_dropped():
    batch = _harmonize([(25, "G", "A", ["0/1"]), (26, "A", "C", ["0/1"])])
    assert batch.position.tolist() == [25]
    assert batch.counts["dropped"]["position_outside_reference"] == 1


def test_check_reference__missing_contig_raises_naming_record():
    with pytest.raises(FastaError, match=r"test.vcf: record chr9:5.*not in memory.fa"):
        check_reference(REFERENCE)(split_block(make_block([(5, "A", "C", ["0/1"])], contig="chr9")))


def test_complement_and_ambiguity():
    assert complement("ACGTN") == "TGCAN"
    assert is_strand_ambiguous("A", "T") and is_strand_ambiguous("G", "C")
    assert not is_strand_ambiguous("A", "G") and not is_strand_ambiguous("AT", "A")


def naive_harmonize_snp(ref: str, alt: str, base: str) -> tuple[str, str, bool] | None:
    """Slow reference for one SNP: (ref, alt, swapped) or None when it cannot be fixed."""
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    if ref == base:
        return ref, alt, False
    if alt == base:
        return alt, ref, True
    if {ref, alt} in ({"A", "T"}, {"C", "G"}):
        return None
    if comp[ref] == base:
        return comp[ref], comp[alt], False
    if comp[alt] == base:
        return comp[alt], comp[ref], True
    return None


def test_check_reference__all_snp_pairs_against_naive():
    records, expected = [], []
    for pos, base in enumerate(SEQUENCE[:4], start=1):
        for ref in "ACGT":
            for alt in "ACGT":
                if ref != alt:
                    records.append((pos, ref, alt, ["0/1", "1/1", "0/0"]))
                    expected.append(naive_harmonize_snp(ref, alt, base))
    batch = _harmonize(records)
    kept = [e for e in expected if e is not None]
    assert list(zip(batch.ref, batch.alt, batch.swapped.tolist())) == kept
    for i, (_, _, swapped) in enumerate(kept):
        assert batch.allele[i, :, 1].tolist() == ([0, 0, 1] if swapped else [1, 1, 0])
