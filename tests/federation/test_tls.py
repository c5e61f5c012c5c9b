"""Mutual TLS with real handshakes over 127.0.0.1, and identities read from certificates."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.errors import ConfigurationError, IdentityError
from pipeline.federation.config import load_coordinator_config
from pipeline.federation.provision import issue_certificate, provision
from pipeline.federation.tls import Identity, authorize, client_context, peer_identity, server_context

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return provision(tmp_path_factory.mktemp("tls") / "demo", federation="demo", sites=["site-1", "site-2"],
                     analysts=["alice"])


@pytest.fixture(scope="module")
def other_federation(tmp_path_factory):
    return provision(tmp_path_factory.mktemp("tls-other") / "other", federation="other", sites=["site-1"],
                     analysts=["alice"])


def _server(federation):
    folder = federation.coordinator.folder
    return server_context(folder / "cert.pem", folder / "key.pem", folder / "ca.pem")


def _client(participant_folder: Path, ca: Path | None = None):
    return client_context(participant_folder / "cert.pem", participant_folder / "key.pem",
                          ca or participant_folder / "ca.pem")


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "127.0.0.1"):
    """One connection through a tiny threaded TLS server.

    Returns ``(server, client)`` dicts: the peer identity each side read (``identity``),
    the bytes the client received (``data``) and the exception each side saw (``error``).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    server: dict = {"identity": None, "error": None}
    client: dict = {"identity": None, "error": None, "data": b""}

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            connection.settimeout(10)
            with server_ctx.wrap_socket(connection, server_side=True) as tls:
                server["identity"] = peer_identity(tls.getpeercert(binary_form=True))
                tls.sendall(b"ok")
        except (OSError, IdentityError) as error:
            server["error"] = error
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                client["identity"] = peer_identity(tls.getpeercert(binary_form=True))
                client["data"] = tls.recv(2)
    except OSError as error:
        client["error"] = error
    thread.join(timeout=20)
    assert not thread.is_alive()
    return server, client


def assert_refused(server: dict, client: dict) -> None:
    """The server never got a verified client, and the client never got application data."""
    assert server["identity"] is None
    assert isinstance(server["error"], ssl.SSLError) or client["error"] is not None
    assert client["data"] == b""


def test_handshake__enrolled_site_accepted(federation):
    site = federation.sites[0]
    server, client = handshake(_server(federation), _client(site.folder))
    assert server["error"] is None and client["error"] is None
    assert client["data"] == b"ok"
    assert server["identity"] == Identity(name="site-1", role="site", federation="demo", fingerprint=site.fingerprint)
    assert client["identity"] == Identity(
        name="coordinator", role="coordinator", federation="demo", fingerprint=federation.coordinator.fingerprint
    )


def test_handshake__analyst_accepted_with_localhost_name(federation):
    analyst = federation.analysts[0]
    server, client = handshake(_server(federation), _client(analyst.folder), server_hostname="localhost")
    assert client["data"] == b"ok"
    assert server["identity"].name == "alice" and server["identity"].role == "analyst"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_handshake__tls_version_at_least_1_2(federation):
    context = _server(federation)
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    old = _client(federation.sites[0].folder)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert_refused(*handshake(context, old))


def test_handshake__client_without_certificate_refused(federation):
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cafile=str(federation.ca_cert))
    server, client = handshake(_server(federation), anonymous)
    assert_refused(server, client)
    assert isinstance(server["error"], ssl.SSLError)


def test_handshake__client_from_another_ca_refused(federation, other_federation):
    # the impostor trusts our CA (so it accepts our server) but its own cert is from another CA
    impostor = _client(other_federation.sites[0].folder, ca=federation.ca_cert)
    server, client = handshake(_server(federation), impostor)
    assert_refused(server, client)
    assert isinstance(server["error"], ssl.SSLError)


def test_handshake__expired_client_certificate_refused(federation, tmp_path):
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=2, not_before=start)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    expired = _client(tmp_path, ca=federation.ca_cert)
    server, client = handshake(_server(federation), expired)
    assert_refused(server, client)
    assert "expired" in str(server["error"])


def test_handshake__not_yet_valid_client_certificate_refused(federation, tmp_path):
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)
    cert_pem, key_pem = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=30, not_before=start)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    assert_refused(*handshake(_server(federation), _client(tmp_path, ca=federation.ca_cert)))


