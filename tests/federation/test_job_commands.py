"""``genofed job wait|cancel|status|results`` against the real server on 127.0.0.1.

Two analysts (``alice``, ``mallory``), an operator (``olga``) and three sites. Jobs
that must stay running are submitted with no agent running and a long stage timeout.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.federation import analyst, analyst_results, transport
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")
STATUS_HANG_GUARD_SECONDS = 15.0
"""Far below the 30 s the long poll would hold if the job's end did not wake it."""


class Fed:
    def __init__(self, manifest: Any, server: rs.ThreadedCoordinator) -> None:
        self.manifest, self.server = manifest, server
        self.folders = {p.name: p.folder for p in (*manifest.sites, *manifest.analysts, *manifest.operators)}
        self.connections = {name: rs.connection(folder, manifest.coordinator_url, max_attempts=1) for name, folder in self.folders.items()}

    def config(self, who: str) -> Path:
        return self.folders[who] / ("operator.toml" if who == "olga" else "analyst.toml")

    def submit(self, who: str = "alice", *, sites: tuple[str, ...] = SITES, **spec: Any) -> str:
        body = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(sites), "stage_timeout": 3600,
                **spec}
        return str(self.connections[who].post_json("/v1/jobs", {"spec": body})["job_id"])

    def cli(self, *args: str, who: str = "alice") -> Result:
        return CliRunner().invoke(main, ["job", *args, "--config", str(self.config(who))])


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("jobs")
    datasets = rs.small_datasets(tmp, SITES, num_variants=8, num_samples=10, seed=3)
    manifest = rs.provision_federation(tmp / "fed", datasets, analysts=("alice", "mallory"), operators=("olga",))
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        federation = Fed(manifest, server)
        try:
            yield federation
        finally:
            for connection in federation.connections.values():
                connection.close()


@pytest.fixture(scope="module")
def dropped_job(fed: Fed) -> str:
    """A done job of three sites that gamma never answered: the round closed at its deadline over alpha and beta."""
    job_id = fed.submit(stage_timeout=3, threshold=2)
    with rs.agent_threads(fed.manifest, names=("alpha", "beta"), max_idle=30):
        status = rs.wait_for_job(fed.connections["alice"], job_id, timeout=90)
    assert status["status"] == "done", status
    return job_id


def _audit_events(fed: Fed, job_id: str) -> list[dict[str, Any]]:
    log = fed.server.config.audit_log
    entries = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    return [{"event": e["event"], **e["fields"]} for e in entries if e["fields"].get("job_id") == job_id]


# --------------------------------------------------------------------------- cancel


def test_cancel__an_analyst_cancels_their_running_job_and_it_is_audited(fed):
    job_id = fed.submit()
    answer = fed.cli("cancel", job_id)
    assert answer.exit_code == 0, answer.output
    assert f"{job_id} secure_sum: cancelled: cancelled by analyst alice" in answer.output
    status = fed.connections["alice"].get_json(f"/v1/jobs/{job_id}")
    assert status["status"] == "cancelled" and "alice" in status["error"]
    cancelled = [e for e in _audit_events(fed, job_id) if e["event"] == "job.cancelled"]
    assert cancelled == [{"event": "job.cancelled", "job_id": job_id, "by": "alice", "role": "analyst", "round": 0,
                          "stage": cancelled[0]["stage"]}]
    # The sites no longer see it: no task, not active; an upload for it is refused.
    for site in SITES:
        work = fed.connections[site].get_json("/v1/site/work?wait=0")
        assert job_id not in work["active_jobs"] and (work["task"] or {}).get("job_id") != job_id
    assert job_id not in fed.server.coordinator._rounds


def test_cancel__a_finished_job_is_a_clear_409_and_nothing_changes(fed):
    job_id = fed.submit()
    assert fed.cli("cancel", job_id).exit_code == 0
    again = fed.cli("cancel", job_id)
    assert again.exit_code == 1
    assert "HTTP 409" in again.output and f"job {job_id} is already cancelled" in again.output
    assert "only a running job can be cancelled" in again.output
    assert [e["event"] for e in _audit_events(fed, job_id)].count("job.cancelled") == 1


