"""Splits raw VCF records into biallelic ones, with the semantics of ``bcftools norm -m-``.

Each ALT of a record becomes its own record. A call's alleles are recoded per ALT: the
split record's ALT becomes 1, every other ALT becomes 0 (REF), missing alleles stay
missing -- exactly what ``bcftools norm -m-`` writes into GT (``1/2`` becomes ``1/0`` for
the first ALT and ``0/1`` for the second). FORMAT/DS (Number=A) of a split record is the
DS of its ALT. Records without ALT ('.') or with symbolic alleles (``<DEL>``, ``*``,
breakends) cannot be stored as biallelic dosages and are dropped, counted by reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import VcfFormatError
from pipeline.harmonize.batch import ALLELE_ABSENT, VariantBatch

if TYPE_CHECKING:
    from pipeline.io.vcf import RecordBlock

_BASES = frozenset("ACGTN")


def is_symbolic(allele: str) -> bool:
    """True for alleles that are not a plain base sequence (``<DEL>``, ``*``, breakends, ``.``)."""
    return not allele or not set(allele) <= _BASES


def _record_locus(block: RecordBlock, i: int) -> str:
    where = f"{block.contig}:{int(block.position[i])}"
    if block.line_number is not None:
        where += f" (line {int(block.line_number[i])})"
    return where


def _haploid_ds_scale(allele_index: np.ndarray) -> np.ndarray:
    """Per (record, sample) factor putting DS on the stored 0..2 scale: 2 for called haploids."""
    slots = (allele_index != ALLELE_ABSENT).sum(axis=2)
    called = (allele_index >= 0).all(axis=2, where=allele_index != ALLELE_ABSENT)
    return np.where((slots == 1) & called, np.float32(2.0), np.float32(1.0))


def split_block(block: RecordBlock) -> VariantBatch:
    """One biallelic row per (record, ALT), in record order then ALT order.

    Raises:
        VcfFormatError: a GT refers to an allele the record does not have.
    """
    n_records = int(block.position.shape[0])
    allele_index = np.asarray(block.allele_index, dtype=np.int8)
    if allele_index.ndim != 3:
        allele_index = allele_index.reshape(n_records, -1, 1)
    n_alts = np.array([len(a) for a in block.alts], dtype=np.int16)
    if n_records:
        highest = allele_index.max(axis=(1, 2)).astype(np.int16) if allele_index.size else np.full(n_records, -1, np.int16)
        bad = np.flatnonzero(highest > n_alts)
        if bad.size:
            i = int(bad[0])
            raise VcfFormatError(
                f"{block.source}: record {_record_locus(block, i)} has a GT allele index {int(highest[i])} but only "
                f"{int(n_alts[i])} ALT allele(s); fix the record's GT or ALT (bcftools view can show it)"
            )
    rows: list[tuple[int, int]] = []  # (record, alt number 1..)
    dropped = {"no_alt_allele": 0, "symbolic_allele": 0}
    for i, alts in enumerate(block.alts):
        if not alts:
            dropped["no_alt_allele"] += 1
            continue
        ref_symbolic = is_symbolic(block.ref[i].upper())
        for k, alt in enumerate(alts, start=1):
            if ref_symbolic or is_symbolic(alt.upper()):
                dropped["symbolic_allele"] += 1
            else:
                rows.append((i, k))
    record = np.array([r for r, _ in rows], dtype=np.int64)
    alt_number = np.array([k for _, k in rows], dtype=np.int8)
    multi = n_alts[record] > 1 if rows else np.zeros(0, bool)

    identity = record.size == n_records and bool((n_alts == 1).all())
    source_allele = allele_index if identity else allele_index[record]  # (v, samples, ploidy)
    allele = source_allele
    if multi.any():  # biallelic rows already hold 0/1/-1/-2; recode only the split ones
        allele = source_allele.copy()
        sub = source_allele[multi]
        target = alt_number[multi][:, None, None]
        allele[multi] = np.where(sub == target, np.int8(1), np.where(sub >= 0, np.int8(0), sub))

    ds = None
    if block.ds is not None:
        ds_all = np.asarray(block.ds, dtype=np.float32)
        ds = ds_all[record, :, alt_number.astype(np.int64) - 1] if rows else np.zeros((0, allele.shape[1]), np.float32)
        ds = ds * _haploid_ds_scale(source_allele) if rows else ds
    info_score = None
    if block.info_score is not None:
        info_score = np.asarray(block.info_score, np.float32)[record, alt_number.astype(np.int64) - 1] if rows else np.zeros(0, np.float32)
    position = np.asarray(block.position, dtype=np.int64)[record]
    split_records = int(np.count_nonzero(n_alts > 1))
    empty = np.zeros(len(rows), dtype=bool)
    batch = VariantBatch(
        source=block.source,
        contig=block.contig,
        position=position,
        source_position=position.copy(),
        line_number=None if block.line_number is None else np.asarray(block.line_number, dtype=np.int64)[record],
        record_id=tuple(block.record_id[i] for i in record.tolist()),
        ref=tuple(block.ref[i].upper() for i in record.tolist()),
        alt=tuple(block.alts[i][k - 1].upper() for i, k in rows),
        allele=allele,
        ds=None if ds is None else np.ascontiguousarray(ds, dtype=np.float32),
        split_from_multiallelic=multi,
        swapped=empty,
        strand_flipped=empty.copy(),
        strand_ambiguous=empty.copy(),
        ref_checked=empty.copy(),
        info_score=info_score,
    )
    return batch.counted(
        records_read=n_records,
        multiallelic_records_split=split_records,
        records_from_split=int(np.count_nonzero(multi)),
        dosages_from_gp=block.records_ds_from_gp,
        dropped=dropped,
    )


def split_multiallelic() -> Callable[[RecordBlock], VariantBatch]:
    """The first harmonization step: raw record block -> biallelic :class:`VariantBatch`."""
    return split_block
