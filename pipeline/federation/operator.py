"""The operator's client: ``genofed coordinator status`` and ``genofed coordinator prune``.

Both ask the running coordinator over mutual TLS as the operator of ``operator.toml``:
last contact lives only in its process, and pruning there keeps its in-memory rounds,
its store and its audit log in step (no second writer on the database, no lock to
take). Like the analyst's client it loads neither the analyses nor JAX.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.federation.analyst import analyst_connection

__all__ = ["federation_status", "prune_jobs", "status_text", "prune_text", "human_bytes", "human_age"]


def federation_status(config_path: Path | str) -> dict[str, Any]:
    """``genofed coordinator status``: the running federation (operators only; an analyst gets HTTP 403)."""
    with analyst_connection(config_path) as connection:
        return connection.get_json("/v1/federation")  # type: ignore[no-any-return]


def prune_jobs(config_path: Path | str, *, older_than: float, dry_run: bool = False) -> dict[str, Any]:
    """``genofed coordinator prune``: removes (or, with ``dry_run``, lists) ended jobs' contributions and results."""
    with analyst_connection(config_path) as connection:
        return connection.post_json("/v1/federation/prune",  # type: ignore[no-any-return]
                                    {"older_than_seconds": older_than, "dry_run": dry_run})


def human_bytes(size: float) -> str:
    """``1.5 MB`` (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


def human_age(seconds: float | None) -> str:
    """``3 s ago``, ``5 min ago``, ``2 h ago``, ``4 d ago``; ``never`` for ``None``."""
    if seconds is None:
        return "never"
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def _date(moment: float | None) -> str:
    return "-" if moment is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def status_text(status: Mapping[str, Any]) -> str:
    """The federation as a few readable lines: sites table, jobs, store and audit log."""
    lines = [f"federation {status['federation']}: coordinator up {human_age(status['uptime_seconds']).removesuffix(' ago')}"]
    lines.append(f"  {'site':<16} {'last contact':<14} polling")
    for site in status["sites"]:
        lines.append(f"  {site['site']:<16} {human_age(site['seconds_since_contact']):<14} {'yes' if site['polling'] else 'no'}")
    jobs = status["jobs"]
    counts = jobs["counts"]
    ended = ", ".join(f"{counts.get(name, 0)} {name}" for name in ("done", "failed", "cancelled"))
    lines.append(f"jobs: {counts.get('running', 0)} running, {jobs['finished']} finished ({ended}; "
                 f"{counts.get('pruned', 0)} pruned)")
    for job in jobs["running"]:
        waiting = ", ".join(job["waiting_for"]) or "nobody"
        lines.append(f"  {job['job_id']}  {job['analysis']:<12} round {job['round']} stage {job['stage']} (waiting for {waiting})")
    store = status["store"]
    lines.append(f"store: {human_bytes(store['total'])} ({human_bytes(store['database'])} database, "
                 f"{human_bytes(store['wal'])} WAL, {human_bytes(store['blobs'])} body files) at {store['path']}")
    audit = status["audit"]
    lines.append(f"audit log: {audit['entries']} entries, head {audit['head']} ({audit['path']})")
    if status.get("disk_full"):
        lines.append(f"DISK FULL: {status['disk_full']}")
    return "\n".join(lines)


def prune_text(summary: Mapping[str, Any]) -> str:
    """One line per job removed (or that would be), then the bytes freed."""
    verb = "would prune" if summary["dry_run"] else "pruned"
    lines = [f"{verb} {len(summary['jobs'])} job(s) that ended before {_date(summary['cutoff'])}"]
    for job in summary["jobs"]:
        lines.append(f"  {job['job_id']}  {job['analysis']:<12} {job['status']:<9} finished {_date(job['finished_at'])}  "
                     f"{job['messages']} messages, {job['results']} results, {human_bytes(job['bytes'])}")
    if summary["dry_run"]:
        lines.append(f"{human_bytes(summary['bytes'])} of contributions and results would go; nothing was changed")
    else:
        lines.append(f"freed {human_bytes(summary['bytes_freed'])}: store {human_bytes(summary['store_before']['total'])} -> "
                     f"{human_bytes(summary['store_after']['total'])}")
    return "\n".join(lines)
