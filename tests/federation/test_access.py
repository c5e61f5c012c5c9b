"""Who may call what, against the real server: strict job IDs, and each route's rule in ``api.ACCESS_RULES``.

Two analysts (``alice`` and ``mallory``), an operator (``olga``) and three sites;
alice's jobs invite ``alpha`` and ``beta`` but not ``gamma``. Every route is called by
the callers its rule admits (2xx) and by the others (403, or 404 for another analyst's
job, word for word the answer for a job that does not exist).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization

from pipeline.analyses.secure_sum import SECURE_SUM
from pipeline.federation import secagg_wire, wire
from pipeline.federation.api import ACCESS_RULES
from pipeline.federation.roster import load_roster
from pipeline.federation.rounds import PREFLIGHT_READY, PREFLIGHT_STAGE, round_config
from pipeline.federation.transport import Response
from pipeline.secagg.client import client_advance, client_init
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")
INVITED = ("alpha", "beta")
ANALYSTS = ("alice", "mallory")
OPERATORS = ("olga",)
SECRET = "alice-secret-study-7431"
REPORT = b"alice's report: nobody else reads this\n"
UNKNOWN = "job-20000101-000000-00000000"


class Federation:
    """The served federation, a connection per participant, and alice's done job."""

    def __init__(self, manifest: Any, server: rs.ThreadedCoordinator) -> None:
        self.manifest, self.server = manifest, server
        folders = {p.name: p.folder for p in (*manifest.sites, *manifest.analysts, *manifest.operators)}
        self.folders = folders
        self.connections = {name: rs.connection(folder, manifest.coordinator_url, max_attempts=1) for name, folder in folders.items()}
        self.done_job = ""

    def call(self, who: str, method: str, path: str, **kwargs: Any) -> Response:
        """One request as ``who``, without retries; the raw answer."""
        return self.connections[who].send(method, path, **kwargs)

    def submit(self, who: str = "alice", *, sites: tuple[str, ...] = INVITED, **spec: Any) -> str:
        body = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(sites),
                "stage_timeout": 3600, "description": SECRET if who == "alice" else "mallory's own", **spec}
        answer = self.call(who, "POST", "/v1/jobs", json={"spec": body})
        assert answer.status_code == 201, answer.text
        job_id = str(answer.json()["job_id"])
        for site in sites:  # past the pre-flight: the job waits in advertise_keys
            assert self.upload(site, job_id, PREFLIGHT_READY, stage=PREFLIGHT_STAGE).status_code == 201
        return job_id

    def advertise(self, job_id: str, site: str, participants: tuple[str, ...] = INVITED) -> bytes:
        """The AdvertiseKeys message ``site`` sends in round 0 of a secure_sum job of ``participants``."""
        state = self.call(site, "GET", f"/v1/site/jobs/{job_id}/rounds/0/state").json()
        layout = SECURE_SUM.layout(SECURE_SUM.state_from_json(state), 0)
        folder = self.folders[site]
        roster = load_roster(folder / "roster.json", folder / "ca.pem")
        config = round_config(federation="testfed", job_id=job_id, round_index=0, site_ids=range(1, len(participants) + 1),
                              threshold=2, layout=layout, spec={}, participants=list(participants), roster=roster)
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), password=None)
        client = client_init(config, participants.index(site) + 1, layout.encode({"vector": np.zeros(layout.size, np.int64)}),
                             randomness=b"\x01" * 32, identity_key=key)
        _, (message,) = client_advance(client, [])
        return secagg_wire.encode_message(message)

    def upload(self, who: str, job_id: str, body: bytes, *, stage: str = "advertise_keys") -> Response:
        return self.call(who, "PUT", f"/v1/site/jobs/{job_id}/rounds/0/stages/{stage}/messages/{who}-{job_id[-8:]}-{stage}",
                         content=body, headers={"content-type": wire.ARROW_MEDIA_TYPE})


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("access")
    datasets = rs.small_datasets(tmp, SITES, num_variants=8, num_samples=10, seed=7)
    manifest = rs.provision_federation(tmp / "fed", datasets, analysts=ANALYSTS, operators=OPERATORS)

    def write_report(result: Any, out_dir: Path) -> list[str]:
        (out_dir / "report.txt").write_bytes(REPORT)
        return ["report.txt"]

    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        federation = Federation(manifest, server)
        # secure_sum renders no file; for this job it renders one, through the coordinator's own path.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SECURE_SUM, "write_outputs", write_report)
            federation.done_job = federation.submit(sites=SITES, stage_timeout=60)
            with rs.agent_threads(manifest, max_idle=30):
                status = rs.wait_for_job(federation.connections["alice"], federation.done_job)
        assert status["status"] == "done", status
        try:
            yield federation
        finally:
            for connection in federation.connections.values():
                connection.close()


