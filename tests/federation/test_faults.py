"""Faults across processes: the coordinator killed (SIGKILL) mid-round and restarted."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.analyses.secure_sum import deterministic_vector
from pipeline.federation import wire
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")


def _wait_status(analyst, job_id: str, predicate, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = analyst.get_json(f"/v1/jobs/{job_id}")
        if predicate(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached the expected state: {status}")
        time.sleep(0.1)


def test_faults__coordinator_killed_mid_round_resumes_with_the_same_result(tmp_path):
    datasets = {
        name: rs.write_dataset(tmp_path / f"data-{name}", rs.variant_ids(range(100, 110)), rs.random_genotypes(i, 10, 12))
        for i, name in enumerate(SITES)
    }
    manifest = rs.provision_federation(tmp_path / "fed", datasets)
    config = manifest.coordinator.config
    log = tmp_path / "coordinator.log"
    process = rs.start_coordinator_process(config, log)
    try:
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url, max_attempts=30) as analyst:
            rs.wait_until_serving(analyst)
            spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 64}, "stage_timeout": 120}
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            with rs.agent_threads(manifest, ["alpha", "beta"], max_idle=90):
                # gamma advertises and shares keys, then stops: the job waits in masked_input
                # with alpha's and beta's masked vectors stored.
                with rs.agent_threads(manifest, ["gamma"], stop_after={"gamma": 2}):
                    before = _wait_status(analyst, job_id, lambda s: s.get("stage") == "masked_input" and s["waiting_for"] == ["gamma"])
                rs.kill(process)
                process = rs.start_coordinator_process(config, log)
                rs.wait_until_serving(analyst)
                after = analyst.get_json(f"/v1/jobs/{job_id}")
                assert (after["round"], after["stage"], after["waiting_for"]) == (before["round"], before["stage"], ["gamma"])
                # gamma comes back too (a new agent over its state_dir) and the round completes.
                with rs.agent_threads(manifest, ["gamma"], max_idle=90):
                    status = _wait_status(analyst, job_id, lambda s: s["status"] != "running", timeout=90)
            assert status["status"] == "done", (status, log.read_text()[-2000:])
            table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
            summary = analyst.get_json(f"/v1/jobs/{job_id}/results")["summary"]
    finally:
        rs.stop(process)
    assert summary["num_sites"] == 3
    expected = sum(deterministic_vector(name, 64, "int") for name in SITES)
    np.testing.assert_array_equal(table.column("sum").to_numpy(), expected)
    from pipeline.federation.audit import verify

    assert verify(manifest.coordinator.folder / "audit.log").ok
