"""The federation roster: who is in a federation, with which certificate, signed by its CA.

A certificate from the federation CA proves that the CA issued it, not that its holder
is the participant a configuration file claims to be, nor that a key the coordinator
relays belongs to the site it names. The roster closes both gaps. ``genofed provision``
writes it once (version 1) and copies it into every participant folder; it lists every
participant's name, role, certificate fingerprint and certificate public key, and the
CA signs it, so no one without the CA key (in particular not the coordinator, which
relays every round's keys) can add, drop or swap an entry unnoticed:

- a site agent refuses to start unless its own certificate is the one the roster lists
  under the name in its ``site.toml`` (:func:`check_own_identity`): a site can only
  contribute as itself;
- the coordinator refuses to start unless every site and analyst it enrols is in the
  roster (:func:`check_enrolment`);
- a site checks each round's key advertisements against the certificate keys of its
  own copy of the roster (:meth:`Roster.public_key`), never against keys from the wire
  (DESIGN.md, security model: the active variant of Bonawitz et al.).

The operator changes the federation with ``genofed provision add-site``, ``renew`` and
``revoke``, each of which signs the next version; a revoked participant is simply not in
it, and a renewed one is listed with its new certificate. A roster is only ever replaced
by a newer one signed by the same CA (:func:`install_roster`): the coordinator takes it
from the operator (``PUT /v1/roster``) and refuses, from then on, every certificate it
does not list (:meth:`Roster.check_identity`); a site fetches it from the coordinator
but verifies it itself, so a coordinator can neither forge one nor replay an old one.

``roster.json``::

    {"format": "genofed-roster/1", "federation": NAME, "version": 1,
     "issued": "2025-01-01T12:00:00Z",
     "participants": [{"name", "role", "fingerprint", "public_key"}, ...],
     "signature": BASE64}

Participants are sorted by role, then name; ``fingerprint`` is the SHA-256 of the
certificate's DER in lowercase hex (as :func:`pipeline.federation.tls.peer_identity`
reports it), ``public_key`` the base64 of the certificate's public key (DER
SubjectPublicKeyInfo). ``signature`` is ECDSA P-256 / SHA-256 by the CA's key over the
canonical JSON (sorted keys, no spaces, ASCII) of every other key, signed
deterministically (RFC 6979): the same roster always has the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.errors import ConfigurationError, GenofedError, IdentityError
from pipeline.federation.config import ROLES, CoordinatorConfig, SiteConfig, check_name
from pipeline.federation.tls import Identity, federation_of, peer_identity
from pipeline.outputs import write_private

__all__ = [
    "FORMAT",
    "ROSTER_FILE",
    "Roster",
    "RosterEntry",
    "check_enrolment",
    "check_own_identity",
    "install_roster",
    "load_roster",
    "make_roster",
    "write_roster",
]

FORMAT = "genofed-roster/1"
"""The ``format`` of the rosters this version reads and writes."""

ROSTER_FILE = "roster.json"
"""The roster's file name in a provisioned federation and in every participant folder."""

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_KEYS = frozenset({"format", "federation", "version", "issued", "participants", "signature"})
_ENTRY_KEYS = frozenset({"name", "role", "fingerprint", "public_key"})
_SIGNATURE = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_GET_ONE = "use the roster.json genofed provision wrote for this federation (re-run genofed provision, or copy it from the operator)"


@dataclass(frozen=True)
class RosterEntry:
    """One participant of the roster.

    Attributes:
        name: the participant's name (its certificate's CN).
        role: ``coordinator``, ``site`` or ``analyst`` (its certificate's OU).
        fingerprint: SHA-256 of its certificate's DER, lowercase hex.
        public_key: its certificate's public key, DER SubjectPublicKeyInfo.
    """

    name: str
    role: str
    fingerprint: str
    public_key: bytes

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> RosterEntry:
        """The entry of a participant certificate issued by ``genofed provision``.

        Raises:
            IdentityError: the subject has no single CN, O and known role in OU.
        """
        identity = peer_identity(cert)
        public_key = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(name=identity.name, role=identity.role, fingerprint=identity.fingerprint, public_key=public_key)

    def to_json(self) -> dict[str, str]:
        """The entry as it is written in ``roster.json``."""
        return {
            "name": self.name, "role": self.role, "fingerprint": self.fingerprint,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
        }


