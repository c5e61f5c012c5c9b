"""An append-only, hash-chained audit log of every contribution, round and result.

Each entry is one JSON line::

    {"seq": 0, "time": "2025-01-01T12:00:00.000000Z", "event": "round.closed",
     "fields": {...}, "prev_hash": "000...0", "entry_hash": "ab12..."}

``entry_hash`` is the SHA-256 of the entry without ``entry_hash`` in canonical JSON
(sorted keys, separators ``,`` and ``:``); ``prev_hash`` is the previous entry's
``entry_hash`` (64 zeros for the first). Editing, inserting, deleting or reordering
an entry therefore breaks the chain at that entry. Removing entries from the end
keeps a valid chain, so the head (number of entries and last hash) is also kept in a
sidecar file ``LOG.head``, replaced atomically after each append; :func:`verify`
compares the two. Someone who can rewrite both files can rewrite history: the evidence
against the log's own host is the signed heads the other party keeps
(:mod:`pipeline.federation.checkpoints`), or a head recorded elsewhere passed as
``expected_head``.

Appends are flushed and fsync'd before returning, take an exclusive lock, and
continue the chain from the file itself (another process, or an earlier run of this
one, may have appended). A crash between writing an entry and updating the head
leaves one entry beyond the head; the next :class:`AuditLog` repairs the head (and
drops a torn, half-written last line), so the log verifies again.

Every line must be the canonical serialisation of its entry (UTF-8, no repeated key,
the bytes :func:`_canonical` writes): two readers that parse a line differently (which of
two repeated keys wins, say) could otherwise disagree on what the log says while both
find the hash intact.

The log never holds genotypes, sample IDs or payloads: fields are small JSON
values, and payloads are recorded by :func:`digest`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import AuditError, InputError
from pipeline.outputs import fsync_directory

__all__ = [
    "GENESIS_HASH", "AuditLog", "VerifyReport", "already_appended", "check_fields", "digest", "entry_hash", "read_entries",
    "verify",
]

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""

MAX_FIELDS_BYTES = 16384
"""Largest canonical JSON of an entry's fields: digests and counts, never payloads."""

_KEYS = ("seq", "time", "event", "fields", "prev_hash", "entry_hash")
_EVENT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``entry`` without its ``entry_hash``, in canonical JSON."""
    body = {key: value for key, value in entry.items() if key != "entry_hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def digest(payload: bytes | bytearray | memoryview) -> str:
    """``sha256:<hex>`` of a payload, the only form in which payloads enter the log."""
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def head_path(path: Path | str) -> Path:
    """The sidecar ``LOG.head`` of log ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".head")


def _check_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditError(f"audit field {where} is {value!r}; only finite numbers can be logged")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditError(f"audit field {where} has a non-string key {key!r}")
            _check_value(item, f"{where}.{key}")
        return
    raise AuditError(
        f"audit field {where} is a {type(value).__name__}; log small JSON values, and payloads only as digest(payload)"
    )


