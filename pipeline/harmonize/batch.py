"""The record batch that harmonization steps pass along: biallelic, vectorized, immutable.

A :class:`VariantBatch` holds one biallelic record per row with its genotypes kept as
allele indexes (0 REF, 1 ALT, -1 missing allele, -2 absent slot of a haploid call), so a
REF/ALT swap is an index recode and ploidy survives until the final conversion to
dosages (:func:`to_block`). Steps never mutate a batch; they return a new one with its
counters increased, so the same step can run in any Dask task without shared state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.dataset import Block
from pipeline.harmonize.variant_ids import variant_ids

ALLELE_MISSING = -1
ALLELE_ABSENT = -2

_FLAG_FIELDS = ("split_from_multiallelic", "swapped", "strand_flipped", "strand_ambiguous", "ref_checked")


@dataclass(frozen=True)
class VariantBatch:
    """Biallelic records of one contig with their calls as allele indexes.

    Attributes:
        source: the input file, for messages.
        contig: contig name (raw until the contig step renames it).
        position: int64 (v,), 1-based position of the first base of ``ref``.
        source_position: int64 (v,), POS of the source record.
        line_number: int64 (v,) source line when known (streamed text), else None.
        record_id: (v,) source ID, None for '.'.
        ref, alt: (v,) allele strings (uppercase).
        allele: int8 (v, samples, ploidy): 0 REF, 1 ALT, -1 missing, -2 absent.
        ds: float32 (v, samples) FORMAT/DS of this ALT (NaN missing), or None.
        info_score: float32 (v,) imputation quality of this ALT (NaN where the record
            has none), or None when the input names no quality key.
        split_from_multiallelic, swapped, strand_flipped, strand_ambiguous, ref_checked:
            bool (v,) flags of the variants schema.
        counts: what the steps did so far (report counters), immutable.
    """

    source: str
    contig: str
    position: np.ndarray
    source_position: np.ndarray
    line_number: np.ndarray | None
    record_id: tuple[str | None, ...]
    ref: tuple[str, ...]
    alt: tuple[str, ...]
    allele: np.ndarray
    ds: np.ndarray | None
    split_from_multiallelic: np.ndarray
    swapped: np.ndarray
    strand_flipped: np.ndarray
    strand_ambiguous: np.ndarray
    ref_checked: np.ndarray
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    info_score: np.ndarray | None = None

    @property
    def num_variants(self) -> int:
        return int(self.position.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.allele.shape[1])

    def locus(self, i: int) -> str:
        """``contig:pos`` (and the line when known) of row ``i``, for messages."""
        where = f"{self.contig}:{int(self.source_position[i])}"
        if self.line_number is not None:
            where += f" (line {int(self.line_number[i])})"
        return where

    def counted(self, **increments: int | Mapping[str, int]) -> VariantBatch:
        """The same batch with its counters increased (zero increments still create the key)."""
        return dataclasses.replace(self, counts=add_counts(self.counts, increments))

    def select(self, keep: np.ndarray) -> VariantBatch:
        """The rows where ``keep`` is true, in order."""
        keep = np.asarray(keep, dtype=bool)
        if keep.all():
            return self
        rows = np.flatnonzero(keep)
        pick = lambda values: tuple(values[i] for i in rows)  # noqa: E731
        return dataclasses.replace(
            self,
            position=self.position[rows],
            source_position=self.source_position[rows],
            line_number=None if self.line_number is None else self.line_number[rows],
            record_id=pick(self.record_id),
            ref=pick(self.ref),
            alt=pick(self.alt),
            allele=self.allele[rows],
            ds=None if self.ds is None else self.ds[rows],
            info_score=None if self.info_score is None else self.info_score[rows],
            **{name: getattr(self, name)[rows] for name in _FLAG_FIELDS},
        )


def add_counts(counts: Mapping[str, int], increments: Mapping[str, int | Mapping[str, int]]) -> Mapping[str, int]:
    """Adds ``increments`` to ``counts`` (nested dicts, e.g. drop reasons, add per key)."""
    merged: dict[str, object] = dict(counts)
    for key, value in increments.items():
        if isinstance(value, Mapping):
            merged[key] = dict(add_counts(merged.get(key, {}), value))  # type: ignore[arg-type]
        else:
            merged[key] = int(merged.get(key, 0)) + int(value)  # type: ignore[call-overload]
    return MappingProxyType(merged)  # type: ignore[arg-type]


def _slot_counts(allele: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ALT count, ploidy, any missing) per call, looping over the few ploidy slots.

    Element-wise passes over (v, samples) planes are much faster than numpy reductions
    over a last axis of length 2.
    """
    shape = allele.shape[:2]
    alt_count = np.zeros(shape, dtype=np.int8)
    ploidy = np.zeros(shape, dtype=np.int8)
    missing = np.zeros(shape, dtype=bool)
    for slot in range(allele.shape[2]):
        plane = allele[:, :, slot]
        alt_count += plane == 1
        ploidy += plane != ALLELE_ABSENT
        missing |= plane == ALLELE_MISSING
    return alt_count, ploidy, missing


