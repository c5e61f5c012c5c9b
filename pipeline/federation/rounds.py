"""What the coordinator and a site agree on for each round, besides the analysis' layout.

A secure-sum round's public parameters (:func:`round_config`: the key-derivation
context binds federation, job and round; sites, threshold, ring, length and options,
the mask PRG among them, come from the job) are computed identically by both ends
from what each already holds, so they are never trusted from the wire. A
:class:`~pipeline.analyses.KeyUnion` round has one stage, :data:`KEY_UNION_STAGE`, in
which each site uploads its key set as a one-column Arrow table (:func:`encode_keys`,
:func:`decode_keys`) and the coordinator forms their sorted union (:func:`union_keys`).

Every job's round 0 begins with the :data:`PREFLIGHT_STAGE`: each invited site checks
the job against its policy, roster and data (columns, types, enough samples, privacy
terms) without computing anything, and answers :data:`PREFLIGHT_READY` or declines
with a refusal code. Round 0 proper then invites the sites that answered, so a job
every site would refuse fails within seconds, naming each site's code, before any
census or PCA runs. The answer may also say which genome assembly the site's dataset
records (:func:`preflight_answer`): one of a closed set of byte strings, so nothing else
(no free text, no count) can travel in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.assembly import ASSEMBLIES, check_assembly
from pipeline.encoding import Layout
from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.federation import wire
from pipeline.federation.job_spec import CONSISTENCY_CHECK_DEFAULT
from pipeline.federation.roster import Roster
from pipeline.secagg import keys
from pipeline.secagg.messages import RoundConfig
from pipeline.secagg.prg import DEFAULT_PRG

__all__ = [
    "KEY_UNION_STAGE", "MAX_KEYS", "PREFLIGHT_READY", "PREFLIGHT_STAGE", "check_preflight", "decode_keys",
    "encode_keys", "preflight_answer", "round_config", "union_keys",
]

KEY_UNION_STAGE = "keys"
"""Stage name of a :class:`~pipeline.analyses.KeyUnion` round (its only stage)."""

PREFLIGHT_STAGE = "preflight"
"""The first stage of every job's round 0: the sites' cheap checks, before any contribution."""

PREFLIGHT_READY = b'{"ready":true}'
"""A site's whole pre-flight answer when its dataset records no assembly: it would take part (else it declines)."""

MAX_KEYS = 50_000_000
"""Most keys one site's key set may hold."""


def round_config(
    *, federation: str, job_id: str, round_index: int, site_ids: Sequence[int], threshold: int, layout: Layout,
    spec: Mapping[str, Any], participants: Sequence[str] | None = None, roster: Roster | None = None,
) -> RoundConfig:
    """The round's public secure-aggregation parameters, computed identically by every party.

    With a ``roster`` (each party's own verified copy) the round binds identities: site
    ``i`` is ``participants[i - 1]`` and its advertisement must be signed by the
    certificate key the roster holds for that name.

    Raises:
        ConfigurationError: a participant the roster does not list as a site.
    """
    identities = None
    if roster is not None:
        if participants is None:
            raise ConfigurationError("binding a round's keys to identities needs the job's participants")
        identities = tuple((site, roster.public_key(participants[site - 1], "site")) for site in site_ids)
    return RoundConfig(
        context=keys.KeyContext(federation, job_id, round_index),
        site_ids=tuple(site_ids),
        threshold=threshold,
        ring=layout.ring,
        length=layout.size,
        consistency_check=bool(spec.get("consistency_check", CONSISTENCY_CHECK_DEFAULT)),
        num_neighbours=spec.get("num_neighbours"),
        prg=spec.get("mask_prg", DEFAULT_PRG),
        identities=identities,
    )


def decode_keys(body: bytes, name: str) -> np.ndarray:
    """The key set a site sent in a :class:`KeyUnion` round (one string column).

    Raises:
        ProtocolError: not an Arrow table with exactly that string column, or nulls.
    """
    table = wire.decode_table(body, what="key set")
    if table.column_names != [name] or not pa.types.is_string(table.schema.field(0).type):
        raise ProtocolError(f"a key set is an Arrow table with one string column {name!r}, got columns {table.column_names}")
    if table.num_rows > MAX_KEYS:
        raise ProtocolError(f"a key set holds at most {MAX_KEYS} keys, got {table.num_rows}")
    column = table.column(0)
    if column.null_count:
        raise ProtocolError(f"the key set has {column.null_count} null keys")
    return column.combine_chunks().to_numpy(zero_copy_only=False)


def encode_keys(values: np.ndarray, name: str) -> bytes:
    """A site's key set as an Arrow IPC table (the inverse of :func:`decode_keys`)."""
    return wire.encode_table(pa.table({name: _arrow_strings(values)}))


def _arrow_strings(values: np.ndarray) -> pa.Array:
    # Through Python str objects: pyarrow converts those fast, NumPy unicode arrays slowly.
    return pa.array(np.asarray(values).astype(str).tolist(), pa.string())


def union_keys(key_sets: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of the sites' key sets (code point order, as Python sorts str).

    Hashing and sorting happen in Arrow: 100,000 keys from each of three sites take
    milliseconds, where NumPy's unicode sort of the concatenation took a tenth of a second.
    """
    if not key_sets:
        return np.array([], dtype=str)
    keys = pa.chunked_array([_arrow_strings(k) for k in key_sets], type=pa.string())
    unique = pc.unique(keys)
    return unique.take(pc.array_sort_indices(unique)).to_numpy(zero_copy_only=False).astype(str)


def preflight_answer(assembly: str | None) -> bytes:
    """A ready site's pre-flight answer: :data:`PREFLIGHT_READY`, plus its dataset's assembly when it records one.

    Raises:
        ConfigurationError: ``assembly`` is not one of :data:`~pipeline.assembly.ASSEMBLIES`.
    """
    if check_assembly(assembly, source="the site's dataset") is None:
        return PREFLIGHT_READY
    return wire.canonical_json({"assembly": assembly, "ready": True})


_PREFLIGHT_ANSWERS = {preflight_answer(assembly): assembly for assembly in (None, *ASSEMBLIES)}
"""Every body a pre-flight answer may be, and the assembly each says: compared byte for byte, never parsed."""


def check_preflight(body: bytes) -> str | None:
    """Checks a pre-flight answer and returns the assembly it names (``None``: the site's dataset records none).

    The body must be one of the :data:`_PREFLIGHT_ANSWERS` byte strings exactly, so a site
    cannot smuggle data (another key, another value, spacing, key order) through it.

    Raises:
        ProtocolError: any other body.
    """
    if body not in _PREFLIGHT_ANSWERS:
        allowed = " or ".join(answer.decode() for answer in _PREFLIGHT_ANSWERS)
        raise ProtocolError(f"a pre-flight answer is {allowed}, got {len(body)} other bytes")
    return _PREFLIGHT_ANSWERS[body]
