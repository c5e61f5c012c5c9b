"""Reads when events happened from a `genofed federate` run's coordinator audit log.

Shared by the benchmarks that split a job's time by round or stage.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path


def event_clock(run: Path) -> Callable[..., float]:
    """``when(event, **fields)``: the UNIX time of the first matching audit entry."""
    log = run / "federation" / "coordinator" / "audit.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]

    def when(event: str, **match: object) -> float:
        for entry in entries:
            if entry["event"] == event and all(entry["fields"].get(k) == v for k, v in match.items()):
                return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        raise SystemExit(f"no {event} {match} in {log}")

    return when


def stage_split(run: Path) -> list[str]:
    """One line per closed stage from the coordinator's audit log: its time since the previous close (or the round's
    opening), and of that the wait for its first contribution (the hand-off plus the first site's work and upload)."""
    log = run / "federation" / "coordinator" / "audit.log"
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    lines, previous, first = [], None, None
    for entry in entries:
        moment = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
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
