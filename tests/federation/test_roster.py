"""The signed federation roster, and identity bound end to end: a site can only be itself."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pipeline.cli import main
from pipeline.errors import ConfigurationError, IdentityError
from pipeline.federation import agent as agent_module
from pipeline.federation import roster as roster_module
from pipeline.federation.agent import SiteAgent, run_site
from pipeline.federation.api import build_coordinator
from pipeline.federation.config import load_coordinator_config, load_site_config
from pipeline.federation.provision import issue_certificate, provision
from pipeline.federation.roster import (
    FORMAT,
    Roster,
    RosterEntry,
    check_enrolment,
    check_own_identity,
    load_roster,
    make_roster,
    write_roster,
)

SITES = ("site-1", "site-2")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    return provision(tmp_path_factory.mktemp("roster") / "demo", federation="demo", sites=SITES, analysts=("alice",),
                     valid_days=30)


@pytest.fixture(scope="module")
def ca_key(federation):
    return serialization.load_pem_private_key(federation.ca_key.read_bytes(), password=None)


def entries(federation) -> list[RosterEntry]:
    return [RosterEntry.from_certificate(x509.load_pem_x509_certificate(p.cert.read_bytes())) for p in federation.participants]


def signed_json(federation) -> dict:
    return json.loads(federation.roster.read_text())


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


class RecordingConnection:
    """Stands in for the HTTPS connection: records every request (there must be none)."""

    def __init__(self) -> None:
        self.requests: list[tuple] = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.requests.append((name, args, kwargs))
            raise AssertionError(f"a request reached the coordinator: {name}{args}")

        return record


# --------------------------------------------------------------------------- the file


def test_roster__round_trip(federation, ca_key, tmp_path):
    issued = dt.datetime(2025, 3, 1, 12, 30, tzinfo=dt.timezone.utc)
    signed = make_roster("demo", 3, reversed(entries(federation)), ca_key, issued=issued)
    assert signed["format"] == FORMAT and signed["issued"] == "2025-03-01T12:30:00Z"
    assert [(p["role"], p["name"]) for p in signed["participants"]] == sorted((p.role, p.name) for p in federation.participants)
    write_roster(tmp_path / "roster.json", signed)
    roster = load_roster(tmp_path / "roster.json", federation.ca_cert)
    assert roster == Roster(federation="demo", version=3, issued=issued,
                            participants=tuple(sorted(entries(federation), key=lambda e: (e.role, e.name))))
    assert roster.sites == SITES and roster.analysts == ("alice",)
    site_2 = x509.load_pem_x509_certificate(federation.sites[1].cert.read_bytes())
    assert roster.public_key("site-2", "site") == site_2.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_roster__signature_is_deterministic(federation, ca_key):
    issued = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)
    first = make_roster("demo", 1, entries(federation), ca_key, issued=issued)
    assert make_roster("demo", 1, list(reversed(entries(federation))), ca_key, issued=issued) == first


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["participants"][0].update(fingerprint="0" * 64),
        lambda d: d["participants"][-1].update(name="site-9"),
        lambda d: d["participants"].append({**d["participants"][-1], "name": "site-9"}),
        lambda d: d.update(version=2),
        lambda d: d["participants"][-1].update(public_key=d["participants"][0]["public_key"]),
    ],
    ids=["fingerprint", "name", "added", "version", "swapped-key"],
)
def test_roster__edited_after_signing_refused(federation, tmp_path, edit):
    data = signed_json(federation)
    edit(data)
    path = write_json(tmp_path / "roster.json", data)
    with pytest.raises(ConfigurationError, match="bad signature: the roster was edited after the CA signed it") as error:
        load_roster(path, federation.ca_cert)
    assert str(path) in str(error.value)


def test_roster__layout_on_disk_does_not_matter(federation, tmp_path):
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(signed_json(federation), separators=(",", ":")))
    assert load_roster(path, federation.ca_cert) == load_roster(federation.roster, federation.ca_cert)


def test_roster__signed_by_another_ca_refused(federation, tmp_path):
    again = provision(tmp_path / "again", federation="demo", sites=SITES, analysts=("alice",))
    with pytest.raises(ConfigurationError, match=f"bad signature.*another CA than {federation.ca_cert}"):
        load_roster(again.roster, federation.ca_cert)


def test_roster__of_another_federation_refused(federation, ca_key, tmp_path):
    other = provision(tmp_path / "other", federation="other", sites=SITES)
    with pytest.raises(ConfigurationError, match="roster of federation 'other', but the CA .* is federation 'demo'"):
        load_roster(other.roster, federation.ca_cert)
    # Even signed by this federation's CA, a roster that names another federation is refused.
    path = tmp_path / "roster.json"
    write_roster(path, make_roster("other", 1, entries(federation), ca_key))
    with pytest.raises(ConfigurationError, match="federation 'other'"):
        load_roster(path, federation.ca_cert)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.pop("signature"), "unsigned"),
        (lambda d: d.update(signature=""), "unsigned"),
        (lambda d: d.update(signature="not base64!"), "bad signature"),
        (lambda d: d.update(format="genofed-roster/2"), "unknown format 'genofed-roster/2'"),
        (lambda d: d.pop("format"), "unknown format None"),
    ],
)
def test_roster__unsigned_or_unknown_format_refused(federation, tmp_path, edit, expected):
    data = signed_json(federation)
    edit(data)
    path = write_json(tmp_path / "roster.json", data)
    with pytest.raises(ConfigurationError, match=expected) as error:
        load_roster(path, federation.ca_cert)
    assert str(path) in str(error.value) and "genofed provision" in str(error.value)


def test_roster__unreadable_files_named(federation, tmp_path):
    with pytest.raises(ConfigurationError, match=f"{tmp_path / 'roster.json'}: no such file.*copy"):
        load_roster(tmp_path / "roster.json", federation.ca_cert)
    (tmp_path / "roster.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_roster(tmp_path / "roster.json", federation.ca_cert)
    (tmp_path / "roster.json").write_text("[]")
    with pytest.raises(ConfigurationError, match="not a roster"):
        load_roster(tmp_path / "roster.json", federation.ca_cert)
    with pytest.raises(ConfigurationError, match=f"{tmp_path / 'ca.pem'}: no such file"):
        load_roster(federation.roster, tmp_path / "ca.pem")


def test_roster__malformed_entry_named_even_when_signed(federation, ca_key, tmp_path):
    data = signed_json(federation)
    data["participants"][1]["role"] = "admin"
    body = {k: v for k, v in data.items() if k != "signature"}
    # Re-sign the malformed content with the CA key, as a buggy tool would.
    data["signature"] = base64.b64encode(ca_key.sign(roster_module._canonical(body), roster_module._SIGNATURE)).decode()
    path = write_json(tmp_path / "roster.json", data)
    with pytest.raises(ConfigurationError, match=r"participants\[1\]\.role: expected one of"):
        load_roster(path, federation.ca_cert)


def test_make_roster__refuses_duplicates_and_bad_input(federation, ca_key):
    listed = entries(federation)
    with pytest.raises(ConfigurationError, match="listed twice"):
        make_roster("demo", 1, [*listed, listed[0]], ca_key)
    with pytest.raises(ConfigurationError, match="version"):
        make_roster("demo", 0, listed, ca_key)
    with pytest.raises(ConfigurationError, match="role"):
        make_roster("demo", 1, [RosterEntry("x", "admin", "0" * 64, b"k")], ca_key)


def test_roster__entry_and_check_certificate(federation):
    roster = load_roster(federation.roster, federation.ca_cert)
    site_1, site_2 = (p.cert.read_bytes() for p in federation.sites)
    assert roster.check_certificate("site-1", "site", site_1) == roster.entry("site-1", "site")
    with pytest.raises(ConfigurationError, match="site 'site-9' is not in the roster"):
        roster.entry("site-9", "site")
    with pytest.raises(ConfigurationError, match="analyst 'site-1' is not in the roster"):
        roster.public_key("site-1", "analyst")
    with pytest.raises(IdentityError, match=r"site 'site-2''s \(CN=site-2, OU=site\), not site 'site-1''s"):
        roster.check_certificate("site-1", "site", site_2)
    reissued, _ = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=5)
    with pytest.raises(IdentityError, match="is not the one the roster"):
        roster.check_certificate("site-1", "site", reissued)


# --------------------------------------------------------------------------- the site agent


def site_toml(federation, tmp_path: Path, name: str, *, cert_of: str, roster: str = "roster.json") -> Path:
    """A copy of ``name``'s folder whose site.toml points [tls] cert and key at ``cert_of``'s files."""
    folder = tmp_path / f"{name}-as-{cert_of}"
    shutil.copytree(federation.path / "sites" / name, folder, ignore=shutil.ignore_patterns("state", "audit.log*"))
    other = federation.path / "sites" / cert_of
    text = (folder / "site.toml").read_text()
    text = text.replace('cert = "cert.pem"', f'cert = "{other / "cert.pem"}"')
    text = text.replace('key = "key.pem"', f'key = "{other / "key.pem"}"')
    text = text.replace('roster = "roster.json"', f'roster = "{roster}"')
    (folder / "site.toml").write_text(text)
    return folder / "site.toml"


def test_site_agent__own_certificate_starts_with_roster(federation, tmp_path):
    config = load_site_config(federation.sites[0].config, env={})
    agent = SiteAgent(config, connection=RecordingConnection(), audit=object())
    assert isinstance(agent.roster, Roster) and agent.roster.sites == SITES
    assert agent.roster.public_key("site-2", "site") == load_roster(federation.roster, federation.ca_cert).public_key("site-2")
    assert check_own_identity(config, agent.roster).name == "site-1"


def test_site_agent__impostor_refused_before_any_request(federation, tmp_path):
    """site.toml says site-1, but the certificate and key are site-2's: no contribution as site-1."""
    config = load_site_config(site_toml(federation, tmp_path, "site-1", cert_of="site-2"), env={})
    connection = RecordingConnection()
    with pytest.raises(ConfigurationError) as error:
        SiteAgent(config, connection=connection)
    message = str(error.value)
    assert f"{config.path} says this site is 'site-1', but {config.cert} is the certificate of 'site-2'" in message
    assert "(CN=site-2, OU=site)" in message and "a site can only contribute as itself" in message
    assert connection.requests == []
    assert not config.state_dir.exists() and not config.audit_log.exists()


