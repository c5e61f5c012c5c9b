"""Changing a provisioned federation: add-site, renew and revoke with the existing CA, honoured by the
coordinator (``PUT /v1/roster``) and by the sites, which verify every roster they are handed.

The coordinator is the real mTLS server on 127.0.0.1; the malicious coordinator of the
unit tests is a connection that serves the roster an attacker chose to the real agent.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from pipeline.cli import main
from pipeline.errors import ConfigurationError, IdentityError, PolicyRefusal
from pipeline.federation import transport
from pipeline.federation.agent import SiteAgent, check_round_terms
from pipeline.federation.config import load_coordinator_config, load_site_config
from pipeline.federation.provision import (
    add_participant,
    make_ca,
    provision,
    push_roster,
    renew,
    revoke,
)
from pipeline.federation.roster import (
    check_enrolment,
    install_roster,
    load_roster,
    make_roster,
)
from pipeline.federation.tls import authorize, peer_identity
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")


def _federation(tmp_path: Path, sites=SITES, **kwargs):
    return provision(tmp_path / "fed", federation="testfed", sites=sites, analysts=("analyst",), operators=("ops",),
                     coordinator_port=rs.free_port(), valid_days=2, **kwargs)


def _signed(path: Path) -> dict:
    return json.loads(path.read_text())


class ServedRoster:
    """A coordinator's connection that answers ``GET /v1/roster`` with whatever roster it was given."""

    def __init__(self, roster: object) -> None:
        self.roster = roster
        self.fetches = 0

    def get_json(self, path: str, **_: object) -> object:
        assert path == "/v1/roster", path
        self.fetches += 1
        return self.roster

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- the operator's files


def test_add_site__existing_ca_signs_roster_version_2_and_coordinator_enrols_it(tmp_path):
    manifest = _federation(tmp_path)
    ca_before = (manifest.path / "ca" / "ca.pem").read_bytes(), (manifest.path / "ca.pem").read_bytes()

    change = add_participant(manifest.path, "delta", share_variant_keys=True)

    assert (change.action, change.role, change.previous_version, change.version) == ("added", "site", 1, 2)
    assert ((manifest.path / "ca" / "ca.pem").read_bytes(), (manifest.path / "ca.pem").read_bytes()) == ca_before
    assert (change.participant.folder / "ca.pem").read_bytes() == ca_before[1]
    roster = load_roster(manifest.roster, manifest.ca_cert)
    assert roster.version == 2 and roster.sites == ("alpha", "beta", "delta", "gamma")
    for folder in (manifest.coordinator.folder, *(s.folder for s in manifest.sites), change.participant.folder):
        assert load_roster(folder / "roster.json", manifest.ca_cert) == roster
    config = load_coordinator_config(manifest.coordinator.config, env={})
    assert config.sites == ("alpha", "beta", "gamma", "delta")
    assert config.fingerprints["delta"] == change.participant.fingerprint
    check_enrolment(config, roster)
    site = load_site_config(change.participant.config, env={})
    assert site.name == "delta" and site.coordinator_url == manifest.coordinator_url and site.policy.share_variant_keys
    assert oct(change.participant.key.stat().st_mode & 0o777) == "0o600"

    with pytest.raises(ConfigurationError, match="already in the federation roster"):
        add_participant(manifest.path, "delta")
    analyst = add_participant(manifest.path, "carol", role="analyst")
    assert analyst.version == 3 and (analyst.participant.folder / "analyst.toml").is_file()
    assert load_coordinator_config(manifest.coordinator.config, env={}).analysts == ("analyst", "carol")


def test_renew_and_revoke__roster_lists_only_the_new_certificate_and_drops_the_revoked(tmp_path):
    manifest = _federation(tmp_path)
    old = manifest.sites[0]

    renewed = renew(manifest.path, "alpha", valid_days=1)
    assert renewed.participant.fingerprint != old.fingerprint and renewed.version == 2
    roster = load_roster(manifest.roster, manifest.ca_cert)
    assert roster.entry("alpha", "site").fingerprint == renewed.participant.fingerprint
    assert peer_identity(old.cert.read_bytes()).fingerprint == renewed.participant.fingerprint  # replaced in its folder
    assert load_coordinator_config(manifest.coordinator.config, env={}).fingerprints["alpha"] == renewed.participant.fingerprint

    revoked = revoke(manifest.path, "beta")
    roster = load_roster(manifest.roster, manifest.ca_cert)
    assert revoked.version == 3 and roster.sites == ("alpha", "gamma")
    assert manifest.sites[1].folder not in revoked.copies
    assert load_roster(manifest.sites[1].folder / "roster.json", manifest.ca_cert).version == 2  # left as it was
    config = load_coordinator_config(manifest.coordinator.config, env={})
    assert config.sites == ("alpha", "gamma") and "beta" not in config.fingerprints
    check_enrolment(config, roster)  # the coordinator restarts on the operator's files

    with pytest.raises(ConfigurationError, match="cannot be revoked"):
        revoke(manifest.path, "coordinator")
    with pytest.raises(ConfigurationError, match="'beta' is not in the federation roster"):
        revoke(manifest.path, "beta")