@dataclass(frozen=True)
class Roster:
    """A verified federation roster (made only by :func:`load_roster`).

    Attributes:
        federation: the federation's name (the O of its CA).
        version: the roster's version (1 at provisioning).
        issued: when the CA signed it (UTC).
        participants: the entries, sorted by role, then name.
        path: the file it was read from (for messages).
        signed: the signed JSON object it was verified from, to hand on as it is.
    """

    federation: str
    version: int
    issued: dt.datetime
    participants: tuple[RosterEntry, ...]
    path: Path | None = field(default=None, compare=False)
    signed: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def _where(self) -> str:
        return f"the roster {self.path}" if self.path is not None else f"the roster of federation {self.federation!r}"

    def entry(self, name: str, role: str) -> RosterEntry:
        """The entry of ``role`` ``name``.

        Raises:
            ConfigurationError: no such participant in the roster.
        """
        entry = self._find(name, role)
        if entry is not None:
            return entry
        raise ConfigurationError(
            f"{role} {name!r} is not in {self._where()} (version {self.version}); only the participants "
            "the federation CA listed can take part: ask the consortium operator to provision it"
        )

    def public_key(self, name: str, role: str = "site") -> bytes:
        """The certificate public key (DER SubjectPublicKeyInfo) of ``role`` ``name``.

        Raises:
            ConfigurationError: no such participant in the roster.
        """
        return self.entry(name, role).public_key

    def names(self, role: str) -> tuple[str, ...]:
        """The names of the participants with ``role``, sorted."""
        return tuple(entry.name for entry in self.participants if entry.role == role)

    @property
    def sites(self) -> tuple[str, ...]:
        """The sites' names, sorted."""
        return self.names("site")

    @property
    def analysts(self) -> tuple[str, ...]:
        """The analysts' names, sorted."""
        return self.names("analyst")

    def check_certificate(self, name: str, role: str, cert: bytes | x509.Certificate) -> RosterEntry:
        """Checks that ``cert`` is the certificate the roster lists for ``role`` ``name``.

        The subject's CN, OU and O must be ``name``, ``role`` and the roster's
        federation, and the certificate's fingerprint (which covers its public key)
        the roster's.

        Args:
            name: the participant's name.
            role: its role.
            cert: the certificate, PEM or DER bytes or a parsed certificate.

        Returns:
            The roster's entry.

        Raises:
            ConfigurationError: ``role`` ``name`` is not in the roster.
            IdentityError: the certificate is another participant's, of another
                federation, or not the one the roster lists (re-issued or forged).
        """
        entry = self.entry(name, role)
        identity = peer_identity(cert)
        if (identity.name, identity.role) != (name, role):
            raise IdentityError(
                f"the certificate is {identity.role} {identity.name!r}'s (CN={identity.name}, OU={identity.role}), "
                f"not {role} {name!r}'s"
            )
        if identity.federation != self.federation:
            raise IdentityError(
                f"the certificate of {role} {name!r} is of federation {identity.federation!r}, not {self.federation!r}"
            )
        if identity.fingerprint != entry.fingerprint:
            raise IdentityError(
                f"the certificate of {role} {name!r} ({identity.fingerprint[:16]}...) is not the one {self._where()} "
                f"lists ({entry.fingerprint[:16]}...); a re-issued certificate needs a new roster from the operator"
            )
        return entry

    def check_identity(self, identity: Identity) -> RosterEntry:
        """Checks that a verified peer presented the certificate this roster lists for its name and role.

        The coordinator asks this of every request, so a certificate the operator
        revoked or replaced stops working as soon as the roster without it is installed.

        Raises:
            IdentityError: the participant is not in this roster (revoked, or never
                provisioned) or presented another certificate (replaced by a renewal).
        """
        entry = self._find(identity.name, identity.role)
        if entry is None:
            raise IdentityError(
                f"{identity.role} {identity.name!r} is not in the federation roster (version {self.version}): its certificate "
                "was revoked (or never provisioned); ask the consortium operator"
            )
        if entry.fingerprint != identity.fingerprint:
            raise IdentityError(
                f"{identity.role} {identity.name!r} presented certificate {identity.fingerprint[:16]}..., but the "
                f"federation roster (version {self.version}) lists {entry.fingerprint[:16]}...: this certificate was "
                "replaced or revoked; use the certificate the operator issued with that roster"
            )
        return entry

    def _find(self, name: str, role: str) -> RosterEntry | None:
        return next((entry for entry in self.participants if entry.name == name and entry.role == role), None)


