"""Benchmark: secure-sum rounds through the real coordinator on loopback (mutual TLS).

N site agents run in threads of this process, each contributing a vector of D int64
values per round (Z_2^64, 8 bytes per value) through the HTTPS server. The rounds run
as a federation runs them: every key advertisement signed by its site's certificate key
and checked by every peer against its own roster (``RoundConfig.identities``), and the
signed consistency round on. One small untimed round first opens the connections and
loads what the agents load once. Reported:

- rounds per minute, and the ratio of a network round to the same protocol (the same
  defences) run by the in-memory driver (``pipeline.secagg.driver.run_round``) timed in
  this process;
- bytes each site sends on the wire per round, against the raw vector (D x 8 bytes);
- the coordinator's engine time per round, split into the secure-aggregation server
  transitions (``server_advance``: summing, unmasking kernels, validation) and the rest
  (decoding, digests, SQLite writes, bookkeeping), measured as the time the engine's
  lock is held (the HTTP layer, TLS and JSON/Arrow framing in uvicorn are not included);
  the overhead ratio is that rest over the round's wall time. Audit appends (each syncs
  the log) are written after the lock is released and reported beside it.

With ``--active-only``: the cost of the active-adversary defences instead, as
``tests/benchmarks/secagg.py --active-only`` reports it for the in-memory protocol: the
same rounds with the defences off and on, interleaved on the same coordinator and agents
(the order alternates from round to round), and the ratio of their median round times.
"Off" is a measurement baseline that no real federation can run: the coordinator and
the sites always build a round's terms with the signed roster
(``rounds.round_config(..., roster=...)``), and a site refuses a round without the
consistency check (``agent.check_round_terms``). To measure it, this process alone
replaces ``round_config`` as the coordinator and agent modules call it (no identities,
no consistency round) and lets no site sign its keys (:func:`active_defences_off`); the
job spec, and the sites' checks of it, are left as deployed.

Run: ``python tests/benchmarks/federation.py [--sites 10] [--length 1000000] [--rounds 3]
[--neighbours K] [--active-only]`` (``--neighbours``: SecAgg+ with K neighbours per site
instead of the complete graph). All parties share this machine's cores, so timings are
an upper bound of a deployment's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.encoding import FixedPoint, Ring, encode  # noqa: E402
from pipeline.federation import agent as agent_module  # noqa: E402
from pipeline.federation import coordinator as coordinator_module  # noqa: E402
from pipeline.federation import rounds  # noqa: E402
from pipeline.federation.job_spec import minimum_threshold, shareholders  # noqa: E402
from pipeline.secagg.driver import run_round  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402

WARM_UP_LENGTH = 1000
"""Values per site in the untimed first round."""


class _Timer:
    """Accumulates seconds spent in wrapped functions (thread-safe enough: one lock)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.lock = threading.Lock()

    def wrap(self, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                with self.lock:
                    self.seconds += time.perf_counter() - start

        return timed


class _TimedLock:
    """A re-entrant lock that adds up how long it was held (outermost acquire to release)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0
        self.since = 0.0
        self.seconds = 0.0

    def __enter__(self) -> "_TimedLock":
        self.lock.acquire()
        self.depth += 1
        if self.depth == 1:
            self.since = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.perf_counter() - self.since
        self.lock.release()


class _Instruments:
    """The coordinator's clocks: ``server_advance``, the engine lock, and its audit appends."""

    def __init__(self) -> None:
        self.advance, self.engine, self.audit = _Timer(), _TimedLock(), _Timer()

    def install(self) -> None:
        """Times every coordinator built after this call (for the rest of the process)."""
        coordinator_module.server_advance = self.advance.wrap(coordinator_module.server_advance)
        original_init = coordinator_module.Coordinator.__init__
        instruments = self

        def init(self, *a, **k):
            original_init(self, *a, **k)
            self._lock = instruments.engine  # the engine works under one lock: the time it is held is its busy time
            self.audit.append = instruments.audit.wrap(self.audit.append)  # the coordinator's log only

        coordinator_module.Coordinator.__init__ = init

    def seconds(self) -> tuple[float, float, float]:
        """(engine, server_advance, audit) seconds so far."""
        return self.engine.seconds, self.advance.seconds, self.audit.seconds


@dataclass(frozen=True)
class RoundMeasure:
    """One secure-sum round through the coordinator."""

    wall_s: float
    bytes_sent_per_site: float
    engine_s: float
    advance_s: float
    audit_s: float

    def describe(self) -> str:
        return (f"{self.wall_s:.2f} s wall; coordinator engine {self.engine_s:.2f} s (server_advance {self.advance_s:.2f} s); "
                f"audit appends after the lock {self.audit_s:.2f} s")


@dataclass(frozen=True)
class Federation:
    """A running coordinator, its site agents and an analyst's connection."""

    analyst: Any
    agents: Mapping[str, Any]
    instruments: _Instruments

    def timed_round(self, spec: Mapping[str, Any]) -> RoundMeasure:
        """Runs one job of ``spec`` (a one-round secure sum) to completion and measures it."""
        sent_before = {name: agent.connection.bytes_sent for name, agent in self.agents.items()}
        engine, advance, audit = self.instruments.seconds()
        start = time.perf_counter()
        job_id = self.analyst.post_json("/v1/jobs", {"spec": dict(spec)})["job_id"]
        status = rs.wait_for_job(self.analyst, job_id, timeout=1200)
        wall = time.perf_counter() - start
        assert status["status"] == "done", status
        engine_after, advance_after, audit_after = self.instruments.seconds()
        return RoundMeasure(
            wall_s=wall,
            bytes_sent_per_site=statistics.mean(agent.connection.bytes_sent - sent_before[name] for name, agent in self.agents.items()),
            engine_s=engine_after - engine, advance_s=advance_after - advance, audit_s=audit_after - audit,
        )


def secure_sum_spec(*, length: int, threshold: int, neighbours: int | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"analysis": "secure_sum", "vector": {"source": "test", "length": length}, "stage_timeout": 600,
                            "threshold": threshold}
    if neighbours is not None:
        spec["num_neighbours"] = neighbours
    return spec


@contextlib.contextmanager
def running_federation(names: list[str], *, length: int, warm_up_spec: Mapping[str, Any]) -> Iterator[Federation]:
    """Provisions a federation of ``names`` in a temporary folder, serves it, and runs one untimed round."""
    instruments = _Instruments()
    instruments.install()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = rs.write_dataset(tmp / "data", rs.variant_ids(range(100, 110)), rs.random_genotypes(0, 10, 20))
        manifest = rs.provision_federation(tmp / "fed", {name: data for name in names})
        toml = manifest.coordinator.config
        toml.write_text(toml.read_text().replace("[coordinator]", f"[coordinator]\nmax_message_bytes = {16 * length + (1 << 20)}", 1))
        with rs.ThreadedCoordinator(toml), rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            with rs.agent_threads(manifest, max_idle=600, once=False) as agents:
                federation = Federation(analyst, agents, instruments)
                federation.timed_round(warm_up_spec)
                yield federation


@contextlib.contextmanager
def active_defences_off() -> Iterator[None]:
    """Rounds started in this process while active run without the active-adversary defences.

    A measurement baseline that no real federation can run. The coordinator and every
    agent compute the round's terms without identities (``roster=None``: advertisements
    neither signed nor checked) and without the signed consistency round, and no site
    signs its keys. The job spec still says ``consistency_check`` on, so the
    coordinator's and the sites' checks of it pass unchanged.
    """

    def unchecked_round_config(**terms: Any) -> Any:
        return rounds.round_config(**{**terms, "roster": None, "spec": {**terms["spec"], "consistency_check": False}})

    def unsigned_client_init(*args: Any, **kwargs: Any) -> Any:
        return client_init(*args, **{**kwargs, "identity_key": None})

    client_init = agent_module.client_init
    with contextlib.ExitStack() as stack:
        for module in (coordinator_module, agent_module):
            stack.enter_context(mock.patch.object(module, "round_config", unchecked_round_config))
        stack.enter_context(mock.patch.object(agent_module, "client_init", unsigned_client_init))
        yield


DEFENCES: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "off": active_defences_off,
    "on": contextlib.nullcontext,
}
"""The two configurations of ``--active-only``: how to enter each."""


