"""The coordinator's HTTPS server: identity, access rules, uploads, limits, end-to-end sums."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from pipeline.analyses.secure_sum import SECURE_SUM, deterministic_vector
from pipeline.federation import secagg_wire, wire
from pipeline.federation.roster import load_roster
from pipeline.federation.rounds import round_config
from pipeline.federation.transport import HttpError
from pipeline.secagg.client import client_advance, client_init
from pipeline.secagg.messages import AdvertiseKeys, PeerKeys
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("server")
    datasets = {
        name: rs.write_dataset(tmp / f"data-{name}", rs.variant_ids(range(100, 120)), rs.random_genotypes(i, 20, 30))
        for i, name in enumerate(SITES)
    }
    manifest = rs.provision_federation(tmp / "fed", datasets)
    coordinator_toml = manifest.coordinator.config
    text = coordinator_toml.read_text().replace("[coordinator]", "[coordinator]\nmax_message_bytes = 200000", 1)
    coordinator_toml.write_text(text)
    with rs.ThreadedCoordinator(coordinator_toml) as server:
        yield manifest, server


def _analyst(manifest, **kwargs):
    return rs.connection(manifest.analysts[0].folder, manifest.coordinator_url, **kwargs)


def _site(manifest, name: str, **kwargs):
    folder = next(s.folder for s in manifest.sites if s.name == name)
    return rs.connection(folder, manifest.coordinator_url, **kwargs)


def _submit(manifest, spec: dict) -> str:
    with _analyst(manifest) as analyst:
        return analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]


def test_secure_sum__three_sites_equals_plain_sum(federation):
    manifest, _ = federation
    for dtype in ("int", "float"):
        spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 50, "dtype": dtype}}
        job_id = _submit(manifest, spec)
        with rs.agent_threads(manifest, max_idle=30), _analyst(manifest) as analyst:
            status = rs.wait_for_job(analyst, job_id)
            assert status["status"] == "done", status
            table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
            summary = analyst.get_json(f"/v1/jobs/{job_id}/results")["summary"]
        expected = sum(deterministic_vector(name, 50, dtype) for name in SITES)
        got = np.asarray(table.column("sum").to_pylist())
        assert summary["num_sites"] == 3
        if dtype == "int":
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, atol=3 * 2.0**-32)


def test_openapi__served_and_lists_the_endpoints(federation):
    manifest, _ = federation
    with _analyst(manifest) as analyst:
        document = analyst.get_json("/openapi.json")
    assert document["openapi"].startswith("3.")
    assert "/v1/site/work" in document["paths"] and "/v1/jobs" in document["paths"]


def test_identity__site_certificate_cannot_call_analyst_endpoints(federation):
    manifest, _ = federation
    with _site(manifest, "alpha", max_attempts=1) as site:
        with pytest.raises(HttpError) as error:
            site.post_json("/v1/jobs", {"spec": {"analysis": "secure_sum"}})
    assert error.value.status == 403


def test_identity__analyst_certificate_cannot_poll_for_site_work(federation):
    manifest, _ = federation
    with _analyst(manifest, max_attempts=1) as analyst:
        with pytest.raises(HttpError) as error:
            analyst.get_json("/v1/site/work?wait=0")
    assert error.value.status == 403


def test_identity__client_without_certificate_is_refused(federation):
    manifest, _ = federation
    context = ssl.create_default_context(cafile=str(manifest.ca_cert))
    with httpx.Client(verify=context, timeout=5) as client, pytest.raises(httpx.TransportError):
        client.get(f"{manifest.coordinator_url}/v1/health")


def test_identity__certificate_from_another_ca_is_refused(federation, tmp_path: Path):
    manifest, _ = federation
    from pipeline.federation.provision import provision

    other = provision(tmp_path / "other", federation="testfed", sites=["alpha", "beta"], coordinator_port=1234)
    # Trust the real coordinator, but present a certificate the real CA never issued.
    folder = other.analysts[0].folder
    connection = rs.connection(folder, manifest.coordinator_url, max_attempts=1)
    connection.context = _context(folder, manifest.ca_cert)
    with connection, pytest.raises(Exception) as error:
        connection.get_json("/v1/health")
    assert not isinstance(error.value, HttpError)


def _context(folder: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def test_identity__expired_and_unenrolled_certificates(federation, tmp_path: Path):
    manifest, _ = federation
    from pipeline.federation.provision import issue_certificate

    ca_dir = manifest.path / "ca"
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    for name, kwargs, refused_in_handshake in (
        ("analyst", {"valid_days": 1, "not_before": long_ago}, True),
        ("mallory", {"valid_days": 1}, False),
    ):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        cert, key = issue_certificate(ca_dir, name, "analyst", **kwargs)
        (folder / "cert.pem").write_bytes(cert)
        (folder / "key.pem").write_bytes(key)
        with httpx.Client(verify=_context(folder, manifest.ca_cert), timeout=5) as client:
            if refused_in_handshake:
                with pytest.raises(httpx.TransportError):
                    client.get(f"{manifest.coordinator_url}/v1/health")
            else:
                assert client.get(f"{manifest.coordinator_url}/v1/jobs/x").status_code == 403


def _advertise(manifest, job_id: str, site_name: str, *, seed: bytes = b"\x01" * 32) -> bytes:
    """The AdvertiseKeys message ``site_name`` sends in round 0 of a secure_sum job."""
    with _site(manifest, site_name) as site:
        state = site.get_json(f"/v1/site/jobs/{job_id}/rounds/0/state")
    layout = SECURE_SUM.layout(SECURE_SUM.state_from_json(state), 0)
    folder = next(s.folder for s in manifest.sites if s.name == site_name)
    roster = load_roster(folder / "roster.json", folder / "ca.pem")
    config = round_config(federation="testfed", job_id=job_id, round_index=0, site_ids=[1, 2, 3], threshold=2,
                          layout=layout, spec={}, participants=list(SITES), roster=roster)
    site_id = SITES.index(site_name) + 1
    identity_key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
    client = client_init(config, site_id, layout.encode({"vector": np.zeros(layout.size, np.int64)}), randomness=seed,
                         identity_key=identity_key)
    _, (message,) = client_advance(client, [])
    return secagg_wire.encode_message(message)


def _put(manifest, site_name: str, job_id: str, body: bytes, *, message_id: str, round_index: int = 0, stage: str = "advertise_keys"):
    with _site(manifest, site_name, max_attempts=1) as site:
        return site.put_bytes(f"/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/messages/{message_id}", body)


def _pass_preflight(manifest, job_id: str) -> None:
    """Every site answers the job's pre-flight, so that round 0 proper (advertise_keys) opens."""
    for name in SITES:
        with _site(manifest, name, max_attempts=1) as site:
            site.put_bytes(*rs.preflight_upload(job_id, name))


