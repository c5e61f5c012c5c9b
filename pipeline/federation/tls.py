"""Mutual TLS between the coordinator and its participants, and identity from certificates.

Both ends trust only the federation CA (never the system's CA store), require
TLS 1.2 or later, and present their certificate: the coordinator's server context
requires a client certificate (``CERT_REQUIRED``), so a connection without one, with
one from another CA, or with an expired one fails in the handshake. OpenSSL also
checks the extended key usage that ``genofed provision`` puts in each certificate: a
site's client certificate cannot serve as the coordinator, and the coordinator's
server certificate cannot log in as a site.

A verified handshake proves the peer holds a key the federation CA certified; who
the peer *is* comes from that certificate's subject (:func:`peer_identity`), and
whether it may do what it asks from the enrolment list and the federation roster in
use (:func:`authorize`).
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.errors import ConfigurationError, IdentityError
from pipeline.federation.config import ROLES, CoordinatorConfig

__all__ = [
    "Identity", "authorize", "certificate_validity", "client_context", "federation_of",
    "load_identity_key", "peer_identity", "server_context",
]


# OpenSSL's X509_V_ERR_* codes (ssl.SSLCertVerificationError.verify_code) that name a cause.
VERIFY_NOT_YET_VALID = 9
VERIFY_EXPIRED = 10
VERIFY_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})
VERIFY_HOSTNAME_MISMATCH = frozenset({62, 64})  # host name, IP address


@dataclass(frozen=True)
class Identity:
    """Who is at the other end of a verified connection.

    Attributes:
        name: participant name (certificate CN).
        role: ``coordinator``, ``site`` or ``analyst`` (certificate OU).
        federation: federation name (certificate O).
        fingerprint: SHA-256 of the certificate's DER, lowercase hex.
    """

    name: str
    role: str
    federation: str
    fingerprint: str


def _check_file(path: Path | str, what: str) -> str:
    if not Path(path).is_file():
        raise ConfigurationError(f"{path}: no such file; expected the {what} (PEM) written by genofed provision")
    return str(path)


def _load(context: ssl.SSLContext, cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    cert_file = _check_file(cert, "participant certificate")
    key_file = _check_file(key, "participant private key")
    ca_file = _check_file(ca, "federation CA certificate")
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as error:
        raise ConfigurationError(f"{ca_file}: not a PEM CA certificate ({error.reason or error})") from None
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except ssl.SSLError as error:
        raise ConfigurationError(
            f"{cert_file} / {key_file}: cannot load the certificate and key ({error.reason or error}); "
            "they must be the PEM pair genofed provision wrote for this participant"
        ) from None
    return context


def server_context(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    """The coordinator's TLS context: serves ``cert``, requires a client certificate from ``ca``.

    Raises:
        ConfigurationError: a file is missing, or the certificate and key do not match.
    """
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)


def client_context(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    """A site's or analyst's TLS context: presents ``cert``, trusts only the federation ``ca``.

    The server's host name is checked against its certificate (pass
    ``server_hostname=`` the host of the coordinator URL when wrapping the socket).

    Raises:
        ConfigurationError: a file is missing, or the certificate and key do not match.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return _load(context, cert, key, ca)


def _single(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str, fingerprint: str) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str) or not values[0].value:
        raise IdentityError(
            f"peer certificate {fingerprint[:16]}... has no single {label} in its subject; "
            "it was not issued by genofed provision"
        )
    return values[0].value


def federation_of(cert: x509.Certificate) -> str:
    """The federation a certificate belongs to: the single O of its subject.

    Works for the federation CA's certificate too (whose OU, ``ca``, is no participant
    role), so the CA and its participants are read by the same code.

    Raises:
        IdentityError: the subject has no single, non-empty O.
    """
    return _single(cert, NameOID.ORGANIZATION_NAME, "O (federation)", cert.fingerprint(hashes.SHA256()).hex())