def test_run_site__impostor_never_connects(federation, tmp_path, monkeypatch):
    path = site_toml(federation, tmp_path, "site-1", cert_of="site-2")
    opened = []
    monkeypatch.setattr(agent_module.transport, "Connection", lambda *a, **k: opened.append(a))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)
        monkeypatch.setenv("GENOFED_COORDINATOR_URL", f"https://127.0.0.1:{listener.getsockname()[1]}")
        with pytest.raises(ConfigurationError, match="says this site is 'site-1'.*certificate of 'site-2'"):
            run_site(path, once=True, max_idle=1)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert opened == []


def test_cli_site_run__impostor_exits_1_with_one_line(federation, tmp_path):
    result = CliRunner().invoke(main, ["site", "run", "--config", str(site_toml(federation, tmp_path, "site-1", cert_of="site-2"))])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "'site-1'" in lines[0] and "'site-2'" in lines[0]


def test_site_agent__certificate_of_the_same_ca_but_not_in_roster_refused(federation):
    folder = federation.path / "sites" / "site-9"
    folder.mkdir()
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-9", "site", valid_days=5)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    (folder / "key.pem").chmod(0o600)
    for name in ("ca.pem", "roster.json"):
        shutil.copy(federation.sites[0].folder / name, folder / name)
    (folder / "site.toml").write_text(federation.sites[0].config.read_text().replace('"site-1"', '"site-9"'))
    config = load_site_config(folder / "site.toml", env={})
    with pytest.raises(ConfigurationError, match="site 'site-9' is not in the roster") as error:
        SiteAgent(config, connection=RecordingConnection())
    assert str(config.cert) in str(error.value)


