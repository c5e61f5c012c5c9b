"""``genofed federate``: a whole federation on this machine, for trying a job end to end.

Provisions throwaway certificates (:func:`pipeline.federation.provision.provision`) in
``OUT/federation``, starts the coordinator and one site agent per dataset as separate
processes on 127.0.0.1 (a free port, mutual TLS: the same code and the same wire as a
real deployment), submits the job as the analyst, waits, writes the results to
``OUT/results``, waits for every site agent to write its own outputs and exit (a site
that did not is named in the summary), and stops every process it started, also on
Ctrl-C or an error.
Each process logs to ``OUT/logs/``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import dataset as dataset_io
from pipeline import outputs
from pipeline.analyses.registry import ANALYSIS_NAMES
from pipeline.errors import AggregationAborted, ConfigurationError, GenofedError, ProtocolError
from pipeline.federation import transport
from pipeline.federation.analyst import analyst_connection, wait_for_job
from pipeline.federation.analyst_results import download_results
from pipeline.federation.job_spec import load_spec, parse_round_options
from pipeline.federation.provision import ProvisionManifest, provision
from pipeline.secagg.prg import PRGS

log = logging.getLogger(__name__)

__all__ = ["LocalFederation", "federate", "free_port", "local_federation"]

FEDERATION = "local"

WITH_BASELINES = frozenset({"pca", "train"})
"""The analyses with baselines that need every site's data (:data:`pipeline.federation.baselines.BASELINES`)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _spawn(arguments: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", *arguments], stdout=handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


SITE_FINISH_SECONDS = 120.0
"""How long a site agent may take to write its own outputs after the job, before it is stopped."""


def _wait_for_sites(agents: Mapping[str, subprocess.Popen[bytes]], logs: Path, *, timeout: float) -> dict[str, str]:
    """Waits until every site agent has exited, or ``timeout`` seconds have passed.

    An agent run with ``--once`` exits only after writing its own outputs of the job
    (``site_finish``), so its exit is the condition, not a guess at how long that takes.

    Returns:
        For each site that did not finish its step cleanly, why (still running, or the
        exit status), naming its log.
    """
    deadline = time.monotonic() + timeout
    unfinished: dict[str, str] = {}
    for name, process in agents.items():
        try:
            code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            unfinished[name] = f"still running {timeout:.0f} s after the job ended, stopped; see {logs / f'{name}.log'}"
            continue
        if code != 0:
            unfinished[name] = f"exited with status {code}; see {logs / f'{name}.log'}"
    for name, reason in unfinished.items():
        log.warning("site %s did not finish its own step of the job: %s", name, reason)
    return unfinished


def _stop(processes: Sequence[subprocess.Popen[bytes]], *, grace: float = 5.0) -> None:
    """SIGTERM each child we started (by pid), then SIGKILL the ones still alive after ``grace``."""
    for process in processes:
        if process.poll() is None:
            with _ignore_missing():
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with _ignore_missing():
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


class _ignore_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        return kind is ProcessLookupError


def _site_names(datasets: Sequence[Path]) -> list[str]:
    return [f"site-{index + 1}" for index in range(len(datasets))]