def test_handshake__server_from_another_ca_refused_by_client(federation, other_federation):
    server, client = handshake(_server(other_federation), _client(federation.sites[0].folder))
    assert isinstance(client["error"], ssl.SSLError) and client["identity"] is None
    assert "certificate verify failed" in str(client["error"])


def test_handshake__wrong_host_name_refused_by_client(federation):
    server, client = handshake(_server(federation), _client(federation.sites[0].folder), server_hostname="example.org")
    assert isinstance(client["error"], ssl.SSLCertVerificationError)
    assert client["data"] == b""


def test_handshake__site_certificate_cannot_serve(federation):
    site = federation.sites[1].folder
    fake_server = server_context(site / "cert.pem", site / "key.pem", site / "ca.pem")
    server, client = handshake(fake_server, _client(federation.sites[0].folder))
    assert isinstance(client["error"], ssl.SSLError) and client["data"] == b""


def test_handshake__coordinator_certificate_cannot_log_in_as_client(federation):
    impostor = _client(federation.coordinator.folder)
    assert_refused(*handshake(_server(federation), impostor))


def test_contexts__missing_file_named(federation, tmp_path):
    folder = federation.coordinator.folder
    with pytest.raises(ConfigurationError, match="nope.pem"):
        server_context(folder / "cert.pem", tmp_path / "nope.pem", folder / "ca.pem")
    with pytest.raises(ConfigurationError, match="nope.pem"):
        client_context(tmp_path / "nope.pem", folder / "key.pem", folder / "ca.pem")


def test_contexts__mismatched_key_refused(federation):
    with pytest.raises(ConfigurationError, match="cannot load"):
        server_context(federation.coordinator.cert, federation.sites[0].key, federation.ca_cert)


def test_peer_identity__der_pem_and_object_agree(federation):
    cert = x509.load_pem_x509_certificate(federation.sites[1].cert.read_bytes())
    expected = Identity("site-2", "site", "demo", cert.fingerprint(hashes.SHA256()).hex())
    assert peer_identity(cert) == expected
    assert peer_identity(cert.public_bytes(serialization.Encoding.DER)) == expected
    assert peer_identity(federation.sites[1].cert.read_bytes()) == expected


def _self_signed(attributes: list[x509.NameAttribute]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(attributes)
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    ("attributes", "match"),
    [
        ([x509.NameAttribute(NameOID.COMMON_NAME, "x"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "demo")], "OU"),
        ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "demo"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site")], "CN"),
        (
            [x509.NameAttribute(NameOID.COMMON_NAME, "x"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "demo"),
             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin")],
            "role 'admin'",
        ),
    ],
)
def test_peer_identity__malformed_subject_refused(attributes, match):
    with pytest.raises(IdentityError, match=match):
        peer_identity(_self_signed(attributes))


def test_peer_identity__no_certificate():
    with pytest.raises(IdentityError, match="no certificate"):
        peer_identity(None)  # type: ignore[arg-type]
    with pytest.raises(IdentityError, match="cannot be parsed"):
        peer_identity(b"\x30\x03garbage")


def test_authorize__enrolment_roles_and_pins(federation):
    config = load_coordinator_config(federation.coordinator.config)
    site = peer_identity(federation.sites[0].cert.read_bytes())
    analyst = peer_identity(federation.analysts[0].cert.read_bytes())
    assert authorize(site, config) is site
    assert authorize(analyst, config, roles=("analyst",)) is analyst
    with pytest.raises(IdentityError, match="needs a analyst"):
        authorize(site, config, roles=("analyst",))
    with pytest.raises(IdentityError, match="federation 'other'"):
        authorize(replace(site, federation="other"), config)
    with pytest.raises(IdentityError, match="not enrolled"):
        authorize(replace(site, name="site-9"), config)
    with pytest.raises(IdentityError, match="not enrolled"):
        authorize(replace(analyst, name="site-1"), config)  # an analyst certificate with a site's name
    with pytest.raises(IdentityError, match="coordinator"):
        authorize(peer_identity(federation.coordinator.cert.read_bytes()), config)


def test_authorize__reissued_certificate_refused_while_pinned(federation):
    config = load_coordinator_config(federation.coordinator.config)
    cert_pem, _ = issue_certificate(federation.path / "ca", "site-1", "site", valid_days=30)
    reissued = peer_identity(cert_pem)
    with pytest.raises(IdentityError, match="pins"):
        authorize(reissued, config)
    assert authorize(reissued, replace(config, fingerprints={})) is reissued