# --------------------------------------------------------------------------- writing


def _canonical(body: Mapping[str, Any]) -> bytes:
    """The bytes the CA signs: canonical JSON (sorted keys, no spaces, ASCII)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _timestamp(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ConfigurationError(f"the roster's issued time must be timezone-aware (UTC), got {moment!r}")
    return moment.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigurationError(f"a roster version is a whole number >= 1, got {version!r}")
    return version


def make_roster(
    federation: str,
    version: int,
    entries: Iterable[RosterEntry],
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    issued: dt.datetime | None = None,
) -> dict[str, Any]:
    """A roster signed by the federation CA, as the JSON object of ``roster.json``.

    Args:
        federation: the federation's name (the O of the CA whose key signs).
        version: the roster's version, >= 1 (provision writes 1).
        entries: the participants, in any order (written sorted by role, then name).
        ca_key: the federation CA's private key (ECDSA P-256).
        issued: the signing time (default: now, UTC).

    Returns:
        The signed roster; write it with :func:`write_roster`.

    Raises:
        ConfigurationError: a bad name, role, fingerprint or version, a participant
            listed twice, or a CA key that is not ECDSA P-256.
    """
    check_name(federation, what="federation name")
    _check_version(version)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.curve.name != "secp256r1":
        raise ConfigurationError("the roster is signed by the federation CA's ECDSA P-256 key (OUT/ca/ca.key of genofed provision)")
    participants: dict[tuple[str, str], RosterEntry] = {}
    for entry in entries:
        check_name(entry.name, what="participant name")
        if entry.role not in ROLES:
            raise ConfigurationError(f"participant {entry.name!r} has role {entry.role!r}; expected one of {', '.join(ROLES)}")
        if not _FINGERPRINT.fullmatch(entry.fingerprint) or not entry.public_key:
            raise ConfigurationError(f"participant {entry.name!r} needs a SHA-256 fingerprint (64 lowercase hex) and a public key")
        if (entry.role, entry.name) in participants:
            raise ConfigurationError(f"{entry.role} {entry.name!r} is listed twice; a roster lists each participant once")
        participants[(entry.role, entry.name)] = entry
    body: dict[str, Any] = {
        "format": FORMAT,
        "federation": federation,
        "version": version,
        "issued": _timestamp(issued or dt.datetime.now(dt.timezone.utc)),
        "participants": [participants[key].to_json() for key in sorted(participants)],
    }
    signature = ca_key.sign(_canonical(body), _SIGNATURE)
    return {**body, "signature": base64.b64encode(signature).decode("ascii")}


def write_roster(path: Path | str, roster: Mapping[str, Any]) -> None:
    """Writes a signed roster (from :func:`make_roster`) as indented JSON, readable by all.

    The file is replaced atomically (written beside it, synced, renamed), so a reader,
    or a crash, sees the old roster or the new one, never half of one. The layout on
    disk does not matter: the signature covers the canonical form.
    """
    path = Path(path)
    write_private(path, (json.dumps(roster, indent=2, sort_keys=True) + "\n").encode("ascii"))
    path.chmod(0o644)


# --------------------------------------------------------------------------- reading


def _ca(ca_cert_path: Path) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The federation CA's public key and federation name."""
    try:
        data = ca_cert_path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(
            f"{ca_cert_path}: no such file; expected the federation CA certificate (ca.pem) written by genofed provision"
        ) from None
    except OSError as error:
        raise ConfigurationError(f"{ca_cert_path}: cannot read: {error.strerror}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as error:
        raise ConfigurationError(f"{ca_cert_path}: not a PEM certificate ({error}); expected the federation CA's ca.pem") from None
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError(f"{ca_cert_path}: not an ECDSA CA certificate; expected the ca.pem genofed provision wrote")
    try:
        return key, federation_of(cert)
    except IdentityError:
        raise ConfigurationError(
            f"{ca_cert_path}: the CA certificate's subject has no single O= (federation name); expected the ca.pem genofed provision wrote"
        ) from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"{path}: no such file; expected the federation roster that genofed provision writes into every "
            f"participant folder: {_GET_ONE}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{path}: cannot read the roster ({error}); {_GET_ONE}") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise ConfigurationError(f"{path}: not valid JSON ({error}); {_GET_ONE}") from None