def in_memory_seconds(num_sites: int, *, length: int, threshold: int, neighbours: int | None) -> float:
    """Wall seconds of the same round, defences on, with the in-memory driver (no network, no persistence)."""
    encoding = FixedPoint(Ring.R64, scale_bits=0, clip=float(2**40))
    vectors = [encode(np.arange(length, dtype=np.int64) % 1000, encoding) for _ in range(num_sites)]
    identity_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(num_sites)]
    start = time.perf_counter()
    run_round(vectors, threshold=threshold, ring=Ring.R64, num_neighbours=neighbours, consistency_check=True,
              identity_keys=identity_keys)
    return time.perf_counter() - start


def report_runtime(federation: Federation, spec: Mapping[str, Any], *, rounds_count: int, in_memory: float) -> None:
    """The default report: rounds per minute, bytes on the wire, the coordinator's overhead."""
    measures = []
    for _ in range(rounds_count):
        measures.append(federation.timed_round(spec))
        print(f"round: {measures[-1].describe()}", flush=True)
    per_round = statistics.median(m.wall_s for m in measures)
    raw = spec["vector"]["length"] * 8
    sent = statistics.mean(m.bytes_sent_per_site for m in measures)
    engine = statistics.mean(m.engine_s for m in measures)
    advance = statistics.mean(m.advance_s for m in measures)
    audit = statistics.mean(m.audit_s for m in measures)
    print(f"  rounds per minute: {60 / per_round:.1f} (median round {per_round:.2f} s)")
    print(f"  same protocol in memory (driver, this process): {in_memory:.2f} s -> network round / in-memory = {per_round / in_memory:.2f}")
    print(f"  bytes sent per site per round: {sent:,.0f} vs raw vector {raw:,} ({sent / raw:.3f}x)")
    print(f"  coordinator engine per round: {engine:.2f} s, of which server_advance {advance:.2f} s; "
          f"outside the aggregation transitions {engine - advance:.2f} s (overhead ratio {(engine - advance) / per_round:.1%} of the round)")
    print(f"  coordinator audit appends per round (after the lock, overlapping other requests): {audit:.2f} s")


