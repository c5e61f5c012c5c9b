"""Byte-reproducible writers for the simulated files: VCF text, BGZF, BCF, FASTA.

Genotype text is built with numpy (one fixed-width ``a|b`` cell per call), because
setting ``record.samples[...]`` through pysam is far too slow for thousands of
samples. BGZF, BCF and their indexes come from htslib (through pysam) and embed no
timestamps; headers carry no dates, so the same inputs give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pysam

from pipeline import __version__
from pipeline.errors import ConfigurationError

FASTA_LINE_WIDTH = 60
DEFAULT_LEVEL = 6
"""bgzip's and htslib's default compression level."""

_DOT = ord(".")
_ZERO = ord("0")


def vcf_header(contigs: Sequence[tuple[str, int]], sample_id: Sequence[str], *, source: str) -> str:
    """The VCF header text: fileformat, FILTER, one ``##contig`` with length per (name, length), GT, #CHROM line."""
    lines = [
        "##fileformat=VCFv4.2",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        *(f"##contig=<ID={contig},length={length}>" for contig, length in contigs),
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        f"##source={source} (genofed {__version__})",
        "#" + "\t".join(["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *sample_id]),
    ]
    return "\n".join(lines) + "\n"


def encode_genotype_cells(allele_index: np.ndarray, *, phased: bool) -> np.ndarray:
    """Encodes diploid calls as the tab-separated GT columns of VCF lines.

    Args:
        allele_index: int8 (variants, samples, 2), allele indexes 0..9, -1 missing.
        phased: separate alleles with ``|`` (a call with a missing allele uses ``/``);
            unphased calls are written in ascending order (``0/1``, ``./1``).

    Returns:
        uint8 (variants, samples * 4): each row is the bytes after ``FORMAT\\t``,
        ending with a newline.
    """
    n_variant, n_sample, ploidy = allele_index.shape
    if ploidy != 2:
        raise ConfigurationError(f"expected diploid calls (ploidy 2), got ploidy {ploidy}")
    if allele_index.size and int(allele_index.max()) > 9:
        raise ConfigurationError("allele indexes above 9 do not fit the fixed-width GT encoding")
    first = allele_index[:, :, 0]
    second = allele_index[:, :, 1]
    if not phased:
        first, second = np.minimum(first, second), np.maximum(first, second)
    any_missing = (first < 0) | (second < 0)
    cell = np.empty((n_variant, n_sample, 4), dtype=np.uint8)
    cell[:, :, 0] = np.where(first < 0, _DOT, first + _ZERO)
    cell[:, :, 1] = np.where(any_missing | (not phased), ord("/"), ord("|"))
    cell[:, :, 2] = np.where(second < 0, _DOT, second + _ZERO)
    cell[:, :, 3] = ord("\t")
    if n_sample:
        cell[:, -1, 3] = ord("\n")
    return cell.reshape(n_variant, n_sample * 4)


ABSENT = -2
"""An allele slot a haploid call does not have (a male's second chrX copy outside the PARs)."""


def encode_genotype_rows(allele_index: np.ndarray, *, phased: bool) -> list[bytes]:
    """Like :func:`encode_genotype_cells`, with haploid calls: second allele :data:`ABSENT` writes ``a`` instead of ``a/b``.

    Returns:
        One bytes object per variant: the GT columns after ``FORMAT\t``, ending with a newline.
    """
    haploid = allele_index[:, :, 1] == ABSENT
    if not haploid.any():
        return [row.tobytes() for row in encode_genotype_cells(allele_index, phased=phased)]
    diploid = allele_index.copy()
    diploid[:, :, 1] = np.where(haploid, diploid[:, :, 0], diploid[:, :, 1])  # any second allele: its bytes are dropped
    cells = encode_genotype_cells(diploid, phased=phased).reshape(*haploid.shape, 4)
    keep = np.ones(cells.shape, dtype=bool)
    keep[:, :, 1] = keep[:, :, 2] = ~haploid
    return [cells[i][keep[i]].tobytes() for i in range(cells.shape[0])]


def vcf_lines(
    contig: str, position: np.ndarray, ref: Sequence[str], alts: Sequence[str], genotype_cells: np.ndarray | Sequence[bytes]
) -> bytes:
    """Joins fixed columns and encoded GT cells (an array of rows, or bytes per row) into VCF data lines (ID, QUAL, INFO '.')."""
    parts = []
    for i in range(len(position)):
        parts.append(f"{contig}\t{int(position[i])}\t.\t{ref[i]}\t{alts[i]}\t.\tPASS\t.\tGT\t".encode())
        row = genotype_cells[i]
        parts.append(row if isinstance(row, bytes) else row.tobytes())
    return b"".join(parts)


def open_bgzf(path: Path, *, level: int = DEFAULT_LEVEL) -> pysam.BGZFile:
    """Opens a BGZF file for writing at deflate ``level`` 0-9 (htslib's writer: no timestamps in the blocks)."""
    return pysam.BGZFile(str(path), f"wb{_level(level)}")


def open_vcf_output(path: Path, *, level: int = DEFAULT_LEVEL) -> BinaryIO:
    """Opens VCF text output: BGZF at ``level`` for ``*.gz``, plain text otherwise (an intermediate)."""
    return open_bgzf(path, level=level) if path.name.endswith(".gz") else open(path, "wb")  # noqa: SIM115


def _level(level: int) -> int:
    if not 0 <= level <= 9:
        raise ConfigurationError(f"a BGZF compression level is 0 to 9, got {level}")
    return level


def index_vcf_gz(path: Path) -> Path:
    """Builds the tabix ``.tbi`` index of a bgzipped VCF; returns its path."""
    pysam.tabix_index(str(path), preset="vcf", force=True)
    return Path(f"{path}.tbi")


def convert_to_bcf(vcf: Path, bcf: Path, *, level: int = DEFAULT_LEVEL) -> Path:
    """Rewrites a VCF as an indexed BCF compressed at ``level`` (with pysam only); returns the ``.csi`` path."""
    # The intermediate VCF has no index on purpose: keep htslib from warning that it looked for one.
    verbosity = pysam.set_verbosity(0)
    try:
        source = pysam.VariantFile(str(vcf))
    finally:
        pysam.set_verbosity(verbosity)
    with source, pysam.VariantFile(str(bcf), f"wb{_level(level)}", header=source.header) as sink:
        for record in source:
            sink.write(record)
    pysam.tabix_index(str(bcf), preset="bcf", csi=True, force=True)
    return Path(f"{bcf}.csi")


def write_fasta(path: Path, contigs: Sequence[tuple[str, np.ndarray]], *, level: int = DEFAULT_LEVEL) -> None:
    """Writes contigs as bgzipped FASTA with ``.fai`` and ``.gzi`` indexes.

    Args:
        path: output path ending in ``.fa.gz``.
        contigs: (name, uint8 (length,) ASCII bases) per contig, in file order.
        level: the deflate level of the BGZF blocks, 0-9.
    """
    with open_bgzf(path, level=level) as handle:
        for contig, sequence in contigs:
            length = int(sequence.shape[0])
            full_lines = length // FASTA_LINE_WIDTH
            body = np.empty((full_lines, FASTA_LINE_WIDTH + 1), dtype=np.uint8)
            body[:, :FASTA_LINE_WIDTH] = sequence[: full_lines * FASTA_LINE_WIDTH].reshape(full_lines, FASTA_LINE_WIDTH)
            body[:, FASTA_LINE_WIDTH] = ord("\n")
            tail = sequence[full_lines * FASTA_LINE_WIDTH :]
            handle.write(f">{contig}\n".encode())
            step = 100_000  # lines per write, to bound the size of each bytes object
            for begin in range(0, full_lines, step):
                handle.write(body[begin : begin + step].tobytes())
            if tail.size:
                handle.write(tail.tobytes() + b"\n")
    pysam.faidx(str(path))
