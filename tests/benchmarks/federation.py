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

With ``--latency``: where a small job's wall time goes (:func:`report_latency`): the
analyst's commands ``genofed job submit`` and ``genofed job status`` timed as processes,
then jobs of a short secure sum with warm agents (threads already long-polling) and
with cold agents (``genofed site run --once`` processes started with the job), each
split into: submit to the first site's task, every stage (first handed out to closed) and
stage hand-off (closed at the coordinator to the next stage's task handed to the first
site, and to every site), the coordinator's storage (synced SQLite commits, message bodies written and
synced, audit appends), and the end (the last close to the analyst seeing ``done``).
For cold agents: process start to the first request, and the imports in it.

Run: ``python tests/benchmarks/federation.py [--sites 10] [--length 1000000] [--rounds 3]
[--neighbours K] [--active-only | --latency]`` (``--neighbours``: SecAgg+ with K neighbours per site
instead of the complete graph). All parties share this machine's cores, so timings are
an upper bound of a deployment's.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
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
from pipeline.federation import store as store_module  # noqa: E402
from pipeline.federation.analyst import wait_for_job  # noqa: E402
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

# ------------------------------------------------------------------ --latency


class _TimedCommits:
    """A store's SQLite connection whose ``COMMIT`` (synced: ``synchronous=FULL``) is timed."""

    def __init__(self, db: Any, timer: _Timer) -> None:
        self._db, self._timer = db, timer

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            return self._timer.wrap(self._db.execute)(sql, *args)
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


class _Timeline:
    """The coordinator's clocks for ``--latency`` (this process only; nothing is added to the engine).

    When each stage of each job was first handed to each site (``next_task``) and closed
    (``_close_stage``), when each site first asked for work, and the seconds spent in
    synced SQLite commits, message bodies written and synced (``Store.stage_body``) and
    audit appends.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handed: dict[tuple[str, int, str, str], float] = {}
        self.closed: dict[tuple[str, int, str], float] = {}
        self.first_request: dict[str, float] = {}
        self.commits, self.bodies, self.audit = _Timer(), _Timer(), _Timer()

    def install(self) -> None:
        engine, timeline = coordinator_module.Coordinator, self
        next_task, close_stage, original_init = engine.next_task, engine._close_stage, engine.__init__
        open_connection = store_module.Store._connection

        def timed_next_task(self: Any, site: str) -> Any:
            asked = time.perf_counter()
            task = next_task(self, site)
            with timeline.lock:
                timeline.first_request.setdefault(site, asked)
                if task is not None:
                    timeline.handed.setdefault((task["job_id"], task["round_index"], task["stage"], site), time.perf_counter())
            return task

        def timed_close(self: Any, current: Any) -> None:
            key = (current.job_id, current.round_index, current.stage)
            close_stage(self, current)
            with timeline.lock:
                timeline.closed[key] = time.perf_counter()

        def init(self: Any, *a: Any, **k: Any) -> None:
            original_init(self, *a, **k)
            self.audit.append = timeline.audit.wrap(self.audit.append)

        engine.next_task, engine._close_stage, engine.__init__ = timed_next_task, timed_close, init
        store_module.Store.stage_body = self.bodies.wrap(store_module.Store.stage_body)
        store_module.Store._connection = lambda store: _TimedCommits(open_connection(store), timeline.commits)

    def storage(self) -> tuple[float, float, float]:
        return self.commits.seconds, self.bodies.seconds, self.audit.seconds


@dataclass(frozen=True)
class JobLatency:
    """Where one job's wall time went, from the analyst's submit to the analyst seeing it done."""

    wall_s: float
    to_first_task_s: float
    stages: tuple[tuple[str, float], ...]
    handoffs: tuple[float, ...]
    handoffs_all: tuple[float, ...]
    end_s: float
    commits_s: float
    bodies_s: float
    audit_s: float


def _wait_done(analyst: Any, job_id: str, *, timeout: float = 300) -> dict[str, Any]:
    """The job's final status through the long poll that ``genofed job wait`` uses: the end is seen when the coordinator wakes it."""
    return wait_for_job(analyst, job_id, timeout=timeout)


