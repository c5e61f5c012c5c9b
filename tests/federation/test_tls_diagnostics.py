"""Connection failures named by their cause, refused handshakes in the coordinator's log; start and stop lines of the coordinator and the agents.

Real processes on 127.0.0.1: ``genofed coordinator serve`` and ``genofed site run``.
Expired and other-CA certificates are made with the provision module's helpers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.federation import transport
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from pipeline.federation.handshakes import RefusedHandshakes, refusal_reason
from pipeline.federation.provision import issue_certificate, provision
from pipeline.federation.roster import RosterEntry, load_roster, make_roster, write_roster
from pipeline.federation.tls import client_context
from tests.federation.runtime_support import REPO, connection, free_port, start_coordinator_process, stop

pytestmark = pytest.mark.network

DEADLINE = 60.0


def _wait_for(predicate, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _wait_serving(process: subprocess.Popen, analyst_folder: Path, url: str, log_path: Path) -> None:
    """Waits until the coordinator process answers /v1/health (fails at once if it exits)."""
    def running() -> None:
        assert process.poll() is None, log_path.read_text()

    with connection(analyst_folder, url) as probe:
        probe.wait_until_answering("/v1/health", timeout=DEADLINE, check=running)


def _genofed(*args: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return provision(tmp_path_factory.mktemp("diag") / "fed", federation="diagfed", sites=["site-1"], analysts=["alice"],
                     coordinator_port=free_port(), valid_days=2)


@pytest.fixture(scope="module")
def coordinator(federation, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("diag-log") / "coordinator.log"
    process = start_coordinator_process(federation.coordinator.config, log_path)
    analyst = federation.analysts[0].folder
    _wait_serving(process, analyst, federation.coordinator_url, log_path)
    yield process, log_path
    stop(process)


def _expired_site(federation, tmp_path: Path) -> Path:
    """A copy of site-1's folder whose certificate (listed in its roster copy) expired ten days ago."""
    folder = tmp_path / "site-1"
    shutil.copytree(federation.sites[0].folder, folder)
    started = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=12)
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=2, not_before=started)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    roster = load_roster(folder / "roster.json", folder / "ca.pem")
    entries = [e for e in roster.participants if not (e.role == "site" and e.name == "site-1")]
    entries.append(RosterEntry.from_certificate(x509.load_pem_x509_certificate(cert_pem)))
    ca_key = serialization.load_pem_private_key((federation.path / "ca" / "ca.key").read_bytes(), password=None)
    write_roster(folder / "roster.json", make_roster("diagfed", 2, entries, ca_key))
    return folder


def test_site_run__expired_certificate_exits_1_naming_the_date(federation, coordinator, tmp_path):
    folder = _expired_site(federation, tmp_path)
    expired_on = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)).strftime("%Y-%m-%d")
    result = _genofed("site", "run", "--config", str(folder / "site.toml"))  # a service: no --once, no --max-idle
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("genofed: error:")]
    assert len(errors) == 1 and f"expired on {expired_on}" in errors[0], result.stderr
    assert "site stopped: reason fatal TLS cause: expired" in result.stderr


def test_connection__server_from_another_ca_is_unknown_ca(federation, coordinator, tmp_path):
    other = provision(tmp_path / "other", federation="otherfed", sites=["site-1"], analysts=["alice"],
                      coordinator_port=free_port(), valid_days=2)
    with connection(other.analysts[0].folder, federation.coordinator_url, max_attempts=None, backoff=0.01) as conn:
        with pytest.raises(transport.ConnectionFailure, match="unknown CA") as caught:
            conn.get_json("/v1/health")
    assert caught.value.permanent and f"({transport.FATAL_TRIES} tries)" in str(caught.value)
    # The agent of another federation's site stops (exit 1) with the same cause, also as a service.
    site_toml = other.sites[0].config
    site_toml.write_text(site_toml.read_text().replace(other.coordinator_url, federation.coordinator_url))
    result = _genofed("site", "run", "--config", str(site_toml), "--max-idle", "600")
    assert result.returncode == 1 and "unknown CA" in result.stderr, result.stderr


def test_wait_until_answering__a_permanent_failure_raises_at_once_a_refused_port_at_the_deadline(federation, coordinator,
                                                                                                  tmp_path):
    other = provision(tmp_path / "other", federation="otherfed", sites=["site-1"], analysts=["alice"],
                      coordinator_port=free_port(), valid_days=2)
    with connection(other.analysts[0].folder, federation.coordinator_url) as conn:
        with pytest.raises(transport.ConnectionFailure, match="unknown CA") as caught:
            conn.wait_until_answering("/v1/health", timeout=DEADLINE)  # no minute of tries: it cannot fix itself
    assert caught.value.permanent and "no answer within" not in str(caught.value)
    port = free_port()
    with connection(federation.analysts[0].folder, f"https://127.0.0.1:{port}") as conn:
        with pytest.raises(transport.ConnectionFailure, match=f"no answer within 0 s: .*connection refused at 127.0.0.1:{port}"):
            conn.wait_until_answering("/v1/health", timeout=0.1)