def test_cancel__another_analysts_job_is_unknown_an_operator_cancels_any_a_site_none(fed):
    job_id = fed.submit("mallory")
    refused = fed.cli("cancel", job_id, who="alice")
    assert refused.exit_code == 1 and "HTTP 404" in refused.output and "no job" in refused.output
    assert fed.connections["alpha"].send("POST", f"/v1/jobs/{job_id}/cancel").status_code == 403
    assert fed.connections["mallory"].get_json(f"/v1/jobs/{job_id}")["status"] == "running"
    by_operator = fed.cli("cancel", job_id, who="olga")
    assert by_operator.exit_code == 0, by_operator.output
    assert "cancelled by operator olga" in by_operator.output


def test_cancel__running_sites_see_the_job_end_and_stop(fed):
    # alpha and beta answer, gamma (no agent) never does: the job waits on its first stage.
    job_id = fed.submit()
    outcomes: dict[str, Any] = {}

    def run(name: str) -> None:
        site = next(s for s in fed.manifest.sites if s.name == name)
        agent = SiteAgent(load_site_config(site.config))
        try:
            outcomes[name] = agent.run(once=True, max_idle=60)
        finally:
            agent.connection.close()

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    deadline = 30.0
    import time

    start = time.monotonic()
    while set(fed.connections["alice"].get_json(f"/v1/jobs/{job_id}").get("waiting_for", [])) != {"gamma"}:
        assert time.monotonic() - start < deadline, "alpha and beta did not answer"
        time.sleep(0.1)
    assert fed.connections["alice"].get_json(f"/v1/jobs/{job_id}")["status"] == "running"
    assert fed.cli("cancel", job_id).exit_code == 0
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a site agent did not stop after the cancel"
    assert {name: outcome["stopped"] for name, outcome in outcomes.items()} == {"alpha": "jobs finished", "beta": "jobs finished"}


# --------------------------------------------------------------------------- wait


def test_wait__exit_status_says_how_the_job_ended(fed, dropped_job):
    done = fed.cli("wait", dropped_job)
    assert done.exit_code == 0, done.output
    assert done.output.startswith(f"{dropped_job} secure_sum: done")

    cancelled = fed.submit()
    assert fed.cli("cancel", cancelled).exit_code == 0
    answer = fed.cli("wait", cancelled)
    assert answer.exit_code == 2 and "cancelled by analyst alice" in answer.output

    # No site answers and the stage closes at its 1 s deadline below the threshold: the job fails.
    failed = fed.submit(stage_timeout=1)
    answer = fed.cli("wait", failed, "--timeout", "60")
    assert answer.exit_code == 1, answer.output
    assert f"{failed} secure_sum: failed:" in answer.output


def test_wait__timeout_exits_3_with_the_running_status_and_the_job_goes_on(fed):
    job_id = fed.submit()
    answer = fed.cli("wait", job_id, "--timeout", "0.6")
    assert answer.exit_code == 3, answer.output
    assert f"{job_id} secure_sum: running (round 0" in answer.output
    assert fed.connections["alice"].get_json(f"/v1/jobs/{job_id}")["status"] == "running"
    fed.cli("cancel", job_id)


def test_wait__the_status_request_is_a_long_poll_that_holds_while_the_job_runs(fed):
    job_id = fed.submit()
    started = time.monotonic()
    status = fed.connections["alice"].get_json(f"/v1/jobs/{job_id}?wait=0.5")
    assert status["status"] == "running"
    assert time.monotonic() - started >= 0.5  # held for the wait the request asked for, not answered at once
    with pytest.raises(transport.HttpError) as refused:
        fed.connections["alice"].get_json(f"/v1/jobs/{job_id}?wait=soon")
    assert refused.value.status == 422
    fed.cli("cancel", job_id)


