"""Run the whole secure-aggregation protocol in memory for n simulated sites.

The driver plays the network: it calls each site's and the coordinator's pure
``advance`` functions stage by stage and delivers their messages, leaving out the
sites that drop. Tests, benchmarks and the network runtime's own tests build on it;
the runtime replaces it with real transport, keeping the same transitions.

A dropout pattern says, per site index (0-based position in the input list), the
stage from which the site goes silent: ``{2: Stage.MASKED_INPUT}`` means site 2
advertised keys and sent its shares but never its masked input. A plain list of
indices means "drops before masking" (``Stage.MASKED_INPUT``), the case that forces
the coordinator to reconstruct the dropped sites' pairwise masks.

Each party call is timed (process CPU time and wall time), including the sites'
encoding and the coordinator's decoding, so benchmarks can report the compute summed
over all parties.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.errors import ConfigurationError
from pipeline.secagg import keys
from pipeline.encoding import (
    FixedPoint,
    Layout,
    Ring,
    check_bit_budget,
    decode,
    default_float_encoding,
    default_integer_encoding,
    encode,
)
from pipeline.secagg.client import ClientState, client_advance, client_init
from pipeline.secagg.messages import Message, RoundConfig, Stage, round_stages
from pipeline.secagg.server import ServerAborted, ServerState, server_advance, server_init, server_result
from pipeline.secagg.prg import DEFAULT_PRG

__all__ = [
    "DropoutPattern",
    "PartyTimes",
    "RoundOutcome",
    "run_round",
    "simulate_secure_sum",
]

DropoutPattern = Union[Mapping[int, Union[Stage, str]], Sequence[int], None]

DEFAULT_CONTEXT = keys.KeyContext("simulation", "simulate_secure_sum", 0)
_STAGES = (Stage.ADVERTISE_KEYS, Stage.CHOOSE_GRAPH, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING)


@dataclass
class PartyTimes:
    """Seconds spent in each party's calls: process CPU time and wall time."""

    client_cpu: dict[int, float] = field(default_factory=dict)
    client_wall: dict[int, float] = field(default_factory=dict)
    server_cpu: float = 0.0
    server_wall: float = 0.0

    @property
    def total_cpu(self) -> float:
        """CPU seconds summed over every site and the coordinator."""
        return sum(self.client_cpu.values()) + self.server_cpu

    @property
    def total_wall(self) -> float:
        """Wall seconds summed over every party call (parties run one after another)."""
        return sum(self.client_wall.values()) + self.server_wall


class _Stopwatch:
    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> _Stopwatch:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self._cpu
        self.wall = time.perf_counter() - self._wall


@dataclass(frozen=True, eq=False)
class RoundOutcome:
    """What an in-memory round produced.

    Attributes:
        total: the unmasked ring sum of the survivors' inputs, or ``None`` if aborted.
        survivors: site IDs included in the sum (empty if aborted).
        server: the coordinator's final state (:class:`ServerAborted` holds no vector).
        clients: each site's final state (sites that dropped keep their last state).
        messages: every delivered message, in order, if ``record_messages``.
        times: per-party compute times.
    """

    total: np.ndarray | None
    survivors: frozenset[int]
    server: ServerState
    clients: Mapping[int, ClientState]
    messages: tuple[Message, ...]
    times: PartyTimes

    @property
    def aborted(self) -> bool:
        """True when the coordinator abandoned the round."""
        return isinstance(self.server, ServerAborted)


def _parse_stage(stage: Stage | str) -> Stage | str:
    """A stage given as a :class:`Stage` or by name (``"masked_input"`` or ``"MASKED_INPUT"``)."""
    if isinstance(stage, Stage):
        return stage
    for candidate in Stage:
        if str(stage).lower() == candidate.value:
            return candidate
    return stage  # reported by the caller with the list of valid stages


def _parse_dropouts(dropouts: DropoutPattern, num_sites: int) -> dict[int, Stage]:
    if dropouts is None:
        return {}
    if isinstance(dropouts, Mapping):
        pattern = {int(index): _parse_stage(stage) for index, stage in dropouts.items()}
    else:
        pattern = {int(index): Stage.MASKED_INPUT for index in dropouts}
    for index, stage in pattern.items():
        if not 0 <= index < num_sites:
            raise ConfigurationError(f"dropout index {index} is not a site index in [0, {num_sites})")
        if not isinstance(stage, Stage) or stage not in _STAGES:
            raise ConfigurationError(f"site {index} drops at {stage!r}; expected one of {[s.name for s in _STAGES]}")
    return pattern


