"""The coordinator's store: large bodies as digest-named files, checked when read back."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.errors import ProtocolError
from pipeline.federation.store import INLINE_BODY_BYTES, Store, StoredJob, StoredMessage


def _message(body: bytes, message_id: str = "m-00000001", site: str = "alpha") -> StoredMessage:
    return StoredMessage(message_id, "job-1", 0, "masked_input", site, hashlib.sha256(body).hexdigest(), body, 1.0)


def test_store__large_body_is_a_file_named_by_its_digest_and_reads_back(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    large, small = bytes(range(256)) * (INLINE_BODY_BYTES // 256 + 1), b"small body"
    store.add_message(_message(large))
    store.add_message(_message(small, "m-00000002", "beta"))
    files = sorted(p.name for p in store.blob_dir.iterdir())
    assert files == [hashlib.sha256(large).hexdigest()]
    reopened = Store(tmp_path / "coordinator.db")
    assert reopened.message("m-00000001").body == large
    assert reopened.message("m-00000001", body=False).body == b""
    assert [m.body for m in reopened.messages("job-1", 0, "masked_input")] == [large, small]


def test_store__altered_body_file_is_refused_on_read(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    large = b"\x01" * (INLINE_BODY_BYTES + 1)
    store.add_message(_message(large))
    path = store.blob_dir / hashlib.sha256(large).hexdigest()
    path.write_bytes(b"\x02" * len(large))
    with pytest.raises(ProtocolError, match="does not match its digest"):
        store.message("m-00000001")
    path.unlink()
    with pytest.raises(ProtocolError, match="unreadable"):
        store.message_of("job-1", 0, "masked_input", "alpha")


def test_store__refused_and_crashed_uploads_leave_no_files(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    body = b"\x03" * (INLINE_BODY_BYTES + 10)
    refused = store.stage_body(body, hashlib.sha256(body).hexdigest())
    assert refused.temporary is not None and refused.temporary.is_file()
    store.discard(refused)
    assert not any(store.blob_dir.iterdir())
    # A process killed between staging (or renaming) and committing the row: reopening cleans up.
    store.stage_body(body, hashlib.sha256(body).hexdigest())
    (store.blob_dir / hashlib.sha256(body).hexdigest()).write_bytes(body)
    Store(tmp_path / "coordinator.db")
    assert not any(store.blob_dir.iterdir())


def test_store__staged_body_is_moved_once(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    body = b"\x04" * (INLINE_BODY_BYTES + 10)
    staged = store.stage_body(body, hashlib.sha256(body).hexdigest())
    store.add_message(_message(body), staged=staged)
    assert staged.temporary is None
    store.discard(staged)  # after a successful store: nothing to remove
    assert store.message("m-00000001").body == body


def test_store__large_results_are_files_and_survive_reopening(tmp_path):
    store = Store(tmp_path / "coordinator.db")
    store.add_job(StoredJob("job-1", "secure_sum", {}, "analyst", ("alpha", "beta"), 2, "running", None, 0.0, None))
    table = b"\x05" * (INLINE_BODY_BYTES * 3)
    store.finish_with_results("job-1", [("summary", "json", b"{}"), ("sum", "table", table)])
    reopened = Store(tmp_path / "coordinator.db")
    assert reopened.results("job-1") == {"summary": ("json", b"{}"), "sum": ("table", table)}
    assert reopened.job("job-1").status == "done"
    assert [p.name for p in reopened.blob_dir.iterdir()] == [hashlib.sha256(table).hexdigest()]
