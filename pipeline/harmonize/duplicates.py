"""Duplicate variants: a key is stored at most once in a dataset, or the ingest is refused.

Rule (refuse, never merge): after harmonization -- contig renaming to ``--contig-style``,
multi-allelic splitting (``bcftools norm -m-``), allele trimming and, with a FASTA, the
REF check (swap, strand flip) -- every variant key ``contig:pos:ref:alt`` must occur
once in the whole dataset, within a chunk and across chunks. Two records that end up
with the same key are:

- the same record twice (``bcftools norm -d exact`` keeps the first);
- the same locus under both contig conventions, ``chr1`` and ``1``, ``chrM`` and ``MT``
  (different source contigs, hence different regions and chunks, one output contig);
- a split multi-allelic record next to a biallelic record with the same resulting ALT;
- padded representations that trim to the same variant (``GA>GG`` at 99 and ``A>G`` at
  100), or, with a FASTA, ``A>G`` and ``G>A`` at a site whose reference base is ``A``.

Stored twice, such a variant is counted twice: the census would sum more calls than the
site has samples (negative "not typed", call rate above 1, allele number above 2N),
which the coordinator can only catch when no other site's samples hide the excess. So
:func:`refuse_duplicate_variants` fails the ingest with one line naming the file, the
variant, both input records (``contig:pos REF ALT`` as written, with the line when
known) and the fix, before the temporary folder is renamed into place.

Why not merge: ``bcftools norm -d`` keeps the first record whatever the genotypes of the
others, and ``plink2 --rm-dup`` keeps the first only where the copies' genotypes agree and
errors otherwise (its default mode, ``error``). Neither choice is safe to make silently
for a site: two records of one variant with different calls mean the file was merged
from two call sets or two contig conventions, and which copy is right is the site's
decision. The user removes or merges the copies with those tools and ingests again.

The check reads only the ``variant_id`` column of every chunk written and finds repeats
with one vectorized pass (:func:`pipeline.harmonize.variant_ids.duplicate_pairs`); the
input is read again only to describe the records of a refused file.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import GenofedError, InputError
from pipeline.harmonize.chain import harmonizer
from pipeline.harmonize.contigs import canonical_contig, contig_aliases
from pipeline.harmonize.variant_ids import (
    duplicate_pairs,
    parse_variant_id,
    variant_ids,
)
from pipeline.io.fasta import ReferenceFiles
from pipeline.io.vcf import RecordBlock, Region, open_vcf, read_blocks

__all__ = ["DuplicateVariantError", "dataset_variant_ids", "describe_record", "refuse_duplicate_variants"]

_DETAIL_COLUMNS = ["variant_id", "source_position", "split_from_multiallelic"]


class DuplicateVariantError(InputError):
    """Two input records harmonize to the same variant key."""


def dataset_variant_ids(root: Path, entries: Sequence[dict[str, Any]]) -> pa.ChunkedArray:
    """The ``variant_id`` column of every chunk in ``entries`` (dataset.json order), read from ``root``."""
    arrays = [pq.read_table(root / "variants" / f"{entry['name']}.parquet", columns=["variant_id"]).column(0) for entry in entries]
    chunks = [chunk for array in arrays for chunk in array.chunks]
    return pa.chunked_array(chunks, pa.string())


def describe_record(block: RecordBlock, i: int) -> str:
    """``contig:pos REF ALT[,ALT]`` of record ``i`` as the input writes it (and its line when known)."""
    alts = ",".join(block.alts[i]) or "."
    where = f"{block.contig}:{int(block.position[i])} {block.ref[i]} {alts}"
    if block.line_number is not None:
        where += f" (line {int(block.line_number[i])})"
    return where


def _one_record(block: RecordBlock, i: int) -> RecordBlock:
    rows = slice(i, i + 1)
    return dataclasses.replace(
        block,
        position=block.position[rows],
        line_number=None if block.line_number is None else block.line_number[rows],
        record_id=list(block.record_id[rows]),
        ref=list(block.ref[rows]),
        alts=list(block.alts[rows]),
        allele_index=block.allele_index[rows],
        phased=None if block.phased is None else block.phased[rows],
        ds=None if block.ds is None else block.ds[rows],
        info_score=None if block.info_score is None else block.info_score[rows],
    )


def _blocks_at(vcf: str, contig: str, contig_style: str, positions: set[int]) -> Iterator[RecordBlock]:
    """Blocks of the input holding records at ``positions`` of any source contig named ``contig`` after renaming."""
    source = open_vcf(vcf)
    if not source.has_index:
        for block in read_blocks(vcf, None):
            if canonical_contig(block.contig, contig_style) == contig and positions.intersection(block.position.tolist()):
                yield block
        return
    names = [name for name in dict.fromkeys([*source.contigs, *contig_aliases(contig)])
             if canonical_contig(name, contig_style) == contig]
    for name in names:
        for position in sorted(positions):
            try:
                yield from read_blocks(vcf, Region(name, position, position + 1))
            except (GenofedError, ValueError, OSError, KeyError):
                continue  # a contig name the index does not know


def _source_records(vcf: str, key: str, positions: set[int], *, contig_style: str, fasta: ReferenceFiles | None) -> list[str]:
    """The input records (described) that harmonize to ``key``, in file order."""
    found: list[str] = []
    with contextlib.nullcontext() if fasta is None else fasta.open() as reference:
        harmonize = harmonizer(contig_style=contig_style, reference=reference)
        for block in _blocks_at(vcf, parse_variant_id(key).contig, contig_style, positions):
            for i in np.flatnonzero(np.isin(block.position, list(positions))).tolist():
                try:
                    batch = harmonize(_one_record(block, i))
                except GenofedError:
                    continue
                made = variant_ids(batch.contig, batch.position, batch.ref, batch.alt)
                if key in made:
                    found += [describe_record(block, i)] * made.count(key)
    return found


def _fix(records: list[str], key: str) -> str:
    contigs = {record.split(":", 1)[0] for record in records}
    if len(contigs) > 1:
        return ("the file holds the locus under two contig names; keep one naming (bcftools annotate --rename-chrs) "
                "and drop the copy (bcftools norm -d exact), or split the file by contig")
    if len({record.split(" (line")[0] for record in records}) == 1:
        return "drop the copy with 'bcftools norm -d exact' (or plink2 --rm-dup)"
    return ("normalize and drop the copy with 'bcftools norm -f REF.fa -m -any -d exact' (split multi-allelics, "
            "left-align and trim, then remove duplicates)")


def refuse_duplicate_variants(root: Path, entries: Sequence[dict[str, Any]], *, vcf: str | Mapping[str, str], contig_style: str,
                              fasta: ReferenceFiles | None) -> None:
    """Refuses an ingest whose chunks hold a variant key more than once (see the module docstring).

    Args:
        root: the temporary dataset folder the chunks were written into.
        entries: the chunks' dataset.json entries, in chunk order.
        vcf: the ingest's input, or with several inputs the input of each harmonized
            contig (a contig comes from one input only, so a duplicate's records are in it).
        contig_style, fasta: the ingest's settings (to describe the records).

    Raises:
        DuplicateVariantError: naming the file, the variant key, both input records and the fix.
    """
    ids = dataset_variant_ids(root, entries)
    pairs = duplicate_pairs(ids)
    if not pairs.size:
        return
    first, repeated = (int(row) for row in pairs[0])
    key = str(ids[repeated].as_py())
    rows = _row_details(root, entries, [first, repeated])
    positions = {row["source_position"] for row in rows}
    contig = parse_variant_id(key).contig
    inputs = {contig: vcf} if isinstance(vcf, str) else vcf
    source = inputs.get(contig)
    records = [] if source is None else _source_records(source, key, positions, contig_style=contig_style, fasta=fasta)
    if len(records) < 2:  # not found again (the file changed?): the harmonized rows stand in
        records = [f"{key.split(':')[0]}:{row['source_position']} (source POS; harmonized {key})" for row in rows]
    how = "; one split from a multi-allelic record" if any(row["split_from_multiallelic"] for row in rows) else ""
    more = f"; {len({ids[int(r)].as_py() for r in pairs[:, 1]})} variant(s) are duplicated in all" if len(pairs) > 1 else ""
    raise DuplicateVariantError(
        f"{source or ', '.join(dict.fromkeys(inputs.values()))}: records {records[0]} and {records[1]} are both variant {key} after harmonization "
        f"(--contig-style {contig_style}, split, trim{', REF check' if fasta else ''}{how}){more}; genofed stores each variant "
        f"once and does not pick a copy: {_fix(records[:2], key)}, then run genofed ingest again"
    )


def _row_details(root: Path, entries: Sequence[dict[str, Any]], rows: list[int]) -> list[dict[str, Any]]:
    """The variants-table columns of dataset rows ``rows`` (global indexes over the chunks)."""
    ends = np.cumsum([int(entry["num_variants"]) for entry in entries])
    details = []
    for row in rows:
        chunk = int(np.searchsorted(ends, row, side="right"))
        start = int(ends[chunk - 1]) if chunk else 0
        table = pq.read_table(root / "variants" / f"{entries[chunk]['name']}.parquet", columns=_DETAIL_COLUMNS)
        details.append({name: table.column(name)[row - start].as_py() for name in _DETAIL_COLUMNS})
    return details
