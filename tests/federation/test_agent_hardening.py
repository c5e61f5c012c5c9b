"""The site agent against tasks no honest coordinator sends and against other sites: paths, message IDs, refusals."""

from __future__ import annotations

import time

import pytest

from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hardening")
    datasets = rs.small_datasets(tmp, SITES, num_variants=6, num_samples=8, seed=90)
    return rs.provision_federation(tmp / "fed", datasets, min_samples=3)


def _agent(manifest, name: str) -> SiteAgent:
    site = next(s for s in manifest.sites if s.name == name)
    return SiteAgent(load_site_config(site.config))


def _task(job_id: str, stage: str = "advertise_keys") -> dict:
    return {"job_id": job_id, "analysis": "secure_sum", "spec": {}, "round_index": 0, "stage": stage, "kind": "secagg",
            "site_id": 1, "site_ids": [1, 2, 3], "participants": list(SITES), "threshold": 2, "federation": "testfed",
            "has_message": False, "state_digest": ""}


@pytest.mark.parametrize("job_id", ["../../outside", "job-20261204-215343-b93f4f42/../../x", "/etc/passwd", "", None,
                                    "job-20261204-215343-B93F4F42", "job-20261204-215343-b93f4f42\n"])
def test_attack__a_job_id_that_is_not_one_is_refused_before_anything_is_written(manifest, job_id, tmp_path):
    agent = _agent(manifest, "alpha")
    try:
        before = sorted(p for p in agent.state_dir.parent.rglob("*"))
        with pytest.raises(ProtocolError, match="is not a job ID"):
            agent.handle(_task(job_id))
        assert sorted(p for p in agent.state_dir.parent.rglob("*")) == before
    finally:
        agent.connection.close()


def test_state_paths__stay_inside_the_state_folder(manifest):
    agent = _agent(manifest, "alpha")
    try:
        assert agent._inside("jobs", "job-20261204-215343-b93f4f42", "round-0").is_relative_to(agent.state_dir.resolve())
        for parts in (("jobs", "..", "..", "x"), ("..",), ("results", "/tmp/x"), ()):
            with pytest.raises(ProtocolError, match="outside the state folder"):
                agent._inside(*parts)
    finally:
        agent.connection.close()


def test_attack__another_site_cannot_predict_or_take_a_sites_message_id(manifest):
    """A site that knew beta's message ID could upload under it first and lock beta out of the round."""
    alpha, beta = _agent(manifest, "alpha"), _agent(manifest, "beta")
    try:
        task = _task("job-20261204-215343-b93f4f42", "keys")
        ids = {name: agent._message_id(task, "keys", agent._message_secret) for name, agent in (("alpha", alpha), ("beta", beta))}
        assert ids["alpha"] != ids["beta"]
        import hashlib

        guessable = hashlib.sha256(b"beta|job-20261204-215343-b93f4f42|0|keys").hexdigest()[:32]
        assert ids["beta"] != guessable  # not a function of public names alone
        restarted = _agent(manifest, "beta")  # the secret is kept: a restarted agent re-sends under the same ID
        try:
            assert restarted._message_id(task, "keys", restarted._message_secret) == ids["beta"]
        finally:
            restarted.connection.close()
    finally:
        alpha.connection.close()
        beta.connection.close()


def test_refused_uploads__back_off_exponentially_with_jitter_and_are_logged_once(manifest, caplog):
    agent = _agent(manifest, "alpha")
    try:
        task = _task("job-20261204-215343-b93f4f42", "masked_input")
        delays = []
        with caplog.at_level("WARNING", logger="pipeline.federation.agent"):
            for _ in range(6):
                now = time.monotonic()
                agent._refused(task, "message ID reused with other bytes")
                delays.append(agent._backoff[("job-20261204-215343-b93f4f42", 0, "masked_input")] - now)
        base = agent.config.poll_interval
        for count, delay in enumerate(delays):
            assert 0.5 * min(60.0, base * 2**count) <= delay <= min(60.0, base * 2**count) + 0.01
        assert sum("upload refused" in r.getMessage() for r in caplog.records) == 1  # the cause is said once
    finally:
        agent.connection.close()


def test_policy__an_edited_policy_is_taken_up_before_the_next_task_and_audited(manifest):
    site = next(s for s in manifest.sites if s.name == "gamma")
    original = site.config.read_text()
    agent = SiteAgent(load_site_config(site.config))
    try:
        assert agent.config.policy.min_samples == 3
        rs.set_policy(site.config, min_samples=50)
        agent.reload_policy_if_changed()
        assert agent.config.policy.min_samples == 50
        reloaded = [e for e in (site.folder / "audit.log").read_text().splitlines() if "policy.reloaded" in e]
        assert reloaded and "min_samples" in reloaded[-1]
        # A file that no longer loads, or that changes more than the policy, stops the agent.
        site.config.write_text(original.replace("[policy]", "[policy]\nmin_samples = 0\nmin_samples = 1"))
        with pytest.raises(ConfigurationError, match="no longer loads"):
            agent.reload_policy_if_changed()
        site.config.write_text(original.replace("poll_interval = ", "poll_interval = 1 #"))
        with pytest.raises(ConfigurationError, match="changed outside \\[policy\\]"):
            agent.reload_policy_if_changed()
    finally:
        site.config.write_text(original)
        agent.connection.close()


def test_attack__a_site_using_another_sites_message_id_cannot_lock_it_out(manifest, monkeypatch):
    """Every site uploads under the same message ID per stage, as if each had learned the others': the round completes."""
    import hashlib

    monkeypatch.setattr(SiteAgent, "_message_id", lambda self, task, stage, secret: hashlib.sha256(stage.encode()).hexdigest()[:32])
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 8}, "stage_timeout": 10}
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            with rs.agent_threads(manifest, max_idle=20):
                status = rs.wait_for_job(analyst, job_id, timeout=60)
        assert status["status"] == "done", status
        stored = server.coordinator.store.messages(job_id, 0, "advertise_keys")
        shared = hashlib.sha256(b"advertise_keys").hexdigest()[:32]
        assert sorted(m.message_id for m in stored) == sorted(f"{site}/{shared}" for site in SITES)


def test_start__the_agent_reads_its_dataset_before_any_job_and_names_it(manifest, caplog):
    agent = _agent(manifest, "alpha")
    try:
        with caplog.at_level("INFO", logger="pipeline.federation.agent"):
            assert agent.check_dataset()
        assert any("8 samples, 6 variants" in r.getMessage() for r in caplog.records)
    finally:
        agent.connection.close()


def test_start__an_unreadable_dataset_is_named_at_start_and_the_agent_keeps_running(manifest, caplog, tmp_path):
    import dataclasses
    import shutil

    site = next(s for s in manifest.sites if s.name == "beta")
    config = load_site_config(site.config)
    broken = tmp_path / "broken"
    shutil.copytree(config.dataset, broken)
    chunk = sorted((broken / "genotypes").iterdir())[0]
    chunk.write_bytes(chunk.read_bytes()[:40])  # a truncated Parquet file
    agent = SiteAgent(dataclasses.replace(config, dataset=broken))
    try:
        with caplog.at_level("WARNING", logger="pipeline.federation.agent"):
            assert not agent.check_dataset()
        warning = next(r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage())
        assert str(broken) in warning and "declined" in warning
    finally:
        agent.connection.close()
