"""SecAgg+ in a real federation: eight site agents, the real server, mutual TLS on 127.0.0.1.

The neighbour graph is drawn inside the round from every site's committed randomness;
a coordinator bent by an attacker tries to tamper with that randomness, to declare
survivors that split the graph (each part's sum would come out), and to run a round
again after it completed (the difference of two sums is one site's input). Each attack
must fail to attack: the honest sites refuse before revealing what the coordinator
needs, write why in their own audit log, and decline the job.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import pytest

from pipeline.analyses.secure_sum import deterministic_vector
from pipeline.federation import coordinator as coordinator_module
from pipeline.federation import wire
from pipeline.secagg.messages import GraphRandomness, Stage, SurvivorList
from pipeline.secagg.neighbours import is_connected
from pipeline.secagg.server import ServerConsistencyCheck
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = tuple(f"site{i}" for i in range(1, 9))
SPEC = {"analysis": "secure_sum", "vector": {"source": "test", "length": 16}, "stage_timeout": 5, "num_neighbours": 4}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("secagg-plus")
    datasets = rs.small_datasets(tmp, SITES, num_variants=6, num_samples=8, seed=60)
    # The sites' own defaults: two thirds of the k + 1 = 5 shareholders plus one, i.e. t = 4 = k.
    manifest = rs.provision_federation(tmp / "fed", datasets, min_samples=3, threshold_rule="two_thirds")
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        yield manifest, server


def _run(manifest, spec=SPEC, **agent_options) -> tuple[str, dict]:
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=20, **agent_options):
            status = rs.wait_for_job(analyst, job_id, timeout=90)
    return job_id, status


def _refusals(manifest, site: str, job_id: str) -> list[str]:
    return [e["reason"] for e in rs.audit_events(manifest, site, job_id) if e["event"] == "round.refused"]


def test_honest_secagg_plus_round__graph_drawn_in_the_round_and_the_sum_exact(federation):
    manifest, server = federation
    job_id, status = _run(manifest)
    assert status["status"] == "done", status
    assert status["threshold"] == 4
    store = server.coordinator.store
    # Every site revealed its graph randomness, after the directory, and masked with k = 4 neighbours only.
    assert sorted(m.site for m in store.messages(job_id, 0, Stage.CHOOSE_GRAPH.value)) == sorted(SITES)
    assert len(store.messages(job_id, 0, Stage.SHARE_KEYS.value)) == len(SITES)
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
    np.testing.assert_array_equal(table.column("sum").to_numpy(), sum(deterministic_vector(n, 16, "int") for n in SITES))
    assert all(not _refusals(manifest, site, job_id) for site in SITES)


def test_attack__coordinator_altering_a_sites_graph_randomness_is_refused(federation, monkeypatch):
    manifest, server = federation
    honest_advance = coordinator_module.server_advance

    def grind(state, messages):
        # The coordinator would like to choose the graph: it replaces site 3's randomness with its own.
        state, outgoing = honest_advance(state, messages)
        forged = [dataclasses.replace(m, reveals=tuple((s, bytes(32) if s == 3 else r) for s, r in m.reveals))
                  if isinstance(m, GraphRandomness) else m for m in outgoing]
        return state, forged

    monkeypatch.setattr(coordinator_module, "server_advance", grind)
    job_id, status = _run(manifest)
    assert status["status"] == "failed", status
    assert server.coordinator.store.messages(job_id, 0, Stage.SHARE_KEYS.value) == []  # not one share was sent
    for site in SITES:
        assert any("site 3's does not match the commitment" in reason for reason in _refusals(manifest, site, job_id))


def test_attack__survivors_that_split_the_graph_are_refused_before_any_share_is_revealed(federation, monkeypatch):
    manifest, server = federation
    honest_advance = coordinator_module.server_advance
    split: dict[str, list[int]] = {}

    def declare_a_split(state, messages):
        state, outgoing = honest_advance(state, messages)
        if not isinstance(state, ServerConsistencyCheck):
            return state, outgoing
        # Four survivors in two parts that share no edge: each part's sum would come out.
        for survivors in itertools.combinations(sorted(state.graph), 4):
            if not is_connected(state.graph, frozenset(survivors)):
                split["survivors"] = list(survivors)
                return state, [SurvivorList(m.round_index, m.sender, m.receiver, survivors)
                               for m in outgoing if m.receiver in survivors]
        raise AssertionError("no split of four survivors in this graph")

    monkeypatch.setattr(coordinator_module, "server_advance", declare_a_split)
    job_id, status = _run(manifest)
    assert status["status"] == "failed", status
    assert server.coordinator.store.messages(job_id, 0, Stage.CONSISTENCY_CHECK.value) == []  # nobody signed it
    assert server.coordinator.store.messages(job_id, 0, Stage.UNMASKING.value) == []  # nor revealed a share
    for party in split["survivors"]:
        site = SITES[party - 1]
        assert any("not connected in the round's neighbour graph" in r for r in _refusals(manifest, site, job_id)), site


def test_attack__a_completed_round_is_never_run_again(federation, monkeypatch):
    """Re-running a summed round over fewer sites would give one site's input by difference."""
    manifest, server = federation
    engine = server.coordinator
    honest_next_task = engine.next_task
    first_tasks: dict[str, dict] = {}

    def remember(site):
        task = honest_next_task(site)
        if task is not None and task["stage"] == Stage.ADVERTISE_KEYS.value:
            first_tasks.setdefault(site, task)
        return task

    monkeypatch.setattr(engine, "next_task", remember)
    job_id, status = _run(manifest)
    assert status["status"] == "done", status
    replayed: set[str] = set()

    def run_it_again(site):  # the same round again, as if anew, once per site
        if site in replayed:
            return None
        replayed.add(site)
        return first_tasks[site]

    monkeypatch.setattr(engine, "next_task", run_it_again)
    with rs.agent_threads(manifest, max_idle=30):
        deadline = time.monotonic() + 60
        while len(engine.store.declines(job_id)) < len(SITES) and time.monotonic() < deadline:
            time.sleep(0.05)
    declines = dict(engine.store.declines(job_id))
    assert set(declines) == set(SITES)
    for site in SITES:
        assert declines[site].startswith("policy: ")
        assert any("completed already" in r for r in _refusals(manifest, site, job_id))
    assert len(engine.store.messages(job_id, 0, Stage.ADVERTISE_KEYS.value)) == len(SITES)  # nothing more was sent
