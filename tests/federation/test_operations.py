"""Operator commands against the real server on 127.0.0.1: ``coordinator status``, ``coordinator prune``, JSON logs.

One federation (sites ``alpha``, ``beta``, ``gamma``; analyst ``alice``; operator
``olga``) runs a census and a secure sum large enough that its masked vectors are body
files; the prune test then restarts the coordinator over the pruned store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.federation.audit import read_entries, verify
from pipeline.federation.config import parse_duration
from pipeline.federation.store import INLINE_BODY_BYTES, Store, StoredJob, StoredMessage
from pipeline.federation.transport import HttpError
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")
LARGE = INLINE_BODY_BYTES // 8 + 1000
"""A secure-sum vector length whose masked vectors (8 bytes a value) are body files, not rows."""


class Fed:
    def __init__(self, manifest: Any) -> None:
        self.manifest = manifest
        self.folders = {p.name: p.folder for p in (*manifest.sites, *manifest.analysts, *manifest.operators)}
        self.server: rs.ThreadedCoordinator | None = None

    def connection(self, who: str) -> Any:
        return rs.connection(self.folders[who], self.manifest.coordinator_url, max_attempts=1)

    def config(self, who: str) -> Path:
        return self.folders[who] / ("operator.toml" if who == "olga" else "analyst.toml")

    def cli(self, *args: str, who: str = "olga") -> Result:
        return CliRunner().invoke(main, [*args, "--config", str(self.config(who))])

    def submit(self, spec: dict[str, Any]) -> str:
        with self.connection("alice") as alice:
            return str(alice.post_json("/v1/jobs", {"spec": spec})["job_id"])

    def run(self, spec: dict[str, Any]) -> str:
        job_id = self.submit(spec)
        with rs.agent_threads(self.manifest, max_idle=30), self.connection("alice") as alice:
            status = rs.wait_for_job(alice, job_id, timeout=90)
        assert status["status"] == "done", status
        return job_id


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("operations")
    datasets = rs.small_datasets(tmp, SITES, num_variants=12, num_samples=10, seed=5)
    manifest = rs.provision_federation(tmp / "fed", datasets, analysts=("alice",), operators=("olga",))
    federation = Fed(manifest)
    federation.server = rs.ThreadedCoordinator(manifest.coordinator.config).__enter__()
    try:
        federation.census = federation.run({"analysis": "census", "min_allele_count": 1, "stage_timeout": 20})
        yield federation
    finally:
        federation.server.__exit__(None, None, None)


# --------------------------------------------------------------------------- status


@pytest.mark.network
def test_status__lists_each_site_with_its_last_contact_and_the_finished_census(fed):
    answer = fed.cli("coordinator", "status", "--json")
    assert answer.exit_code == 0, answer.output
    status = json.loads(answer.output)
    sites = {row["site"]: row for row in status["sites"]}
    assert set(sites) == set(SITES)
    for row in sites.values():
        assert row["last_contact"] is not None and row["seconds_since_contact"] >= 0 and row["requests"] > 0
    assert status["jobs"]["counts"]["done"] >= 1 and status["jobs"]["finished"] >= 1
    assert status["store"]["total"] == status["store"]["database"] + status["store"]["wal"] + status["store"]["blobs"] > 0
    report = verify(fed.server.config.audit_log)
    assert (status["audit"]["entries"], status["audit"]["head"]) == (report.entries, report.head)

    text = fed.cli("coordinator", "status")
    assert text.exit_code == 0, text.output
    for site in SITES:
        assert any(line.split()[:1] == [site] and " ago " in line for line in text.output.splitlines()), text.output
    assert "0 running" in text.output and "audit log: " in text.output


@pytest.mark.network
def test_status__a_site_in_a_long_poll_shows_as_polling(fed):
    with fed.connection("beta") as beta:
        poll = threading.Thread(target=beta.get_json, args=("/v1/site/work?wait=1",))
        poll.start()
        with fed.connection("olga") as olga:
            deadline = time.monotonic() + 5
            while not {r["site"]: r["polling"] for r in olga.get_json("/v1/federation")["sites"]}["beta"]:
                assert time.monotonic() < deadline, "beta's long poll never showed"
        poll.join()


@pytest.mark.network
def test_status__an_analyst_or_a_site_is_refused(fed):
    refused = fed.cli("coordinator", "status", who="alice")
    assert refused.exit_code == 1 and "HTTP 403" in refused.output
    with fed.connection("alpha") as alpha, pytest.raises(HttpError) as site_refused:
        alpha.get_json("/v1/federation")
    assert site_refused.value.status == 403


# --------------------------------------------------------------------------- prune


def _blobs(fed: Fed) -> set[str]:
    return {path.name for path in Store(fed.server.config.database).blob_dir.iterdir()}


@pytest.mark.network
def test_prune__removes_a_finished_job_keeps_a_running_one_and_survives_a_restart(fed):
    done = fed.run({"analysis": "secure_sum", "vector": {"source": "test", "length": LARGE}, "stage_timeout": 20})
    running = fed.submit({"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "stage_timeout": 3600})
    store = fed.server.coordinator.store
    job_blobs = set(store.job_footprint(done).blobs)
    assert job_blobs and job_blobs <= _blobs(fed)
    audit_log = fed.server.config.audit_log
    entries_before = verify(audit_log).entries

    # A dry run lists the finished jobs and changes nothing.
    dry = fed.cli("coordinator", "prune", "--older-than", "0", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    listed = json.loads(dry.output)
    assert {done, fed.census} <= {job["job_id"] for job in listed["jobs"]} and running not in {j["job_id"] for j in listed["jobs"]}
    assert listed["bytes_freed"] == 0 and listed["bytes"] > len(job_blobs) * INLINE_BODY_BYTES
    assert job_blobs <= _blobs(fed) and verify(audit_log).entries == entries_before
    assert store.job(done).pruned_at is None
    with fed.connection("alice") as alice:
        assert alice.get_json(f"/v1/jobs/{done}/results")["tables"]
    # Nothing ended more than a day ago: a real prune of that age removes nothing.
    assert json.loads(fed.cli("coordinator", "prune", "--older-than", "1d", "--json").output)["jobs"] == []

    pruned = fed.cli("coordinator", "prune", "--older-than", "0")
    assert pruned.exit_code == 0, pruned.output
    assert f"{done}  secure_sum" in pruned.output and "freed " in pruned.output and running not in pruned.output

    # The finished job's bodies and rows are gone, the store shrank, its row stays as a tombstone.
    assert not job_blobs & _blobs(fed)
    assert store.job_footprint(done).messages == 0 and store.rounds(done) == [] and store.results(done) == {}
    tombstone = store.job(done)
    assert tombstone.status == "done" and tombstone.analyst == "alice" and tombstone.analysis == "secure_sum"
    assert tombstone.finished_at is not None and tombstone.pruned_at >= tombstone.finished_at
    entry = next(e for e in read_entries(audit_log, event="job.pruned") if e["fields"]["job_id"] == done)
    assert entry["fields"]["removed_digest"] == tombstone.pruned_digest and entry["fields"]["outcome"] == "done"
    assert entry["fields"]["analyst"] == "alice" and entry["fields"]["messages"] > 0
    audit = CliRunner().invoke(main, ["audit", "verify", str(audit_log)])
    assert audit.exit_code == 0, audit.output

    # The running job is untouched and still takes uploads.
    assert store.job(running).status == "running" and store.job(running).pruned_at is None and store.rounds(running)
    assert running in fed.server.coordinator._rounds

    # job status and job results say when it was pruned.
    status = CliRunner().invoke(main, ["job", "status", done, "--config", str(fed.config("alice"))])
    assert status.exit_code == 0 and "was pruned on " in status.output, status.output
    results = CliRunner().invoke(main, ["job", "results", done, "--config", str(fed.config("alice")), "--out",
                                        str(fed.server.config.database.parent / "pruned-results")])
    assert results.exit_code == 1 and "HTTP 410" in results.output and "was pruned on " in results.output, results.output

    # A restarted coordinator checks the store against the audit log and accepts the pruned jobs.
    fed.server.__exit__(None, None, None)
    fed.server = rs.ThreadedCoordinator(fed.manifest.coordinator.config).__enter__()
    assert fed.server.coordinator.store.job(done).pruned_at == tombstone.pruned_at
    assert running in fed.server.coordinator._rounds
    with fed.connection("olga") as olga:
        assert olga.get_json(f"/v1/jobs/{done}")["pruned_at"] == tombstone.pruned_at
        assert olga.get_json("/v1/federation")["jobs"]["counts"]["pruned"] >= 2

    # With a [retention] table the running coordinator applies the policy on its own, once the job has ended.
    config = fed.manifest.coordinator.config
    config.write_text(config.read_text() + '\n[retention]\nolder_than = "0s"\nevery = 0.1\n')
    fed.server.__exit__(None, None, None)
    fed.server = rs.ThreadedCoordinator(config).__enter__()
    assert fed.server.config.retention is not None and fed.server.coordinator.store.job(running).pruned_at is None
    with fed.connection("olga") as olga:
        olga.post_json(f"/v1/jobs/{running}/cancel", {})
    deadline = time.monotonic() + 20
    while fed.server.coordinator.store.job(running).pruned_at is None:
        assert time.monotonic() < deadline, "the retention policy never pruned the cancelled job"
        time.sleep(0.05)
    assert verify(audit_log).ok


def test_retention__the_table_is_read_with_ages_and_checked(tmp_path):
    from pipeline.errors import ConfigurationError
    from pipeline.federation.config import Retention, load_coordinator_config

    manifest = rs.provision_federation(tmp_path / "fed", {"alpha": tmp_path, "beta": tmp_path})
    config = manifest.coordinator.config
    text = config.read_text()
    assert load_coordinator_config(config).retention is None
    config.write_text(text + '\n[retention]\nolder_than = "30d"\n')
    assert load_coordinator_config(config).retention == Retention(older_than=30 * 86400, every=3600)
    config.write_text(text + '\n[retention]\nolder_than = "soon"\n')
    with pytest.raises(ConfigurationError, match="retention.older_than"):
        load_coordinator_config(config)


def test_prune__the_store_shrinks_by_what_it_measured(tmp_path):
    """Store level: the body files of the pruned job go, one shared with another job stays, VACUUM gives the pages back."""
    store = Store(tmp_path / "coordinator.db")
    shared, own = os.urandom(INLINE_BODY_BYTES + 1), os.urandom(INLINE_BODY_BYTES + 1)
    for job_id, bodies in (("job-a", (shared, own)), ("job-b", (shared,))):
        store.add_job(StoredJob(job_id, "secure_sum", {}, "alice", ("alpha",), 1, "running", None, 1.0, None))
        store.add_round(job_id, 0, {"pad": "x" * 200_000}, [1])
        for index, body in enumerate(bodies):
            store.add_message(StoredMessage(f"{job_id}/{index}", job_id, 0, "masked_input", f"site{index}",
                                            hashlib.sha256(body).hexdigest(), body, 1.0))
    with pytest.raises(ValueError, match="running"):
        store.prune_job("job-a", 2.0)
    store.finish_job("job-a", "failed", "x")
    before = store.disk_usage()
    footprint = store.prune_job("job-a", 2.0)
    assert footprint.messages == 2 and len(footprint.blobs) == 2  # what was there before the rows went
    assert store.job_footprint("job-a").messages == 0 and store.job("job-a").pruned_digest == footprint.digest
    freed = store.remove_blobs(footprint.blobs)
    store.vacuum()
    after = store.disk_usage()
    assert freed == len(own) and before["blobs"] - after["blobs"] == len(own)
    assert after["wal"] == 0 and after["database"] < before["database"] + before["wal"] - 200_000  # job-a's round went
    assert store.messages("job-b", 0, "masked_input")[0].body == shared
    store.close()


def test_parse_duration__units_and_plain_seconds():
    assert [parse_duration(v) for v in ("30d", "12h", "90m", "45s", "2w", "0", 7)] == [
        30 * 86400, 12 * 3600, 90 * 60, 45, 14 * 86400, 0, 7]
    with pytest.raises(Exception, match="e.g. 30d"):
        parse_duration("thirty days")


# --------------------------------------------------------------------------- JSON logs


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line, or the test fails here


@pytest.mark.network
def test_logs__coordinator_serve_writes_json_lines_with_start_stop_and_job_events(tmp_path):
    manifest = rs.provision_federation(tmp_path / "fed", rs.small_datasets(tmp_path, ("alpha", "beta"), num_variants=4,
                                                                           num_samples=6, seed=1))
    log_path = tmp_path / "coordinator.log"
    with open(log_path, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "coordinator", "serve", "--config", str(manifest.coordinator.config),
             "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=handle, cwd=rs.REPO, start_new_session=True)
    try:
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst, \
                rs.connection(manifest.sites[0].folder, manifest.coordinator_url) as site:
            rs.wait_until_serving(analyst)
            site.get_json("/v1/site/work?wait=0")
            job_id = analyst.post_json("/v1/jobs", {"spec": {"analysis": "secure_sum", "vector": {"source": "test", "length": 4},
                                                             "stage_timeout": 3600}})["job_id"]
            analyst.post_json(f"/v1/jobs/{job_id}/cancel", {})
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    records = _json_lines(log_path)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    events = [r.get("event") for r in records]
    assert events[0] == "coordinator.started" and events[-1] == "coordinator.stopped", events
    assert records[0]["federation"] == "testfed" and records[-1]["reason"] == "terminated"
    assert {"job.submitted", "site.first_contact", "job.cancelled"} <= set(events), events
    submitted = next(r for r in records if r.get("event") == "job.submitted")
    assert submitted["job_id"] == job_id and submitted["analysis"] == "secure_sum"
    assert next(r for r in records if r.get("event") == "site.first_contact")["site"] == "alpha"


@pytest.mark.slow
@pytest.mark.network
def test_logs__site_run_writes_json_lines_with_start_and_stop(fed, tmp_path):
    site = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "site", "run", "--config", str(fed.manifest.sites[0].config), "--once",
         "--max-idle", "0", "--log-format", "json"], capture_output=True, text=True, cwd=rs.REPO, timeout=120)
    assert site.returncode == 0, site.stderr
    events = [json.loads(line).get("event") for line in site.stderr.splitlines() if line.strip()]
    assert events[0] == "site.started" and events[-1] == "site.stopped", events
