"""A malicious coordinator against real site agents, over mutual TLS on 127.0.0.1.

The coordinator here is the real server with its engine bent the way an attacker who
runs it would bend it: it swaps a site's round keys in the directory it relays (man in
the middle), or tells the sites a threshold of 1, invents a Sybil participant,
switches the consistency round off, asks for masks from a PRG no site knows (such
as Flower's Mersenne Twister), or forges the survivor-list signatures it relays for
the unmasking. Each attack must fail to attack: the honest sites refuse before any
share of their secrets leaves them, write why in their own audit log, and decline the
job; the round never completes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.analyses.secure_sum import deterministic_vector
from pipeline.federation import coordinator as coordinator_module
from pipeline.federation import wire
from pipeline.secagg import keys
from pipeline.secagg.messages import KeyDirectory, Stage, UnmaskRequest
from pipeline.secagg.prg import PRGS
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma", "delta")
SPEC = {"analysis": "secure_sum", "vector": {"source": "test", "length": 12}, "stage_timeout": 5}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("malicious")
    datasets = rs.small_datasets(tmp, SITES, num_variants=10, num_samples=12, seed=40)
    # The sites' own defaults: a two-thirds threshold, the consistency round always on.
    manifest = rs.provision_federation(tmp / "fed", datasets, min_samples=3, threshold_rule="two_thirds")
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        yield manifest, server


def _run(manifest, server, spec=SPEC) -> tuple[str, dict]:
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=20):
            status = rs.wait_for_job(analyst, job_id, timeout=90)
    return job_id, status


def _shares_sent(server, job_id: str) -> list:
    return [m for m in server.coordinator.store.messages(job_id, 0, Stage.SHARE_KEYS.value)]


def test_honest_coordinator__the_round_completes_with_identities_bound(federation):
    manifest, server = federation
    job_id, status = _run(manifest, server)
    assert status["status"] == "done", status
    assert status["threshold"] == 3  # floor(2 * 4 / 3) + 1: the sites' default rule
    assert all(not any(e["event"] == "round.refused" for e in rs.audit_events(manifest, s, job_id)) for s in SITES)


@pytest.mark.parametrize("prg", PRGS)
def test_honest_coordinator__either_mask_prg_gives_the_exact_sum(federation, prg):
    manifest, server = federation
    job_id, status = _run(manifest, server, {**SPEC, "mask_prg": prg})
    assert status["status"] == "done", status
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        table = wire.decode_table(analyst.get_bytes(f"/v1/jobs/{job_id}/results/sum"))
    np.testing.assert_array_equal(table.column("sum").to_numpy(), sum(deterministic_vector(n, 12, "int") for n in SITES))


def test_attack__coordinator_swapping_a_sites_keys_is_refused_by_every_honest_site(federation, monkeypatch):
    manifest, server = federation
    impostor = {"encryption": keys.generate_key_pair(b"\x07" * 32), "masking": keys.generate_key_pair(b"\x08" * 32)}
    honest_advance = coordinator_module.server_advance

    def man_in_the_middle(state, messages):
        state, outgoing = honest_advance(state, messages)
        forged = []
        for message in outgoing:
            if isinstance(message, KeyDirectory):
                peers = tuple(dataclasses.replace(p, encryption_key=impostor["encryption"].public_key,
                                                  masking_key=impostor["masking"].public_key) if p.site == 2 else p
                              for p in message.peers)
                message = dataclasses.replace(message, peers=peers)
            forged.append(message)
        return state, forged

    monkeypatch.setattr(coordinator_module, "server_advance", man_in_the_middle)
    job_id, status = _run(manifest, server)
    assert status["status"] == "failed", status
    assert _shares_sent(server, job_id) == []  # no site sent a single encrypted share
    reasons = []
    for site in SITES:
        refused = [e for e in rs.audit_events(manifest, site, job_id) if e["event"] == "round.refused"]
        assert refused
        reasons.append(refused[0]["reason"])
    # Site 2 finds its own advertisement altered; every other site finds site 2's keys unsigned.
    assert sorted("own advertisement unchanged" in r for r in reasons) == [False] * (len(SITES) - 1) + [True]
    assert all(r.startswith("site 2 ") for r in reasons if "own advertisement unchanged" in r)
    assert all("site 2 are not signed by its certificate" in r for r in reasons if "own advertisement" not in r)
    assert set(status["declined"]) == set(SITES)


@pytest.mark.parametrize("attack, expected", [
    (lambda task: {**task, "threshold": 1}, "threshold 1 for 4 shareholders"),
    (lambda task: {**task, "participants": sorted([*task["participants"], "mallory"]),
                   "site_ids": [*task["site_ids"], len(task["site_ids"]) + 1]}, "['mallory'] that the federation roster"),
    (lambda task: {**task, "spec": {**task["spec"], "consistency_check": False}}, "skips the signed consistency check"),
    (lambda task: {**task, "spec": {**task["spec"], "mask_prg": "mt19937"}}, "masks from the mask PRG 'mt19937'"),
], ids=["threshold-1", "sybil-participant", "consistency-off", "weak-mask-prg"])
def test_attack__terms_the_coordinator_dictates_are_refused_by_the_sites(federation, monkeypatch, attack, expected):
    manifest, server = federation
    engine = server.coordinator
    honest_next_task = engine.next_task

    def dictate(site):
        task = honest_next_task(site)
        return None if task is None else attack(task)

    monkeypatch.setattr(engine, "next_task", dictate)
    job_id, status = _run(manifest, server)
    assert status["status"] == "failed", status
    assert server.coordinator.store.messages(job_id, 0, Stage.ADVERTISE_KEYS.value) == []  # nothing was sent at all
    assert set(status["declined"]) == set(SITES)
    assert all(reason.startswith("policy: ") for reason in status["declined"].values()), status["declined"]
    assert all(expected in rs.decline_detail(manifest, site, job_id) for site in SITES)


@pytest.mark.parametrize("forge, expected", [
    (lambda site, signatures: tuple((signer, signatures[(index + 1) % len(signatures)][1] if signer == site else signature)
                                    for index, (signer, signature) in enumerate(signatures)),
     "consistency signature of this site other than the one it sent"),
    (lambda site, signatures: tuple((signer, signature if signer == site else bytes(70)) for signer, signature in signatures),
     "invalid consistency signature from site"),
], ids=["own-signature-replaced", "only-own-signature-valid"])
def test_attack__coordinator_forging_survivor_list_signatures_gets_no_share_revealed(federation, monkeypatch, forge, expected):
    """A site takes its own survivor-list signature by comparison: a coordinator can neither swap it nor lean on it alone."""
    manifest, server = federation
    honest_advance = coordinator_module.server_advance

    def forged_unmask_requests(state, messages):
        state, outgoing = honest_advance(state, messages)
        return state, [dataclasses.replace(message, signatures=forge(message.receiver, message.signatures))
                       if isinstance(message, UnmaskRequest) and message.signatures else message for message in outgoing]

    monkeypatch.setattr(coordinator_module, "server_advance", forged_unmask_requests)
    job_id, status = _run(manifest, server)
    assert status["status"] == "failed", status
    assert server.coordinator.store.messages(job_id, 0, Stage.UNMASKING.value) == []  # no share of any secret revealed
    for site in SITES:  # each site says why in its own audit log, and declines the job
        refused = [e for e in rs.audit_events(manifest, site, job_id) if e["event"] == "round.refused"]
        assert [e["stage"] for e in refused] == [Stage.UNMASKING.value], refused
        assert "refuses the unmasking request" in refused[0]["reason"] and expected in refused[0]["reason"]
    assert set(status["declined"]) == set(SITES)
