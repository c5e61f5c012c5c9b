"""Signed audit checkpoints: each party keeps the other's signed log heads, so neither can rewrite its own.

A hash chain shows that a log was edited, but not that it was cut short, nor that its
owner rewrote an entry and recomputed every later hash and the head file
(:mod:`pipeline.federation.audit`). Evidence of the log's past has to be kept by
someone else. So when a job ends, a site and the coordinator exchange *checkpoints*:

1. the site signs the head of its own audit log (entries, last hash) with its
   certificate key and sends it (``POST /v1/site/checkpoint``);
2. the coordinator checks the signature against the federation roster, records the
   site's checkpoint in its own log (``checkpoint.received``), signs the head of its
   log (which now includes that entry) with its certificate key, and answers with it;
3. the site checks that signature against its own copy of the roster and records the
   coordinator's checkpoint in its log (``checkpoint.received``).

``genofed audit verify LOG --checkpoints OTHER_LOG`` then checks LOG against every head
its owner signed that OTHER_LOG kept (:func:`verify_with_checkpoints`): a log with fewer
entries than a signed head was truncated; one whose entry at a signed position has
another hash was rewritten. Signatures are ECDSA P-256 / SHA-256 over the canonical JSON
of the other fields, by the key of the certificate the CA-signed roster lists for the
signer; no one without that key (the coordinator included) can forge a site's head.

``checkpoint``::

    {"format": "genofed-audit-checkpoint/1", "federation": NAME, "signer": NAME,
     "role": "site" | "coordinator", "entries": N, "head": SHA256_HEX,
     "time": "2025-01-01T12:00:00.000000Z", "signature": BASE64}
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.errors import ConfigurationError, IdentityError, InputError, ProtocolError
from pipeline.federation.audit import VerifyReport, verify
from pipeline.federation.roster import Roster
from pipeline.secagg.keys import sign_identity, verify_identity

__all__ = ["CHECKPOINT_EVENT", "FORMAT", "Checkpoint", "kept_checkpoints", "sign_checkpoint", "verify_with_checkpoints"]

FORMAT = "genofed-audit-checkpoint/1"
CHECKPOINT_EVENT = "checkpoint.received"
"""The audit event under which a party keeps the other party's signed checkpoint."""

_HASH = re.compile(r"[0-9a-f]{64}")
_SIGNED_ROLES = ("site", "coordinator")


