"""One ingest task: a genomic region of an input (VCF/BCF, PLINK or BGEN) -> harmonized chunk files.

This is what a Dask worker runs (:func:`ingest_region` on a picklable
:class:`ChunkTask`), kept apart from the driver (:mod:`pipeline.ingest`) so that a
worker process imports only the reading and harmonizing code, not the scheduler's.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dataset import Block, write_chunk
from pipeline.harmonize.batch import (
    VariantBatch,
    add_counts,
    in_position_order,
    to_block,
)
from pipeline.harmonize.chain import harmonizer
from pipeline.io.fasta import ReferenceFiles
from pipeline.io.sources import RegionRows, read_source_blocks
from pipeline.io.vcf import RecordBlock, Region, read_blocks

__all__ = ["CALLS_PER_BLOCK", "COUNTERS", "DROP_REASONS", "RECORDS_PER_BLOCK", "ChunkTask", "add_reader_counts", "dense_block", "empty_counts",
           "ingest_region", "records_per_block", "write_blocks"]

DROP_REASONS = ("no_alt_allele", "symbolic_allele", "low_imputation_quality", "alt_equals_ref", "ref_mismatch", "position_outside_reference")
COUNTERS = (
    "records_read",
    "multiallelic_records_split",
    "records_from_split",
    "dosages_from_gp",
    "trimmed",
    "ref_checked",
    "swapped",
    "strand_flipped",
    "strand_ambiguous",
)
RECORDS_PER_BLOCK = 2000
CALLS_PER_BLOCK = 4_000_000
"""Calls (records x samples) a reader block holds at most: the reader, the harmonization and
the dense block each hold a few arrays of this many cells, so a worker's memory is bounded
by it and the chunk, not by the sample count (2,000 records x 20,000 samples held 1.1 GB)."""


def records_per_block(num_samples: int) -> int:
    """Records per reader block: :data:`RECORDS_PER_BLOCK`, fewer for many samples (at least 16)."""
    return max(16, min(RECORDS_PER_BLOCK, CALLS_PER_BLOCK // max(num_samples, 1)))


@dataclass(frozen=True)
class ChunkTask:
    """Everything one region's task needs (plain, picklable values: no open files)."""

    vcf: str
    region: Region
    chunk_index: int
    out: str
    num_samples: int
    fasta: ReferenceFiles | None
    """The reference to check REF against, indexed once by the driver; each task opens its own handle."""
    contig_style: str
    min_info: float | None = None
    rows: RegionRows | None = None
    """A PLINK or BGEN input's rows of the region (:func:`pipeline.io.sources.region_plan`); ``None``: a VCF's, found
    through its index."""


def empty_counts() -> dict[str, Any]:
    """Every ingest counter at zero (the keys of ``ingest-report.json``'s counts)."""
    return {**{name: 0 for name in COUNTERS}, "records_without_gt": 0, "dropped": {reason: 0 for reason in DROP_REASONS}}


def dense_block(batch: VariantBatch) -> Block:
    """A harmonized batch as a dataset block; DS that is all missing ('.') is no DS.

    Which records share a reader block depends on how the file was read (whole file
    or by region), so a block can carry a DS array only because another window's
    records had DS; dropping all-missing DS here makes a chunk's dosage column depend
    on its own records only, and every reading path gives the same dataset.
    """
    block = to_block(batch)
    if block.dosage is not None and np.isnan(block.dosage).all():
        block = dataclasses.replace(block, dosage=None)
    return block


def add_reader_counts(counts: dict[str, Any], record_block: RecordBlock) -> dict[str, Any]:
    """Adds what the reader itself counted in a block (records whose FORMAT has no GT)."""
    counts["records_without_gt"] = int(counts.get("records_without_gt", 0)) + record_block.records_without_gt
    return counts


def write_blocks(out: Path, chunk_index: int, blocks: list[Block], num_samples: int) -> dict[str, Any] | None:
    """Writes one chunk's blocks as chunk ``chunk_index``; its dataset.json entry, or None when empty."""
    ordered = in_position_order(blocks, num_samples=num_samples)
    if not ordered:
        return None
    return write_chunk(out, chunk_index, *ordered)


def ingest_region(task: ChunkTask) -> dict[str, Any]:
    """One Dask task: reads a region, harmonizes it and writes its chunk files.

    Returns:
        ``{"chunk_index", "entry" (the dataset.json entry, None when nothing was kept),
        "counts", "records_by_contig"}``; ``records_by_contig`` counts every record read
        (kept, dropped or split alike) under its contig as the VCF names it, for the
        driver's check against the index.
    """
    counts: dict[str, Any] = empty_counts()
    blocks: list[Block] = []
    records_read = 0
    max_records = records_per_block(task.num_samples)
    records = (read_blocks(task.vcf, task.region, max_records=max_records) if task.rows is None
               else read_source_blocks(task.vcf, task.rows, max_records=max_records))
    with contextlib.nullcontext() if task.fasta is None else task.fasta.open() as reference:
        harmonize = harmonizer(contig_style=task.contig_style, reference=reference, min_info=task.min_info)
        for record_block in records:
            records_read += record_block.num_records
            batch: VariantBatch = harmonize(record_block)
            counts = add_reader_counts(dict(add_counts(counts, batch.counts)), record_block)
            if batch.num_variants:
                blocks.append(dense_block(batch))
    entry = write_blocks(Path(task.out), task.chunk_index, blocks, task.num_samples)
    return {"chunk_index": task.chunk_index, "entry": entry, "counts": counts, "records_by_contig": {task.region.contig: records_read}}
