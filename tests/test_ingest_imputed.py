"""genofed ingest of imputed VCFs: dosages from DS or GP, the INFO score kept, --min-info applied and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pysam
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.dataset import open_dataset
from pipeline.ingest import ingest

HEADER = """##fileformat=VCFv4.2
##contig=<ID=chr1,length=100000>
##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated imputation accuracy (R-square)">
##INFO=<ID=TYPED,Number=0,Type=Flag,Description="Typed">
##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">
##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype posterior probabilities">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts0\ts1\ts2
"""
RECORDS = [
    "chr1\t100\trs1\tA\tG\t.\tPASS\tR2=0.95\tGT:DS\t0|1:0.9\t1|1:1.8\t0|0:0.05",
    "chr1\t200\trs2\tC\tT\t.\tPASS\tR2=0.12\tGT:DS\t0|1:1.1\t0|0:0.2\t0|0:0",
    "chr1\t300\trs3\tG\tA\t.\tPASS\tR2=0.8\tGT:GP\t0|1:0,1,0\t1|1:0,0.25,0.75\t0|0:1,0,0",
    "chr1\t400\trs4\tT\tC\t.\tPASS\tTYPED\tGT\t0|1\t1|1\t0|0",
]


@pytest.fixture(params=["indexed", "streamed"])
def imputed_vcf(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    text = tmp_path / "imputed.vcf"
    text.write_text(HEADER + "".join(line + "\n" for line in RECORDS))
    if request.param == "streamed":
        return text
    pysam.tabix_compress(str(text), str(text) + ".gz")
    pysam.tabix_index(str(text) + ".gz", preset="vcf")
    return Path(str(text) + ".gz")


def test_ingest__min_info_drops_poorly_imputed_variants_keeps_typed_ones_and_stores_dosages(imputed_vcf: Path, tmp_path: Path) -> None:
    report = ingest(imputed_vcf, out=tmp_path / "ds", min_info=0.3, contig_style="keep", workers=1)
    assert report["dropped"]["low_imputation_quality"] == 1
    assert report["dosages_from_gp"] == 1 and report["variants_written"] == 3
    assert report["settings"]["min_info"] == 0.3 and report["imputation_key"] == "R2"
    dataset = open_dataset(tmp_path / "ds")
    variants = dataset.variants()
    assert variants.column("original_id").to_pylist() == ["rs1", "rs3", "rs4"]
    scores = variants.column("info_score").to_pylist()
    assert scores[:2] == pytest.approx([0.95, 0.8]) and scores[2] is None  # the typed variant has no score
    block = next(dataset.iter_blocks(with_dosage=True))
    np.testing.assert_allclose(block.dosage, [[0.9, 1.8, 0.05], [1.0, 1.75, 0.0], [np.nan] * 3], atol=1e-6)
    np.testing.assert_array_equal(block.call_dosage, [[1, 2, 0], [1, 2, 0], [1, 2, 0]])
    assert pq.read_schema(next((tmp_path / "ds" / "variants").glob("*.parquet"))).field("info_score").type == "float"


def test_ingest__without_min_info_every_variant_is_kept_with_its_score(imputed_vcf: Path, tmp_path: Path) -> None:
    report = ingest(imputed_vcf, out=tmp_path / "ds", contig_style="keep", workers=1)
    assert report["variants_written"] == 4 and report["dropped"]["low_imputation_quality"] == 0
    scores = open_dataset(tmp_path / "ds").variants().column("info_score").to_pylist()
    assert scores[:3] == pytest.approx([0.95, 0.12, 0.8]) and scores[3] is None


def test_cli_ingest__min_info_on_a_file_without_an_imputation_score_is_refused(tmp_path: Path) -> None:
    typed = tmp_path / "typed.vcf"
    typed.write_text(HEADER.replace('##INFO=<ID=R2,Number=1,Type=Float,Description="Estimated imputation accuracy (R-square)">\n', "")
                     + RECORDS[3] + "\n")
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(typed), "--out", str(tmp_path / "out"), "--min-info", "0.3"])
    assert result.exit_code == 1
    assert str(typed) in result.stderr and "declares none of R2, DR2, INFO" in result.stderr
    assert not (tmp_path / "out").exists()
    negative = CliRunner().invoke(main, ["ingest", "--vcf", str(typed), "--out", str(tmp_path / "out"), "--min-info", "-1"])
    assert negative.exit_code == 2


def test_cli_ingest__plink_missing_code_in_the_phenotype_table(tmp_path: Path) -> None:
    vcf = tmp_path / "typed.vcf"
    vcf.write_text(HEADER + RECORDS[3] + "\n")
    phenotypes = tmp_path / "pheno.tsv"
    phenotypes.write_text("IID\tbmi\ns0\t-9\ns1\t22.5\ns2\t-9.0\n")
    default = CliRunner().invoke(main, ["ingest", "--vcf", str(vcf), "--phenotypes", str(phenotypes), "--out", str(tmp_path / "a")])
    assert default.exit_code == 0, default.output
    assert open_dataset(tmp_path / "a").samples().column("bmi").to_pylist() == [None, 22.5, None]
    kept = CliRunner().invoke(main, ["ingest", "--vcf", str(vcf), "--phenotypes", str(phenotypes), "--out", str(tmp_path / "b"),
                                     "--missing-code", "none"])
    assert kept.exit_code == 0, kept.output
    assert open_dataset(tmp_path / "b").samples().column("bmi").to_pylist() == [-9.0, 22.5, -9.0]
