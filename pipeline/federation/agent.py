"""The site agent: polls the coordinator, runs the job's site step, masks and uploads.

``genofed site run --config site.toml`` opens only outbound HTTPS connections (mutual
TLS), and only once it has checked that its certificate is its own: the one the
federation roster, signed by the CA, lists under the name in ``site.toml``
(:func:`pipeline.federation.roster.check_own_identity`). It long-polls
``/v1/site/work``; for each task it

1. enforces the site's policy before anything is computed or sent: the round's terms
   (:func:`check_round_terms`: participants all in the roster, the number of sites,
   the consistency round on, a threshold its ``threshold_rule`` accepts — decided by
   the site, not taken from the coordinator), the analysis must be in
   ``allowed_analyses``, the dataset must hold at least ``min_samples`` samples (k),
   and the analysis' own checks (for the census: the job may not publish variants below
   the site's ``min_allele_count``) — a refused job is declined with the reason. The
   first task of every job is its pre-flight, where these checks are all the site does
   (reading the job's columns, never a genotype) before answering that it is ready: a
   job's spec that does not fit a site's data (a missing or non-numeric column) is
   declined there with code ``spec-mismatch``, naming only the spec's column;
2. computes its contribution with the analysis' ``site_step`` (JAX) and encodes it with
   the round's layout;
3. runs its side of the secure-aggregation protocol (:mod:`pipeline.secagg.client`)
   one stage per task, uploading each message. Its key advertisement is signed with
   its certificate key, and it checks every peer's against its own roster: a key the
   coordinator swapped or invented stops the site before any share leaves it
   (``round.refused`` in its audit log, and the job is declined).

The protocol secrets of a round in progress (32 random bytes every key derives from,
and the encoded contribution) are kept in ``state_dir`` (0600), with the server
messages received so far. Client transitions are pure functions of those, so after a
restart of the agent *or* of the coordinator the agent rebuilds the same state and
re-sends byte-identical messages (which the coordinator accepts idempotently). An agent
that lost its state mid-round sits the round out (the others finish by dropout
recovery). Secrets are deleted as soon as the site's last message of a round is
acknowledged. Every contribution and decline is written to the site's audit log
(digests only).

The roster is the site's own, but it can grow newer: when the coordinator announces a
newer version, the agent fetches it, verifies the CA's signature and that the version
is higher, and installs it (:meth:`SiteAgent.update_roster`); a roster that no longer
lists this site's own certificate stops the agent with an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import dataset as dataset_io
from pipeline.analyses import Analysis, Contribution, JobState, KeyUnion, SiteCache, SiteContext
from pipeline.analyses.registry import get_analysis
from pipeline.encoding import Layout
from pipeline.errors import (
    ConfigurationError, DiskFull, GenofedError, IdentityError, PolicyRefusal, ProtocolError, SpecMismatch, disk_full,
)
from pipeline.federation import secagg_wire, transport, wire
from pipeline.federation.attempts import RoundAttempts
from pipeline.federation.audit import AuditLog
from pipeline.federation.budget import SPEND_FILE, PrivacyBudget, terms_refusal
from pipeline.federation.checkpoints import CHECKPOINT_EVENT, Checkpoint, sign_checkpoint
from pipeline.federation.config import SiteConfig, load_site_config
from pipeline.federation.job_spec import (
    CONSISTENCY_CHECK_DEFAULT,
    check_job_id,
    maximum_threshold,
    minimum_threshold,
    shareholders,
)
from pipeline.federation.ledger import Release, ReleaseLedger, samples_digest
from pipeline.federation.roster import Roster, check_own_identity, install_roster, load_roster
from pipeline.federation.rounds import KEY_UNION_STAGE, PREFLIGHT_STAGE, encode_keys, preflight_answer, round_config
from pipeline.federation.tls import certificate_validity, load_identity_key
from pipeline.outputs import write_private
from pipeline.privacy import privacy_terms, zcdp_to_approx_dp
from pipeline.stats.counts import count_variants
from pipeline.secagg import keys as secagg_keys
from pipeline.secagg.client import ClientAborted, ClientState, ClientUnmasking, client_advance, client_init
from pipeline.secagg.messages import Message, Stage, SurvivorList, round_stages
from pipeline.secagg.prg import DEFAULT_PRG, PRGS

log = logging.getLogger(__name__)

__all__ = ["SiteAgent", "run_site", "check_policy", "check_round_terms"]
_WAIT_SECONDS = 10.0
_MAX_BACKOFF = 60.0
"""Longest wait, in seconds, before retrying an upload the coordinator refused."""
DISK_FULL_RETRY_SECONDS = 30.0
"""Seconds before a step that failed on a full site disk is tried again (space is freed by an operator)."""
ONCE_IDLE_SECONDS = 60.0
"""With ``--once`` and no ``--max-idle``: seconds without an active job before the agent stops (nothing to do)."""
ONCE_UNREACHABLE_SECONDS = 60.0
"""With ``--once``: seconds without an answer from the coordinator before the agent stops with an error."""


def check_policy(config: SiteConfig, analysis: str, dataset: dataset_io.Dataset) -> None:
    """The site's generic policy: allowed analyses and k (minimum samples).

    Raises:
        PolicyRefusal: saying which rule the job breaks.
    """
    policy = config.policy
    if analysis not in policy.allowed_analyses:
        raise PolicyRefusal(
            f"site {config.name}: analysis {analysis!r} is not in this site's allowed_analyses {list(policy.allowed_analyses)}"
        )
    if dataset.num_samples < policy.min_samples:
        raise PolicyRefusal(
            f"site {config.name}: {dataset.num_samples} samples, fewer than the policy's min_samples {policy.min_samples}; "
            "no aggregate over fewer samples leaves this site", code="too-few-samples"
        )


def check_round_terms(config: SiteConfig, roster: Roster, task: Mapping[str, Any]) -> None:
    """What the site accepts of a task's terms, decided from its own policy and roster, not the coordinator's word.

    Checked before the site sends anything of a round: every participant is a site of
    the signed roster (no invented, Sybil sites) and this site is the one its ID says;
    the number of sites is within the policy's ``min_sites``..``max_sites``; and for a
    secure sum (and at the pre-flight, for the job's sums over the sites it invites), the
    consistency round is on, the masks come from a PRG the site knows, and the threshold
    is at least what the policy's ``threshold_rule`` demands of the parties holding this
    site's shares.

    Raises:
        PolicyRefusal: naming the term the task breaks.
    """
    policy, name = config.policy, config.name
    participants = [str(p) for p in task.get("participants") or ()]
    if len(set(participants)) != len(participants) or participants != sorted(participants):
        raise PolicyRefusal(f"site {name}: the task's participants {participants} are not a sorted list of distinct sites")
    strangers = sorted(set(participants) - set(roster.sites))
    if strangers:
        raise PolicyRefusal(f"site {name}: the job names participants {strangers} that the federation roster does not list as sites")
    site_ids = [int(i) for i in task.get("site_ids") or ()]
    if name not in participants or int(task["site_id"]) != participants.index(name) + 1:
        raise PolicyRefusal(f"site {name}: the task calls this site party {task['site_id']}, but it is not that participant")
    if not set(site_ids) <= set(range(1, len(participants) + 1)):
        raise PolicyRefusal(f"site {name}: the round invites party IDs {site_ids} beyond the job's {len(participants)} participants")
    if not policy.min_sites <= len(participants) <= policy.max_sites:
        raise PolicyRefusal(
            f"site {name}: a job of {len(participants)} sites is outside this site's policy "
            f"(min_sites {policy.min_sites}, max_sites {policy.max_sites})"
        )
    if task.get("kind") not in ("secagg", PREFLIGHT_STAGE):  # the pre-flight checks the job's secure-sum terms up front
        return
    spec = task.get("spec") or {}
    if spec.get("consistency_check", CONSISTENCY_CHECK_DEFAULT) is not True:
        raise PolicyRefusal(f"site {name}: the round skips the signed consistency check; this site never does")
    prg = spec.get("mask_prg", DEFAULT_PRG)
    if prg not in PRGS:
        raise PolicyRefusal(f"site {name}: the round asks for masks from the mask PRG {prg!r}; this site masks with "
                            f"{' or '.join(PRGS)} only")
    holders = shareholders(len(site_ids), spec.get("num_neighbours"))
    least = max(2, minimum_threshold(holders, policy.threshold_rule))
    most = maximum_threshold(len(site_ids), spec.get("num_neighbours"))
    threshold = int(task["threshold"])
    if not least <= threshold <= most:
        raise PolicyRefusal(
            f"site {name}: threshold {threshold} for {holders} shareholders; this site's policy "
            f"(threshold_rule {policy.threshold_rule}) accepts {least} to {most}"
        )


class StopRequested(BaseException):
    """Raised into the agent's wait for the coordinator by :meth:`SiteAgent.request_stop`.

    A ``BaseException``, as ``KeyboardInterrupt`` is: no handler of ordinary errors on
    the way out of the wait may take it for a failed request.
    """


@dataclass
class _RoundMemory:
    """A round's client state in memory: the last state and each stage's outgoing message."""

    state: ClientState
    outgoing: dict[Stage, list[Message]] = field(default_factory=dict)


class SiteAgent:
    """One site's agent (identity: a site, its state folder and its connection).

    Attributes:
        config: the site's configuration.
        roster: the federation roster, verified against the federation CA; the
            certificate keys of the other sites (:meth:`Roster.public_key`) come from
            here, never from the coordinator.
    """

    def __init__(self, config: SiteConfig, *, connection: transport.Connection | None = None, audit: Any = None) -> None:
        """Loads the roster and checks the site's own identity, before any connection.

        Raises:
            ConfigurationError: the roster is missing, unsigned or not the CA's, or the
                site's certificate is not the one the roster lists under its name.
        """
        self.config = config
        self.roster = load_roster(config.roster, config.ca)
        check_own_identity(config, self.roster)
        self.identity_key = load_identity_key(config.key)
        self.connection = connection or transport.Connection(
            config.coordinator_url, cert=config.cert, key=config.key, ca=config.ca, max_attempts=10, max_backoff=5.0,
        )
        self.audit = audit if audit is not None else AuditLog(config.audit_log)
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.attempts = RoundAttempts(self.state_dir / "round-attempts.json")
        self._rounds: dict[tuple[str, int], _RoundMemory] = {}
        self._states: dict[tuple[str, int], tuple[str, JobState]] = {}
        self._caches: dict[str, SiteCache] = {}
        self._dataset: dataset_io.Dataset | None = None
        self.tasks_done = 0
        self._active: set[str] = set()
        self.jobs_seen: set[str] = set()
        self._job_analysis: dict[str, str] = {}
        self._declined_jobs: set[str] = set()
        self.ledger = ReleaseLedger(self.state_dir / "ledger.jsonl")
        self.budget = PrivacyBudget(self.state_dir / SPEND_FILE)
        self._contributions: dict[str, tuple[Contribution, ...]] = {}
        self._disclosure_checked: set[str] = set()
        self._refusals: dict[tuple[str, int, str], int] = {}
        self._backoff: dict[tuple[str, int, str], float] = {}
        self._message_secret = _agent_secret(self.state_dir / "message-key.bin")
        self._config_digest = _file_digest(Path(config.path))
        self._roster_refused: Any = None
        self._stop_reason: str | None = None
        self._interruptible = False

    # ------------------------------------------------------------------ loop

    def run(
        self,
        *,
        once: bool = False,
        max_idle: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        unreachable_after: float | None = None,
    ) -> dict[str, Any]:
        """Polls and works until stopped.

        Without ``once`` the agent is a service: it outlives jobs and coordinator
        restarts, and stops only on ``max_idle``, ``should_stop`` or :meth:`request_stop`.
        With ``once`` it is a one-job worker that never outlives its reason to run: it
        returns when every job it took part in has finished or gone (after writing its
        own outputs of each); it returns when it has had no active job for ``max_idle`` seconds (default
        :data:`ONCE_IDLE_SECONDS`: started after its job ended, it has nothing to do, and
        that is not an error); and it raises when the coordinator has not answered for
        ``unreachable_after`` seconds (a coordinator that is gone cannot end the job).

        Args:
            once: work for the jobs at hand, then return (see above).
            max_idle: return after this many seconds without an active job (``None``:
                never, or :data:`ONCE_IDLE_SECONDS` with ``once``).
            should_stop: checked between polls (tests); a signal handler calls
                :meth:`request_stop` instead.
            unreachable_after: with ``once``, seconds without an answer from the
                coordinator before giving up (``None``: :data:`ONCE_UNREACHABLE_SECONDS`).

        Returns:
            The site, its task count, the jobs it saw, and why it stopped (``stopped``).

        Raises:
            ProtocolError: with ``once``, the coordinator did not answer for
                ``unreachable_after`` seconds (the message names its URL).
        """
        if once and max_idle is None:
            max_idle = ONCE_IDLE_SECONDS
        if unreachable_after is None:
            unreachable_after = ONCE_UNREACHABLE_SECONDS
        log.info("site %s: agent started (%s)", self.config.name,
                 ", ".join(f"{key} {value}" for key, value in self.start_summary().items() if key != "site"))
        self.check_dataset()
        try:
            stopped = self._work(once=once, max_idle=max_idle, should_stop=should_stop,
                                 unreachable_after=unreachable_after)
        except StopRequested as request:  # raised into a wait: nothing was in progress
            stopped = str(request)
        log.info("site %s: agent stopped (%s), %d tasks done", self.config.name, stopped, self.tasks_done)
        return {"site": self.config.name, "tasks": self.tasks_done, "jobs": sorted(self.jobs_seen), "stopped": stopped}

    def _work(self, *, once: bool, max_idle: float | None, should_stop: Callable[[], bool] | None,
              unreachable_after: float) -> str:
        """The polling loop of :meth:`run`; returns why it stopped."""
        idle_since = answered_at = time.monotonic()
        stopped, last_failure = "stopped", ""
        while not (should_stop and should_stop()):
            try:
                known = ",".join(sorted(self._active))
                wait = _poll_wait(max_idle, time.monotonic() - idle_since, busy=bool(self._active))
                with self._waiting():
                    answer = self.connection.get_json(f"/v1/site/work?wait={wait:g}&active={known}", timeout=wait + 30)
            except ProtocolError as error:
                _stop_if_permanent(self.config.name, error)
                last_failure = str(error)
                if isinstance(error, transport.HttpError) and error.status == 403:
                    self.update_roster()  # refused: perhaps revoked; only a newer roster the CA signed says so
                silent = time.monotonic() - answered_at
                if once and silent > unreachable_after:
                    raise ProtocolError(
                        f"site {self.config.name}: the coordinator at {self.config.coordinator_url} has not answered for "
                        f"{silent:.0f} s ({error}); the agent runs with --once and stops: start it again once the "
                        "coordinator is up"
                    ) from None
                log.warning("site %s: polling failed (%s); retrying in %.1f s", self.config.name, error, self.config.poll_interval)
                with self._waiting():
                    time.sleep(self.config.poll_interval)
                answer = None
            if answer is not None:
                answered_at = time.monotonic()
                if answer.get("roster_version") is not None:
                    self.update_roster(answer["roster_version"])
                active = set(answer.get("active_jobs", []))
                self._active = active
                self._forget_finished(active)
                task = answer.get("task")
                if task is not None:
                    self.jobs_seen.add(task["job_id"])
                    try:
                        self.handle(task)
                    except (ProtocolError, DiskFull) as error:
                        _stop_if_permanent(self.config.name, error)
                        log.warning("site %s: task %s failed: %s", self.config.name, _describe(task), error)
                        with self._waiting():
                            time.sleep(self.config.poll_interval)
                    idle_since = time.monotonic()
                    continue
                if active:
                    idle_since = time.monotonic()
                elif once and self.jobs_seen:
                    stopped = "jobs finished"
                    break
            elif once:
                continue  # unreachable is not idle: under --once it ends in the error above
            if max_idle is not None and time.monotonic() - idle_since > max_idle:
                if answer is None:  # idle only because the coordinator never answered: that is no clean stop
                    raise ProtocolError(
                        f"site {self.config.name}: the coordinator at {self.config.coordinator_url} has not answered for "
                        f"{time.monotonic() - answered_at:.0f} s ({last_failure}); --max-idle {max_idle:g} s passed and the "
                        "agent stops: start it again once the coordinator is up"
                    )
                stopped = "idle"
                if once:
                    log.warning("site %s: no active job for this site at %s in %.0f s; nothing to do, the agent "
                                "(--once) stops", self.config.name, self.config.coordinator_url, max_idle)
                break
        return stopped

    def request_stop(self, reason: str) -> None:
        """Stop the agent, from a signal handler on the agent's thread (``genofed site run`` on SIGTERM).

        A wait for the coordinator is cut short at once; a task in progress is finished
        first, so its step is sent and not redone by the next agent. Either way what the
        site keeps on disk is whole, as after any crash. :meth:`run` returns with
        ``stopped`` set to ``reason``.
        """
        self._stop_reason = reason
        if self._interruptible:
            raise StopRequested(reason)

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        """Marks a wait that :meth:`request_stop` may interrupt (a long poll, a pause before retrying).

        A stop requested while the agent worked is raised here, before its next wait.
        """
        if self._stop_reason is not None:
            raise StopRequested(self._stop_reason)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def update_roster(self, announced: Any = None) -> bool:
        """Takes up a newer federation roster from the coordinator, once this site has verified it.

        The coordinator announces its roster's version with every task poll; when it is
        newer than this site's (or when the coordinator refuses this site), the site
        fetches the roster and installs it only if the federation CA signed it and its
        version is higher than the site's own
        (:func:`~pipeline.federation.roster.install_roster`): a coordinator can neither
        forge a roster nor replay an older one that still lists a revoked site. From
        then on the site refuses rounds, and key advertisements, of participants the new
        roster does not list.

        Args:
            announced: the version the coordinator announced; ``None``: fetch anyway.

        Returns:
            Whether a newer roster was installed.

        Raises:
            ConfigurationError: the new roster no longer lists this site's certificate
                (revoked, or renewed by the operator): the agent stops.
        """
        if announced is not None and (isinstance(announced, bool) or not isinstance(announced, int)
                                      or announced <= self.roster.version or announced == self._roster_refused):
            return False
        source = f"the roster from the coordinator at {self.config.coordinator_url}"
        try:
            roster = install_roster(self.connection.get_json("/v1/roster"), ca_cert_path=self.config.ca,
                                    current=self.roster, path=self.config.roster, source=source)
        except (ProtocolError, ConfigurationError) as error:
            self._roster_refused = announced
            log.warning("site %s: roster not taken up: %s", self.config.name, error)
            self.audit.append("roster.refused", reason=str(error)[:500], announced=announced)
            return False
        if roster is self.roster:
            return False
        previous, self.roster = self.roster, roster
        self.audit.append("roster.installed", version=roster.version, previous=previous.version, sites=list(roster.sites))
        log.warning("site %s: federation roster version %d installed (was %d)", self.config.name, roster.version,
                    previous.version)
        try:
            check_own_identity(self.config, roster)
        except ConfigurationError as error:
            raise ConfigurationError(
                f"site {self.config.name}: the federation roster version {roster.version}, signed by the CA, no longer lists "
                f"this site's certificate {self.config.cert}: it was revoked or replaced; the agent stops. Ask the consortium "
                f"operator for this site's new folder ({error})"
            ) from None
        return True

    def start_summary(self) -> dict[str, Any]:
        """What the agent runs as, for its start line: site, coordinator, dataset, certificate expiry, policy digest."""
        validity = getattr(self.connection, "validity", None)
        not_after = validity[1] if validity else certificate_validity(self.config.cert)[1]
        policy = json.dumps(dataclasses.asdict(self.config.policy), sort_keys=True, default=str).encode()
        return {
            "site": self.config.name, "coordinator": self.config.coordinator_url, "dataset": str(self.config.dataset),
            "certificate_expires": not_after.isoformat(), "policy_digest": hashlib.sha256(policy).hexdigest()[:16],
        }

    def check_dataset(self) -> bool:
        """Opens the site's dataset and reads its samples and first chunk, before any job asks for them.

        An operator learns at start that the dataset is missing or unreadable (a job would
        only be declined); and the first read of a process, which costs several times a
        later one (Parquet's and NumPy's first use, fresh memory), happens while the agent
        is idle instead of inside a job's first stage. Logs what it found; never raises.
        """
        started = time.monotonic()
        try:
            dataset = self.dataset()
            dataset.samples()
            if dataset.chunk_names:
                count_variants(dataset.read_block(dataset.chunk_names[0]).call_dosage)
        except (GenofedError, OSError, ValueError) as error:
            self._dataset = None
            log.warning("site %s: the dataset %s cannot be read (%s); jobs will be declined until it can",
                        self.config.name, self.config.dataset, error)
            return False
        log.info("site %s: dataset %s: %d samples, %d variants in %d chunks (checked in %.2f s)", self.config.name,
                 self.config.dataset, dataset.num_samples, dataset.num_variants, len(dataset.chunk_names),
                 time.monotonic() - started)
        return True

    def _forget_finished(self, active: set[str]) -> None:
        jobs_dir = self.state_dir / "jobs"
        finished = [job_id for job_id in {job for job, _ in self._rounds} | {job for job, _ in self._states} if job_id not in active]
        for job_id in finished:
            self._finish_job(job_id)
            self._rounds = {k: v for k, v in self._rounds.items() if k[0] != job_id}
            self._states = {k: v for k, v in self._states.items() if k[0] != job_id}
        for job_id in [job for job in self._caches if job not in active]:
            self._caches.pop(job_id).clear()
        if jobs_dir.is_dir():
            for folder in jobs_dir.iterdir():
                if folder.name not in active:
                    shutil.rmtree(folder, ignore_errors=True)
        if finished:
            self.exchange_checkpoint()

    def exchange_checkpoint(self) -> Checkpoint | None:
        """Sends the signed head of this site's audit log; keeps the coordinator's signed head in it.

        Done when a job ends (:mod:`pipeline.federation.checkpoints`): each party then
        holds evidence of the other's log that its owner cannot rewrite. A coordinator that
        answers with a head not signed by its roster key is recorded as such, not kept.

        Returns:
            The coordinator's checkpoint, or ``None`` when the exchange failed (logged).
        """
        entries, head = getattr(self.audit, "entries", 0), getattr(self.audit, "head", None)
        if not entries or head is None:
            return None
        mine = sign_checkpoint(self.identity_key, federation=self.config.federation, signer=self.config.name,
                               role="site", entries=entries, head=head)
        try:
            answer = self.connection.post_json("/v1/site/checkpoint", {"checkpoint": mine.to_fields()})
            theirs = Checkpoint.from_fields(answer.get("checkpoint") if isinstance(answer, dict) else None)
            if (theirs.signer, theirs.role) != ("coordinator", "coordinator"):
                raise IdentityError(f"the coordinator answered with a checkpoint of {theirs.role} {theirs.signer!r}")
            theirs.check_signature(self.roster)
        except (ProtocolError, IdentityError) as error:
            log.warning("site %s: audit checkpoint not exchanged: %s", self.config.name, error)
            self.audit.append("checkpoint.failed", reason=str(error)[:500], entries=entries, head=head)
            return None
        self.audit.append(CHECKPOINT_EVENT, **theirs.to_fields())
        return theirs

    # ------------------------------------------------------------------ one task

    def dataset(self) -> dataset_io.Dataset:
        if self._dataset is None:
            self._dataset = dataset_io.open_dataset(self.config.dataset)
        return self._dataset

    def site_context(self, job_id: str) -> SiteContext:
        """The site's policy, and the cache of ``job_id`` (kept until the job ends)."""
        policy = self.config.policy
        return SiteContext(
            name=self.config.name,
            min_samples=policy.min_samples,
            min_allele_count=policy.min_allele_count,
            share_variant_keys=policy.share_variant_keys,
            share_site_metrics=policy.share_site_metrics,
            cache=self._caches.setdefault(job_id, SiteCache()),
            sample_lists=self.config.sample_lists,
        )

    def handle(self, task: dict[str, Any]) -> None:
        """Does one task from ``/v1/site/work`` (declines the job if the policy forbids it).

        Raises:
            ProtocolError: a task no honest coordinator sends (a job ID that is not one),
                or a step that failed and will be retried.
        """
        job_id, round_index = check_job_id(task.get("job_id")), int(task["round_index"])
        self.reload_policy_if_changed()
        wait = self._backoff.get(_task_key(task), 0.0) - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the coordinator refused this upload before: retry later, not in a hot loop
        self._job_analysis[job_id] = str(task["analysis"])
        try:
            check_round_terms(self.config, self.roster, task)
            analysis = get_analysis(task["analysis"])
            check_policy(self.config, analysis.name, self.dataset())
            if job_id not in self._disclosure_checked:
                self._check_privacy_terms(task, analysis)
                self._check_disclosure(task, analysis, task["participants"])
                self._disclosure_checked.add(job_id)
            if task["kind"] == PREFLIGHT_STAGE:
                # Every check above passed, the job's columns were read (its contributing sets): ready, naming the
                # dataset's assembly when it records one (one of a closed set of answers: nothing else can travel).
                answer = preflight_answer(self.dataset().genome_assembly)
                self._upload(task, PREFLIGHT_STAGE, answer, self._message_id(task, PREFLIGHT_STAGE, self._message_secret))
            elif task["kind"] == "keys":
                self._keys_round(task, analysis)
            else:
                self._secagg_stage(task, analysis)
        except PolicyRefusal as refusal:
            self._decline(job_id, refusal)
        except ConfigurationError as error:
            self._decline(job_id, PolicyRefusal(str(error), code="policy"))
        except SpecMismatch as error:
            self._decline(job_id, PolicyRefusal(str(error), code="spec-mismatch", public=error.public))
        except GenofedError as error:
            if isinstance(error, ProtocolError):
                raise
            self._decline(job_id, PolicyRefusal(f"site {self.config.name} could not compute its contribution: {error}",
                                                code="data-error"))
        except OSError as error:
            if not disk_full(error):
                raise
            self._backoff[_task_key(task)] = time.monotonic() + DISK_FULL_RETRY_SECONDS
            raise DiskFull(
                f"site {self.config.name}: disk full under its state directory {self.state_dir} or audit log "
                f"{self.config.audit_log} ({error.strerror or error}) during {_describe(task)}; the step is retried every "
                f"{DISK_FULL_RETRY_SECONDS:.0f} s and the job resumes once space is freed (the coordinator waits for this "
                "site until the stage deadline)"
            ) from None
        self.tasks_done += 1
        log.debug("site %s: did %s (job %s round %d)", self.config.name, task["stage"], job_id, round_index)

    def _decline(self, job_id: str, refusal: PolicyRefusal) -> None:
        """Declines the job: the detail goes to the site's log and audit log, only the coarse code to the coordinator."""
        log.warning("site %s declines job %s (%s): %s", self.config.name, job_id, refusal.code, refusal)
        self._declined_jobs.add(job_id)
        self.audit.append("job.declined", job_id=job_id, code=refusal.code, reason=str(refusal)[:500])
        self.connection.post_json(f"/v1/site/jobs/{job_id}/decline", {"reason": refusal.for_analyst()})

    def _finish_job(self, job_id: str) -> None:
        """Runs the analysis' ``site_finish(state, dataset, site, out_dir)`` hook.

        Called once a job this site contributed to is no longer running, with the last
        round state the site fetched; the hook writes site-local outputs (PCA scores)
        under ``state_dir/results/JOB_ID``. It runs only in the agent that did the job's
        rounds (an agent restarted after the job ended has no state to finish from).
        """
        name = self._job_analysis.pop(job_id, None)
        rounds = [r for job, r in self._states if job == job_id]
        if name is None or not rounds or job_id in self._declined_jobs:
            return
        try:
            written = get_analysis(name).site_finish(self._states[(job_id, max(rounds))][1], self.dataset(),
                                                     self.site_context(job_id), self._inside("results", job_id))
        except GenofedError as error:
            log.warning("site %s: outputs of job %s not written: %s", self.config.name, job_id, error)
            self.audit.append("job.outputs_failed", job_id=job_id, reason=str(error)[:500])
            return
        if written is not None:
            self.audit.append("job.outputs_written", job_id=job_id, outputs=written)

    def _state(self, job_id: str, round_index: int, analysis: Analysis[Any]) -> tuple[str, JobState]:
        """The public state round ``round_index`` started from: its JSON's digest, and the typed state."""
        key = (job_id, round_index)
        if key not in self._states:
            data = self.connection.get_json(f"/v1/site/jobs/{job_id}/rounds/{round_index}/state")
            self._states[key] = (wire.digest(wire.canonical_json(data)), analysis.state_from_json(data))
        return self._states[key]

    def _contribution(self, task: dict[str, Any], analysis: Analysis[Any]) -> tuple[JobState, dict[str, np.ndarray]]:
        dataset = self.dataset()
        digest, state = self._state(task["job_id"], int(task["round_index"]), analysis)
        if digest != task["state_digest"]:
            self._states.pop((task["job_id"], int(task["round_index"])), None)
            raise ProtocolError(f"job {task['job_id']}: the round state fetched does not match the task's digest; retrying")
        values = analysis.site_step(state, int(task["round_index"]), dataset, self.site_context(task["job_id"]))
        return state, values

    def _upload(self, task: dict[str, Any], stage: str, body: bytes, message_id: str) -> None:
        path = f"/v1/site/jobs/{task['job_id']}/rounds/{task['round_index']}/stages/{stage}/messages/{message_id}"
        try:
            receipt = self.connection.put_bytes(path, body)
        except transport.HttpError as error:
            if error.status == 409:
                self._refused(task, error.detail)
                return
            raise
        self._refusals.pop(_task_key(task), None)
        self._backoff.pop(_task_key(task), None)
        self.audit.append(
            "contribution.sent", job_id=task["job_id"], round=int(task["round_index"]), stage=stage,
            digest=wire.digest(body), bytes=len(body), status=receipt.get("status"),
        )

    def reload_policy_if_changed(self) -> None:
        """Takes up an edited ``[policy]`` of ``site.toml`` before the next task, and logs and audits the change.

        Raises:
            ConfigurationError: the file changed and no longer loads, or changed beyond
                ``[policy]`` (identity, coordinator, data, folders need a restart): the
                agent stops rather than go on with a configuration that is not the file's.
        """
        path = Path(self.config.path)
        digest = _file_digest(path)
        if digest == self._config_digest:
            return
        try:
            fresh = load_site_config(path)
        except ConfigurationError as error:
            raise ConfigurationError(f"{path} changed and no longer loads ({error}); the agent stops rather than run on "
                                     "a stale policy: fix the file and start it again") from None
        if dataclasses.replace(fresh, policy=self.config.policy) != self.config:
            raise ConfigurationError(f"{path} changed outside [policy]; restart the agent to take up the new identity, "
                                     "coordinator, dataset or folders")
        self._config_digest = digest
        if fresh.policy != self.config.policy:
            changed = sorted(f.name for f in dataclasses.fields(fresh.policy)
                             if getattr(fresh.policy, f.name) != getattr(self.config.policy, f.name))
            log.warning("site %s: policy reloaded from %s; changed: %s", self.config.name, path, ", ".join(changed))
            self.audit.append("policy.reloaded", path=str(path), changed=changed, digest=digest)
            self.config = fresh

    def _refused(self, task: dict[str, Any], detail: str) -> None:
        """An upload the coordinator refused: back off exponentially, with jitter, and say why once."""
        key = _task_key(task)
        count = self._refusals.get(key, 0) + 1
        self._refusals[key] = count
        (log.warning if count == 1 else log.debug)("site %s: upload refused (%s): %s", self.config.name, _describe(task), detail)
        delay = min(_MAX_BACKOFF, self.config.poll_interval * 2 ** (count - 1)) * random.uniform(0.5, 1.0)
        self._backoff[key] = time.monotonic() + delay

    def _message_id(self, task: dict[str, Any], stage: str, secret: bytes) -> str:
        """This site's ID of its message for a stage: keyed by a secret, so no other party can predict or take it."""
        material = f"{self.config.name}|{task['job_id']}|{int(task['round_index'])}|{stage}".encode()
        return hmac.new(secret, material, hashlib.sha256).hexdigest()[:32]

    def _keys_round(self, task: dict[str, Any], analysis: Analysis[Any]) -> None:
        job_id, round_index = task["job_id"], int(task["round_index"])
        if self.attempts.completed(job_id, round_index):
            # Sending the key set is idempotent (same message ID and bytes); a round asked for again after it ended is not.
            refusal = PolicyRefusal(f"site {self.config.name}: round {round_index} of job {job_id} was completed already")
            self.audit.append("round.refused", job_id=job_id, round=round_index, stage=KEY_UNION_STAGE, reason=str(refusal))
            raise refusal
        state, values = self._contribution(task, analysis)
        layout = analysis.layout(state, int(task["round_index"]))
        if not isinstance(layout, KeyUnion):
            raise ProtocolError(f"job {task['job_id']} round {task['round_index']}: the coordinator asks for keys, the analysis sums")
        body = encode_keys(values[layout.name], layout.name)
        self._upload(task, KEY_UNION_STAGE, body, self._message_id(task, KEY_UNION_STAGE, self._message_secret))
        self.attempts.finish(job_id, round_index, Stage.DONE.value)

    # ------------------------------------------------------------------ secure aggregation

    def _round_dir(self, job_id: str, round_index: int) -> Path:
        return self._inside("jobs", job_id, f"round-{round_index}")

    def _inside(self, *parts: str) -> Path:
        """A path under the state folder, resolved; whatever the coordinator named, the agent writes nowhere else.

        Raises:
            ProtocolError: the parts would lead outside the state folder.
        """
        root = self.state_dir.resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ProtocolError(f"site {self.config.name}: {'/'.join(parts)!r} leads outside the state folder {root}")
        return path

    def _secagg_stage(self, task: dict[str, Any], analysis: Analysis[Any]) -> None:
        job_id, round_index = task["job_id"], int(task["round_index"])
        stage = Stage(task["stage"])
        folder = self._round_dir(job_id, round_index)
        memory = self._rounds.get((job_id, round_index))
        if memory is None:
            if not (folder / "randomness.bin").is_file():
                if stage is not Stage.ADVERTISE_KEYS:
                    log.warning("site %s: no saved state for job %s round %d at stage %s; sitting the round out",
                                self.config.name, job_id, round_index, stage.name)
                    return
                self._begin_attempt(job_id, round_index)
                self._start_round(task, analysis, folder)
                self.attempts.prepared(job_id, round_index)
            memory = self._replay(task, analysis, folder)
            self._rounds[(job_id, round_index)] = memory
        if stage is not Stage.ADVERTISE_KEYS and stage not in memory.outgoing:
            if memory.state.stage is not stage:
                raise ProtocolError(f"site {self.config.name}: coordinator is at stage {stage.name}, this site at {memory.state.stage.name}")
            body = self.connection.get_bytes(f"/v1/site/jobs/{job_id}/rounds/{round_index}/stages/{stage.value}/message")
            message = secagg_wire.decode_message(body)
            if isinstance(message, SurvivorList):
                # The survivors are known before any share is revealed: the release must pass the ledger's rules.
                self._check_survivors(task, analysis, message, folder)
            signed = memory.state.signed_survivors if isinstance(memory.state, ClientUnmasking) else None
            memory.state, memory.outgoing[stage] = client_advance(memory.state, [message])
            if memory.state.stage is Stage.DONE:
                self._record_release(task, analysis, signed)
            write_private(folder / f"server-{stage.value}.arrow", body)
            if memory.state.stage in (Stage.DONE, Stage.ABORTED):
                self.attempts.finish(job_id, round_index, memory.state.stage.value)
            if isinstance(memory.state, ClientAborted) and memory.state.refused:
                # What the coordinator relayed cannot come from honest parties: stop, say why, keep nothing.
                self.audit.append("round.refused", job_id=job_id, round=round_index, stage=stage.value,
                                  reason=memory.state.reason[:500])
                shutil.rmtree(folder, ignore_errors=True)
                self._rounds.pop((job_id, round_index), None)
                raise PolicyRefusal(memory.state.reason)
        outgoing = memory.outgoing.get(stage, [])
        if not outgoing:
            return
        seed = (folder / "randomness.bin").read_bytes()
        for message in outgoing:
            self._upload(task, stage.value, secagg_wire.encode_message(message), self._message_id(task, stage.value, seed))
        if memory.state.stage in (Stage.DONE, Stage.ABORTED):
            # Last message acknowledged: the round's secrets are no longer needed.
            shutil.rmtree(folder, ignore_errors=True)
            self._rounds.pop((job_id, round_index), None)

    def _releases(self, task: dict[str, Any], analysis: Analysis[Any], sites: Sequence[str]) -> list[Release]:
        """The releases the job would make from this site over ``sites``, from its first round's state."""
        job_id = task["job_id"]
        if job_id not in self._contributions:
            _, state = self._state(job_id, 0, analysis)
            self._contributions[job_id] = analysis.contributions(state, self.dataset(), self.site_context(job_id))
        return self.ledger.candidates(job_id, analysis.name, self._contributions[job_id], sites)

    def _check_disclosure(self, task: dict[str, Any], analysis: Analysis[Any], sites: Sequence[str]) -> None:
        """Raises :class:`PolicyRefusal` when the job's releases over ``sites`` break the ledger's rules."""
        policy = self.config.policy
        self.ledger.check(self._releases(task, analysis, sites), min_samples=policy.min_samples,
                          min_set_difference=policy.min_set_difference, site=self.config.name)

    def _check_privacy_terms(self, task: dict[str, Any], analysis: Analysis[Any]) -> None:
        """Raises :class:`PolicyRefusal` when the job's privacy terms (or their absence) break the site's policy."""
        policy = self.config.policy.privacy
        raw = (task.get("spec") or {}).get("privacy")
        try:
            terms = None if raw is None else privacy_terms(raw)
        except ValueError as error:
            raise PolicyRefusal(f"site {self.config.name}: the job's privacy block is malformed: {error}",
                                public="the job's privacy block is malformed") from None
        releases_samples = bool(self._releases(task, analysis, task["participants"]))
        refusal = terms_refusal(terms, policy, threshold=int(task["threshold"]), releases_samples=releases_samples,
                                site=self.config.name)
        if refusal is None and terms is not None and policy.epsilon_budget is not None and self.budget.entries:
            spent = zcdp_to_approx_dp(self.budget.spent_rho(), policy.delta)
            if spent >= policy.epsilon_budget:
                refusal = PolicyRefusal(f"site {self.config.name}: its privacy budget of {policy.epsilon_budget:g} is spent "
                                        f"({spent:.4g})", code="budget-exhausted")
        if refusal is not None:
            raise refusal

    def _spend_privacy(self, task: dict[str, Any], analysis: Analysis[Any], state: JobState) -> None:
        """Before a noisy round's contribution is made: checks it against the budget, then records it (audited)."""
        job_id, round_index = task["job_id"], int(task["round_index"])
        spend = analysis.privacy_spend(state, round_index)
        if spend is None or self.budget.spent((job_id, round_index)):
            return
        policy = self.config.policy.privacy
        guaranteed = int(task["threshold"]) - policy.max_colluding
        if spend.honest_sites > guaranteed:  # the round's own terms, whatever the spec said
            raise PolicyRefusal(
                f"site {self.config.name}: round {round_index} of job {job_id} calibrates its noise on {spend.honest_sites} "
                f"honest sites; threshold {task['threshold']} and {policy.max_colluding} colluding guarantee {guaranteed}",
                public="the job's privacy terms count on more honest sites than its threshold guarantees")
        refusal = self.budget.refusal(spend, policy, site=self.config.name)
        if refusal is not None:
            raise refusal
        entry = self.budget.record(job_id, round_index, analysis.name, str(task.get("analyst", "")), spend)
        if entry is not None:
            self.audit.append("privacy.spent", job_id=job_id, round=round_index, analysis=analysis.name,
                              analyst=entry.analyst, rho=spend.rho, epsilon=spend.epsilon, delta=spend.delta,
                              sigma=spend.sigma, honest_sites=spend.honest_sites)

    def _check_survivors(self, task: dict[str, Any], analysis: Analysis[Any], message: SurvivorList, folder: Path) -> None:
        """Refuses, before signing, a survivor list whose release breaks the ledger's rules (aborts the round)."""
        job_id, round_index = task["job_id"], int(task["round_index"])
        names = [task["participants"][site - 1] for site in message.survivors if 1 <= site <= len(task["participants"])]
        try:
            self._check_disclosure(task, analysis, names)
        except PolicyRefusal as refusal:
            self.audit.append("round.refused", job_id=job_id, round=round_index, stage=Stage.CONSISTENCY_CHECK.value,
                              code=refusal.code, reason=str(refusal)[:500])
            self.attempts.finish(job_id, round_index, Stage.ABORTED.value)
            shutil.rmtree(folder, ignore_errors=True)
            self._rounds.pop((job_id, round_index), None)
            raise

    def _record_release(self, task: dict[str, Any], analysis: Analysis[Any], survivors: frozenset[int] | None) -> None:
        """Records in the ledger, and hashed in the audit log, what this site released: its shares are out."""
        participants = task["participants"]
        names = participants if survivors is None else [participants[site - 1] for site in sorted(survivors)]
        for release in self.ledger.record(self._releases(task, analysis, names)):
            self.audit.append("ledger.recorded", job_id=release.job_id, analysis=release.analysis,
                              variables=list(release.variables), samples=samples_digest(release.samples),
                              sites=sorted(release.sites))

    def _begin_attempt(self, job_id: str, round_index: int) -> None:
        """Records a new attempt at a round, or refuses one the site's record forbids (audited)."""
        try:
            attempt = self.attempts.begin(job_id, round_index, max_reruns=self.config.policy.max_round_reruns,
                                          site=self.config.name)
        except PolicyRefusal as refusal:
            self.audit.append("round.refused", job_id=job_id, round=round_index, stage=Stage.ADVERTISE_KEYS.value,
                              reason=str(refusal)[:500])
            raise
        if attempt > 1:
            self.audit.append("round.rerun", job_id=job_id, round=round_index, attempt=attempt)

    def _start_round(self, task: dict[str, Any], analysis: Analysis[Any], folder: Path) -> None:
        _, state = self._state(task["job_id"], int(task["round_index"]), analysis)
        self._spend_privacy(task, analysis, state)
        state, values = self._contribution(task, analysis)
        layout = analysis.layout(state, int(task["round_index"]))
        if not isinstance(layout, Layout):
            raise ProtocolError(f"job {task['job_id']} round {task['round_index']}: the coordinator runs a secure sum, the analysis expects keys")
        vector = layout.encode(values)
        buffer = io.BytesIO()
        np.save(buffer, vector, allow_pickle=False)
        write_private(folder / "vector.npy", buffer.getvalue())
        write_private(folder / "task.json", wire.canonical_json(task))
        write_private(folder / "randomness.bin", os.urandom(secagg_keys.KEY_BYTES))

    def _replay(self, task: dict[str, Any], analysis: Analysis[Any], folder: Path) -> _RoundMemory:
        """Rebuilds the client state from the saved secrets and server messages."""
        saved = json.loads((folder / "task.json").read_text())
        _, state = self._state(saved["job_id"], int(saved["round_index"]), analysis)
        layout = analysis.layout(state, int(saved["round_index"]))
        assert isinstance(layout, Layout)
        config = round_config(
            federation=saved["federation"], job_id=saved["job_id"], round_index=int(saved["round_index"]),
            site_ids=saved["site_ids"], threshold=int(saved["threshold"]), layout=layout, spec=saved["spec"],
            participants=saved["participants"], roster=self.roster,
        )
        vector = np.load(folder / "vector.npy", allow_pickle=False)
        client = client_init(config, int(saved["site_id"]), vector, randomness=(folder / "randomness.bin").read_bytes(),
                             identity_key=self.identity_key)
        client, first = client_advance(client, [])
        memory = _RoundMemory(client, {Stage.ADVERTISE_KEYS: first})
        for stage in round_stages(config)[1:]:
            path = folder / f"server-{stage.value}.arrow"
            if not path.is_file():
                break
            memory.state, memory.outgoing[stage] = client_advance(memory.state, [secagg_wire.decode_message(path.read_bytes())])
        return memory


def _poll_wait(max_idle: float | None, idle_for: float, *, busy: bool) -> float:
    """Seconds the next long poll may wait: ``_WAIT_SECONDS``, or less so that ``max_idle`` is kept.

    While a job of this site is active the idle clock does not run, so the poll waits in full.
    """
    if max_idle is None or busy:
        return _WAIT_SECONDS
    return round(min(_WAIT_SECONDS, max(0.0, max_idle - idle_for)), 3)


def _stop_if_permanent(site: str, error: Exception) -> None:
    """Re-raises, for the agent to stop, a connection failure that cannot fix itself (expired certificate, unknown CA...)."""
    if isinstance(error, transport.ConnectionFailure) and error.permanent:
        raise transport.ConnectionFailure(error.cause, f"site {site}: {error}; the agent stops") from None


def _task_key(task: Mapping[str, Any]) -> tuple[str, int, str]:
    return str(task.get("job_id")), int(task.get("round_index", -1)), str(task.get("stage"))


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _agent_secret(path: Path) -> bytes:
    """The agent's own 32-byte secret (kept across restarts) that keys its message IDs."""
    if not path.is_file():
        write_private(path, os.urandom(32))
    secret = path.read_bytes()
    if len(secret) != 32:
        raise ConfigurationError(f"{path}: expected the agent's 32-byte message key, got {len(secret)} bytes; delete it to make a new one")
    return secret


def _describe(task: dict[str, Any]) -> str:
    return f"job {task.get('job_id')} round {task.get('round_index')} stage {task.get('stage')}"


def run_site(
    config_path: Path | str, *, once: bool = False, max_idle: float | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """``genofed site run``: loads ``site.toml`` and runs the agent (``once``: see :meth:`SiteAgent.run`).

    With ``--once`` the exit status says whether the agent could do what it was started
    for: 0 when its jobs finished (its own outputs written) or when it found no job to do
    (logged); 1 when the coordinator stayed unreachable. SIGTERM (a service manager, a
    batch scheduler's cancel) stops it as :meth:`SiteAgent.request_stop` says, with
    status 0 and its stop line.

    Raises:
        ConfigurationError: the configuration, certificates or roster are unusable, or
            the certificate is not this site's (nothing is sent then).
        ProtocolError: with ``once``, the coordinator did not answer for
            :data:`ONCE_UNREACHABLE_SECONDS`;
            :class:`~pipeline.federation.transport.ConnectionFailure` when the
            connection fails for a cause that cannot fix itself (an expired
            certificate, an unknown CA, a refused handshake).
    """
    config = load_site_config(config_path)
    agent = SiteAgent(config)
    if on_start is not None:
        on_start(agent.start_summary())  # the CLI's start line
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: agent.request_stop("terminated")) if on_main_thread else None
    try:
        return agent.run(once=once, max_idle=max_idle)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        agent.connection.close()
