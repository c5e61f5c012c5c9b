"""Benchmark: the federated variant census (QC stage of GWAS) at the GWAS benchmark's size.

Data: 3 sites, ``--samples`` in total (default 10,002), ``--variants`` (default 100,000)
random genotypes with per-variant allele frequencies and 1% missing calls, chunks of
10,000 variants (as ``tests/benchmarks/gwas.py``). Timed in this one run:

1. **parts**: each piece of the census on one site's data or on the global counts:
   reading the dataset, the count kernels, the site's key step and count step, the key
   union, the JSON round trip of the state, the HWE exact test and the result table;
2. **plain**: :func:`pipeline.federation.in_memory.run_in_memory` with plain sums (sites
   one after another, one process), split into the key round and the counts round;
3. **secure**: the same through the secure-aggregation protocol in memory;
4. **federate**: ``genofed federate`` with ``workflows/census.yaml`` (coordinator and 3
   site agents as processes, mutual TLS), wall time and the job time from the
   coordinator's audit log (``--no-federate`` skips it).

Run: ``python tests/benchmarks/census.py [--samples 10002] [--variants 100000] [--keep DIR]``.
With ``--keep DIR`` the datasets are written once and reused by later runs. Every party
shares this machine's cores (and whoever else uses them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.analyses import census as census_module  # noqa: E402
from pipeline.analyses.census import CENSUS, COUNT_FIELDS, census_table  # noqa: E402
from pipeline.federation.in_memory import default_context, run_in_memory  # noqa: E402
from pipeline.dataset import open_dataset  # noqa: E402
from pipeline.federation.rounds import decode_keys, encode_keys, union_keys  # noqa: E402
from pipeline.federation.localhost import federate  # noqa: E402
from pipeline.stats.counts import ENGINES, count_variants, default_engine  # noqa: E402
from pipeline.stats.hwe import hwe_exact_p  # noqa: E402
from tests.benchmarks.audit_times import event_clock  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402


def make_sites(root: Path, samples: int, variants: int, seed: int = 0) -> dict[str, Path]:
    """Writes (or reuses) 3 site datasets of random calls; returns name -> path."""
    sizes = [samples // 3, samples // 3, samples - 2 * (samples // 3)]
    marker = root / "census-bench.json"
    sites = {f"site-{i + 1}": root / f"site{i + 1}" for i in range(3)}
    wanted = {"samples": samples, "variants": variants, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return sites
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.02, 0.5, size=(variants, 1)).astype(np.float32)
    ids = rs.variant_ids(range(1000, 1000 + 10 * variants, 10))
    for (name, path), size in zip(sites.items(), sizes):
        calls = (rng.random((variants, size), dtype=np.float32) < frequency).astype(np.int8)
        calls += (rng.random((variants, size), dtype=np.float32) < frequency).astype(np.int8)
        calls[rng.random((variants, size), dtype=np.float32) < 0.01] = -1
        shutil.rmtree(path, ignore_errors=True)
        rs.write_dataset(path, ids, calls, sample_prefix=f"{name}-", chunk_size=10_000)
        del calls
    marker.write_text(json.dumps(wanted))
    return sites


def forget_counts() -> None:
    """Empties the census's per-process memo of site counts, so that a run reads its datasets."""
    memo = getattr(census_module, "_memo", None)
    if memo is not None:
        memo.clear()


def timed(function: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last call's value."""
    best, value = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - started)
    return best, value