def test_cli_provision__operator_commands_text_json_and_errors(tmp_path):
    manifest = _federation(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["provision", "add-site", "delta", "--dir", str(manifest.path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["action"], summary["version"], summary["participant"]["name"]) == ("added", 2, "delta")

    result = runner.invoke(main, ["provision", "renew", "gamma", "--dir", str(manifest.path)])
    assert result.exit_code == 0, result.output
    assert "renewed site gamma in federation testfed: roster version 3 (was 2)" in result.output
    assert "push-roster" in result.output

    result = runner.invoke(main, ["provision", "revoke", "nobody", "--dir", str(manifest.path)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1 and "not in the federation roster" in result.output
    result = runner.invoke(main, ["provision", "--site", "x", "revoke", "beta", "--dir", str(manifest.path)])
    assert result.exit_code == 2
    result = runner.invoke(main, ["provision", "revoke", "--help"])
    assert result.exit_code == 0 and "genofed provision revoke site-2 --dir" in result.output


# --------------------------------------------------------------------------- rosters a site is handed


def test_install_roster__only_newer_and_ca_signed(tmp_path):
    manifest = _federation(tmp_path)
    v1 = load_roster(manifest.roster, manifest.ca_cert)
    v1_data = _signed(manifest.roster)
    revoke(manifest.path, "beta")
    v2_data = _signed(manifest.roster)
    target = tmp_path / "installed.json"
    shutil.copyfile(manifest.sites[0].folder / "roster.json", target)

    v2 = install_roster(v2_data, ca_cert_path=manifest.ca_cert, current=v1, path=target, source="test")
    assert v2.version == 2 and v2.path == target and load_roster(target, manifest.ca_cert) == v2
    assert install_roster(v2_data, ca_cert_path=manifest.ca_cert, current=v2, path=target, source="test") is v2
    with pytest.raises(ConfigurationError, match="version 1 is not newer than version 2"):
        install_roster(v1_data, ca_cert_path=manifest.ca_cert, current=v2, path=target, source="test")
    assert load_roster(target, manifest.ca_cert).version == 2


def test_site__refuses_older_unsigned_foreign_or_forged_roster_from_the_coordinator(tmp_path):
    """A malicious coordinator cannot bring back a revoked site by handing out a roster."""
    manifest = _federation(tmp_path)
    v1_data = _signed(manifest.roster)
    revoke(manifest.path, "beta")  # alpha's folder now holds version 2, without beta
    config = load_site_config(manifest.sites[0].config, env={})
    roster_file = config.roster.read_bytes()

    other_ca_key = make_ca("testfed", valid_days=2)[1]
    other_key = serialization.load_pem_private_key(other_ca_key, password=None)
    v1 = load_roster(manifest.sites[1].folder / "roster.json", manifest.ca_cert)
    foreign = make_roster("testfed", 9, v1.participants, other_key)
    forged = {**v1_data, "version": 9}
    unsigned = {key: value for key, value in forged.items() if key != "signature"}
    for served, match in ((v1_data, "not newer"), (foreign, "bad signature"), (forged, "bad signature"),
                          (unsigned, "unsigned"), ([], "not a roster")):
        connection = ServedRoster(served)
        agent = SiteAgent(config, connection=connection)
        assert agent.update_roster(9) is False and connection.fetches == 1
        assert agent.update_roster(9) is False and connection.fetches == 1  # one refused announcement, one fetch
        assert agent.roster.version == 2 and "beta" not in agent.roster.sites
        assert config.roster.read_bytes() == roster_file
        refused = [json.loads(line) for line in config.audit_log.read_text().splitlines()][-1]
        assert refused["event"] == "roster.refused" and match in refused["fields"]["reason"], (match, refused)
        assert agent.update_roster(2) is False and connection.fetches == 1  # not newer than its own: not even fetched


def test_site__refuses_rounds_and_keys_of_a_revoked_site_however_the_coordinator_names_it(tmp_path):
    manifest = _federation(tmp_path)
    config = load_site_config(manifest.sites[0].config, env={})
    agent = SiteAgent(config, connection=ServedRoster(None))
    task = {"job_id": "job-20250101-000000-00000000", "round_index": 0, "participants": ["alpha", "beta", "gamma"],
            "site_ids": [1, 2, 3], "site_id": 1, "kind": "keys", "threshold": 2}
    revoke(manifest.path, "beta")
    agent.connection = ServedRoster(_signed(manifest.roster))
    assert agent.update_roster(2) is True and agent.roster.version == 2
    assert load_roster(config.roster, config.ca).version == 2
    with pytest.raises(PolicyRefusal, match=r"participants \['beta'\] that the federation roster does not list"):
        check_round_terms(config, agent.roster, task)
    with pytest.raises(ConfigurationError, match="site 'beta' is not in"):
        agent.roster.public_key("beta")  # the key a round advertisement of beta would be checked against


def test_site__own_certificate_revoked_stops_the_agent(tmp_path):
    manifest = _federation(tmp_path)
    config = load_site_config(manifest.sites[1].config, env={})
    agent = SiteAgent(config, connection=ServedRoster(None))
    revoke(manifest.path, "beta")
    agent.connection = ServedRoster(_signed(manifest.roster))
    with pytest.raises(ConfigurationError, match="no longer lists this site's certificate"):
        agent.update_roster(2)


def test_authorize__roster_in_use_decides_over_pins(tmp_path):
    manifest = _federation(tmp_path)
    config = load_coordinator_config(manifest.coordinator.config, env={})
    alpha_before = peer_identity(manifest.sites[0].cert.read_bytes())
    renew(manifest.path, "alpha")
    revoke(manifest.path, "beta")
    roster = load_roster(manifest.roster, manifest.ca_cert)
    alpha_after = peer_identity(manifest.sites[0].cert.read_bytes())
    beta = peer_identity(manifest.sites[1].cert.read_bytes())
    with pytest.raises(IdentityError, match=r"roster \(version 3\) lists .* replaced or revoked"):
        authorize(alpha_before, config, roles=("site",), roster=roster)
    assert authorize(alpha_after, config, roles=("site",), roster=roster) is alpha_after  # the old pin no longer decides
    with pytest.raises(IdentityError, match=r"not in the federation roster \(version 3\): its certificate was revoked"):
        authorize(beta, config, roles=("site",), roster=roster)


# --------------------------------------------------------------------------- a running coordinator


@pytest.mark.network
def test_running_coordinator__pushed_roster_refuses_renewed_and_revoked_certificates(tmp_path):
    manifest = _federation(tmp_path)
    url = manifest.coordinator_url
    ops = manifest.operators[0].config
    old_alpha = tmp_path / "old-alpha"
    shutil.copytree(manifest.sites[0].folder, old_alpha)
    v1 = tmp_path / "roster-v1.json"
    shutil.copyfile(manifest.roster, v1)

    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        renew(manifest.path, "alpha")
        with rs.connection(old_alpha, url, max_attempts=1) as conn:
            assert conn.get_json("/v1/health")["you"] == "alpha"  # until the coordinator has the new roster
        answer = push_roster(ops, manifest.roster)
        assert (answer["status"], answer["version"]) == ("installed", 2)
        with rs.connection(old_alpha, url, max_attempts=1) as conn, pytest.raises(transport.HttpError) as refused:
            conn.get_json("/v1/health")
        assert refused.value.status == 403 and "roster (version 2)" in refused.value.detail
        with rs.connection(manifest.sites[0].folder, url, max_attempts=1) as conn:
            assert conn.get_json("/v1/health")["you"] == "alpha"
            assert conn.get_json("/v1/site/work?wait=0")["roster_version"] == 2

        revoke(manifest.path, "beta")
        assert push_roster(ops, manifest.roster)["version"] == 3
        with rs.connection(manifest.sites[1].folder, url, max_attempts=1) as conn:
            with pytest.raises(transport.HttpError) as refused:
                conn.get_json("/v1/site/work?wait=0")
            assert refused.value.status == 403 and "not in the federation roster (version 3)" in refused.value.detail
            assert "revoked" in refused.value.detail
            assert conn.get_json("/v1/roster")["version"] == 3  # public, and signed: it tells beta why
        assert push_roster(ops, manifest.roster)["status"] == "unchanged"
        with pytest.raises(transport.HttpError, match="not newer") as stale:
            push_roster(ops, v1)
        assert stale.value.status == 422
        with rs.connection(manifest.analysts[0].folder, url, max_attempts=1) as conn, pytest.raises(transport.HttpError) as denied:
            conn.request("PUT", "/v1/roster", content=manifest.roster.read_bytes(), headers={"content-type": "application/json"})
        assert denied.value.status == 403
        assert load_roster(manifest.coordinator.folder / "roster.json", manifest.ca_cert).version == 3
        installed = [json.loads(line) for line in (manifest.coordinator.folder / "audit.log").read_text().splitlines()
                     if '"roster.installed"' in line]
        assert [(e["fields"]["version"], e["fields"]["by"]) for e in installed] == [(2, "ops"), (3, "ops")]

        # beta's agent, with its own old roster, learns of its revocation from the roster the CA signed, and stops.
        result = CliRunner().invoke(main, ["site", "run", "--config", str(manifest.sites[1].config), "--once"])
        assert result.exit_code == 1, result.output
        assert "no longer lists this site's certificate" in result.output and "revoked" in result.output

    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:  # a restart loads the newest roster
        assert server.coordinator.roster.version == 3


@pytest.mark.network
def test_add_site__new_site_takes_part_in_a_census_with_the_existing_sites(tmp_path):
    datasets = rs.small_datasets(tmp_path, SITES, num_variants=8, num_samples=8, seed=3)
    manifest = rs.provision_federation(tmp_path / "fed", {s: datasets[s] for s in SITES[:2]}, min_samples=3)
    with rs.ThreadedCoordinator(manifest.coordinator.config):
        pass  # the federation ran before the site was added
    v1 = manifest.roster.read_bytes()
    change = add_participant(manifest.path, "gamma", allowed_analyses=("secure_sum", "census"), share_variant_keys=True)
    toml = change.participant.config
    toml.write_text(toml.read_text().replace('dataset = "dataset"', f'dataset = "{datasets["gamma"]}"')
                    .replace("poll_interval = 2.0", "poll_interval = 0.2"))
    rs.set_policy(toml, min_samples=3, min_allele_count=0, threshold_rule="majority")
    (manifest.sites[0].folder / "roster.json").write_bytes(v1)  # alpha has not heard of gamma: it fetches the roster

    manifest = provision_manifest_with(manifest, change.participant)
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        assert server.coordinator.roster.version == 2
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            job_id = analyst.post_json("/v1/jobs", {"spec": {"analysis": "census", "min_allele_count": 0,
                                                             "stage_timeout": 20}})["job_id"]
            with rs.agent_threads(manifest, max_idle=20) as agents:
                status = rs.wait_for_job(analyst, job_id, timeout=60)
    assert status["status"] == "done", status
    assert sorted(status["sites"]) == list(SITES)
    assert agents["alpha"].roster.version == 2
    assert load_roster(manifest.sites[0].folder / "roster.json", manifest.ca_cert).version == 2


def provision_manifest_with(manifest, participant):
    """The manifest with an added site, as the runtime helpers take it."""
    return dataclasses.replace(manifest, sites=(*manifest.sites, participant))


def test_add_site__a_pushed_roster_enrols_the_new_site_without_a_restart(tmp_path):
    datasets = rs.small_datasets(tmp_path, SITES, num_variants=8, num_samples=8, seed=4)
    manifest = rs.provision_federation(tmp_path / "fed", {s: datasets[s] for s in SITES[:2]}, min_samples=3,
                                       operators=("ops",))
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        change = add_participant(manifest.path, "gamma", allowed_analyses=("secure_sum", "census"), share_variant_keys=True)
        toml = change.participant.config
        toml.write_text(toml.read_text().replace('dataset = "dataset"', f'dataset = "{datasets["gamma"]}"')
                        .replace("poll_interval = 2.0", "poll_interval = 0.2"))
        rs.set_policy(toml, min_samples=3, min_allele_count=0, threshold_rule="majority")
        grown = provision_manifest_with(manifest, change.participant)
        with rs.connection(change.participant.folder, manifest.coordinator_url, max_attempts=1) as gamma:
            with pytest.raises(transport.HttpError) as refused:  # not in the roster the coordinator uses yet
                gamma.get_json("/v1/health")
            assert refused.value.status == 403
            assert push_roster(manifest.operators[0].config, manifest.roster)["version"] == 2
            assert gamma.get_json("/v1/health")["you"] == "gamma"
        assert server.coordinator.sites == tuple(SITES)
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            # No sites named: the job invites the roster's sites, gamma included.
            job_id = analyst.post_json("/v1/jobs", {"spec": {"analysis": "census", "min_allele_count": 0,
                                                             "stage_timeout": 20}})["job_id"]
            with rs.agent_threads(grown, max_idle=20):
                status = rs.wait_for_job(analyst, job_id, timeout=60)
    assert status["status"] == "done", status
    assert status["sites"] == list(SITES)
