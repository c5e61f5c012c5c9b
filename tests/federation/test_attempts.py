"""A site's record of round attempts: a completed round never again, aborted ones a bounded number of times."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.attempts import RoundAttempts


def test_round_attempts__a_completed_round_is_refused_even_after_a_restart(tmp_path):
    record = RoundAttempts(tmp_path / "round-attempts.json")
    assert record.begin("job-1", 0, max_reruns=5, site="alpha") == 1
    record.finish("job-1", 0, "done")
    restarted = RoundAttempts(tmp_path / "round-attempts.json")
    with pytest.raises(PolicyRefusal, match="completed already"):
        restarted.begin("job-1", 0, max_reruns=5, site="alpha")
    assert restarted.begin("job-1", 1, max_reruns=0, site="alpha") == 1  # the next round is a new round
    assert restarted.begin("job-2", 0, max_reruns=0, site="alpha") == 1


@pytest.mark.parametrize("max_reruns", [0, 1, 3])
def test_round_attempts__aborted_rounds_rerun_at_most_max_reruns_times(tmp_path, max_reruns):
    record = RoundAttempts(tmp_path / "round-attempts.json")
    for attempt in range(1, max_reruns + 2):
        assert record.begin("job-1", 0, max_reruns=max_reruns, site="alpha") == attempt
        record.finish("job-1", 0, "aborted")
    with pytest.raises(PolicyRefusal, match=f"attempted {max_reruns + 1} times.*max_round_reruns = {max_reruns}"):
        RoundAttempts(tmp_path / "round-attempts.json").begin("job-1", 0, max_reruns=max_reruns, site="alpha")


def test_round_attempts__an_attempt_that_never_finished_counts(tmp_path):
    record = RoundAttempts(tmp_path / "round-attempts.json")
    record.begin("job-1", 0, max_reruns=0, site="alpha")
    record.prepared("job-1", 0)  # secrets saved: messages may have left; then the agent lost the round's state
    with pytest.raises(PolicyRefusal, match="attempted 1 times"):
        RoundAttempts(tmp_path / "round-attempts.json").begin("job-1", 0, max_reruns=0, site="alpha")


def test_round_attempts__an_attempt_stopped_while_preparing_resumes_as_the_same_attempt(tmp_path):
    record = RoundAttempts(tmp_path / "round-attempts.json")
    assert record.begin("job-1", 0, max_reruns=0, site="alpha") == 1
    # A crash or a full disk before the round's secrets were saved: nothing of the attempt was sent.
    restarted = RoundAttempts(tmp_path / "round-attempts.json")
    assert restarted.begin("job-1", 0, max_reruns=0, site="alpha") == 1
    restarted.prepared("job-1", 0)
    restarted.finish("job-1", 0, "aborted")
    with pytest.raises(PolicyRefusal, match="attempted 1 times"):
        restarted.begin("job-1", 0, max_reruns=0, site="alpha")


def test_round_attempts__an_unreadable_record_stops_the_agent(tmp_path):
    path = tmp_path / "round-attempts.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="round-attempts.json.*unreadable"):
        RoundAttempts(path)
    path.write_text("[]")
    with pytest.raises(ConfigurationError, match="expected a JSON object"):
        RoundAttempts(path)
