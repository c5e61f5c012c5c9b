"""Bad inputs: one clear error naming the file and record, exit 1, and no output left."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pysam
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import VcfFormatError
from pipeline.ingest import ingest
from tests.harmonize.records import vcf_text, write_vcf

SAMPLES = ["s1", "s2"]
GOOD = [("chr1", 100, "A", "G", "GT", ["0/1", "1/1"]), ("chr1", 200, "C", "T", "GT", ["0/0", "0/1"])]


def _run(tmp_path: Path, *args: str) -> tuple[object, Path]:
    out = tmp_path / "out" / "dataset"
    result = CliRunner().invoke(main, ["ingest", *args, "--out", str(out), "--no-progress"])
    return result, out


def _assert_failed_cleanly(result, out: Path, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("genofed: error: ")
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    leftovers = list(out.parent.glob(".*tmp*")) if out.parent.exists() else []
    assert leftovers == []


def _reference(tmp_path: Path, contig: str = "chr1", length: int = 1000) -> Path:
    sequence = ("ACGT" * (length // 4 + 1))[:length]
    sequence = sequence[:99] + "A" + sequence[100:199] + "C" + sequence[200:]
    path = tmp_path / "ref.fa"
    path.write_text(f">{contig}\n" + "\n".join(sequence[i : i + 60] for i in range(0, length, 60)) + "\n")
    return path


def test_ingest_errors__missing_vcf(tmp_path):
    result, out = _run(tmp_path, "--vcf", str(tmp_path / "absent.vcf.gz"))
    _assert_failed_cleanly(result, out, "absent.vcf.gz")


def test_ingest_errors__json_output_reports_a_failure_as_json_on_stdout(tmp_path):
    out = tmp_path / "out" / "dataset"
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(tmp_path / "absent.vcf.gz"), "--out", str(out), "--no-progress",
                                       "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "error" and "absent.vcf.gz" in report["error"], report
    assert result.stderr.startswith("genofed: error: ") and not out.exists()


def test_ingest_errors__truncated_bgzf(tmp_path):
    path = write_vcf(tmp_path / "t.vcf", vcf_text(GOOD * 1, SAMPLES), indexed=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "t.vcf.gz")


def test_ingest_errors__truncated_plain_gzip(tmp_path):
    path = tmp_path / "t.vcf.gz"
    path.write_bytes(gzip.compress(vcf_text(GOOD, SAMPLES).encode())[:-20])
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "t.vcf.gz")


def test_ingest_errors__no_chrom_header(tmp_path):
    text = "".join(line + "\n" for line in vcf_text(GOOD, SAMPLES).splitlines() if not line.startswith("#CHROM"))
    path = write_vcf(tmp_path / "h.vcf", text)
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "h.vcf", "#CHROM")


@pytest.mark.parametrize("indexed", [False, True])
def test_ingest_errors__wrong_number_of_sample_columns(tmp_path, indexed):
    records = [*GOOD[:1], ("chr1", 150, "A", "C", "GT", ["0/1"]), *GOOD[1:]]
    path = write_vcf(tmp_path / "c.vcf", vcf_text(records, SAMPLES), indexed=indexed)
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "c.vcf", "chr1:150")


@pytest.mark.parametrize("indexed", [False, True])
def test_ingest_errors__unparsable_gt(tmp_path, indexed):
    records = [*GOOD[:1], ("chr1", 150, "A", "C", "GT", ["0/1", "0/x"]), *GOOD[1:]]
    path = write_vcf(tmp_path / "g.vcf", vcf_text(records, SAMPLES), indexed=indexed)
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "g.vcf", "chr1:150")


def test_ingest_errors__contig_absent_from_header(tmp_path):
    records = [*GOOD, ("chr2", 50, "A", "C", "GT", ["0/1", "0/0"])]
    path = write_vcf(tmp_path / "k.vcf", vcf_text(records, SAMPLES))
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "k.vcf", "chr2")


@pytest.mark.parametrize("indexed", [False, True])
def test_ingest_errors__contig_absent_from_fasta(tmp_path, indexed):
    records = [*GOOD, ("chr2", 50, "A", "C", "GT", ["0/1", "0/0"])]
    text = vcf_text(records, SAMPLES, contigs={"chr1": 1000, "chr2": 1000})
    path = write_vcf(tmp_path / "f.vcf", text, indexed=indexed)
    result, out = _run(tmp_path, "--vcf", str(path), "--fasta", str(_reference(tmp_path)))
    _assert_failed_cleanly(result, out, "f.vcf", "chr2", "ref.fa")


def test_ingest_errors__unsorted_records_with_index(tmp_path):
    # Index a sorted file, then swap two records of equal length under the same index:
    # the index still points at the (single) block, the records inside are out of order.
    sorted_records = [("chr1", 100, "A", "G", "GT", ["0/1", "1/1"]), ("chr1", 200, "C", "T", "GT", ["0/0", "0/1"])]
    path = write_vcf(tmp_path / "u.vcf", vcf_text(sorted_records, SAMPLES), indexed=True)
    index = Path(str(path) + ".tbi").read_bytes()
    swapped = [("chr1", 200, "C", "T", "GT", ["0/0", "0/1"]), ("chr1", 100, "A", "G", "GT", ["0/1", "1/1"])]
    (tmp_path / "u.vcf").write_text(vcf_text(swapped, SAMPLES))
    pysam.tabix_compress(str(tmp_path / "u.vcf"), str(path), force=True)
    Path(str(path) + ".tbi").write_bytes(index)
    result, out = _run(tmp_path, "--vcf", str(path))
    _assert_failed_cleanly(result, out, "u.vcf.gz", "chr1:100", "sort")


def test_ingest_errors__duplicate_phenotype_ids(tmp_path):
    path = write_vcf(tmp_path / "p.vcf", vcf_text(GOOD, SAMPLES))
    table = tmp_path / "pheno.tsv"
    table.write_text("IID\tage\ns1\t30\ns2\t40\ns1\t50\n")
    result, out = _run(tmp_path, "--vcf", str(path), "--phenotypes", str(table))
    _assert_failed_cleanly(result, out, "pheno.tsv", "s1")


def test_ingest_errors__non_numeric_phenotype(tmp_path):
    path = write_vcf(tmp_path / "p.vcf", vcf_text(GOOD, SAMPLES))
    table = tmp_path / "pheno.tsv"
    table.write_text("IID\tage\tbmi\ns1\t30\t22.5\ns2\t40\t2x.1\ns3\t41\t19\ns4\t42\t20\n")
    result, out = _run(tmp_path, "--vcf", str(path), "--phenotypes", str(table))
    _assert_failed_cleanly(result, out, "pheno.tsv", "bmi")


def test_ingest_errors__existing_output_needs_force(tmp_path):
    path = write_vcf(tmp_path / "o.vcf", vcf_text(GOOD, SAMPLES))
    out = tmp_path / "out" / "dataset"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(path), "--out", str(out)])
    assert result.exit_code == 1 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(path), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert (out / "dataset.json").is_file() and not (out / "keep.txt").exists()


def test_ingest_errors__bad_chunk_size_is_a_usage_error(tmp_path):
    path = write_vcf(tmp_path / "o.vcf", vcf_text(GOOD, SAMPLES))
    result, out = _run(tmp_path, "--vcf", str(path), "--chunk-size", "5 parsecs")
    assert result.exit_code == 2 and "5Mb" in result.output and not out.exists()


@pytest.mark.parametrize("scheduler", ["threads", "processes", "synchronous"])
def test_ingest_errors__task_errors_surface_unchanged(tmp_path, scheduler):
    records = [*GOOD, ("chr1", 700, "A", "C", "GT", ["0/1", "0/9"])]
    path = write_vcf(tmp_path / "d.vcf", vcf_text(records, SAMPLES), indexed=True)
    out = tmp_path / "d"
    with pytest.raises(VcfFormatError, match=r"d.vcf.gz.*chr1:700"):
        ingest(path, out=out, chunk_size=100, scheduler=scheduler, workers=2)
    assert not out.exists() and list(tmp_path.glob(".d.tmp*")) == []


def test_ingest_errors__task_errors_surface_through_distributed(tmp_path):
    distributed = pytest.importorskip("distributed")
    records = [*GOOD, ("chr1", 700, "A", "C", "GT", ["0/1", "0/9"])]
    path = write_vcf(tmp_path / "d.vcf", vcf_text(records, SAMPLES), indexed=True)
    fasta = _reference(tmp_path, contig="chr1")
    out = tmp_path / "d"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with pytest.raises(VcfFormatError, match=r"d.vcf.gz.*chr1:700"):
            ingest(path, out=out, fasta=fasta, chunk_size=100, scheduler=cluster.scheduler_address)
    assert not out.exists() and list(tmp_path.glob(".d.tmp*")) == []
