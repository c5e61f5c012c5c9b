"""The coordinator's persistence: one SQLite database in WAL mode.

Everything the coordinator must not lose lives here: jobs (spec, participants,
status), rounds (the public state each round started from and the invited sites),
the stages each round closed (with the sites whose messages were included), every
protocol message the secure-aggregation server received (raw bytes and their
digest), declines, results, and the audit outbox: audit entries committed with the
change they record and not yet known to be in the audit log. The coordinator's
in-memory protocol state is a cache: replaying the stored messages through the pure
``server_advance`` rebuilds it exactly
(:meth:`pipeline.federation.coordinator.Coordinator.recover`), so a coordinator killed
in the middle of a round resumes where it stopped.

Writes are transactions committed before the server answers, so an acknowledged
upload survives a crash. WAL lets the long-poll readers run beside the writer.

Large message bodies (masked vectors: 8 MB for 10^6 values in Z_2^64) are not written
into SQLite, where each would be copied into the WAL, checkpointed into the database
and synced twice. They are files in a folder beside the database
(``coordinator.db`` -> ``coordinator.blobs/<sha256>``), written to a temporary name,
fsync'd and renamed into place before the row that names them (by digest) commits;
the row is the acknowledgment. :meth:`Store.stage_body` does the write and the sync
before the caller takes its lock, so only a rename and a small row remain under it.
Every body, in a file or in a row, is checked against its recorded digest when read
back (:class:`StoreCorruption` otherwise): a flipped bit on disk must stop a job, not
silently change a sum or a released result.

:meth:`Store.close` checkpoints the WAL into the database, so after a clean shutdown
the database file alone holds everything (a backup of ``coordinator.db`` without its
``-wal`` is complete).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ProtocolError, StoreCorruption
from pipeline.outputs import fsync_directory

__all__ = [
    "Store", "StoredJob", "StoredRound", "StoredMessage", "StoredStage", "StagedBody", "StoreCorruption", "INLINE_BODY_BYTES",
    "FINISHED_STATUSES", "JobFootprint",
]

log = logging.getLogger(__name__)

INLINE_BODY_BYTES = 64 * 1024
"""Message bodies up to this size stay in the database; larger ones are files."""

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
    sites TEXT,
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
    in_file INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, round_index, stage, site)
);
CREATE TABLE IF NOT EXISTS declines (
    job_id TEXT NOT NULL,
    site TEXT NOT NULL,
    reason TEXT NOT NULL,
    declined_at REAL NOT NULL,
    PRIMARY KEY (job_id, site)
);
CREATE TABLE IF NOT EXISTS audit_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    digest TEXT,
    in_file INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, name)
);
"""


def _sha256(body: bytes | memoryview) -> str:
    return hashlib.sha256(body).hexdigest()


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
    pruned_at: float | None = None
    """When the retention policy removed the job's rounds, messages and results (its row stays as a tombstone)."""
    pruned_digest: str | None = None
    """``sha256:`` of the manifest of what was removed (:class:`JobFootprint`), as its ``job.pruned`` audit entry records."""


FINISHED_STATUSES = ("done", "failed", "cancelled")
"""The statuses of a job that has ended: only such a job may be pruned."""


@dataclass(frozen=True)
class JobFootprint:
    """What a job holds in the store beyond its row, as pruning it removes.

    Attributes:
        messages: stored protocol messages. results: result tables and files.
        rounds: stored rounds (their public states).
        bytes: bytes of message and result bodies, inline or in files.
        blobs: digests of the body files its rows name (a file is removed only once no row names it).
        digest: ``sha256:`` of the canonical JSON manifest of every removed row (IDs and body digests),
            so that the tombstone and the audit log name exactly what went.
    """

    messages: int
    results: int
    rounds: int
    bytes: int
    blobs: tuple[str, ...]
    digest: str


