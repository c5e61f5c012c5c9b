"""Faults across processes: the coordinator killed (SIGKILL) mid-round and restarted; a site agent process killed mid-round."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.analyses.secure_sum import deterministic_vector
from pipeline.federation import wire
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")
LENGTH = 10_000


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
            # 10^4 int64 values: masked vectors above the store's inline limit, so they are files.
            spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": LENGTH}, "stage_timeout": 120}
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            with rs.agent_threads(manifest, ["alpha", "beta"], max_idle=90):
                # gamma advertises and shares keys, then stops: the job waits in masked_input
                # with alpha's and beta's masked vectors stored.
                with rs.agent_threads(manifest, ["gamma"], stop_after={"gamma": 3}):
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
    expected = sum(deterministic_vector(name, LENGTH, "int") for name in SITES)
    np.testing.assert_array_equal(table.column("sum").to_numpy(), expected)
    from pipeline.federation.audit import verify

    assert verify(manifest.coordinator.folder / "audit.log").ok


# ---------------------------------------------------------------------------------------
# Restarts at every point of a census, in process: agents talk to the engine directly.


def _census_run(tmp_path, datasets, *, crash_after: int | None, crash_in_add_round: bool = False):
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.audit import AuditLog
    from pipeline.federation.config import SitePolicy
    from pipeline.federation.coordinator import Coordinator
    from pipeline.federation.store import Store

    names = sorted(datasets)
    database = tmp_path / "coordinator.db"

    def start():
        return Coordinator(Store(database), federation="testfed", sites=names, audit=AuditLog(tmp_path / "audit.log"))

    holder = {"coordinator": start()}
    policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True)
    configs = rs.in_process_site_configs(tmp_path, datasets, policy)
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in names}
    job_id = holder["coordinator"].submit({"analysis": "census", "min_allele_count": 0, "stage_timeout": 600}, "analyst")
    steps = 0
    while holder["coordinator"].status(job_id)["status"] == "running":
        progressed = False
        for name in names:
            task = holder["coordinator"].next_task(name)
            if task is None:
                continue
            if crash_in_add_round and task["round_index"] == 0 and task["stage"] == "keys" and name == names[-1]:
                # The coordinator dies while the last key upload closes round 0 and opens round 1:
                # the call's transaction never commits, and the site sends its keys again.
                crash_in_add_round = False
                store = holder["coordinator"].store
                original = store.add_round

                def crash(*args, **kwargs):
                    store.add_round = original
                    raise KeyboardInterrupt("simulated crash")

                store.add_round = crash
                with pytest.raises(KeyboardInterrupt):
                    agents[name].handle(task)
                holder["coordinator"] = start()
                progressed = True
                continue
            agents[name].handle(task)
            steps += 1
            progressed = True
            if crash_after is not None and steps == crash_after:
                holder["coordinator"] = start()  # a fresh engine over the same database
        assert progressed, holder["coordinator"].status(job_id)
    status = holder["coordinator"].status(job_id)
    assert status["status"] == "done", status
    from pipeline.federation import wire

    return wire.decode_table(holder["coordinator"].result_item(job_id, "census_variants", "table"))


@pytest.fixture(scope="module")
def census_data(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("census-restart")
    return {
        name: rs.write_dataset(tmp / name, rs.variant_ids(range(100 + 2 * i, 120 + 2 * i)), rs.random_genotypes(60 + i, 20, 15))
        for i, name in enumerate(SITES)
    }


def test_faults__census_restarted_at_every_step_gives_the_uninterrupted_result(census_data, tmp_path):
    reference = _census_run(tmp_path / "reference", census_data, crash_after=None)
    # 3 key uploads + 3 sites x 4 protocol stages = 15 steps; restart after each of them.
    for crash_after in range(1, 15):
        restarted = _census_run(tmp_path / f"crash-{crash_after}", census_data, crash_after=crash_after)
        assert restarted.equals(reference), crash_after


def test_faults__crash_between_rounds_reopens_the_next_round(census_data, tmp_path):
    reference = _census_run(tmp_path / "reference", census_data, crash_after=None)
    restarted = _census_run(tmp_path / "crash", census_data, crash_after=None, crash_in_add_round=True)
    assert restarted.equals(reference)


# ---------------------------------------------------------------------------------------
# A site agent process killed mid-round.


def _start_site(config_path, log_path):
    """``genofed site run`` as a child process that stays up between jobs (its own process group)."""
    import subprocess
    import sys

    handle = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "site", "run", "--config", str(config_path), "--max-idle", "120"],
        stdout=handle, stderr=subprocess.STDOUT, cwd=rs.REPO, start_new_session=True,
    )


def test_faults__site_process_killed_after_sharing_keys_survivors_sum_is_exact(tmp_path):
    import json
    import threading

    from pipeline.federation.audit import verify

    datasets = {
        name: rs.write_dataset(tmp_path / f"data-{name}", rs.variant_ids(range(100, 110)), rs.random_genotypes(i, 10, 12))
        for i, name in enumerate(SITES)
    }
    manifest = rs.provision_federation(tmp_path / "fed", datasets)
    configs = {site.name: site.config for site in manifest.sites}
    processes = {}
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server, \
            rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        try:
            processes = {name: _start_site(configs[name], tmp_path / f"{name}.log") for name in SITES}
            # A first job brings every agent up and polling (imports take seconds), so the
            # short stage deadline of the next job only ever closes the stage gamma misses.
            warm_up = analyst.post_json("/v1/jobs", {"spec": {"analysis": "secure_sum", "vector": {"source": "test", "length": 4},
                                                              "stage_timeout": 120}})["job_id"]
            assert rs.wait_for_job(analyst, warm_up, timeout=120)["status"] == "done"

            # gamma's agent is held back from its masked-input task (the engine answers its
            # poll with no task, once), so it is SIGKILLed deterministically after sending its
            # encrypted shares and before sending its masked vector.
            engine = server.coordinator
            next_task, held = engine.next_task, threading.Event()

            def hold_gamma(site: str):
                task = next_task(site)
                if site == "gamma" and task is not None and task["job_id"] != warm_up and task["stage"] == "masked_input":
                    held.set()
                    return None
                return task

            engine.next_task = hold_gamma
            spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": LENGTH}, "stage_timeout": 4, "threshold": 2}
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            assert held.wait(60), analyst.get_json(f"/v1/jobs/{job_id}")
            at_kill = analyst.get_json(f"/v1/jobs/{job_id}")
            assert (at_kill["status"], at_kill["round"], at_kill["stage"]) == ("running", 0, "masked_input"), at_kill
            assert "gamma" in at_kill["waiting_for"], at_kill
            rs.kill(processes["gamma"])
            status = rs.wait_for_job(analyst, job_id, timeout=90)
            assert status["status"] == "done", status
            table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
            summary = analyst.get_json(f"/v1/jobs/{job_id}/results")["summary"]
        finally:
            for process in processes.values():
                rs.stop(process)
    assert summary["num_sites"] == 2
    expected = sum(deterministic_vector(name, LENGTH, "int") for name in ("alpha", "beta"))
    np.testing.assert_array_equal(table.column("sum").to_numpy(), expected)
    lines = (manifest.coordinator.folder / "audit.log").read_text().splitlines()
    events = [(e["event"], e["fields"]) for e in map(json.loads, lines) if e["fields"].get("job_id") == job_id]
    assert verify(manifest.coordinator.folder / "audit.log").ok
    closed = [f for event, f in events if event == "stage.closed"]
    assert [(f["stage"], f["sites"]) for f in closed][:3] == [("preflight", list(SITES)), ("advertise_keys", list(SITES)),
                                                             ("share_keys", list(SITES))]
    assert ("masked_input", ["alpha", "beta"]) in [(f["stage"], f["sites"]) for f in closed]
    assert [f["sites"] for event, f in events if event == "round.summed"] == [["alpha", "beta"]]