def _status_of(call) -> int:
    with pytest.raises(HttpError) as error:
        call()
    return error.value.status


def test_upload__duplicate_is_idempotent_and_conflicts_are_refused(federation):
    manifest, _ = federation
    job_id = _submit(manifest, {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "stage_timeout": 60})
    _pass_preflight(manifest, job_id)
    body = _advertise(manifest, job_id, "alpha")
    assert _put(manifest, "alpha", job_id, body, message_id="alpha-adv-00001")["status"] == "accepted"
    assert _put(manifest, "alpha", job_id, body, message_id="alpha-adv-00001")["status"] == "duplicate"
    other = _advertise(manifest, job_id, "alpha", seed=b"\x02" * 32)
    # Same id, other bytes; and a replay under a new id: both 409.
    assert _status_of(lambda: _put(manifest, "alpha", job_id, other, message_id="alpha-adv-00001")) == 409
    assert _status_of(lambda: _put(manifest, "alpha", job_id, body, message_id="alpha-adv-00002")) == 409
    # Another round or stage: 409 naming what is expected.
    with pytest.raises(HttpError) as error:
        _put(manifest, "beta", job_id, _advertise(manifest, job_id, "beta"), message_id="beta-adv-000001", round_index=3)
    assert error.value.status == 409 and "expects round 0 stage advertise_keys" in error.value.detail
    assert _status_of(lambda: _put(manifest, "beta", job_id, body, message_id="beta-adv-000002", stage="masked_input")) == 409
    # Beta uploading alpha's message (wrong sender): 422.
    assert _status_of(lambda: _put(manifest, "beta", job_id, body, message_id="beta-adv-000003")) == 422
    with _analyst(manifest) as analyst:
        status = analyst.get_json(f"/v1/jobs/{job_id}")
    assert status["stage"] == "advertise_keys" and status["waiting_for"] == ["beta", "gamma"]


