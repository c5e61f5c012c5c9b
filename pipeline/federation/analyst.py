"""The analyst's client: submit a job, follow it, download its results.

``genofed job submit|status|results`` talk to the coordinator as the analyst of
``analyst.toml`` (mutual TLS). The client knows no analysis: a done job's results are
its summary, its Arrow tables and the files the analysis rendered at the coordinator
(GWAS-SSF TSV, plots...), and the client writes them as they are. So it loads neither
the analyses nor secure aggregation, and starts fast; writing results, the one part
that needs Arrow, is :mod:`pipeline.federation.analyst_results`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.federation.config import load_analyst_config
from pipeline.federation.job_spec import check_job_id, load_spec
from pipeline.federation.transport import Connection

__all__ = [
    "EXIT_CODES", "analyst_connection", "submit_job", "list_jobs", "job_status", "cancel_job", "wait_job", "wait_for_job",
    "status_text", "participation_lines",
]

EXIT_CODES = {"done": 0, "failed": 1, "cancelled": 2, "running": 3}
"""The exit status of ``genofed job wait`` (and ``job status``) for a job's status: ``running`` means the wait timed out."""

LONG_POLL_SECONDS = 25.0
"""How long one status request may wait for the job to end (the coordinator caps a wait at 30 s)."""
PROGRESS_POLL_SECONDS = 2.0
"""How long one status request waits while progress is shown: a new round or stage is seen within this."""
_FIRST_POLL_SECONDS = 0.25
_MAX_POLL_SECONDS = 5.0

def analyst_connection(config_path: Path | str) -> Connection:
    """A connection to the coordinator as the analyst of ``analyst.toml`` (or the operator of ``operator.toml``)."""
    config = load_analyst_config(config_path)
    return Connection(config.coordinator_url, cert=config.cert, key=config.key, ca=config.ca, max_attempts=5)


def submit_job(config_path: Path | str, spec: Path | str | Mapping[str, Any], *, threshold: int | None = None) -> dict[str, Any]:
    """``genofed job submit``: sends a spec (a YAML file or a mapping); returns ``{"job_id": ...}``."""
    spec_dict = load_spec(spec, {"threshold": threshold})
    with analyst_connection(config_path) as connection:
        return connection.post_json("/v1/jobs", {"spec": spec_dict})  # type: ignore[no-any-return]


def list_jobs(config_path: Path | str) -> list[dict[str, Any]]:
    """``genofed job list``: the jobs the caller may see, newest first (an operator sees every job)."""
    with analyst_connection(config_path) as connection:
        return connection.get_json("/v1/jobs")["jobs"]  # type: ignore[no-any-return]


def job_status(config_path: Path | str, job_id: str) -> dict[str, Any]:
    """``genofed job status``: the coordinator's view of a job.

    Raises:
        ProtocolError: ``job_id`` is not a job ID (nothing is sent).
        HttpError: no such job, or another analyst's (404: the coordinator answers both alike).
    """
    check_job_id(job_id)
    with analyst_connection(config_path) as connection:
        return connection.get_json(f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]


def cancel_job(config_path: Path | str, job_id: str) -> dict[str, Any]:
    """``genofed job cancel``: stops a running job (an analyst's own; an operator's any); returns its new status.

    Raises:
        ProtocolError: ``job_id`` is not a job ID (nothing is sent).
        HttpError: no such job, or another analyst's (404); the job has already ended (409).
    """
    check_job_id(job_id)
    with analyst_connection(config_path) as connection:
        return connection.post_json(f"/v1/jobs/{job_id}/cancel", {})  # type: ignore[no-any-return]


