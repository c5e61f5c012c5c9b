"""Tests of pipeline.io.fasta against plain Python slicing of the written sequence."""

from __future__ import annotations

import gc
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pysam
import pytest

from pipeline.errors import FastaError
from pipeline.io.fasta import open_reference

SEQUENCES = {"chr22": "NNNNacgtACGTTTGCA" * 20, "chrM": "GATCACAGGT" * 5, "chrX": "ttttCCCC" * 3}


def write_fasta(folder: Path, *, bgzip: bool) -> Path:
    plain = folder / "ref.fa"
    plain.write_text("".join(f">{name} description\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n" for name, seq in SEQUENCES.items()))
    if not bgzip:
        return plain
    compressed = folder / "ref.fa.gz"
    pysam.tabix_compress(str(plain), str(compressed), force=True)
    return compressed


@pytest.mark.parametrize("bgzip", [False, True])
def test_fetch__uppercase_spans_and_index_created(tmp_path: Path, bgzip: bool) -> None:
    path = write_fasta(tmp_path, bgzip=bgzip)
    with open_reference(path) as reference:
        assert reference.contigs == {name: len(seq) for name, seq in SEQUENCES.items()}
        assert reference.fetch("chr22", 4, 12) == SEQUENCES["chr22"][4:12].upper()
        assert reference.fetch("22", 0, 340) == SEQUENCES["chr22"].upper()
    assert Path(f"{path}.fai").exists()
    assert Path(f"{path}.gzi").exists() == bgzip


def test_resolve_contig__both_conventions(tmp_path: Path) -> None:
    reference = open_reference(write_fasta(tmp_path, bgzip=False))
    assert reference.resolve_contig("22") == "chr22"
    assert reference.resolve_contig("chr22") == "chr22"
    assert reference.resolve_contig("MT") == "chrM"
    assert reference.resolve_contig("X") == "chrX"
    with pytest.raises(FastaError, match=r"ref.fa: no contig '7'.*chr22, chrM, chrX"):
        reference.resolve_contig("7")


def test_fetch__out_of_range_names_contig_and_length(tmp_path: Path) -> None:
    reference = open_reference(write_fasta(tmp_path, bgzip=True))
    with pytest.raises(FastaError, match=r"chrM:45-51 is outside the contig \(length 50\)"):
        reference.fetch("chrM", 44, 51)


def test_fetch_alleles__equals_one_fetch_per_record(tmp_path: Path) -> None:
    reference = open_reference(write_fasta(tmp_path, bgzip=True))
    rng = np.random.default_rng(0)
    length = len(SEQUENCES["chr22"])
    position = rng.integers(1, length - 5, size=200)
    span = rng.integers(1, 6, size=200)
    got = reference.fetch_alleles("22", position, span)
    assert got == [SEQUENCES["chr22"][p - 1 : p - 1 + s].upper() for p, s in zip(position.tolist(), span.tolist(), strict=True)]
    assert reference.fetch_alleles("chrX", [1, 24], 1) == ["T", "C"]
    assert reference.fetch_alleles("chrX", [], 1) == []


def test_fetch_alleles__far_apart_positions_are_fetched_in_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io import fasta

    monkeypatch.setattr(fasta, "_MAX_GAP", 10)
    reference = open_reference(write_fasta(tmp_path, bgzip=False))
    calls: list[tuple[int, int]] = []
    original = reference.fetch

    def counting(contig: str, start0: int, end0: int) -> str:
        calls.append((start0, end0))
        return original(contig, start0, end0)

    monkeypatch.setattr(reference, "fetch", counting)
    assert reference.fetch_alleles("chr22", [300, 2, 5, 310], [1, 2, 1, 3]) == [SEQUENCES["chr22"][p - 1 : p - 1 + s].upper() for p, s in [(300, 1), (2, 2), (5, 1), (310, 3)]]
    assert calls == [(1, 5), (299, 312)]


@pytest.mark.parametrize("bgzip", [False, True])
def test_open_reference__rebuilds_an_index_older_than_the_fasta(tmp_path: Path, bgzip: bool) -> None:
    path = write_fasta(tmp_path, bgzip=bgzip)
    open_reference(path).close()
    plain = tmp_path / "ref.fa"
    plain.write_text(">chr22\nACGTACGT\n")  # rewritten with another length
    if bgzip:
        pysam.tabix_compress(str(plain), str(path), force=True)
    for index in tmp_path.glob("ref.fa*.[fg][az]i"):
        os.utime(index, (1, 1))
    reference = open_reference(path)
    assert reference.contigs == {"chr22": 8}
    assert reference.fetch("chr22", 0, 8) == "ACGTACGT"


def test_open_reference__picklable(tmp_path: Path) -> None:
    reference = open_reference(write_fasta(tmp_path, bgzip=True))
    copy = pickle.loads(pickle.dumps(reference))
    assert copy.fetch("chrM", 0, 4) == "GATC"


def test_open_reference__read_only_folder_indexes_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io import fasta

    path = write_fasta(tmp_path, bgzip=True)
    monkeypatch.setattr(fasta.os, "access", lambda *args: False)  # as if the folder were read-only
    reference = open_reference(path)
    assert reference.fetch("chrM", 0, 4) == "GATC"
    assert not Path(f"{path}.fai").exists() and not Path(f"{path}.gzi").exists()
    assert pickle.loads(pickle.dumps(reference)).fetch("chrX", 0, 2) == "TT"


def test_open_reference__read_only_folder_index_removed_by_its_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.io import fasta

    path = write_fasta(tmp_path, bgzip=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(fasta.tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(fasta.os, "access", lambda *args: False)
    reference = open_reference(path)
    (folder,) = scratch.iterdir()
    assert sorted(index.name for index in folder.iterdir()) == [f"{path.name}.fai", f"{path.name}.gzi"]
    copy = pickle.loads(pickle.dumps(reference))
    reopened = reference.files.open()
    copy.close()
    reopened.close()
    assert folder.exists()  # only the Reference that built the index removes it
    assert reference.files.open().fetch("chrM", 0, 4) == "GATC"
    reference.close()
    assert list(scratch.iterdir()) == []
    with reference.files.open() as elsewhere:  # as a task on another machine: its own index, removed after it
        assert elsewhere.fetch("chrX", 0, 2) == "TT" and len(list(scratch.iterdir())) == 1
    assert list(scratch.iterdir()) == []
    open_reference(path)  # not closed: removed when collected
    gc.collect()
    assert list(scratch.iterdir()) == []


def test_open_reference__errors(tmp_path: Path) -> None:
    with pytest.raises(FastaError, match="no such file"):
        open_reference(tmp_path / "absent.fa")
    plain_gzip = tmp_path / "plain.fa.gz"
    plain_gzip.write_bytes(gzip.compress(b">chr1\nACGT\n"))
    with pytest.raises(FastaError, match="bgzip"):
        open_reference(plain_gzip)
    garbage = tmp_path / "garbage.fa"
    garbage.write_bytes(b"this is not a fasta file\n")
    with pytest.raises(FastaError, match="garbage.fa"):
        open_reference(garbage)
