"""Duplicate variant keys: found over all chunks, and an ingest holding one is refused cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.harmonize.variant_ids import duplicate_pairs
from pipeline.ingest import ingest
from tests.harmonize.records import vcf_text, write_vcf

SAMPLES = ["s1", "s2"]
CALLS = ["0/1", "1/1"]


def naive_duplicate_pairs(ids: list[str]) -> list[tuple[int, int]]:
    """(first row, repeated row) per repeat, by a dictionary walk."""
    first: dict[str, int] = {}
    pairs = []
    for row, key in enumerate(ids):
        if key in first:
            pairs.append((first[key], row))
        else:
            first[key] = row
    return pairs


@pytest.mark.parametrize("seed", range(20))
def test_duplicate_pairs__equal_the_naive_walk(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    ids = [f"chr1:{int(p)}:A:G" for p in rng.integers(0, max(1, n // 2 + 1), n)]
    assert duplicate_pairs(ids).tolist() == [list(p) for p in naive_duplicate_pairs(ids)]
    cut = n // 3
    chunked = pa.chunked_array([pa.array(ids[:cut], pa.string()), pa.array(ids[cut:], pa.string())])
    assert duplicate_pairs(chunked).tolist() == [list(p) for p in naive_duplicate_pairs(ids)]


def test_duplicate_pairs__none_for_unique_or_empty_keys():
    assert duplicate_pairs([]).shape == (0, 2)
    assert duplicate_pairs(pa.chunked_array([], pa.string())).shape == (0, 2)
    assert duplicate_pairs(["chr1:1:A:G", "chr1:1:A:T", "1:1:A:G"]).shape == (0, 2)


def _ingest(tmp_path: Path, records: list[tuple], contigs: dict[str, int], *, indexed: bool, extra: tuple[str, ...] = ()):
    path = write_vcf(tmp_path / "dup.vcf", vcf_text(records, SAMPLES, contigs=contigs), indexed=indexed)
    out = tmp_path / "out" / "dataset"
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(path), "--out", str(out), "--no-progress", *extra])
    return result, out, path


def _assert_refused(result, out: Path, path: Path, *fragments: str) -> None:
    assert result.exit_code == 1 and result.output.strip(), f"{result.output}{result.exception!r}"
    lines = result.output.strip().splitlines()
    message = lines[-1]
    assert message.startswith("genofed: error: "), result.output
    for fragment in (path.name, *fragments):
        assert fragment in message, message
    assert not out.exists()
    assert list(out.parent.glob(".*")) == [] if out.parent.exists() else True


def _rec(contig: str, pos: int, ref: str, alt: str) -> tuple:
    return (contig, pos, ref, alt, "GT", CALLS)


CASES = {
    "exact_duplicate": (
        [_rec("chr1", 100, "A", "G"), _rec("chr1", 100, "A", "G")], {"chr1": 1000},
        ("chr1:100:A:G", "chr1:100 A G", "bcftools norm -d exact"), ()),
    "chr1_and_1": (
        [_rec("1", 100, "A", "G"), _rec("chr1", 100, "A", "G")], {"1": 1000, "chr1": 1000},
        ("chr1:100:A:G", "records 1:100 A G", "chr1:100 A G", "--rename-chrs"), ()),
    "MT_and_chrM": (
        [_rec("MT", 100, "A", "G"), _rec("chrM", 100, "A", "G")], {"MT": 1000, "chrM": 1000},
        ("chrM:100:A:G", "MT:100 A G", "chrM:100 A G", "--rename-chrs"), ()),
    "split_multiallelic_next_to_biallelic": (
        [_rec("chr1", 100, "A", "G,T"), _rec("chr1", 100, "A", "G")], {"chr1": 1000},
        ("chr1:100:A:G", "chr1:100 A G,T", "chr1:100 A G", "multi-allelic", "-m -any -d exact"), ()),
    "padded_representation": (
        [_rec("chr1", 99, "GA", "GG"), _rec("chr1", 100, "A", "G")], {"chr1": 1000},
        ("chr1:100:A:G", "chr1:99 GA GG", "chr1:100 A G", "-m -any -d exact"), ()),
    "padded_representation_across_chunks": (
        [_rec("chr1", 99, "GA", "GG"), _rec("chr1", 100, "A", "G")], {"chr1": 1000},
        ("chr1:100:A:G", "chr1:99 GA GG", "chr1:100 A G"), ("--chunk-size", "99")),
    "nochr_style": (
        [_rec("1", 100, "A", "G"), _rec("chr1", 100, "A", "G")], {"1": 1000, "chr1": 1000},
        ("1:100:A:G", "1:100 A G", "chr1:100 A G"), ("--contig-style", "nochr")),
}


@pytest.mark.parametrize("indexed", [False, True], ids=["streamed", "indexed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_ingest_duplicates__refused_naming_both_records_and_the_fix(tmp_path, case, indexed):
    records, contigs, fragments, extra = CASES[case]
    result, out, path = _ingest(tmp_path, records, contigs, indexed=indexed, extra=extra)
    _assert_refused(result, out, path, *fragments)


@pytest.mark.parametrize("indexed", [False, True], ids=["streamed", "indexed"])
def test_ingest_duplicates__same_locus_other_alleles_and_kept_contig_names_are_not_duplicates(tmp_path, indexed):
    records = [_rec("1", 100, "A", "G"), _rec("chr1", 100, "A", "G"), _rec("chr1", 100, "A", "T"), _rec("chr1", 100, "A", "AT")]
    result, out, _ = _ingest(tmp_path, records, {"1": 1000, "chr1": 1000}, indexed=indexed, extra=("--contig-style", "keep"))
    assert result.exit_code == 0, result.output
    assert out.is_dir()


def test_ingest_duplicates__reference_swap_makes_a_duplicate(tmp_path):
    reference = tmp_path / "ref.fa"
    reference.write_text(">chr1\n" + "C" * 99 + "A" + "C" * 900 + "\n")
    records = [_rec("chr1", 100, "A", "G"), _rec("chr1", 100, "G", "A")]
    result, out, path = _ingest(tmp_path, records, {"chr1": 1000}, indexed=True, extra=("--fasta", str(reference)))
    _assert_refused(result, out, path, "chr1:100:A:G", "chr1:100 A G", "chr1:100 G A", "REF check")


@pytest.mark.slow
def test_ingest_duplicates__check_is_small_against_the_ingest_of_100k_variants(tmp_path, capsys):
    from pipeline.dataset import open_dataset
    from pipeline.harmonize.duplicates import dataset_variant_ids

    n = 100_000
    header = vcf_text([], SAMPLES, contigs={"chr1": 10 * n + 10})
    lines = [f"chr1\t{10 * i + 1}\t.\tA\tG\t.\t.\t.\tGT\t0/1\t1/1" for i in range(n)]
    path = write_vcf(tmp_path / "big.vcf", header + "\n".join(lines) + "\n", indexed=True)
    report = ingest(path, out=tmp_path / "big", chunk_size="100kb", scheduler="synchronous")
    dataset = open_dataset(tmp_path / "big")
    started = time.perf_counter()
    ids = dataset_variant_ids(dataset.path, dataset.metadata["chunks"])
    pairs = duplicate_pairs(ids)
    seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nduplicate check over {len(ids)} variants in {len(dataset.chunk_names)} chunks: {seconds * 1e3:.1f} ms "
              f"(ingest {report['seconds']:.2f} s)")
    assert pairs.shape == (0, 2)
    assert seconds < max(0.05 * report["seconds"], 0.05)
