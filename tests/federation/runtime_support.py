"""Helpers of the federation runtime tests: tiny datasets, a provisioned federation, servers.

Datasets are built from numpy genotype matrices with :mod:`pipeline.dataset`, so the
tests can compute pooled statistics directly from the same matrices.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import dataset as dataset_io
from pipeline.federation import analyst
from pipeline.federation.config import SiteConfig, SitePolicy
from pipeline.federation.provision import provision

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def variant_ids(positions: Sequence[int], contig: str = "chr22") -> list[str]:
    return [f"{contig}:{p}:A:G" for p in positions]


def random_genotypes(seed: int, num_variants: int, num_samples: int, *, missing_rate: float = 0.05) -> np.ndarray:
    """int8 (variants, samples) dosages with per-variant frequencies and some missing calls."""
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.0, 0.6, size=(num_variants, 1))
    calls = rng.binomial(2, frequency, size=(num_variants, num_samples)).astype(np.int8)
    calls[rng.random(calls.shape) < missing_rate] = -1
    return calls


def write_dataset(root: Path, ids: Sequence[str], call_dosage: np.ndarray, *, sample_prefix: str = "S", chunk_size: int = 7,
                  dosage: np.ndarray | None = None) -> Path:
    """A dataset of ``call_dosage`` (variants x samples), in chunks of ``chunk_size`` variants.

    ``dosage``: (variants x samples) float dosages (NaN missing) stored beside the calls, as ingest stores FORMAT/DS.
    """
    root.mkdir(parents=True, exist_ok=True)
    num_variants, num_samples = call_dosage.shape
    chunks = []
    for index, start in enumerate(range(0, num_variants, chunk_size)):
        stop = min(start + chunk_size, num_variants)
        part = list(ids[start:stop])
        positions = [int(v.split(":")[1]) for v in part]
        n = len(part)
        variants = pa.table(
            {
                "variant_id": pa.array(part, pa.string()),
                "chromosome": pa.array([v.split(":")[0] for v in part], pa.string()),
                "base_pair_location": pa.array(positions, pa.int64()),
                "ref": pa.array([v.split(":")[2] for v in part], pa.string()),
                "alt": pa.array([v.split(":")[3] for v in part], pa.string()),
                "original_id": pa.array([None] * n, pa.string()),
                "info_score": pa.nulls(n, pa.float32()),
                "source_position": pa.array(positions, pa.int64()),
                "split_from_multiallelic": pa.array([False] * n),
                "swapped": pa.array([False] * n),
                "strand_flipped": pa.array([False] * n),
                "strand_ambiguous": pa.array([False] * n),
                "ref_checked": pa.array([False] * n),
            }
        )
        block = dataset_io.Block(variants=variants, call_dosage=call_dosage[start:stop],
                                 dosage=None if dosage is None else dosage[start:stop])
        chunks.append(dataset_io.write_chunk(root, index, block))
    samples = pa.table(
        {
            "sample_index": pa.array(np.arange(num_samples, dtype=np.int32)),
            "sample_id": pa.array([f"{sample_prefix}{i}" for i in range(num_samples)], pa.string()),
            "has_phenotypes": pa.array([False] * num_samples),
        }
    )
    dataset_io.write_metadata(root, samples=samples, chunks=chunks)
    return root


def set_policy(site_toml: Path, **values: Any) -> None:
    """Rewrites keys of a site.toml's [policy] table (the file provision wrote)."""
    text = site_toml.read_text()
    head, _, policy = text.partition("[policy]")
    lines = [line for line in policy.splitlines() if not any(re.match(rf"\s*{k}\s*=", line) for k in values)]
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, (list, tuple)):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            rendered = repr(value)
        lines.append(f"{key} = {rendered}")
    site_toml.write_text(head + "[policy]" + "\n".join(lines) + "\n")


def provision_federation(out: Path, datasets: dict[str, Path], *, port: int | None = None, min_samples: int = 5,
                         min_allele_count: int = 0, analyses: Sequence[str] = ("secure_sum", "census"),
                         threshold_rule: str = "majority", analysts: Sequence[str] = ("analyst",),
                         operators: Sequence[str] = ()) -> Any:
    """Provisions a federation whose sites use ``datasets`` (and ``analysts``); returns the manifest.

    The sites accept a majority threshold (``threshold_rule``), so that jobs of three
    sites with ``threshold: 2`` can show dropout recovery; provisioned sites default to
    two thirds.
    """
    from pipeline.federation.provision import provision

    manifest = provision(out, federation="testfed", sites=sorted(datasets), analysts=tuple(analysts), operators=tuple(operators),
                         coordinator_port=port or free_port(), valid_days=2, allowed_analyses=tuple(analyses),
                         share_variant_keys=True)
    for site in manifest.sites:
        toml = site.config
        text = toml.read_text().replace('dataset = "dataset"', f'dataset = "{datasets[site.name]}"').replace(
            "poll_interval = 2.0", "poll_interval = 0.2")
        toml.write_text(text)
        set_policy(toml, min_samples=min_samples, min_allele_count=min_allele_count, threshold_rule=threshold_rule)
    return manifest


