"""REF against the reference FASTA: keep, swap REF/ALT, flip strand, or drop.

For each biallelic (already trimmed) variant at ``position``:

- REF equals the FASTA bases: kept (``ref_checked``).
- ALT equals the FASTA bases (SNPs and indels): REF/ALT swapped, calls recoded (each
  allele 0 <-> 1, so a dosage d becomes 2 - d, ploidy - d in general) and DS becomes
  2 - DS (``swapped``).
- SNPs only: the complement of REF equals the FASTA base -> alleles complemented
  (``strand_flipped``); the complement of ALT equals it -> complemented and swapped.
  A/T and C/G SNPs cannot be told apart from a flip: they are never flipped, only kept
  or swapped assuming the forward strand, and flagged ``strand_ambiguous``.
- Anything else is dropped: ``ref_mismatch``, or ``position_outside_reference`` when
  the alleles run past the contig's end.

A contig missing from the FASTA is an error, not a drop: the FASTA is the wrong build or
the wrong file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import FastaError
from pipeline.harmonize.batch import VariantBatch, effective_ploidy

if TYPE_CHECKING:
    from pipeline.io.fasta import Reference

_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
_AMBIGUOUS_PAIRS = frozenset({("A", "T"), ("T", "A"), ("C", "G"), ("G", "C")})


def complement(allele: str) -> str:
    """Base-wise complement (no reversal: used for single bases)."""
    return allele.translate(_COMPLEMENT)


def is_strand_ambiguous(ref: str, alt: str) -> bool:
    """A/T or C/G SNP: its complement is itself with REF and ALT exchanged."""
    return (ref, alt) in _AMBIGUOUS_PAIRS


def swap_alleles(batch: VariantBatch, rows: np.ndarray) -> VariantBatch:
    """Exchanges REF and ALT on ``rows``: alleles 0 <-> 1 in the calls, DS -> ploidy - DS."""
    rows = np.asarray(rows, dtype=bool)
    if not rows.any():
        return batch
    allele = batch.allele.copy()
    sub = allele[rows]
    allele[rows] = np.where(sub >= 0, 1 - sub, sub).astype(np.int8)
    ds = batch.ds
    if ds is not None:
        ds = ds.copy()
        ds[rows] = effective_ploidy(batch.allele[rows]) - ds[rows]
    ref = tuple(a if r else b for r, a, b in zip(rows, batch.alt, batch.ref))
    alt = tuple(b if r else a for r, a, b in zip(rows, batch.alt, batch.ref))
    return dataclasses.replace(batch, allele=allele, ds=ds, ref=ref, alt=alt, swapped=batch.swapped ^ rows)


def flag_strand_ambiguous() -> Callable[[VariantBatch], VariantBatch]:
    """Step flagging A/T and C/G SNPs (with or without a FASTA); counts ``strand_ambiguous``."""

    def step(batch: VariantBatch) -> VariantBatch:
        flags = np.array([is_strand_ambiguous(r, a) for r, a in zip(batch.ref, batch.alt)], dtype=bool)
        return dataclasses.replace(batch, strand_ambiguous=flags).counted(strand_ambiguous=int(flags.sum()))

    return step


def _fasta_contig(reference: Reference, batch: VariantBatch) -> str:
    try:
        return reference.resolve_contig(batch.contig)
    except FastaError as error:
        fasta = getattr(reference, "path", "the reference FASTA")
        raise FastaError(
            f"{batch.source}: record {batch.locus(0)}: contig {batch.contig!r} is not in {fasta} ({error}); "
            "give the FASTA of the genome build the VCF was called on"
        ) from error


def check_reference(reference: Reference) -> Callable[[VariantBatch], VariantBatch]:
    """Step checking REF against ``reference`` (see the module docstring for the rules)."""

    def step(batch: VariantBatch) -> VariantBatch:
        n = batch.num_variants
        if n == 0:
            return batch.counted(swapped=0, strand_flipped=0, ref_checked=0, dropped={"ref_mismatch": 0, "position_outside_reference": 0})
        contig = _fasta_contig(reference, batch)
        length = int(reference.contigs[contig])
        span = np.array([max(len(r), len(a)) for r, a in zip(batch.ref, batch.alt)], dtype=np.int64)
        start0 = int(batch.position.min()) - 1
        end0 = min(int((batch.position - 1 + span).max()), length)
        window = reference.fetch(contig, start0, end0) if end0 > start0 else ""
        swap = np.zeros(n, dtype=bool)
        flip = np.zeros(n, dtype=bool)
        mismatch = np.zeros(n, dtype=bool)
        outside = np.zeros(n, dtype=bool)
        refs, alts = list(batch.ref), list(batch.alt)
        for i, (ref, alt) in enumerate(zip(refs, alts)):
            offset = int(batch.position[i]) - 1 - start0
            if int(batch.position[i]) - 1 + len(ref) > length or int(batch.position[i]) < 1:
                outside[i] = True
                continue
            if window[offset : offset + len(ref)] == ref:
                continue
            if len(ref) == 1 and len(alt) == 1:
                base = window[offset]
                if alt == base:
                    swap[i] = True
                elif is_strand_ambiguous(ref, alt):
                    mismatch[i] = True
                elif complement(ref) == base:
                    flip[i] = True
                elif complement(alt) == base:
                    flip[i] = swap[i] = True
                else:
                    mismatch[i] = True
            elif int(batch.position[i]) - 1 + len(alt) <= length and window[offset : offset + len(alt)] == alt:
                swap[i] = True
            else:
                mismatch[i] = True
        for i in np.flatnonzero(flip):
            refs[i], alts[i] = complement(refs[i]), complement(alts[i])
        flipped = dataclasses.replace(batch, ref=tuple(refs), alt=tuple(alts), strand_flipped=batch.strand_flipped | flip)
        checked = swap_alleles(flipped, swap)
        checked = dataclasses.replace(checked, ref_checked=np.ones(n, dtype=bool))
        keep = ~(mismatch | outside)
        return checked.select(keep).counted(
            swapped=int((swap & keep).sum()),
            strand_flipped=int((flip & keep).sum()),
            ref_checked=int(keep.sum()),
            dropped={"ref_mismatch": int(mismatch.sum()), "position_outside_reference": int(outside.sum())},
        )

    return step
