"""genofed provision: CA, certificates, keys and configs, checked with cryptography and openssl."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import stat
import subprocess

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.cli import main
from pipeline.errors import ConfigurationError, InputError, OutputExistsError
from pipeline.federation import provision as provision_module
from pipeline.federation.config import load_analyst_config, load_coordinator_config, load_site_config
from pipeline.federation.provision import issue_certificate, provision
from pipeline.federation.roster import load_roster

SITES = ("site-1", "site-2", "site-3")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return provision(tmp_path_factory.mktemp("provision") / "demo", federation="demo", sites=SITES,
                     analysts=("alice", "bob"), coordinator_port=9443, valid_days=30)


def load_cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def subject(cert: x509.Certificate, oid) -> list[str]:
    return [attribute.value for attribute in cert.subject.get_attributes_for_oid(oid)]


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_provision__layout(federation):
    root = federation.path
    expected = {"ca.pem", "roster.json", "ca/ca.key", "ca/ca.pem", "ca/README.txt", "coordinator/cert.pem",
                "coordinator/key.pem", "coordinator/ca.pem", "coordinator/roster.json", "coordinator/coordinator.toml"}
    for name in SITES:
        expected |= {f"sites/{name}/{f}" for f in ("cert.pem", "key.pem", "ca.pem", "roster.json", "site.toml")}
    for name in ("alice", "bob"):
        expected |= {f"analysts/{name}/{f}" for f in ("cert.pem", "key.pem", "ca.pem", "roster.json", "analyst.toml")}
    assert {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} == expected
    assert [p.name for p in federation.sites] == list(SITES)
    assert federation.coordinator_url == "https://127.0.0.1:9443"
    assert not list(root.parent.glob(".demo.tmp-*"))


def test_provision__private_keys_owner_only(federation):
    keys = [federation.ca_key] + [p.key for p in federation.participants]
    for key in keys:
        assert mode(key) == 0o600, key
    assert mode(federation.ca_key.parent) == 0o700
    for participant in federation.participants:
        assert mode(participant.cert) == 0o644
    assert "consortium operator" in (federation.path / "ca" / "README.txt").read_text()


def test_provision__ca_certificate(federation):
    ca = load_cert(federation.ca_cert)
    assert ca.subject == ca.issuer
    assert subject(ca, NameOID.ORGANIZATION_NAME) == ["demo"]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(federation.ca_key.read_bytes(), password=None)
    assert key.public_key() == ca.public_key()
    assert (federation.path / "ca" / "ca.pem").read_bytes() == federation.ca_cert.read_bytes()


def test_provision__participant_certificates(federation):
    ca = load_cert(federation.ca_cert)
    for participant in federation.participants:
        cert = load_cert(participant.cert)
        cert.verify_directly_issued_by(ca)
        assert subject(cert, NameOID.COMMON_NAME) == [participant.name]
        assert subject(cert, NameOID.ORGANIZATION_NAME) == ["demo"]
        assert subject(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [participant.role]
        assert cert.fingerprint(hashes.SHA256()).hex() == participant.fingerprint
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if participant.role == "coordinator":
            assert usage == [ExtendedKeyUsageOID.SERVER_AUTH]
        else:
            assert usage == [ExtendedKeyUsageOID.CLIENT_AUTH]
        key = serialization.load_pem_private_key(participant.key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == cert.public_key()
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime == dt.timedelta(days=30)
        assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) <= cert.not_valid_after_utc
        assert (participant.folder / "ca.pem").read_bytes() == federation.ca_cert.read_bytes()
    assert len({p.fingerprint for p in federation.participants}) == len(federation.participants)


def test_provision__coordinator_subject_alt_names(federation):
    san = load_cert(federation.coordinator.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_provision__dns_host(tmp_path):
    manifest = provision(tmp_path / "fed", federation="f", sites=["a"], coordinator_host="coord.example.org")
    san = load_cert(manifest.coordinator.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == []
    assert manifest.coordinator_url == "https://coord.example.org:8443"
    assert [a.name for a in manifest.analysts] == ["analyst"]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_provision__openssl_verifies_purposes(federation):
    def openssl_verify(cert, purpose):
        return subprocess.run(
            ["openssl", "verify", "-CAfile", str(federation.ca_cert), "-purpose", purpose, str(cert)],
            capture_output=True, text=True,
        )

    assert openssl_verify(federation.coordinator.cert, "sslserver").returncode == 0
    assert openssl_verify(federation.coordinator.cert, "sslclient").returncode != 0
    for participant in (*federation.sites, *federation.analysts):
        assert openssl_verify(participant.cert, "sslclient").returncode == 0, participant.name
        assert openssl_verify(participant.cert, "sslserver").returncode != 0, participant.name


def test_provision__configs_load_and_point_at_files(federation):
    coordinator = load_coordinator_config(federation.coordinator.config, env={})
    assert coordinator.federation == "demo" and coordinator.port == 9443 and coordinator.host == "127.0.0.1"
    assert coordinator.sites == SITES and coordinator.analysts == ("alice", "bob")
    assert coordinator.cert == federation.coordinator.cert.resolve()
    assert coordinator.key == federation.coordinator.key.resolve()
    assert coordinator.roster == (federation.coordinator.folder / "roster.json").resolve()
    assert coordinator.url == federation.coordinator_url
    assert dict(coordinator.fingerprints) == {p.name: p.fingerprint for p in (*federation.sites, *federation.analysts)}
    for participant in federation.sites:
        site = load_site_config(participant.config, env={})
        assert (site.name, site.federation, site.coordinator_url) == (participant.name, "demo", federation.coordinator_url)
        assert site.cert == participant.cert.resolve() and site.key == participant.key.resolve()
        assert site.ca.read_bytes() == federation.ca_cert.read_bytes()
        assert site.roster == (participant.folder / "roster.json").resolve()
        assert site.dataset == participant.folder.resolve() / "dataset"
        assert site.policy.allowed_analyses == ("census", "secure_sum")
        assert (site.policy.min_samples, site.policy.min_allele_count) == (10, 5)
        assert site.policy.share_variant_keys is False
    for participant in federation.analysts:
        analyst = load_analyst_config(participant.config, env={})
        assert analyst.name == participant.name and analyst.cert == participant.cert.resolve()


def test_provision__folder_moves_as_a_whole(federation, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(federation.sites[0].folder, moved)
    site = load_site_config(moved / "site.toml", env={})
    assert site.cert == moved.resolve() / "cert.pem"


def test_provision__refuses_existing_output(tmp_path):
    provision(tmp_path / "fed", federation="f", sites=["a"])
    first = (tmp_path / "fed" / "ca.pem").read_bytes()
    with pytest.raises(OutputExistsError, match="--force"):
        provision(tmp_path / "fed", federation="f", sites=["a"])
    provision(tmp_path / "fed", federation="f", sites=["a"], force=True)
    assert (tmp_path / "fed" / "ca.pem").read_bytes() != first


def test_provision__failure_leaves_nothing(tmp_path, monkeypatch):
    real = provision_module.issue_certificate
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(provision_module, "issue_certificate", failing)
    with pytest.raises(RuntimeError):
        provision(tmp_path / "fed", federation="f", sites=["a", "b"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sites": []}, "at least one --site"),
        ({"sites": ["a", "a"]}, "given twice"),
        ({"sites": ["a"], "analysts": ["a"]}, "given twice"),
        ({"sites": ["coordinator"]}, "reserved"),
        ({"sites": ["site 1"]}, "invalid site name"),
        ({"sites": ["a/../b"]}, "invalid site name"),
        ({"sites": ["a"], "federation": "my federation"}, "invalid federation name"),
        ({"sites": ["a"], "coordinator_port": 0}, "port"),
        ({"sites": ["a"], "valid_days": 0}, "valid_days"),
        ({"sites": ["a"], "coordinator_host": "a b"}, "host"),
        ({"sites": ["a"], "allowed_analyses": ["GWAS!"]}, "analysis name"),
    ],
)
def test_provision__bad_arguments(tmp_path, kwargs, match):
    kwargs = {"federation": "f", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        provision(tmp_path / "fed", **kwargs)
    assert not (tmp_path / "fed").exists()


def test_issue_certificate__cannot_outlive_ca(federation):
    with pytest.raises(ConfigurationError, match="after the federation CA"):
        issue_certificate(federation.path / "ca", "site-4", "site", valid_days=400)


def test_issue_certificate__checks(federation, tmp_path):
    with pytest.raises(ConfigurationError, match="role"):
        issue_certificate(federation.path / "ca", "x", "admin", valid_days=1)
    with pytest.raises(ConfigurationError, match="host="):
        issue_certificate(federation.path / "ca", "coordinator", "coordinator", valid_days=1)
    with pytest.raises(InputError, match="ca.pem"):
        issue_certificate(tmp_path, "x", "site", valid_days=1)
    other = provision(tmp_path / "other", federation="other", sites=["a"])
    (tmp_path / "mixed").mkdir()
    shutil.copy(federation.path / "ca" / "ca.pem", tmp_path / "mixed" / "ca.pem")
    shutil.copy(other.ca_key, tmp_path / "mixed" / "ca.key")
    with pytest.raises(InputError, match="does not match"):
        issue_certificate(tmp_path / "mixed", "x", "site", valid_days=1)


def test_issue_certificate__backdated(federation):
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=3, not_before=start)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.not_valid_before_utc == start and cert.not_valid_after_utc == start + dt.timedelta(days=3)
    assert b"PRIVATE KEY" in key_pem


def test_cli_provision__text_and_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, [
        "provision", "--federation", "demo", "--site", "site-1", "--site", "site-2", "--analyst", "alice",
        "--out", str(tmp_path / "fed"), "--host", "10.0.0.5", "--port", "9000", "--days", "10", "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["coordinator_url"] == "https://10.0.0.5:9000"
    assert [s["name"] for s in summary["sites"]] == ["site-1", "site-2"]
    assert [a["name"] for a in summary["analysts"]] == ["alice"]
    assert summary["ca_key"].endswith("ca/ca.key")
    assert summary["roster"] == str(tmp_path / "fed" / "roster.json")

    result = runner.invoke(main, ["provision", "--federation", "demo", "--site", "s", "--out", str(tmp_path / "fed2"),
                                  "--allow", "census", "--share-variant-keys", "--share-site-metrics"])
    assert result.exit_code == 0
    assert "consortium operator" in result.output and "roster.json (version 1, signed by the CA" in result.output
    policy = load_site_config(tmp_path / "fed2" / "sites" / "s" / "site.toml", env={}).policy
    assert policy.allowed_analyses == ("census",) and policy.share_variant_keys is True
    assert policy.share_site_metrics is True
    default = load_site_config(tmp_path / "fed" / "sites" / "site-1" / "site.toml", env={}).policy
    assert default.share_variant_keys is False and default.share_site_metrics is False


def test_cli_provision__errors_exit_1_with_one_line(tmp_path):
    runner = CliRunner()
    args = ["provision", "--federation", "demo", "--site", "a", "--site", "a", "--out", str(tmp_path / "fed")]
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "given twice" in result.output
    result = runner.invoke(main, ["provision", "--federation", "demo", "--out", str(tmp_path / "fed")])
    assert result.exit_code == 2  # usage error: --site is required


def test_provision__roster_copies_identical_and_verified(federation):
    top = federation.roster.read_bytes()
    roster = load_roster(federation.roster, federation.ca_cert)
    for participant in federation.participants:
        copy = participant.folder / "roster.json"
        assert copy.read_bytes() == top, participant.name
        assert load_roster(copy, participant.folder / "ca.pem") == roster
    assert (roster.federation, roster.version) == ("demo", 1)
    assert roster.sites == SITES and roster.analysts == ("alice", "bob")
    assert [(e.role, e.name) for e in roster.participants] == sorted((p.role, p.name) for p in federation.participants)
    for participant in federation.participants:
        cert = load_cert(participant.cert)
        entry = roster.check_certificate(participant.name, participant.role, cert)
        assert entry.fingerprint == participant.fingerprint
        assert entry.public_key == cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
