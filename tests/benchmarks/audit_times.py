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
