"""Ingest of several input files (one per chromosome) against the single multi-contig file they were split from."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.dataset import open_dataset
from pipeline.errors import InputError
from pipeline.ingest import ingest, ingest_part
from pipeline.ingest_inputs import expand_inputs, read_vcf_list
from tests.harmonize.records import vcf_text, write_vcf

pytestmark = pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools splits the test file")

CONTIGS = ("chr1", "chr2", "chrX")
RECORDS = [
    ("chr1", 10, "A", "G", "GT", ["0/1", "1/1", "0/0"]),
    ("chr1", 160, "CA", "C,CAA", "GT", ["1/2", "0/0", "./."]),
    ("chr1", 420, "T", "C", "GT", ["./1", "0|1", "1|1"]),
    ("chr2", 15, "G", "T", "GT", ["0|1", "1|1", "0/0"]),
    ("chr2", 390, "A", "C", "GT", ["0/0", "0/1", "1/1"]),
    ("chrX", 30, "C", "T", "GT", ["1", "0/1", "0"]),
]
SAMPLES = ["a", "b", "c"]
COUNTS = ("records_read", "multiallelic_records_split", "records_from_split", "trimmed", "dropped", "variants_written", "chunks", "tasks")


def _bcftools(*args: str) -> None:
    subprocess.run(["bcftools", *args], check=True, capture_output=True)


@pytest.fixture
def split(tmp_path):
    """The whole file (BGZF + .tbi) and its per-contig parts ``site.chr{chrom}.vcf.gz`` made by bcftools."""
    whole = write_vcf(tmp_path / "whole.vcf", vcf_text(RECORDS, SAMPLES, contigs={c: 1000 for c in CONTIGS}), indexed=True)
    parts = tmp_path / "parts"
    parts.mkdir()
    paths = []
    for contig in CONTIGS:
        path = parts / f"site.{contig}.vcf.gz"
        _bcftools("view", "-r", contig, "-Oz", "-o", str(path), str(whole))
        _bcftools("index", "-t", str(path))
        paths.append(path)
    return whole, paths


def _tables(path: Path) -> dict[str, pa.Table]:
    """Variants and genotypes of a dataset, chunk by chunk in dataset.json order, with the chunk names."""
    names = open_dataset(path).chunk_names
    tables = {folder: pa.concat_tables([pq.read_table(path / folder / f"{name}.parquet") for name in names]) for folder in ("variants", "genotypes")}
    return {**tables, "chunks": names}


def _assert_same_dataset(a: Path, b: Path) -> None:
    left, right = _tables(a), _tables(b)
    assert left["chunks"] == right["chunks"]
    assert left["variants"].equals(right["variants"]) and left["genotypes"].equals(right["genotypes"])
    assert pq.read_table(a / "samples.parquet").equals(pq.read_table(b / "samples.parquet"))


def _report(path: Path) -> dict:
    return json.loads((path / "ingest-report.json").read_text())


def test_ingest__per_contig_files_give_the_dataset_of_the_whole_file(split, tmp_path):
    whole, parts = split
    one = ingest(whole, out=tmp_path / "one", chunk_size=200, scheduler="synchronous")
    many = ingest(parts, out=tmp_path / "many", chunk_size=200, scheduler="synchronous")
    _assert_same_dataset(tmp_path / "one", tmp_path / "many")
    assert {k: one[k] for k in COUNTS} == {k: many[k] for k in COUNTS} and many["tasks"] == 5
    assert one["inputs"]["vcf"] == str(whole) and one["records_read_by_input"] == {str(whole): 6}
    assert many["inputs"]["vcf"] == [str(p) for p in parts] and many["inputs"]["indexed"]
    assert many["records_read_by_input"] == {str(parts[0]): 3, str(parts[1]): 2, str(parts[2]): 1}


def test_ingest__a_vcf_list_through_the_cli(split, tmp_path):
    whole, parts = split
    listing = parts[0].parent / "inputs.txt"
    listing.write_text(f"# per-chromosome files\n\n{parts[0].name}\n  {parts[1].name}\n{parts[2]}\n")
    ingest(whole, out=tmp_path / "one", chunk_size=200, scheduler="synchronous")
    result = CliRunner().invoke(main, ["ingest", "--vcf-list", str(listing), "--out", str(tmp_path / "many"), "--chunk-size", "200",
                                       "--scheduler", "synchronous"])
    assert result.exit_code == 0, result.output
    _assert_same_dataset(tmp_path / "one", tmp_path / "many")
    assert [Path(p).resolve() for p in _report(tmp_path / "many")["inputs"]["vcf"]] == [p.resolve() for p in parts]


def test_ingest__a_chrom_pattern_through_the_cli_expands_in_chromosome_order(split, tmp_path):
    whole, parts = split
    ingest(whole, out=tmp_path / "one", chunk_size=200, scheduler="synchronous")
    pattern = str(parts[0].parent / "site.chr{chrom}.vcf.gz")
    result = CliRunner().invoke(main, ["ingest", "--vcf", pattern, "--out", str(tmp_path / "many"), "--chunk-size", "200", "--json"])
    assert result.exit_code == 0, result.output
    _assert_same_dataset(tmp_path / "one", tmp_path / "many")
    report = _report(tmp_path / "many")
    assert report["inputs"]["vcf"] == [str(p) for p in parts]  # 1, 2, X: chromosome order, not the names' order
    assert {k: report[k] for k in COUNTS} == {k: _report(tmp_path / "one")[k] for k in COUNTS}


def test_ingest__indexed_and_streamed_inputs_number_chunks_in_input_order(split, tmp_path):
    whole, parts = split
    plain = tmp_path / "chr2.vcf"
    _bcftools("view", "-r", "chr2", "-Ov", "-o", str(plain), str(whole))  # no index: streamed between the indexed ones
    ingest(whole, out=tmp_path / "one", chunk_size=200, scheduler="synchronous")
    report = ingest([parts[0], plain, parts[2]], out=tmp_path / "mixed", chunk_size=200, scheduler="synchronous")
    _assert_same_dataset(tmp_path / "one", tmp_path / "mixed")
    assert report["tasks"] == 3 and not report["inputs"]["indexed"]


def test_ingest_part__parts_over_several_inputs_assemble_into_the_same_dataset(split, tmp_path):
    whole, parts = split
    ingest(whole, out=tmp_path / "one", chunk_size=200, scheduler="synchronous")
    records = [ingest_part(parts, parts_dir=tmp_path / "p", part=i, parts=3, chunk_size=200, scheduler="synchronous") for i in (2, 0, 1)]
    assert {r["num_regions"] for r in records} == {5}
    assert sorted(res["chunk_index"] for r in records for res in r["results"]) == [0, 1, 2, 3, 4]
    ingest(parts, out=tmp_path / "many", chunk_size=200, parts_dir=tmp_path / "p")
    _assert_same_dataset(tmp_path / "one", tmp_path / "many")


def test_ingest__inputs_with_other_samples_are_refused_naming_both_files(split, tmp_path):
    _, parts = split
    reordered = tmp_path / "site.chr2.reordered.vcf.gz"
    _bcftools("view", "-s", "a,c,b", "-Oz", "-o", str(reordered), str(parts[1]))
    out = tmp_path / "d"
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(parts[0]), "--vcf", str(reordered), "--out", str(out)])
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert str(reordered) in message and str(parts[0]) in message
    assert "sample 2 (column 11): 'b' in" in message and "'c' in" in message
    assert not out.exists()
    fewer = tmp_path / "fewer.vcf.gz"
    _bcftools("view", "-s", "a,b", "-Oz", "-o", str(fewer), str(parts[1]))
    with pytest.raises(InputError, match=r"sample 3 \(column 12\): 'c' in .* and nothing in"):
        ingest([parts[0], fewer], out=out)
    assert not out.exists()


@pytest.mark.parametrize("indexed", [True, False])
def test_ingest__a_contig_in_two_inputs_is_refused(split, tmp_path, indexed):
    whole, parts = split
    if not indexed:
        whole = tmp_path / "whole.plain.vcf"
        _bcftools("view", "-Ov", "-o", str(whole), str(split[0]))
        parts = [tmp_path / "chr2.plain.vcf"]
        _bcftools("view", "-r", "chr2", "-Ov", "-o", str(parts[0]), str(split[0]))
    out = tmp_path / "d"
    with pytest.raises(InputError, match="contig 'chr.' has records in both") as error:
        ingest([whole, parts[0]], out=out, chunk_size=200)
    assert str(whole) in str(error.value) and str(parts[0]) in str(error.value) and "one input file only" in str(error.value)
    assert not out.exists()


def test_ingest__one_contig_under_two_names_in_two_inputs_is_refused(split, tmp_path):
    _, parts = split
    renamed = tmp_path / "one.vcf.gz"
    (tmp_path / "names.txt").write_text("chr1\t1\n")
    _bcftools("annotate", "--rename-chrs", str(tmp_path / "names.txt"), "-Oz", "-o", str(renamed), str(parts[0]))
    _bcftools("index", "-t", str(renamed))
    with pytest.raises(InputError, match="contig 'chr1' in .* and '1' in .*, both 'chr1' with --contig-style chr"):
        ingest([parts[0], renamed], out=tmp_path / "d")
    ingest([parts[0], renamed], out=tmp_path / "kept", contig_style="keep")  # two contigs as the files name them


def test_ingest__a_pattern_that_matches_nothing_is_an_error_naming_it(tmp_path):
    pattern = str(tmp_path / "none.chr{chrom}.vcf.gz")
    result = CliRunner().invoke(main, ["ingest", "--vcf", pattern, "--out", str(tmp_path / "d")])
    assert result.exit_code == 1 and pattern in " ".join(result.output.split()) and "no file matches" in result.output
    assert not (tmp_path / "d").exists()


def test_ingest__vcf_and_vcf_list_are_exclusive_and_one_is_needed(split, tmp_path):
    _, parts = split
    listing = tmp_path / "l.txt"
    listing.write_text(f"{parts[0]}\n")
    both = CliRunner().invoke(main, ["ingest", "--vcf", str(parts[0]), "--vcf-list", str(listing), "--out", str(tmp_path / "d")])
    neither = CliRunner().invoke(main, ["ingest", "--out", str(tmp_path / "d")])
    assert both.exit_code == neither.exit_code == 2 and "--vcf-list" in neither.output


def test_inputs__list_files_and_patterns(tmp_path):
    folder = tmp_path / "lists"
    folder.mkdir()
    for chrom in ("2", "10", "X"):
        (tmp_path / f"s{chrom}.vcf").write_text("")
    listing = folder / "inputs.txt"
    listing.write_text(f"\n# comment\n../s2.vcf\n   \n{tmp_path / 's10.vcf'}\n#{tmp_path / 'sX.vcf'}\n")
    assert read_vcf_list(listing) == [str(folder / "../s2.vcf"), str(tmp_path / "s10.vcf")]
    assert expand_inputs(str(tmp_path / "s{chrom}.vcf")) == [str(tmp_path / f"s{c}.vcf") for c in ("2", "10", "X")]
    (folder / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(InputError, match="names no file"):
        read_vcf_list(folder / "empty.txt")
    with pytest.raises(InputError, match="given twice"):
        expand_inputs([tmp_path / "s2.vcf", str(folder / "../s2.vcf")])
