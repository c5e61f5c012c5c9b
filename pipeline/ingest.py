"""Ingest: a site's VCF/BCF, PLINK or BGEN files (+ FASTA, + phenotypes) -> a harmonized Parquet dataset.

With an index (a VCF/BCF's .tbi/.csi; a PLINK or BGEN input's own variant table, whose
readers seek to any variant: :func:`pipeline.io.sources.region_plan`) the file is cut
into genomic regions of ``chunk_size`` bases and each
region becomes one Dask task (``read_blocks`` -> harmonize -> ``write_chunk`` into the
temporary output folder, :mod:`pipeline.ingest_task`); the graph is built from
:func:`~pipeline.ingest_task.ingest_region` wrapped in
``dask.delayed`` and computed once, on a local scheduler (threads, processes,
synchronous), a ``dask.distributed`` scheduler address, or a dask-jobqueue cluster on
Slurm/PBS (:mod:`pipeline.cluster`). Without an index the file is
streamed in order and cut into the same windows. Memory is bounded by the chunk size
(one chunk's dense genotypes per worker), not by the file size. The driver then writes
``samples.parquet``, ``dataset.json`` and ``ingest-report.json`` and renames the folder
into place; on any error nothing is left behind.

Several inputs (one file per chromosome, say) make one dataset, as if ``bcftools
concat`` had joined them: the same samples in the same order, each contig from one
input only (:mod:`pipeline.ingest_inputs`). Chunks are numbered over the inputs in the
order given, regions in file order within each; indexed inputs' regions are one Dask
graph, unindexed inputs are streamed in turn.

Both ways read one semantics (:mod:`pipeline.io.vcf`): a file gives the same dataset
streamed, or read by region through a TBI or CSI index. After all chunks are written, a
variant key that occurs twice in the dataset (the same locus under ``chr1``/``1`` or
``MT``/``chrM``, a split multi-allelic next to a biallelic, padded copies, exact copies)
fails the ingest with one line naming both input records and the fix; nothing is merged
(:mod:`pipeline.harmonize.duplicates`).

``ingest-report.json`` keys (stable; new keys may be added, none renamed):

- ``genofed_version``; ``inputs``: ``vcf`` (the path of a single input; the list of paths,
  in order and with ``{chrom}`` patterns expanded, when there are several), ``fasta``,
  ``phenotypes`` (paths or null), ``indexed`` (whether every input was split by region),
  ``format`` (``vcf``, ``pfile``, ``bfile`` or ``bgen``; ``vcf`` then holds the PLINK
  prefixes or BGEN files) and ``sample`` (a BGEN .sample file, when given);
  ``settings``: ``chunk_size``, ``contig_style``, ``scheduler``, ``workers``, ``min_info``
  (``--min-info``, or null), ``missing_code`` (the phenotype table's, -9 or null);
  ``imputation_key``: the INFO key of imputation quality read (``R2``, ``DR2``, ``INFO``
  or null; per input path when the inputs differ).
- ``records_read``: VCF records read (before splitting); ``records_read_by_input``: the
  same per input path, in input order.
- ``records_without_gt``: records whose FORMAT has no GT (PL only, say); their calls
  are read as missing, as bcftools and plink2 do. A file where no record has GT is
  refused.
- ``multiallelic_records_split``: records with several ALTs; ``records_from_split``:
  biallelic records they became (``bcftools norm -m-``).
- ``dosages_from_gp``: records whose dosages were computed from FORMAT/GP (no DS).
- ``trimmed``: variants whose alleles were trimmed to the minimal representation.
- ``ref_checked``: variants whose REF was compared to the FASTA (0 without one).
- ``swapped``: REF/ALT exchanged to match the FASTA (calls recoded d -> 2 - d).
- ``strand_flipped``: alleles complemented to match the FASTA.
- ``strand_ambiguous``: A/T and C/G SNPs written (flagged, never flipped).
- ``dropped``: biallelic variants not written, by reason: ``no_alt_allele``,
  ``symbolic_allele``, ``low_imputation_quality`` (below ``--min-info``),
  ``alt_equals_ref``, ``ref_mismatch``, ``position_outside_reference``.
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
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dask

from pipeline import __version__, outputs
from pipeline.assembly import check_assembly
from pipeline.cluster import compute_graph, parse_scheduler, progress_bar
from pipeline.dataset import Block, write_metadata
from pipeline.errors import ConfigurationError, InputError, VcfFormatError, disk_full
from pipeline.harmonize.batch import VariantBatch, add_counts
from pipeline.harmonize.chain import harmonizer
from pipeline.harmonize.contigs import CONTIG_STYLES, canonical_contig
from pipeline.harmonize.duplicates import refuse_duplicate_variants
from pipeline.harmonize.samples import match_samples
from pipeline.ingest_inputs import (
    check_same_samples,
    describe_inputs,
    expand_inputs,
    refuse_shared_contigs,
)
from pipeline.ingest_task import (
    ChunkTask,
    add_reader_counts,
    dense_block,
    empty_counts,
    ingest_region,
    records_per_block,
    write_blocks,
)
from pipeline.io.fasta import Reference, ReferenceFiles, open_reference
from pipeline.io.phenotypes import PLINK_MISSING_CODE, read_phenotypes
from pipeline.io.sources import INPUT_FORMATS, RegionRows, Source, open_source, region_plan
from pipeline.io.vcf import (
    IMPUTATION_KEYS,
    Region,
    VcfSource,
    index_record_counts,
    read_blocks,
)

log = logging.getLogger(__name__)

REPORT_NAME = "ingest-report.json"

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
    return parse_scheduler(scheduler)


def _stream(vcf: str, out: Path, *, first_chunk: int, num_samples: int, chunk_size: int, reference: Reference | None, contig_style: str,
            progress: bool, min_info: float | None = None) -> list[dict[str, Any]]:
    """A VCF/BCF without an index: reads it in order, cutting chunks on the region grid (numbered from ``first_chunk``)."""
    harmonize = harmonizer(contig_style=contig_style, reference=reference, min_info=min_info)
    results: list[dict[str, Any]] = []
    counts: dict[str, Any] = empty_counts()
    records_by_contig: dict[str, int] = {}
    pending: list[Block] = []
    current: tuple[str, int] | None = None

    def flush() -> None:
        nonlocal pending, counts, records_by_contig
        index = first_chunk + len(results)
        entry = write_blocks(out, index, pending, num_samples)
        results.append({"chunk_index": index, "entry": entry, "counts": counts, "records_by_contig": records_by_contig})
        pending, counts, records_by_contig = [], empty_counts(), {}

    bar = progress_bar(progress, unit="records", desc="ingest")
    try:
        for record_block in read_blocks(vcf, None, max_records=records_per_block(num_samples)):
            batch: VariantBatch = harmonize(record_block)
            window = (batch.source_position - 1) // chunk_size
            for key in _ordered_unique(window.tolist()):
                if current is not None and current != (batch.contig, key):
                    flush()
                current = (batch.contig, key)
                part = batch.select(window == key)
                if part.num_variants:
                    pending.append(dense_block(part))
            counts = add_reader_counts(dict(add_counts(counts, batch.counts)), record_block)
            records_by_contig[record_block.contig] = records_by_contig.get(record_block.contig, 0) + record_block.num_records
            if bar is not None:
                bar.update(int(record_block.position.shape[0]))
        if current is not None or counts["records_read"]:
            flush()
    finally:
        if bar is not None:
            bar.close()
    return results


@contextlib.contextmanager
def _disk_full_is_an_error(out: Path, vcf: str) -> Iterator[None]:
    """Turns a full disk (ENOSPC/EDQUOT, from the driver or a task) into one clear InputError naming ``out``."""
    try:
        yield
    except OSError as error:
        if not disk_full(error):
            raise
        raise InputError(
            f"{out}: the disk holding the output folder is full ({error.strerror or error}) while ingesting {vcf}; nothing was "
            "written: free space there or choose another --out"
        ) from None


def _check_genotypes(vcf: str, source_samples: list[str], counts: dict[str, Any]) -> None:
    """Refuses a file with samples where no record has GT (nothing to ingest but missing calls)."""
    if source_samples and counts["records_read"] and counts["records_without_gt"] == counts["records_read"]:
        raise VcfFormatError(
            f"{vcf}: none of its {counts['records_read']} records has GT in FORMAT, so there are no called genotypes to ingest; "
            "call genotypes first (for example 'bcftools call' for PL-only files)"
        )


def _check_index_counts(source: VcfSource, results: list[dict[str, Any]]) -> None:
    """Refuses an indexed ingest whose records read by region do not add up to the index's counts.

    A region query returns only the records the index can locate: a BCF record at POS
    0, or any record after the index was made (a stale index), would otherwise be lost
    without a word. Records dropped or refused by harmonization were read, and count.
    """
    expected = index_record_counts(source)
    if expected is None:
        log.info("%s: the index has no record counts (made by an old tabix); the records read cannot be checked against it", source.path)
        return
    if any("records_by_contig" not in result for result in results):
        log.info("%s: ingest parts written by an older genofed carry no per-contig counts; the index check is skipped", source.path)
        return
    read = _records_by_contig(results)
    differ = [name for name in dict.fromkeys([*expected, *read]) if expected.get(name, 0) != read.get(name, 0)]
    if differ:
        shown = ", ".join(f"{name}: index {expected.get(name, 0)}, read {read.get(name, 0)}" for name in differ[:5])
        raise VcfFormatError(
            f"{source.path}: the index {source.index} holds {sum(expected.values())} records but {sum(read.values())} were read through it "
            f"({shown}{', ...' if len(differ) > 5 else ''}); the index cannot locate some records (such as POS 0: remove them with "
            f"'bcftools view -e POS=0') or does not match the file: re-index it with 'bcftools index -f {source.path}'"
        )


def _ordered_unique(values: list[int]) -> Iterator[int]:
    seen: set[int] = set()
    for value in values:
        if value not in seen:
            seen.add(value)
            yield value


def _compute(tasks: list[ChunkTask], *, scheduler: str, workers: int | None, progress: bool) -> list[dict[str, Any]]:
    """One delayed :func:`~pipeline.ingest_task.ingest_region` per region, computed once.

    When a task fails, the tasks already running finish before the error propagates
    (:func:`pipeline.cluster.compute_graph`), so none of them writes into the temporary
    folder after it has been removed.
    """
    graph = [dask.delayed(ingest_region, pure=True)(task, dask_key_name=f"ingest-chunk-{task.chunk_index:05d}") for task in tasks]
    return compute_graph(graph, scheduler=scheduler, workers=workers, progress=progress, unit="chunks", desc="ingest")


PARTS_RESULTS = "results"


def _open_inputs(vcf: str | Path | Sequence[str | Path], min_info: float | None = None, input_format: str = "vcf",
                 sample: str | Path | None = None) -> tuple[list[str], list[Source]]:
    """The inputs' paths (``{chrom}`` patterns expanded) and opened files, of ``input_format`` (:mod:`pipeline.io.sources`).

    Raises:
        InputError: inputs whose samples differ, or ``min_info`` with an input whose
            header declares no imputation quality key.
        ConfigurationError: a negative ``min_info``.
    """
    if min_info is not None and not min_info >= 0:
        raise ConfigurationError(f"--min-info must be a number >= 0 (an imputation quality such as 0.3), got {min_info}")
    paths = expand_inputs(vcf, INPUT_FORMATS.get(input_format, ""))
    sources = [open_source(path, input_format, sample=sample) for path in paths]
    check_same_samples(paths, sources)
    if min_info is not None:
        for path, source in zip(paths, sources):
            if source.imputation_key is None:
                raise InputError(
                    f"{path}: --min-info {min_info} needs an imputation quality in INFO, but the header declares none of "
                    f"{', '.join(IMPUTATION_KEYS)}; leave --min-info out for typed (not imputed) genotypes"
                )
    return paths, sources


Plan = list[tuple[Region, RegionRows | None]]
"""An input's regions, each with the rows its task reads (:func:`pipeline.io.sources.region_plan`)."""


