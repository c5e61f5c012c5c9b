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
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InputError

__all__ = ["VariantKey", "duplicate_pairs", "parse_variant_id", "parse_variant_ids", "variant_id", "variant_ids"]


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


def duplicate_pairs(ids: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """Every repeated key as ``(first row, repeated row)``, int64 ``(k, 2)``, ordered by the repeated row.

    A dataset must hold each key once (a census sums one row per key); this finds the
    rows that break that, over all chunks' IDs at once. Vectorized: one hash pass
    (``pyarrow.compute.unique``) answers the common case, no repeat; only then are the
    keys dictionary-encoded and their first rows found with :func:`numpy.unique`.

    Args:
        ids: the keys in dataset order (a pyarrow string array, chunked or not, or a list).
    """
    array = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(list(ids), pa.string())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks else pa.array([], array.type)
    n = len(array)
    if n < 2 or len(pc.unique(array)) == n:
        return np.zeros((0, 2), np.int64)
    codes = pc.dictionary_encode(array, null_encoding="encode").indices.to_numpy(zero_copy_only=False).astype(np.int64)
    _, first_index, inverse = np.unique(codes, return_index=True, return_inverse=True)
    first_row = first_index[inverse.reshape(-1)]
    repeated = np.flatnonzero(first_row != np.arange(n))
    return np.column_stack([first_row[repeated], repeated]).astype(np.int64)
