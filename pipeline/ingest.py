"""Ingest: a site's VCF/BCF (+ FASTA, + phenotypes) -> a harmonized Parquet dataset.

With an index the file is cut into genomic regions of ``chunk_size`` bases and each
region becomes one Dask task (``read_blocks`` -> harmonize -> ``write_chunk`` into the
temporary output folder); the graph is built from :func:`ingest_region` wrapped in
``dask.delayed`` and computed once, on a local scheduler (threads, processes,
synchronous) or a ``dask.distributed`` scheduler address. Without an index the file is
streamed in order and cut into the same windows. Memory is bounded by the chunk size
(one chunk's dense genotypes per worker), not by the file size. The driver then writes
``samples.parquet``, ``dataset.json`` and ``ingest-report.json`` and renames the folder
into place; on any error nothing is left behind.

``ingest-report.json`` keys (stable; new keys may be added, none renamed):

- ``genofed_version``; ``inputs``: ``vcf``, ``fasta``, ``phenotypes`` (paths or null),
  ``indexed`` (whether the file was split by region); ``settings``: ``chunk_size``,
  ``contig_style``, ``scheduler``, ``workers``.
- ``records_read``: VCF records read (before splitting).
- ``multiallelic_records_split``: records with several ALTs; ``records_from_split``:
  biallelic records they became (``bcftools norm -m-``).
- ``trimmed``: variants whose alleles were trimmed to the minimal representation.
- ``ref_checked``: variants whose REF was compared to the FASTA (0 without one).
- ``swapped``: REF/ALT exchanged to match the FASTA (calls recoded d -> 2 - d).
- ``strand_flipped``: alleles complemented to match the FASTA.
- ``strand_ambiguous``: A/T and C/G SNPs written (flagged, never flipped).
- ``dropped``: biallelic variants not written, by reason: ``no_alt_allele``,
  ``symbolic_allele``, ``alt_equals_ref``, ``ref_mismatch``,
  ``position_outside_reference``.
- ``variants_written``: biallelic variants in the dataset.
- ``samples``: ``in_vcf``, ``phenotype_table``, ``matched``, ``without_phenotypes``,
  ``phenotypes_without_genotypes``, ``examples_without_phenotypes``,
  ``examples_phenotypes_without_genotypes`` (at most 5 IDs each, this site's own).
- ``chunks``: chunk files written; ``tasks``: regions processed (0 when streaming);
  ``seconds``: wall time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__, outputs
from pipeline.dataset import Block, write_chunk, write_metadata
from pipeline.errors import ConfigurationError, InputError
from pipeline.harmonize.batch import VariantBatch, add_counts, concat_blocks, to_block
from pipeline.harmonize.chain import harmonizer
from pipeline.harmonize.contigs import CONTIG_STYLES
from pipeline.harmonize.samples import match_samples
from pipeline.io.fasta import open_reference
from pipeline.io.phenotypes import read_phenotypes
from pipeline.io.vcf import Region, open_vcf, read_blocks

log = logging.getLogger(__name__)

REPORT_NAME = "ingest-report.json"
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
LOCAL_SCHEDULERS = {"threads": "threads", "processes": "processes", "synchronous": "sync", "sync": "sync"}
RECORDS_PER_BLOCK = 2000

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_chunk_size(value: str | int) -> int:
    """Bases per chunk from ``5Mb``, ``500kb``, ``1000000`` (decimal units, as genome sizes are).

    Raises:
        ConfigurationError: not a positive size.
    """
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        if not match:
            raise ConfigurationError(f"chunk size {value!r} is not a size; write it like 5Mb, 500kb or 1000000")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < 1:
        raise ConfigurationError(f"chunk size must be at least 1 base, got {value!r}")
    return size


def _parse_scheduler(scheduler: str, workers: int | None) -> str:
    if workers is not None and workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {workers}")
    if scheduler in LOCAL_SCHEDULERS or "://" in scheduler or re.match(r"^[\w.-]+:\d+$", scheduler):
        return scheduler
    raise ConfigurationError(
        f"unknown scheduler {scheduler!r}; use threads, processes, synchronous or a dask.distributed address such as tcp://host:8786"
    )


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


def _empty_counts() -> dict[str, Any]:
    return {**{name: 0 for name in COUNTERS}, "dropped": {reason: 0 for reason in DROP_REASONS}}


def _write(out: Path, chunk_index: int, blocks: list[Block], num_samples: int) -> dict[str, Any] | None:
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
    counts: dict[str, Any] = _empty_counts()
    blocks: list[Block] = []
    for record_block in read_blocks(task.vcf, task.region, max_records=RECORDS_PER_BLOCK):
        batch: VariantBatch = harmonize(record_block)
        counts = dict(add_counts(counts, batch.counts))
        if batch.num_variants:
            blocks.append(to_block(batch))
    entry = _write(Path(task.out), task.chunk_index, blocks, task.num_samples)
    return {"chunk_index": task.chunk_index, "entry": entry, "counts": counts}


def _stream(vcf: str, out: Path, *, num_samples: int, chunk_size: int, fasta: str | None, contig_style: str, progress: bool) -> list[dict[str, Any]]:
    """Without an index: reads the file in order, cutting chunks on the region grid."""
    reference = open_reference(fasta) if fasta else None
    harmonize = harmonizer(contig_style=contig_style, reference=reference)
    results: list[dict[str, Any]] = []
    counts: dict[str, Any] = _empty_counts()
    pending: list[Block] = []
    current: tuple[str, int] | None = None

    def flush() -> None:
        nonlocal pending, counts
        entry = _write(out, len(results), pending, num_samples)
        results.append({"chunk_index": len(results), "entry": entry, "counts": counts})
        pending, counts = [], _empty_counts()

    bar = _progress_bar(progress, unit="records", desc="ingest")
    try:
        for record_block in read_blocks(vcf, None, max_records=RECORDS_PER_BLOCK):
            batch: VariantBatch = harmonize(record_block)
            window = (batch.source_position - 1) // chunk_size
            for key in _ordered_unique(window.tolist()):
                if current is not None and current != (batch.contig, key):
                    flush()
                current = (batch.contig, key)
                part = batch.select(window == key)
                if part.num_variants:
                    pending.append(to_block(part))
            counts = dict(add_counts(counts, batch.counts))
            if bar is not None:
                bar.update(int(record_block.position.shape[0]))
        if current is not None or counts["records_read"]:
            flush()
    finally:
        if bar is not None:
            bar.close()
    return results


def _ordered_unique(values: list[int]) -> Iterator[int]:
    seen: set[int] = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value


def _progress_bar(progress: bool, **kwargs: Any) -> Any:
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(file=sys.stderr, **kwargs)


def _local_pool(scheduler: str, workers: int | None) -> Executor | None:
    """The executor a local scheduler runs on, owned here so that a failure can wait for it."""
    if scheduler == "sync":
        return None
    count = workers or os.cpu_count() or 1
    if scheduler == "threads":
        return ThreadPoolExecutor(count)
    import multiprocessing

    import dask

    return ProcessPoolExecutor(count, mp_context=multiprocessing.get_context(dask.config.get("multiprocessing.context", "spawn")))


def _compute(tasks: list[ChunkTask], *, scheduler: str, workers: int | None, progress: bool) -> list[dict[str, Any]]:
    """Builds the graph (one delayed call per region) and computes it once.

    When a task fails, the tasks already running finish before the error propagates, so
    none of them writes into the temporary folder after it has been removed.
    """
    import dask

    graph = [dask.delayed(ingest_region, pure=True)(task, dask_key_name=f"ingest-chunk-{task.chunk_index:05d}") for task in tasks]
    if scheduler in LOCAL_SCHEDULERS:
        name = LOCAL_SCHEDULERS[scheduler]
        pool = _local_pool(name, workers)
        options: dict[str, Any] = {"scheduler": name} if pool is None else {"scheduler": name, "pool": pool}
        bar = contextlib.nullcontext()
        if progress:
            from dask.diagnostics import ProgressBar

            bar = ProgressBar(out=sys.stderr)
        try:
            with bar:
                return list(dask.compute(*graph, **options))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    import distributed

    with distributed.Client(scheduler) as client:
        futures = client.compute(graph)
        tick = _progress_bar(progress, total=len(futures), unit="chunks", desc="ingest")
        for _ in distributed.as_completed(futures):  # every task ends before an error is raised
            if tick is not None:
                tick.update(1)
        if tick is not None:
            tick.close()
        return list(client.gather(futures))


def _check_reference_contigs(fasta: str, contigs: list[Region], vcf: str) -> None:
    """Fails before any work when a region's contig is not in the FASTA."""
    reference = open_reference(fasta)
    seen: set[str] = set()
    for region in contigs:
        if region.contig in seen:
            continue
        seen.add(region.contig)
        try:
            reference.resolve_contig(region.contig)
        except InputError as error:
            raise type(error)(
                f"{vcf}: records on contig {region.contig!r} (first region {region}) but {fasta} has no such contig ({error}); "
                "give the FASTA of the genome build the VCF was called on"
            ) from error