def test_site_agent__reissued_certificate_not_in_roster_refused(federation, tmp_path):
    folder = tmp_path / "site-1"
    shutil.copytree(federation.sites[0].folder, folder)
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=5)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    config = load_site_config(folder / "site.toml", env={})
    with pytest.raises(ConfigurationError, match="not this site's certificate in the federation roster.*is not the one"):
        SiteAgent(config, connection=RecordingConnection())


def test_site_agent__forged_or_foreign_roster_refused(federation, tmp_path):
    data = signed_json(federation)
    data["participants"] = [p for p in data["participants"] if p["name"] != "site-2"]
    path = site_toml(federation, tmp_path, "site-1", cert_of="site-1", roster="forged.json")
    write_json(path.parent / "forged.json", data)
    config = load_site_config(path, env={})
    with pytest.raises(ConfigurationError, match="edited after the CA signed it"):
        SiteAgent(config, connection=RecordingConnection())


def test_site_config__old_file_without_roster_says_how_to_get_one(federation, tmp_path):
    folder = tmp_path / "site-1"
    shutil.copytree(federation.sites[0].folder, folder)
    text = (folder / "site.toml").read_text().replace('roster = "roster.json"\n', "")
    (folder / "site.toml").write_text(text)
    with pytest.raises(ConfigurationError, match="'tls.roster' is missing.*re-run genofed provision.*roster.json"):
        load_site_config(folder / "site.toml", env={})


