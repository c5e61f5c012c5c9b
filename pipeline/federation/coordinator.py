"""The coordinator's job engine: an analysis run as a sequence of secure-sum rounds.

A job is an analysis (:mod:`pipeline.analyses`) with its spec
(:mod:`pipeline.federation.job_spec`). The :class:`Coordinator` runs it round after
round: it asks the analysis for the round's layout, opens one secure-aggregation round
(:mod:`pipeline.secagg.server`) among the invited sites, collects each stage's messages
(they arrive over HTTPS, :mod:`pipeline.federation.api`), closes the stage with the
pure ``server_advance`` when every expected site has answered or the stage's deadline
has passed (silent sites have dropped out), decodes the sum exactly
(:meth:`pipeline.encoding.Layout.decode`, which refuses sums outside the fields'
declared bounds), hands it to the analysis' ``coordinator_step``, and opens the next
round or stores the result with the files the analysis renders from it
(``write_outputs``).

Nothing here is lost on a crash: every accepted message and every stage closure is in
the :class:`~pipeline.federation.store.Store` before it is acknowledged, committed in one
transaction with the audit entries that record it, and :meth:`Coordinator.recover`
appends any entry a crash kept from the audit log, then replays the messages through
``server_advance`` (deterministic) to rebuild each running job at its current stage. A
round's public state is stored as the JSON of the analysis' typed state and read back
with its ``state_from_json``.

Site IDs: a job's participants (sorted names) are sites 1..n in every round. The first
round invites every participant that has not declined; the sites its sum included are
the job's cohort, and every later round invites the cohort. A cohort site missing from a
later round's sum fails the job with an error naming it, unless the analysis declares
that round partial (training steps); the result summary lists the sites of the last
round (``sites``) and each site's missed rounds (``missed_rounds``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.analyses import Analysis, JobState, KeyUnion, Result, RoundLayout
from pipeline.analyses.registry import ANALYSIS_NAMES, get_analysis
from pipeline.encoding import Layout
from pipeline.errors import (
    AggregationAborted, ConfigurationError, GenofedError, IdentityError, JobPruned, MessageConflict, NotFoundError,
    ProtocolError,
)
from pipeline.federation import secagg_wire, wire
from pipeline.federation.audit import already_appended, check_fields, read_entries
from pipeline.federation.checkpoints import CHECKPOINT_EVENT, Checkpoint, sign_checkpoint
from pipeline.federation.job_spec import (
    DEFAULT_STAGE_TIMEOUT, analysis_parameters, check_job_id, complete_privacy, default_threshold, new_job_id,
    parse_round_options,
)
from pipeline.federation.roster import Roster
from pipeline.federation.rounds import (
    KEY_UNION_STAGE, PREFLIGHT_STAGE, check_preflight, decode_keys, round_config, union_keys,
)
from pipeline.federation.store import JobFootprint, StoredJob, StoredMessage
from pipeline.secagg.messages import SERVER, Message, RoundConfig, Stage
from pipeline.secagg.server import ServerAborted, ServerDone, ServerState, server_advance, server_init, server_result
from pipeline.secagg.prg import PRGS

log = logging.getLogger(__name__)

__all__ = ["Coordinator", "AuditSink"]


class AuditSink(Protocol):
    """What the engine needs of an audit log (:class:`pipeline.federation.audit.AuditLog`)."""

    def append(self, event: str, /, **fields: Any) -> dict[str, Any]: ...


class _NoAudit:
    def append(self, event: str, /, **fields: Any) -> dict[str, Any]:
        return {}


def _expected_ids(server: ServerState) -> frozenset[int]:
    """The sites whose message the server waits for in its current stage."""
    stage = server.stage
    if stage is Stage.ADVERTISE_KEYS:
        return frozenset(server.config.site_ids)
    if stage in (Stage.CHOOSE_GRAPH, Stage.SHARE_KEYS):
        return frozenset(server.directory)  # type: ignore[union-attr]
    if stage is Stage.MASKED_INPUT:
        return server.shared  # type: ignore[union-attr,no-any-return]
    if stage is Stage.CONSISTENCY_CHECK:
        return server.survivors  # type: ignore[union-attr,no-any-return]
    if stage is Stage.UNMASKING:
        return server.asked  # type: ignore[union-attr,no-any-return]
    return frozenset()


@dataclass
class _Round:
    """The round in progress of one running job (a cache rebuilt from the store)."""

    job_id: str
    analysis: Analysis[Any]
    spec: dict[str, Any]
    participants: tuple[str, ...]
    threshold: int
    round_index: int
    state: JobState
    layout: RoundLayout
    site_ids: tuple[int, ...]
    config: RoundConfig | None
    server: ServerState | None
    declined: set[str]
    stage_seq: int = 0
    stage_opened: float = 0.0
    received: dict[str, Any] = field(default_factory=dict)
    inbox: dict[int, bytes] = field(default_factory=dict)
    state_digest: str = ""
    preflight: bool = False

    def __post_init__(self) -> None:
        # Every task a site polls for carries it; a census state holds every variant ID
        # (megabytes of JSON), so it is hashed once per round, not once per poll.
        self.state_digest = wire.digest(wire.canonical_json(self.state.to_json()))

    @property
    def stage(self) -> str:
        if self.preflight:
            return PREFLIGHT_STAGE
        return KEY_UNION_STAGE if self.server is None else self.server.stage.value

    @property
    def kind(self) -> str:
        """What a site does in the current stage: ``preflight``, ``keys`` (a key union) or ``secagg``."""
        if self.preflight:
            return PREFLIGHT_STAGE
        return "keys" if self.server is None else "secagg"

    def site_id(self, name: str) -> int:
        return self.participants.index(name) + 1

    def name_of(self, site_id: int) -> str:
        return self.participants[site_id - 1]

    def expected(self) -> set[str]:
        """Site names that still owe a message in the current stage."""
        if self.server is None:
            ids: frozenset[int] = frozenset(self.site_ids)
        else:
            ids = _expected_ids(self.server)
        return {self.name_of(i) for i in ids} - self.declined - set(self.received)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("stage_timeout", DEFAULT_STAGE_TIMEOUT))


class Coordinator:
    """The coordinator's job engine (identity: the federation's one coordinator).

    Thread-safe: every public method holds one lock, so the HTTP server may call it
    from worker threads. ``version`` increases on every change (long polls watch it).

    Each call's state changes and the audit entries recording them commit as one store
    transaction, and the entries reach the audit log, in the engine's order, before the
    call returns (see :meth:`_locked`): nothing the engine used goes unaudited, even
    across a crash.
    """

    def __init__(
        self,
        store: Any,
        *,
        federation: str,
        sites: Sequence[str],
        audit: AuditSink | None = None,
        clock: Callable[[], float] = time.time,
        roster: Roster | None = None,
        identity_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> None:
        self.store = store
        self.identity_key = identity_key
        self.federation = federation
        self.sites = tuple(sites)
        self.roster = roster
        self.audit: AuditSink = audit if audit is not None else _NoAudit()
        self.clock = clock
        self.version = 0
        self._lock = threading.RLock()
        self._audit_turn = threading.Lock()
        self._depth = 0
        self._pending: list[tuple[int, str, dict[str, Any]]] = []
        self._rounds: dict[str, _Round] = {}
        self._stale = False
        self.disk_full: str | None = None
        """Why the last write failed on a full disk, until a write succeeds again (shown in every running job's status)."""
        self.recover()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The engine lock and, outermost, one store transaction that commits the call's changes and their audit entries.

        The audit entries a call makes are queued in the store's audit outbox inside the
        transaction, so they commit with the changes they record or not at all. After the
        commit the calling thread takes the audit log's turn (keeping the engine's order
        among writers), lets the engine go, appends the entries (each append syncs the log)
        and drops them from the outbox, all before it returns: they are on disk before the
        HTTP answer, as the store's rows are, while another request's engine work overlaps
        the write. A crash between the commit and the append leaves them queued, and
        :meth:`recover` appends them. An error rolls the transaction back. The engine raises
        a :class:`GenofedError` only to refuse a call before changing anything (an error
        after a change fails the job instead); any other error (I/O, a full disk) may come
        midway, so it marks the in-memory rounds stale and the next call rebuilds them.
        """
        pending: list[tuple[int, str, dict[str, Any]]] = []
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                with self.store.transaction():
                    if self._stale:
                        self._rebuild_rounds()
                    yield
            except GenofedError:
                raise  # a refusal: raised before the call changed anything (later errors fail the job instead)
            except Exception:
                self._stale = True  # an I/O error or a bug midway: the rounds in memory may be ahead of the store
                raise
            finally:
                self._depth = 0
                pending, self._pending = self._pending, []
            if pending:
                self._audit_turn.acquire()
        if pending:
            try:
                self._append_audit(pending)
            finally:
                self._audit_turn.release()

    def _append_audit(self, queued: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Appends committed outbox entries to the audit log, then drops them from the outbox."""
        for _, event, fields in queued:
            self.audit.append(event, **fields)
        with self.store.transaction():
            self.store.drop_audit(queued[-1][0])

    def _log(self, event: str, /, **fields: Any) -> None:
        """Queues an audit entry in the current transaction; appended to the log after it commits."""
        assert self._depth, "audit entries of the engine are made under its lock"
        fields = check_fields(event, fields)
        seq = self.store.queue_audit(event, fields)
        self._pending.append((seq, event, fields))

    # ------------------------------------------------------------------ analyst side

    def submit(self, spec: Mapping[str, Any], analyst: str) -> str:
        """Validates and starts a job; returns its ID.

        Raises:
            ConfigurationError: the spec is wrong (nothing is stored).
        """
        spec = dict(spec)
        options = parse_round_options(spec, self.sites, known_analyses=ANALYSIS_NAMES, mask_prgs=PRGS)
        analysis = get_analysis(options.analysis)
        participants = options.participants
        threshold = options.threshold if options.threshold is not None else default_threshold(len(participants), options.num_neighbours)
        spec = complete_privacy(spec, threshold)
        state = analysis.init(analysis_parameters(spec), participants)
        job_id = new_job_id(self.clock())
        with self._locked():
            self.store.add_job(
                StoredJob(job_id, analysis.name, spec, analyst, participants, threshold, "running", None, self.clock(), None)
            )
            self._log(
                "job.submitted", job_id=job_id, analysis=analysis.name, analyst=analyst,
                sites=list(participants), threshold=threshold, spec_digest=wire.digest(wire.canonical_json(spec)),
            )
            log.info("job %s submitted by %s: %s over %s", job_id, analyst, analysis.name, ", ".join(participants),
                     extra={"event": "job.submitted", "job_id": job_id, "analysis": analysis.name, "analyst": analyst,
                            "sites": list(participants)})
            self._open_round(job_id, analysis, spec, participants, threshold, 0, state, set())
            self._changed()
        return job_id

    def job(self, job_id: str, *, analyst: str | None = None) -> StoredJob:
        """The stored job (its analyst, participants, status); with ``analyst``, only if they submitted it.

        The HTTP server's access rules (:data:`pipeline.federation.api.ACCESS_RULES`) read
        the owner and the participants here before a handler runs.

        Raises:
            ProtocolError: ``job_id`` is not a job ID (nothing is looked up).
            NotFoundError: no such job, or (with ``analyst``) another analyst's job: the
                same answer, word for word, so that an analyst cannot tell whether a job
                of someone else exists.
        """
        job = self._job(job_id)
        if analyst is not None and job.analyst != analyst:
            log.warning("analyst %r asked for job %s of another analyst; answered as unknown", analyst, job_id)
            raise _unknown_job(job_id)
        return job

    def list_jobs(self, *, analyst: str | None = None) -> list[dict[str, Any]]:
        """Every job, newest first, as ``{job_id, analysis, status, analyst, created_at}``; with ``analyst``, only theirs."""
        with self._locked():
            jobs = self.store.jobs()
        return [
            {"job_id": job.job_id, "analysis": job.analysis, "status": job.status, "analyst": job.analyst,
             "created_at": job.created_at}
            for job in reversed(jobs) if analyst is None or job.analyst == analyst
        ]

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status: running (with round and stage), done or failed (with the reason)."""
        with self._locked():
            job = self._job(job_id)
            out: dict[str, Any] = {
                "job_id": job.job_id, "analysis": job.analysis, "status": job.status, "error": job.error,
                "sites": list(job.participants), "threshold": job.threshold, "analyst": job.analyst,
                "declined": self.store.declines(job_id),
            }
            current = self._rounds.get(job_id)
            if current is not None:
                out.update(round=current.round_index, stage=current.stage, waiting_for=sorted(current.expected()))
                if self.disk_full is not None:
                    out["notice"] = (f"coordinator disk full ({self.disk_full}): uploads are refused with 507 and kept "
                                     "nowhere; the job resumes once the operator frees space")
            elif job.status != "running":
                out["missed_rounds"] = self._stored_missed_rounds(job)
            if job.pruned_at is not None:
                out.update(pruned_at=job.pruned_at, notice=_pruned_notice(job))
            return out

    def cancel(self, job_id: str, *, by: str, role: str = "analyst") -> dict[str, Any]:
        """Stops a running job at once: marked ``cancelled`` (naming who), its round dropped, audited as ``job.cancelled``.

        The job's status, its in-memory round and the audit entry change in one store
        transaction (as :meth:`_fail` does). Its sites see it no longer active at their
        next poll and stop working on it; uploads for it are refused (409) from now on.
        Who may cancel which job is the HTTP server's rule (an analyst their own, an
        operator any: :data:`pipeline.federation.api.ACCESS_RULES`).

        Args:
            job_id: the job to stop.
            by: the canceller's name (an analyst or operator of the roster).
            role: the canceller's role, as their certificate says.

        Returns:
            The job's status after the change (:meth:`status`).

        Raises:
            NotFoundError: no such job.
            MessageConflict: the job has already ended (done, failed or cancelled): nothing changes.
        """
        with self._locked():
            job = self._job(job_id)
            if job.status != "running":
                raise MessageConflict(
                    f"job {job_id} is already {job.status}{': ' + job.error if job.error else ''}; only a running job "
                    "can be cancelled"
                )
            current = self._rounds.pop(job_id, None)
            reason = f"cancelled by {role} {by}"
            log.warning("job %s %s", job_id, reason, extra={"event": "job.cancelled", "job_id": job_id})
            self.store.finish_job(job_id, "cancelled", reason)
            self._log("job.cancelled", job_id=job_id, by=by, role=role,
                      round=None if current is None else current.round_index,
                      stage=None if current is None else current.stage)
            self._changed()
            return self.status(job_id)

    def use_roster(self, roster: Roster, *, by: str, digest: str) -> None:
        """Takes up a newer federation roster, verified by the caller, audited as ``roster.installed``.

        New rounds bind keys to its certificates, and new jobs invite its sites by
        default. The swap and its audit entry are one engine call, like every other
        change the audit log records.
        """
        with self._locked():
            previous = None if self.roster is None else self.roster.version
            self.roster, self.sites = roster, roster.sites
            self._log("roster.installed", version=roster.version, previous=previous, by=by, sites=list(roster.sites),
                      digest=digest)

    def note_disk_full(self, reason: str) -> None:
        """Records that a request failed on a full disk (the server calls it; a later accepted upload clears it)."""
        self.disk_full = reason[:300]

    def running_jobs(self) -> list[dict[str, Any]]:
        """Each running job's ID, analysis, analyst, round, stage and the sites it waits for (an operator's overview)."""
        with self._locked():
            return [
                {"job_id": job_id, "analysis": current.analysis.name, "analyst": self._job(job_id).analyst,
                 "round": current.round_index, "stage": current.stage, "waiting_for": sorted(current.expected())}
                for job_id, current in sorted(self._rounds.items())
            ]

    def prune(self, *, older_than: float, dry_run: bool = False) -> dict[str, Any]:
        """Applies the retention policy: removes the rounds, messages and results of jobs that ended over ``older_than`` seconds ago.

        Only a done, failed or cancelled job goes, never a running one. Its row stays as a
        tombstone (analysis, owner, outcome, finished and pruned times, the digest of what
        was removed), and a ``job.pruned`` audit entry, committed with the deletion, records
        the same; the audit log still names every submitted job the store knows. The body
        files no row names any more are deleted and the database is vacuumed, under the
        engine lock, so no upload can claim a file being deleted.

        Args:
            older_than: seconds since the job finished (0: every ended job).
            dry_run: list what would go, change nothing.

        Returns:
            ``{"dry_run", "older_than_seconds", "cutoff", "jobs": [{job_id, analysis, analyst,
            status, finished_at, messages, results, rounds, bytes, digest}], "bytes": ...,
            "store_before", "store_after", "bytes_freed"}`` (sizes from :meth:`Store.disk_usage`).
        """
        if older_than < 0:
            raise ConfigurationError(f"older_than must be a number of seconds >= 0, got {older_than}")
        cutoff = self.clock() - older_than
        before = self.store.disk_usage()
        pruned: list[tuple[StoredJob, JobFootprint]] = []
        with self._locked():
            candidates = [job for job in self.store.prunable_jobs(cutoff) if job.job_id not in self._rounds]
            if dry_run:
                pruned = [(job, self.store.job_footprint(job.job_id)) for job in candidates]
            else:
                now = self.clock()
                for job in candidates:
                    footprint = self.store.prune_job(job.job_id, now)
                    pruned.append((job, footprint))
                    self._log("job.pruned", job_id=job.job_id, analysis=job.analysis, analyst=job.analyst, outcome=job.status,
                              finished_at=job.finished_at, pruned_at=now, removed_digest=footprint.digest,
                              messages=footprint.messages, results=footprint.results, bytes=footprint.bytes)
                    log.info("job %s pruned (%s, finished %s): %d messages, %d results, %d bytes", job.job_id, job.status,
                             _date(job.finished_at), footprint.messages, footprint.results, footprint.bytes,
                             extra={"event": "job.pruned", "job_id": job.job_id, "bytes": footprint.bytes})
        if pruned and not dry_run:
            with self._lock:
                self.store.remove_blobs([digest for _, footprint in pruned for digest in footprint.blobs])
                self.store.vacuum()
        after = before if dry_run else self.store.disk_usage()
        return {
            "dry_run": dry_run, "older_than_seconds": older_than, "cutoff": cutoff,
            "jobs": [{"job_id": job.job_id, "analysis": job.analysis, "analyst": job.analyst, "status": job.status,
                      "finished_at": job.finished_at, "messages": footprint.messages, "results": footprint.results,
                      "rounds": footprint.rounds, "bytes": footprint.bytes, "digest": footprint.digest}
                     for job, footprint in pruned],
            "bytes": sum(footprint.bytes for _, footprint in pruned),
            "store_before": before, "store_after": after, "bytes_freed": before["total"] - after["total"],
        }

    def results(self, job_id: str) -> dict[str, Any]:
        """The result summary and the names of the result tables.

        Raises:
            NotFoundError: unknown job; MessageConflict: the job is not done.
        """
        job = self._job(job_id)
        if job.pruned_at is not None:
            raise JobPruned(f"job {job_id} ({job.status}) {_pruned_notice(job)}")
        if job.status != "done":
            raise MessageConflict(f"job {job_id} is {job.status}{': ' + job.error if job.error else ''}; it has no results")
        stored = self.store.results(job_id)
        summary = json.loads(stored["summary"][1]) if "summary" in stored else {}
        return {
            "summary": summary,
            "tables": sorted(name for name, (kind, _) in stored.items() if kind == "table"),
            "files": sorted(name for name, (kind, _) in stored.items() if kind == "file"),
        }

    def result_item(self, job_id: str, name: str, kind: str) -> bytes:
        """One stored result: a table (Arrow IPC stream) or a rendered file (its bytes).

        Raises:
            NotFoundError: the job has no result of that kind and name.
        """
        job = self._job(job_id)
        if job.pruned_at is not None:
            raise JobPruned(f"job {job_id} ({job.status}) {_pruned_notice(job)}")
        stored = self.store.results(job.job_id)
        if name not in stored or stored[name][0] != kind:
            raise NotFoundError(f"job {job_id} has no result {kind} {name!r}")
        return stored[name][1]

    # ------------------------------------------------------------------ site side

    def active_jobs(self, site: str) -> list[str]:
        """Running jobs whose current round invites ``site`` (a site left out of a job's cohort, or that declined, has none)."""
        with self._locked():
            return sorted(j for j, r in self._rounds.items()
                          if site in r.participants and r.site_id(site) in r.site_ids and site not in r.declined)

    def next_task(self, site: str) -> dict[str, Any] | None:
        """What ``site`` must do now: the first stage of a running job that waits for it."""
        with self._locked():
            for job_id in sorted(self._rounds):
                current = self._rounds[job_id]
                if site not in current.expected():
                    continue
                site_id = current.site_id(site)
                task = {
                    "job_id": job_id,
                    "analysis": current.analysis.name,
                    "spec": current.spec,
                    "round_index": current.round_index,
                    "stage": current.stage,
                    "kind": current.kind,
                    "site_id": site_id,
                    "site_ids": list(current.site_ids),
                    "participants": list(current.participants),
                    "threshold": current.threshold,
                    "analyst": self.store.job(job_id).analyst,
                    "federation": self.federation,
                    "has_message": site_id in current.inbox,
                    "state_digest": current.state_digest,
                }
                return task
            return None

    def round_state(self, site: str, job_id: str, round_index: int) -> dict[str, Any]:
        """The public state round ``round_index`` started from (what the site step reads)."""
        job = self._job(job_id)
        if site not in job.participants:
            raise IdentityError(f"site {site!r} is not a participant of job {job_id}")
        for stored in self.store.rounds(job_id):
            if stored.round_index == round_index:
                return dict(stored.state)
        raise NotFoundError(f"job {job_id} has no round {round_index}")

    def stage_message(self, site: str, job_id: str, round_index: int, stage: str) -> bytes:
        """The server's message to ``site`` for the current stage (Arrow IPC)."""
        with self._locked():
            current = self._current(site, job_id, round_index, stage)
            site_id = current.site_id(site)
            if site_id not in current.inbox:
                raise NotFoundError(f"job {job_id} round {round_index} stage {stage}: no message for site {site!r}")
            return current.inbox[site_id]

    def decline(self, site: str, job_id: str, reason: str) -> None:
        """Records that ``site`` refuses the job (its policy); it is left out from now on."""
        with self._locked():
            job = self._job(job_id)
            if site not in job.participants:
                raise IdentityError(f"site {site!r} is not a participant of job {job_id}")
            self.store.add_decline(job_id, site, reason[:500])
            self._log("site.declined", job_id=job_id, site=site, reason=reason[:500])
            current = self._rounds.get(job_id)
            if current is not None:
                current.declined.add(site)
                if not current.expected():
                    self._close_stage(current)
            self._changed()

    def receive(self, site: str, job_id: str, round_index: int, stage: str, message_id: str, body: bytes) -> dict[str, Any]:
        """Accepts one upload: idempotent by message ID, checked for job, round, stage and content.

        Returns:
            ``{"status": "accepted"}`` or ``{"status": "duplicate"}`` (same ID, same bytes).

        Raises:
            MessageConflict: message ID reused with other bytes, a replay, or a message
                for another job, round or stage (the message names the expected ones).
            ProtocolError: malformed content (wrong type, sender, shape...).
            NotFoundError: unknown job. IdentityError: the site is not a participant.
        """
        payload_digest = wire.digest(body)
        # The body's write and fsync happen before the lock; under it only a rename and a row.
        stage_body = getattr(self.store, "stage_body", None)
        staged = stage_body(body, payload_digest) if stage_body is not None else None
        try:
            return self._receive(site, job_id, round_index, stage, message_id, body, payload_digest, staged)
        finally:
            if staged is not None:
                self.store.discard(staged)

    def check_receivable(self, site: str, job_id: str, round_index: int, stage: str, message_id: str) -> None:
        """Whether ``site`` may upload for this job, round and stage now: checked before its body is read.

        A message ID already stored passes (its bytes decide between duplicate and
        conflict in :meth:`receive`).

        Raises:
            as :meth:`receive`, for everything but the content.
        """
        with self._locked():
            if self.store.message(f"{site}/{message_id}", body=False) is None:
                self._expect_sender(self._current(site, job_id, round_index, stage), site)

    def exchange_checkpoint(self, site: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Keeps a site's signed audit head and answers with the coordinator's own (:mod:`~pipeline.federation.checkpoints`).

        Raises:
            ProtocolError: not a checkpoint. IdentityError: not ``site``'s own, or not
                signed by its roster key.
            ConfigurationError: this coordinator has no roster, key or audit log to sign with.
        """
        checkpoint = Checkpoint.from_fields(fields)
        if (checkpoint.signer, checkpoint.role) != (site, "site"):
            raise IdentityError(f"site {site!r} sent a checkpoint of {checkpoint.role} {checkpoint.signer!r}")
        if self.roster is None or self.identity_key is None or isinstance(self.audit, _NoAudit):
            raise ConfigurationError("this coordinator keeps no signed audit checkpoints (no roster, key or audit log)")
        checkpoint.check_signature(self.roster)
        with self._audit_turn:
            entry = self.audit.append(CHECKPOINT_EVENT, **checkpoint.to_fields())
            mine = sign_checkpoint(self.identity_key, federation=self.federation, signer="coordinator", role="coordinator",
                                   entries=entry["seq"] + 1, head=entry["entry_hash"])
        return mine.to_fields()

    def _expect_sender(self, current: _Round, site: str) -> None:
        if site in current.expected():
            return
        job_id, round_index, stage = current.job_id, current.round_index, current.stage
        previous = self.store.message_of(job_id, round_index, stage, site, body=False)
        if previous is not None:
            raise MessageConflict(
                f"site {site!r} already sent its {stage} message of job {job_id} round {round_index} "
                f"(message id {previous.message_id}); replay refused"
            )
        raise MessageConflict(
            f"site {site!r} is not expected to send in stage {stage} of job {job_id} round {round_index} "
            "(it dropped out of this round or declined the job)"
        )

    def _receive(self, site: str, job_id: str, round_index: int, stage: str, message_id: str, body: bytes,
                 payload_digest: str, staged: Any) -> dict[str, Any]:
        with self._locked():
            # Message IDs are the sender's: namespaced by site, so no site can take another's ID and lock it out.
            stored_id = f"{site}/{message_id}"
            existing = self.store.message(stored_id, body=False)
            if existing is not None:
                if existing.digest == payload_digest:
                    return {"status": "duplicate", "message_id": message_id, "digest": payload_digest}
                raise MessageConflict(
                    f"message id {message_id!r} was already used for other content (digest {existing.digest[:16]}...); "
                    "a message id names one payload"
                )
            current = self._current(site, job_id, round_index, stage)
            self._expect_sender(current, site)
            decoded = self._validate(current, site, body)
            self.store.add_message(
                StoredMessage(stored_id, job_id, round_index, stage, site, payload_digest, body, self.clock()),
                **({"staged": staged} if staged is not None else {}),
            )
            self._log(
                "contribution.received", job_id=job_id, round=round_index, stage=stage, site=site,
                digest=payload_digest, bytes=len(body),
            )
            current.received[site] = decoded
            self.disk_full = None
            if not current.expected():
                self._close_stage(current)
            self._changed()
            return {"status": "accepted", "message_id": message_id, "digest": payload_digest}

    def tick(self) -> bool:
        """Closes every stage whose deadline has passed; returns whether anything changed."""
        changed = False
        with self._locked():
            now = self.clock()
            for current in list(self._rounds.values()):
                if now - current.stage_opened >= current.timeout or not current.expected():
                    log.info("job %s round %d: closing stage %s at its deadline", current.job_id, current.round_index, current.stage)
                    self._close_stage(current)
                    changed = True
            if changed:
                self._changed()
        return changed

    # ------------------------------------------------------------------ recovery

    def recover(self) -> None:
        """Appends the audit entries a crash left in the outbox, checks the store against the log, rebuilds running jobs.

        Raises:
            ConfigurationError: the audit log records submitted jobs the store lacks
                (see :meth:`_check_store_against_audit`).
        """
        self._append_crash_leftovers()
        self._check_store_against_audit()
        with self._locked():
            self._rebuild_rounds()

    def _rebuild_rounds(self) -> None:
        """The in-memory rounds of every running job, replayed from the store (under the lock)."""
        self._rounds.clear()
        self._stale = False
        for job in self.store.jobs(status="running"):
            try:
                self._recover_job(job)
            except GenofedError as error:
                self._fail(job.job_id, f"cannot resume after a restart: {error}")
        self._changed()

    def _append_crash_leftovers(self) -> None:
        """Appends the outbox entries a crash kept from the audit log (those already there are not repeated)."""
        queued = self.store.queued_audit()
        if not queued:
            return
        audit_path = getattr(self.audit, "path", None)
        tail = list(read_entries(audit_path))[-len(queued):] if audit_path is not None else []
        written = already_appended([(event, fields) for _, event, fields in queued], tail)
        if written < len(queued):
            log.warning("appending %d audit entries that a crash left between the store and the audit log",
                        len(queued) - written)
        with self._audit_turn:
            for _, event, fields in queued[written:]:
                self.audit.append(event, **fields)
            with self.store.transaction():
                self.store.drop_audit(queued[-1][0])

    def _check_store_against_audit(self) -> None:
        """Refuses to start on a database that lost jobs the audit log says were submitted.

        The audit log is synced at every append; the database may have been restored from
        an old backup, copied without its ``-wal``, or rolled back by a power loss. Serving
        from it would forget jobs that analysts were told exist (and reuse nothing safely).
        """
        audit_path = getattr(self.audit, "path", None)
        if audit_path is None:
            return
        stored = {job.job_id for job in self.store.jobs()}
        missing = sorted({
            entry["fields"].get("job_id") for entry in read_entries(audit_path, event="job.submitted")
        } - stored - {None})
        if missing:
            database = getattr(self.store, "path", "the database")
            shown = ", ".join(str(job_id) for job_id in missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise ConfigurationError(
                f"{database}: the audit log {audit_path} records {len(missing)} submitted job(s) that the database lacks "
                f"({shown}); the database was restored from an older backup, copied without its -wal file, or lost "
                f"writes. Stop, and restore {database} together with {database}-wal from a backup taken after these jobs "
                "were submitted; the coordinator does not start on a database that forgot jobs"
            )

    def _recover_job(self, job: Any) -> None:
        analysis = get_analysis(job.analysis)
        rounds = self.store.rounds(job.job_id)
        if not rounds:
            raise ProtocolError(f"job {job.job_id} has no round")
        stored = rounds[-1]
        declined = set(self.store.declines(job.job_id))
        stages = self.store.stages(job.job_id, stored.round_index)
        site_ids, closed_before = stored.site_ids, 0
        if stages and stages[0].stage == PREFLIGHT_STAGE:
            site_ids, closed_before = tuple(job.participants.index(name) + 1 for name in stages[0].included), 1
            stages = stages[1:]
        current = self._make_round(job.job_id, analysis, job.spec, job.participants, job.threshold, stored.round_index,
                                   analysis.state_from_json(stored.state), declined, site_ids=site_ids,
                                   preflight=stored.round_index == 0 and not closed_before and not stages)
        current.stage_seq = closed_before
        finished = False
        for closed in stages:
            messages = [self._decode_stored(current, closed.stage, site) for site in closed.included]
            if current.server is None:
                finished = True
                total = self._key_union(current, messages)
            else:
                self._advance(current, messages)
            current.stage_seq += 1
        current.stage_opened = self.clock()
        self._rounds[job.job_id] = current
        log.info("job %s resumed at round %d stage %s", job.job_id, current.round_index, current.stage)
        if current.server is not None and current.server.stage in (Stage.DONE, Stage.ABORTED):
            self._after_server(current)
            return
        if finished:
            self._finish_round(current, total, list(stages[-1].included))
            return
        for message in self.store.messages(job.job_id, stored.round_index, current.stage):
            if message.site not in declined:
                current.received[message.site] = self._decode(current, message.site, message.body)

    def _decode_stored(self, current: _Round, stage: str, site: str) -> Any:
        message = self.store.message_of(current.job_id, current.round_index, stage, site)
        if message is None:
            raise ProtocolError(f"job {current.job_id} round {current.round_index}: stored stage {stage} lacks {site}'s message")
        return self._decode(current, site, message.body)

    # ------------------------------------------------------------------ internals

    def _changed(self) -> None:
        self.version += 1

    def _job(self, job_id: str) -> StoredJob:
        job: StoredJob | None = self.store.job(check_job_id(job_id))
        if job is None:
            raise _unknown_job(job_id)
        return job

    def _current(self, site: str, job_id: str, round_index: int, stage: str) -> _Round:
        job = self._job(job_id)
        if site not in job.participants:
            raise IdentityError(f"site {site!r} is not a participant of job {job_id}")
        current = self._rounds.get(job_id)
        if current is None:
            raise MessageConflict(f"job {job_id} is {job.status}; it accepts no more messages")
        if round_index != current.round_index or stage != current.stage:
            raise MessageConflict(
                f"job {job_id} expects round {current.round_index} stage {current.stage}, "
                f"got a message for round {round_index} stage {stage}"
            )
        return current

    def _make_round(
        self, job_id: str, analysis: Analysis[Any], spec: dict[str, Any], participants: tuple[str, ...], threshold: int,
        round_index: int, state: JobState, declined: set[str], *, site_ids: Sequence[int], preflight: bool = False,
    ) -> _Round:
        """A round's in-memory state; in its pre-flight stage (``preflight``) it has no secure sum yet."""
        layout = analysis.layout(state, round_index)
        config = server = None
        if isinstance(layout, Layout) and not preflight:
            if len(site_ids) < threshold:
                raise AggregationAborted(
                    f"only {len(site_ids)} sites remain for round {round_index}, fewer than the threshold {threshold}"
                )
            layout.check_bit_budget(len(site_ids))
            config = round_config(federation=self.federation, job_id=job_id, round_index=round_index, site_ids=site_ids,
                                  threshold=threshold, layout=layout, spec=spec, participants=participants, roster=self.roster)
            server = server_init(config)
        return _Round(job_id, analysis, spec, participants, threshold, round_index, state, layout, tuple(site_ids),
                      config, server, set(declined), stage_opened=self.clock(), preflight=preflight)

    def _open_round(self, job_id: str, analysis: Analysis[Any], spec: dict[str, Any], participants: tuple[str, ...],
                    threshold: int, round_index: int, state: JobState, declined: set[str],
                    cohort: Sequence[str] | None = None) -> None:
        """Stores and opens a round for ``cohort`` (default: every participant), less the sites that declined.

        Round 0 opens in its pre-flight stage (:data:`~pipeline.federation.rounds.PREFLIGHT_STAGE`).
        """
        invited = participants if cohort is None else cohort
        site_ids = [i + 1 for i, name in enumerate(participants) if name in invited and name not in declined]
        try:
            current = self._make_round(job_id, analysis, spec, participants, threshold, round_index, state, declined,
                                       site_ids=site_ids, preflight=round_index == 0)
        except GenofedError as error:
            self._fail(job_id, f"round {round_index} cannot start: {error}")
            return
        self.store.add_round(job_id, round_index, state.to_json(), current.site_ids)
        self._rounds[job_id] = current
        self._log("round.opened", job_id=job_id, round=round_index, sites=[current.name_of(i) for i in current.site_ids],
                          kind="keys" if current.server is None else "secure_sum",
                          state_digest=current.state_digest)

    def _decode(self, current: _Round, site: str, body: bytes) -> Any:
        if current.preflight:
            return check_preflight(body)
        if current.server is None:
            assert isinstance(current.layout, KeyUnion)
            return decode_keys(body, current.layout.name)
        return secagg_wire.decode_message(body)

    def _validate(self, current: _Round, site: str, body: bytes) -> Any:
        """Decodes an upload and checks it as the server's next transition would."""
        decoded = self._decode(current, site, body)
        if current.server is None:
            return decoded
        site_id = current.site_id(site)
        if decoded.sender != site_id or decoded.receiver != SERVER:
            raise ProtocolError(
                f"site {site!r} is party {site_id} and must send to the server (party {SERVER}); "
                f"the message says sender {decoded.sender}, receiver {decoded.receiver}"
            )
        # server_advance is pure: running it on this message alone checks type, round and content.
        server_advance(current.server, [decoded])
        return decoded

    def _advance(self, current: _Round, messages: Sequence[Message]) -> None:
        assert current.server is not None
        current.server, outgoing = server_advance(current.server, list(messages))
        current.inbox = {m.receiver: secagg_wire.encode_message(m) for m in outgoing}
        current.received = {}

    def _key_union(self, current: _Round, key_sets: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        assert isinstance(current.layout, KeyUnion)
        return {current.layout.name: union_keys(key_sets)}

    def _close_stage(self, current: _Round) -> None:
        included = sorted(current.received, key=current.site_id)
        messages = [current.received[name] for name in included]
        stage = current.stage
        if current.preflight:
            self.store.close_stage(current.job_id, current.round_index, current.stage_seq, stage, included)
            self._log("stage.closed", job_id=current.job_id, round=current.round_index, stage=stage, sites=included)
            self._after_preflight(current, included)
            return
        if current.server is None:
            total = self._key_union(current, messages)
            self.store.close_stage(current.job_id, current.round_index, current.stage_seq, stage, included)
            current.stage_seq += 1
            self._log("stage.closed", job_id=current.job_id, round=current.round_index, stage=stage, sites=included)
            self._finish_round(current, total, included)
            return
        try:
            self._advance(current, messages)
        except ProtocolError as error:
            self._fail(current.job_id, f"round {current.round_index} stage {stage}: {error}")
            return
        self.store.close_stage(current.job_id, current.round_index, current.stage_seq, stage, included)
        current.stage_seq += 1
        current.stage_opened = self.clock()
        self._log("stage.closed", job_id=current.job_id, round=current.round_index, stage=stage, sites=included)
        self._after_server(current)

    def _after_preflight(self, current: _Round, ready: Sequence[str]) -> None:
        """Opens round 0 proper for the sites that passed the pre-flight, or fails the job naming why each did not."""
        absent = self._why_absent(current.job_id, [current.name_of(i) for i in current.site_ids if current.name_of(i) not in ready])
        if not ready:
            self._fail(current.job_id, f"pre-flight: no site can take part in this job: {absent}")
            return
        assemblies = {name: current.received[name] for name in ready if current.received.get(name) is not None}
        if len(set(assemblies.values())) > 1:
            named = ", ".join(f"{name} {assembly}" for name, assembly in assemblies.items())
            self._fail(current.job_id, f"pre-flight: the sites' datasets record different genome assemblies ({named}); "
                                       "positions on different assemblies cannot be pooled: lift the datasets over to one "
                                       "assembly and ingest them again, or submit the job without the sites that differ")
            return
        try:
            opened = self._make_round(current.job_id, current.analysis, current.spec, current.participants, current.threshold,
                                      0, current.state, current.declined, site_ids=[current.site_id(name) for name in ready])
        except GenofedError as error:
            self._fail(current.job_id, f"pre-flight left sites {list(ready)}: {error}; {absent}")
            return
        opened.stage_seq = current.stage_seq + 1
        self._rounds[current.job_id] = opened

    def _why_absent(self, job_id: str, names: Sequence[str]) -> str:
        """Why each of ``names`` is not in a stage: its refusal code and meaning, or its silence."""
        declines = self.store.declines(job_id)
        return "; ".join(
            f"{name} declined it ({declines[name][:200]})" if name in declines else f"{name} did not answer before a stage deadline"
            for name in names
        )

    def _after_server(self, current: _Round) -> None:
        assert current.server is not None
        if isinstance(current.server, ServerAborted):
            try:
                server_result(current.server)
            except AggregationAborted as error:
                self._fail(current.job_id, str(error))
            return
        if isinstance(current.server, ServerDone):
            for holder, dealer, kind in current.server.discarded:
                # A share that does not match what its dealer signed: left out of the reconstruction, and its holder named.
                self._log("share.discarded", job_id=current.job_id, round=current.round_index, holder=current.name_of(holder),
                          dealer=current.name_of(dealer), kind=kind)
            total, survivors = server_result(current.server)
            assert isinstance(current.layout, Layout)
            try:
                decoded = current.layout.decode(total, len(survivors))
            except ProtocolError as error:
                self._fail(current.job_id, f"round {current.round_index}: {error}")
                return
            summed = [current.name_of(i) for i in sorted(survivors)]
            self._log("round.summed", job_id=current.job_id, round=current.round_index, sites=summed,
                      total_digest=wire.digest(np.ascontiguousarray(total).tobytes()))
            self._finish_round(current, decoded, summed)

    def _finish_round(self, current: _Round, total: Mapping[str, np.ndarray], summed: Sequence[str]) -> None:
        """Applies the cohort rule to the sites a round summed, then steps the analysis and opens the next round.

        The job's cohort is the sites its first round included. A later round that misses
        a cohort site fails the job, unless the analysis says the round may go on without
        it (``partial_rounds``); the next round invites the cohort again.
        """
        invited = [current.name_of(i) for i in current.site_ids]
        lost = [name for name in invited if name not in summed]
        if lost and current.round_index > 0 and not current.analysis.partial_rounds(current.state, current.round_index):
            self._fail(current.job_id, self._cohort_lost(current, lost, [name for name in invited if name in summed]))
            return
        self.store.set_round_sites(current.job_id, current.round_index, summed)
        try:
            state, done, result = current.analysis.coordinator_step(current.state, current.round_index, total, len(summed))
        except GenofedError as error:
            self._fail(current.job_id, f"round {current.round_index}: {error}")
            return
        if done:
            assert result is not None
            self._store_result(current, result, summed)
            return
        cohort = summed if current.round_index == 0 else invited
        self._rounds.pop(current.job_id, None)
        self._open_round(current.job_id, current.analysis, current.spec, current.participants, current.threshold,
                         current.round_index + 1, state, current.declined, cohort)

    def _cohort_lost(self, current: _Round, lost: Sequence[str], survivors: Sequence[str]) -> str:
        """The job's error when cohort sites are missing from a round that needs them all (names sites, round and remedy)."""
        why = self._why_absent(current.job_id, lost)
        return (
            f"site {', '.join(lost)} was lost in {current.analysis.round_name(current.state, current.round_index)}: {why}. "
            f"Every round of a {current.analysis.name} job must sum the sites of its first round (its earlier rounds "
            f"describe them), so the job stops rather than mix cohorts. Submit it again when the site is back, or "
            f"without it (sites: {sorted(survivors)})"
        )

    def _store_result(self, current: _Round, result: Result, summed: Sequence[str]) -> None:
        summary = {
            **dict(result.summary),
            "job_id": current.job_id,
            "rounds": current.round_index + 1,
            "declined": sorted(current.declined),
            "sites": list(summed),
            "missed_rounds": self._missed_rounds(current),
            "genome_assembly": self._genome_assembly(current.job_id, summed),
        }
        entries: list[tuple[str, str, bytes]] = [("summary", "json", wire.canonical_json(summary))]
        for name, table in result.tables.items():
            entries.append((name, "table", wire.encode_table(table)))
        try:
            entries += [(name, "file", body) for name, body in _rendered_files(current.analysis, Result(summary, result.tables))]
        except GenofedError as error:
            self._fail(current.job_id, f"the result's files could not be written: {error}")
            return
        names = [name for name, _, _ in entries]
        if len(set(names)) != len(names):
            self._fail(current.job_id, f"the result names {sorted(names)} repeat a name; each table and file needs its own")
            return
        self.store.finish_with_results(current.job_id, entries)
        self._rounds.pop(current.job_id, None)
        self._log("job.done", job_id=current.job_id, results={name: wire.digest(body) for name, _, body in entries})
        log.info("job %s done after %d rounds over %s", current.job_id, current.round_index + 1, ", ".join(summed),
                 extra={"event": "job.done", "job_id": current.job_id, "analysis": current.analysis.name,
                        "rounds": current.round_index + 1, "sites": list(summed)})

    def _genome_assembly(self, job_id: str, summed: Sequence[str]) -> str | None:
        """The assembly every summed site's pre-flight answer named, or ``None`` where one named none.

        Read back from the stored answers (a restarted coordinator gives the same). The
        pre-flight already failed a job whose sites name different assemblies; a site that
        names none does not disagree, but then the result does not claim one either.
        """
        named: set[str | None] = set()
        for site in summed:
            message = self.store.message_of(job_id, 0, PREFLIGHT_STAGE, site)
            named.add(None if message is None else check_preflight(message.body))
        return named.pop() if len(named) == 1 else None

    def _missed_rounds(self, current: _Round) -> dict[str, list[int]]:
        """Each site's rounds that it was invited to and whose sum did not include it (empty when none did)."""
        return self._stored_missed_rounds(self._job(current.job_id))

    def _stored_missed_rounds(self, job: StoredJob) -> dict[str, list[int]]:
        """:meth:`_missed_rounds` of any job, from its stored rounds (a round that never closed counts for no site)."""
        missed: dict[str, list[int]] = {}
        for stored in self.store.rounds(job.job_id):
            for name in (job.participants[i - 1] for i in stored.site_ids):
                if stored.sites is not None and name not in stored.sites:
                    missed.setdefault(name, []).append(stored.round_index)
        return missed

    def _fail(self, job_id: str, reason: str) -> None:
        log.warning("job %s failed: %s", job_id, reason, extra={"event": "job.failed", "job_id": job_id})
        self.store.finish_job(job_id, "failed", reason)
        self._rounds.pop(job_id, None)
        self._log("job.failed", job_id=job_id, reason=reason[:2000])
        self._changed()


def _date(moment: float | None) -> str:
    """A UTC time as people read it in a status line."""
    if moment is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


def _pruned_notice(job: StoredJob) -> str:
    """What a pruned job's status and results say instead of its results."""
    return (f"was pruned on {_date(job.pruned_at)} by the coordinator's retention policy: its contributions and results "
            f"were removed (digest of what was removed: {job.pruned_digest})")


def _unknown_job(job_id: str) -> NotFoundError:
    """The one answer for a job that does not exist, or that the caller may not know of."""
    return NotFoundError(f"no job {job_id!r} at this coordinator")


def _rendered_files(analysis: Analysis[Any], result: Result) -> list[tuple[str, bytes]]:
    """The files ``analysis.write_outputs`` renders from a result, as (name, bytes), in a scratch folder."""
    with tempfile.TemporaryDirectory(prefix="genofed-results-") as scratch:
        names = analysis.write_outputs(result, Path(scratch))
        return [(name, (Path(scratch) / name).read_bytes()) for name in names]