# --------------------------------------------------------------------------- strict job IDs

MALFORMED = [
    "job-1", "no-such-job", "JOB-20250101-120000-0a1b2c3d", "job-20250101-120000-0A1B2C3D", "job-20250101-120000-0a1b2c3d0",
    "job-20250101-120000-0a1b2c3d%0A", "job-20250101-120000-0a1b2c3d%00", "%2E%2E", "job-２０２５0101-120000-0a1b2c3d", "x" * 300,
]


def _with_job(path: str, job_id: str) -> str:
    return (path.replace("{job_id}", job_id).replace("{round_index}", "0").replace("{stage}", "advertise_keys")
            .replace("{message_id}", "alpha-msg-00000001").replace("{name}", "sum"))


JOB_ROUTES = [key for key in ACCESS_RULES if "{job_id}" in key[1]]


@pytest.mark.parametrize(("method", "path"), JOB_ROUTES, ids=[f"{m} {p}" for m, p in JOB_ROUTES])
def test_job_id__anything_but_a_job_id_is_422_before_the_store_is_read(fed, method, path, monkeypatch):
    asked: list[str] = []
    store = fed.server.coordinator.store
    lookup = store.job
    monkeypatch.setattr(store, "job", lambda job_id: asked.append(job_id) or lookup(job_id))
    who = "alpha" if path.startswith("/v1/site/") else "alice"
    for job_id in MALFORMED:
        answer = fed.call(who, method, _with_job(path, job_id), content=b"{}")
        assert answer.status_code == 422, (job_id, answer.status_code, answer.text)
        assert "is not a job ID: expected job-YYYYmmdd-HHMMSS-xxxxxxxx" in answer.json()["detail"]
    assert asked == []
    # The caller's role is checked first: a site asking an analyst's route is 403, whatever the ID.
    other = "alice" if who == "alpha" else "alpha"
    assert fed.call(other, method, _with_job(path, "no-such-job"), content=b"{}").status_code == 403
    # A well-formed ID that is no job: 404.
    assert fed.call(who, method, _with_job(path, UNKNOWN), content=b"{}").status_code == 404


# --------------------------------------------------------------------------- the access table, route by route

Outcome = dict[str, int]
"""Caller name -> HTTP status."""


def _statuses(callers: tuple[str, ...], request: Callable[[str], Response]) -> Outcome:
    return {who: request(who).status_code for who in callers}


EVERYONE = (*ANALYSTS, *OPERATORS, *SITES)