def parts(sites: dict[str, Path], spec: dict[str, Any]) -> None:
    """Times each piece of the census separately (one site, or the global counts)."""
    names = tuple(sorted(sites))
    dataset = open_dataset(sites[names[0]])
    context = default_context(names[0])
    state = CENSUS.init(spec, names)
    blocks = list(dataset.iter_blocks())
    rows: list[tuple[str, float]] = []
    rows.append(("read the dataset (one site, all chunks)", timed(lambda: list(dataset.iter_blocks()))[0]))
    for engine in ENGINES:
        count_variants(blocks[0].call_dosage, engine=engine)  # compile outside the timing
        seconds = timed(lambda: [count_variants(b.call_dosage, engine=engine) for b in blocks])[0]
        rows.append((f"per-variant counts, {engine} engine{' (default)' if engine == default_engine() else ''} (one site)", seconds))
    seconds, keys = timed(lambda: (forget_counts(), CENSUS.site_step(state, 0, dataset, context))[1])
    rows.append(("site step, key round (one site, reads the dataset)", seconds))
    key_sets = [keys["variant_id"]] + [CENSUS.site_step(state, 0, open_dataset(sites[n]), default_context(n))["variant_id"] for n in names[1:]]
    bodies = [encode_keys(keys, "variant_id") for keys in key_sets]
    rows.append(("key sets to Arrow IPC and back (3 sites)", timed(lambda: [decode_keys(encode_keys(k, "variant_id"), "variant_id") for k in key_sets], repeat=3)[0]))
    received = [decode_keys(body, "variant_id") for body in bodies]
    seconds, total = timed(lambda: {"variant_id": union_keys(received)}, repeat=3)
    rows.append(("key union (3 sites, as the runtime forms it)", seconds))
    seconds, (state, _, _) = timed(lambda: CENSUS.coordinator_step(state, 0, total, len(names)), repeat=3)
    rows.append(("coordinator step, key round", seconds))
    seconds, state = timed(lambda: json.loads(json.dumps(state)))
    rows.append((f"JSON round trip of the counts round's state ({len(json.dumps(state)) / 1e6:.1f} MB)", seconds))
    seconds, counts = timed(lambda: CENSUS.site_step(state, 1, dataset, context))
    rows.append(("site step, counts round (one site, counts kept from the key round)", seconds))
    global_counts = {name: counts[name] * len(names) for name in COUNT_FIELDS}
    seconds, _ = timed(lambda: hwe_exact_p(global_counts["n_hom_ref"], global_counts["n_het"], global_counts["n_hom_alt"]))
    rows.append((f"HWE exact test ({global_counts['n_het'].size} variants, n = {dataset.num_samples * len(names)})", seconds))
    num_samples = dataset.num_samples * len(names)
    seconds, _ = timed(lambda: census_table(np.asarray(state["variant_ids"], dtype=str), global_counts, num_samples, state["parameters"]))
    rows.append(("census_table (incl. HWE)", seconds))
    summed = {**global_counts, "n_samples": np.array([num_samples], np.int64)}
    rows.append(("coordinator step, counts round", timed(lambda: CENSUS.coordinator_step(state, 1, summed, len(names)))[0]))
    for label, seconds in rows:
        print(f"  {label:<72} {seconds:7.2f} s", flush=True)


def in_memory(sites: dict[str, Path], spec: dict[str, Any], *, secure: bool) -> tuple[float, list[float]]:
    """Wall time of a census in one process, and the time of each round."""
    marks: list[float] = []
    forget_counts()
    started = time.perf_counter()
    run_in_memory(CENSUS, spec, sites, secure=secure, seed=0 if secure else None, on_round=lambda index, state: marks.append(time.perf_counter()))
    seconds = time.perf_counter() - started
    ends = marks[1:] + [started + seconds]
    return seconds, [end - begin for begin, end in zip(marks, ends)]


def audit_split(run: Path) -> str:
    """Job time by round from the coordinator's audit log."""
    when = event_clock(run)

    submitted, counts, done = when("job.submitted"), when("round.opened", round=1), when("job.done")
    return (f"job {done - submitted:.1f} s: key round {counts - submitted:.1f} s (includes the sites' start-up), "
            f"counts round {done - counts:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_002)
    parser.add_argument("--variants", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep and reuse (default: a temporary one)")
    parser.add_argument("--no-federate", action="store_true", help="skip the genofed federate run")
    parser.add_argument("--no-parts", action="store_true", help="skip the per-part breakdown")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="census-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sites = make_sites(root, args.samples, args.variants)
    print(f"data: 3 sites, {args.samples} samples, {args.variants} variants (ready in {time.perf_counter() - started:.1f} s)", flush=True)
    job = yaml.safe_load((REPO / "workflows" / "census.yaml").read_text())
    spec = {k: v for k, v in job.items() if k not in ("analysis", "stage_timeout", "threshold")}

    if not args.no_parts:
        print("parts:", flush=True)
        parts(sites, spec)
    run_in_memory(CENSUS, spec, sites)  # warm-up: kernels compile once, untimed
    plain, plain_rounds = in_memory(sites, spec, secure=False)
    print(f"plain sums, one process: {plain:.1f} s (key round {plain_rounds[0]:.1f} s, counts round {plain_rounds[1]:.1f} s)", flush=True)
    secure, secure_rounds = in_memory(sites, spec, secure=True)
    print(f"secure aggregation in memory: {secure:.1f} s (key round {secure_rounds[0]:.1f} s, counts round {secure_rounds[1]:.1f} s); "
          f"secure / plain {secure / plain:.2f}x", flush=True)
    if not args.no_federate:
        started = time.perf_counter()
        federate(list(sites.values()), {**job, "stage_timeout": 600}, root / "run", timeout=3600, force=True)
        federated = time.perf_counter() - started
        print(f"genofed federate (processes, mutual TLS, secure sum): {federated:.1f} s wall; {audit_split(root / 'run')}; "
              f"federate / plain {federated / plain:.2f}x", flush=True)
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