def _parse_entry(path: Path | str, index: int, value: Any) -> RosterEntry:
    where = f"{path}: participants[{index}]"
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: expected an object with {', '.join(sorted(_ENTRY_KEYS))}, got {value!r}")
    if set(value) != _ENTRY_KEYS:
        raise ConfigurationError(f"{where}: expected exactly the keys {', '.join(sorted(_ENTRY_KEYS))}, got {', '.join(sorted(value))}")
    name, role, fingerprint, public_key = value["name"], value["role"], value["fingerprint"], value["public_key"]
    try:
        check_name(name, what="participant name")
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}.name: {error}") from None
    if role not in ROLES:
        raise ConfigurationError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigurationError(f"{where}.fingerprint: expected a SHA-256 fingerprint (64 lowercase hex digits), got {fingerprint!r}")
    try:
        key = base64.b64decode(public_key, validate=True) if isinstance(public_key, str) else b""
        serialization.load_der_public_key(key)
    except (binascii.Error, ValueError, TypeError):
        raise ConfigurationError(f"{where}.public_key: expected base64 of a DER SubjectPublicKeyInfo") from None
    return RosterEntry(name=name, role=role, fingerprint=fingerprint, public_key=key)


def _parse_roster(path: Path | str, data: dict[str, Any], *, file: Path | None) -> Roster:
    """The verified roster's content, checked key by key (``path`` names it in messages)."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigurationError(f"{path}: unknown key {unknown[0]!r}; a {FORMAT} roster has only {', '.join(sorted(_KEYS))}")
    try:
        federation = check_name(data.get("federation", ""), what="federation name")
        version = _check_version(data.get("version"))
    except ConfigurationError as error:
        raise ConfigurationError(f"{path}: {error}") from None
    issued_text = data.get("issued")
    try:
        issued = dt.datetime.fromisoformat(issued_text) if isinstance(issued_text, str) else None
    except ValueError:
        issued = None
    if issued is None or issued.utcoffset() != dt.timedelta(0):
        raise ConfigurationError(f"{path}: key 'issued': expected an ISO-8601 UTC time like 2025-01-01T12:00:00Z, got {issued_text!r}")
    participants = data.get("participants")
    if not isinstance(participants, list):
        raise ConfigurationError(f"{path}: key 'participants': expected a list of participants, got {participants!r}")
    entries = tuple(_parse_entry(path, index, value) for index, value in enumerate(participants))
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        if (entry.role, entry.name) in seen:
            raise ConfigurationError(f"{path}: {entry.role} {entry.name!r} is listed twice")
        seen.add((entry.role, entry.name))
    return Roster(federation=federation, version=version, issued=issued.astimezone(dt.timezone.utc), participants=entries,
                  path=file, signed=data)


def load_roster(path: Path | str, ca_cert_path: Path | str) -> Roster:
    """Reads ``roster.json`` and verifies it was signed by the federation CA.

    Args:
        path: the roster (``roster.json`` of a participant folder).
        ca_cert_path: the federation CA certificate (``ca.pem``) whose key must have
            signed it.

    Returns:
        The verified roster.

    Raises:
        ConfigurationError: naming the file and what is wrong: missing or not JSON,
            an unknown format, another federation than the CA's, unsigned, a
            signature that does not verify (edited after signing, or another CA), or
            a malformed entry.
    """
    path = Path(path)
    return _verify(_read_json(path), Path(ca_cert_path), where=path, file=path)


def _verify(data: Any, ca_cert_path: Path, *, where: Path | str, file: Path | None) -> Roster:
    """The roster of ``data`` once its format, federation and CA signature are checked."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: not a roster (expected a JSON object); {_GET_ONE}")
    if data.get("format") != FORMAT:
        raise ConfigurationError(
            f"{where}: unknown format {data.get('format')!r}; this genofed reads {FORMAT!r} rosters, "
            f"as genofed provision writes them; {_GET_ONE}"
        )
    ca_key, ca_federation = _ca(ca_cert_path)
    if data.get("federation") != ca_federation:
        raise ConfigurationError(
            f"{where}: the roster of federation {data.get('federation')!r}, but the CA {ca_cert_path} is federation "
            f"{ca_federation!r}'s; {_GET_ONE}"
        )
    signature_text = data.get("signature")
    if not isinstance(signature_text, str) or not signature_text:
        raise ConfigurationError(f"{where}: unsigned (no 'signature'); only a roster signed by the federation CA is accepted: {_GET_ONE}")
    body = {key: value for key, value in data.items() if key != "signature"}
    try:
        ca_key.verify(base64.b64decode(signature_text, validate=True), _canonical(body), _SIGNATURE)
    except (InvalidSignature, binascii.Error, ValueError):
        raise ConfigurationError(
            f"{where}: bad signature: the roster was edited after the CA signed it, or another CA than {ca_cert_path} "
            f"signed it; {_GET_ONE}"
        ) from None
    return _parse_roster(where, data, file=file)