def test_connection__wrong_port_is_connection_refused_and_retried(federation, caplog):
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    with connection(federation.analysts[0].folder, url, max_attempts=4, backoff=0.01) as conn:
        with pytest.raises(transport.ConnectionFailure, match=f"connection refused at 127.0.0.1:{port}") as caught:
            conn.get_json("/v1/health")
    assert not caught.value.permanent and "no answer after 4 attempts" in str(caught.value)
    # The agent keeps polling (transient), and under --once stops by the unreachable rule.
    config = load_site_config(federation.sites[0].config)
    polling = connection(federation.sites[0].folder, url, max_attempts=2, backoff=0.01)
    agent = SiteAgent(config, connection=polling)
    with caplog.at_level(logging.WARNING, logger="pipeline.federation.agent"):
        with pytest.raises(transport.ProtocolError, match=f"connection refused at 127.0.0.1:{port}"):
            agent.run(once=True, unreachable_after=0.3)
    polling.close()
    retries = [r for r in caplog.records if "polling failed" in r.getMessage()]
    assert retries and f"connection refused at 127.0.0.1:{port}" in retries[0].getMessage()


def test_connection__plain_http_port(federation):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    import threading

    def answer() -> None:
        for _ in range(transport.FATAL_TRIES + 2):
            try:
                peer, _ = listener.accept()
            except OSError:
                return
            with peer:
                peer.recv(4096)
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with connection(federation.analysts[0].folder, f"https://127.0.0.1:{port}", max_attempts=None, backoff=0.01) as conn:
            with pytest.raises(transport.ConnectionFailure, match="does not speak TLS") as caught:
                conn.get_json("/v1/health")
        assert caught.value.cause == "plain-http"
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        listener.close()
        thread.join(timeout=10)


def test_connection__hostname_mismatch(federation):
    """The coordinator's certificate names 127.0.0.1 and localhost; reached as 127.0.0.2 it is a mismatch."""
    import threading

    from pipeline.federation.tls import server_context

    folder = federation.coordinator.folder
    context = server_context(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    listener = socket.create_server(("127.0.0.2", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(peer, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with connection(federation.analysts[0].folder, f"https://127.0.0.2:{port}", max_attempts=5, backoff=0.01) as conn:
            with pytest.raises(transport.ConnectionFailure, match="host name mismatch") as caught:
                conn.get_json("/v1/health")
        assert caught.value.permanent
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        listener.close()
        thread.join(timeout=10)


def test_site_run__start_and_stop_lines(federation, coordinator):
    result = _genofed("site", "run", "--config", str(federation.sites[0].config), "--once", "--max-idle", "0.2")
    assert result.returncode == 0, result.stderr
    start = next(line for line in result.stderr.splitlines() if line.startswith("genofed: site started:"))
    for part in ("site site-1", f"coordinator {federation.coordinator_url}", "dataset ", "certificate expires ",
                 "policy digest "):
        assert part in start
    assert "certificate expiring" in result.stderr  # provisioned for 2 days: within 30
    assert "stopped (idle)" in result.stdout
    result = _genofed("site", "run", "--config", str(federation.sites[0].config), "--once", "--max-idle", "0.2", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["site.started", "certificate.expiring", "site.stopped"]
    assert events[0]["coordinator"] == federation.coordinator_url and events[-1]["stopped"] == "idle"


def test_coordinator_serve__start_and_stop_lines(tmp_path):
    fed = provision(tmp_path / "fed", federation="linefed", sites=["site-1"], analysts=["alice"],
                    coordinator_port=free_port(), valid_days=2)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "coordinator", "serve", "--config", str(fed.coordinator.config), "--json"],
            stdout=handle, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
        )
    try:
        _wait_serving(process, fed.analysts[0].folder, fed.coordinator_url, log_path)
    finally:
        stop(process)
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    started = next(e for e in events if e["event"] == "coordinator.started")
    assert started["federation"] == "linefed" and started["url"] == fed.coordinator_url
    assert started["sites"] == 1 and started["analysts"] == 1 and started["certificate_expires"]
    assert started["database"].endswith(".db") or started["database"]
    assert any(e["event"] == "coordinator.stopped" and e["reason"] == "terminated" for e in events)


def test_coordinator_log__refused_handshake_of_expired_client_certificate(federation, coordinator, tmp_path):
    _, log_path = coordinator
    folder = _expired_site(federation, tmp_path)
    context = client_context(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    port = int(federation.coordinator_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            local_port = tls.getsockname()[1]
            tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert tls.recv(1) == b""
            except (ssl.SSLError, ConnectionResetError):
                pass
    line = f"TLS handshake from 127.0.0.1:{local_port} refused: certificate expired"
    _wait_for(lambda: line in log_path.read_text(), "the refused-handshake line")
    assert "WARNING" in next(x for x in log_path.read_text().splitlines() if line in x)


def test_refused_handshakes__rate_limited_per_peer_and_reason(caplog):
    now = [0.0]
    refusals = RefusedHandshakes(interval=60.0, clock=lambda: now[0])
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    expired.verify_code, expired.verify_message = 10, "certificate has expired"
    assert refusal_reason(expired) == "certificate expired"
    with caplog.at_level(logging.WARNING, logger="pipeline.federation.handshakes"):
        logged = [refusals.refused(("10.0.0.1", 1000 + i), expired) for i in range(50)]
        assert refusals.refused(("10.0.0.2", 5), expired)  # another peer: its own line
        now[0] = 61.0
        assert refusals.refused(("10.0.0.1", 2000), expired)
        assert not refusals.refused(("10.0.0.1", 2001), ConnectionResetError())  # a probe that hung up: no refusal
    assert logged == [True] + [False] * 49
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "TLS handshake from 10.0.0.1:1000 refused: certificate expired"
    assert lines[-1] == "TLS handshake from 10.0.0.1:2000 refused: certificate expired (49 more from 10.0.0.1 in the last 61 s)"
    assert len(lines) == 3