def _pair_table() -> np.ndarray:
    """Dosage of every two-slot call, indexed by the call's two int8 slots read as one uint16 (the general rule for all 65,536)."""
    pairs = np.arange(2**16, dtype=np.uint16).view(np.int8).reshape(1, -1, 2)
    return _general_dosage(pairs)[0]


_LOOKUP_CELLS = 1 << 16
"""Calls looked up at a time: the uint16 indexes numpy widens stay in cache."""


def call_dosage(allele: np.ndarray) -> np.ndarray:
    """ALT counts (v, samples) int8 from allele indexes; -1 where any allele is missing.

    Haploid calls (one allele slot) are stored as 0/2, as plink does; calls of higher
    ploidy count their ALT alleles. Two-slot int8 arrays (the common case) read each
    call's two bytes as one uint16 and look it up in a table built from the general
    rule, a cache-sized slice at a time (five times faster than a 16-entry table indexed
    by arithmetic on the slots, whose intp index filled memory).
    """
    if allele.ndim == 3 and allele.shape[2] == 2 and allele.dtype == np.int8:
        pairs = np.ascontiguousarray(allele).view(np.uint16)[:, :, 0]
        dosage = np.empty(pairs.shape, np.int8)
        rows = max(1, _LOOKUP_CELLS // max(1, pairs.shape[1]))
        for start in range(0, pairs.shape[0], rows):
            np.take(_PAIR_DOSAGE, pairs[start:start + rows], out=dosage[start:start + rows], mode="clip")
        return dosage
    return _general_dosage(allele)


def _general_dosage(allele: np.ndarray) -> np.ndarray:
    alt_count, ploidy, missing = _slot_counts(allele)
    dosage = np.where(ploidy == 1, alt_count * 2, alt_count).astype(np.int8, copy=False)
    dosage[missing | (ploidy == 0)] = -1
    return dosage


_PAIR_DOSAGE = _pair_table()


def effective_ploidy(allele: np.ndarray) -> np.ndarray:
    """Ploidy on the stored scale (v, samples): haploid counts as 2 (stored 0/2), else slots used."""
    _, ploidy, _ = _slot_counts(allele)
    return np.where(ploidy <= 2, 2, ploidy).astype(np.float32)


def variant_table(batch: VariantBatch) -> pa.Table:
    """The variants table of the batch (schemas/variants.json)."""
    position = batch.position.astype(np.int64)
    columns = {
        "variant_id": pa.array(variant_ids(batch.contig, position, batch.ref, batch.alt), pa.string()),
        "chromosome": pa.array([batch.contig] * batch.num_variants, pa.string()),
        "base_pair_location": pa.array(position, pa.int64()),
        "ref": pa.array(batch.ref, pa.string()),
        "alt": pa.array(batch.alt, pa.string()),
        "original_id": pa.array(batch.record_id, pa.string()),
        "info_score": pa.array(
            np.full(batch.num_variants, np.nan, np.float32) if batch.info_score is None else batch.info_score,
            pa.float32(), mask=np.isnan(batch.info_score) if batch.info_score is not None else np.ones(batch.num_variants, bool)),
        "source_position": pa.array(batch.source_position.astype(np.int64), pa.int64()),
        **{name: pa.array(getattr(batch, name), pa.bool_()) for name in _FLAG_FIELDS},
    }
    return pa.table(columns, schema=schemas.schema("variants"))


def to_block(batch: VariantBatch) -> Block:
    """Converts a harmonized batch into the dataset's dense block (dosages, variant table)."""
    return Block(variants=variant_table(batch), call_dosage=call_dosage(batch.allele), dosage=batch.ds)


def in_position_order(blocks: list[Block], *, num_samples: int) -> list[Block]:
    """The blocks of one chunk in position order: as they are when already sorted (no copy), else joined and sorted."""
    positions = [block.variants.column("base_pair_location").to_numpy() for block in blocks if block.num_variants]
    joined = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    if joined.size < 2 or not (np.diff(joined) < 0).any():
        return [block for block in blocks if block.num_variants]
    return [concat_blocks(blocks, num_samples=num_samples)]


def concat_blocks(blocks: list[Block], *, num_samples: int) -> Block:
    """Joins the blocks of one chunk, sorted by position (trimming may move a variant right)."""
    if not blocks:
        return Block(schemas.schema("variants").empty_table(), np.zeros((0, num_samples), np.int8), None)
    variants = pa.concat_tables([b.variants for b in blocks])
    calls = np.concatenate([b.call_dosage for b in blocks])
    has_dosage = [b.dosage is not None for b in blocks]
    if all(has_dosage):
        dosage: np.ndarray | None = np.concatenate([b.dosage for b in blocks])  # type: ignore[misc]
    elif any(has_dosage):
        dosage = np.concatenate([b.dosage if b.dosage is not None else np.full(b.call_dosage.shape, np.nan, np.float32) for b in blocks])
    else:
        dosage = None
    position = variants.column("base_pair_location").to_numpy()
    if position.size > 1 and (np.diff(position) < 0).any():
        order = np.argsort(position, kind="stable")
        variants = variants.take(pa.array(order))
        calls = calls[order]
        dosage = None if dosage is None else dosage[order]
    return Block(variants=variants.combine_chunks(), call_dosage=calls, dosage=dosage)
