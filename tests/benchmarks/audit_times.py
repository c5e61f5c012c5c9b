"""Reads when events happened from a federation's coordinator audit log.

Shared by the benchmarks that split a job's time by round or stage. ``run`` is the folder
holding ``federation/`` (a `genofed federate --out` or a local federation's work folder);
``job_id`` picks one job's entries where the log holds several.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any


def _entries(run: Path, job_id: str | None) -> list[dict[str, Any]]:
    log = run / "federation" / "coordinator" / "audit.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    return [entry for entry in entries if job_id is None or entry["fields"].get("job_id") == job_id]


def _moment(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def event_clock(run: Path, job_id: str | None = None) -> Callable[..., float]:
    """``when(event, **fields)``: the UNIX time of the first matching audit entry."""
    entries = _entries(run, job_id)

    def when(event: str, **match: object) -> float:
        for entry in entries:
            if entry["event"] == event and all(entry["fields"].get(k) == v for k, v in match.items()):
                return _moment(entry)
        raise SystemExit(f"no {event} {match} in {run / 'federation' / 'coordinator' / 'audit.log'}")

    return when


def stage_split(run: Path, job_id: str | None = None) -> list[str]:
    """One line per closed stage from the coordinator's audit log: its time since the previous close (or the round's
    opening), and of that the wait for its first contribution (the hand-off plus the first site's work and upload)."""
    lines, previous, first = [], None, None
    for entry in _entries(run, job_id):
        moment = _moment(entry)
        event, fields = entry["event"], entry["fields"]
        if event in ("job.submitted", "round.opened") and previous is None:
            previous = moment
        elif event == "contribution.received" and first is None:
            first = moment
        elif event == "stage.closed" and previous is not None:
            wait = f", first contribution after {first - previous:.2f} s" if first is not None else ""
            lines.append(f"  round {fields['round']} {fields['stage']}: {moment - previous:.2f} s{wait}")
            previous, first = moment, None
    return lines
