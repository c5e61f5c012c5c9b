"""Imputed VCFs: dosages from FORMAT/GP, the imputation-quality INFO score, and the --min-info filter.

GP-derived dosages are checked against plink2's own import (``--vcf dosage=GP``, exported
as DS) where plink2 is installed, and against the expected ALT count computed by hand.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from pipeline.errors import VcfFormatError
from pipeline.harmonize.chain import harmonizer
from pipeline.io.vcf import genotype_allele_counts, open_vcf, read_blocks

HEADER = """##fileformat=VCFv4.2
##contig=<ID=1,length=100000>
{info}##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype posterior probabilities">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{samples}
"""


def _vcf(path: Path, records: list[str], *, info: str = "", samples: int = 3) -> Path:
    header = HEADER.format(info=info, samples="\t".join(f"s{j}" for j in range(samples)))
    path.write_text(header + "".join(line + "\n" for line in records))
    return path


def _ds(path: Path) -> np.ndarray:
    return np.concatenate([block.ds for block in read_blocks(path)])


def test_gp__expected_alt_counts_for_diploid_haploid_and_multiallelic_calls(tmp_path: Path) -> None:
    path = _vcf(tmp_path / "gp.vcf", [
        "1\t10\t.\tA\tG\t.\tPASS\t.\tGT:GP\t0/1:0.1,0.8,0.1\t1/1:0,0,1\t./.:.",
        "1\t20\t.\tA\tG,T\t.\tPASS\t.\tGT:GP\t0/1:0,1,0,0,0,0\t1/2:0,0,0,0,1,0\t2/2:0,0,0,0,0.5,0.5",
        "1\t30\t.\tA\tC\t.\tPASS\t.\tGT:GP\t0\t1:0,1\t0:0.25,0.75",
    ])
    ds = _ds(path)
    np.testing.assert_allclose(ds[0, :, 0], [1.0, 2.0, np.nan])
    np.testing.assert_allclose(ds[1], [[1.0, 0.0], [1.0, 1.0], [0.5, 1.5]])  # genotype order 0/0 0/1 1/1 0/2 1/2 2/2
    np.testing.assert_allclose(ds[2, :, 0], [np.nan, 1.0, 0.75])  # haploid: P(ALT); stored x2 after harmonization
    batch = harmonizer(contig_style="keep")(next(read_blocks(path)))
    np.testing.assert_allclose(batch.ds[3], [np.nan, 2.0, 1.5])
    assert batch.counts["dosages_from_gp"] == 3


def test_genotype_allele_counts__in_vcf_genotype_order() -> None:
    assert genotype_allele_counts(2, 2).tolist() == [[2, 0], [1, 1], [0, 2]]
    assert genotype_allele_counts(3, 1).tolist() == np.eye(3).tolist()


def test_gp__ds_wins_over_gp_in_the_same_record(tmp_path: Path) -> None:
    path = tmp_path / "both.vcf"
    text = HEADER.format(info='##FORMAT=<ID=DS,Number=A,Type=Float,Description="d">\n', samples="s0")
    path.write_text(text + "1\t10\t.\tA\tG\t.\tPASS\t.\tGT:DS:GP\t0/1:0.3:0,1,0\n")
    block = next(read_blocks(path))
    assert block.ds[0, 0, 0] == pytest.approx(0.3) and block.records_ds_from_gp == 0


@pytest.mark.parametrize(("gp", "message"), [
    ("0.5,0.25,0.25,0", "GP has 4 values"),
    ("0.2,0.2,0.2", "are not genotype probabilities"),
    ("1.2,0,0", "are not genotype probabilities"),
    ("a,b,c", "not a list of numbers"),
])
def test_gp__malformed_values_name_the_record_and_sample(tmp_path: Path, gp: str, message: str) -> None:
    path = _vcf(tmp_path / "bad.vcf", [f"1\t10\t.\tA\tG\t.\tPASS\t.\tGT:GP\t0/1:0,1,0\t0/1:{gp}\t0/0:1,0,0"])
    with pytest.raises(VcfFormatError, match=message) as error:
        list(read_blocks(path))
    assert "1:10" in str(error.value) and "sample column 2" in str(error.value)


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 is not installed")
def test_gp__dosages_equal_plink2_import_of_the_same_gp(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    records = []
    for i in range(40):
        cells = []
        for _ in range(25):
            weights = rng.integers(0, 9, size=3).astype(float)
            weights[rng.integers(0, 3)] += 1
            gp = weights / weights.sum()
            gp = np.round(gp * 64) / 64  # exact in binary and in plink2's 1/16384 dosage steps
            gp[2] = 1 - gp[0] - gp[1]
            cells.append(f"{int(np.argmax(gp) > 0)}/{int(np.argmax(gp) == 2)}:{gp[0]:.6f},{gp[1]:.6f},{gp[2]:.6f}")
        records.append(f"1\t{100 + i}\tv{i}\tA\tG\t.\tPASS\t.\tGT:GP\t" + "\t".join(cells))
    path = _vcf(tmp_path / "gp.vcf", records, samples=25)
    done = subprocess.run(["plink2", "--vcf", str(path), "dosage=GP", "--export", "vcf", "vcf-dosage=DS-force", "--out", str(tmp_path / "p")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    with pysam.VariantFile(str(tmp_path / "p.vcf")) as exported:
        theirs = np.array([[sample.get("DS", (np.nan,))[0] for sample in record.samples.values()] for record in exported], float)
    ours = _ds(path)[:, :, 0]
    np.testing.assert_allclose(ours, theirs, atol=1e-3)  # plink2 prints 3 decimals


def test_info_score__one_value_for_every_alt_or_one_per_alt_and_the_first_declared_key(tmp_path: Path) -> None:
    info = ('##INFO=<ID=INFO,Number=1,Type=Float,Description="impute">\n'
            '##INFO=<ID=DR2,Number=A,Type=Float,Description="beagle">\n')
    path = _vcf(tmp_path / "info.vcf", [
        "1\t10\t.\tA\tG,T\t.\tPASS\tDR2=0.9,0.2;INFO=0.1\tGT\t0/1\t0/0\t1/2",
        "1\t20\t.\tA\tG\t.\tPASS\tIMP;DR2=0.45\tGT\t0/1\t0/0\t0/0",
        "1\t30\t.\tA\tG,C\t.\tPASS\tDR2=0.7\tGT\t0/1\t0/0\t0/0",
        "1\t40\t.\tA\tG\t.\tPASS\t.\tGT\t0/1\t0/0\t0/0",
    ], info=info)
    assert open_vcf(path).imputation_key == "DR2"  # R2, DR2, INFO in that order of preference
    block = next(read_blocks(path))
    np.testing.assert_allclose(block.info_score, [[0.9, 0.2], [0.45, np.nan], [0.7, 0.7], [np.nan, np.nan]])
    batch = harmonizer(contig_style="keep", min_info=0.5)(block)
    assert list(zip(batch.position.tolist(), batch.alt)) == [(10, "G"), (30, "G"), (30, "C"), (40, "G")]  # unscored kept
    assert batch.counts["dropped"]["low_imputation_quality"] == 2
    assert batch.info_score.tolist()[:3] == pytest.approx([0.9, 0.7, 0.7])


def test_info_score__a_value_count_that_fits_no_alt_is_refused(tmp_path: Path) -> None:
    info = '##INFO=<ID=R2,Number=1,Type=Float,Description="minimac">\n'
    path = _vcf(tmp_path / "bad.vcf", ["1\t10\t.\tA\tG\t.\tPASS\tR2=0.9,0.2,0.1\tGT\t0/1\t0/0\t0/0"], info=info)
    with pytest.raises(VcfFormatError, match="INFO/R2 has 3 values"):
        list(read_blocks(path))
    path = _vcf(tmp_path / "text.vcf", ["1\t10\t.\tA\tG\t.\tPASS\tR2=high\tGT\t0/1\t0/0\t0/0"], info=info)
    with pytest.raises(VcfFormatError, match="R2=high is not a number"):
        list(read_blocks(path))
