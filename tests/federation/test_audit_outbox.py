"""Nothing the coordinator used goes unaudited: its state change and the audit entry recording it are one durable step.

A coordinator process is killed (``os._exit``: no cleanup, no rollback) just before an
audit append, after the store committed the change the entry records. The restarted
coordinator finds the entries in the store's audit outbox and appends exactly the ones
the log lacks. An error inside a call rolls its changes and its entries back together.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from pipeline.federation.audit import AuditLog, already_appended, read_entries, verify
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.store import Store
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")

_DYING_COORDINATOR = r'''
import os, sys
from pathlib import Path
from pipeline.federation.agent import SiteAgent
from pipeline.federation.audit import AuditLog
from pipeline.federation.config import SitePolicy
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.store import Store
from tests.federation import runtime_support as rs

root, dying_event, occurrence = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])


class DyingLog(AuditLog):
    """The process dies just before appending the n-th entry of one event."""

    seen = 0

    def append(self, event, /, **fields):
        if event == dying_event:
            DyingLog.seen += 1
            if DyingLog.seen == occurrence:
                os._exit(137)
        return super().append(event, **fields)


names = ["alpha", "beta", "gamma"]
datasets = rs.small_datasets(root / "data", names, num_variants=6, num_samples=8, seed=3)
engine = Coordinator(Store(root / "coordinator.db"), federation="testfed", sites=names, audit=DyingLog(root / "audit.log"))
holder = {"coordinator": engine}
policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True)
configs = rs.in_process_site_configs(root, datasets, policy)
agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in names}
job_id = engine.submit({"analysis": "census", "min_allele_count": 0, "stage_timeout": 600}, "analyst")
while engine.status(job_id)["status"] == "running":
    for name in names:
        task = engine.next_task(name)
        if task is not None:
            agents[name].handle(task)
sys.exit(3)  # the job ended without reaching the dying append
'''


def _killed_before_append(root, event: str, occurrence: int = 1) -> None:
    """Runs a census coordinator in a child process that dies before the audit append of ``event``."""
    root.mkdir(parents=True, exist_ok=True)
    finished = subprocess.run([sys.executable, "-c", _DYING_COORDINATOR, str(root), event, str(occurrence)],
                              cwd=rs.REPO, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 137, finished.stderr[-3000:]


def _stored_messages(database) -> list[tuple[str, int, str, str, str]]:
    with sqlite3.connect(database) as db:
        return sorted(db.execute("SELECT job_id, round_index, stage, site, digest FROM messages"))


def _audited_contributions(log) -> list[tuple[str, int, str, str, str]]:
    return sorted((e["fields"]["job_id"], e["fields"]["round"], e["fields"]["stage"], e["fields"]["site"], e["fields"]["digest"])
                  for e in read_entries(log, event="contribution.received"))


def test_audit_outbox__a_contribution_committed_before_a_kill_is_audited_at_restart(tmp_path):
    _killed_before_append(tmp_path, "contribution.received")
    database, log = tmp_path / "coordinator.db", tmp_path / "audit.log"
    stored = _stored_messages(database)
    assert len(stored) == 1  # the first upload committed...
    assert _audited_contributions(log) == []  # ...and the process died before its audit entry
    assert [event for _, event, _ in Store(database).queued_audit()] == ["contribution.received"]

    Coordinator(Store(database), federation="testfed", sites=SITES, audit=AuditLog(log))

    assert _audited_contributions(log) == stored
    assert Store(database).queued_audit() == []
    assert verify(log).ok


def test_audit_outbox__entries_of_a_half_appended_call_are_completed_without_repeats(tmp_path):
    # The last key upload closes the key round and opens the next: one call, three entries.
    # The process dies after its contribution entry reached the log and before stage.closed
    # (the second: the first closed the pre-flight).
    _killed_before_append(tmp_path, "stage.closed", occurrence=2)
    database, log = tmp_path / "coordinator.db", tmp_path / "audit.log"
    assert [e["event"] for e in read_entries(log)][-1] == "contribution.received"

    Coordinator(Store(database), federation="testfed", sites=SITES, audit=AuditLog(log))

    events = [e["event"] for e in read_entries(log)]
    assert events == ["job.submitted", "round.opened", *["contribution.received"] * 3, "stage.closed",
                      *["contribution.received"] * 3, "stage.closed", "round.opened"]
    assert _audited_contributions(log) == _stored_messages(database)
    assert verify(log).ok


def test_audit_outbox__an_error_inside_a_call_rolls_back_its_changes_and_their_entries(tmp_path):
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import SitePolicy

    datasets = rs.small_datasets(tmp_path / "data", SITES, num_variants=6, num_samples=8, seed=3)
    database, log = tmp_path / "coordinator.db", tmp_path / "audit.log"
    store = Store(database)
    holder = {"coordinator": Coordinator(store, federation="testfed", sites=SITES, audit=AuditLog(log))}
    engine = holder["coordinator"]
    policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True)
    configs = rs.in_process_site_configs(tmp_path, datasets, policy)
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in SITES}
    job_id = engine.submit({"analysis": "census", "min_allele_count": 0, "stage_timeout": 600}, "analyst")
    for name in ("alpha", "beta"):
        agents[name].handle(engine.next_task(name))

    # gamma's key upload closes the key round; the stage's row fails to write (an I/O error).
    close_stage = store.close_stage

    def failing_close_stage(*args, **kwargs):
        store.close_stage = close_stage
        raise sqlite3.OperationalError("disk I/O error")

    store.close_stage = failing_close_stage
    task = engine.next_task("gamma")
    message_id = "gamma-key-upload"
    path = f"/v1/site/jobs/{job_id}/rounds/0/stages/{task['stage']}/messages/{message_id}"
    body = _key_upload(agents["gamma"], task)
    with pytest.raises(sqlite3.OperationalError):
        holder_connection = rs.DirectConnection(holder, "gamma")
        holder_connection.put_bytes(path, body)

    # Nothing of the failed call stays: not gamma's message, not its entry, not the closed stage.
    assert [site for *_, site, _ in _stored_messages(database)] == ["alpha", "beta"]
    assert [e["fields"]["site"] for e in read_entries(log, event="contribution.received")] == ["alpha", "beta"]
    assert store.queued_audit() == []
    assert engine.status(job_id)["waiting_for"] == ["gamma"]
    # The same upload again succeeds, and the job goes on from a cache rebuilt from the store.
    assert holder_connection.put_bytes(path, body)["status"] == "accepted"
    while engine.status(job_id)["status"] == "running":
        for name in SITES:
            next_task = engine.next_task(name)
            if next_task is not None:
                agents[name].handle(next_task)
    assert engine.status(job_id)["status"] == "done"
    assert _audited_contributions(log) == _stored_messages(database)
    assert verify(log).ok


def _key_upload(agent, task) -> bytes:
    """The bytes a site agent uploads for a key-union task (captured from the agent itself)."""
    captured: list[bytes] = []

    class Capture(rs.DirectConnection):
        def put_bytes(self, path: str, body: bytes):
            captured.append(body)
            raise ConnectionError("captured")

    connection, agent.connection = agent.connection, Capture(agent.connection.holder, agent.connection.site)
    try:
        with pytest.raises(ConnectionError):
            agent.handle(task)
    finally:
        agent.connection = connection
    return captured[0]


def test_audit_outbox__already_appended_finds_the_written_prefix():
    queued = [("a.one", {"n": 1}), ("a.two", {"n": 2}), ("a.three", {"n": 3})]

    def entries(*pairs):
        return [{"event": event, "fields": fields} for event, fields in pairs]

    assert already_appended(queued, entries(("x.y", {}))) == 0
    assert already_appended(queued, entries(("x.y", {}), queued[0])) == 1
    assert already_appended(queued, entries(*queued[:2])) == 2
    assert already_appended(queued, entries(*queued)) == 3
    assert already_appended(queued, entries(("a.one", {"n": 9}))) == 0  # same event, other fields
    assert already_appended([], entries(*queued)) == 0
