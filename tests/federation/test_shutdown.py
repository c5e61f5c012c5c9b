"""Stopping a coordinator or a site agent: SIGTERM to ``genofed coordinator serve`` and ``genofed site run``.

A graceful shutdown waits for every connection to close. Two kinds of client used to
hold it: a site's long poll (up to ``MAX_WAIT_SECONDS``), and any client keeping an
idle connection in its pool, which never answers the server's TLS close_notify (asyncio
then waited its default 30 s). Together they kept a coordinator a minute from stopping.
"""

from __future__ import annotations

import http.client
import os
import signal
import threading
from typing import Any

import pytest

from pipeline.federation import tls
from pipeline.federation.api import MAX_WAIT_SECONDS
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

STOPPED_WITHIN_SECONDS = 15.0
"""A hang guard, far from both defects: the long poll alone held the process 30 s, the idle client 30 s more."""


def test_shutdown__sigterm_answers_the_long_poll_and_waits_for_no_idle_client(tmp_path):
    datasets = {name: rs.write_dataset(tmp_path / f"data-{name}", rs.variant_ids(range(100, 105)), rs.random_genotypes(i, 5, 8))
                for i, name in enumerate(("alpha", "beta"))}
    manifest = rs.provision_federation(tmp_path / "fed", datasets, operators=("olga",))
    process = rs.start_coordinator_process(manifest.coordinator.config, tmp_path / "coordinator.log")
    try:
        operator = rs.connection(manifest.operators[0].folder, manifest.coordinator_url)
        rs.wait_until_serving(operator)
        # An idle keep-alive client: it had its answer and keeps the connection without reading from it.
        analyst = manifest.analysts[0].folder
        context = tls.client_context(analyst / "cert.pem", analyst / "key.pem", analyst / "ca.pem")
        host, port = manifest.coordinator_url.removeprefix("https://").rsplit(":", 1)
        idle = http.client.HTTPSConnection(host, int(port), context=context)
        idle.request("GET", "/v1/health")
        assert idle.getresponse().read()
        # A site waiting for work as long as the API lets it.
        site = rs.connection(manifest.sites[0].folder, manifest.coordinator_url)
        answers: dict[str, Any] = {}
        poll = threading.Thread(target=lambda: answers.update(site.get_json(f"/v1/site/work?wait={MAX_WAIT_SECONDS}")))
        poll.start()
        while not {row["site"]: row["polling"] for row in operator.get_json("/v1/federation")["sites"]}["alpha"]:
            assert poll.is_alive(), "the long poll ended before the coordinator was stopped"

        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=STOPPED_WITHIN_SECONDS) == 0
        poll.join(timeout=STOPPED_WITHIN_SECONDS)
        assert not poll.is_alive()
        assert answers["task"] is None and answers["active_jobs"] == []  # an answer, not a dropped connection
        idle.close()
    finally:
        rs.kill(process)


def test_shutdown__sigterm_stops_a_waiting_site_agent_at_once_with_its_stop_line(tmp_path):
    """A service manager or a batch scheduler stops an agent with SIGTERM: a clean stop, not a death by signal."""
    datasets = {"alpha": rs.write_dataset(tmp_path / "data-alpha", rs.variant_ids(range(100, 105)), rs.random_genotypes(0, 5, 8))}
    manifest = rs.provision_federation(tmp_path / "fed", datasets, operators=("olga",))
    coordinator = rs.start_coordinator_process(manifest.coordinator.config, tmp_path / "coordinator.log")
    agent_log = tmp_path / "alpha.log"
    agent = rs.start_site_process(manifest.sites[0].config, agent_log, once=False)
    try:
        operator = rs.connection(manifest.operators[0].folder, manifest.coordinator_url)
        rs.wait_until_serving(operator)
        while not {row["site"]: row["polling"] for row in operator.get_json("/v1/federation")["sites"]}["alpha"]:
            assert agent.poll() is None, agent_log.read_text()

        os.kill(agent.pid, signal.SIGTERM)
        assert agent.wait(timeout=STOPPED_WITHIN_SECONDS) == 0, agent_log.read_text()
        assert "site alpha: stopped (terminated); 0 tasks" in agent_log.read_text()
    finally:
        rs.kill(agent)
        rs.kill(coordinator)
