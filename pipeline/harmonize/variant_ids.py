"""Variant keys: ``contig:position:ref:alt``, the one name every site gives a variant.

Sites agree on a variant by this key alone (the census' key union, GWAS and PCA
selections, training features), so it is built in one place, from harmonized batches
(canonical contig name, minimal alleles, REF checked against the reference), and
parsed back in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError

__all__ = ["VariantKey", "variant_id", "variant_ids", "parse_variant_id", "parse_variant_ids"]


@dataclass(frozen=True)
class VariantKey:
    """The parts of a variant key."""

    contig: str
    position: int
    ref: str
    alt: str


def variant_id(contig: str, position: int, ref: str, alt: str) -> str:
    """The key of one variant."""
    return f"{contig}:{int(position)}:{ref}:{alt}"


def variant_ids(contig: str, positions: Sequence[int] | np.ndarray, refs: Sequence[str], alts: Sequence[str]) -> list[str]:
    """The keys of a batch of variants on one contig."""
    return [f"{contig}:{p}:{r}:{a}" for p, r, a in zip(np.asarray(positions, np.int64).tolist(), refs, alts)]


def parse_variant_id(text: str) -> VariantKey:
    """The parts of ``contig:position:ref:alt``.

    Raises:
        InputError: the text is not such a key (names it, and how to make one).
    """
    parts = str(text).split(":")
    try:
        if len(parts) != 4 or not all(parts):
            raise ValueError
        return VariantKey(parts[0], int(parts[1]), parts[2], parts[3])
    except ValueError:
        raise InputError(
            f"variant key {text!r} is not contig:position:ref:alt; re-ingest the dataset with 'genofed ingest'"
        ) from None


def parse_variant_ids(ids: Sequence[str]) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """Contigs, positions (int64), REF and ALT alleles of many keys.

    Raises:
        InputError: a key that is not ``contig:position:ref:alt``.
    """
    keys = [parse_variant_id(v) for v in ids]
    return ([k.contig for k in keys], np.array([k.position for k in keys], np.int64),
            [k.ref for k in keys], [k.alt for k in keys])
