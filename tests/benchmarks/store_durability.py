"""Benchmark: what the coordinator's durability costs per engine call.

Runs the same census job (3 in-process site agents talking to the engine directly, no
sockets) several times with each configuration, alternating them, in this one process:

1. **baseline**: SQLite synchronous=NORMAL and no audit log (what a crash-unsafe engine
   would cost);
2. **normal+audit**: synchronous=NORMAL with the audit log (each append synced);
3. **full+audit**: synchronous=FULL with the audit log, as the coordinator runs (each
   call's commit synced too).

Prints the median wall time of each and its ratio to the baseline.

Run: ``python tests/benchmarks/store_durability.py [--repeats 5] [--variants 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.federation.agent import SiteAgent  # noqa: E402
from pipeline.federation.audit import AuditLog  # noqa: E402
from pipeline.federation.config import SitePolicy  # noqa: E402
from pipeline.federation.coordinator import Coordinator  # noqa: E402
from pipeline.federation.store import Store  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402

SITES = ("alpha", "beta", "gamma")


class _NormalSyncStore(Store):
    """The store with synchronous=NORMAL: a commit reaches the WAL but is not synced."""

    def _connection(self):  # type: ignore[no-untyped-def]
        fresh = getattr(self._local, "connection", None) is None
        connection = super()._connection()
        if fresh:
            connection.execute("PRAGMA synchronous=NORMAL")
        return connection


def _run_census(root: Path, configs: dict, store_class: type[Store], audited: bool) -> float:
    root.mkdir(parents=True)
    audit = AuditLog(root / "audit.log") if audited else None
    holder = {"coordinator": Coordinator(store_class(root / "coordinator.db"), federation="testfed", sites=SITES, audit=audit)}
    engine = holder["coordinator"]
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in SITES}
    started = time.perf_counter()
    job_id = engine.submit({"analysis": "census", "min_allele_count": 0, "stage_timeout": 600}, "analyst")
    while engine.status(job_id)["status"] == "running":
        for name in SITES:
            task = engine.next_task(name)
            if task is not None:
                agents[name].handle(task)
    elapsed = time.perf_counter() - started
    assert engine.status(job_id)["status"] == "done"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", type=int, default=200)
    args = parser.parse_args()
    variants = {
        "baseline": (_NormalSyncStore, False),
        "normal+audit": (_NormalSyncStore, True),
        "full+audit": (Store, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="genofed-durability-") as scratch:
        root = Path(scratch)
        datasets = rs.small_datasets(root / "data", SITES, num_variants=args.variants, num_samples=50, seed=5)
        policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True)
        for repeat in range(args.repeats + 1):  # the first pass warms caches and is not counted
            for name, (store_class, audited) in variants.items():
                run_root = root / f"{name}-{repeat}"
                # fresh agent state per run: a site takes part in a round once
                configs = rs.in_process_site_configs(run_root / "sites", datasets, policy)
                elapsed = _run_census(run_root / "coordinator", configs, store_class, audited)
                if repeat:
                    times[name].append(elapsed)
    base = statistics.median(times["baseline"])
    print(f"census job, 3 in-process sites, {args.variants} variants, median of {args.repeats} runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<13} {median * 1000:8.1f} ms   x{median / base:.2f} of baseline")


if __name__ == "__main__":
    main()
