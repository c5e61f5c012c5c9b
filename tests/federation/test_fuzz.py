"""Fuzzing the coordinator's API from its own OpenAPI description (schemathesis).

The real server (uvicorn, mutual TLS) runs on 127.0.0.1; schemathesis reads the
/openapi.json it serves and, for every operation, sends a bounded number of generated
requests through a requests session carrying a client certificate of the role the
operation is for. No answer may be a 5xx: malformed input must be refused with a 4xx.
A running job exists, and half of the generated requests use its ID (and its current
round and stage), so the handlers behind the job lookup, and the message decoding, are
reached too. Examples are derandomized (reproducible).
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from pipeline.federation.api import openapi_document  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402

pytestmark = pytest.mark.network

# Protocol messages are Arrow IPC streams: generated bodies are sent as raw bytes.
schemathesis.serializer.alias("application/vnd.apache.arrow.stream", "application/octet-stream")

SITES = ("alpha", "beta", "gamma")
MAX_EXAMPLES = 25
OPERATIONS = [(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    datasets = {
        name: rs.write_dataset(tmp / f"data-{name}", rs.variant_ids(range(100, 110)), rs.random_genotypes(i, 10, 12))
        for i, name in enumerate(SITES)
    }
    manifest = rs.provision_federation(tmp / "fed", datasets)
    sessions = {}
    folders = [("analyst", manifest.analysts[0].folder), ("site", manifest.sites[0].folder),
               *((f"site:{site.name}", site.folder) for site in manifest.sites)]
    for role, folder in folders:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the federation CA
        session.cert = (str(folder / "cert.pem"), str(folder / "key.pem"))
        session.verify = str(folder / "ca.pem")
        sessions[role] = session
    with rs.ThreadedCoordinator(manifest.coordinator.config):
        url = manifest.coordinator_url
        answer = sessions["analyst"].post(f"{url}/v1/jobs", json={"spec": {
            "analysis": "secure_sum", "vector": {"source": "test", "length": 16}, "stage_timeout": 3600}}, timeout=30)
        assert answer.status_code == 201, answer.text
        _pass_preflight(sessions, url, answer.json()["job_id"])
        document = sessions["site"].get(f"{url}/openapi.json", timeout=30).json()
        yield schemathesis.openapi.from_dict(document), sessions, url, answer.json()["job_id"]
    for session in sessions.values():
        session.close()


def _pass_preflight(sessions: dict, url: str, job_id: str) -> None:
    """Every site answers the job's pre-flight: the job waits in advertise_keys, where uploads reach decoding."""
    for name in SITES:
        path, body = rs.preflight_upload(job_id, name)
        assert sessions[f"site:{name}"].put(url + path, data=body, timeout=30).status_code == 201


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz__no_operation_answers_5xx(served, method, path):
    schema, sessions, url, job_id = served
    operation = schema[path][method]
    session = sessions["site" if path.startswith("/v1/site/") else "analyst"]

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(), use_running_job=st.booleans())
    def check(case, use_running_job: bool) -> None:
        if use_running_job and case.path_parameters and "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = job_id
            if "stage" in case.path_parameters:  # the job's current stage: uploads reach decoding
                case.path_parameters.update(round_index=0, stage="advertise_keys")
        if case.query and "wait" in case.query:
            case.query["wait"] = min(float(case.query["wait"]), 0.1)  # a long poll would only slow the run
        # Passed explicitly: schemathesis' own transport settings would replace the session's.
        response = case.call(base_url=url, session=session, timeout=60, verify=session.verify, cert=session.cert)
        case.validate_response(response, checks=[not_a_server_error])

    check()


def test_fuzz__served_description_is_the_documented_one(served):
    schema, sessions, url, _ = served
    assert sessions["analyst"].get(f"{url}/openapi.json", timeout=30).json() == openapi_document()
    assert {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
def test_fuzz__deeply_nested_json_is_a_4xx(served, depth):
    """json.loads raises RecursionError (not a decode error) past ~1000 levels: found by fuzzing."""
    _, sessions, url, job_id = served
    nested = "[" * depth + "]" * depth
    for role, path in (("analyst", "/v1/jobs"), ("site", f"/v1/site/jobs/{job_id}/decline")):
        for body in (nested, '{"spec": {"analysis": "census", "x": ' + nested + "}}", '{"reason": ' + nested + "}"):
            answer = sessions[role].post(url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
            assert 400 <= answer.status_code < 500, (role, path, depth, answer.status_code, answer.text[:300])


def test_fuzz__deeply_nested_message_header_is_a_4xx(served):
    import pyarrow as pa

    from pipeline.federation import secagg_wire, wire

    _, sessions, url, _ = served
    answer = sessions["analyst"].post(f"{url}/v1/jobs", json={"spec": {
        "analysis": "secure_sum", "vector": {"source": "test", "length": 16}, "stage_timeout": 3600}}, timeout=30)
    job_id = answer.json()["job_id"]  # a fresh job: the fuzzing above may have declined the other one
    _pass_preflight(sessions, url, job_id)
    table = pa.table({"_": pa.array([], pa.int8())}).replace_schema_metadata({secagg_wire.HEADER_KEY: "[" * 5000 + "]" * 5000})
    path = f"{url}/v1/site/jobs/{job_id}/rounds/0/stages/advertise_keys/messages/deep-header-0001"
    answer = sessions["site"].put(path, data=wire.encode_table(table), headers={"content-type": wire.ARROW_MEDIA_TYPE}, timeout=60)
    assert answer.status_code == 422, answer.text[:300]
    assert sessions["site"].get(f"{url}/v1/health", timeout=30).status_code == 200