# --------------------------------------------------------------------------- the coordinator


def test_coordinator__enrolment_checked_against_roster(federation, tmp_path):
    folder = tmp_path / "coordinator"
    shutil.copytree(federation.coordinator.folder, folder)
    config = load_coordinator_config(folder / "coordinator.toml", env={})
    check_enrolment(config, load_roster(config.roster, config.ca))
    build_coordinator(config)

    text = (folder / "coordinator.toml").read_text().replace('sites = ["site-1", "site-2"]', 'sites = ["site-1", "site-2", "site-9"]')
    (folder / "coordinator.toml").write_text(text)
    config = load_coordinator_config(folder / "coordinator.toml", env={})
    with pytest.raises(ConfigurationError, match="sites 'site-9' are not in the federation roster") as error:
        build_coordinator(config)
    assert str(config.path) in str(error.value)


def test_coordinator__pin_other_than_roster_refused(federation, tmp_path):
    folder = tmp_path / "coordinator"
    shutil.copytree(federation.coordinator.folder, folder)
    text = (folder / "coordinator.toml").read_text().replace(federation.sites[0].fingerprint, "0" * 64)
    (folder / "coordinator.toml").write_text(text)
    config = load_coordinator_config(folder / "coordinator.toml", env={})
    with pytest.raises(ConfigurationError, match="'fingerprints.site-1' pins a certificate"):
        check_enrolment(config, load_roster(config.roster, config.ca))


def test_coordinator__another_federations_certificate_refused(federation, tmp_path):
    folder = tmp_path / "coordinator"
    shutil.copytree(federation.coordinator.folder, folder)
    other = provision(tmp_path / "other", federation="demo", sites=SITES, analysts=("alice",))
    shutil.copy(other.coordinator.cert, folder / "cert.pem")
    config = load_coordinator_config(folder / "coordinator.toml", env={})
    with pytest.raises(ConfigurationError, match="not the coordinator's certificate in the roster"):
        check_enrolment(config, load_roster(config.roster, config.ca))
