"""The rs ID round: which dbSNP rs ID each tested variant carries in the sites' datasets.

The regression phase begins with one :class:`~pipeline.analyses.KeyUnion` round (a key
set cannot travel in a secure sum, so it cannot share the moments round). Each site sends
``"VARIANT_ID RSID"`` (one space) for every tested variant it shared in the census' key
union (:func:`~pipeline.analyses.census.shared_variant_ids`) whose ``original_id`` (the VCF
ID column, kept by ingest) holds a well-formed rs ID, ``rs`` then digits without a leading
zero; a record with several IDs separated by ``;`` contributes each of its rs IDs.

Disclosure: rs IDs are public annotations of variants, and the site names only variants
the census' key union already revealed it holds, so the round reveals nothing new about
its samples (nor any count). A site whose policy forbids ``share_variant_keys`` sends nothing.

The coordinator's rule (:func:`resolve_rsids`), applied to the union, which does not say
which site sent which pair:

* a string that is not such a pair fails the job (an honest site never sends one, and a
  free-text key would smuggle text through the union); the message gives the count and
  length, never the text, and nothing is published;
* a pair naming a variant the job does not test is ignored (a site's datasets may hold
  variants the census did not pass);
* a tested variant gets its rs ID when the union names exactly one for it; where it names
  several (sites disagree, or one record lists two), its ``rsid`` is NA and it counts in
  the summary's ``variants.rsid_conflicts``; where it names none, NA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.analyses.census import shared_variant_ids
from pipeline.analyses.protocol import KeyUnion, SiteContext
from pipeline.dataset import Dataset
from pipeline.errors import ProtocolError

__all__ = ["RSID", "RSID_KEYS", "Rsids", "resolve_rsids", "rsid_layout", "site_rsid_pairs"]

RSID = re.compile(r"rs[1-9][0-9]*")
"""A well-formed rs ID (the whole string)."""

_PAIR = re.compile(r"([^\s:]+:[0-9]+:[^\s:]+:[^\s:]+) (rs[1-9][0-9]*)")
"""What a site may send: a variant key ``contig:position:ref:alt``, one space, an rs ID (the whole string)."""

RSID_KEYS = "variant_rsid"
"""The rs ID round's key field."""


def rsid_layout() -> KeyUnion:
    """The rs ID round's key union (identical at every party)."""
    return KeyUnion(RSID_KEYS, "rs IDs the sites' datasets record for tested variants they shared in the census' key union")


@dataclass(frozen=True)
class Rsids:
    """The tested variants' rs IDs, from the rs ID round.

    Attributes:
        rsid: (tested variants,) the one rs ID the union names, ``None`` where it names none or several.
        conflicts: indices (into the tested variants) where the union names several.
    """

    rsid: tuple[str | None, ...]
    conflicts: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"rsid": list(self.rsid), "conflicts": list(self.conflicts)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rsids:
        return cls(tuple(None if r is None else str(r) for r in data["rsid"]), tuple(int(i) for i in data["conflicts"]))

    def take(self, keep: np.ndarray) -> Rsids:
        """The rs IDs of the variants where ``keep`` (bool, one per variant) is true, conflicts renumbered."""
        keep = np.asarray(keep, bool)
        renumbered = np.cumsum(keep) - 1
        return Rsids(tuple(r for r, k in zip(self.rsid, keep) if k),
                     tuple(int(renumbered[i]) for i in self.conflicts if keep[i]))


def site_rsid_pairs(variant_ids: Sequence[str], dataset: Dataset, site: SiteContext) -> np.ndarray:
    """The site's ``"VARIANT_ID RSID"`` strings for the tested ``variant_ids`` (see the module docstring), sorted.

    Reads the variants tables only (no genotype beyond the census' cached counts).
    """
    shared = shared_variant_ids(dataset, site)
    if not len(shared) or not variant_ids:
        return np.array([], dtype=str)
    variants = dataset.variants()
    ids = variants.column("variant_id")
    named = pc.and_(pc.is_in(ids, value_set=shared), pc.is_in(ids, value_set=pa.array(variant_ids, pa.string())))
    named = pc.and_(named, pc.is_valid(variants.column("original_id")))
    ids, original = pc.filter(ids, named), pc.filter(variants.column("original_id"), named)
    parts = pc.split_pattern(original, ";").combine_chunks()  # one array: list_parent_indices are then row numbers
    flat = pc.list_flatten(parts)
    rsid = pc.match_substring_regex(flat, f"^{RSID.pattern}$")
    owner = pc.filter(pc.list_parent_indices(parts), rsid)
    pairs = pc.binary_join_element_wise(pc.take(ids, owner), pc.filter(flat, rsid), " ")
    return np.unique(np.asarray(pairs.to_pylist(), dtype=str))


def resolve_rsids(pairs: Sequence[str] | np.ndarray, variant_ids: Sequence[str]) -> Rsids:
    """Each tested variant's rs ID from the union of the sites' pairs (the rule in the module docstring).

    Raises:
        ProtocolError: a string of the union is not ``"VARIANT_ID RSID"``.
    """
    matches = [_PAIR.fullmatch(str(pair)) for pair in pairs]
    malformed = [len(str(pair)) for pair, match in zip(pairs, matches) if match is None]
    if malformed:
        raise ProtocolError(
            f"gwas: the rs ID round's key union holds {len(malformed)} string(s) that are not 'VARIANT_ID RSID' "
            f"(contig:position:ref:alt, one space, rs and digits; the first is {malformed[0]} characters long, its text "
            "is not repeated here): a site sent something other than rs ID pairs, so nothing is published"
        )
    position = {variant: index for index, variant in enumerate(variant_ids)}
    named: dict[int, set[str]] = {}
    for match in matches:
        assert match is not None
        index = position.get(match.group(1))
        if index is not None:
            named.setdefault(index, set()).add(match.group(2))
    rsid: list[str | None] = [None] * len(variant_ids)
    for index, ids in named.items():
        if len(ids) == 1:
            rsid[index] = next(iter(ids))
    return Rsids(tuple(rsid), tuple(sorted(index for index, ids in named.items() if len(ids) > 1)))
