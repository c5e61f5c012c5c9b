"""What an operator sees of a running coordinator: each site's last contact, jobs, store and audit log.

A site shows it is alive only by calling (sites connect out, never in), and a write per
long poll is not worth its disk: last contact lives in the serving process
(:class:`SiteContacts`), so ``genofed coordinator status`` asks the running coordinator
(``GET /v1/federation``, operators only) rather than reading its files.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.federation.config import CoordinatorConfig
    from pipeline.federation.coordinator import Coordinator

__all__ = ["SiteContacts", "federation_status"]

log = logging.getLogger(__name__)


class SiteContacts:
    """When each site last called the coordinator, and which sites hold a long poll open now (identity: the server's lifetime)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._first: dict[str, float] = {}
        self._requests: dict[str, int] = {}
        self._polls: dict[str, int] = {}

    def seen(self, site: str) -> None:
        """Records an admitted request of ``site``; its first since the coordinator started is logged."""
        now = self.clock()
        with self._lock:
            first = site not in self._first
            if first:
                self._first[site] = now
            self._last[site] = now
            self._requests[site] = self._requests.get(site, 0) + 1
        if first:
            log.info("site %s: first contact since the coordinator started", site,
                     extra={"event": "site.first_contact", "site": site})

    @contextlib.contextmanager
    def polling(self, site: str) -> Iterator[None]:
        """Marks ``site`` as waiting in a long poll while the block runs."""
        with self._lock:
            self._polls[site] = self._polls.get(site, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._polls[site] -= 1
                self._last[site] = self.clock()  # a poll that just ended is a contact too

    def snapshot(self, sites: Sequence[str]) -> list[dict[str, Any]]:
        """One row per site (the enrolled ones, then any other that called): last and first contact, polling now."""
        now = self.clock()
        with self._lock:
            names = [*sites, *sorted(set(self._last) - set(sites))]
            return [
                {"site": name, "last_contact": self._last.get(name), "first_contact": self._first.get(name),
                 "seconds_since_contact": None if name not in self._last else max(0.0, now - self._last[name]),
                 "polling": self._polls.get(name, 0) > 0, "requests": self._requests.get(name, 0)}
                for name in names
            ]


def federation_status(coordinator: Coordinator, contacts: SiteContacts, config: CoordinatorConfig) -> dict[str, Any]:
    """The running federation as an operator sees it (``GET /v1/federation``).

    Jobs start when submitted (there is no queue): ``jobs.counts`` gives each status's
    count and how many ended jobs were pruned; ``jobs.running`` each running job's round
    and stage. ``store`` is the database, its WAL and the body files in bytes; ``audit``
    the log's length and head hash.
    """
    counts = coordinator.store.job_counts()
    audit = coordinator.audit
    now = contacts.clock()
    return {
        "federation": config.federation,
        "now": now,
        "started_at": contacts.started_at,
        "uptime_seconds": now - contacts.started_at,
        "sites": contacts.snapshot(coordinator.sites),
        "jobs": {
            "counts": counts,
            "running": coordinator.running_jobs(),
            "finished": sum(n for status, n in counts.items() if status in ("done", "failed", "cancelled")),
        },
        "store": {"path": str(coordinator.store.path), **coordinator.store.disk_usage()},
        "audit": {"path": str(getattr(audit, "path", "")), "entries": getattr(audit, "entries", None),
                  "head": getattr(audit, "head", None)},
        "disk_full": coordinator.disk_full,
    }