def _health(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses(EVERYONE, lambda who: fed.call(who, "GET", "/v1/health")), {}


def _openapi(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses(EVERYONE, lambda who: fed.call(who, "GET", "/openapi.json")), {}


def _submit(fed: Federation) -> tuple[Outcome, Outcome]:
    spec = {"spec": {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(INVITED), "stage_timeout": 3600}}
    return _statuses(ANALYSTS, lambda who: fed.call(who, "POST", "/v1/jobs", json=spec)), \
        _statuses((*OPERATORS, *SITES), lambda who: fed.call(who, "POST", "/v1/jobs", json=spec))


def _list(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses((*ANALYSTS, *OPERATORS), lambda who: fed.call(who, "GET", "/v1/jobs")), \
        _statuses(SITES, lambda who: fed.call(who, "GET", "/v1/jobs"))


def _owner_route(suffix: str) -> Callable[[Federation], tuple[Outcome, Outcome]]:
    def check(fed: Federation) -> tuple[Outcome, Outcome]:
        path = f"/v1/jobs/{fed.done_job}{suffix}"
        return _statuses(("alice", *OPERATORS), lambda who: fed.call(who, "GET", path)), \
            _statuses(("mallory", *SITES), lambda who: fed.call(who, "GET", path))

    return check


def _cancel(fed: Federation) -> tuple[Outcome, Outcome]:
    """Each allowed caller cancels a running job of alice's of its own (a cancelled job cannot be cancelled again)."""
    refused_job = fed.submit()
    refused = _statuses(("mallory", *SITES), lambda who: fed.call(who, "POST", f"/v1/jobs/{refused_job}/cancel"))
    allowed = _statuses(("alice", *OPERATORS), lambda who: fed.call(who, "POST", f"/v1/jobs/{fed.submit()}/cancel"))
    return allowed, refused


def _work(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses(SITES, lambda who: fed.call(who, "GET", "/v1/site/work?wait=0")), \
        _statuses((*ANALYSTS, *OPERATORS), lambda who: fed.call(who, "GET", "/v1/site/work?wait=0"))


_NOT_INVITED = ("gamma", *ANALYSTS, *OPERATORS)


def _state(fed: Federation) -> tuple[Outcome, Outcome]:
    job_id = fed.submit()
    path = f"/v1/site/jobs/{job_id}/rounds/0/state"
    return _statuses(INVITED, lambda who: fed.call(who, "GET", path)), _statuses(_NOT_INVITED, lambda who: fed.call(who, "GET", path))


def _message(fed: Federation) -> tuple[Outcome, Outcome]:
    job_id = fed.submit()
    for site in INVITED:  # both advertise: the stage closes and the server has a message for each
        assert fed.upload(site, job_id, fed.advertise(job_id, site)).status_code == 201
    stage = fed.call("alice", "GET", f"/v1/jobs/{job_id}").json()["stage"]
    path = f"/v1/site/jobs/{job_id}/rounds/0/stages/{stage}/message"
    return _statuses(INVITED, lambda who: fed.call(who, "GET", path)), _statuses(_NOT_INVITED, lambda who: fed.call(who, "GET", path))


def _upload(fed: Federation) -> tuple[Outcome, Outcome]:
    job_id = fed.submit()
    refused = _statuses(_NOT_INVITED, lambda who: fed.upload(who, job_id, fed.advertise(job_id, "alpha")))
    return _statuses(INVITED, lambda who: fed.upload(who, job_id, fed.advertise(job_id, who))), refused


def _decline(fed: Federation) -> tuple[Outcome, Outcome]:
    job_id = fed.submit()
    path = f"/v1/site/jobs/{job_id}/decline"
    refused = _statuses(_NOT_INVITED, lambda who: fed.call(who, "POST", path, json={"reason": "policy: not mine"}))
    return _statuses(("alpha",), lambda who: fed.call(who, "POST", path, json={"reason": "policy: no"})), refused


def _checkpoint(fed: Federation) -> tuple[Outcome, Outcome]:
    from pipeline.federation.checkpoints import sign_checkpoint
    from pipeline.federation.tls import load_identity_key

    def body(site: str) -> dict[str, Any]:
        key = load_identity_key(fed.folders[site] / "key.pem")
        return {"checkpoint": sign_checkpoint(key, federation="testfed", signer=site, role="site", entries=1,
                                              head="0f" * 32).to_fields()}

    allowed = _statuses(SITES, lambda who: fed.call(who, "POST", "/v1/site/checkpoint", json=body(who)))
    return allowed, _statuses((*ANALYSTS, *OPERATORS), lambda who: fed.call(who, "POST", "/v1/site/checkpoint", json=body("alpha")))


def _federation(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses(OPERATORS, lambda who: fed.call(who, "GET", "/v1/federation")), \
        _statuses((*ANALYSTS, *SITES), lambda who: fed.call(who, "GET", "/v1/federation"))


def _prune(fed: Federation) -> tuple[Outcome, Outcome]:
    body = {"older_than_seconds": 0, "dry_run": True}  # a dry run: the module's done job stays for the other checks
    return _statuses(OPERATORS, lambda who: fed.call(who, "POST", "/v1/federation/prune", json=body)), \
        _statuses((*ANALYSTS, *SITES), lambda who: fed.call(who, "POST", "/v1/federation/prune", json=body))


def _roster(fed: Federation) -> tuple[Outcome, Outcome]:
    return _statuses(EVERYONE, lambda who: fed.call(who, "GET", "/v1/roster")), {}


def _install_roster(fed: Federation) -> tuple[Outcome, Outcome]:
    roster = fed.server.config.roster.read_bytes()  # the roster in use again: unchanged, so the other checks keep it
    headers = {"content-type": "application/json"}
    return _statuses(OPERATORS, lambda who: fed.call(who, "PUT", "/v1/roster", content=roster, headers=headers)), \
        _statuses((*ANALYSTS, *SITES), lambda who: fed.call(who, "PUT", "/v1/roster", content=roster, headers=headers))


ROUTE_CHECKS: dict[tuple[str, str], tuple[Callable[[Federation], tuple[Outcome, Outcome]], int, Outcome]] = {
    ("GET", "/openapi.json"): (_openapi, 200, {}),
    ("GET", "/v1/health"): (_health, 200, {}),
    ("POST", "/v1/jobs"): (_submit, 201, {"olga": 403, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/jobs"): (_list, 200, {"alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/jobs/{job_id}"): (_owner_route(""), 200, {"mallory": 404, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/jobs/{job_id}/results"): (_owner_route("/results"), 200,
                                           {"mallory": 404, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/jobs/{job_id}/results/{name}"): (_owner_route("/results/sum"), 200,
                                                  {"mallory": 404, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/jobs/{job_id}/files/{name}"): (_owner_route("/files/report.txt"), 200,
                                                {"mallory": 404, "alpha": 403, "beta": 403, "gamma": 403}),
    ("POST", "/v1/jobs/{job_id}/cancel"): (_cancel, 200, {"mallory": 404, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/site/work"): (_work, 200, {"alice": 403, "mallory": 403, "olga": 403}),
    ("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/state"): (_state, 200, {"gamma": 403, "alice": 403, "mallory": 403, "olga": 403}),
    ("GET", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/message"): (
        _message, 200, {"gamma": 403, "alice": 403, "mallory": 403, "olga": 403}),
    ("PUT", "/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage}/messages/{message_id}"): (
        _upload, 201, {"gamma": 403, "alice": 403, "mallory": 403, "olga": 403}),
    ("POST", "/v1/site/jobs/{job_id}/decline"): (_decline, 200, {"gamma": 403, "alice": 403, "mallory": 403, "olga": 403}),
    ("POST", "/v1/site/checkpoint"): (_checkpoint, 200, {"alice": 403, "mallory": 403, "olga": 403}),
    ("GET", "/v1/roster"): (_roster, 200, {}),
    ("PUT", "/v1/roster"): (_install_roster, 200, {"alice": 403, "mallory": 403, "alpha": 403, "beta": 403, "gamma": 403}),
    ("GET", "/v1/federation"): (_federation, 200, {"alice": 403, "mallory": 403, "alpha": 403, "beta": 403, "gamma": 403}),
    ("POST", "/v1/federation/prune"): (_prune, 200, {"alice": 403, "mallory": 403, "alpha": 403, "beta": 403, "gamma": 403}),
}
"""The access table written again by hand: the check, the allowed callers' status, the others' statuses."""


def test_access_rules__every_route_is_checked_here():
    assert set(ROUTE_CHECKS) == set(ACCESS_RULES)


@pytest.mark.parametrize(("method", "path"), list(ROUTE_CHECKS), ids=[f"{m} {p}" for m, p in ROUTE_CHECKS])
def test_access_rules__the_allowed_caller_gets_2xx_and_every_other_a_403_or_404(fed, method, path):
    check, allowed_status, expected_refusals = ROUTE_CHECKS[(method, path)]
    allowed, refused = check(fed)
    assert allowed and set(allowed.values()) == {allowed_status}, allowed
    assert refused == expected_refusals


def test_access_rules__the_engine_refuses_a_site_that_is_not_invited_too(fed):
    """Behind the table, the engine checks participation itself (a second line)."""
    from pipeline.errors import IdentityError

    job_id = fed.submit()
    for call in (lambda: fed.server.coordinator.round_state("gamma", job_id, 0),
                 lambda: fed.server.coordinator.stage_message("gamma", job_id, 0, "advertise_keys"),
                 lambda: fed.server.coordinator.decline("gamma", job_id, "policy: no")):
        with pytest.raises(IdentityError, match="not a participant"):
            call()


# --------------------------------------------------------------------------- the attack


def test_attack__mallory_cannot_read_alices_job_status_spec_results_or_files(fed):
    alice_running = fed.submit()
    paths = [
        f"/v1/jobs/{job_id}{suffix}" for job_id in (fed.done_job, alice_running)
        for suffix in ("", "/results", "/results/sum", "/results/summary", "/files/report.txt", "/files/nope")
    ]
    for path in paths:
        answer = fed.call("mallory", "GET", path)
        assert answer.status_code == 404, (path, answer.status_code, answer.text)
        # Word for word what a job that does not exist gets: nothing says the job is there, or whose it is.
        job_id = path.split("/")[3]
        assert answer.json() == {"error": "NotFoundError", "detail": f"no job {job_id!r} at this coordinator"}
        for leak in (SECRET, "alice", "alpha", "report", "secure_sum"):
            assert leak not in answer.text, (path, leak)
    unknown = fed.call("mallory", "GET", f"/v1/jobs/{UNKNOWN}")
    assert unknown.json()["detail"] == f"no job {UNKNOWN!r} at this coordinator"
    # Nor through the sites' routes: an analyst's certificate is refused there.
    for path in (f"/v1/site/jobs/{alice_running}/rounds/0/state", "/v1/site/work?wait=0"):
        answer = fed.call("mallory", "GET", path)
        assert answer.status_code == 403 and SECRET not in answer.text
    # Alice still reads all of it, and mallory her own job; alice gets 404 for mallory's.
    status = fed.call("alice", "GET", f"/v1/jobs/{fed.done_job}").json()
    assert status["status"] == "done" and status["analyst"] == "alice"
    assert fed.call("alice", "GET", f"/v1/jobs/{fed.done_job}/files/report.txt").content == REPORT
    mallorys = fed.submit("mallory")
    assert fed.call("mallory", "GET", f"/v1/jobs/{mallorys}").json()["analyst"] == "mallory"
    assert fed.call("alice", "GET", f"/v1/jobs/{mallorys}").status_code == 404


def test_operator__lists_and_reads_every_job_while_an_analyst_lists_only_their_own(fed):
    mallorys = fed.submit("mallory")
    listed = {who: [job["job_id"] for job in fed.call(who, "GET", "/v1/jobs").json()["jobs"]] for who in ("alice", "mallory", "olga")}
    assert fed.done_job in listed["alice"] and mallorys not in listed["alice"]
    assert mallorys in listed["mallory"] and fed.done_job not in listed["mallory"]
    assert {fed.done_job, mallorys} <= set(listed["olga"])
    assert set(listed["olga"]) == set(listed["alice"]) | set(listed["mallory"])
    assert fed.call("olga", "GET", f"/v1/jobs/{mallorys}").json()["analyst"] == "mallory"
    assert fed.call("olga", "GET", f"/v1/jobs/{fed.done_job}/files/report.txt").content == REPORT


def test_operator__through_the_command_line(fed):
    from click.testing import CliRunner

    from pipeline.cli import main

    config = fed.folders["olga"] / "operator.toml"
    listed = CliRunner().invoke(main, ["job", "list", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    assert fed.done_job in listed.output and "alice" in listed.output
    status = CliRunner().invoke(main, ["job", "status", fed.done_job, "--config", str(config)])
    assert status.exit_code == 0 and "done" in status.output, status.output
    refused = CliRunner().invoke(main, ["job", "submit", "workflows/census.yaml", "--config", str(config)])
    assert refused.exit_code != 0 and "403" in refused.output, refused.output
