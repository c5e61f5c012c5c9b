"""Benchmark: secure-sum rounds through the real coordinator on loopback (mutual TLS).

N site agents run in threads of this process, each contributing a vector of D int64
values per round (Z_2^64, 8 bytes per value) through the HTTPS server. Reported:

- rounds per minute, and the ratio of a network round to the same protocol run by the
  in-memory driver (``pipeline.secagg.driver.run_round``) timed in this process;
- bytes each site sends on the wire per round, against the raw vector (D x 8 bytes);
- the coordinator's engine time per round, split into the secure-aggregation server
  transitions (``server_advance``: summing, unmasking kernels, validation) and the rest
  (decoding, digests, SQLite writes, bookkeeping), measured as the time the engine's
  lock is held (the HTTP layer, TLS and JSON/Arrow framing in uvicorn are not included);
  the overhead ratio is that rest over the round's wall time. Audit appends (each syncs
  the log) are written after the lock is released and reported beside it.

Run: ``python tests/benchmarks/federation.py [--sites 10] [--length 1000000] [--rounds 3]
[--neighbours K]`` (``--neighbours``: SecAgg+ with K neighbours per site instead of
the complete graph). All parties share this machine's cores, so timings are an upper
bound of a deployment's.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.federation import coordinator as coordinator_module  # noqa: E402
from pipeline.secagg.driver import run_round  # noqa: E402
from pipeline.encoding import FixedPoint, Ring, encode  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--length", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--neighbours", type=int, default=None, help="SecAgg+ neighbours per site (default: every site)")
    args = parser.parse_args()
    names = [f"site{i:02d}" for i in range(args.sites)]
    # SecAgg+ shares each site's secrets among its k neighbours: the threshold is at most k + 1.
    holders = args.sites if args.neighbours is None else min(args.sites, args.neighbours + 1)
    threshold = max(2, holders // 2 + 1)

    # Baseline: the same protocol in memory (no network, no persistence).
    encoding = FixedPoint(Ring.R64, scale_bits=0, clip=float(2**40))
    vectors = [encode(np.arange(args.length, dtype=np.int64) % 1000, encoding) for _ in names]
    start = time.perf_counter()
    run_round(vectors, threshold=threshold, ring=Ring.R64, num_neighbours=args.neighbours)
    in_memory = time.perf_counter() - start
    del vectors

    # The engine works under one lock: the time it is held is the coordinator's busy time.
    advance_timer, engine_timer, audit_timer = _Timer(), _TimedLock(), _Timer()
    coordinator_module.server_advance = advance_timer.wrap(coordinator_module.server_advance)
    original_init = coordinator_module.Coordinator.__init__

    def init(self, *a, **k):
        original_init(self, *a, **k)
        self._lock = engine_timer
        self.audit.append = audit_timer.wrap(self.audit.append)  # the coordinator's log only

    coordinator_module.Coordinator.__init__ = init

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = rs.write_dataset(tmp / "data", rs.variant_ids(range(100, 110)), rs.random_genotypes(0, 10, 20))
        manifest = rs.provision_federation(tmp / "fed", {name: data for name in names})
        toml = manifest.coordinator.config
        toml.write_text(toml.read_text().replace("[coordinator]", f"[coordinator]\nmax_message_bytes = {16 * args.length + (1 << 20)}", 1))
        spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": args.length}, "stage_timeout": 600,
                "threshold": threshold}
        if args.neighbours is not None:
            spec["num_neighbours"] = args.neighbours
        times, sent = [], []
        with rs.ThreadedCoordinator(toml), rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            with rs.agent_threads(manifest, max_idle=600, once=False) as agents:
                for _ in range(args.rounds):
                    before = {n: a.connection.bytes_sent for n, a in agents.items()}
                    advance_before, engine_before, audit_before = advance_timer.seconds, engine_timer.seconds, audit_timer.seconds
                    start = time.perf_counter()
                    job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
                    status = rs.wait_for_job(analyst, job_id, timeout=1200)
                    times.append(time.perf_counter() - start)
                    assert status["status"] == "done", status
                    sent.append(statistics.mean(a.connection.bytes_sent - before[n] for n, a in agents.items()))
                    print(
                        f"round: {times[-1]:.2f} s wall; coordinator engine {engine_timer.seconds - engine_before:.2f} s "
                        f"(server_advance {advance_timer.seconds - advance_before:.2f} s); "
                        f"audit appends after the lock {audit_timer.seconds - audit_before:.2f} s", flush=True,
                    )
    per_round = statistics.median(times)
    raw = args.length * 8
    engine = engine_timer.seconds / args.rounds
    advance = advance_timer.seconds / args.rounds
    audit = audit_timer.seconds / args.rounds
    graph = f"SecAgg+ with {args.neighbours} neighbours" if args.neighbours else "complete graph"
    print(f"{args.sites} sites x {args.length:,} values per round ({graph}, threshold {threshold}), {args.rounds} rounds, "
          "loopback mutual TLS")
    print(f"  rounds per minute: {60 / per_round:.1f} (median round {per_round:.2f} s)")
    print(f"  same protocol in memory (driver, this process): {in_memory:.2f} s -> network round / in-memory = {per_round / in_memory:.2f}")
    print(f"  bytes sent per site per round: {statistics.mean(sent):,.0f} vs raw vector {raw:,} ({statistics.mean(sent) / raw:.3f}x)")
    print(f"  coordinator engine per round: {engine:.2f} s, of which server_advance {advance:.2f} s; "
          f"outside the aggregation transitions {engine - advance:.2f} s (overhead ratio {(engine - advance) / per_round:.1%} of the round)")
    print(f"  coordinator audit appends per round (after the lock, overlapping other requests): {audit:.2f} s")


if __name__ == "__main__":
    main()
