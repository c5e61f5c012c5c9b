"""Builders for record blocks and references written by hand in harmonization tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import FastaError

try:
    from pipeline.io.vcf import RecordBlock
except ImportError:  # the reader module may not exist yet in a partial checkout

    @dataclass(frozen=True)
    class RecordBlock:  # type: ignore[no-redef]
        source: str
        contig: str
        position: np.ndarray
        line_number: np.ndarray | None
        record_id: list
        ref: list
        alts: list
        allele_index: np.ndarray
        phased: np.ndarray | None
        ds: np.ndarray | None


def parse_gt(text: str) -> list[int]:
    """'0/1' -> [0, 1], './1' -> [-1, 1], '1' -> [1], '.' -> [-1]."""
    return [-1 if a == "." else int(a) for a in text.replace("|", "/").split("/")]


def make_block(records: list[tuple], *, contig: str = "chr1", ds: list[list[list[float]]] | None = None, source: str = "test.vcf") -> RecordBlock:
    """records: (pos, ref, 'alt1,alt2' or '.', ['0/1', '1', ...]) per record."""
    calls = [[parse_gt(g) for g in r[3]] for r in records]
    ploidy = max((len(c) for rec in calls for c in rec), default=2)
    n_samples = len(records[0][3]) if records else 0
    allele_index = np.full((len(records), n_samples, ploidy), -2, dtype=np.int8)
    for i, rec in enumerate(calls):
        for j, call in enumerate(rec):
            allele_index[i, j, : len(call)] = call
    alts = [tuple() if r[2] == "." else tuple(r[2].split(",")) for r in records]
    ds_array = None
    if ds is not None:
        max_alts = max(len(a) for a in alts)
        ds_array = np.full((len(records), n_samples, max_alts), np.nan, dtype=np.float32)
        for i, per_record in enumerate(ds):
            for j, per_sample in enumerate(per_record):
                ds_array[i, j, : len(per_sample)] = per_sample
    return RecordBlock(
        source=source,
        contig=contig,
        position=np.array([r[0] for r in records], dtype=np.int64),
        line_number=None,
        record_id=[None] * len(records),
        ref=[r[1] for r in records],
        alts=alts,
        allele_index=allele_index,
        phased=None,
        ds=ds_array,
    )


class DictReference:
    """A reference with the Reference interface over in-memory sequences."""

    def __init__(self, sequences: dict[str, str]) -> None:
        self.sequences = {k: v.upper() for k, v in sequences.items()}
        self.contigs = {k: len(v) for k, v in self.sequences.items()}
        self.path = "memory.fa"

    def fetch(self, contig: str, start0: int, end0: int) -> str:
        return self.sequences[contig][start0:end0]

    def resolve_contig(self, name: str) -> str:
        for candidate in (name, name.removeprefix("chr"), f"chr{name}"):
            if candidate in self.sequences:
                return candidate
        raise FastaError(f"contig {name!r} not in memory.fa")


VCF_HEADER = """##fileformat=VCFv4.2
{contigs}##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">
##FORMAT=<ID=DS,Number=A,Type=Float,Description="Alternate allele dosage">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{samples}
"""


def vcf_text(records: list[tuple], samples: list[str], *, contigs: dict[str, int] | None = None) -> str:
    """records: (contig, pos, ref, alt, format, [cells]) -> VCF text with a #CHROM header."""
    contigs = contigs if contigs is not None else {"chr1": 1000}
    header = VCF_HEADER.format(
        contigs="".join(f"##contig=<ID={name},length={length}>\n" for name, length in contigs.items()),
        samples="\t".join(samples),
    )
    lines = ["\t".join([c, str(p), ".", r, a, ".", ".", ".", fmt, *cells]) for c, p, r, a, fmt, cells in records]
    return header + "".join(line + "\n" for line in lines)


def write_vcf(path, text: str, *, indexed: bool = False):
    """Writes plain text, or BGZF + .tbi when ``indexed`` (returns the path to give ingest)."""
    import pysam

    path = Path(path)
    path.write_text(text)
    if not indexed:
        return path
    return Path(pysam.tabix_index(str(path), preset="vcf", force=True))
