"""The site agent against a real coordinator: policy, dropouts, restarts, census end to end."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from pipeline.analyses.census import COUNT_FIELDS
from pipeline.analyses.secure_sum import deterministic_vector
from pipeline.federation import wire
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")
SIZES = {"alpha": 30, "beta": 20, "gamma": 4}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("agent")
    cohort = {}
    for i, name in enumerate(SITES):
        ids = rs.variant_ids(range(100 + 3 * i, 125 + 3 * i))
        calls = rs.random_genotypes(20 + i, len(ids), SIZES[name])
        cohort[name] = (ids, calls, rs.write_dataset(tmp / f"data-{name}", ids, calls))
    manifest = rs.provision_federation(tmp / "fed", {n: c[2] for n, c in cohort.items()}, min_samples=3)
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        yield manifest, server, cohort


def _run_job(manifest, spec: dict, **agent_options) -> tuple[dict, object]:
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=30, **agent_options):
            status = rs.wait_for_job(analyst, job_id)
        results = analyst.get_json(f"/v1/jobs/{job_id}/results") if status["status"] == "done" else None
        tables = {name: wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/{name}")) for name in (results or {}).get("tables", [])}
    return status, (results, tables)


def _sum_spec(**extra) -> dict:
    return {"analysis": "secure_sum", "vector": {"source": "test", "length": 20}, "stage_timeout": 3, "threshold": 2, **extra}


def _expected(names) -> np.ndarray:
    return sum(deterministic_vector(n, 20, "int") for n in names)


def test_agent__analysis_not_allowed_declines_and_the_others_finish(federation):
    manifest, _, _ = federation

    def forbid(config):
        if config.name != "beta":
            return config
        return dataclasses.replace(config, policy=dataclasses.replace(config.policy, allowed_analyses=("census",)))

    status, (results, tables) = _run_job(manifest, _sum_spec(), configure=forbid)
    assert status["status"] == "done", status
    assert status["declined"]["beta"] == "policy: the site's policy does not allow this job"
    assert "not in this site's allowed_analyses" in rs.decline_detail(manifest, "beta", status["job_id"])
    assert results["summary"]["num_sites"] == 2
    np.testing.assert_array_equal(tables["sum"].column("sum").to_numpy(), _expected(["alpha", "gamma"]))


def test_agent__fewer_samples_than_k_declines(federation):
    manifest, _, _ = federation

    def strict(config):
        return dataclasses.replace(config, policy=dataclasses.replace(config.policy, min_samples=10))

    status, (results, tables) = _run_job(manifest, _sum_spec(), configure=strict)
    assert status["status"] == "done", status
    assert list(status["declined"]) == ["gamma"] and status["declined"]["gamma"].startswith("too-few-samples: ")
    assert not any(ch.isdigit() for ch in status["declined"]["gamma"])  # no count of the site's reaches the analyst
    assert "min_samples 10" in rs.decline_detail(manifest, "gamma", status["job_id"])
    np.testing.assert_array_equal(tables["sum"].column("sum").to_numpy(), _expected(["alpha", "beta"]))


def test_agent__site_silent_after_sharing_keys_is_recovered_by_the_others(federation):
    manifest, _, _ = federation
    # gamma passes the pre-flight, advertises and shares its keys, then goes silent: the coordinator closes the
    # masked-input stage at its deadline and removes gamma's pairwise masks from the sum.
    status, (results, tables) = _run_job(manifest, _sum_spec(), stop_after={"gamma": 3})
    assert status["status"] == "done", status
    assert results["summary"]["num_sites"] == 2
    np.testing.assert_array_equal(tables["sum"].column("sum").to_numpy(), _expected(["alpha", "beta"]))


def test_agent__too_few_sites_left_fails_the_job_without_revealing(federation):
    manifest, _, _ = federation
    status, _ = _run_job(manifest, _sum_spec(threshold=3), stop_after={"gamma": 3})
    assert status["status"] == "failed"
    assert "fewer than the threshold 3" in status["error"]


def test_agent__restarted_site_continues_the_same_round_from_its_state_dir(federation):
    manifest, server, _ = federation
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": _sum_spec(stage_timeout=30)})["job_id"]
        with rs.agent_threads(manifest, max_idle=30, stop_after={"gamma": 2}) as agents:
            deadline = time.monotonic() + 20
            while agents["gamma"].tasks_done < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            state_dir = agents["gamma"].state_dir
            assert any(state_dir.glob("jobs/*/round-0/randomness.bin"))
            # A new agent process for gamma (same state_dir) picks the round up where it stopped.
            time.sleep(0.5)
            with rs.agent_threads(manifest, ["gamma"], max_idle=30):
                status = rs.wait_for_job(analyst, job_id)
        assert status["status"] == "done", status
        table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
    np.testing.assert_array_equal(table.column("sum").to_numpy(), _expected(SITES))
    assert not any(state_dir.glob("jobs/*/round-0/randomness.bin")), "round secrets must be deleted after the round"


def test_agent__census_through_the_server_equals_pooled_counts(federation):
    manifest, _, cohort = federation
    status, (results, tables) = _run_job(manifest, {"analysis": "census", "min_allele_count": 5, "stage_timeout": 20})
    assert status["status"] == "done", status
    table = tables["census_variants"].to_pydict()
    union = sorted(set().union(*(cohort[n][0] for n in SITES)))
    assert table["variant_id"] == union
    pooled = {name: [] for name in COUNT_FIELDS}
    for variant in table["variant_id"]:
        calls = np.concatenate([c[1][c[0].index(variant)] for c in cohort.values() if variant in c[0]])
        for name, value in zip(COUNT_FIELDS, (0, 1, 2, -1)):
            pooled[name].append(int((calls == value).sum()))
    for name in COUNT_FIELDS:
        got = [g if p else None for g, p in zip(table[name], table["publishable"])]
        want = [w if p else None for w, p in zip(pooled[name], table["publishable"])]
        assert got == want, name
    assert results["summary"]["num_samples"] == sum(SIZES.values())


def test_agent__an_idle_agent_stops_after_max_idle_not_after_a_whole_long_poll(federation):
    """No job for this site: each poll waits at most what is left of --max-idle, and the agent stops idle."""
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import load_site_config

    manifest, _, _ = federation
    agent = SiteAgent(load_site_config(manifest.sites[0].config))
    polls: list[str] = []
    real_get_json = agent.connection.get_json

    def recorded(path, *args, **kwargs):
        polls.append(path)
        return real_get_json(path, *args, **kwargs)

    agent.connection.get_json = recorded
    try:
        outcome = agent.run(once=True, max_idle=0.2)
    finally:
        agent.connection.close()
    assert outcome["stopped"] == "idle"
    waits = [float(path.split("wait=")[1].split("&")[0]) for path in polls if path.startswith("/v1/site/work")]
    assert waits and all(0.0 <= wait <= 0.2 for wait in waits), waits


def test_agent__a_stop_requested_during_a_task_finishes_that_task_then_stops(federation):
    """SIGTERM mid-task (``request_stop`` outside a wait): the step is sent, nothing more is asked for, nothing is lost."""
    manifest, _, _ = federation
    agent = SiteAgent(load_site_config(manifest.sites[0].config))
    handle = agent.handle

    def stopped_while_handling(task: dict) -> None:
        agent.request_stop("terminated")  # what the signal handler does; outside a wait it raises nothing
        handle(task)

    agent.handle = stopped_while_handling  # type: ignore[method-assign]
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": _sum_spec()})["job_id"]
        try:
            summary = agent.run(once=True, max_idle=30)
        finally:
            agent.connection.close()
        assert summary["stopped"] == "terminated" and summary["tasks"] == 1 and summary["jobs"] == [job_id]
        # A new agent of the same site resumes from its state folder, and the job sums all three sites.
        with rs.agent_threads(manifest, max_idle=30):
            status = rs.wait_for_job(analyst, job_id)
        assert status["status"] == "done", status
        table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
    np.testing.assert_array_equal(table.column("sum").to_numpy(), _expected(SITES))