def small_datasets(root: Path, names: Sequence[str], *, num_variants: int, num_samples: int, seed: int) -> dict[str, Path]:
    """One small random dataset per site name (same variants everywhere), for runtime tests that only sum."""
    ids = variant_ids(range(100, 100 + num_variants))
    return {name: write_dataset(root / f"data-{name}", ids, random_genotypes(seed + i, len(ids), num_samples))
            for i, name in enumerate(names)}


def in_process_site_configs(tmp_path: Path, datasets: dict[str, Path], policy: SitePolicy) -> dict[str, SiteConfig]:
    """Configs of site agents that talk to a coordinator engine in process (no server).

    A site agent starts only with its own certificate and a roster the CA signed, so
    the sites get real ones (federation ``testfed``); the coordinator URL is never used.
    """
    manifest = provision(tmp_path / "federation", federation="testfed", sites=sorted(datasets), analysts=("analyst",),
                         valid_days=2)
    return {
        site.name: SiteConfig(
            path=site.config, name=site.name, federation="testfed", coordinator_url="https://x:1", cert=site.cert,
            key=site.key, ca=site.folder / "ca.pem", roster=site.folder / "roster.json", dataset=datasets[site.name],
            policy=policy, audit_log=tmp_path / f"{site.name}.audit.log", state_dir=tmp_path / f"{site.name}-state",
            poll_interval=0.1,
        )
        for site in manifest.sites
    }


class ThreadedCoordinator:
    """A coordinator served by uvicorn in a thread of the test process."""

    def __init__(self, config_path: Path) -> None:
        from pipeline.federation.api import (
            build_coordinator,
            coordinator_server,
            create_app,
        )
        from pipeline.federation.config import load_coordinator_config

        self.config = load_coordinator_config(config_path)
        self.coordinator = build_coordinator(self.config)
        app = self.app = create_app(self.coordinator, self.config, tick_seconds=0.1)
        self.server = coordinator_server(self.config, app, configure_logging=False)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedCoordinator:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def connection(participant_folder: Path, url: str, **kwargs: Any) -> Any:
    from pipeline.federation.transport import Connection

    return Connection(url, cert=participant_folder / "cert.pem", key=participant_folder / "key.pem",
                      ca=participant_folder / "ca.pem", **kwargs)


@contextlib.contextmanager
def agent_threads(manifest: Any, names: Sequence[str] | None = None, *, max_idle: float = 60.0,
                  stop_after: dict[str, int] | None = None, configure: Any = None, once: bool = True) -> Iterator[dict[str, Any]]:
    """Site agents in threads; yields {name: agent}; stops and joins them on exit.

    With ``once`` an agent exits when the jobs it took part in have finished.

    ``stop_after={name: n}`` makes that agent go silent after n tasks (a crash from the
    coordinator's point of view); ``configure(config) -> config`` edits each SiteConfig.
    """
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import load_site_config

    stop = threading.Event()
    agents: dict[str, Any] = {}
    threads = []
    for site in manifest.sites:
        if names is not None and site.name not in names:
            continue
        config = load_site_config(site.config)
        agent = SiteAgent(configure(config) if configure else config)
        agents[site.name] = agent
        limit = (stop_after or {}).get(site.name)

        def should_stop(agent: Any = agent, limit: int | None = limit) -> bool:
            return stop.is_set() or (limit is not None and agent.tasks_done >= limit)

        thread = threading.Thread(target=agent.run, kwargs={"once": once, "max_idle": max_idle, "should_stop": should_stop}, daemon=True)
        thread.start()
        threads.append(thread)
    try:
        yield agents
    finally:
        if once:
            # Let the agents see that their jobs ended (and run their end-of-job hooks).
            deadline = time.monotonic() + 10
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for agent in agents.values():
            agent.connection.close()


def audit_events(manifest: Any, site: str, job_id: str) -> list[dict[str, Any]]:
    """The events of ``job_id`` in ``site``'s own audit log, each as ``{"event": ..., **fields}``."""
    import json

    folder = next(s.folder for s in manifest.sites if s.name == site)
    entries = [json.loads(line) for line in (folder / "audit.log").read_text().splitlines() if line.strip()]
    return [{"event": e["event"], **e["fields"]} for e in entries if e["fields"].get("job_id") == job_id]


def decline_detail(manifest: Any, site: str, job_id: str) -> str:
    """Why ``site`` declined ``job_id``, as its own audit log says (the analyst sees only the code)."""
    return " ".join(e["reason"] for e in audit_events(manifest, site, job_id) if e["event"] == "job.declined")