def report_active_defences(federation: Federation, spec: Mapping[str, Any], *, rounds_count: int) -> None:
    """``--active-only``: the same round with the defences off and on, and the on/off ratio of median round time."""
    walls: dict[str, list[float]] = {label: [] for label in DEFENCES}
    sent: dict[str, list[float]] = {label: [] for label in DEFENCES}
    for index in range(rounds_count):
        order = list(DEFENCES) if index % 2 == 0 else list(reversed(DEFENCES))
        for label in order:
            with DEFENCES[label]():
                measure = federation.timed_round(spec)
            walls[label].append(measure.wall_s)
            sent[label].append(measure.bytes_sent_per_site)
            print(f"round {index + 1}, defences {label:>3}: {measure.describe()}", flush=True)
    median = {label: statistics.median(times) for label, times in walls.items()}
    notes = {"off": "measurement baseline only; no federation runs it", "on": "as every federation runs"}
    for label in DEFENCES:
        print(f"  defences {label:>3}: {60 / median[label]:.1f} rounds per minute (median round {median[label]:.2f} s); "
              f"bytes sent per site per round {statistics.mean(sent[label]):,.0f} [{notes[label]}]")
    print(f"  on/off (median round time): {median['on'] / median['off']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=None, help="SecAgg+ neighbours per site (default: every site)")
    parser.add_argument("--active-only", action="store_true",
                        help="only the cost of the active-adversary defences (signed keys, consistency round): off vs on")
    args = parser.parse_args()
    names = [f"site{i:02d}" for i in range(args.sites)]
    # The benchmark's sites accept a majority of the shareholders (runtime_support provisions them so).
    threshold = max(2, minimum_threshold(shareholders(args.sites, args.neighbours), "majority"))
    spec = secure_sum_spec(length=args.length, threshold=threshold, neighbours=args.neighbours)
    warm_up_spec = secure_sum_spec(length=WARM_UP_LENGTH, threshold=threshold, neighbours=args.neighbours)
    graph = f"SecAgg+ with {args.neighbours} neighbours" if args.neighbours else "complete graph"
    title = (f"{args.sites} sites x {args.length:,} values per round ({graph}, threshold {threshold}), {args.rounds} rounds"
             f"{' of each' if args.active_only else ''}, loopback mutual TLS")

    if args.active_only:
        print("== cost of the active-adversary defences (signed keys + consistency round) through the coordinator: off vs on ==")
        print(title, flush=True)
        with running_federation(names, length=args.length, warm_up_spec=warm_up_spec) as federation:
            report_active_defences(federation, spec, rounds_count=args.rounds)
        return
    print(title, flush=True)
    in_memory = in_memory_seconds(args.sites, length=args.length, threshold=threshold, neighbours=args.neighbours)
    with running_federation(names, length=args.length, warm_up_spec=warm_up_spec) as federation:
        report_runtime(federation, spec, rounds_count=args.rounds, in_memory=in_memory)


if __name__ == "__main__":
    main()