@dataclass(frozen=True)
class StoredRound:
    """One round row: the public state it started from and the invited site IDs."""

    job_id: str
    round_index: int
    state: dict[str, Any]
    site_ids: tuple[int, ...]
    opened_at: float
    sites: tuple[str, ...] | None = None
    """The sites whose contributions the round's sum (or key union) included; ``None`` until it closed."""


@dataclass(frozen=True)
class StoredStage:
    """A closed stage: which sites' messages went into ``server_advance``."""

    seq: int
    stage: str
    included: tuple[str, ...]
    closed_at: float


@dataclass(frozen=True)
class StoredMessage:
    """One received message (``body`` is empty when read with ``body=False``)."""

    message_id: str
    job_id: str
    round_index: int
    stage: str
    site: str
    digest: str
    body: bytes
    received_at: float


@dataclass
class StagedBody:
    """A message body written and synced under a temporary name, not yet stored.

    Made by :meth:`Store.stage_body`; :meth:`Store.add_message` moves it into place,
    :meth:`Store.discard` removes it when the message is refused. ``temporary`` is
    ``None`` for a body kept in the database, and once the file has been moved into place.
    """

    digest: str
    size: int
    temporary: Path | None


_JOB_COLUMNS = ("job_id, analysis, spec, analyst, participants, threshold, status, error, created_at, finished_at, "
                "pruned_at, pruned_digest")
_MESSAGE_COLUMNS = "message_id, job_id, round_index, stage, site, digest, body, received_at, in_file"


