"""Job IDs: one pattern, one checker, used by the coordinator's API, its engine and the site agent."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import NotFoundError, ProtocolError
from pipeline.federation.api import ACCESS_RULES, JobScope, openapi_document
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.job_spec import JOB_ID_PATTERN, check_job_id, new_job_id
from pipeline.federation.store import Store, StoredJob

GOOD = "job-20250101-120000-0a1b2c3d"
BAD = [
    "", "job", "job-1", "..", "../../etc/passwd", "job-20250101-120000-0a1b2c3d/../../x", "/etc/passwd",
    "JOB-20250101-120000-0a1b2c3d", "job-20250101-120000-0A1B2C3D", "job-20250101-120000-0a1b2c3",
    "job-20250101-120000-0a1b2c3d0", " job-20250101-120000-0a1b2c3d", "job-20250101-120000-0a1b2c3d\n",
    "job-20250101-120000-0a1b2c3d\x00", "job_20250101_120000_0a1b2c3d", "job-2025010-1120000-0a1b2c3d",
    "job-２０２５0101-120000-0a1b2c3d", "job-20250101-120000-0a1b2c3g", "x" * 10_000,
]


def naive_is_job_id(value: object) -> bool:
    """The job ID format read character by character: the reference for :func:`check_job_id`."""
    if not isinstance(value, str) or len(value) != 28:
        return False
    digits, hexdigits = "0123456789", "0123456789abcdef"
    shape = "job-" + "d" * 8 + "-" + "d" * 6 + "-" + "h" * 8
    for char, kind in zip(value, shape):
        if kind == "d" and char not in digits:
            return False
        if kind == "h" and char not in hexdigits:
            return False
        if kind not in "dh" and char != kind:
            return False
    return True


def _accepted(value: object) -> bool:
    try:
        return check_job_id(value) == value
    except ProtocolError:
        return False


def test_check_job_id__accepts_the_ids_the_coordinator_makes():
    for now in (0.0, 1.7e9, 4.1e9):
        job_id = new_job_id(now)
        assert check_job_id(job_id) == job_id and naive_is_job_id(job_id)
    assert check_job_id(GOOD) == GOOD


@pytest.mark.parametrize("value", [*BAD, None, 7, b"job-20250101-120000-0a1b2c3d", ["job-20250101-120000-0a1b2c3d"]],
                         ids=repr)
def test_check_job_id__refuses_everything_else_with_the_expected_form(value):
    with pytest.raises(ProtocolError, match="is not a job ID: expected job-YYYYmmdd-HHMMSS-xxxxxxxx") as error:
        check_job_id(value)
    assert len(str(error.value)) < 300  # a long value is cut, not echoed


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet=string.digits + "abcdefABCDEF-jobx/.\n\x00٣", min_size=24, max_size=32),
    st.builds(lambda date, time, token: f"job-{date}-{time}-{token}",
              st.text(alphabet=string.digits + "a", min_size=7, max_size=9),
              st.text(alphabet=string.digits + "-", min_size=5, max_size=7),
              st.text(alphabet=string.hexdigits + "g", min_size=7, max_size=9)),
))
def test_check_job_id__agrees_with_the_naive_reference(value):
    assert _accepted(value) == naive_is_job_id(value)


def test_openapi__every_job_id_parameter_carries_the_pattern_and_every_route_its_rule():
    document = openapi_document()
    described = {(method.upper(), path): operation for path, item in document["paths"].items() for method, operation in item.items()}
    assert set(described) == set(ACCESS_RULES) - {("GET", "/openapi.json")}
    for key, operation in described.items():
        rule = ACCESS_RULES[key]
        assert rule.rule in operation["description"], key
        job_ids = [p for p in operation.get("parameters", []) if p["name"] == "job_id"]
        assert bool(job_ids) == ("{job_id}" in key[1]) == (rule.job is not JobScope.NONE), key
        for parameter in job_ids:
            assert parameter["schema"] == {"type": "string", "pattern": JOB_ID_PATTERN}
            assert "422" in operation["responses"], key
        if rule.job is JobScope.OWNER:
            assert "another analyst" in operation["responses"]["404"]["description"], key
    assert re.fullmatch(JOB_ID_PATTERN, GOOD)  # the same text serves Python and the OpenAPI pattern (ECMA-262)


class _Store(Store):
    """A real store holding one job of ``alice``; it records every job ID it is asked for."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.asked: list[str] = []
        self.add_job(StoredJob(GOOD, "secure_sum", {}, "alice", ("alpha", "beta"), 2, "done", None, 0.0, 1.0))

    def job(self, job_id: str) -> StoredJob | None:
        self.asked.append(job_id)
        return super().job(job_id)


def test_coordinator__refuses_a_job_id_that_is_not_one_before_reading_the_store(tmp_path):
    store = _Store(tmp_path / "coordinator.db")
    engine = Coordinator(store, federation="testfed", sites=("alpha", "beta"))
    for value in BAD:
        for call in (lambda: engine.job(value), lambda: engine.status(value), lambda: engine.results(value),
                     lambda: engine.result_item(value, "sum", "table"), lambda: engine.round_state("alpha", value, 0),
                     lambda: engine.decline("alpha", value, "policy: no"), lambda: engine.cancel(value, by="alice")):
            with pytest.raises(ProtocolError, match="is not a job ID"):
                call()
    assert store.asked == []


def test_coordinator__another_analysts_job_is_answered_as_an_unknown_one(tmp_path):
    engine = Coordinator(_Store(tmp_path / "coordinator.db"), federation="testfed", sites=("alpha", "beta"))
    assert engine.job(GOOD, analyst="alice").analyst == "alice"
    assert engine.job(GOOD).analyst == "alice"
    with pytest.raises(NotFoundError) as foreign:
        engine.job(GOOD, analyst="mallory")
    unknown_id = "job-20000101-000000-00000000"
    with pytest.raises(NotFoundError) as unknown:
        engine.job(unknown_id, analyst="mallory")
    assert str(foreign.value).replace(GOOD, "ID") == str(unknown.value).replace(unknown_id, "ID")
    assert "alice" not in str(foreign.value)


def test_analyst_client__refuses_a_job_id_that_is_not_one_before_connecting(tmp_path):
    from pipeline.federation.analyst import (
        cancel_job,
        job_status,
        wait_for_job,
        wait_job,
    )
    from pipeline.federation.analyst_results import download_results, fetch_results

    class _Unreachable:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the client used its connection ({name}) for a job ID that is not one")

    for value in ("../../v1/site/work", "job-20250101-120000-0a1b2c3d/../x", "job-1"):
        with pytest.raises(ProtocolError, match="is not a job ID"):
            job_status(tmp_path / "no-analyst.toml", value)  # refused before the configuration is even read
        for command in (cancel_job, wait_job):
            with pytest.raises(ProtocolError, match="is not a job ID"):
                command(tmp_path / "no-analyst.toml", value)
        with pytest.raises(ProtocolError, match="is not a job ID"):
            fetch_results(tmp_path / "no-analyst.toml", value, tmp_path / "results")
        with pytest.raises(ProtocolError, match="is not a job ID"):
            wait_for_job(_Unreachable(), value, timeout=1)  # type: ignore[arg-type]
        with pytest.raises(ProtocolError, match="is not a job ID"):
            download_results(_Unreachable(), value, tmp_path / "results")  # type: ignore[arg-type]
    assert not (tmp_path / "results").exists()