def timed_job(analyst: Any, timeline: _Timeline, spec: Mapping[str, Any], *, start_agents: Callable[[], Any] | None = None
              ) -> tuple[JobLatency, Any]:
    """Submits ``spec``, (starts agents,) waits for the job, and splits its wall time; returns it and ``start_agents()``."""
    storage = timeline.storage()
    start = time.perf_counter()
    job_id = analyst.post_json("/v1/jobs", {"spec": dict(spec)})["job_id"]
    started = start_agents() if start_agents is not None else None
    status = _wait_done(analyst, job_id, timeout=120)
    seen_done = time.perf_counter()
    assert status["status"] == "done", status
    with timeline.lock:
        by_stage: dict[tuple[str, int, str], list[float]] = {}
        for (job, round_index, stage, _), moment in timeline.handed.items():
            if job == job_id:
                by_stage.setdefault((job, round_index, stage), []).append(moment)
        keys = sorted(by_stage, key=lambda k: min(by_stage[k]))
        handed, handed_all = [min(by_stage[k]) for k in keys], [max(by_stage[k]) for k in keys]
        closed = [timeline.closed[k] for k in keys]
    commits, bodies, audit = (after - before for after, before in zip(timeline.storage(), storage))
    return JobLatency(
        wall_s=seen_done - start, to_first_task_s=handed[0] - start,
        stages=tuple((f"r{k[1]}:{k[2]}", c - h) for k, h, c in zip(keys, handed, closed)),
        handoffs=tuple(h - c for h, c in zip(handed[1:], closed[:-1])),
        handoffs_all=tuple(h - c for h, c in zip(handed_all[1:], closed[:-1])), end_s=seen_done - closed[-1],
        commits_s=commits, bodies_s=bodies, audit_s=audit,
    ), started


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def describe_jobs(label: str, jobs: list[JobLatency]) -> None:
    """Medians over ``jobs`` of each part of the wall time."""
    med = statistics.median
    print(f"  {label}: job wall {_ms(med(j.wall_s for j in jobs))} (median of {len(jobs)})")
    print(f"    submit -> first task handed to a site: {_ms(med(j.to_first_task_s for j in jobs))}")
    for index, (name, _) in enumerate(jobs[0].stages):
        if index:
            print(f"    hand-off -> {name}: first site {_ms(med(j.handoffs[index - 1] for j in jobs))}, "
                  f"every site {_ms(med(j.handoffs_all[index - 1] for j in jobs))}")
        print(f"    stage {name} (first handed out -> closed): {_ms(med(j.stages[index][1] for j in jobs))}")
    print(f"    last close -> analyst sees done (long poll): {_ms(med(j.end_s for j in jobs))}")
    print(f"    storage: SQLite commits {_ms(med(j.commits_s for j in jobs))}, message bodies {_ms(med(j.bodies_s for j in jobs))}, "
          f"audit appends {_ms(med(j.audit_s for j in jobs))} (summed over threads)")
    handoffs = [h for j in jobs for h in j.handoffs_all]
    if handoffs:
        print(f"    stage hand-off to every site, over all stages: median {_ms(med(handoffs))}, max {_ms(max(handoffs))}")


def _genofed() -> str:
    return shutil.which("genofed", path=str(Path(sys.executable).parent)) or "genofed"


def _seconds(command: list[str], *, env: Mapping[str, str] | None = None, runs: int = 5) -> tuple[float, str]:
    """Median wall seconds of running ``command`` (must succeed, or exit 3: a job still running), and its last output."""
    times, out = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        assert done.returncode in (0, 3), done.stderr
        out = done.stdout
    return statistics.median(times), out


def report_cli(manifest: Any, analyst: Any, spec: Mapping[str, Any], folder: Path) -> None:
    """``genofed job submit`` and ``genofed job status`` as processes against the running coordinator."""
    config = str(manifest.analysts[0].config)
    spec_file = folder / "spec.yaml"
    spec_file.write_text(json.dumps(dict(spec)))
    python = sys.executable
    bare, _ = _seconds([python, "-c", "pass"])
    imports, _ = _seconds([python, "-c", "import pipeline.cli, pipeline.federation.analyst"])
    submit, out = _seconds([_genofed(), "job", "submit", str(spec_file), "--config", config, "--json"])
    job_id = json.loads(out)["job_id"]
    _wait_done(analyst, job_id)
    status, _ = _seconds([_genofed(), "job", "status", job_id, "--config", config, "--json"])
    print("== the analyst's commands as processes (median of 5) ==")
    print(f"  python -c pass: {_ms(bare)}; import pipeline.cli + pipeline.federation.analyst: {_ms(imports)}")
    print(f"  genofed job submit: {_ms(submit)}; genofed job status: {_ms(status)} "
          f"(request, TLS and config: about {_ms(status - imports)})")


