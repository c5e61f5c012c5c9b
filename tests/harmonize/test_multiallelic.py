from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pysam
import pytest

from pipeline.errors import VcfFormatError
from pipeline.harmonize.multiallelic import split_block
from tests.harmonize.records import make_block

HEADER = """##fileformat=VCFv4.2
##contig=<ID=chr1,length=1000>
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">
#CHROM	POS	ID	REF	ALT	QUAL	FILTER	INFO	FORMAT	s1	s2	s3	s4	s5	s6
"""

RECORDS = [
    (10, "ACG", "A,ATG,ACGT", ["0/1", "1/2", "2/3", "./2", "2", "3|3"]),
    (20, "C", "T", ["0/1", "1/1", "./.", "1", "0", "."]),
    (30, "G", "A,C", ["2/2", "1/0", "0/0", "./.", "1/2", "0|2"]),
]
DS = [
    [[1, 0, 0], [1, 1, 0], [0, 1, 1], [0.5, 0.5, 0], [0, 1, 0], [0, 0, 2]],
    [[1], [2], [0.3], [1], [0], [0.1]],
    [[0, 2], [1, 0], [0, 0], [0.2, 0.1], [1, 1], [0, 1]],
]


def _vcf_text() -> str:
    lines = []
    for (pos, ref, alt, gts), ds in zip(RECORDS, DS):
        cells = [f"{gt}:{','.join(str(x) for x in d)}" for gt, d in zip(gts, ds)]
        lines.append("\t".join(["chr1", str(pos), ".", ref, alt, ".", ".", ".", "GT:DS", *cells]))
    return HEADER + "\n".join(lines) + "\n"


def _bcftools_split(tmp_path) -> list[tuple[int, str, str, list[tuple], list[float]]]:
    path = tmp_path / "multi.vcf"
    path.write_text(_vcf_text())
    out = tmp_path / "split.vcf"
    subprocess.run(["bcftools", "norm", "-m-", "-o", str(out), str(path)], check=True, capture_output=True)
    rows = []
    with pysam.VariantFile(str(out)) as vcf:
        for rec in vcf:
            gts = [tuple(-1 if a is None else a for a in s["GT"]) for s in rec.samples.values()]
            ds = [float("nan") if s["DS"][0] is None else s["DS"][0] for s in rec.samples.values()]
            rows.append((rec.pos, rec.ref, rec.alts[0], gts, ds))
    return rows


def test_split_block__matches_bcftools_norm_m(tmp_path):
    if shutil.which("bcftools") is None:
        pytest.skip("bcftools not installed")
    expected = _bcftools_split(tmp_path)
    batch = split_block(make_block(RECORDS, ds=DS))
    assert batch.num_variants == len(expected) == 6
    for i, (pos, ref, alt, gts, ds) in enumerate(expected):
        assert (int(batch.position[i]), batch.ref[i], batch.alt[i]) == (pos, ref, alt)
        for j, gt in enumerate(gts):
            got = tuple(int(a) for a in batch.allele[i, j] if a != -2)
            assert got == gt, (i, j)
        scale = np.array([2.0 if len(g) == 1 and g[0] >= 0 else 1.0 for g in gts])
        np.testing.assert_allclose(batch.ds[i], np.array(ds) * scale, rtol=1e-6)


def test_split_block__flags_and_counts():
    batch = split_block(make_block(RECORDS))
    assert batch.split_from_multiallelic.tolist() == [True, True, True, False, True, True]
    assert dict(batch.counts)["records_read"] == 3
    assert batch.counts["multiallelic_records_split"] == 2
    assert batch.counts["records_from_split"] == 5
    assert batch.ds is None


def test_split_block__other_alts_count_as_ref():
    batch = split_block(make_block([(5, "A", "C,G", ["1/2", "2/2", "./2", "1"])]))
    assert batch.allele[0, :, :].tolist() == [[1, 0], [0, 0], [-1, 0], [1, -2]]
    assert batch.allele[1, :, :].tolist() == [[0, 1], [1, 1], [-1, 1], [0, -2]]


def test_split_block__drops_symbolic_and_missing_alt():
    block = make_block(
        [(1, "A", ".", ["0/0"]), (2, "A", "<DEL>", ["0/1"]), (3, "A", "C,*", ["1/2"]), (4, "N", "A", ["0/1"])]
    )
    batch = split_block(block)
    assert [(int(p), r, a) for p, r, a in zip(batch.position, batch.ref, batch.alt)] == [(3, "A", "C"), (4, "N", "A")]
    assert batch.counts["dropped"] == {"no_alt_allele": 1, "symbolic_allele": 2}


def test_split_block__gt_beyond_alts_raises_with_locus():
    with pytest.raises(VcfFormatError, match=r"test.vcf: record chr1:7 .*index 2"):
        split_block(make_block([(7, "A", "C", ["0/2"])]))


def test_split_block__empty_block():
    batch = split_block(make_block([]))
    assert batch.num_variants == 0 and batch.counts["records_read"] == 0