def _wait_until_serving(connection: transport.Connection, coordinator: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    def running() -> None:
        if coordinator.poll() is not None:
            raise ConfigurationError(f"the coordinator exited with code {coordinator.returncode}; see {log_path}")

    try:
        connection.wait_until_answering("/v1/health", timeout=timeout, check=running)
    except transport.ConnectionFailure as failure:
        raise ConfigurationError(f"the coordinator did not answer: {failure}; see {log_path}") from None


def federate(
    datasets: Sequence[Path | str],
    spec: Path | str | Mapping[str, Any],
    out: Path | str,
    *,
    threshold: int | None = None,
    timeout: float = 900.0,
    force: bool = False,
) -> dict[str, Any]:
    """Runs one job across a federation of local processes, one site per dataset.

    Args:
        datasets: one harmonized dataset folder per site (``genofed ingest --out``).
        spec: the job spec (YAML file or mapping), e.g. ``workflows/census.yaml``.
        out: folder to create: ``federation/`` (certificates, configs, database, audit
            logs), ``logs/`` and ``results/``. It appears only when the job is done; a
            run that fails leaves no ``out`` but its folder as ``OUT.failed`` (logs).
        threshold: overrides the spec's threshold (sites that must answer each stage).
        timeout: seconds to wait for the job.
        force: replace ``out``.

    Returns:
        A summary: job ID, status, sites, result summary and paths.

    Raises:
        ConfigurationError: fewer than 2 datasets, a bad spec, or a process that fails to start.
        AggregationAborted: the job failed (the coordinator's reason is in the message).
    """
    paths = [Path(d).resolve() for d in datasets]
    if len(paths) < 2:
        raise ConfigurationError(f"a federation needs at least 2 sites, got {len(paths)} datasets (repeat --site)")
    for path in paths:
        dataset_io.open_dataset(path)  # fails early, naming the folder, if it is not a dataset
    spec_dict = load_spec(spec, {"threshold": threshold})
    # Fails early on an unknown analysis (listing the known ones), without importing it here.
    analysis = parse_round_options(
        spec_dict, _site_names(paths), known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS
    ).analysis
    target = Path(out)
    outputs.check_output_path(target, force=force)
    names = _site_names(paths)
    # Everything is written in a temporary folder renamed to OUT at the end: a run that fails
    # leaves no OUT to --force away; its logs and federation (audit logs) go to OUT.failed.
    failed = target.with_name(f"{target.name}.failed")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    started = time.monotonic()
    try:
        with outputs.atomic_directory(target, force=force) as work:
            try:
                with local_federation(work, paths, analyses=(str(analysis),), once=True, shown=failed) as running:
                    job_id, status = running.run_job(spec_dict, timeout=timeout)
                    results = download_results(running.connection, job_id, work / "results")
                    # Sites write what stays with them (PCA scores, the model) once they see the job end,
                    # then exit on their own (--once): wait for that, with the coordinator up, before stopping anything.
                    unfinished = _wait_for_sites(running.agents, target / "logs", timeout=SITE_FINISH_SECONDS)
            except BaseException:
                _keep_failed(work, failed)
                raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    logs = target / "logs"
    extra: dict[str, Any] = {}
    if analysis in WITH_BASELINES:
        # Imported only here: the baselines bring Flax and Matplotlib, seconds that other analyses need not wait.
        from pipeline.federation.baselines import BASELINES

        # Everything runs here, so the analysis may add what a real federation cannot (pooled data).
        extra["baselines"] = BASELINES[analysis](spec_dict, paths, target / "results", results["summary"])
    return {
        "job_id": job_id,
        "status": status["status"],
        "analysis": analysis,
        "sites": dict(zip(names, map(str, paths))),
        "declined": status.get("declined", {}),
        "sites_unfinished": unfinished,
        "seconds": round(time.monotonic() - started, 1),
        "results": str(target / "results"),
        "federation": str(target / "federation"),
        "logs": str(logs),
        "summary": results["summary"],
        **extra,
    }


@dataclass
class LocalFederation:
    """A running federation of local processes: the analyst's connection, the agents and where they log."""

    manifest: ProvisionManifest
    connection: transport.Connection
    agents: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def run_job(self, spec: Mapping[str, Any], *, timeout: float) -> tuple[str, dict[str, Any]]:
        """Submits ``spec`` as the analyst and waits for it; returns the job ID and its final status.

        Raises:
            GenofedError: the job did not end within ``timeout`` seconds.
            AggregationAborted: the job failed or was cancelled (the coordinator's reason).
        """
        job_id = self.connection.post_json("/v1/jobs", {"spec": dict(spec)})["job_id"]
        status = wait_for_job(self.connection, job_id, timeout=timeout)
        if status["status"] == "running":
            raise GenofedError(f"job {job_id} did not finish within {timeout:.0f} s (stage {status.get('stage')}); "
                               f"see {self.logs}")
        if status["status"] != "done":
            raise AggregationAborted(f"job {job_id} {status['status']}: {status.get('error')}; logs in {self.logs}")
        return job_id, status


@contextmanager
def local_federation(
    work: Path, datasets: Sequence[Path], *, analyses: Sequence[str], once: bool, shown: Path | None = None
) -> Iterator[LocalFederation]:
    """Provisions ``work/federation``, starts the coordinator and one agent per dataset; stops them all on leaving.

    Args:
        work: an empty folder: ``federation/`` (certificates, configs, database, audit logs) and ``logs/``.
        datasets: one harmonized dataset per site, named ``site-1``, ``site-2``, ... in this order.
        analyses: what the sites' policies allow.
        once: agents exit once the jobs they took part in have ended (``genofed site run --once``);
            without it they keep long-polling for jobs, as deployed agents do.
        shown: the folder the logs will be found in when the caller moves ``work`` (error messages name it).
    """
    names = _site_names(datasets)
    shown_logs = (shown or work) / "logs"
    manifest = provision(
        work / "federation", federation=FEDERATION, sites=names, analysts=("analyst",),
        coordinator_port=free_port(), valid_days=2, allowed_analyses=tuple(analyses), share_variant_keys=True,
    )
    for site, path in zip(manifest.sites, datasets):
        (site.folder / "dataset").symlink_to(path, target_is_directory=True)
    logs = work / "logs"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        coordinator = _spawn(["coordinator", "serve", "--config", str(manifest.coordinator.config)], logs / "coordinator.log")
        processes.append(coordinator)
        # The agents start with the coordinator, not after it: each spends seconds importing
        # before its first request, and an agent that finds no coordinator yet retries.
        agents: dict[str, subprocess.Popen[bytes]] = {}
        for site in manifest.sites:
            agents[site.name] = _spawn(["site", "run", "--config", str(site.config), *(["--once"] if once else [])],
                                       logs / f"{site.name}.log")
            processes.append(agents[site.name])
        with analyst_connection(manifest.analysts[0].config) as connection:
            _wait_until_serving(connection, coordinator, shown_logs / "coordinator.log", timeout=60.0)
            yield LocalFederation(manifest, connection, agents, shown_logs)
    finally:
        _stop(processes)


def _keep_failed(work: Path, failed: Path) -> None:
    """Moves a failed run's folder to ``failed`` (replacing an earlier failure's): its logs are what explains it."""
    try:
        if failed.is_dir() and not failed.is_symlink():
            shutil.rmtree(failed)
        work.rename(failed)
    except OSError as error:  # the failure itself is the error to report; this is only a courtesy
        log.warning("could not keep the failed run's logs in %s: %s", failed, error)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def summary_text(summary: Mapping[str, Any]) -> str:
    """A few human lines about a finished federated job."""
    lines = [
        f"job {summary['job_id']} ({summary['analysis']}) {summary['status']} in {summary['seconds']} s across "
        f"{len(summary['sites'])} sites",
    ]
    result = summary.get("summary", {})
    variants = result.get("variants")
    if isinstance(variants, Mapping):
        # Each analysis counts its own variants (a census: total, publishable, passing; a GWAS: tested,
        # published, ok, genome_wide_significant): show the counts it gives, by their names.
        counts = ", ".join(f"{value} {name.replace('_', ' ')}" for name, value in variants.items()
                           if isinstance(value, int) and not isinstance(value, bool))
        lines.append(f"  {result.get('num_samples', '?')} samples; variants: {counts or 'none counted'}")
    if summary.get("baselines"):
        lines.append(summary["baselines"]["table"])
    if summary.get("declined"):
        lines.append(f"  declined: {summary['declined']}")
    for name, reason in summary.get("sites_unfinished", {}).items():
        lines.append(f"  {name} did not finish its own outputs: {reason}")
    lines.append(f"  results: {summary['results']}  (federation and audit logs: {summary['federation']})")
    return "\n".join(lines)