def _plan_regions(paths: Sequence[str], sources: Sequence[Source], chunk_size: int, contig_style: str) -> list[Plan | None]:
    """Each input's regions (None for an unindexed VCF, to stream); a contig with regions in two inputs fails before any work."""
    plans = [region_plan(source, chunk_size) for source in sources]
    refuse_shared_contigs([(path, [region.contig for region, _ in plan]) for path, plan in zip(paths, plans) if plan is not None],
                          contig_style)
    return plans


def _chunk_plan(
    paths: Sequence[str], sources: Sequence[Source], plans: Sequence[Plan | None], out: str, *, fasta: ReferenceFiles | None,
    contig_style: str, stream: Callable[[str, int], list[dict[str, Any]]], min_info: float | None = None,
) -> tuple[list[ChunkTask], dict[str, list[dict[str, Any]]]]:
    """Numbers chunks over the inputs in order: an indexed input's regions become tasks, an unindexed input is streamed now.

    ``stream(path, first_chunk)`` reads an unindexed input into chunks numbered from
    ``first_chunk`` and returns their results (by path here). One numbering serves the
    Dask graph, the batch parts and the streamed inputs, so a dataset's chunk files do
    not depend on how it was computed.
    """
    tasks: list[ChunkTask] = []
    streamed: dict[str, list[dict[str, Any]]] = {}
    next_chunk = 0
    for path, source, regions in zip(paths, sources, plans):
        if regions is None:
            streamed[path] = stream(path, next_chunk)
            next_chunk += len(streamed[path])
        else:
            tasks += [ChunkTask(path, region, next_chunk + i, out, len(source.samples), fasta, contig_style, min_info, rows)
                      for i, (region, rows) in enumerate(regions)]
            next_chunk += len(regions)
    return tasks, streamed