class Store:
    """The coordinator's database (identity: one file, one connection per thread)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blob_dir = self.path.with_suffix(".blobs")
        self.blob_dir.mkdir(exist_ok=True)
        self._local = threading.local()
        db = self._connection()
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
        if "in_file" not in columns:  # a database written before bodies could be files
            db.execute("ALTER TABLE messages ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0")
        if "sites" not in {row[1] for row in db.execute("PRAGMA table_info(rounds)")}:  # written before rounds named theirs
            db.execute("ALTER TABLE rounds ADD COLUMN sites TEXT")
        job_columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for column, kind in (("pruned_at", "REAL"), ("pruned_digest", "TEXT")):  # written before jobs could be pruned
            if column not in job_columns:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self._migrate_results(db)
        self._collect_garbage()

    def _migrate_results(self, db: sqlite3.Connection) -> None:
        """Gives a database written before inline results had digests its ``in_file`` column and their digests.

        Inline rows of such a database get the digest of the body they hold now (there is
        no earlier record to check it against); from then on every read is checked.
        """
        columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
        if {"digest", "in_file"} <= columns:
            return
        with self.transaction() as tx:
            if "digest" not in columns:
                tx.execute("ALTER TABLE results ADD COLUMN digest TEXT")
            tx.execute("ALTER TABLE results ADD COLUMN in_file INTEGER NOT NULL DEFAULT 0")
            tx.execute("UPDATE results SET in_file = 1 WHERE digest IS NOT NULL")
            rows = tx.execute("SELECT job_id, name, body FROM results WHERE in_file = 0").fetchall()
            for job_id, name, body in rows:
                tx.execute("UPDATE results SET digest = ? WHERE job_id = ? AND name = ?", (_sha256(body), job_id, name))

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=FULL: a commit is synced to the WAL before it returns, so it
            # survives a power loss as the audit log's synced entries do (NORMAL could lose the
            # last commits while the log records them: a finished job back to "running").
            # One sync per engine call; large bodies are files synced before their row.
            connection.execute("PRAGMA synchronous=FULL")
            self._local.connection = connection
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (rolled back on error).

        Re-entrant within a thread: a transaction opened inside another joins it, so a
        caller can make several writes (the coordinator: one request's state changes and
        their audit entries) one atomic commit.
        """
        db = self._connection()
        depth = getattr(self._local, "depth", 0)
        if depth:
            self._local.depth = depth + 1
            try:
                yield db
            finally:
                self._local.depth = depth
            return
        db.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield db
        except BaseException:
            self._local.depth = 0
            db.execute("ROLLBACK")
            raise
        self._local.depth = 0
        db.execute("COMMIT")

    def close(self, *, checkpoint: bool = True) -> None:
        """Closes this thread's connection, first moving the WAL into the database.

        ``PRAGMA wal_checkpoint(TRUNCATE)`` copies every committed transaction into the
        database file and empties the ``-wal`` file, so that after a clean shutdown the
        database alone is complete (a backup that copies only ``coordinator.db`` loses
        nothing). A checkpoint that cannot finish (another connection is reading) is
        logged and left to SQLite's next open, which replays the WAL.
        """
        connection = getattr(self._local, "connection", None)
        if connection is None and checkpoint:
            connection = self._connection()
        if connection is None:
            return
        try:
            if checkpoint:
                busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if busy:
                    log.warning("%s: the WAL could not be checkpointed at close (another connection is busy); "
                                "it stays beside the database and is replayed at the next open", self.path)
        finally:
            connection.close()
            self._local.connection = None

    # ------------------------------------------------------------------ jobs

    def add_job(self, job: StoredJob) -> None:
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.job_id, job.analysis, json.dumps(job.spec), job.analyst, json.dumps(list(job.participants)),
                 job.threshold, job.status, job.error, job.created_at, job.finished_at, job.pruned_at, job.pruned_digest),
            )

    def _job(self, row: Sequence[Any]) -> StoredJob:
        return StoredJob(row[0], row[1], json.loads(row[2]), row[3], tuple(json.loads(row[4])), int(row[5]), row[6], row[7], row[8],
                         row[9], row[10], row[11])

    def job(self, job_id: str) -> StoredJob | None:
        row = self._connection().execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._job(row)

    def jobs(self, *, status: str | None = None) -> list[StoredJob]:
        query, args = f"SELECT {_JOB_COLUMNS} FROM jobs", tuple[str, ...]()
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
                "INSERT INTO rounds (job_id, round_index, state, site_ids, opened_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, round_index, json.dumps(state), json.dumps(list(site_ids)), time.time()),
            )

    def set_round_sites(self, job_id: str, round_index: int, sites: Sequence[str]) -> None:
        """Records the sites a round's sum (or key union) included."""
        with self.transaction() as db:
            db.execute("UPDATE rounds SET sites = ? WHERE job_id = ? AND round_index = ?",
                       (json.dumps(list(sites)), job_id, round_index))

    def rounds(self, job_id: str) -> list[StoredRound]:
        rows = self._connection().execute(
            "SELECT job_id, round_index, state, site_ids, opened_at, sites FROM rounds WHERE job_id = ? ORDER BY round_index",
            (job_id,),
        )
        return [StoredRound(r[0], int(r[1]), json.loads(r[2]), tuple(json.loads(r[3])), r[4],
                            None if r[5] is None else tuple(json.loads(r[5]))) for r in rows]

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

    def _blob(self, digest: str) -> Path:
        return self.blob_dir / digest

    def _message(self, row: Sequence[Any], *, body: bool) -> StoredMessage:
        *fields, in_file = row
        message = StoredMessage(*fields)
        what = (f"message {message.message_id} (job {message.job_id}, round {message.round_index}, "
                f"stage {message.stage}, site {message.site})")
        if not in_file:
            self._check_inline(message.body, message.digest, what)
            return dataclasses.replace(message, body=bytes(message.body))
        if not body:
            return message
        return dataclasses.replace(message, body=self._read_blob(message.digest, what))

    def _check_inline(self, body: bytes, digest: str | None, what: str) -> None:
        if digest is None or _sha256(body) != digest:
            recorded = "no recorded digest" if digest is None else f"digest {digest[:16]}..."
            raise StoreCorruption(
                f"{self.path}: the body of {what} stored in the database does not match its {recorded} "
                "(the database was damaged or altered); restore the database and its -wal from a backup"
            )

    def _read_blob(self, digest: str, what: str) -> bytes:
        path = self._blob(digest)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ProtocolError(f"{path}: the stored body of {what} is unreadable ({error.strerror})") from None
        if _sha256(data) != digest:
            raise StoreCorruption(f"{path}: the stored body of {what} does not match its digest {digest[:16]}...")
        return data

    def _write_blob(self, body: bytes) -> str:
        """Writes a body file named by its digest (synced, then renamed into place)."""
        digest = hashlib.sha256(body).hexdigest()
        staged = self.stage_body(body, digest)
        if staged.temporary is not None:
            os.replace(staged.temporary, self._blob(digest))
            fsync_directory(self.blob_dir)
        return digest

    def message(self, message_id: str, *, body: bool = True) -> StoredMessage | None:
        """The message with this ID (without reading a file-backed body when ``body`` is false)."""
        row = self._connection().execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else self._message(row, body=body)

    def message_of(self, job_id: str, round_index: int, stage: str, site: str, *, body: bool = True) -> StoredMessage | None:
        row = self._connection().execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE job_id = ? AND round_index = ? AND stage = ? AND site = ?",
            (job_id, round_index, stage, site),
        ).fetchone()
        return None if row is None else self._message(row, body=body)

    def stage_body(self, body: bytes, digest: str) -> StagedBody:
        """Writes a large body to a synced temporary file (no lock needed); small ones stay in memory.

        ``digest`` is the body's SHA-256 hex digest (the caller has computed it already).
        """
        if len(body) <= INLINE_BODY_BYTES:
            return StagedBody(digest, len(body), None)
        fd, name = tempfile.mkstemp(prefix=".incoming-", dir=self.blob_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return StagedBody(digest, len(body), Path(name))

    def discard(self, staged: StagedBody | None) -> None:
        """Removes a staged body that was not stored (a refused upload)."""
        if staged is not None and staged.temporary is not None:
            staged.temporary.unlink(missing_ok=True)

    def add_message(self, message: StoredMessage, *, staged: StagedBody | None = None) -> None:
        """Stores a message; its body, if large, as a synced file named by its digest.

        Args:
            staged: the body already written by :meth:`stage_body` (moved into place here).
        """
        if staged is None:
            staged = self.stage_body(message.body, message.digest)
        in_file = staged.size > INLINE_BODY_BYTES
        if in_file:
            if staged.temporary is None or staged.digest != message.digest:
                raise ValueError(f"message {message.message_id}: its staged body is used or belongs to another message")
            os.replace(staged.temporary, self._blob(message.digest))
            staged.temporary = None
            fsync_directory(self.blob_dir)
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message.message_id, message.job_id, message.round_index, message.stage, message.site, message.digest,
                 b"" if in_file else message.body, message.received_at, int(in_file)),
            )

    def messages(self, job_id: str, round_index: int, stage: str) -> list[StoredMessage]:
        rows = self._connection().execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE job_id = ? AND round_index = ? AND stage = ? ORDER BY site",
            (job_id, round_index, stage),
        )
        return [self._message(row, body=True) for row in rows]

    def _collect_garbage(self) -> None:
        """Removes body files no row names: staged uploads of a process that crashed."""
        db = self._connection()
        referenced = {row[0] for row in db.execute("SELECT digest FROM messages WHERE in_file = 1")}
        referenced |= {row[0] for row in db.execute("SELECT digest FROM results WHERE in_file = 1")}
        for path in self.blob_dir.iterdir():
            if path.name not in referenced:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the audit outbox

    def queue_audit(self, event: str, fields: dict[str, Any]) -> int:
        """Records an audit entry to be appended to the audit log; returns its outbox number.

        Written in the caller's transaction, so the entry commits with the state change
        it describes, or not at all; :meth:`queued_audit` hands back what a crash left
        between that commit and the log.
        """
        with self.transaction() as db:
            cursor = db.execute("INSERT INTO audit_outbox (event, fields) VALUES (?, ?)", (event, json.dumps(fields)))
        return int(cursor.lastrowid or 0)

    def queued_audit(self) -> list[tuple[int, str, dict[str, Any]]]:
        """The audit entries committed but not yet known to be in the log, oldest first."""
        rows = self._connection().execute("SELECT seq, event, fields FROM audit_outbox ORDER BY seq")
        return [(int(seq), event, json.loads(fields)) for seq, event, fields in rows]

    def drop_audit(self, up_to: int) -> None:
        """Forgets the queued audit entries up to ``up_to`` (they are in the log)."""
        with self.transaction() as db:
            db.execute("DELETE FROM audit_outbox WHERE seq <= ?", (up_to,))

    # ------------------------------------------------------------------ declines and results

    def add_decline(self, job_id: str, site: str, reason: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO declines VALUES (?, ?, ?, ?)", (job_id, site, reason, time.time()))

    def declines(self, job_id: str) -> dict[str, str]:
        rows = self._connection().execute("SELECT site, reason FROM declines WHERE job_id = ?", (job_id,))
        return {site: reason for site, reason in rows}

    def finish_with_results(self, job_id: str, results: Sequence[tuple[str, str, bytes]]) -> None:
        """Stores the results and marks the job done, in one transaction (large tables as files first)."""
        in_files = {name: self._write_blob(body) for name, _, body in results if len(body) > INLINE_BODY_BYTES}
        with self.transaction() as db:
            for name, kind, body in results:
                in_file = name in in_files
                db.execute(
                    "INSERT OR REPLACE INTO results (job_id, name, kind, body, digest, in_file) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, name, kind, b"" if in_file else body, in_files[name] if in_file else _sha256(body), int(in_file)),
                )
            db.execute("UPDATE jobs SET status = 'done', finished_at = ? WHERE job_id = ?", (time.time(), job_id))

    def results(self, job_id: str) -> dict[str, tuple[str, bytes]]:
        rows = self._connection().execute("SELECT name, kind, body, digest, in_file FROM results WHERE job_id = ?", (job_id,))
        results: dict[str, tuple[str, bytes]] = {}
        for name, kind, body, digest, in_file in rows:
            what = f"result {name} of job {job_id}"
            if in_file:
                results[name] = (kind, self._read_blob(digest, what))
            else:
                self._check_inline(body, digest, what)
                results[name] = (kind, bytes(body))
        return results

    # ------------------------------------------------------------------ retention

    def job_counts(self) -> dict[str, int]:
        """How many jobs have each status, and how many of them were pruned (``pruned``)."""
        db = self._connection()
        counts = {status: int(n) for status, n in db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
        counts["pruned"] = int(db.execute("SELECT COUNT(*) FROM jobs WHERE pruned_at IS NOT NULL").fetchone()[0])
        return counts

    def prunable_jobs(self, finished_before: float) -> list[StoredJob]:
        """Jobs that ended (:data:`FINISHED_STATUSES`) before ``finished_before`` and are not pruned yet, oldest first."""
        marks = ", ".join("?" for _ in FINISHED_STATUSES)
        rows = self._connection().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) AND finished_at IS NOT NULL AND finished_at < ? "
            "AND pruned_at IS NULL ORDER BY finished_at, job_id", (*FINISHED_STATUSES, finished_before),
        )
        return [self._job(row) for row in rows]

    def job_footprint(self, job_id: str) -> JobFootprint:
        """What pruning ``job_id`` would remove: counts, bytes, body files, and the digest of its manifest."""
        db = self._connection()
        messages = db.execute("SELECT message_id, digest, length(body), in_file FROM messages WHERE job_id = ? ORDER BY message_id",
                              (job_id,)).fetchall()
        results = db.execute("SELECT name, kind, digest, length(body), in_file FROM results WHERE job_id = ? ORDER BY name",
                             (job_id,)).fetchall()
        rounds = db.execute("SELECT round_index, state, sites FROM rounds WHERE job_id = ? ORDER BY round_index", (job_id,)).fetchall()
        stages = db.execute("SELECT round_index, seq, stage, included FROM stages WHERE job_id = ? ORDER BY round_index, seq",
                            (job_id,)).fetchall()
        declines = db.execute("SELECT site, reason FROM declines WHERE job_id = ? ORDER BY site", (job_id,)).fetchall()
        blobs = sorted({digest for _, digest, _, in_file in messages if in_file} | {digest for _, _, digest, _, in_file in results if in_file})
        size = sum(int(length) for _, _, length, in_file in messages if not in_file)
        size += sum(int(length) for _, _, _, length, in_file in results if not in_file)
        size += sum(self._blob(digest).stat().st_size for digest in blobs if self._blob(digest).exists())
        manifest = {
            "job_id": job_id,
            "messages": [[message_id, digest] for message_id, digest, _, _ in messages],
            "results": [[name, kind, digest] for name, kind, digest, _, _ in results],
            "rounds": [[int(index), _sha256(state.encode()), sites] for index, state, sites in rounds],
            "stages": [[int(index), int(seq), stage, included] for index, seq, stage, included in stages],
            "declines": [[site, reason] for site, reason in declines],
        }
        canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        return JobFootprint(messages=len(messages), results=len(results), rounds=len(rounds), bytes=size,
                            blobs=tuple(blobs), digest="sha256:" + _sha256(canonical))

    def prune_job(self, job_id: str, pruned_at: float) -> JobFootprint:
        """Removes an ended job's rounds, stages, messages, declines and results; its row stays as the tombstone.

        One transaction (joining the caller's). Body files are left for :meth:`remove_blobs`,
        called after the commit: a rollback must not find its files gone.

        Raises:
            ValueError: the job does not exist, has not ended, or was pruned already.
        """
        with self.transaction() as db:
            job = self.job(job_id)
            if job is None or job.status not in FINISHED_STATUSES or job.pruned_at is not None:
                raise ValueError(f"job {job_id} cannot be pruned: {'no such job' if job is None else job.status}"
                                 f"{', pruned already' if job is not None and job.pruned_at is not None else ''}")
            footprint = self.job_footprint(job_id)
            for table in ("messages", "results", "rounds", "stages", "declines"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            db.execute("UPDATE jobs SET pruned_at = ?, pruned_digest = ? WHERE job_id = ?", (pruned_at, footprint.digest, job_id))
        return footprint

    def remove_blobs(self, digests: Sequence[str]) -> int:
        """Deletes the body files among ``digests`` that no row names any more; returns their bytes.

        The caller keeps uploads from naming the same file meanwhile (the coordinator's
        engine lock, under which every body is moved into place).
        """
        db = self._connection()
        freed = 0
        for digest in sorted(set(digests)):
            named = db.execute("SELECT 1 FROM messages WHERE digest = ? AND in_file = 1 UNION ALL "
                               "SELECT 1 FROM results WHERE digest = ? AND in_file = 1 LIMIT 1", (digest, digest)).fetchone()
            path = self._blob(digest)
            if named is None and path.exists():
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
        fsync_directory(self.blob_dir)
        return freed

    def vacuum(self) -> None:
        """Rewrites the database without the free pages that deleted rows left, and truncates the WAL.

        ``VACUUM`` writes the compacted database through the WAL; the checkpoint copies it
        back and shrinks both files. A checkpoint kept from finishing by a reader leaves
        the WAL to the next one (the space is reclaimed then).
        """
        db = self._connection()
        db.execute("VACUUM")
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.info("%s: after VACUUM the WAL could not be truncated yet (a reader is busy); the next checkpoint will", self.path)

    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk: the database, its WAL, the body files, and their total."""
        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        wal = Path(f"{self.path}-wal")
        blobs = sum(size(path) for path in self.blob_dir.iterdir() if path.is_file())
        usage = {"database": size(self.path), "wal": size(wal), "blobs": blobs}
        usage["total"] = sum(usage.values())
        return usage
