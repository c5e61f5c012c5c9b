"""Which secure-sum rounds a site has taken part in, and how each attempt ended.

A site keeps this record in its state folder, outside any job's scratch folder, so
that neither an agent restart nor a coordinator that stops and re-lists a job erases
it. It exists because a coordinator that may deviate could otherwise run one round of
a job again and again:

- after a round the site *completed*, a second run over fewer sites would give the
  difference of two sums, one site's input; a completed round is never run again;
- after an *aborted* round, each new attempt draws fresh keys and, with SecAgg+, a fresh
  neighbour graph: aborting until the graph suits colluding sites is bounded by the
  site's ``max_round_reruns``.

An attempt is ``preparing`` from its start until the site has saved the round's secrets
(:meth:`RoundAttempts.prepared`), and nothing of it can have left the site before then:
a site that crashed, or ran out of disk, while preparing resumes the same attempt instead
of counting a rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.outputs import write_private

__all__ = ["RoundAttempts"]

_OUTCOMES = ("preparing", "started", "done", "aborted")


class RoundAttempts:
    """The site's record of round attempts, one JSON file: ``{job: {round: {"attempts": n, "outcome": ...}}}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._record: dict[str, dict[str, dict[str, object]]] = self._load()

    def _load(self) -> dict[str, dict[str, dict[str, object]]]:
        if not self.path.is_file():
            return {}
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigurationError(
                f"{self.path}: the record of this site's round attempts is unreadable ({error}); it protects the site "
                "against rounds being re-run, so the agent will not start without it: restore it from a backup"
            ) from None
        if not isinstance(record, dict):
            raise ConfigurationError(f"{self.path}: expected a JSON object of jobs, got {type(record).__name__}")
        return record

    def begin(self, job_id: str, round_index: int, *, max_reruns: int, site: str) -> int:
        """Records a new attempt at a round; returns its number (1 for the first).

        Raises:
            PolicyRefusal: the site completed this round already, or its earlier
                attempts were aborted more often than ``max_reruns`` allows.
        """
        entry = self._record.get(job_id, {}).get(str(round_index))
        attempts = 0 if entry is None else int(entry["attempts"])  # type: ignore[call-overload]
        if entry is not None and entry["outcome"] == "done":
            raise PolicyRefusal(
                f"site {site}: round {round_index} of job {job_id} was completed already; this site never takes part in "
                "a round twice (a second sum over other sites would reveal the difference)"
            )
        if entry is not None and entry["outcome"] == "preparing":
            return attempts  # the same attempt again: nothing of it was sent
        if attempts > max_reruns:
            raise PolicyRefusal(
                f"site {site}: round {round_index} of job {job_id} was attempted {attempts} times and aborted; this site's "
                f"policy allows max_round_reruns = {max_reruns} further attempts (aborting to redraw keys and neighbours "
                "is bounded)"
            )
        self._save(job_id, round_index, attempts + 1, "preparing")
        return attempts + 1

    def prepared(self, job_id: str, round_index: int) -> None:
        """Records that the current attempt's secrets are saved: from now on its messages may leave the site."""
        self.finish(job_id, round_index, "started")

    def completed(self, job_id: str, round_index: int) -> bool:
        """Whether the site completed this round already."""
        entry = self._record.get(job_id, {}).get(str(round_index))
        return entry is not None and entry["outcome"] == "done"

    def finish(self, job_id: str, round_index: int, outcome: str) -> None:
        """Records the state of the round's current attempt (``started``, ``done`` or ``aborted``)."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be one of {_OUTCOMES}, got {outcome!r}")
        entry = self._record.get(job_id, {}).get(str(round_index))
        self._save(job_id, round_index, 1 if entry is None else int(entry["attempts"]), outcome)  # type: ignore[call-overload]

    def _save(self, job_id: str, round_index: int, attempts: int, outcome: str) -> None:
        self._record.setdefault(job_id, {})[str(round_index)] = {"attempts": attempts, "outcome": outcome}
        write_private(self.path, json.dumps(self._record, sort_keys=True).encode())
