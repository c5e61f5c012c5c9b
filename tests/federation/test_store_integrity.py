"""The store refuses bodies that differ from their digest, and leaves a complete database at close."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from pathlib import Path

import pytest

from pipeline.errors import ProtocolError
from pipeline.federation.store import (
    INLINE_BODY_BYTES,
    Store,
    StoreCorruption,
    StoredJob,
    StoredMessage,
)


def _message(body: bytes, message_id: str = "m-00000001", site: str = "alpha") -> StoredMessage:
    return StoredMessage(message_id, "job-1", 0, "masked_input", site, hashlib.sha256(body).hexdigest(), body, 1.0)


def _job(job_id: str = "job-1") -> StoredJob:
    return StoredJob(job_id, "secure_sum", {}, "analyst", ("alpha", "beta"), 2, "running", None, 0.0, None)


def _flip_bit(body: bytes) -> bytes:
    return bytes([body[0] ^ 0x01]) + body[1:]


def _edit(database: Path, sql: str, args: tuple) -> None:
    """Changes the database behind the store's back, as damage on disk or a hand edit would."""
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        assert connection.execute(sql, args).rowcount == 1
    finally:
        connection.close()


def test_store__inline_message_body_with_a_flipped_bit_is_refused(tmp_path):
    database = tmp_path / "coordinator.db"
    store = Store(database)
    body = b"small masked input"
    store.add_message(_message(body))
    store.add_message(_message(b"other site", "m-00000002", "beta"))
    _edit(database, "UPDATE messages SET body = ? WHERE message_id = ?", (_flip_bit(body), "m-00000001"))
    for reopened in (store, Store(database)):
        with pytest.raises(StoreCorruption, match=r"message m-00000001 \(job job-1, round 0, stage masked_input, site alpha\)"):
            reopened.message("m-00000001")
        with pytest.raises(StoreCorruption, match="does not match its digest"):
            reopened.message_of("job-1", 0, "masked_input", "alpha", body=False)
        with pytest.raises(ProtocolError, match="restore the database"):
            reopened.messages("job-1", 0, "masked_input")
        assert reopened.message("m-00000002").body == b"other site"


def test_store__inline_result_with_a_flipped_bit_is_refused(tmp_path):
    database = tmp_path / "coordinator.db"
    store = Store(database)
    store.add_job(_job())
    store.finish_with_results("job-1", [("summary", "json", b'{"n":3}')])
    assert store.results("job-1") == {"summary": ("json", b'{"n":3}')}
    _edit(database, "UPDATE results SET body = ? WHERE job_id = ? AND name = ?", (_flip_bit(b'{"n":3}'), "job-1", "summary"))
    with pytest.raises(StoreCorruption, match="result summary of job job-1"):
        Store(database).results("job-1")
    _edit(database, "UPDATE results SET digest = NULL WHERE job_id = ?", ("job-1",))
    with pytest.raises(StoreCorruption, match="no recorded digest"):
        store.results("job-1")


