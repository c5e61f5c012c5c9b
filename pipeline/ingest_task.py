"""One ingest task: a genomic region of a VCF/BCF -> harmonized chunk files.

This is what a Dask worker runs (:func:`ingest_region` on a picklable
:class:`ChunkTask`), kept apart from the driver (:mod:`pipeline.ingest`) so that a
worker process imports only the reading and harmonizing code, not the scheduler's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.dataset import Block, write_chunk
from pipeline.harmonize.batch import VariantBatch, add_counts, concat_blocks, to_block
from pipeline.harmonize.chain import harmonizer
from pipeline.io.fasta import open_reference
from pipeline.io.vcf import Region, read_blocks

__all__ = ["ChunkTask", "ingest_region", "write_blocks", "empty_counts", "COUNTERS", "DROP_REASONS", "RECORDS_PER_BLOCK"]

DROP_REASONS = ("no_alt_allele", "symbolic_allele", "alt_equals_ref", "ref_mismatch", "position_outside_reference")
COUNTERS = (
    "records_read",
    "multiallelic_records_split",
    "records_from_split",
    "trimmed",
    "ref_checked",
    "swapped",
    "strand_flipped",
    "strand_ambiguous",
)
RECORDS_PER_BLOCK = 2000


@dataclass(frozen=True)
class ChunkTask:
    """Everything one region's task needs (plain, picklable values: no open files)."""

    vcf: str
    region: Region
    chunk_index: int
    out: str
    num_samples: int
    fasta: str | None
    contig_style: str


def empty_counts() -> dict[str, Any]:
    """Every ingest counter at zero (the keys of ``ingest-report.json``'s counts)."""
    return {**{name: 0 for name in COUNTERS}, "dropped": {reason: 0 for reason in DROP_REASONS}}


def write_blocks(out: Path, chunk_index: int, blocks: list[Block], num_samples: int) -> dict[str, Any] | None:
    """Writes one chunk's blocks as chunk ``chunk_index``; its dataset.json entry, or None when empty."""
    block = concat_blocks(blocks, num_samples=num_samples)
    if block.num_variants == 0:
        return None
    return write_chunk(out, chunk_index, block)


def ingest_region(task: ChunkTask) -> dict[str, Any]:
    """One Dask task: reads a region, harmonizes it and writes its chunk files.

    Returns:
        ``{"chunk_index", "entry" (the dataset.json entry, None when nothing was kept),
        "counts"}``.
    """
    reference = open_reference(task.fasta) if task.fasta else None
    harmonize = harmonizer(contig_style=task.contig_style, reference=reference)
    counts: dict[str, Any] = empty_counts()
    blocks: list[Block] = []
    for record_block in read_blocks(task.vcf, task.region, max_records=RECORDS_PER_BLOCK):
        batch: VariantBatch = harmonize(record_block)
        counts = dict(add_counts(counts, batch.counts))
        if batch.num_variants:
            blocks.append(to_block(batch))
    entry = write_blocks(Path(task.out), task.chunk_index, blocks, task.num_samples)
    return {"chunk_index": task.chunk_index, "entry": entry, "counts": counts}