def peer_identity(der_or_cert: bytes | x509.Certificate) -> Identity:
    """Reads the participant's identity from its certificate.

    Args:
        der_or_cert: the peer certificate, as DER bytes
            (``ssl_socket.getpeercert(binary_form=True)``), PEM bytes, or a
            :class:`cryptography.x509.Certificate`. Only call this on a certificate
            the TLS handshake verified.

    Raises:
        IdentityError: no certificate, or a subject without exactly one CN, O and a
            known role in OU.
    """
    if der_or_cert is None:
        raise IdentityError("the peer presented no certificate (the connection must use mutual TLS)")
    if isinstance(der_or_cert, x509.Certificate):
        cert = der_or_cert
    else:
        data = bytes(der_or_cert)
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
        except ValueError as error:
            raise IdentityError(f"the peer certificate cannot be parsed ({error})") from None
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    name = _single(cert, NameOID.COMMON_NAME, "CN (participant name)", fingerprint)
    federation = federation_of(cert)
    role = _single(cert, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)", fingerprint)
    if role not in ROLES:
        raise IdentityError(f"peer certificate for {name!r} has role {role!r}; expected one of {', '.join(ROLES)}")
    return Identity(name=name, role=role, federation=federation, fingerprint=fingerprint)


class RosterCheck(Protocol):
    """What :func:`authorize` asks of a roster (:class:`pipeline.federation.roster.Roster`, a floor above this module)."""

    def check_identity(self, identity: Identity) -> Any:
        """Raises :class:`IdentityError` unless ``identity``'s certificate is the one the roster lists."""


def authorize(
    identity: Identity, config: CoordinatorConfig, *, roles: Collection[str] = ("site", "analyst"),
    roster: RosterCheck | None = None,
) -> Identity:
    """Checks a verified peer against the coordinator's enrolment list and the federation roster.

    The peer must belong to this federation and carry one of ``roles``. With a
    ``roster`` (the one the coordinator uses now) the roster is the enrolment: its
    certificate must be the one the roster lists for that name and role, which also
    covers the pins of ``coordinator.toml`` (checked against the roster at start): a
    participant added since the start gets in, a certificate the operator revoked or
    renewed since is refused. Without one, it must be enrolled in ``coordinator.toml``
    under that name with that role and, where that file pins fingerprints, present
    exactly the pinned certificate.

    Returns:
        ``identity`` unchanged, so the call can wrap :func:`peer_identity`.

    Raises:
        IdentityError: saying which check failed.
    """
    if identity.federation != config.federation:
        raise IdentityError(
            f"{identity.name!r} belongs to federation {identity.federation!r}, not {config.federation!r}"
        )
    if identity.role not in roles:
        raise IdentityError(
            f"{identity.name!r} is a {identity.role}; this request needs a {' or '.join(sorted(roles))}"
        )
    if roster is not None:
        # The roster in use is the enrolment: a participant the operator added since the
        # start gets in once its roster is pushed, a revoked one no longer does.
        roster.check_identity(identity)
        return identity
    if config.role_of(identity.name) != identity.role:
        raise IdentityError(
            f"{identity.role} {identity.name!r} is not enrolled in {config.path} (add it to [enrolment])"
        )
    pinned = config.fingerprints.get(identity.name)
    if pinned is not None and pinned != identity.fingerprint:
        raise IdentityError(
            f"{identity.role} {identity.name!r} presented certificate {identity.fingerprint[:16]}..., "
            f"but {config.path} pins {pinned[:16]}... (update [fingerprints] after re-issuing)"
        )
    return identity


def load_identity_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """A participant's certificate key, which also signs what it vouches for (round keys, audit heads).

    Raises:
        ConfigurationError: the key file is unreadable or not an EC key.
    """
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigurationError(f"{path}: cannot read the certificate key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"{path}: the certificate key is {type(key).__name__}, expected an EC key")
    return key


def certificate_validity(path: Path | str) -> tuple[dt.datetime, dt.datetime]:
    """The ``(notBefore, notAfter)`` of a PEM certificate, in UTC.

    Raises:
        ConfigurationError: the file is unreadable or not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"{path}: cannot read the certificate ({error})") from None
    return cert.not_valid_before_utc, cert.not_valid_after_utc
