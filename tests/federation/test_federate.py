"""``genofed federate``: a whole federation of processes on this machine, and its clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.analyses.census import COUNT_FIELDS
from pipeline.stats.hwe import hwe_exact_p
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

REPO = rs.REPO


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("federate")
    data = {}
    for i, (start, size) in enumerate(((100, 40), (105, 30), (95, 25))):
        ids = rs.variant_ids(range(start, start + 30))
        calls = rs.random_genotypes(40 + i, len(ids), size, missing_rate=0.01)
        data[f"d{i}"] = (ids, calls, rs.write_dataset(tmp / f"site{i}.dataset", ids, calls))
    return data


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (to check nothing was left running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _minor_allele_count(calls: np.ndarray) -> int:
    called = calls[calls >= 0].astype(np.int64)
    return int(min(called.sum(), 2 * called.size - called.sum()))


def test_federate__census_equals_pooled_and_leaves_no_process(cohort, tmp_path):
    out = tmp_path / "run"
    arguments = [sys.executable, "-m", "pipeline.cli", "federate", "--job", str(REPO / "workflows" / "census.yaml"), "--out", str(out), "--json"]
    for _, _, path in cohort.values():
        arguments += ["--site", str(path)]
    done = subprocess.run(arguments, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "done" and len(summary["sites"]) == 3
    assert summary["sites_unfinished"] == {}  # every agent did its end-of-job step and exited before federate returned
    assert not _processes_mentioning(str(out)), "federate left processes running"
    table = pq.read_table(out / "results" / "census_variants.parquet").to_pydict()
    union = sorted(set().union(*(ids for ids, _, _ in cohort.values())))
    # Sites share keys at or above their policy minimum (provision's default, 5).
    assert set(table["variant_id"]) <= set(union) and len(table["variant_id"]) > 0
    # A site whose own minor allele count is 1..4 (below the policy minimum of 5) leaves the variant out of its counts.
    pooled = {name: [] for name in COUNT_FIELDS}
    left_out = []
    for variant in table["variant_id"]:
        held = [calls[ids.index(variant)] for ids, calls, _ in cohort.values() if variant in ids]
        kept = [g for g in held if not 0 < _minor_allele_count(g) < 5]
        left_out.append(len(held) - len(kept))
        calls = np.concatenate(kept) if kept else np.zeros(0, np.int8)
        for name, value in zip(COUNT_FIELDS, (0, 1, 2, -1)):
            pooled[name].append(int((calls == value).sum()))
    assert table["n_sites_left_out"] == left_out and any(left_out)
    publishable = np.array(table["publishable"])
    assert publishable.any()
    for name in COUNT_FIELDS:
        np.testing.assert_array_equal(np.array(table[name], dtype=object)[publishable], np.array(pooled[name])[publishable])
    p = hwe_exact_p(*(np.array(pooled[n])[publishable] for n in COUNT_FIELDS[:3]))
    np.testing.assert_allclose(np.array(table["hwe_p_value"], dtype=float)[publishable], p, rtol=1e-12)
    assert summary["summary"]["num_samples"] == 95
    assert (out / "results" / "summary.json").is_file() and (out / "results" / "filter.parquet").is_file()
    from pipeline.federation.audit import verify

    for log in (out / "federation").rglob("audit.log"):
        assert verify(log).ok, log


def test_federate__interrupted_stops_every_process(cohort, tmp_path):
    out = tmp_path / "interrupted"
    spec = tmp_path / "sum.yaml"
    spec.write_text("analysis: secure_sum\nvector: {source: test, length: 8}\n")
    arguments = [sys.executable, "-m", "pipeline.cli", "federate", "--job", str(spec), "--out", str(out)]
    for _, _, path in cohort.values():
        arguments += ["--site", str(path)]
    process = subprocess.Popen(arguments, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    frozen: list[int] = []
    try:
        # Freeze the first site agent as soon as it exists: the job cannot finish before the
        # interrupt, whatever the machine's load (federate must still stop the frozen agent).
        deadline = time.monotonic() + 60
        while not frozen and time.monotonic() < deadline:
            # The run works in a temporary folder beside OUT (renamed to OUT only when done): look under tmp_path.
            frozen = [pid for pid in _processes_mentioning(str(tmp_path)) if b"site run" in _cmdline(pid)][:1]
            time.sleep(0.02)
        assert frozen, "no site agent started"
        os.kill(frozen[0], signal.SIGSTOP)
        os.kill(process.pid, signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode != 0, "the job finished before the interrupt; nothing was tested"
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(str(tmp_path)), "federate left processes running after Ctrl-C"
    # Nothing half-written at OUT (the same command runs again without --force); the logs are kept beside it.
    assert not out.exists()
    assert (tmp_path / "interrupted.failed" / "logs" / "coordinator.log").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