def check_fields(event: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an entry, checked as :meth:`AuditLog.append` will (so a caller can refuse an entry before committing to it).

    Raises:
        AuditError: a malformed event name, fields that are not small JSON values, or too many bytes.
    """
    if not isinstance(event, str) or not _EVENT.fullmatch(event):
        raise AuditError(f"audit event {event!r}: expected a lowercase name like 'round.closed'")
    fields = dict(fields)
    _check_value(fields, event)
    size = len(_canonical(fields))
    if size > MAX_FIELDS_BYTES:
        raise AuditError(
            f"audit event {event!r} has {size} bytes of fields (limit {MAX_FIELDS_BYTES}); "
            "log digests and counts, never payloads, genotypes or sample IDs"
        )
    return fields


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_head(path: Path, entries: int, head: str) -> None:
    sidecar = head_path(path)
    fd, name = tempfile.mkstemp(prefix=f".{sidecar.name}.tmp-", dir=sidecar.parent)
    try:
        os.write(fd, _canonical({"entries": entries, "head": head}) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(name, sidecar)
    fsync_directory(sidecar.parent)


def _read_head(path: Path) -> tuple[int, str] | None:
    """``(entries, head)`` from the sidecar, ``None`` if it does not exist."""
    sidecar = head_path(path)
    try:
        data = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuditError(f"{sidecar}: unreadable head file ({error})") from None
    if (
        not isinstance(data, dict) or set(data) != {"entries", "head"} or isinstance(data["entries"], bool)
        or not isinstance(data["entries"], int) or data["entries"] < 0
        or not isinstance(data["head"], str) or not _HASH.fullmatch(data["head"])
    ):
        raise AuditError(f"{sidecar}: expected {{\"entries\": N, \"head\": \"<sha256>\"}}, got {data!r}")
    return data["entries"], data["head"]


def _last_line(handle: Any, size: int) -> tuple[bytes, int]:
    """The last line of the open binary file (without its newline) and its offset."""
    block = 4096
    end = size
    if end == 0:
        return b"", 0
    buffer = b""
    position = end
    while position > 0:
        step = min(block, position)
        position -= step
        handle.seek(position)
        buffer = handle.read(step) + buffer
        # the final byte is the newline that ends the last line; look for the one before
        cut = buffer.rfind(b"\n", 0, len(buffer) - 1)
        if cut >= 0:
            return buffer[cut + 1:].rstrip(b"\n"), position + cut + 1
    return buffer.rstrip(b"\n"), 0


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        result[key] = value
    return result


def _parse_line(line: bytes) -> tuple[Any, str | None]:
    """``(entry, None)`` for a canonical line (without its newline), else ``(None, problem)``.

    Only canonical lines are accepted, so that every reader parses a line the same way.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 (byte {error.start} of the line)"
    try:
        entry = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as error:
        return None, f"not a canonical entry: {error}"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON ({error.msg})"
    except (ValueError, RecursionError) as error:
        return None, f"not valid JSON ({error})"
    try:
        canonical = _canonical(entry)
    except ValueError:
        return None, "holds a value that is not valid canonical JSON (NaN, infinity or a lone surrogate)"
    if canonical != line:
        return None, (
            "not in canonical form (keys sorted, no spaces, separators ',' and ':', UTF-8 rather than \\u escapes, "
            "numbers as written by genofed); the line was edited or written by another program"
        )
    return entry, None


def _problem(entry: Any, expected_seq: int, prev_hash: str) -> str | None:
    """What is wrong with a parsed entry, given where it sits in the chain."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if set(entry) != set(_KEYS):
        missing = sorted(set(_KEYS) - set(entry))
        extra = sorted(set(entry) - set(_KEYS))
        return f"keys differ from {list(_KEYS)} (missing {missing}, unexpected {extra})"
    if not isinstance(entry["entry_hash"], str) or not _HASH.fullmatch(entry["entry_hash"]):
        return "entry_hash is not a SHA-256 hex digest"
    try:
        recomputed = entry_hash(entry)
    except ValueError:
        return "holds a value that is not valid canonical JSON (NaN or infinity)"
    if recomputed != entry["entry_hash"]:
        return "entry_hash does not match the entry's content (the entry was edited)"
    if entry["seq"] != expected_seq or isinstance(entry["seq"], bool) or not isinstance(entry["seq"], int):
        return (
            f"seq is {entry['seq']!r} where {expected_seq} was expected "
            "(an entry was deleted, inserted or moved before this line)"
        )
    if entry["prev_hash"] != prev_hash:
        return "prev_hash does not match the previous entry's entry_hash (an entry was inserted, deleted or moved)"
    if not isinstance(entry["time"], str) or not _TIME.fullmatch(entry["time"]):
        return f"time {entry['time']!r} is not a UTC timestamp YYYY-MM-DDTHH:MM:SS.ffffffZ"
    if not isinstance(entry["event"], str) or not _EVENT.fullmatch(entry["event"]):
        return f"event {entry['event']!r} is not an event name"
    if not isinstance(entry["fields"], dict):
        return "fields is not a JSON object"
    return None


def _self_consistent(entry: Any) -> bool:
    """Whether ``entry`` is a well-formed entry whose hash matches its content."""
    if not isinstance(entry, dict) or isinstance(entry.get("seq"), bool) or not isinstance(entry.get("seq"), int):
        return False
    return _problem(entry, entry["seq"], entry.get("prev_hash")) is None


class AuditLog:
    """Appends hash-chained entries to a JSON-lines file (see the module docstring).

    Opening checks the last entry against the head file (not the whole chain: that
    is :func:`verify`'s job) and refuses to extend a log whose tail was tampered with.

    Raises:
        AuditError: the log's tail or head file is inconsistent beyond a crash during
            one append.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as handle:
            self._entries, self._head = self._recover(handle)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Any]:
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @property
    def entries(self) -> int:
        """Number of entries after the last append or open."""
        return self._entries

    @property
    def head(self) -> str:
        """``entry_hash`` of the last entry (:data:`GENESIS_HASH` for an empty log)."""
        return self._head

    def _recover(self, handle: Any) -> tuple[int, str]:
        """Reads the chain's end from the file and reconciles it with the head file."""
        size = os.fstat(handle.fileno()).st_size
        recorded = _read_head(self.path)
        if size == 0:
            if recorded is not None and recorded[0] != 0:
                raise AuditError(
                    f"{self.path}: empty, but {head_path(self.path)} records {recorded[0]} entries (the log was truncated)"
                )
            return 0, GENESIS_HASH
        line, offset = _last_line(handle, size)
        handle.seek(size - 1)
        complete = handle.read(1) == b"\n"
        last, _ = _parse_line(line)
        if not complete:
            if _self_consistent(last):
                # a whole entry whose newline did not reach the disk: finish the line
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            else:
                previous = self._entry_before(handle, offset)
                if previous is None or (recorded or (0, GENESIS_HASH)) != previous:
                    raise AuditError(
                        f"{self.path}: the last line is a half-written entry and {head_path(self.path)} does not end "
                        "just before it; run genofed audit verify"
                    )
                log.warning("%s: dropping a half-written last entry (a crash during an append)", self.path)
                handle.truncate(offset)
                os.fsync(handle.fileno())
                return previous
        if not _self_consistent(last):
            raise AuditError(f"{self.path}: the last line is not a valid entry; run genofed audit verify")
        entries, head = last["seq"] + 1, last["entry_hash"]
        if recorded == (entries, head):
            return entries, head
        if recorded is None or (recorded[0] == entries - 1 and recorded[1] == last["prev_hash"]):
            # the entry was written but the head not updated (a crash between the two)
            if recorded is None and entries != 1:
                raise AuditError(
                    f"{self.path}: {head_path(self.path)} is missing for a log of {entries} entries; "
                    "run genofed audit verify"
                )
            _write_head(self.path, entries, head)
            return entries, head
        raise AuditError(
            f"{self.path}: ends at entry {entries - 1} ({head[:16]}...) but {head_path(self.path)} records "
            f"{recorded[0]} entries ending {recorded[1][:16]}...; the log was altered, run genofed audit verify"
        )

    def _entry_before(self, handle: Any, offset: int) -> tuple[int, str] | None:
        if offset == 0:
            return 0, GENESIS_HASH
        line, _ = _last_line(handle, offset)
        entry, _ = _parse_line(line)
        if not _self_consistent(entry):
            return None
        return entry["seq"] + 1, entry["entry_hash"]

    def append(self, event: str, /, **fields: Any) -> dict[str, Any]:
        """Appends one entry and returns it (with its ``seq`` and ``entry_hash``).

        Args:
            event: what happened, a lowercase dotted name (``contribution.received``).
            **fields: small JSON values: names, counts, job and round numbers,
                :func:`digest` of payloads. Never genotypes or sample IDs.

        Raises:
            AuditError: fields that are not small JSON values, or a log that was
                altered since it was opened.
        """
        fields = check_fields(event, fields)
        with self._locked() as handle:
            entries, head = self._recover(handle)
            entry: dict[str, Any] = {
                "seq": entries, "time": _utc_now(), "event": event, "fields": fields, "prev_hash": head,
            }
            entry["entry_hash"] = entry_hash(entry)
            handle.seek(0, os.SEEK_END)
            handle.write(_canonical(entry) + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
            _write_head(self.path, entries + 1, entry["entry_hash"])
            self._entries, self._head = entries + 1, entry["entry_hash"]
        return entry


def already_appended(queued: Sequence[tuple[str, Mapping[str, Any]]], tail: Sequence[Mapping[str, Any]]) -> int:
    """How many of ``queued`` (event, fields), appended in order, the log's ``tail`` entries already end with.

    A writer that commits entries elsewhere before appending them (the coordinator's
    audit outbox) may crash after appending some: the longest prefix of its queue that
    the log ends with is what reached the log, so appending the rest repeats nothing.
    """
    for written in range(min(len(queued), len(tail)), 0, -1):
        ends = tail[len(tail) - written:]
        if all(entry.get("event") == event and entry.get("fields") == json.loads(json.dumps(fields))
               for (event, fields), entry in zip(queued[:written], ends)):
            return written
    return 0


def read_entries(path: Path | str, *, event: str | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries in order (only those of ``event`` when given), for reconciling other records with it.

    Each line is checked to be a canonical, self-consistent entry, not the chain as a
    whole (:func:`verify` does that). A log that does not exist has no entries.

    Raises:
        AuditError: a line that is not an entry (names the line; run ``genofed audit verify``).
    """
    path = Path(path)
    if not path.exists():
        return
    try:
        handle = path.open("rb")
    except OSError as error:
        raise AuditError(f"{path}: cannot read the audit log ({error.strerror})") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return  # a half-written last entry: AuditLog drops it when it next opens the log
            entry, problem = _parse_line(raw[:-1])
            if problem is None and not _self_consistent(entry):
                problem = "not a well-formed entry whose hash matches its content"
            if problem is not None:
                raise AuditError(f"{path}:{number}: {problem}; run genofed audit verify {path}")
            if event is None or entry["event"] == event:
                yield entry


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`.

    Attributes:
        path: the log.
        ok: the chain is intact and matches the head file (and ``expected_head``).
        entries: number of entries checked (those before the first bad line).
        head: ``entry_hash`` of the last good entry.
        line: 1-based line number of the first bad entry (``None`` when ``ok``, or
            when the problem is at the end: a truncated tail).
        problem: what is wrong, in words.
        checkpoints: signed heads, kept by another party, the log was checked against
            (:func:`pipeline.federation.checkpoints.verify_with_checkpoints`).
    """

    path: Path
    ok: bool
    entries: int
    head: str
    line: int | None = None
    problem: str | None = None
    checkpoints: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": str(self.path), "ok": self.ok, "entries": self.entries, "head": self.head,
            "line": self.line, "problem": self.problem, "checkpoints": self.checkpoints,
        }

    def text(self) -> str:
        """One line for people: ``ok: N entries, head H`` or where the log breaks."""
        if self.ok:
            signed = f"; agrees with {self.checkpoints} signed heads kept by the other party" if self.checkpoints else ""
            return f"ok: {self.entries} entries, head {self.head}{signed}"
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.problem}"


def verify(path: Path | str, *, expected_head: str | None = None) -> VerifyReport:
    """Checks a whole audit log: every entry, the chain, and the head file.

    Args:
        path: the log (its head file is ``path + ".head"``).
        expected_head: an ``entry_hash`` recorded elsewhere; the log must end with it.
            Given, the head file may be missing (it is still checked when present).

    Returns:
        A :class:`VerifyReport`; ``ok`` is false at the first bad line, or when the
        log ends elsewhere than its head file (or ``expected_head``) says.

    Raises:
        InputError: the log does not exist or cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audit log")
    entries, prev_hash = 0, GENESIS_HASH

    def bad(line: int | None, problem: str) -> VerifyReport:
        return VerifyReport(path=path, ok=False, entries=entries, head=prev_hash, line=line, problem=problem)

    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.endswith(b"\n"):
                    return bad(number, "the last line is incomplete (a crash during an append, or a cut file)")
                entry, problem = _parse_line(raw[:-1])
                if problem is None:
                    problem = _problem(entry, entries, prev_hash)
                if problem is not None:
                    return bad(number, problem)
                entries, prev_hash = entries + 1, entry["entry_hash"]
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    try:
        recorded = _read_head(path)
    except AuditError as error:
        return bad(None, str(error))
    if recorded is None:
        if entries and expected_head is None:
            # Given --head, the head recorded elsewhere checks the end: the sidecar is not needed.
            return bad(None, f"{head_path(path)} is missing; the log's end cannot be checked (or give the head with --head)")
    elif recorded != (entries, prev_hash):
        if recorded[0] > entries:
            problem = (
                f"the log ends after {entries} entries but {head_path(path)} records {recorded[0]} "
                "(entries were removed from the end)"
            )
        elif recorded[0] < entries:
            return bad(
                recorded[0] + 1,
                f"{head_path(path)} records {recorded[0]} entries; this and later lines were added after the head "
                "(appended without updating the head: a crash during an append, or a forged entry)",
            )
        else:
            problem = f"the last entry's hash differs from the one {head_path(path)} records (the end was rewritten)"
        return bad(None, problem)
    if expected_head is not None and expected_head != prev_hash:
        return bad(None, f"the log ends with {prev_hash} but {expected_head} was expected")
    return VerifyReport(path=path, ok=True, entries=entries, head=prev_hash)