def test_store__large_body_file_mismatch_is_store_corruption(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    large = b"\x01" * (INLINE_BODY_BYTES + 1)
    store.add_message(_message(large))
    (store.blob_dir / hashlib.sha256(large).hexdigest()).write_bytes(_flip_bit(large))
    with pytest.raises(StoreCorruption, match="message m-00000001"):
        store.message("m-00000001")


def test_store__database_from_before_inline_digests_is_migrated(tmp_path):
    database = tmp_path / "coordinator.db"
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute(
        "CREATE TABLE results (job_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, body BLOB NOT NULL, "
        "PRIMARY KEY (job_id, name))"
    )
    connection.execute("INSERT INTO results VALUES ('job-1', 'summary', 'json', ?)", (b"{}",))
    connection.close()
    store = Store(database)
    assert store.results("job-1") == {"summary": ("json", b"{}")}
    _edit(database, "UPDATE results SET body = ? WHERE job_id = ?", (b"[]", "job-1"))
    with pytest.raises(StoreCorruption):
        Store(database).results("job-1")


def test_store__close_checkpoints_the_wal_into_the_database(tmp_path):
    database = tmp_path / "coordinator.db"
    wal = database.with_name(database.name + "-wal")
    store = Store(database)
    # Another connection stays open (as the server's worker threads' do), so closing the
    # store's own is not the last close, which would checkpoint by itself.
    other = sqlite3.connect(database, isolation_level=None)
    assert other.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
    for index in range(20):
        store.add_job(_job(f"job-{index}"))
    store.add_message(_message(b"small body"))
    assert wal.is_file() and wal.stat().st_size > 0  # committed, but only in the WAL so far
    store.close()
    assert wal.stat().st_size == 0
    other.close()
    # The database file alone (as a backup that copies only it would have) holds every job.
    copy = tmp_path / "copy" / "coordinator.db"
    copy.parent.mkdir()
    copy.write_bytes(database.read_bytes())
    reopened = Store(copy)
    assert [job.job_id for job in reopened.jobs()] == sorted(f"job-{index}" for index in range(20))
    assert reopened.message("m-00000001").body == b"small body"


def test_store__close_twice_and_use_after_close_reopens(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    store.add_job(_job())
    store.close()
    store.close()
    assert store.job("job-1") is not None  # a later call opens a fresh connection
    store.close(checkpoint=False)


def test_app_shutdown_checkpoints_the_wal(tmp_path):
    import asyncio
    from types import SimpleNamespace

    from pipeline.federation.api import create_app
    from pipeline.federation.coordinator import Coordinator
    from pipeline.federation.limits import DEFAULT_LIMITS

    database = tmp_path / "coordinator.db"
    store = Store(database)
    coordinator = Coordinator(store, federation="test", sites=["alpha", "beta"])
    app = create_app(coordinator, SimpleNamespace(limits=DEFAULT_LIMITS), tick_seconds=60)
    other = sqlite3.connect(database, isolation_level=None)  # a worker thread's connection, still open
    other.execute("SELECT count(*) FROM jobs").fetchone()
    wal = database.with_name(database.name + "-wal")

    async def run_lifespan() -> list[str]:
        events = iter([{"type": "lifespan.startup"}, None, {"type": "lifespan.shutdown"}])
        started, sent = asyncio.Event(), []

        async def receive() -> dict:
            event = next(events)
            if event is None:
                await started.wait()
                store.add_job(_job())  # a job submitted while serving
                event = next(events)
            return event

        async def send(message: dict) -> None:
            sent.append(message["type"])
            if message["type"] == "lifespan.startup.complete":
                started.set()

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        return sent

    assert asyncio.run(run_lifespan()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert wal.stat().st_size == 0
    other.close()
    copy = tmp_path / "copy" / "coordinator.db"
    copy.parent.mkdir()
    copy.write_bytes(database.read_bytes())
    assert [job.job_id for job in Store(copy).jobs()] == ["job-1"]


def test_coordinator_refuses_to_start_on_a_database_that_lost_audited_jobs(tmp_path):
    from pipeline.errors import ConfigurationError
    from pipeline.federation.audit import AuditLog
    from pipeline.federation.coordinator import Coordinator

    database, audit_path = tmp_path / "coordinator.db", tmp_path / "audit.log"
    audit = AuditLog(audit_path)
    store = Store(database)
    for job_id in ("job-1", "job-2", "job-3"):
        audit.append("job.submitted", job_id=job_id, analysis="secure_sum", analyst="analyst")
    audit.append("job.done", job_id="job-1", results={})
    for job_id in ("job-1", "job-2", "job-3"):
        store.add_job(dataclasses.replace(_job(job_id), status="done"))
    Coordinator(store, federation="test", sites=["alpha", "beta"], audit=audit)  # all there: starts

    # The database restored from a backup taken before job-2 and job-3 were submitted.
    connection = sqlite3.connect(database, isolation_level=None)
    connection.execute("DELETE FROM jobs WHERE job_id IN ('job-2', 'job-3')")
    connection.close()
    with pytest.raises(ConfigurationError) as caught:
        Coordinator(Store(database), federation="test", sites=["alpha", "beta"], audit=AuditLog(audit_path))
    message = str(caught.value)
    assert "job-2, job-3" in message and "job-1" not in message
    assert str(database) in message and str(audit_path) in message and f"{database}-wal" in message
    assert "backup" in message


def test_coordinator_without_an_audit_log_file_starts(tmp_path):
    from pipeline.federation.coordinator import Coordinator

    store = Store(tmp_path / "coordinator.db")
    store.add_job(dataclasses.replace(_job(), status="done"))
    Coordinator(store, federation="test", sites=["alpha", "beta"])
