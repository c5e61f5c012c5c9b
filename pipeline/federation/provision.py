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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pipeline.errors import ConfigurationError, IdentityError, InputError
from pipeline.federation.config import DEFAULT_PORT, ROLES, check_name, render_toml
from pipeline.federation.roster import (
    ROSTER_FILE,
    RosterEntry,
    make_roster,
    write_roster,
)
from pipeline.federation.tls import federation_of
from pipeline.outputs import atomic_directory

__all__ = [
    "DEFAULT_ANALYSES",
    "Participant",
    "ProvisionManifest",
    "fingerprint",
    "issue_certificate",
    "make_ca",
    "provision",
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


# --------------------------------------------------------------------------- configs

_HEADER = """genofed {role} configuration for federation {federation!r}, written by genofed provision.
Relative paths are resolved against the folder of this file.
{reference}"""
_REFERENCE = "Every key is explained in pipeline/federation/config.py of the genofed sources."


def _coordinator_toml(federation: str, host: str, port: int, sites: Sequence[str], analysts: Sequence[str],
                      fingerprints: dict[str, str], operators: Sequence[str] = ()) -> str:
    tables: dict[str, dict[str, Any]] = {
        "coordinator": {"federation": federation, "host": host, "port": port, "database": "coordinator.db",
                        "audit_log": "audit.log"},
        "tls": {"cert": "cert.pem", "key": "key.pem", "ca": "ca.pem", "roster": ROSTER_FILE},
        "enrolment": {"sites": list(sites), "analysts": list(analysts), "operators": list(operators)},
        "fingerprints": fingerprints,
    }
    comments = {
        "coordinator.host": "Address to listen on (GENOFED_COORDINATOR_HOST overrides); the certificate names this host.",
        "enrolment": "Who may connect: a certificate from the federation CA whose CN is listed with the role in its OU.\n"
                     "Analysts submit jobs and see their own; operators see every job and submit none.",
        "fingerprints": "Pinned certificates (SHA-256 of the DER): a re-issued certificate is refused until updated here.",
        "tls.roster": "The federation roster signed by the CA: every enrolled participant must be in it.",
    }
    return render_toml(tables, header=_HEADER.format(role="coordinator", federation=federation, reference=_REFERENCE), comments=comments)


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
            cert_pem, key_pem = issue_certificate(
                tmp / "ca", name, role, valid_days=valid_days,
                host=coordinator_host if role == "coordinator" else None,
            )
            _write_public(folder / "cert.pem", cert_pem)
            _write_private(folder / "key.pem", key_pem)
            shutil.copyfile(tmp / "ca.pem", folder / "ca.pem")
            if config is not None:
                (folder / config_name).write_text(config)
            issued[(role, name)] = (folder.relative_to(tmp), x509.load_pem_x509_certificate(cert_pem))

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