def wait_job(config_path: Path | str, job_id: str, *, timeout: float | None = None,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             sleep: Any = time.sleep, clock: Any = time.monotonic) -> dict[str, Any]:
    """``genofed job wait``: the job's status once it has ended, or its last status after ``timeout`` seconds.

    :data:`EXIT_CODES` maps the returned ``status`` to the command's exit status; how
    it waits: :func:`wait_for_job`.

    Raises:
        ProtocolError: ``job_id`` is not a job ID (nothing is sent).
        HttpError: no such job, or another analyst's (404).
    """
    check_job_id(job_id)
    with analyst_connection(config_path) as connection:
        return wait_for_job(connection, job_id, timeout=timeout, on_progress=on_progress, sleep=sleep, clock=clock)


def participation_lines(status: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> list[str]:
    """One line per invited site: took part, declined (its code only), dropped (the rounds it missed), or awaited.

    Args:
        status: the job's status (``sites``, ``declined``; ``waiting_for`` while running,
            ``missed_rounds`` once ended).
        summary: a done job's result summary, whose ``missed_rounds`` is used when given.
    """
    declined: Mapping[str, str] = status.get("declined") or {}
    missed: Mapping[str, list[int]] = (summary or {}).get("missed_rounds", status.get("missed_rounds")) or {}
    waiting = set(status.get("waiting_for") or ())
    running = status.get("status") == "running"
    lines = []
    for site in status.get("sites") or sorted({*declined, *missed}):
        if site in declined:
            # Only the coarse code: the text after it is the site's own words, kept out of the summary line.
            what = f"declined ({str(declined[site]).partition(':')[0]})"
        elif missed.get(site):
            rounds = ", ".join(str(r) for r in missed[site])
            what = f"dropped (missed round{'s' if len(missed[site]) > 1 else ''} {rounds})"
        elif running:
            what = "waiting for it" if site in waiting else "answered"
        else:
            what = "took part"
        lines.append(f"  {site}: {what}")
    return lines


def status_text(status: Mapping[str, Any], summary: Mapping[str, Any] | None = None) -> str:
    """The status line of a job (with round, stage and awaited sites while running), its error and notice, then one line per site."""
    text = f"{status['job_id']} {status['analysis']}: {status['status']}"
    if status["status"] == "running":
        text += (f" (round {status.get('round')}, stage {status.get('stage')}, "
                 f"waiting for {', '.join(status.get('waiting_for', [])) or 'nobody'})")
    if status.get("error"):
        text += f": {status['error']}"
    if status.get("notice"):
        text += f"; {status['notice']}"
    return "\n".join([text, *participation_lines(status, summary)])


def wait_for_job(connection: Connection, job_id: str, *, timeout: float | None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 sleep: Any = time.sleep, clock: Any = time.monotonic) -> dict[str, Any]:
    """The job's status once it is no longer running, or its last status after ``timeout`` seconds (``None``: no limit).

    Long-polls the coordinator (``GET /v1/jobs/{id}?wait=``), which answers as soon as
    the job ends: the end is seen at once, with a request every :data:`LONG_POLL_SECONDS`
    (every :data:`PROGRESS_POLL_SECONDS` with ``on_progress``, which is called with each
    running status). An answer that comes back early with the job still running (a
    coordinator shutting down, or one without long polls) is followed by a pause that
    grows by half each time from 0.25 s to 5 s, never past the deadline, so nothing
    polls in a busy loop.
    """
    check_job_id(job_id)
    deadline = None if timeout is None else clock() + timeout
    longest = LONG_POLL_SECONDS if on_progress is None else PROGRESS_POLL_SECONDS
    pause = _FIRST_POLL_SECONDS
    while True:
        left = longest if deadline is None else min(max(deadline - clock(), 0.0), longest)
        asked = clock()
        status: dict[str, Any] = connection.get_json(f"/v1/jobs/{job_id}?wait={left:.3f}", timeout=left + 30)
        if status["status"] != "running" or (deadline is not None and clock() >= deadline):
            return status
        if on_progress is not None:
            on_progress(status)
        if clock() - asked < left / 2:
            sleep(pause if deadline is None else min(pause, max(deadline - clock(), 0.0)))
            pause = min(pause * 1.5, _MAX_POLL_SECONDS)