def install_roster(
    data: Any, *, ca_cert_path: Path | str, current: Roster, path: Path | str, source: str,
    accept: Callable[[Roster], None] | None = None,
) -> Roster:
    """Replaces the roster at ``path`` with ``data`` if the CA signed it and it is newer than ``current``.

    The one way a running party takes up a new roster: a coordinator from the
    operator, a site from the coordinator, which it does not trust to hand it the
    CA's latest (it may forge one, or replay an older one that still lists a revoked
    participant). The same roster again is no change.

    Args:
        data: the decoded ``roster.json`` received.
        ca_cert_path: the federation CA certificate whose key must have signed it.
        current: the roster in use.
        path: the party's roster file, replaced atomically.
        source: where ``data`` came from, for messages.
        accept: the party's own checks of the new roster, before it is written
            (raises to refuse it).

    Returns:
        The new roster (``current`` itself when ``data`` is the same roster).

    Raises:
        ConfigurationError: not signed by the CA, malformed, or not newer than ``current``.
    """
    roster = _verify(data, Path(ca_cert_path), where=source, file=None)
    if roster == current:
        return current
    if roster.version <= current.version:
        raise ConfigurationError(
            f"{source}: roster version {roster.version} is not newer than version {current.version} in use; a roster is "
            "only ever replaced by a newer one (an older one may be replayed to bring back a revoked participant)"
        )
    if accept is not None:
        accept(roster)
    path = Path(path)
    write_roster(path, data)
    return dataclasses.replace(roster, path=path)


# --------------------------------------------------------------------------- startup checks


