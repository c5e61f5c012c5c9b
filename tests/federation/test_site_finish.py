"""When a site agent stops: ``--once`` ends with its jobs, with nothing to do, or with its coordinator gone.

And ``genofed federate`` waits for each agent's own end-of-job step, naming a site that
did not finish it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from pipeline.errors import ProtocolError
from pipeline.federation import agent as agent_module
from pipeline.federation import transport
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from pipeline.federation.localhost import _wait_for_sites, summary_text
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("site-finish")
    datasets = {}
    for i, name in enumerate(SITES):
        ids = rs.variant_ids(range(100, 120))
        datasets[name] = rs.write_dataset(tmp / f"data-{name}", ids, rs.random_genotypes(60 + i, len(ids), 12))
    return rs.provision_federation(tmp / "fed", datasets, min_samples=3)


def _site_config(manifest, name: str):
    return next(site.config for site in manifest.sites if site.name == name)


def _run_in_thread(target) -> tuple[threading.Thread, dict]:
    """Runs ``target()`` in a thread; the dict gets its ``result`` or ``error``."""
    outcome: dict = {}

    def body() -> None:
        try:
            outcome["result"] = target()
        except Exception as error:  # noqa: BLE001 -- handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def test_site_finish__once_agent_started_after_its_job_ended_exits(manifest, monkeypatch, caplog):
    monkeypatch.setattr(agent_module, "_WAIT_SECONDS", 0.2)  # short long-polls: the test waits on the exit, not a clock
    monkeypatch.setattr(agent_module, "ONCE_IDLE_SECONDS", 0.5)
    spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 8}, "stage_timeout": 10, "threshold": 2}
    with rs.ThreadedCoordinator(manifest.coordinator.config):
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            with rs.agent_threads(manifest, max_idle=30):
                assert rs.wait_for_job(analyst, job_id)["status"] == "done"
        # The job is over; an agent (re)started with --once now has nothing to do, and says so.
        agent = SiteAgent(load_site_config(_site_config(manifest, "alpha")))
        try:
            with caplog.at_level(logging.WARNING, logger=agent_module.__name__):
                thread, outcome = _run_in_thread(lambda: agent.run(once=True))
                thread.join(timeout=30)
        finally:
            agent.connection.close()
    assert not thread.is_alive(), "a --once agent with no job kept polling"
    assert outcome["result"] == {"site": "alpha", "tasks": 0, "jobs": [], "stopped": "idle"}
    assert "nothing to do" in caplog.text and manifest.coordinator_url in caplog.text


def test_site_finish__once_agent_whose_coordinator_is_gone_stops_naming_it(manifest):
    config = load_site_config(_site_config(manifest, "beta"))  # nothing serves the coordinator's port
    connection = rs.connection(next(s.folder for s in manifest.sites if s.name == "beta"), config.coordinator_url,
                               max_attempts=1)
    agent = SiteAgent(config, connection=connection)
    try:
        thread, outcome = _run_in_thread(lambda: agent.run(once=True, unreachable_after=0.5))
        thread.join(timeout=30)
    finally:
        connection.close()
    assert not thread.is_alive(), "a --once agent kept polling a coordinator that is gone"
    error = outcome["error"]
    assert isinstance(error, ProtocolError)
    assert config.coordinator_url in str(error) and "has not answered" in str(error)


def test_site_finish__site_run_once_without_coordinator_exits_non_zero(manifest, monkeypatch):
    from pipeline.cli import main

    class OneAttempt(transport.Connection):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **{**kwargs, "max_attempts": 1})

    monkeypatch.setattr(transport, "Connection", OneAttempt)
    monkeypatch.setattr(agent_module, "ONCE_UNREACHABLE_SECONDS", 0.5)
    answer = CliRunner().invoke(main, ["site", "run", "--config", str(_site_config(manifest, "gamma")), "--once"])
    assert answer.exit_code == 1, answer.output
    assert manifest.coordinator_url in answer.output and "--once" in answer.output


def test_site_finish__agent_without_once_outlasts_an_unreachable_coordinator_until_max_idle_then_fails(manifest, monkeypatch):
    # Without --once an unreachable coordinator is waited out (it may restart): only max_idle ends the loop,
    # and as an error naming the coordinator (exit 1), not as a clean idle stop.
    monkeypatch.setattr(agent_module, "ONCE_UNREACHABLE_SECONDS", 0.0)
    config = load_site_config(_site_config(manifest, "alpha"))
    connection = rs.connection(next(s.folder for s in manifest.sites if s.name == "alpha"), config.coordinator_url,
                               max_attempts=1)
    agent = SiteAgent(config, connection=connection)
    try:
        with pytest.raises(ProtocolError, match="has not answered for .*--max-idle 0.5 s passed") as error:
            agent.run(max_idle=0.5)
    finally:
        connection.close()
    assert config.coordinator_url in str(error.value)


def _child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, start_new_session=True)


def test_site_finish__federate_waits_for_each_agent_and_names_one_that_did_not_finish(tmp_path):
    agents = {
        "site-1": _child("pass"),
        "site-2": _child("raise SystemExit(3)"),
        "site-3": _child("import sys; sys.stdin.read()"),  # stuck until its stdin closes
    }
    try:
        unfinished = _wait_for_sites(agents, tmp_path, timeout=2.0)
        assert agents["site-1"].returncode == 0 and agents["site-2"].returncode == 3
        assert set(unfinished) == {"site-2", "site-3"}
        assert unfinished["site-2"].startswith("exited with status 3") and "still running" in unfinished["site-3"]
        assert str(tmp_path / "site-3.log") in unfinished["site-3"]
    finally:
        for process in agents.values():
            process.stdin.close()
            process.wait(timeout=10)
    text = summary_text({"job_id": "j", "analysis": "census", "status": "done", "seconds": 1.0, "sites": dict.fromkeys(agents),
                         "results": "r", "federation": "f", "sites_unfinished": unfinished})
    assert "site-3 did not finish its own outputs: still running" in text