def _needs_index(path: str, first_chunk: int) -> list[dict[str, Any]]:
    """A batch ingest cuts every input by region: an unindexed one is refused."""
    raise InputError(f"{path}: no index (.tbi/.csi), so it cannot be split into parts; index it with 'bcftools index {path}'")


def _records_by_contig(results: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Records read per source contig over ``results`` (parts from an older genofed carry none)."""
    read: dict[str, int] = {}
    for result in results:
        for contig, number in result.get("records_by_contig", {}).items():
            read[contig] = read.get(contig, 0) + int(number)
    return read


def _one_or_by_input(values: dict[str, Any]) -> Any:
    """One value when every input gives the same, else the value of each input (as ``inputs.vcf`` lists several)."""
    distinct = set(values.values())
    return next(iter(distinct)) if len(distinct) == 1 else values


def _sum_counts(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ingest counters summed over ``results``."""
    counts: dict[str, Any] = empty_counts()
    for result in results:
        counts = dict(add_counts(counts, result["counts"]))
    counts["dropped"] = dict(counts["dropped"])
    return counts


def ingest_part(
    vcf: str | Path | Sequence[str | Path],
    *,
    parts_dir: str | Path,
    part: int,
    parts: int,
    fasta: str | Path | None = None,
    chunk_size: int | str = 5_000_000,
    contig_style: str = "chr",
    scheduler: str = "threads",
    workers: int | None = None,
    min_info: float | None = None,
) -> dict[str, Any]:
    """One task of a batch (array job) ingest: regions ``part``, ``part + parts``, ... into ``parts_dir``.

    Every task writes its chunk files and ``results/part-NNNNN.json`` into the shared
    ``parts_dir``; :func:`ingest` with ``parts_dir=`` and the same inputs then assembles
    the dataset. Regions are numbered over all inputs as :func:`ingest` numbers them. A
    task run again overwrites its own files only.

    Raises:
        InputError: an input has no index, or the inputs do not make one dataset.
        ConfigurationError: ``part`` is not in ``0..parts-1``.
    """
    if not 0 <= part < parts:
        raise ConfigurationError(f"part {part} of {parts}: expected 0 <= part < parts")
    parts_path = Path(parts_dir)
    paths, sources = _open_inputs(vcf, min_info)
    plans = _plan_regions(paths, sources, parse_chunk_size(chunk_size), contig_style)
    with contextlib.nullcontext() if fasta is None else open_reference(fasta) as reference:
        tasks, _ = _chunk_plan(paths, sources, plans, str(parts_path), fasta=None if reference is None else reference.files,
                               contig_style=contig_style, stream=_needs_index, min_info=min_info)
        mine = [task for task in tasks if task.chunk_index % parts == part]
        (parts_path / PARTS_RESULTS).mkdir(parents=True, exist_ok=True)
        results = _compute(mine, scheduler=_parse_scheduler(scheduler, workers), workers=workers, progress=False) if mine else []
    record = {"part": part, "parts": parts, "num_regions": len(tasks), "results": results}
    target = parts_path / PARTS_RESULTS / f"part-{part:05d}.json"
    with outputs.atomic_file(target, force=True) as tmp:
        Path(tmp).write_text(json.dumps(record, default=int) + "\n")
    return record


def _collect_parts(parts_dir: Path, tasks: list[ChunkTask], tmp: Path) -> list[dict[str, Any]]:
    """The results of every :func:`ingest_part` task; their chunk files are moved into ``tmp``."""
    results: list[dict[str, Any]] = []
    for path in sorted((parts_dir / PARTS_RESULTS).glob("part-*.json")):
        record = json.loads(path.read_text())
        if record["num_regions"] != len(tasks):
            raise InputError(f"{path}: written for {record['num_regions']} regions, the input has {len(tasks)} now; run the ingest parts again")
        results.extend(record["results"])
    found = sorted(r["chunk_index"] for r in results)
    expected = sorted(task.chunk_index for task in tasks)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        raise InputError(f"{parts_dir}: the ingest parts cover {len(found)} of {len(tasks)} regions (missing chunks {missing[:5]}); run the missing parts")
    for result in results:
        if result["entry"] is not None:
            for folder in ("variants", "genotypes"):
                (tmp / folder).mkdir(exist_ok=True)
                name = f"{result['entry']['name']}.parquet"
                os.replace(parts_dir / folder / name, tmp / folder / name)
    return results


def _check_reference_contigs(reference: Reference, contigs: list[Region], vcf: str) -> None:
    """Fails before any work when a region's contig is not in the FASTA."""
    seen: set[str] = set()
    for region in contigs:
        if region.contig in seen:
            continue
        seen.add(region.contig)
        try:
            reference.resolve_contig(region.contig)
        except InputError as error:
            raise type(error)(
                f"{vcf}: records on contig {region.contig!r} (first region {region}) but {reference.path} has no such contig ({error}); "
                "give the FASTA of the genome build the VCF was called on"
            ) from error


def _genome_assembly(given: str | None, in_headers: Sequence[tuple[str, str | None]]) -> str | None:
    """The assembly a dataset records: ``--assembly``, else the one the inputs' headers name; all must agree.

    Args:
        in_headers: ``(path, assembly its header names or None)`` per input.

    Raises:
        ConfigurationError: ``given`` is not a known assembly, or a header names another one.
    """
    given = check_assembly(given, source="--assembly")
    named = [(vcf, name) for vcf, name in in_headers if name is not None]
    if not named:
        return given
    first, in_header = named[0]
    for vcf, name in named[1:]:
        if name != in_header:
            raise ConfigurationError(
                f"{vcf}: the header's ##reference/##contig lines name {name} but those of {first} name {in_header}; all inputs "
                "must be on one assembly (lift one over first)"
            )
    if given is not None and given != in_header:
        raise ConfigurationError(
            f"{first}: --assembly {given} but the header's ##reference/##contig lines name {in_header}; give the assembly "
            "the positions are on (lift the VCF over first if it is the other one)"
        )
    return in_header


def ingest(
    vcf: str | Path | Sequence[str | Path],
    *,
    out: str | Path,
    fasta: str | Path | None = None,
    phenotypes: str | Path | None = None,
    chunk_size: int | str = 5_000_000,
    scheduler: str = "threads",
    workers: int | None = None,
    contig_style: str = "chr",
    assembly: str | None = None,
    min_info: float | None = None,
    missing_code: float | None = PLINK_MISSING_CODE,
    force: bool = False,
    progress: bool = False,
    parts_dir: str | Path | None = None,
    input_format: str = "vcf",
    sample: str | Path | None = None,
) -> dict[str, Any]:
    """Harmonizes ``vcf`` (one file or several) into a dataset at ``out`` and returns the ingest report.

    Args:
        vcf: VCF, BGZF VCF or BCF; with a .tbi/.csi index the work is split by region.
            Several files (a sequence; a path with ``{chrom}`` stands for the files that
            exist for chromosomes 1..22, X, Y, MT) make one dataset: the same samples in
            the same order, each contig from one file only (:mod:`pipeline.ingest_inputs`).
        out: dataset folder to create (atomically).
        fasta: reference FASTA to check REF against (swap, strand flip, drop).
        phenotypes: TSV keyed by IID to match samples with.
        chunk_size: bases per chunk (``5Mb``, ``500kb``, ``1000000``).
        scheduler: ``threads`` (the library's default; ``genofed ingest`` uses ``processes``, which scale over
            cores where threads share Python's lock), ``processes``, ``synchronous``, a dask.distributed address, or
            ``slurm``/``pbs`` (dask-jobqueue; see :mod:`pipeline.cluster`).
        workers: local scheduler workers (default: one per core this process may use, :func:`pipeline.cluster.available_cores`).
        contig_style: ``chr``, ``nochr`` or ``keep``.
        assembly: the genome assembly the positions are on (``GRCh37``/``GRCh38``); default
            what the VCF header names (:func:`pipeline.assembly.assembly_from_header`), else
            not recorded. Recorded in ``dataset.json``; a federated GWAS publishes it.
        min_info: drop imputed variants whose INFO/R2, DR2 or INFO score is below it
            (:mod:`pipeline.harmonize.imputation`); every input must declare such a key.
        missing_code: the number that means missing in the phenotype table (PLINK's -9;
            None: none).
        force: replace an existing ``out``.
        progress: show a progress bar on stderr.
        parts_dir: assemble the dataset from the chunks :func:`ingest_part` tasks wrote
            there (a batch array job) instead of computing them.
        input_format: ``vcf``; ``pfile`` or ``bfile`` (``vcf`` then names PLINK 2 / PLINK 1
            fileset prefixes) or ``bgen``: read in one pass into the same record blocks and
            harmonized alike (:mod:`pipeline.io.plink`, :mod:`pipeline.io.bgen`).
        sample: a BGEN input's Oxford .sample file (needed when the .bgen holds no sample IDs).

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
    paths, sources = _open_inputs(vcf, min_info, input_format, sample)
    fasta_path = None if fasta is None else str(fasta)
    first = paths[0]
    samples = sources[0].samples
    if not samples:
        raise VcfFormatError(
            f"{first}: no sample columns (a sites-only VCF: '#CHROM' line ends at INFO or FORMAT), so there are no genotypes "
            "to ingest; give the VCF with the samples' genotypes"
        )
    pheno_table = None if phenotypes is None else read_phenotypes(phenotypes, missing_code=missing_code)
    samples_table, samples_summary = match_samples(samples, pheno_table, vcf=first, phenotype_source=str(phenotypes))
    genome_assembly = _genome_assembly(assembly, [(path, source.header_assembly) for path, source in zip(paths, sources)])
    # opened (and indexed, when it must be) once, before any work: every task reads it through reference.files
    with (contextlib.nullcontext() if fasta_path is None else open_reference(fasta_path)) as reference, \
            _disk_full_is_an_error(out_path, describe_inputs(paths)), outputs.atomic_directory(out_path, force=force) as tmp:
        fasta_files = None if reference is None else reference.files
        plans = _plan_regions(paths, sources, size, contig_style)
        if reference is not None:
            for path, plan in zip(paths, plans):
                if plan is not None:
                    _check_reference_contigs(reference, [region for region, _ in plan], path)

        def stream(path: str, first_chunk: int) -> list[dict[str, Any]]:
            log.info("%s has no index: streaming it in one pass", path)
            return _stream(path, tmp, first_chunk=first_chunk, num_samples=len(samples), chunk_size=size, reference=reference,
                           contig_style=contig_style, progress=progress, min_info=min_info)

        tasks, streamed = _chunk_plan(paths, sources, plans, str(tmp), fasta=fasta_files, contig_style=contig_style, stream=stream,
                                      min_info=min_info)
        if streamed:  # the contigs of the streamed inputs are known now
            refuse_shared_contigs([(path, [r.contig for r, _ in plan] if plan is not None else list(_records_by_contig(streamed[path])))
                                   for path, plan in zip(paths, plans)], contig_style)
        if not tasks:
            computed = []
        elif parts_dir is not None:
            computed = _collect_parts(Path(parts_dir), tasks, tmp)
        else:
            computed = _compute(tasks, scheduler=scheduler, workers=workers, progress=progress)
        input_of = {task.chunk_index: task.vcf for task in tasks}
        by_input = {path: list(streamed.get(path, [])) for path in paths}
        for result in computed:
            by_input[input_of[result["chunk_index"]]].append(result)
        results = sorted((r for rs in by_input.values() for r in rs), key=lambda r: r["chunk_index"])
        for path, source in zip(paths, sources):
            if isinstance(source, VcfSource) and source.has_index:
                _check_index_counts(source, by_input[path])
        entries = [r["entry"] for r in results if r["entry"] is not None]
        # duplicate variant keys (pipeline.harmonize.duplicates): refuse before the rename
        input_of_contig = {canonical_contig(contig, contig_style): path for path, rs in by_input.items() for contig in _records_by_contig(rs)}
        refuse_duplicate_variants(tmp, entries, vcf=first if len(paths) == 1 else input_of_contig, contig_style=contig_style, fasta=fasta_files)
        counts = _sum_counts(results)
        counts_by_input = {path: _sum_counts(rs) for path, rs in by_input.items()}
        report: dict[str, Any] = {
            "genofed_version": __version__,
            "inputs": {"vcf": first if len(paths) == 1 else paths, "fasta": fasta_path, "phenotypes": None if phenotypes is None else str(phenotypes),
                       "indexed": all(source.has_index for source in sources), "format": input_format,
                       **({} if sample is None else {"sample": str(sample)})},
            "settings": {"chunk_size": size, "contig_style": contig_style, "scheduler": scheduler, "workers": workers,
                         "genome_assembly": genome_assembly, "min_info": min_info, "missing_code": missing_code},
            "imputation_key": _one_or_by_input({path: source.imputation_key for path, source in zip(paths, sources)}),
            **counts,
            "records_read_by_input": {path: part["records_read"] for path, part in counts_by_input.items()},
            "variants_written": sum(int(e["num_variants"]) for e in entries),
            "samples": samples_summary,
            "chunks": len(entries),
            "tasks": len(tasks),
        }
        write_metadata(
            tmp,
            samples=samples_table,
            chunks=entries,
            extra={"contig_style": contig_style, "reference_checked": fasta_path is not None, "report": REPORT_NAME,
                   **({} if genome_assembly is None else {"genome_assembly": genome_assembly})},
        )
        for path in paths:
            _check_genotypes(path, samples, counts_by_input[path])
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