@dataclass(frozen=True)
class Checkpoint:
    """The head of one party's audit log, signed by that party (see the module docstring)."""

    federation: str
    signer: str
    role: str
    entries: int
    head: str
    time: str
    signature: str = ""

    def signed_bytes(self) -> bytes:
        """What the signature covers: the canonical JSON of every field but the signature."""
        body = {**asdict(self), "format": FORMAT}
        del body["signature"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    def to_fields(self) -> dict[str, Any]:
        """JSON-ready form, as sent and as kept in an audit entry."""
        return {**asdict(self), "format": FORMAT}

    @classmethod
    def from_fields(cls, fields: Any) -> Checkpoint:
        """Reads a checkpoint from its JSON form.

        Raises:
            ProtocolError: not a checkpoint of this format (the message names the field).
        """
        if not isinstance(fields, Mapping):
            raise ProtocolError(f"a checkpoint is a JSON object, got {type(fields).__name__}")
        expected = {"format", "federation", "signer", "role", "entries", "head", "time", "signature"}
        if set(fields) != expected:
            raise ProtocolError(f"a checkpoint has exactly the keys {sorted(expected)}, got {sorted(fields)}")
        if fields["format"] != FORMAT:
            raise ProtocolError(f"checkpoint format {fields['format']!r}; this version reads {FORMAT!r}")
        for key in ("federation", "signer", "time", "signature"):
            if not isinstance(fields[key], str) or not fields[key] or len(fields[key]) > 512:
                raise ProtocolError(f"checkpoint field {key!r} must be a non-empty string")
        if fields["role"] not in _SIGNED_ROLES:
            raise ProtocolError(f"checkpoint role {fields['role']!r}; expected one of {', '.join(_SIGNED_ROLES)}")
        entries = fields["entries"]
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise ProtocolError(f"checkpoint entries must be a positive integer, got {entries!r}")
        if not isinstance(fields["head"], str) or not _HASH.fullmatch(fields["head"]):
            raise ProtocolError("checkpoint head must be a SHA-256 hex digest")
        return cls(**{key: fields[key] for key in expected - {"format"}})

    def check_signature(self, roster: Roster) -> None:
        """Checks the signature against the key the roster lists for the signer.

        Raises:
            IdentityError: another federation's, a signer the roster does not list, or a
                signature that is not the signer's.
        """
        if self.federation != roster.federation:
            raise IdentityError(f"checkpoint of federation {self.federation!r}, not {roster.federation!r}")
        try:
            public_key = roster.public_key(self.signer, self.role)
            signature = base64.b64decode(self.signature, validate=True)
        except ConfigurationError as error:
            raise IdentityError(f"checkpoint signer: {error}") from None
        except (binascii.Error, ValueError):
            raise IdentityError("checkpoint signature is not base64") from None
        if not verify_identity(public_key, self.signed_bytes(), signature):
            raise IdentityError(
                f"checkpoint of {self.role} {self.signer!r} ({self.entries} entries) is not signed by the key the roster "
                "lists for it"
            )


def sign_checkpoint(key: ec.EllipticCurvePrivateKey, *, federation: str, signer: str, role: str, entries: int,
                    head: str, now: dt.datetime | None = None) -> Checkpoint:
    """The signed checkpoint of a log of ``entries`` entries ending with ``head``."""
    moment = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    unsigned = Checkpoint(federation=federation, signer=signer, role=role, entries=entries, head=head, time=moment)
    signature = base64.b64encode(sign_identity(key, unsigned.signed_bytes())).decode()
    return Checkpoint(**{**asdict(unsigned), "signature": signature})


def kept_checkpoints(log_path: Path | str) -> list[tuple[int, Checkpoint]]:
    """``(line, checkpoint)`` for every checkpoint kept in a log (its ``checkpoint.received`` entries).

    Raises:
        InputError: the log cannot be read, or holds a malformed checkpoint entry.
    """
    path = Path(log_path)
    kept: list[tuple[int, Checkpoint]] = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    for number, raw in enumerate(lines, start=1):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # verify() reports broken lines; here only checkpoints matter
        if isinstance(entry, dict) and entry.get("event") == CHECKPOINT_EVENT:
            try:
                kept.append((number, Checkpoint.from_fields(entry.get("fields"))))
            except ProtocolError as error:
                raise InputError(f"{path}:{number}: malformed checkpoint entry: {error}") from None
    return kept


def _entry_hashes(log_path: Path) -> list[str]:
    return [json.loads(raw)["entry_hash"] for raw in log_path.read_bytes().splitlines()]


def verify_with_checkpoints(log_path: Path | str, kept_in: Sequence[Path | str], roster: Roster, *,
                            signer: str | None = None, expected_head: str | None = None) -> VerifyReport:
    """Checks a log's chain, and the log against every head its owner signed that ``kept_in`` logs kept.

    Args:
        log_path: the log to check.
        kept_in: audit logs of the other party (or parties) that kept signed heads.
        roster: the federation roster the signatures are checked against.
        signer: whose log ``log_path`` is; by default the one signer whose heads
            ``kept_in`` holds.
        expected_head: as for :func:`~pipeline.federation.audit.verify`.

    Returns:
        A :class:`~pipeline.federation.audit.VerifyReport`; ``checkpoints`` counts the
        signed heads the log was checked against.

    Raises:
        InputError: a log cannot be read, ``kept_in`` holds no head of ``signer``, or
            heads of several signers and no ``signer`` was given.
    """
    path = Path(log_path)
    report = verify(path, expected_head=expected_head)
    if not report.ok:
        return report
    found = [(Path(other), line, checkpoint) for other in kept_in for line, checkpoint in kept_checkpoints(other)]
    signers = sorted({checkpoint.signer for _, _, checkpoint in found})
    if signer is None:
        if len(signers) != 1:
            raise InputError(
                f"{', '.join(map(str, kept_in))} keep{'s' if len(kept_in) == 1 else ''} signed heads of "
                f"{', '.join(signers) or 'no one'}; say whose log {path} is with --signer NAME"
            )
        signer = signers[0]
    mine = [(other, line, checkpoint) for other, line, checkpoint in found if checkpoint.signer == signer]
    if not mine:
        raise InputError(f"{', '.join(map(str, kept_in))} keep no signed head of {signer!r}")
    hashes = _entry_hashes(path)

    def bad(problem: str) -> VerifyReport:
        return VerifyReport(path=path, ok=False, entries=report.entries, head=report.head, problem=problem)

    for other, line, checkpoint in mine:
        where = f"the head {signer} signed at {checkpoint.time} (kept at {other}:{line})"
        try:
            checkpoint.check_signature(roster)
        except IdentityError as error:
            return bad(f"{where} does not verify: {error}")
        if checkpoint.entries > len(hashes):
            return bad(f"{where} covers {checkpoint.entries} entries but the log has {len(hashes)}: it was truncated")
        if hashes[checkpoint.entries - 1] != checkpoint.head:
            return bad(
                f"entry {checkpoint.entries - 1} (line {checkpoint.entries}) has another hash than {where}: "
                "the log was rewritten up to there and re-chained"
            )
    return VerifyReport(path=path, ok=True, entries=report.entries, head=report.head, checkpoints=len(mine))