def test_wait__a_long_poll_answers_when_the_job_ends(fed):
    job_id = fed.submit()
    answers: list[dict[str, Any]] = []
    poll = threading.Thread(target=lambda: answers.append(fed.connections["alice"].get_json(
        f"/v1/jobs/{job_id}?wait=30")))
    poll.start()
    assert fed.connections["olga"].post_json(f"/v1/jobs/{job_id}/cancel", {})["status"] == "cancelled"
    poll.join(timeout=STATUS_HANG_GUARD_SECONDS)
    assert not poll.is_alive(), "the long poll did not answer when the job ended"
    assert answers[0]["status"] == "cancelled"


def test_wait__job_wait_asks_once_per_long_poll_not_in_a_loop(fed, monkeypatch):
    job_id = fed.submit()
    asked: list[str] = []
    get_json = transport.Connection.get_json

    def counted(self: transport.Connection, path: str, **kwargs: Any) -> Any:
        asked.append(path)
        return get_json(self, path, **kwargs)

    monkeypatch.setattr(transport.Connection, "get_json", counted)
    status = analyst.wait_job(fed.config("alice"), job_id, timeout=2.0)
    assert status["status"] == "running"
    # One long poll (and a last short one if the coordinator's clock ran a little ahead); polling
    # with a pause growing from 0.25 s would have asked five times.
    assert 1 <= len(asked) <= 3 and all(path.startswith(f"/v1/jobs/{job_id}?wait=") for path in asked), asked
    assert float(asked[0].rpartition("=")[2]) > 1.9
    fed.cli("cancel", job_id)


def test_wait__progress_prints_the_running_status_on_stderr_once_per_change(fed):
    job_id = fed.submit()  # no agent runs: the job stays in its first stage
    config = str(fed.config("alice"))
    shown = CliRunner().invoke(main, ["job", "wait", job_id, "--timeout", "5", "--progress", "--config", config])
    assert shown.exit_code == 3, shown.output
    lines = [line for line in shown.stderr.splitlines() if line.startswith(f"{job_id} secure_sum: running (round 0, stage ")]
    assert len(lines) == 1 and "waiting for alpha, beta, gamma" in lines[0], shown.stderr
    quiet = CliRunner().invoke(main, ["job", "wait", job_id, "--timeout", "0.5", "--no-progress", "--config", config])
    assert quiet.exit_code == 3 and "running (round" not in quiet.stderr, quiet.stderr
    fed.cli("cancel", job_id)

class _AnswersAtOnce:
    """A coordinator that ignores ``wait`` (or is shutting down): every status request is answered at once."""

    def __init__(self) -> None:
        self.asked = 0

    def get_json(self, path: str, **_: Any) -> dict[str, Any]:
        self.asked += 1
        return {"status": "running"}


def test_wait__answers_that_come_back_early_are_spaced_by_a_growing_pause():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    server = _AnswersAtOnce()
    status = analyst.wait_for_job(server, "job-20250101-120000-0a1b2c3d", timeout=30,  # type: ignore[arg-type]
                                  sleep=sleep, clock=lambda: now[0])
    assert status["status"] == "running"
    growing = slept[:-1]  # the last pause ends at the deadline
    assert slept[0] == 0.25 and all(b >= a for a, b in zip(growing, growing[1:])) and max(slept) <= 5.0
    assert sum(slept) == pytest.approx(30.0) and server.asked < 20


def test_wait__help_documents_the_exit_codes():
    text = CliRunner().invoke(main, ["job", "wait", "--help"]).output
    for line in ("0  the job is done", "1  the job failed", "2  the job was cancelled", "3  --timeout passed"):
        assert line in text


# --------------------------------------------------------------------------- status and results


