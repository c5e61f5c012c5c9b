"""The hash-chained audit log: every kind of tampering is found, appends survive restarts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import AuditError, InputError
from pipeline.federation.audit import GENESIS_HASH, AuditLog, digest, head_path, read_entries, verify


def naive_entry_hash(entry: dict) -> str:
    """The documented rule, written out independently of the module."""
    body = {k: v for k, v in entry.items() if k != "entry_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def make_log(tmp_path: Path, entries: int = 5) -> Path:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for index in range(entries):
        log.append("contribution.received", site=f"site-{index % 3 + 1}", round=index, payload=digest(bytes([index])))
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def write_lines(path: Path, content: list[str]) -> None:
    path.write_text("".join(content))


def test_append__entries_chain_with_documented_hash(tmp_path):
    path = make_log(tmp_path, 4)
    entries = [json.loads(line) for line in lines(path)]
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS_HASH
    for previous, entry in zip(entries, entries[1:]):
        assert entry["prev_hash"] == previous["entry_hash"]
    for entry in entries:
        assert entry["entry_hash"] == naive_entry_hash(entry)
        assert set(entry) == {"seq", "time", "event", "fields", "prev_hash", "entry_hash"}
        assert entry["time"].endswith("Z")
    assert entries[2]["fields"] == {"site": "site-3", "round": 2, "payload": digest(bytes([2]))}
    assert json.loads(head_path(path).read_text()) == {"entries": 4, "head": entries[-1]["entry_hash"]}


def test_verify__clean_log(tmp_path):
    path = make_log(tmp_path, 5)
    report = verify(path)
    assert report.ok and report.entries == 5
    assert report.head == AuditLog(path).head == json.loads(lines(path)[-1])["entry_hash"]
    assert report.text() == f"ok: 5 entries, head {report.head}"


def test_verify__empty_log(tmp_path):
    path = tmp_path / "audit.log"
    AuditLog(path)
    assert verify(path).ok and verify(path).entries == 0


def test_verify__edited_field(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    entry = json.loads(content[2])
    entry["fields"]["round"] = 99
    content[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 3 and "edited" in report.problem
    assert report.entries == 2


def test_verify__edited_field_with_recomputed_hash(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    entry = json.loads(content[1])
    entry["fields"]["site"] = "site-9"
    entry["entry_hash"] = naive_entry_hash(entry)
    content[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 3 and "prev_hash" in report.problem


def test_verify__deleted_line(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    del content[1]
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 2 and "seq" in report.problem


def test_verify__inserted_forged_line(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    previous = json.loads(content[1])
    forged = {
        "seq": 2, "time": previous["time"], "event": "result.published", "fields": {"note": "forged"},
        "prev_hash": previous["entry_hash"],
    }
    forged["entry_hash"] = naive_entry_hash(forged)
    content.insert(2, json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    write_lines(path, content)
    report = verify(path)
    # the forged line itself is well-formed; the chain breaks at the next one
    assert not report.ok and report.line == 4
    assert report.entries == 3


def test_verify__forged_line_appended_without_head(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    last = json.loads(content[-1])
    forged = {"seq": 5, "time": last["time"], "event": "result.published", "fields": {}, "prev_hash": last["entry_hash"]}
    forged["entry_hash"] = naive_entry_hash(forged)
    content.append(json.dumps(forged, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n")
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 6 and "after the head" in report.problem


def test_verify__swapped_lines(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    content[1], content[3] = content[3], content[1]
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 2


def test_verify__truncated_tail(tmp_path):
    path = make_log(tmp_path)
    write_lines(path, lines(path)[:3])
    report = verify(path)
    assert not report.ok and report.line is None
    assert "removed from the end" in report.problem
    with pytest.raises(AuditError, match="altered"):
        AuditLog(path)


def test_verify__truncated_tail_and_head_rewritten__caught_by_expected_head(tmp_path):
    path = make_log(tmp_path)
    published = verify(path).head
    content = lines(path)[:3]
    write_lines(path, content)
    head_path(path).write_text(json.dumps({"entries": 3, "head": json.loads(content[-1])["entry_hash"]}))
    assert verify(path).ok  # the head file alone cannot catch an attacker who rewrites it
    report = verify(path, expected_head=published)
    assert not report.ok and published in report.problem


def test_verify__missing_head_file(tmp_path):
    path = make_log(tmp_path)
    head_path(path).unlink()
    report = verify(path)
    assert not report.ok and "missing" in report.problem


def test_verify__garbage_line(tmp_path):
    path = make_log(tmp_path)
    content = lines(path)
    content[2] = "not json\n"
    write_lines(path, content)
    report = verify(path)
    assert not report.ok and report.line == 3 and "JSON" in report.problem


def _rewrite_line(path: Path, index: int, line: bytes) -> None:
    content = path.read_bytes().splitlines(keepends=True)
    content[index] = line + b"\n"
    path.write_bytes(b"".join(content))


def test_verify__line_not_utf8_is_a_bad_line(tmp_path):
    path = make_log(tmp_path)
    line = lines(path)[2].rstrip("\n").encode()
    _rewrite_line(path, 2, line.replace(b"site-3", b"site-\xff"))
    report = verify(path)
    assert not report.ok and report.line == 3 and "UTF-8" in report.problem
    assert report.entries == 2


def test_verify__repeated_key_is_a_bad_line(tmp_path):
    # The hash holds for the last of the two "site" values, but another reader might take the first.
    path = make_log(tmp_path)
    line = lines(path)[1].rstrip("\n").encode()
    _rewrite_line(path, 1, line.replace(b'"fields":{', b'"fields":{"site":"site-9",'))
    report = verify(path)
    assert not report.ok and report.line == 2 and "'site' appears twice" in report.problem


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda entry: json.dumps(entry),  # default separators
        lambda entry: json.dumps(entry, separators=(",", ":")),  # keys unsorted
        lambda entry: json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True),  # \u escapes
        lambda entry: json.dumps(entry, sort_keys=True, separators=(",", ":")).replace('"round":1', '"round":1.0e0'),
    ],
    ids=["spaces", "unsorted", "ascii-escapes", "number-spelling"],
)
def test_verify__same_entry_in_other_bytes_is_a_bad_line(tmp_path, rewrite):
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append("contribution.received", site="site-é", round=0)
    log.append("contribution.received", site="site-é", round=1)
    log.append("round.closed", round=1)
    entry = json.loads(lines(path)[1])
    assert rewrite(entry) != lines(path)[1].rstrip("\n")
    _rewrite_line(path, 1, rewrite(entry).encode())
    report = verify(path)
    assert not report.ok and report.line == 2 and "canonical form" in report.problem


def test_open__refuses_last_line_that_is_not_canonical_without_a_traceback(tmp_path):
    for index, line in enumerate([b"\xff\xfe", None, b"spaces"]):
        path = make_log(tmp_path / str(index), 3)
        last = lines(path)[-1].rstrip("\n")
        if line is None:
            line = last.replace('"fields":{', '"fields":{"site":"x",').encode()
        elif line == b"spaces":
            line = json.dumps(json.loads(last)).encode()
        _rewrite_line(path, 2, line)
        with pytest.raises(AuditError, match="not a valid entry"):
            AuditLog(path)


@pytest.mark.parametrize("line", [b'{"seq":\xff}', b'{"a":1,"a":1}', b'{"a": 1}'])
def test_cli_verify__bad_bytes_exit_1_without_traceback(tmp_path, line):
    path = make_log(tmp_path, 3)
    _rewrite_line(path, 0, line)
    result = CliRunner().invoke(main, ["audit", "verify", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{path}:1: " in result.output and len(result.output.strip().splitlines()) == 1


def test_read_entries__filters_by_event_and_names_a_bad_line(tmp_path):
    path = make_log(tmp_path, 3)
    AuditLog(path).append("job.submitted", job_id="job-1")
    assert [e["fields"]["job_id"] for e in read_entries(path, event="job.submitted")] == ["job-1"]
    assert [e["seq"] for e in read_entries(path)] == [0, 1, 2, 3]
    assert list(read_entries(tmp_path / "absent.log")) == []
    _rewrite_line(path, 1, lines(path)[1].rstrip("\n").replace(",", ", ").encode())
    with pytest.raises(AuditError, match=rf"{path}:2: not in canonical form"):
        list(read_entries(path))


def test_verify__missing_log(tmp_path):
    with pytest.raises(InputError, match="no such audit log"):
        verify(tmp_path / "nope.log")


APPEND = """
import sys
from pipeline.federation.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.append("round.closed", process=sys.argv[2], round=i)
"""


def _append_in_subprocess(path: Path, tag: str, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", APPEND, str(path), tag, str(count)])


def test_append__continues_across_process_restarts(tmp_path):
    path = tmp_path / "audit.log"
    for tag in ("first", "second"):
        assert _append_in_subprocess(path, tag, 3).wait(timeout=60) == 0
    log = AuditLog(path)
    assert log.entries == 6
    entry = log.append("job.done", job="j1")
    assert entry["seq"] == 6
    report = verify(path)
    assert report.ok and report.entries == 7 and report.head == entry["entry_hash"]
    processes = [json.loads(line)["fields"].get("process") for line in lines(path)]
    assert processes == ["first"] * 3 + ["second"] * 3 + [None]


def test_append__concurrent_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.log"
    AuditLog(path)  # created before both writers start
    writers = [_append_in_subprocess(path, tag, 15) for tag in ("a", "b")]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    report = verify(path)
    assert report.ok and report.entries == 30


def test_append__second_handle_sees_other_writers(tmp_path):
    path = tmp_path / "audit.log"
    one, two = AuditLog(path), AuditLog(path)
    one.append("a.one")
    entry = two.append("a.two")
    assert entry["seq"] == 1 and verify(path).ok


def test_open__repairs_head_after_crash_between_entry_and_head(tmp_path):
    path = make_log(tmp_path, 3)
    old_head = head_path(path).read_text()
    AuditLog(path).append("round.closed", round=3)
    head_path(path).write_text(old_head)  # as if the process died before replacing the head
    assert not verify(path).ok
    log = AuditLog(path)
    assert log.entries == 4
    assert verify(path).ok


def test_open__drops_half_written_last_line(tmp_path):
    path = make_log(tmp_path, 3)
    with open(path, "a") as handle:
        handle.write('{"seq":3,"time":"2025-')
    report = verify(path)
    assert not report.ok and report.line == 4 and "incomplete" in report.problem
    log = AuditLog(path)
    assert log.entries == 3
    log.append("round.closed", round=3)
    assert verify(path).ok and verify(path).entries == 4


def test_open__finishes_entry_missing_its_newline(tmp_path):
    path = make_log(tmp_path, 3)
    old_head = head_path(path).read_text()
    AuditLog(path).append("round.closed", round=3)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    head_path(path).write_text(old_head)
    assert AuditLog(path).entries == 4
    assert verify(path).ok


def test_open__refuses_log_with_edited_last_entry(tmp_path):
    path = make_log(tmp_path, 3)
    write_lines(path, lines(path)[:-1] + [lines(path)[-1].replace('"round":2', '"round":7')])
    with pytest.raises(AuditError, match="not a valid entry"):
        AuditLog(path).append("x.y")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"genotypes": np.zeros((3, 4), dtype=np.int8)}, "ndarray"),
        ({"payload": b"\x00\x01"}, "bytes"),
        ({"value": float("nan")}, "finite"),
        ({"sample_ids": ["s"] * 5000}, "limit"),
    ],
)
def test_append__refuses_payloads(tmp_path, fields, match):
    log = AuditLog(tmp_path / "audit.log")
    with pytest.raises(AuditError, match=match):
        log.append("contribution.received", **fields)
    assert log.entries == 0 and (tmp_path / "audit.log").read_bytes() == b""


def test_append__refuses_bad_event_name(tmp_path):
    with pytest.raises(AuditError, match="event"):
        AuditLog(tmp_path / "audit.log").append("Round Closed")


def test_append__event_is_positional_so_fields_may_be_named_event(tmp_path):
    entry = AuditLog(tmp_path / "audit.log").append("job.submitted", event="census")
    assert entry["event"] == "job.submitted" and entry["fields"] == {"event": "census"}


def test_digest__sha256_of_payload():
    assert digest(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


def test_cli_verify__ok_and_tampered(tmp_path):
    path = make_log(tmp_path, 3)
    runner = CliRunner()
    result = runner.invoke(main, ["audit", "verify", str(path)])
    assert result.exit_code == 0
    assert result.output.strip() == f"ok: 3 entries, head {verify(path).head}"
    result = runner.invoke(main, ["audit", "verify", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["ok"] is True

    content = lines(path)
    content[0], content[1] = content[1], content[0]
    write_lines(path, content)
    result = runner.invoke(main, ["audit", "verify", str(path)])
    assert result.exit_code == 1
    assert f"{path}:1:" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, ["audit", "verify", str(path), "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["line"] == 1


def test_cli_verify__missing_log(tmp_path):
    result = CliRunner().invoke(main, ["audit", "verify", str(tmp_path / "nope.log")])
    assert result.exit_code == 1 and "no such audit log" in result.output