def _site_randomness(seed: bytes | int | None, site: int) -> bytes:
    if seed is None:
        return os.urandom(keys.KEY_BYTES)
    material = seed if isinstance(seed, bytes) else struct.pack(">q", int(seed))
    return keys.derive_key(material, purpose="simulation-site-randomness", context_bytes=struct.pack(">Q", site))


def run_round(
    vectors: Sequence[Any],
    *,
    threshold: int,
    ring: Ring | None = None,
    encoder: Callable[[Any], np.ndarray] | None = None,
    dropouts: DropoutPattern = None,
    consistency_check: bool = False,
    num_neighbours: int | None = None,
    context: keys.KeyContext = DEFAULT_CONTEXT,
    seed: bytes | int | None = None,
    prg: str = DEFAULT_PRG,
    engine: str | None = None,
    record_messages: bool = False,
    identity_keys: Sequence[ec.EllipticCurvePrivateKey] | None = None,
) -> RoundOutcome:
    """Run one secure-sum round among ``len(vectors)`` sites (IDs 1..n) in memory.

    Args:
        vectors: each site's input: an encoded ring vector, or raw values when
            ``encoder`` is given (the encoding is then timed as the site's work).
        threshold: Shamir threshold and minimum number of answering sites.
        ring: the ring; inferred from the first encoded vector when omitted.
        encoder: raw values -> 1-D ring vector, run by each site.
        dropouts: the dropout pattern (see the module docstring).
        consistency_check: run the signed survivor-list stage.
        num_neighbours: SecAgg+ neighbourhood size ``k`` (``None`` = every site).
        context: federation, job and round the keys are bound to.
        seed: makes every site's key material deterministic (tests only).
        prg: the mask PRG (:data:`pipeline.secagg.prg.PRGS`).
        engine: mask engine (None: the PRG's default).
        record_messages: keep every delivered message in the outcome.
        identity_keys: one certificate key per site: the round then binds every key
            advertisement to its site (each signs, every party verifies), as deployed.

    Returns:
        The :class:`RoundOutcome`; it does not raise on abort (see ``.aborted``).
    """
    num_sites = len(vectors)
    pattern = _parse_dropouts(dropouts, num_sites)
    times = PartyTimes()
    site_ids = list(range(1, num_sites + 1))
    encoded: list[np.ndarray] = []
    for site, values in zip(site_ids, vectors):
        with _Stopwatch() as watch:
            vector = np.ascontiguousarray(encoder(values) if encoder is not None else values).reshape(-1)
        times.client_cpu[site] = watch.cpu
        times.client_wall[site] = watch.wall
        encoded.append(vector)
    if not encoded:
        raise ConfigurationError("a secure sum needs at least 2 sites, got 0 vectors")
    ring = ring if ring is not None else Ring.from_dtype(encoded[0].dtype)
    config = RoundConfig(
        context=context,
        site_ids=tuple(site_ids),
        threshold=threshold,
        ring=ring,
        length=int(encoded[0].size),
        consistency_check=consistency_check,
        num_neighbours=num_neighbours,
        prg=prg,
        engine=engine,
        identities=None if identity_keys is None else tuple(
            (site, key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
            for site, key in zip(site_ids, identity_keys)
        ),
    )
    clients: dict[int, ClientState] = {}
    for index, (site, vector) in enumerate(zip(site_ids, encoded)):
        identity_key = None if identity_keys is None else identity_keys[index]
        with _Stopwatch() as watch:
            clients[site] = client_init(config, site, vector, randomness=_site_randomness(seed, site), identity_key=identity_key)
        times.client_cpu[site] += watch.cpu
        times.client_wall[site] += watch.wall
    del encoded
    drop_stage = {site_ids[index]: stage for index, stage in pattern.items()}
    server: ServerState = server_init(config)
    inbox: dict[int, list[Message]] = {site: [] for site in site_ids}
    log: list[Message] = []
    for stage in round_stages(config):
        gone = {site for site, at in drop_stage.items() if _STAGES.index(at) <= _STAGES.index(stage)}
        to_server: list[Message] = []
        for site in site_ids:
            state = clients[site]
            if site in gone or state.stage is not stage:
                continue
            with _Stopwatch() as watch:
                clients[site], outgoing = client_advance(state, inbox[site])
            times.client_cpu[site] += watch.cpu
            times.client_wall[site] += watch.wall
            inbox[site] = []
            to_server.extend(outgoing)
        if record_messages:
            log.extend(to_server)
        with _Stopwatch() as watch:
            server, outgoing = server_advance(server, to_server)
        times.server_cpu += watch.cpu
        times.server_wall += watch.wall
        del to_server
        if record_messages:
            log.extend(outgoing)
        for message in outgoing:
            inbox[message.receiver].append(message)
        if isinstance(server, ServerAborted):
            for site in site_ids:
                if inbox[site] and site not in gone:
                    clients[site], _ = client_advance(clients[site], inbox[site])
                    inbox[site] = []
            break
    if isinstance(server, ServerAborted):
        return RoundOutcome(None, frozenset(), server, clients, tuple(log), times)
    total, survivors = server_result(server)
    return RoundOutcome(total, survivors, server, clients, tuple(log), times)


def _check_within_clip(arrays: Sequence[np.ndarray], encoding: FixedPoint) -> None:
    for index, array in enumerate(arrays):
        if array.size and np.nanmax(np.abs(array.astype(np.float64))) > encoding.clip:
            raise ConfigurationError(
                f"vector {index} has values beyond the default encoding's clip {encoding.clip:g}; "
                "pass encoding=FixedPoint(ring, scale_bits, clip) chosen for these values"
            )


def simulate_secure_sum(
    vectors: Sequence[Any],
    *,
    threshold: int,
    dropouts: DropoutPattern = None,
    seed: bytes | int | None = None,
    encoding: FixedPoint | None = None,
    layout: Layout | None = None,
    consistency_check: bool = False,
    num_neighbours: int | None = None,
    prg: str = DEFAULT_PRG,
    engine: str | None = None,
) -> Any:
    """The sum the coordinator obtains from the real protocol run in memory.

    Each site encodes its vector, masks it and takes part in every stage; sites in
    ``dropouts`` go silent at their stage, and the result is the decoded sum of the
    surviving sites (those whose masked input arrived).

    Args:
        vectors: one array per site (all the same shape), or one ``dict`` per site
            when ``layout`` is given.
        threshold: Shamir threshold (at least this many sites must answer each stage).
        dropouts: ``{site index: Stage}`` or a list of indices dropping before masking.
        seed: deterministic key material, for tests only (``None``: ``os.urandom``).
        encoding: fixed-point encoding of array inputs. Default: integer arrays pass
            exactly in R64 (result int64); float arrays use R64 with 32 fractional bits
            and clip 2^20 (values beyond it are refused, not clipped).
        layout: encode dict inputs with this :class:`Layout`; returns a dict.
        consistency_check: run the signed survivor-list stage.
        num_neighbours: SecAgg+ with ``k`` neighbours per site.
        prg: the mask PRG (:data:`pipeline.secagg.prg.PRGS`).
        engine: mask engine (None: the PRG's default).

    Raises:
        AggregationAborted: fewer than ``threshold`` sites remained; nothing revealed.
    """
    num_sites = len(vectors)

    def secure_total(inputs: Sequence[Any], ring: Ring, encoder: Callable[[Any], np.ndarray]) -> tuple[np.ndarray, int]:
        outcome = run_round(
            inputs,
            threshold=threshold,
            ring=ring,
            encoder=encoder,
            dropouts=dropouts,
            consistency_check=consistency_check,
            num_neighbours=num_neighbours,
            seed=seed,
            prg=prg,
            engine=engine,
        )
        total, survivors = server_result(outcome.server)
        return total, len(survivors)

    if layout is not None:
        layout.check_bit_budget(num_sites)
        total, num_survivors = secure_total(vectors, layout.ring, layout.encode)
        return layout.decode(total, num_survivors)
    arrays = [np.asarray(vector) for vector in vectors]
    shapes = {array.shape for array in arrays}
    if len(shapes) > 1:
        raise ConfigurationError(f"all sites' vectors must have one shape, got {sorted(shapes)}")
    integer_input = all(array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer) for array in arrays)
    if encoding is None:
        encoding = default_integer_encoding(num_sites) if integer_input else default_float_encoding(num_sites)
        _check_within_clip(arrays, encoding)
    check_bit_budget(encoding, num_sites)
    chosen = encoding
    total, num_survivors = secure_total(arrays, chosen.ring, lambda values: encode(values, chosen))
    shape = arrays[0].shape if arrays else (0,)
    decoded = decode(total, chosen, num_survivors).reshape(shape)
    return decoded if integer_input else decoded.astype(np.float64)
