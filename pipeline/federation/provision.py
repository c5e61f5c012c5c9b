"""A federation's certificates and configuration files, made in one atomic step.

``genofed provision`` creates a federation CA (ECDSA P-256, which every TLS stack
accepts for both server and client authentication), the coordinator's server
certificate, one client certificate per site, analyst and operator, and a ready
configuration file per participant:

```
OUT/ca.pem                                   the federation CA certificate (public)
OUT/roster.json                              the federation roster, signed by the CA (public)
OUT/ca/ca.key, OUT/ca/ca.pem                 the CA's private key (0600): issuing only
OUT/coordinator/{cert.pem,key.pem,ca.pem,roster.json,coordinator.toml}
OUT/sites/<name>/{cert.pem,key.pem,ca.pem,roster.json,site.toml}
OUT/analysts/<name>/{cert.pem,key.pem,ca.pem,roster.json,analyst.toml}
OUT/operators/<name>/{cert.pem,key.pem,ca.pem,roster.json,operator.toml}   (with --operator)
```

Each participant folder is self-contained (the configuration refers to its files by
relative path) and is what the consortium operator hands to that participant. The CA
private key is needed only to issue certificates and must stay with the consortium
operator; whoever holds it can mint a certificate for any participant.

The roster (:mod:`pipeline.federation.roster`, version 1) lists every participant
with its certificate's fingerprint and public key, signed by the CA: it is the list
a site checks a job's participants and their round keys against without trusting
the coordinator, and the list the site agent and the coordinator check their own
certificate and enrolment against when they start.

Later changes use the same CA and folder: :func:`add_participant`, :func:`renew` and
:func:`revoke` (``genofed provision add-site | add-participant | renew | revoke --dir OUT``)
each sign the next roster version, copy it where version 1 went, and keep the
coordinator's enrolment and pins in ``coordinator.toml`` in step; :func:`push_roster`
hands a new roster to the running coordinator, which refuses from then on every
certificate it does not list.

A certificate's subject says who it belongs to: CN = participant name,
O = federation, OU = role (``coordinator``, ``site``, ``analyst`` or ``operator``). Extended key
usage restricts it to what that role does: the coordinator's certificate
authenticates a TLS server only (with the host as an IP or DNS name and ``localhost``
in its subjectAltName), the others authenticate TLS clients only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.errors import ConfigurationError, IdentityError, InputError
from pipeline.federation.analyst import analyst_connection
from pipeline.federation.config import (
    DEFAULT_PORT, ROLES, CoordinatorConfig, check_name, load_analyst_config, load_coordinator_config, render_toml,
)
from pipeline.federation.roster import ROSTER_FILE, Roster, RosterEntry, load_roster, make_roster, write_roster
from pipeline.federation.tls import federation_of
from pipeline.outputs import atomic_directory, atomic_file

__all__ = [
    "DEFAULT_ANALYSES",
    "Participant",
    "ProvisionManifest",
    "RosterChange",
    "add_participant",
    "fingerprint",
    "issue_certificate",
    "make_ca",
    "provision",
    "push_roster",
    "renew",
    "revoke",
]

DEFAULT_ANALYSES = ("census", "secure_sum")
"""Analyses a freshly provisioned site allows; each site edits ``[policy]`` to taste."""

_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Participant:
    """One provisioned participant: its folder, files and certificate fingerprint."""

    name: str
    role: str
    folder: Path
    cert: Path
    key: Path
    config: Path
    fingerprint: str
    not_after: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths as strings)."""
        return {
            "name": self.name, "role": self.role, "folder": str(self.folder), "cert": str(self.cert),
            "key": str(self.key), "config": str(self.config), "fingerprint": self.fingerprint,
            "not_after": self.not_after.isoformat(),
        }


