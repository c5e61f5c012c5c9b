"""The coordinator's resource limits: requests and body bytes in flight, per caller and in all.

Unit tests of :class:`~pipeline.federation.limits.RequestLimiter`, then the limits
through the real server on 127.0.0.1 (requests held open mid-body, so the counts are
reached by construction, not by timing), then a bounded load test: a site floods the
coordinator with large uploads while two honest sites finish a job, and the
coordinator's memory stays within the limits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.errors import ConfigurationError
from pipeline.federation import wire
from pipeline.federation.config import load_coordinator_config
from pipeline.federation.limits import Limits, Overloaded, RequestLimiter
from pipeline.federation.tls import client_context
from tests.federation import runtime_support as rs

MiB = 1 << 20


# --------------------------------------------------------------------------- the limiter alone


def test_limiter__requests_per_caller_and_in_all():
    limiter = RequestLimiter(Limits(max_concurrent_requests=3, max_requests_per_participant=2))
    with limiter.request("site:a"), limiter.request("site:a"):
        with pytest.raises(Overloaded, match="max_requests_per_participant"):
            with limiter.request("site:a"):
                pass
        with limiter.request("site:b"):
            with pytest.raises(Overloaded, match="max_concurrent_requests"):
                with limiter.request("site:c"):
                    pass
    assert limiter.requests == 0 and not limiter.requests_of and limiter.refused == 2
    with limiter.request("site:a"), limiter.request("site:a"):  # released: available again
        pass


def test_limiter__body_bytes_per_caller_and_in_all_released_with_the_request():
    limiter = RequestLimiter(Limits(max_bytes_in_flight=10, max_bytes_in_flight_per_participant=6))
    with limiter.request("site:a") as first, limiter.request("site:a") as second:
        first.reserve(4)
        with pytest.raises(Overloaded, match="max_bytes_in_flight_per_participant"):
            second.reserve(3)
        assert second.reserved == 0  # a refused reservation holds nothing
        second.reserve(2)
        with limiter.request("site:b") as other:
            other.reserve(4)
            with pytest.raises(Overloaded, match=r"max_bytes_in_flight\)"):
                other.reserve(1)
    assert limiter.bytes == 0 and not limiter.bytes_of


def test_limits__must_be_positive_and_consistent(tmp_path):
    with pytest.raises(ConfigurationError, match="max_concurrent_requests must be a positive integer"):
        Limits(max_concurrent_requests=0)
    with pytest.raises(ConfigurationError, match="cannot exceed"):
        Limits(max_bytes_in_flight=10, max_bytes_in_flight_per_participant=20)


# --------------------------------------------------------------------------- through the server

SITES = ("alpha", "beta", "gamma")


def _with_limits(config: Path, *, max_message_bytes: int, **limits: int) -> None:
    text = config.read_text().replace("[coordinator]\n", f"[coordinator]\nmax_message_bytes = {max_message_bytes}\n", 1)
    config.write_text(text + "\n[limits]\n" + "".join(f"{key} = {value}\n" for key, value in limits.items()))


def _client(folder: Path, url: str) -> httpx.Client:
    return httpx.Client(base_url=url, verify=client_context(folder / "cert.pem", folder / "key.pem", folder / "ca.pem"),
                        timeout=60)


def _wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, rs.ThreadedCoordinator, dict[str, httpx.Client]]]:
    tmp = tmp_path_factory.mktemp("limits")
    datasets = rs.small_datasets(tmp, SITES, num_variants=8, num_samples=10, seed=3)
    manifest = rs.provision_federation(tmp / "fed", datasets)
    _with_limits(manifest.coordinator.config, max_message_bytes=4 * MiB, max_requests_per_participant=2,
                 max_bytes_in_flight_per_participant=MiB, max_bytes_in_flight=3 * MiB)
    assert load_coordinator_config(manifest.coordinator.config).limits.max_requests_per_participant == 2
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        clients = {p.name: _client(p.folder, manifest.coordinator_url) for p in (*manifest.sites, *manifest.analysts)}
        try:
            yield manifest, server, clients
        finally:
            for client in clients.values():
                client.close()


def _submit(clients: dict[str, httpx.Client], sites: tuple[str, ...] = ("alpha", "beta")) -> str:
    spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(sites), "stage_timeout": 3600}
    answer = clients["analyst"].post("/v1/jobs", json={"spec": spec})
    assert answer.status_code == 201, answer.text
    job_id = str(answer.json()["job_id"])
    for site in sites:  # past the pre-flight: the job waits in advertise_keys
        path, body = rs.preflight_upload(job_id, site)
        assert clients[site].put(path, content=body).status_code == 201
    return job_id


def _upload_path(job_id: str, stage: str, message_id: str) -> str:
    return f"/v1/site/jobs/{job_id}/rounds/0/stages/{stage}/messages/{message_id}"


def test_upload__job_round_stage_and_sender_are_checked_before_a_body_is_read(served, monkeypatch):
    _manifest, server, clients = served
    job_id = _submit(clients)
    staged: list[int] = []
    store = server.coordinator.store
    stage_body = store.stage_body
    monkeypatch.setattr(store, "stage_body", lambda body, digest: staged.append(len(body)) or stage_body(body, digest))
    read: list[int] = []

    def counted(size: int) -> Iterator[bytes]:
        for _ in range(size // (64 * 1024)):
            read.append(1)
            yield b"\0" * (64 * 1024)

    headers = {"content-type": wire.ARROW_MEDIA_TYPE}
    refusals = [
        ("beta", _upload_path(job_id, "masked_input", "beta-wrong-stage-1"), 409, "expects round 0 stage advertise_keys"),
        ("alpha", f"/v1/site/jobs/{job_id}/rounds/3/stages/advertise_keys/messages/alpha-wrong-round", 409, "expects round 0"),
        ("gamma", _upload_path(job_id, "advertise_keys", "gamma-not-invited-1"), 403, "not a participant"),
        ("alpha", _upload_path("job-20000101-000000-00000000", "advertise_keys", "alpha-no-job-01"), 404, "no job"),
    ]
    for who, path, status, detail in refusals:
        answer = clients[who].put(path, content=counted(3 * MiB), headers=headers)
        # The client reads the refusal itself (the server drains what it does not keep), not a reset connection.
        assert answer.status_code == status, (path, answer.text)
        assert detail in answer.json()["detail"]
    assert staged == []
    assert server.app.limiter.bytes == 0  # nothing was reserved for the refused bodies


def test_limits__a_site_with_requests_held_open_gets_429_and_the_others_are_served(served):
    manifest, server, clients = served
    limiter = server.app.limiter
    job_id = _submit(clients)
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"\0" * 1024
        release.wait(30)
        yield b"\0" * 1024

    answers: list[int] = []
    held = [
        threading.Thread(target=lambda i=i: answers.append(clients_for_alpha[i].put(
            _upload_path(job_id, "advertise_keys", f"alpha-held-{i}-0000"), content=slow_body(),
            headers={"content-type": wire.ARROW_MEDIA_TYPE}).status_code))
        for i in range(2)
    ]
    clients_for_alpha = [_client(manifest.sites[0].folder, manifest.coordinator_url) for _ in range(2)]
    try:
        for thread in held:
            thread.start()
        _wait_for(lambda: limiter.requests_of.get("site:alpha") == 2, "two of alpha's uploads in progress")
        refused = clients["alpha"].get("/v1/health")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "max_requests_per_participant" in refused.json()["detail"]
        assert clients["beta"].get("/v1/health").status_code == 200  # another site is served meanwhile
    finally:
        release.set()
        for thread in held:
            thread.join(30)
        for client in clients_for_alpha:
            client.close()
    assert len(answers) == 2 and 429 not in answers
    assert clients["alpha"].get("/v1/health").status_code == 200  # the slots are free again


def test_limits__a_body_over_the_bytes_quota_is_429_and_over_the_message_limit_413(served):
    _manifest, server, clients = served
    job_id = _submit(clients)
    headers = {"content-type": wire.ARROW_MEDIA_TYPE}
    busy = clients["alpha"].put(_upload_path(job_id, "advertise_keys", "alpha-big-00001"), content=b"\0" * (2 * MiB), headers=headers)
    assert busy.status_code == 429 and "max_bytes_in_flight_per_participant" in busy.json()["detail"]
    too_large = clients["alpha"].put(_upload_path(job_id, "advertise_keys", "alpha-big-00002"), content=b"\0" * (5 * MiB), headers=headers)
    assert too_large.status_code == 413
    assert server.app.limiter.bytes == 0


# --------------------------------------------------------------------------- the load test


FLOOD = """
import json, pathlib, sys, threading
import httpx
from pipeline.federation.tls import client_context
folder, url, job_id, stop_file, report = sys.argv[1:]
folder, stop_file = pathlib.Path(folder), pathlib.Path(stop_file)
body, outcomes, lock = b"Z" * (4 << 20), {}, threading.Lock()
def flood(index):
    context = client_context(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")
    with httpx.Client(base_url=url, verify=context, timeout=60) as client:
        count = 0
        while not stop_file.exists():
            count += 1
            path = f"/v1/site/jobs/{job_id}/rounds/0/stages/advertise_keys/messages/gamma-flood-{index}-{count:06d}"
            try:
                outcome = str(client.put(path, content=body, headers={"content-type": "application/vnd.apache.arrow.stream"}).status_code)
            except httpx.TransportError as error:
                outcome = type(error).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                progress = pathlib.Path(report).with_name("flood-progress")
                progress.with_suffix(".tmp").write_text(str(sum(outcomes.values())))
                progress.with_suffix(".tmp").replace(progress)
threads = [threading.Thread(target=flood, args=(i,)) for i in range(32)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
pathlib.Path(report).write_text(json.dumps(outcomes))
"""
"""32 threads of gamma, each uploading 4 MiB bodies to the job's first stage until told to stop."""


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.network
def test_load__a_flooding_site_cannot_grow_the_coordinators_memory_and_honest_sites_finish(tmp_path):
    """32 concurrent 4 MiB uploads (128 MiB at once) from gamma while alpha and beta run a job.

    gamma is invited and still expected in the job's first stage, so its uploads pass every
    check and reach the body: without limits the coordinator buffers them all at once (it
    grew by over 400 MiB when this test ran without them); with them gamma holds at most 2
    requests and 8 MiB. Nothing here waits on time: gamma declines once the honest sites
    have sent and the flood was answered, and that closes the stage.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the coordinator's memory")
    datasets = rs.small_datasets(tmp_path, SITES, num_variants=8, num_samples=10, seed=5)
    manifest = rs.provision_federation(tmp_path / "fed", datasets)
    _with_limits(manifest.coordinator.config, max_message_bytes=4 * MiB, max_requests_per_participant=2,
                 max_bytes_in_flight_per_participant=8 * MiB, max_bytes_in_flight=16 * MiB)
    # glibc would otherwise raise its mmap threshold after the first large free and keep freed
    # bodies in its arenas: resident memory would then show the allocator's reserve, not what is held.
    process = rs.start_coordinator_process(manifest.coordinator.config, tmp_path / "coordinator.log",
                                           env={"MALLOC_MMAP_THRESHOLD_": str(256 * 1024)})
    folders = {p.name: p.folder for p in (*manifest.sites, *manifest.analysts)}
    analyst = rs.connection(folders["analyst"], manifest.coordinator_url)
    gamma = rs.connection(folders["gamma"], manifest.coordinator_url)
    spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(SITES), "threshold": 2,
            "stage_timeout": 3600}
    try:
        rs.wait_until_serving(analyst)
        # The same job without the flood: the coordinator's own allocations for a job are made.
        warm = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        gamma.post_json(f"/v1/site/jobs/{warm}/decline", {"reason": "policy: not now"})
        with rs.agent_threads(manifest, ["alpha", "beta"], max_idle=60):
            assert rs.wait_for_job(analyst, warm, timeout=180)["status"] == "done"
        baseline = _rss_bytes(process.pid)

        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        gamma.put_bytes(*rs.preflight_upload(job_id, "gamma"))  # its floods then reach advertise_keys' bodies
        stop_file, report = tmp_path / "stop-flood", tmp_path / "flood.json"
        # The flood runs in its own process, so that it competes with the honest sites for the
        # coordinator, not for this test process's interpreter lock.
        flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(folders["gamma"]), manifest.coordinator_url, job_id,
                                  str(stop_file), str(report)], cwd=rs.REPO)
        stop = threading.Event()
        peak = [baseline]

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_bytes(process.pid))
                stop.wait(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with rs.agent_threads(manifest, ["alpha", "beta"], max_idle=120):
                _wait_for(lambda: analyst.get_json(f"/v1/jobs/{job_id}").get("waiting_for") == ["gamma"],
                          "alpha and beta to advertise their keys", timeout=120)
                _wait_for(lambda: _flood_requests(tmp_path / "flood-progress") >= 200, "200 flooding uploads", timeout=120)
                stop_file.touch()
                assert flood.wait(60) == 0
                gamma.post_json(f"/v1/site/jobs/{job_id}/decline", {"reason": "policy: not now"})
                status = rs.wait_for_job(analyst, job_id, timeout=180)
        finally:
            stop_file.touch()
            stop.set()
            sampler.join(10)
            if flood.poll() is None:
                flood.kill()
        outcomes = json.loads(report.read_text())
        assert status["status"] == "done", status
        assert outcomes.get("429", 0) > 0 and outcomes.get("422", 0) > 0, outcomes  # refused for load, and read in full
        growth = peak[0] - baseline
        assert growth < 48 * MiB, f"coordinator memory grew by {growth / MiB:.0f} MiB under the flood ({outcomes})"
    finally:
        analyst.close()
        gamma.close()
        rs.stop(process)


def _flood_requests(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0