def test_upload__malformed_and_oversized_payloads_are_4xx_and_the_server_stays_up(federation):
    manifest, _ = federation
    job_id = _submit(manifest, {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "stage_timeout": 60})
    _pass_preflight(manifest, job_id)
    assert _status_of(lambda: _put(manifest, "gamma", job_id, b"not arrow at all", message_id="gamma-bad-0001")) == 422
    truncated = _advertise(manifest, job_id, "gamma")[:-40]
    assert _status_of(lambda: _put(manifest, "gamma", job_id, truncated, message_id="gamma-bad-0002")) == 422
    assert _status_of(lambda: _put(manifest, "gamma", job_id, b"\0" * 300_000, message_id="gamma-big-0001")) == 413
    assert _status_of(lambda: _put(manifest, "gamma", "job-20000101-000000-00000000", b"x", message_id="gamma-bad-0003")) == 404
    assert _status_of(lambda: _put(manifest, "gamma", "no-such-job", b"x", message_id="gamma-bad-0004")) == 422
    assert _status_of(lambda: _put(manifest, "gamma", job_id, b"x", message_id="bad id!")) in (404, 422)
    with _analyst(manifest, max_attempts=1) as analyst:
        assert _status_of(lambda: analyst.request("POST", "/v1/jobs", content=b"{not json", ok=(201,))) == 422
        assert _status_of(lambda: analyst.post_json("/v1/jobs", {"spec": {"analysis": "nope"}})) == 422
        weak = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "mask_prg": "mt19937"}
        with pytest.raises(HttpError, match="mask_prg") as refused:
            analyst.post_json("/v1/jobs", {"spec": weak})
        assert refused.value.status == 422
        assert analyst.get_json("/v1/health")["status"] == "ok"
    # The correct message is still accepted after the bad ones.
    assert _put(manifest, "gamma", job_id, _advertise(manifest, job_id, "gamma"), message_id="gamma-adv-0001")["status"] == "accepted"


def test_upload__forged_advertisement_for_another_site_is_refused(federation):
    manifest, _ = federation
    job_id = _submit(manifest, {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "stage_timeout": 60})
    _pass_preflight(manifest, job_id)
    forged = AdvertiseKeys(round_index=0, sender=2, receiver=0, keys=PeerKeys(1, b"\1" * 32, b"\2" * 32))
    assert _status_of(lambda: _put(manifest, "beta", job_id, secagg_wire.encode_message(forged), message_id="beta-forged-01")) == 422


def test_long_poll__wakes_on_the_engine_call_that_changed_it_not_at_its_next_check():
    """A stage that closes reaches the waiting sites in the same turn of the event loop, not after a polling interval."""
    import asyncio
    from types import SimpleNamespace

    from pipeline.federation.api import _Changes

    async def scenario() -> None:
        engine = SimpleNamespace(version=0)
        changes = _Changes(engine)  # type: ignore[arg-type]
        waiter = asyncio.ensure_future(changes.wait(3600.0))
        await asyncio.sleep(0)
        changes.notify()  # no change yet: the waiter sleeps on
        await asyncio.sleep(0)
        assert not waiter.done()
        engine.version += 1
        changes.notify()
        for _ in range(5):  # a few turns of the loop; no clock involved
            await asyncio.sleep(0)
        assert waiter.done()

    asyncio.run(scenario())
