"""Minimal allele representation: the same variant gets the same key whatever its padding.

Like ``bcftools norm`` without ``--fasta`` realignment (and vt's normalize): remove the
common suffix while both alleles keep at least one base, then the common prefix while
both keep at least one base, moving the position right by the prefix removed. Indels stay
left-anchored on one shared base; MNPs padded with shared bases shrink to their core
(``ACG>ATG`` at 10 becomes ``C>T`` at 11). Records whose ALT equals REF carry no variant
and are dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from pipeline.harmonize.batch import VariantBatch


def trim_alleles(ref: str, alt: str, position: int) -> tuple[str, str, int]:
    """Minimal (ref, alt, position) of one biallelic variant."""
    while len(ref) > 1 and len(alt) > 1 and ref[-1] == alt[-1]:
        ref, alt = ref[:-1], alt[:-1]
    start = 0
    while len(ref) - start > 1 and len(alt) - start > 1 and ref[start] == alt[start]:
        start += 1
    return ref[start:], alt[start:], position + start


def minimal_representation() -> Callable[[VariantBatch], VariantBatch]:
    """Step trimming every row's alleles; counts ``trimmed`` and drops ``alt_equals_ref``."""

    def step(batch: VariantBatch) -> VariantBatch:
        refs, alts = list(batch.ref), list(batch.alt)
        position = batch.position.copy()
        trimmed = 0
        same = np.zeros(batch.num_variants, dtype=bool)
        for i, (ref, alt) in enumerate(zip(refs, alts)):
            if ref == alt:
                same[i] = True
                continue
            if len(ref) == 1 and len(alt) == 1:
                continue
            new_ref, new_alt, new_position = trim_alleles(ref, alt, int(position[i]))
            if new_ref != ref or new_alt != alt:
                refs[i], alts[i], position[i] = new_ref, new_alt, new_position
                trimmed += 1
        out = dataclasses.replace(batch, ref=tuple(refs), alt=tuple(alts), position=position)
        return out.select(~same).counted(trimmed=trimmed, dropped={"alt_equals_ref": int(same.sum())})

    return step