def test_status__per_site_participation_and_exit_status(fed, dropped_job):
    answer = fed.cli("status", dropped_job)
    assert answer.exit_code == 0, answer.output
    assert "  alpha: took part\n  beta: took part\n  gamma: dropped (missed round 0)" in answer.output
    status = json.loads(fed.cli("status", dropped_job, "--json").output)
    assert status["missed_rounds"] == {"gamma": [0]}

    declined = fed.submit()
    assert fed.connections["beta"].post_json(f"/v1/site/jobs/{declined}/decline",
                                             {"reason": "too-few-samples: fewer contributing samples than min_samples"})
    running = fed.cli("status", declined)
    assert running.exit_code == 0
    assert "waiting for alpha, gamma" in running.output
    assert "  alpha: waiting for it\n  beta: declined (too-few-samples)\n  gamma: waiting for it" in running.output
    assert "fewer contributing" not in running.output.split("\n", 1)[1]  # the code only, per site
    fed.cli("cancel", declined)
    cancelled = fed.cli("status", declined)
    assert cancelled.exit_code == 2 and "cancelled by analyst alice" in cancelled.output
    assert "beta: declined (too-few-samples)" in cancelled.output


def test_status__a_failed_job_exits_1_and_still_prints_its_status(fed):
    failed = fed.submit(stage_timeout=1)
    status = analyst.wait_job(fed.config("alice"), failed, timeout=60)
    assert status["status"] == "failed"
    answer = fed.cli("status", failed)
    assert answer.exit_code == 1
    assert answer.output.startswith(f"{failed} secure_sum: failed: ")


def test_status__a_notice_is_shown():
    status = {"job_id": "job-20250101-120000-0a1b2c3d", "analysis": "census", "status": "running", "round": 1, "stage": "masked_input",
              "waiting_for": ["b"], "sites": ["a", "b"], "declined": {}, "notice": "coordinator disk full (x)"}
    text = analyst.status_text(status)
    assert text.splitlines()[0].endswith("waiting for b); coordinator disk full (x)")
    assert text.splitlines()[1:] == ["  a: answered", "  b: waiting for it"]


def test_participation__missed_rounds_from_a_result_summary():
    status = {"job_id": "job-20250101-120000-0a1b2c3d", "analysis": "train", "status": "done", "sites": ["a", "b", "c"],
              "declined": {"c": "set-too-close: too close to an earlier release"}}
    lines = analyst.participation_lines(status, {"sites": ["a", "b"], "missed_rounds": {"b": [3, 5]}})
    assert lines == ["  a: took part", "  b: dropped (missed rounds 3, 5)", "  c: declined (set-too-close)"]


def test_results__prints_the_participation_and_a_failed_download_leaves_no_folder(fed, dropped_job, tmp_path, monkeypatch):
    out = tmp_path / "results"
    real = analyst_results.download_results

    def failing(connection: Any, job_id: str, target: Any, *, force: bool = False) -> Any:
        def broken(path: str) -> bytes:
            raise analyst_results.ProtocolError(f"GET {path}: connection reset")

        monkeypatch.setattr(connection, "get_bytes", broken)
        return real(connection, job_id, target, force=force)

    monkeypatch.setattr(analyst_results, "download_results", failing)
    answer = fed.cli("results", dropped_job, "--out", str(out))
    assert answer.exit_code == 1 and "connection reset" in answer.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(analyst_results, "download_results", real)
    answer = fed.cli("results", dropped_job, "--out", str(out))  # no --force needed
    assert answer.exit_code == 0, answer.output
    assert "  alpha: took part\n  beta: took part\n  gamma: dropped (missed round 0)" in answer.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sites"] == ["alpha", "beta"] and summary["missed_rounds"] == {"gamma": [0]}


def test_job_commands__do_not_load_jax_or_secure_aggregation():
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import main; "
            "CliRunner().invoke(main, ['job', 'wait', '--help']); CliRunner().invoke(main, ['job', 'cancel', '--help']); "
            "import pipeline.federation.analyst; "
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('pipeline.secagg') or m.startswith('pipeline.analyses')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=rs.REPO).stdout
    assert out.strip() == "[]"