def check_own_identity(config: SiteConfig, roster: Roster) -> Identity:
    """Checks that a site's certificate is its own: the name in ``site.toml``, as the roster lists it.

    Identity is the certificate, never a config field: an agent whose ``site.toml``
    says ``site-1`` but which holds ``site-2``'s certificate would poll as ``site-2``
    and contribute ``site-1``'s data. The site agent calls this before it opens any
    connection.

    Returns:
        The identity in the site's certificate.

    Raises:
        ConfigurationError: naming the files: the certificate is unreadable, another
            participant's, of another federation, not in the roster, or not the
            certificate the roster lists for this site.
    """
    try:
        cert = config.cert.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"{config.path}: key 'tls.cert': cannot read {config.cert} ({error.strerror}); "
            "expected the site certificate genofed provision wrote"
        ) from None
    try:
        identity = peer_identity(cert)
    except IdentityError as error:
        raise ConfigurationError(f"{config.cert}: {error}; expected the site certificate genofed provision wrote") from None
    if (identity.name, identity.role) != (config.name, "site"):
        raise ConfigurationError(
            f"{config.path} says this site is {config.name!r}, but {config.cert} is the certificate of {identity.name!r} "
            f"(CN={identity.name}, OU={identity.role}); a site can only contribute as itself: point [tls] cert and key "
            f"at the certificate genofed provision issued for {config.name!r}"
        )
    if identity.federation != config.federation or roster.federation != config.federation:
        raise ConfigurationError(
            f"{config.path} says federation {config.federation!r}, but {config.cert} is of federation "
            f"{identity.federation!r} and {roster.path} lists federation {roster.federation!r}; use the files "
            "genofed provision wrote for this site"
        )
    try:
        roster.check_certificate(config.name, "site", cert)
    except GenofedError as error:
        raise ConfigurationError(
            f"{config.path}: {config.cert} is not this site's certificate in the federation roster: {error}"
        ) from None
    return identity


def check_enrolment(config: CoordinatorConfig, roster: Roster) -> None:
    """Checks the coordinator's own certificate and its enrolment list against the roster.

    The coordinator must present the certificate the roster lists for it, every
    enrolled site, analyst and operator must be in the roster with that role, and a pinned
    fingerprint in ``[fingerprints]`` must be the roster's.

    Raises:
        ConfigurationError: naming the file and the participant that does not match.
    """
    if roster.federation != config.federation:
        raise ConfigurationError(
            f"{config.path} is federation {config.federation!r}'s, but {roster.path} lists federation {roster.federation!r}"
        )
    try:
        roster.check_certificate("coordinator", "coordinator", config.cert.read_bytes())
    except OSError as error:
        raise ConfigurationError(f"{config.path}: key 'tls.cert': cannot read {config.cert} ({error.strerror})") from None
    except GenofedError as error:
        raise ConfigurationError(f"{config.path}: {config.cert} is not the coordinator's certificate in the roster: {error}") from None
    for role, names in config.enrolled():
        listed = set(roster.names(role))
        missing = [name for name in names if name not in listed]
        if missing:
            raise ConfigurationError(
                f"{config.path}: [enrolment] {role}s {', '.join(repr(n) for n in missing)} are not in the federation "
                f"roster {roster.path} (version {roster.version}); only participants the CA listed can be enrolled: "
                "remove them from [enrolment], or have the operator provision them and install the new roster.json"
            )
    for name, pinned in config.fingerprints.items():
        enrolled_as = config.role_of(name)
        assert enrolled_as is not None  # the loader only accepts pins of enrolled participants
        in_roster = roster.entry(name, enrolled_as).fingerprint
        if in_roster != pinned:
            raise ConfigurationError(
                f"{config.path}: key 'fingerprints.{name}' pins a certificate ({pinned[:16]}...) other than the one the "
                f"roster {roster.path} lists ({in_roster[:16]}...); install the roster.json issued with that certificate"
            )
