"""Signed audit checkpoints: exchanged when a job ends, and what they let ``genofed audit verify`` detect.

A real federation on 127.0.0.1 (coordinator and two site agents, mutual TLS) runs a job;
each party then holds the other's signed log heads. The attacks are the ones the hash
chain alone misses: a log cut short with its head file rewritten, and a log edited and
re-chained from the edit on. Both pass a plain ``audit verify`` and fail against the
heads the other party kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import IdentityError, InputError, ProtocolError
from pipeline.federation.audit import entry_hash, head_path, verify
from pipeline.federation.checkpoints import (
    CHECKPOINT_EVENT,
    Checkpoint,
    kept_checkpoints,
    sign_checkpoint,
    verify_with_checkpoints,
)
from pipeline.federation.roster import load_roster
from pipeline.federation.tls import load_identity_key
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("checkpoints")
    datasets = rs.small_datasets(tmp, SITES, num_variants=8, num_samples=10, seed=11)
    manifest = rs.provision_federation(tmp / "fed", datasets)
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        analyst = rs.connection(manifest.analysts[0].folder, manifest.coordinator_url)
        spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}, "sites": list(SITES), "stage_timeout": 60}
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=30):
            assert rs.wait_for_job(analyst, job_id)["status"] == "done"
        analyst.close()
        folders = {p.name: p.folder for p in manifest.sites}
        yield {"manifest": manifest, "server": server, "folders": folders, "tmp": tmp,
               "coordinator_log": server.config.audit_log,
               "roster": load_roster(manifest.roster, manifest.ca_cert)}


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write_chain(path: Path, entries: list[dict[str, Any]]) -> None:
    """Writes ``entries`` as a valid chain, hashes and head file recomputed: what a log's owner can do."""
    prev = "0" * 64
    lines = []
    for seq, entry in enumerate(entries):
        entry = {**entry, "seq": seq, "prev_hash": prev}
        entry["entry_hash"] = entry_hash(entry)
        prev = entry["entry_hash"]
        lines.append(json.dumps(entry, sort_keys=True, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")
    head_path(path).write_text(json.dumps({"entries": len(entries), "head": prev}, sort_keys=True, separators=(",", ":")) + "\n")


def _copy(fed: dict[str, Any], source: Path, name: str) -> Path:
    target = fed["tmp"] / name
    shutil.copyfile(source, target)
    shutil.copyfile(head_path(source), head_path(target))
    return target


def test_exchange__each_party_keeps_the_others_signed_heads(fed):
    coordinator_kept = kept_checkpoints(fed["coordinator_log"])
    assert {c.signer for _, c in coordinator_kept} == set(SITES)
    for site in SITES:
        kept = kept_checkpoints(fed["folders"][site] / "audit.log")
        assert kept and all((c.signer, c.role) == ("coordinator", "coordinator") for _, c in kept)
        for _, checkpoint in kept:
            checkpoint.check_signature(fed["roster"])
        report = verify_with_checkpoints(fed["folders"][site] / "audit.log", [fed["coordinator_log"]], fed["roster"], signer=site)
        assert report.ok and report.checkpoints >= 1, report.text()
    report = verify_with_checkpoints(fed["coordinator_log"], [fed["folders"][s] / "audit.log" for s in SITES], fed["roster"])
    assert report.ok and report.checkpoints >= 2, report.text()


def test_attack__the_coordinator_truncates_its_log_and_rewrites_the_head_file(fed):
    log = _copy(fed, fed["coordinator_log"], "coordinator-truncated.log")
    entries = _entries(log)
    _write_chain(log, entries[: len(entries) // 2])  # the chain and head file agree: nothing shows the cut
    assert verify(log).ok
    site_log = fed["folders"]["alpha"] / "audit.log"
    report = verify_with_checkpoints(log, [site_log], fed["roster"])
    assert not report.ok and "it was truncated" in report.problem
    cli = CliRunner().invoke(main, ["audit", "verify", str(log), "--checkpoints", str(site_log),
                                    "--roster", str(fed["manifest"].roster), "--ca", str(fed["manifest"].ca_cert)])
    assert cli.exit_code == 1 and "truncated" in cli.output, cli.output


def test_attack__the_coordinator_edits_an_entry_and_re_chains_the_rest(fed):
    log = _copy(fed, fed["coordinator_log"], "coordinator-rechained.log")
    entries = _entries(log)
    edited = next(i for i, e in enumerate(entries) if e["event"] == "contribution.received")
    entries[edited]["fields"]["site"] = "beta" if entries[edited]["fields"]["site"] == "alpha" else "alpha"
    _write_chain(log, entries)
    assert verify(log).ok  # every hash recomputed: the chain alone says ok
    report = verify_with_checkpoints(log, [fed["folders"]["alpha"] / "audit.log"], fed["roster"])
    assert not report.ok and "rewritten up to there and re-chained" in report.problem


def test_attack__a_site_truncates_its_own_log(fed):
    log = _copy(fed, fed["folders"]["beta"] / "audit.log", "beta-truncated.log")
    entries = _entries(log)
    _write_chain(log, entries[:2])
    assert verify(log).ok
    report = verify_with_checkpoints(log, [fed["coordinator_log"]], fed["roster"], signer="beta")
    assert not report.ok and "truncated" in report.problem
    with pytest.raises(InputError, match="say whose log"):
        verify_with_checkpoints(log, [fed["coordinator_log"]], fed["roster"])


def test_attack__the_coordinator_cannot_forge_a_sites_head(fed):
    """It could keep a head of its choosing under alpha's name, but cannot sign it with alpha's key."""
    log = _copy(fed, fed["coordinator_log"], "coordinator-forged.log")
    entries = _entries(log)
    coordinator_key = load_identity_key(fed["manifest"].coordinator.key)
    forged = sign_checkpoint(coordinator_key, federation="testfed", signer="alpha", role="site", entries=1, head="ab" * 32)
    entries.append({**entries[-1], "event": CHECKPOINT_EVENT, "fields": forged.to_fields()})
    _write_chain(log, entries)
    report = verify_with_checkpoints(fed["folders"]["alpha"] / "audit.log", [log], fed["roster"], signer="alpha")
    assert not report.ok and "is not signed by the key the roster lists" in report.problem


def test_exchange__the_coordinator_refuses_another_sites_head_or_a_bad_signature(fed):
    coordinator = fed["server"].coordinator
    alpha_key = load_identity_key(fed["folders"]["alpha"] / "key.pem")
    head = sign_checkpoint(alpha_key, federation="testfed", signer="alpha", role="site", entries=3, head="cd" * 32)
    with pytest.raises(IdentityError, match="sent a checkpoint of site 'alpha'"):
        coordinator.exchange_checkpoint("beta", head.to_fields())
    tampered = {**head.to_fields(), "entries": 4}
    with pytest.raises(IdentityError, match="not signed by the key"):
        coordinator.exchange_checkpoint("alpha", tampered)
    with pytest.raises(ProtocolError, match="exactly the keys"):
        coordinator.exchange_checkpoint("alpha", {"entries": 3})
    with rs.connection(fed["folders"]["beta"], fed["manifest"].coordinator_url, max_attempts=1) as beta:
        answer = beta.send("POST", "/v1/site/checkpoint", json={"checkpoint": head.to_fields()})
    assert answer.status_code == 403


def test_exchange__a_site_does_not_keep_a_head_the_coordinator_did_not_sign(fed, monkeypatch):
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import load_site_config

    coordinator = fed["server"].coordinator
    monkeypatch.setattr(coordinator, "identity_key", load_identity_key(fed["folders"]["alpha"] / "key.pem"))
    agent = SiteAgent(load_site_config(fed["manifest"].sites[1].config))
    try:
        before = len(kept_checkpoints(fed["folders"]["beta"] / "audit.log"))
        assert agent.exchange_checkpoint() is None
        events = [e["event"] for e in _entries(fed["folders"]["beta"] / "audit.log")]
        assert events[-1] == "checkpoint.failed"
        assert len(kept_checkpoints(fed["folders"]["beta"] / "audit.log")) == before
    finally:
        agent.connection.close()


def test_checkpoint__round_trip_and_malformed_fields(fed):
    key = load_identity_key(fed["folders"]["alpha"] / "key.pem")
    checkpoint = sign_checkpoint(key, federation="testfed", signer="alpha", role="site", entries=2, head="ef" * 32)
    assert Checkpoint.from_fields(json.loads(json.dumps(checkpoint.to_fields()))) == checkpoint
    checkpoint.check_signature(fed["roster"])
    for change, match in (({"format": "x"}, "format"), ({"entries": 0}, "positive integer"), ({"head": "zz"}, "SHA-256"),
                          ({"role": "analyst"}, "role"), ({"signer": ""}, "non-empty")):
        with pytest.raises(ProtocolError, match=match):
            Checkpoint.from_fields({**checkpoint.to_fields(), **change})
    with pytest.raises(IdentityError, match="federation"):
        Checkpoint.from_fields({**checkpoint.to_fields(), "federation": "other"}).check_signature(fed["roster"])