def wait_for_job(conn: Any, job_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """The job's status once it has ended (or after ``timeout`` s), long-polling as ``genofed job wait`` does."""
    return analyst.wait_for_job(conn, job_id, timeout=timeout)


def start_coordinator_process(config_path: Path, log_path: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``genofed coordinator serve`` as a child process (its own process group), with ``env`` added to ours."""
    handle = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "coordinator", "serve", "--config", str(config_path)],
        stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env={**os.environ, **(env or {})},
    )


def start_site_process(config_path: Path, log_path: Path, *, once: bool = True) -> subprocess.Popen[bytes]:
    """``genofed site run`` as a child process (its own process group): a one-job worker, or with ``once=False`` a service."""
    handle = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "site", "run", "--config", str(config_path), *(["--once"] if once else [])],
        stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
    )


def wait_until_serving(conn: Any, *, timeout: float = 30.0) -> None:
    conn.wait_until_answering("/v1/health", timeout=timeout)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child process we started (by its id), and reap it."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill(process)


class DirectConnection:
    """A stand-in for transport.Connection that routes a site's requests to a Coordinator."""

    def __init__(self, holder: dict, site: str) -> None:
        self.holder, self.site = holder, site

    @property
    def engine(self):
        return self.holder["coordinator"]

    def _parts(self, path: str) -> list[str]:
        return path.split("?")[0].strip("/").split("/")

    def get_json(self, path: str, **_: object):
        parts = self._parts(path)
        if parts[:3] == ["v1", "site", "work"]:
            return {"task": self.engine.next_task(self.site), "active_jobs": self.engine.active_jobs(self.site)}
        return self.engine.round_state(self.site, parts[3], int(parts[5]))

    def get_bytes(self, path: str) -> bytes:
        parts = self._parts(path)
        return self.engine.stage_message(self.site, parts[3], int(parts[5]), parts[7])

    def put_bytes(self, path: str, body: bytes):
        parts = self._parts(path)
        return self.engine.receive(self.site, parts[3], int(parts[5]), parts[7], parts[9], body)

    def post_json(self, path: str, value: dict, **_: object):
        self.engine.decline(self.site, self._parts(path)[3], value["reason"])
        return {}

    def close(self) -> None:
        pass


class ManualClock:
    """A coordinator clock the test moves: a stage deadline passes when the test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run_job_in_process(tmp_path: Path, datasets: dict[str, Path], analysis: str, spec: dict[str, Any], *,
                       absent: Callable[[str, dict[str, Any]], bool] = lambda site, task: False,
                       timeout: float = 600.0) -> tuple[Any, str]:
    """Runs a job to its end with a coordinator engine and in-process site agents (no server).

    A site skips every task ``absent(site, task)`` says it misses; when no site has
    anything to do, the clock jumps past the stage deadline. Sites allow ``analysis``,
    k = 3, share variant keys; the job's threshold is 2.

    Returns:
        The coordinator engine and the job's ID.
    """
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.audit import AuditLog
    from pipeline.federation.coordinator import Coordinator
    from pipeline.federation.store import Store

    sites = tuple(sorted(datasets))
    tmp_path.mkdir(parents=True, exist_ok=True)
    clock = ManualClock()
    holder = {"coordinator": Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=sites,
                                         audit=AuditLog(tmp_path / "audit.log"), clock=clock)}
    engine = holder["coordinator"]
    policy = SitePolicy(allowed_analyses=(analysis,), min_samples=3, min_allele_count=0, share_variant_keys=True,
                        threshold_rule="majority")
    configs = in_process_site_configs(tmp_path, datasets, policy)
    agents = {name: SiteAgent(configs[name], connection=DirectConnection(holder, name)) for name in sites}
    job_id = engine.submit({**spec, "analysis": analysis, "threshold": 2, "stage_timeout": timeout}, "analyst")
    while engine.status(job_id)["status"] == "running":
        progressed = False
        for name in sites:
            task = engine.next_task(name)
            if task is None or absent(name, task):
                continue
            agents[name].handle(task)
            progressed = True
        if not progressed:
            clock.now += timeout + 1
            assert engine.tick(), engine.status(job_id)
    return engine, job_id


def preflight_upload(job_id: str, site: str) -> tuple[str, bytes]:
    """The path and body of ``site``'s pre-flight answer to ``job_id``: what a ready agent uploads first."""
    from pipeline.federation.rounds import PREFLIGHT_READY, PREFLIGHT_STAGE

    return f"/v1/site/jobs/{job_id}/rounds/0/stages/{PREFLIGHT_STAGE}/messages/{site}-ready-{job_id[-8:]}", PREFLIGHT_READY