def ingest(
    vcf: str | Path,
    *,
    out: str | Path,
    fasta: str | Path | None = None,
    phenotypes: str | Path | None = None,
    chunk_size: int | str = 5_000_000,
    scheduler: str = "threads",
    workers: int | None = None,
    contig_style: str = "chr",
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Harmonizes ``vcf`` into a dataset at ``out`` and returns the ingest report.

    Args:
        vcf: VCF, BGZF VCF or BCF; with a .tbi/.csi index the work is split by region.
        out: dataset folder to create (atomically).
        fasta: reference FASTA to check REF against (swap, strand flip, drop).
        phenotypes: TSV keyed by IID to match samples with.
        chunk_size: bases per chunk (``5Mb``, ``500kb``, ``1000000``).
        scheduler: ``threads``, ``processes``, ``synchronous`` or a dask.distributed address.
        workers: local scheduler workers (default: dask's, one per core).
        contig_style: ``chr``, ``nochr`` or ``keep``.
        force: replace an existing ``out``.
        progress: show a progress bar on stderr.

    Raises:
        GenofedError: any input problem (the message names the file and record); ``out``
            is then left as it was.
    """
    started = time.perf_counter()
    size = parse_chunk_size(chunk_size)
    scheduler = _parse_scheduler(scheduler, workers)
    if contig_style not in CONTIG_STYLES:
        raise ConfigurationError(f"unknown contig style {contig_style!r}; use one of {', '.join(CONTIG_STYLES)}")
    out_path = Path(out)
    outputs.check_output_path(out_path, force=force)
    vcf_path = str(vcf)
    fasta_path = None if fasta is None else str(fasta)
    source = open_vcf(vcf_path)
    pheno_table = None if phenotypes is None else read_phenotypes(phenotypes)
    samples_table, samples_summary = match_samples(source.samples, pheno_table, vcf=vcf_path, phenotype_source=str(phenotypes))
    if fasta_path is not None:
        open_reference(fasta_path)  # fails early on a missing or unreadable FASTA
    with outputs.atomic_directory(out_path, force=force) as tmp:
        if source.has_index:
            regions = source.regions(size)
            if fasta_path is not None:
                _check_reference_contigs(fasta_path, regions, vcf_path)
            tasks = [
                ChunkTask(vcf_path, region, i, str(tmp), len(source.samples), fasta_path, contig_style) for i, region in enumerate(regions)
            ]
            results = _compute(tasks, scheduler=scheduler, workers=workers, progress=progress) if tasks else []
        else:
            log.info("%s has no index: streaming it in one pass", vcf_path)
            tasks = []
            results = _stream(vcf_path, tmp, num_samples=len(source.samples), chunk_size=size, fasta=fasta_path, contig_style=contig_style, progress=progress)
        results.sort(key=lambda r: r["chunk_index"])
        entries = [r["entry"] for r in results if r["entry"] is not None]
        counts: dict[str, Any] = _empty_counts()
        for result in results:
            counts = dict(add_counts(counts, result["counts"]))
        counts["dropped"] = dict(counts["dropped"])
        report: dict[str, Any] = {
            "genofed_version": __version__,
            "inputs": {"vcf": vcf_path, "fasta": fasta_path, "phenotypes": None if phenotypes is None else str(phenotypes), "indexed": source.has_index},
            "settings": {"chunk_size": size, "contig_style": contig_style, "scheduler": scheduler, "workers": workers},
            **counts,
            "variants_written": sum(int(e["num_variants"]) for e in entries),
            "samples": samples_summary,
            "chunks": len(entries),
            "tasks": len(tasks),
        }
        write_metadata(
            tmp,
            samples=samples_table,
            chunks=entries,
            extra={"contig_style": contig_style, "reference_checked": fasta_path is not None, "report": REPORT_NAME},
        )
        report["seconds"] = round(time.perf_counter() - started, 3)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary_text(report: dict[str, Any], out: str | Path) -> str:
    """A few human lines for the CLI."""
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items() if v) or "none"
    samples = report["samples"]
    return (
        f"wrote {out}: {report['variants_written']} variants x {samples['in_vcf']} samples in {report['chunks']} chunks "
        f"({report['seconds']} s)\n"
        f"records read {report['records_read']}; split {report['multiallelic_records_split']} -> {report['records_from_split']}; "
        f"trimmed {report['trimmed']}; swapped {report['swapped']}; flipped {report['strand_flipped']}; "
        f"strand-ambiguous {report['strand_ambiguous']}; dropped: {dropped}\n"
        f"samples with phenotypes {samples['matched']}/{samples['in_vcf']}; "
        f"phenotype rows without genotypes {samples['phenotypes_without_genotypes']}"
    )