def _import_seconds(stderr: str) -> float:
    """Seconds of imports reported by ``-X importtime`` (the top-level imports' cumulative times)."""
    total = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and not line.startswith("import time: self"):
            _, cumulative, name = line[len("import time:"):].split("|")
            if not name.startswith("  "):
                total += int(cumulative)
    return total / 1e6


def report_latency(names: list[str], *, length: int, threshold: int, jobs: int) -> None:
    """``--latency``: the analyst's commands, then small jobs with warm and with cold agents, each split into parts."""
    timeline = _Timeline()
    timeline.install()
    warm, cold = names, [f"cold{i:02d}" for i in range(len(names))]

    def spec(sites: list[str]) -> dict[str, Any]:
        return {**secure_sum_spec(length=length, threshold=threshold, neighbours=None), "sites": sites}

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = rs.write_dataset(tmp / "data", rs.variant_ids(range(100, 110)), rs.random_genotypes(0, 10, 20))
        manifest = rs.provision_federation(tmp / "fed", {name: data for name in warm + cold})
        with rs.ThreadedCoordinator(manifest.coordinator.config), rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            with rs.agent_threads(manifest, warm, max_idle=600, once=False):
                first, _ = timed_job(analyst, timeline, spec(warm))
                report_cli(manifest, analyst, spec(warm), tmp)
                print(f"== a secure sum of {length:,} values, {len(warm)} sites, threshold {threshold}, loopback mutual TLS ==")
                describe_jobs("warm agents, first job (first calls: connections, caches, any JIT)", [first])
                describe_jobs("warm agents (threads already long-polling)", [timed_job(analyst, timeline, spec(warm))[0] for _ in range(jobs)])
                cold_jobs, starts, import_times = [], [], []
                for _ in range(max(1, jobs // 2)):
                    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
                    site_configs = {site.name: site.config for site in manifest.sites if site.name in cold}

                    def start_agents() -> tuple[float, list[Any]]:
                        with timeline.lock:
                            timeline.first_request.clear()
                        spawned = time.perf_counter()
                        # -X importtime's report goes to a file: a full pipe would stop the agent.
                        return spawned, [subprocess.Popen([_genofed(), "site", "run", "--config", str(config), "--once", "--max-idle", "5"],
                                                          stdout=subprocess.DEVNULL, stderr=(tmp / f"{name}.err").open("w"), env=env)
                                         for name, config in site_configs.items()]

                    measure, (spawned, processes) = timed_job(analyst, timeline, spec(cold), start_agents=start_agents)
                    cold_jobs.append(measure)
                    with timeline.lock:
                        starts.append(statistics.median(timeline.first_request[name] - spawned for name in cold))
                    for process in processes:
                        process.wait(timeout=120)
                    import_times += [_import_seconds((tmp / f"{name}.err").read_text()) for name in cold]
                describe_jobs("cold agents (genofed site run --once, started with the job)", cold_jobs)
                print(f"    of which process start -> first request: {_ms(statistics.median(starts))} "
                      f"(imports in an agent process over its life: {_ms(statistics.median(import_times))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=None, help="SecAgg+ neighbours per site (default: every site)")
    parser.add_argument("--active-only", action="store_true",
                        help="only the cost of the active-adversary defences (signed keys, consistency round): off vs on")
    parser.add_argument("--latency", action="store_true",
                        help="where a small job's time goes (--rounds jobs; try --sites 3 --length 1000): CLI, stages, hand-offs, storage")
    args = parser.parse_args()
    names = [f"site{i:02d}" for i in range(args.sites)]
    # The benchmark's sites accept a majority of the shareholders (runtime_support provisions them so).
    threshold = max(2, minimum_threshold(shareholders(args.sites, args.neighbours), "majority"))
    spec = secure_sum_spec(length=args.length, threshold=threshold, neighbours=args.neighbours)
    warm_up_spec = secure_sum_spec(length=WARM_UP_LENGTH, threshold=threshold, neighbours=args.neighbours)
    graph = f"SecAgg+ with {args.neighbours} neighbours" if args.neighbours else "complete graph"
    title = (f"{args.sites} sites x {args.length:,} values per round ({graph}, threshold {threshold}), {args.rounds} rounds"
             f"{' of each' if args.active_only else ''}, loopback mutual TLS")

    if args.latency:
        report_latency(names, length=args.length, threshold=threshold, jobs=args.rounds)
        return
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