@dataclass(frozen=True)
class ProvisionManifest:
    """What :func:`provision` created, with final paths (under ``path``)."""

    path: Path
    federation: str
    coordinator_url: str
    ca_cert: Path
    ca_key: Path
    roster: Path
    coordinator: Participant
    sites: tuple[Participant, ...]
    analysts: tuple[Participant, ...]
    operators: tuple[Participant, ...] = ()

    @property
    def participants(self) -> tuple[Participant, ...]:
        """The coordinator, then the sites, the analysts and the operators."""
        return (self.coordinator, *self.sites, *self.analysts, *self.operators)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path), "federation": self.federation, "coordinator_url": self.coordinator_url,
            "ca_cert": str(self.ca_cert), "ca_key": str(self.ca_key), "roster": str(self.roster),
            "coordinator": self.coordinator.to_dict(),
            "sites": [p.to_dict() for p in self.sites], "analysts": [p.to_dict() for p in self.analysts],
            "operators": [p.to_dict() for p in self.operators],
        }


# --------------------------------------------------------------------------- files


def _write_private(path: Path, data: bytes) -> None:
    """Writes a private key readable by its owner only (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (as :mod:`tls` reports peers)."""
    return cert.fingerprint(hashes.SHA256()).hex()


# --------------------------------------------------------------------------- certificates


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def make_ca(federation: str, *, valid_days: int) -> tuple[bytes, bytes]:
    """A self-signed federation CA: ``(cert_pem, key_pem)``.

    The CA signs leaf certificates only (path length 0); its subject is
    ``CN=<federation> CA, O=<federation>, OU=ca``.
    """
    check_name(federation, what="federation name")
    _check_days(valid_days)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{federation} CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ca"),
    ])
    start = _now() - _CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days) + _CLOCK_SKEW)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _check_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise ConfigurationError(f"valid_days must be a whole number of days >= 1, got {valid_days!r}")


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    for path in (cert_path, key_path):
        if not path.is_file():
            raise InputError(f"{path}: missing; expected the federation CA folder written by genofed provision (OUT/ca)")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as error:
        raise InputError(f"{cert_path}: not a PEM certificate ({error})") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise InputError(f"{key_path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise InputError(f"{key_path}: does not match the CA certificate {cert_path}")
    return cert, key


def _federation_of(cert: x509.Certificate) -> str:
    try:
        return federation_of(cert)
    except IdentityError:
        raise InputError("the CA certificate's subject has no single O= (federation name)") from None


def _subject_alt_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host != "localhost":
        names.append(x509.DNSName("localhost"))
    return names


def issue_certificate(
    ca_dir: Path | str,
    name: str,
    role: str,
    *,
    valid_days: int,
    not_before: dt.datetime | None = None,
    host: str | None = None,
) -> tuple[bytes, bytes]:
    """Issues a participant certificate signed by the federation CA in ``ca_dir``.

    Args:
        ca_dir: the folder with ``ca.pem`` and ``ca.key`` (``OUT/ca`` of provision).
        name: participant name (CN); letters, digits, ``_``, ``-``.
        role: ``coordinator`` (TLS server), ``site`` or ``analyst`` (TLS clients).
        valid_days: validity from ``not_before``.
        not_before: start of validity (UTC; default: now minus 5 minutes of clock
            skew). A date in the past with a short validity makes an expired
            certificate, for tests.
        host: the coordinator's address (IP or DNS name), required for role
            ``coordinator``; ``localhost`` is always added.

    Returns:
        ``(cert_pem, key_pem)``: the certificate and its new ECDSA P-256 key (PKCS#8).

    Raises:
        ConfigurationError: a bad name, role, validity or host.
        InputError: ``ca_dir`` does not hold a matching CA certificate and key.
    """
    check_name(name, what="participant name")
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    _check_days(valid_days)
    if role == "coordinator" and not host:
        raise ConfigurationError("a coordinator certificate needs host= (the address sites connect to)")
    ca_cert, ca_key = _load_ca(Path(ca_dir))
    federation = _federation_of(ca_cert)
    start = (not_before or (_now() - _CLOCK_SKEW)).astimezone(dt.timezone.utc)
    end = start + dt.timedelta(days=valid_days)
    if end > ca_cert.not_valid_after_utc:
        raise ConfigurationError(
            f"the certificate would expire {end:%Y-%m-%d}, after the federation CA ({ca_cert.not_valid_after_utc:%Y-%m-%d}); "
            "use fewer --days or provision a new CA"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "coordinator" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if role == "coordinator":
        assert host is not None
        builder = builder.add_extension(x509.SubjectAlternativeName(_subject_alt_names(host)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def _write_credentials(folder: Path, ca_dir: Path, name: str, role: str, *, valid_days: int,
                       host: str | None = None) -> x509.Certificate:
    """Issues ``name``'s certificate into ``folder``: ``cert.pem``, ``key.pem`` (0600) and the CA's ``ca.pem``."""
    cert_pem, key_pem = issue_certificate(ca_dir, name, role, valid_days=valid_days, host=host)
    _write_public(folder / "cert.pem", cert_pem)
    _write_private(folder / "key.pem", key_pem)
    shutil.copyfile(ca_dir / "ca.pem", folder / "ca.pem")
    return x509.load_pem_x509_certificate(cert_pem)


# --------------------------------------------------------------------------- configs

_HEADER = """genofed {role} configuration for federation {federation!r}, written by genofed provision.
Relative paths are resolved against the folder of this file.
{reference}"""
_REFERENCE = "Every key is explained in pipeline/federation/config.py of the genofed sources."


_COORDINATOR_COMMENTS = {
    "coordinator.host": "Address to listen on (GENOFED_COORDINATOR_HOST overrides); the certificate names this host.",
    "enrolment": "Who may connect: a certificate from the federation CA whose CN is listed with the role in its OU.\n"
                 "Analysts submit jobs and see their own; operators see every job and submit none.",
    "fingerprints": "Pinned certificates (SHA-256 of the DER), checked against the roster at start; genofed provision\n"
                    "renew and revoke keep them in step. While running, the roster in use decides.",
    "tls.roster": "The federation roster signed by the CA: every enrolled participant must be in it.",
}


def _render_coordinator_toml(federation: str, tables: dict[str, dict[str, Any]]) -> str:
    return render_toml(tables, header=_HEADER.format(role="coordinator", federation=federation, reference=_REFERENCE),
                       comments=_COORDINATOR_COMMENTS)


def _coordinator_toml(federation: str, host: str, port: int, sites: Sequence[str], analysts: Sequence[str],
                      fingerprints: dict[str, str], operators: Sequence[str] = ()) -> str:
    tables: dict[str, dict[str, Any]] = {
        "coordinator": {"federation": federation, "host": host, "port": port, "database": "coordinator.db",
                        "audit_log": "audit.log"},
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem", "roster": ROSTER_FILE},
        "enrolment": {"sites": list(sites), "analysts": list(analysts), "operators": list(operators)},
        "fingerprints": fingerprints,
    }
    return _render_coordinator_toml(federation, tables)


def _site_toml(federation: str, name: str, url: str, analyses: Sequence[str], share_variant_keys: bool,
               share_site_metrics: bool) -> str:
    tables: dict[str, dict[str, Any]] = {
        "site": {"name": name, "federation": federation, "coordinator_url": url, "dataset": "dataset",
                 "audit_log": "audit.log", "state_dir": "state", "poll_interval": 2.0},
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem", "roster": ROSTER_FILE},
        "policy": {"allowed_analyses": list(analyses), "min_samples": 10, "min_allele_count": 5,
                   "share_variant_keys": share_variant_keys, "share_site_metrics": share_site_metrics,
                   "threshold_rule": "two_thirds", "min_sites": 2, "max_sites": 1000, "max_round_reruns": 0,
                   "min_set_difference": 5},
    }
    comments = {
        "site.dataset": "The harmonized dataset made by: genofed ingest --out <this path>",
        "tls.roster": "The federation roster signed by the CA: who is in the federation, with their certificates.\n"
                      "This site's certificate must be in it under this site's name.",
        "policy": "What this site agrees to: only these analyses, never an aggregate over fewer than\n"
                  "min_samples of its samples, per-variant results only above min_allele_count;\n"
                  "share_variant_keys = true lets it reveal which variants it has (IDs, never counts);\n"
                  "share_site_metrics = true lets it reveal a trained model's metrics on its own held-out split;\n"
                  "threshold_rule: the least secret-sharing threshold it accepts, two_thirds (a coordinator that may\n"
                  "deviate) or majority (one trusted to follow the protocol); jobs of min_sites..max_sites sites only;\n"
                  "max_round_reruns: how often it takes part again in a round of a job after that round aborted;\n"
                  "min_set_difference: it declines a job whose contributing samples differ by fewer than this (but\n"
                  "at least one) from those of an earlier release.",
    }
    return render_toml(tables, header=_HEADER.format(
        role="site", federation=federation, reference="Every key is explained in sites/template/site.toml of the genofed sources."
    ), comments=comments)


def _analyst_toml(federation: str, name: str, url: str, role: str = "analyst") -> str:
    tables: dict[str, dict[str, Any]] = {
        role: {"name": name, "federation": federation, "coordinator_url": url},
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem"},
    }
    return render_toml(tables, header=_HEADER.format(role=role, federation=federation, reference=_REFERENCE))


_CA_README = """This folder holds the private key of the federation CA {federation!r}.

It is needed only to issue certificates (genofed provision). Whoever holds it can
mint a certificate for any participant, so it stays with the consortium operator:
never copy it to the coordinator, a site or an analyst, and keep it offline
(or on encrypted storage) once the federation is provisioned.
Participants need only ../ca.pem (the public CA certificate), already copied into
each participant's folder.
"""


def _check_participants(sites: Sequence[str], analysts: Sequence[str], operators: Sequence[str] = ()) -> None:
    if not sites:
        raise ConfigurationError("a federation needs at least one --site")
    seen: set[str] = {"coordinator"}
    for role, names in (("site", sites), ("analyst", analysts), ("operator", operators)):
        for name in names:
            check_name(name, what=f"{role} name")
            if name in seen:
                raise ConfigurationError(
                    f"participant name {name!r} is given twice or is reserved; every participant needs its own name"
                )
            seen.add(name)


def provision(
    out: Path | str,
    *,
    federation: str,
    sites: Sequence[str],
    analysts: Sequence[str] = ("analyst",),
    operators: Sequence[str] = (),
    coordinator_host: str = "127.0.0.1",
    coordinator_port: int = DEFAULT_PORT,
    valid_days: int = 365,
    allowed_analyses: Sequence[str] = DEFAULT_ANALYSES,
    share_variant_keys: bool = False,
    share_site_metrics: bool = False,
    force: bool = False,
) -> ProvisionManifest:
    """Creates a federation: CA, certificates, keys, the signed roster and one configuration per participant.

    The roster (version 1) lists every participant just issued; a copy of it is in
    every participant folder, and every site and coordinator configuration names it.
    Everything is written to a temporary folder renamed onto ``out`` at the end, so a
    failure leaves nothing behind. Private keys are created 0600.

    Args:
        out: the folder to create (layout in the module docstring).
        federation: the federation's name (the O= of every certificate).
        sites: site names; analysts: analyst names; operators: operator names,
            who may read every job's status and results (all names distinct).
        coordinator_host: the address sites and analysts connect to (IP or DNS name).
        coordinator_port: the coordinator's TCP port.
        valid_days: validity of every certificate (the CA's as well).
        allowed_analyses: the analyses each site's policy allows initially.
        share_variant_keys: the initial ``[policy] share_variant_keys`` of every site
            (whether it may reveal which variants it has, for the census).
        share_site_metrics: the initial ``[policy] share_site_metrics`` of every site
            (whether it may reveal a trained model's metrics on its own held-out split).
        force: replace an existing ``out``.

    Raises:
        ConfigurationError: bad or duplicate names, port or validity.
        OutputExistsError: ``out`` exists and ``force`` is false.
    """
    check_name(federation, what="federation name")
    _check_participants(sites, analysts, operators)
    if isinstance(coordinator_port, bool) or not isinstance(coordinator_port, int) or not 1 <= coordinator_port <= 65535:
        raise ConfigurationError(f"coordinator port must be 1-65535, got {coordinator_port!r}")
    if not coordinator_host or any(c.isspace() or c in "/[]" for c in coordinator_host):
        raise ConfigurationError(f"coordinator host {coordinator_host!r} is not an IP address or a DNS name")
    for analysis in allowed_analyses:
        check_name(analysis, what="analysis name")
    _check_days(valid_days)
    host_in_url = f"[{coordinator_host}]" if ":" in coordinator_host else coordinator_host
    url = f"https://{host_in_url}:{coordinator_port}"
    target = Path(out)

    with atomic_directory(target, force=force) as tmp:
        ca_pem, ca_key_pem = make_ca(federation, valid_days=valid_days)
        (tmp / "ca").mkdir(mode=0o700)
        _write_private(tmp / "ca" / "ca.key", ca_key_pem)
        _write_public(tmp / "ca" / "ca.pem", ca_pem)
        (tmp / "ca" / "README.txt").write_text(_CA_README.format(federation=federation))
        _write_public(tmp / "ca.pem", ca_pem)

        issued: dict[tuple[str, str], tuple[Path, x509.Certificate]] = {}

        def issue(name: str, role: str, folder: Path, config_name: str, config: str | None = None) -> None:
            folder.mkdir(parents=True)
            cert = _write_credentials(folder, tmp / "ca", name, role, valid_days=valid_days,
                                      host=coordinator_host if role == "coordinator" else None)
            if config is not None:
                (folder / config_name).write_text(config)
            issued[(role, name)] = (folder.relative_to(tmp), cert)

        for name in sites:
            issue(name, "site", tmp / "sites" / name, "site.toml", _site_toml(federation, name, url, allowed_analyses, share_variant_keys, share_site_metrics))
        for name in analysts:
            issue(name, "analyst", tmp / "analysts" / name, "analyst.toml", _analyst_toml(federation, name, url))
        for name in operators:
            issue(name, "operator", tmp / "operators" / name, "operator.toml", _analyst_toml(federation, name, url, "operator"))
        issue("coordinator", "coordinator", tmp / "coordinator", "coordinator.toml")
        pins = {name: fingerprint(cert) for (role, name), (_, cert) in issued.items() if role != "coordinator"}
        (tmp / "coordinator" / "coordinator.toml").write_text(
            _coordinator_toml(federation, coordinator_host, coordinator_port, sites, analysts, pins, operators)
        )
        _, ca_key = _load_ca(tmp / "ca")
        roster = make_roster(federation, 1, [RosterEntry.from_certificate(cert) for _, cert in issued.values()], ca_key)
        write_roster(tmp / ROSTER_FILE, roster)
        for folder, _ in issued.values():
            shutil.copyfile(tmp / ROSTER_FILE, tmp / folder / ROSTER_FILE)

    def participant(role: str, name: str, config_name: str) -> Participant:
        relative, cert = issued[(role, name)]
        folder = target / relative
        return Participant(
            name=name, role=role, folder=folder, cert=folder / "cert.pem", key=folder / "key.pem",
            config=folder / config_name, fingerprint=fingerprint(cert), not_after=cert.not_valid_after_utc,
        )

    return ProvisionManifest(
        path=target, federation=federation, coordinator_url=url, ca_cert=target / "ca.pem",
        ca_key=target / "ca" / "ca.key", roster=target / ROSTER_FILE,
        coordinator=participant("coordinator", "coordinator", "coordinator.toml"),
        sites=tuple(participant("site", n, "site.toml") for n in sites),
        analysts=tuple(participant("analyst", n, "analyst.toml") for n in analysts),
        operators=tuple(participant("operator", n, "operator.toml") for n in operators),
    )


# --------------------------------------------------------------------------- changing a provisioned federation

_FOLDERS = {"site": ("sites", "site.toml"), "analyst": ("analysts", "analyst.toml"), "operator": ("operators", "operator.toml")}
_ENROLMENT_KEYS = {"site": "sites", "analyst": "analysts", "operator": "operators"}


@dataclass(frozen=True)
class RosterChange:
    """What :func:`add_participant`, :func:`renew` or :func:`revoke` changed in a provisioned federation.

    Attributes:
        path: the federation folder (``OUT`` of :func:`provision`).
        action: ``added``, ``renewed`` or ``revoked``.
        name, role: the participant changed.
        version, previous_version: the new roster's version and the one it replaces.
        roster: the new roster (``OUT/roster.json``).
        copies: the participant folders that got a copy of it.
        coordinator_config: ``OUT/coordinator/coordinator.toml``, whose enrolment and
            pins follow the roster.
        participant: the new folder and certificate (``None`` when revoked).
    """

    path: Path
    federation: str
    action: str
    name: str
    role: str
    version: int
    previous_version: int
    roster: Path
    copies: tuple[Path, ...]
    coordinator_config: Path
    participant: Participant | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path), "federation": self.federation, "action": self.action, "name": self.name,
            "role": self.role, "version": self.version, "previous_version": self.previous_version,
            "roster": str(self.roster), "copies": [str(c) for c in self.copies],
            "coordinator_config": str(self.coordinator_config),
            "participant": self.participant.to_dict() if self.participant is not None else None,
        }


@dataclass(frozen=True)
class _Federation:
    """A provisioned federation folder, opened with its CA key and checked roster."""

    root: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    roster: Roster
    coordinator: CoordinatorConfig

    @property
    def federation(self) -> str:
        return self.roster.federation

    def valid_days(self, days: int | None) -> int:
        """``days``, or by default a year, at most until the CA expires (a certificate cannot outlive it)."""
        if days is not None:
            return days
        left = (self.ca_cert.not_valid_after_utc - (_now() - _CLOCK_SKEW)).days
        if left < 1:
            raise ConfigurationError(f"the federation CA expires {self.ca_cert.not_valid_after_utc:%Y-%m-%d}: provision a new federation")
        return min(365, left)

    def folder(self, role: str, name: str) -> tuple[Path, str]:
        """A participant's folder and configuration file name, as :func:`provision` lays them out."""
        if role == "coordinator":
            return self.root / "coordinator", "coordinator.toml"
        plural, config_name = _FOLDERS[role]
        return self.root / plural / name, config_name

    def entry(self, name: str, role: str | None) -> RosterEntry:
        """The roster entry of ``name`` (with ``role``, if given)."""
        matches = [e for e in self.roster.participants if e.name == name and role in (None, e.role)]
        if len(matches) != 1:
            what = f"{role} {name!r}" if role else repr(name)
            raise ConfigurationError(
                f"{what} is not in the federation roster {self.roster.path} (version {self.roster.version})"
                if not matches else f"{name!r} is in the roster as {' and '.join(e.role for e in matches)}: pass --role"
            )
        return matches[0]


def _open_federation(out: Path | str) -> _Federation:
    """The federation in ``out``, refusing a folder whose CA, roster or coordinator configuration does not fit."""
    root = Path(out)
    ca_cert, ca_key = _load_ca(root / "ca")
    if not (root / "ca.pem").is_file() or (root / "ca.pem").read_bytes() != (root / "ca" / "ca.pem").read_bytes():
        raise InputError(f"{root / 'ca.pem'}: missing or not the CA of {root / 'ca'}; expected a folder written by genofed provision")
    roster = load_roster(root / ROSTER_FILE, root / "ca" / "ca.pem")
    coordinator = load_coordinator_config(root / "coordinator" / "coordinator.toml", check_files=False, env={})
    if _federation_of(ca_cert) != roster.federation or coordinator.federation != roster.federation:
        raise InputError(f"{root}: the CA, roster and coordinator.toml name different federations")
    return _Federation(root=root, ca_cert=ca_cert, ca_key=ca_key, roster=roster, coordinator=coordinator)


def _next_roster(fed: _Federation, entries: Sequence[RosterEntry]) -> tuple[Roster, tuple[Path, ...]]:
    """Signs roster version N+1 of ``entries``; writes it where :func:`provision` put version 1, and in each listed participant's folder."""
    signed = make_roster(fed.federation, fed.roster.version + 1, entries, fed.ca_key)
    write_roster(fed.root / ROSTER_FILE, signed)
    copies = []
    for entry in entries:
        folder, _ = fed.folder(entry.role, entry.name)
        if folder.is_dir():
            write_roster(folder / ROSTER_FILE, signed)
            copies.append(folder)
    return load_roster(fed.root / ROSTER_FILE, fed.root / "ca" / "ca.pem"), tuple(copies)


def _enrol(fed: _Federation, role: str, name: str, pin: str | None) -> None:
    """Enrols ``name`` in ``OUT/coordinator/coordinator.toml`` with ``pin`` as its fingerprint, or with ``None`` removes it.

    Every other key of the file, the operator's own edits included, stays as it is.
    """
    path = fed.coordinator.path
    tables: dict[str, dict[str, Any]] = {key: dict(value) for key, value in tomllib.loads(path.read_text()).items()}
    enrolment, pins = tables.setdefault("enrolment", {}), tables.setdefault("fingerprints", {})
    key = _ENROLMENT_KEYS[role]
    names = [n for n in enrolment.get(key, []) if n != name or pin is not None]
    if pin is None:
        pins.pop(name, None)
    else:
        if name not in names:
            names.append(name)
        if pins or name in pins:
            pins[name] = pin
    enrolment[key] = names
    with atomic_file(path, force=True) as tmp:
        tmp.write_text(_render_coordinator_toml(fed.federation, tables))


def _participant(fed: _Federation, role: str, name: str, cert: x509.Certificate) -> Participant:
    folder, config_name = fed.folder(role, name)
    return Participant(name=name, role=role, folder=folder, cert=folder / "cert.pem", key=folder / "key.pem",
                       config=folder / config_name, fingerprint=fingerprint(cert), not_after=cert.not_valid_after_utc)


def _change(fed: _Federation, action: str, entry: RosterEntry, roster: Roster, copies: tuple[Path, ...],
            participant: Participant | None) -> RosterChange:
    return RosterChange(
        path=fed.root, federation=fed.federation, action=action, name=entry.name, role=entry.role, version=roster.version,
        previous_version=fed.roster.version, roster=fed.root / ROSTER_FILE, copies=copies,
        coordinator_config=fed.coordinator.path, participant=participant,
    )


def add_participant(
    out: Path | str,
    name: str,
    *,
    role: str = "site",
    valid_days: int | None = None,
    allowed_analyses: Sequence[str] = DEFAULT_ANALYSES,
    share_variant_keys: bool = False,
    share_site_metrics: bool = False,
    force: bool = False,
) -> RosterChange:
    """Adds a site, analyst or operator to a provisioned federation, with a certificate from its existing CA.

    Writes the participant's folder as :func:`provision` does, signs roster version
    N+1 that lists it, copies the roster into every participant folder and enrols it
    in ``OUT/coordinator/coordinator.toml`` (the coordinator takes up a new enrolment
    when it restarts).

    Args:
        out: the folder :func:`provision` wrote.
        name: the new participant's name (not in the roster yet).
        role: ``site``, ``analyst`` or ``operator``.
        valid_days: validity of its certificate (default: a year, at most until the CA expires).
        allowed_analyses, share_variant_keys, share_site_metrics: a new site's initial
            policy (as for :func:`provision`).
        force: replace an existing folder of that name (say, of a revoked participant).

    Raises:
        ConfigurationError: a bad name or role, or a name already in the roster.
        InputError: ``out`` is not a provisioned federation.
        OutputExistsError: the participant's folder exists and ``force`` is false.
    """
    check_name(name, what="participant name")
    if role not in _FOLDERS:
        raise ConfigurationError(f"a participant added later is a site, analyst or operator, not {role!r}")
    for analysis in allowed_analyses:
        check_name(analysis, what="analysis name")
    fed = _open_federation(out)
    valid_days = fed.valid_days(valid_days)
    _check_days(valid_days)
    taken = [e.role for e in fed.roster.participants if e.name == name]
    if taken or name == "coordinator":
        raise ConfigurationError(
            f"{name!r} is already in the federation roster (version {fed.roster.version}) as {taken[0] if taken else 'coordinator'}; "
            "every participant needs its own name (use genofed provision renew for a new certificate)"
        )
    folder, config_name = fed.folder(role, name)
    url = fed.coordinator.url
    with atomic_directory(folder, force=force) as tmp:
        cert = _write_credentials(tmp, fed.root / "ca", name, role, valid_days=valid_days)
        config = (_site_toml(fed.federation, name, url, allowed_analyses, share_variant_keys, share_site_metrics)
                  if role == "site" else _analyst_toml(fed.federation, name, url, role))
        (tmp / config_name).write_text(config)
    entry = RosterEntry.from_certificate(cert)
    roster, copies = _next_roster(fed, [*fed.roster.participants, entry])
    _enrol(fed, role, name, entry.fingerprint)
    return _change(fed, "added", entry, roster, copies, _participant(fed, role, name, cert))


def renew(out: Path | str, name: str, *, role: str | None = None, valid_days: int | None = None) -> RosterChange:
    """Issues a participant a new certificate and key; roster version N+1 lists only the new one.

    The new ``cert.pem`` and ``key.pem`` replace the old ones in the participant's
    folder; once the coordinator has the new roster, the old certificate is refused.

    Args:
        out: the folder :func:`provision` wrote.
        name: a participant of the roster (the coordinator too: it then needs a restart
            with its new files).
        role: its role, where the name alone is ambiguous.
        valid_days: validity of the new certificate (default: a year, at most until the CA expires).

    Raises:
        ConfigurationError: no such participant, or a bad validity.
        InputError: ``out`` is not a provisioned federation, or the participant's
            folder is missing.
    """
    fed = _open_federation(out)
    valid_days = fed.valid_days(valid_days)
    _check_days(valid_days)
    old = fed.entry(name, role)
    folder, _ = fed.folder(old.role, name)
    if not folder.is_dir():
        raise InputError(f"{folder}: missing; renew writes the new certificate into the participant's folder")
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.renew-", dir=folder.parent))
    try:
        cert = _write_credentials(scratch, fed.root / "ca", name, old.role, valid_days=valid_days,
                                  host=fed.coordinator.host if old.role == "coordinator" else None)
        for file in ("key.pem", "cert.pem"):
            os.replace(scratch / file, folder / file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    entry = RosterEntry.from_certificate(cert)
    roster, copies = _next_roster(fed, [*(e for e in fed.roster.participants if e != old), entry])
    if old.role != "coordinator":
        _enrol(fed, old.role, name, entry.fingerprint)
    return _change(fed, "renewed", entry, roster, copies, _participant(fed, old.role, name, cert))


def revoke(out: Path | str, name: str, *, role: str | None = None) -> RosterChange:
    """Removes a participant from the federation: roster version N+1 no longer lists it.

    Its certificate stays valid for TLS until it expires, but the coordinator refuses
    it once it has the new roster, and sites refuse rounds and keys of a site it no
    longer lists. Its folder is left as it is (without the new roster).

    Raises:
        ConfigurationError: no such participant, or the coordinator (renew it instead).
        InputError: ``out`` is not a provisioned federation.
    """
    fed = _open_federation(out)
    entry = fed.entry(name, role)
    if entry.role == "coordinator":
        raise ConfigurationError("the coordinator cannot be revoked: renew its certificate instead")
    roster, copies = _next_roster(fed, [e for e in fed.roster.participants if e != entry])
    _enrol(fed, entry.role, name, None)
    return _change(fed, "revoked", entry, roster, copies, None)


def push_roster(config_path: Path | str, roster_path: Path | str) -> dict[str, Any]:
    """Sends a roster to the coordinator (``PUT /v1/roster``) as an operator; returns its answer.

    The roster is verified here first, against the operator's own CA certificate, so
    a wrong or edited file is refused before anything is sent.

    Raises:
        ConfigurationError: the configuration is not an operator's, or the roster is
            not signed by the federation CA.
        ProtocolError: the coordinator refused it (not newer, say) or did not answer.
    """
    config = load_analyst_config(config_path)
    if config.role != "operator":
        raise ConfigurationError(
            f"{config.path}: an {config.role}'s configuration; only an operator installs rosters (operator.toml of "
            "genofed provision --operator NAME, or genofed provision add-participant --role operator)"
        )
    roster = load_roster(roster_path, config.ca)
    with analyst_connection(config.path) as connection:
        answer = connection.request("PUT", "/v1/roster", content=Path(roster_path).read_bytes(),
                                    headers={"content-type": "application/json"}).json()
    return {"coordinator": config.coordinator_url, "roster": str(roster_path), "federation": roster.federation, **answer}
