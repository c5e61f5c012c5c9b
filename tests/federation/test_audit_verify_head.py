"""``genofed audit verify LOG --head HASH``: a head recorded elsewhere stands in for the missing ``LOG.head``."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.federation.audit import AuditLog, head_path, verify


def _log(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    entries = [log.append("job.submitted", job_id=f"job-{i}") for i in range(3)]
    return tmp_path / "audit.log", entries[-1]["entry_hash"]


def test_verify__with_head_given_the_head_file_is_not_required(tmp_path):
    path, head = _log(tmp_path)
    head_path(path).unlink()
    answer = CliRunner().invoke(main, ["audit", "verify", str(path), "--head", head])
    assert answer.exit_code == 0, answer.output
    assert verify(path, expected_head=head).ok


def test_verify__without_head_file_and_without_head_it_is_still_refused(tmp_path):
    path, _ = _log(tmp_path)
    head_path(path).unlink()
    answer = CliRunner().invoke(main, ["audit", "verify", str(path)])
    assert answer.exit_code == 1 and "is missing" in answer.output and "--head" in answer.output


def test_verify__a_wrong_head_fails_with_or_without_the_head_file(tmp_path):
    path, head = _log(tmp_path)
    wrong = "0" * 64
    assert not verify(path, expected_head=wrong).ok
    head_path(path).unlink()
    answer = CliRunner().invoke(main, ["audit", "verify", str(path), "--head", wrong])
    assert answer.exit_code == 1 and f"but {wrong} was expected" in answer.output


def test_verify__a_present_head_file_is_still_checked_with_head_given(tmp_path):
    path, head = _log(tmp_path)
    head_path(path).write_text(json.dumps({"entries": 2, "head": head}))  # a head file that disagrees with the log
    report = verify(path, expected_head=head)
    assert not report.ok and "records 2 entries" in report.problem
