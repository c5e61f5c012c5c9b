"""The coordinator's persistence: one SQLite database in WAL mode.

Everything the coordinator must not lose lives here: jobs (spec, participants,
status), rounds (the public state each round started from and the invited sites),
the stages each round closed (with the sites whose messages were included), every
protocol message the secure-aggregation server received (raw bytes and their
digest), declines, and results. The coordinator's in-memory protocol state is a cache:
replaying the stored messages through the pure ``server_advance`` rebuilds it exactly
(:meth:`pipeline.federation.jobs.Coordinator.recover`), so a coordinator killed in the
middle of a round resumes where it stopped.

Writes are transactions committed before the server answers, so an acknowledged
upload survives a crash. WAL lets the long-poll readers run beside the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Store", "StoredJob", "StoredRound", "StoredMessage", "StoredStage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    analysis TEXT NOT NULL,
    spec TEXT NOT NULL,
    analyst TEXT NOT NULL,
    participants TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    state TEXT NOT NULL,
    site_ids TEXT NOT NULL,
    opened_at REAL NOT NULL,
    PRIMARY KEY (job_id, round_index)
);
CREATE TABLE IF NOT EXISTS stages (
    job_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    stage TEXT NOT NULL,
    included TEXT NOT NULL,
    closed_at REAL NOT NULL,
    PRIMARY KEY (job_id, round_index, seq)
);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    stage TEXT NOT NULL,
    site TEXT NOT NULL,
    digest TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (job_id, round_index, stage, site)
);
CREATE TABLE IF NOT EXISTS declines (
    job_id TEXT NOT NULL,
    site TEXT NOT NULL,
    reason TEXT NOT NULL,
    declined_at REAL NOT NULL,
    PRIMARY KEY (job_id, site)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""


@dataclass(frozen=True)
class StoredJob:
    """One job row."""

    job_id: str
    analysis: str
    spec: dict[str, Any]
    analyst: str
    participants: tuple[str, ...]
    threshold: int
    status: str
    error: str | None
    created_at: float
    finished_at: float | None


@dataclass(frozen=True)
class StoredRound:
    """One round row: the public state it started from and the invited site IDs."""

    job_id: str
    round_index: int
    state: dict[str, Any]
    site_ids: tuple[int, ...]
    opened_at: float


@dataclass(frozen=True)
class StoredStage:
    """A closed stage: which sites' messages went into ``server_advance``."""

    seq: int
    stage: str
    included: tuple[str, ...]
    closed_at: float


@dataclass(frozen=True)
class StoredMessage:
    """One received message."""

    message_id: str
    job_id: str
    round_index: int
    stage: str
    site: str
    digest: str
    body: bytes
    received_at: float


class Store:
    """The coordinator's database (identity: one file, one connection per thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            self._local.connection = connection
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (rolled back on error)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Closes this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: StoredJob) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.job_id, job.analysis, json.dumps(job.spec), job.analyst, json.dumps(list(job.participants)),
                 job.threshold, job.status, job.error, job.created_at, job.finished_at),
            )

    def _job(self, row: Sequence[Any]) -> StoredJob:
        return StoredJob(row[0], row[1], json.loads(row[2]), row[3], tuple(json.loads(row[4])), int(row[5]), row[6], row[7], row[8], row[9])

    def job(self, job_id: str) -> StoredJob | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, *, status: str | None = None) -> list[StoredJob]:
        query, args = "SELECT * FROM jobs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        return [self._job(row) for row in self._connection().execute(query + " ORDER BY created_at, job_id", args)]

    def finish_job(self, job_id: str, status: str, error: str | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE job_id = ?", (status, error, time.time(), job_id)
            )

    # ------------------------------------------------------------------ rounds and stages

    def add_round(self, job_id: str, round_index: int, state: dict[str, Any], site_ids: Sequence[int]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?, ?)",
                (job_id, round_index, json.dumps(state), json.dumps(list(site_ids)), time.time()),
            )

    def rounds(self, job_id: str) -> list[StoredRound]:
        rows = self._connection().execute("SELECT * FROM rounds WHERE job_id = ? ORDER BY round_index", (job_id,))
        return [StoredRound(r[0], int(r[1]), json.loads(r[2]), tuple(json.loads(r[3])), r[4]) for r in rows]

    def close_stage(self, job_id: str, round_index: int, seq: int, stage: str, included: Sequence[str]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, round_index, seq, stage, json.dumps(sorted(included)), time.time()),
            )

    def stages(self, job_id: str, round_index: int) -> list[StoredStage]:
        rows = self._connection().execute(
            "SELECT seq, stage, included, closed_at FROM stages WHERE job_id = ? AND round_index = ? ORDER BY seq",
            (job_id, round_index),
        )
        return [StoredStage(int(r[0]), r[1], tuple(json.loads(r[2])), r[3]) for r in rows]

    # ------------------------------------------------------------------ messages

    def message(self, message_id: str) -> StoredMessage | None:
        row = self._connection().execute("SELECT * FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else StoredMessage(*row)

    def message_of(self, job_id: str, round_index: int, stage: str, site: str) -> StoredMessage | None:
        row = self._connection().execute(
            "SELECT * FROM messages WHERE job_id = ? AND round_index = ? AND stage = ? AND site = ?",
            (job_id, round_index, stage, site),
        ).fetchone()
        return None if row is None else StoredMessage(*row)

    def add_message(self, message: StoredMessage) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message.message_id, message.job_id, message.round_index, message.stage, message.site, message.digest,
                 message.body, message.received_at),
            )

    def messages(self, job_id: str, round_index: int, stage: str) -> list[StoredMessage]:
        rows = self._connection().execute(
            "SELECT * FROM messages WHERE job_id = ? AND round_index = ? AND stage = ? ORDER BY site",
            (job_id, round_index, stage),
        )
        return [StoredMessage(*row) for row in rows]

    # ------------------------------------------------------------------ declines and results

    def add_decline(self, job_id: str, site: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO declines VALUES (?, ?, ?, ?)", (job_id, site, reason, time.time()))

    def declines(self, job_id: str) -> dict[str, str]:
        rows = self._connection().execute("SELECT site, reason FROM declines WHERE job_id = ?", (job_id,))
        return {site: reason for site, reason in rows}

    def finish_with_results(self, job_id: str, results: Sequence[tuple[str, str, bytes]]) -> None:
        """Stores the results and marks the job done, in one transaction."""
        with self.transaction() as db:
            for name, kind, body in results:
                db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (job_id, name, kind, body))
            db.execute("UPDATE jobs SET status = 'done', finished_at = ? WHERE job_id = ?", (time.time(), job_id))

    def results(self, job_id: str) -> dict[str, tuple[str, bytes]]:
        rows = self._connection().execute("SELECT name, kind, body FROM results WHERE job_id = ?", (job_id,))
        return {name: (kind, bytes(body)) for name, kind, body in rows}
