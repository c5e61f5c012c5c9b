"""A seeded fault harness: kills the coordinator or a site at a counted point of an in-process job.

The federation runs in process, as in ``test_faults._census_run``: a Coordinator over a
SQLite Store and an AuditLog, and site agents whose connection calls the engine directly.
A *kill* is :class:`SimulatedKill`, a BaseException that no handler of the code under test
catches: raised inside a durable operation of the coordinator (a Store write, an audit
append) it rolls back the open transaction, as a killed process loses what it had not
committed; the engine is then discarded and a fresh one built over the same files. Raised
inside a site's connection call, it ends that agent; a fresh one over the same config and
state folder takes its place, or none (the site is lost).

Everything is synchronous: the driver polls each site in turn, and time is a fake clock
that moves only when nothing else can (to close a stage a lost site will never answer).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sqlite3
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ProtocolError
from pipeline.federation import transport, wire
from pipeline.federation.agent import SiteAgent
from pipeline.federation.audit import AuditLog, read_entries, verify
from pipeline.federation.config import SiteConfig
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.store import Store
from tests.federation import runtime_support as rs

COORDINATOR = "coordinator"
STORE_WRITES = ("add_job", "add_round", "close_stage", "add_message", "add_decline", "finish_job", "finish_with_results",
                "queue_audit", "drop_audit")
"""The Store's durable operations (``queue_audit``/``drop_audit``: the audit outbox, where the store has one)."""
STUCK_AFTER = 6
"""Driver passes without any change to the job, clock advanced each time, before the job counts as stuck."""
IDENTICAL, DOCUMENTED, LOST = "identical", "documented outcome", "lost"
TIMING_FIELDS = frozenset({"job_id", "created_at", "finished_at", "elapsed", "elapsed_seconds", "duration", "seconds"})
"""Summary fields that differ between two runs of the same job by design."""


class SimulatedKill(BaseException):
    """A process killed at an injected point (a BaseException: nothing in the code under test handles it)."""

    def __init__(self, target: str, point: int, operation: str, after: bool) -> None:
        super().__init__(f"{target} killed {'after' if after else 'before'} call {point} ({operation})")
        self.target = target


@dataclass(frozen=True)
class Fault:
    """Where a trial kills: ``target`` (the coordinator or a site) at its ``point``-th counted call.

    ``after``: the call's effect happens, then the kill (the caller never hears back).
    ``restart``: a killed site comes back (a fresh agent over its state folder), or never does.
    """

    target: str
    point: int
    after: bool
    restart: bool = True

    def __str__(self) -> str:
        kind = "" if self.target == COORDINATOR else (", restarted" if self.restart else ", never restarted")
        return f"kill {self.target} {'after' if self.after else 'before'} call {self.point}{kind}"


class KillSwitch:
    """Counts one party's calls (naming each) and raises :class:`SimulatedKill` at the armed one."""

    def __init__(self, target: str, fault: Fault | None = None) -> None:
        self.target = target
        self.fault = fault if fault is not None and fault.target == target else None
        self.calls: list[str] = []
        self.fired: str | None = None

    def call(self, operation: str, function: Callable[[], Any]) -> Any:
        """Runs ``function``, killing before or after it when this is the armed call (after: even if it failed)."""
        self.calls.append(operation)
        fault = self.fault if self.fault is not None and len(self.calls) == self.fault.point else None
        if fault is not None and not fault.after:
            self._fire(fault, operation)
        try:
            return function()
        finally:
            if fault is not None and fault.after:
                self._fire(fault, operation)

    def _fire(self, fault: Fault, operation: str) -> None:
        self.fired = operation
        raise SimulatedKill(self.target, fault.point, operation, fault.after)


def watch_durable_operations(store: Any, audit: Any, switch: KillSwitch) -> None:
    """Routes the store's writes and the audit log's appends through ``switch`` (instance attributes only)."""
    for name in STORE_WRITES:
        if hasattr(store, name):
            _route(store, name, switch, f"store.{name}")
    _route(audit, "append", switch, "audit.append")


def _route(owner: Any, name: str, switch: KillSwitch, label: str) -> None:
    method = getattr(owner, name)

    def routed(*args: Any, **kwargs: Any) -> Any:
        return switch.call(f"{label}({_what(args)})", lambda: method(*args, **kwargs))

    setattr(owner, name, routed)


def _what(args: Sequence[Any]) -> str:
    """A few words on a durable operation's subject: the audit event, or the message's site, round and stage."""
    if not args:
        return ""
    first = args[0]
    if isinstance(first, str) and not first.startswith("job-"):
        return first
    if hasattr(first, "stage") and hasattr(first, "site"):
        return f"{first.site} round {first.round_index} {first.stage}"
    return ""


def _call_label(method: str, path: str) -> str:
    """A site call in words (``put_bytes round 1 share_keys``), without job or message IDs."""
    parts = path.split("?")[0].strip("/").split("/")
    if parts[:3] == ["v1", "site", "work"]:
        return "poll"
    if "rounds" in parts:
        rest = parts[parts.index("rounds") + 1:]
        return " ".join([method, "round", rest[0], *(rest[2:3] if len(rest) > 2 else rest[1:2])])
    return f"{method} {parts[-1]}"


def as_http_error(error: Exception, method: str, path: str) -> transport.HttpError:
    """The HttpError the agent would get for ``error`` from the real server (the API's own status mapping)."""
    from pipeline.federation.api import _error_response

    response = _error_response(error)
    return transport.HttpError(response.status_code, json.loads(bytes(response.body))["detail"], method, path)


class SiteLink:
    """A site's connection to the in-process coordinator, as the network would behave.

    Every call is counted by the site's :class:`KillSwitch`. Engine errors become the
    HTTP errors the API answers with; a coordinator killed during the call, or down,
    becomes the :class:`ProtocolError` a refused or reset connection gives the agent.
    """

    def __init__(self, federation: Federation, site: str, switch: KillSwitch) -> None:
        self.federation, self.site, self.switch = federation, site, switch
        self.direct = rs.DirectConnection(federation.holder, site)

    def _forward(self, method: str, path: str, *args: Any) -> Any:
        def call() -> Any:
            if self.federation.down:
                raise ProtocolError(f"{method} {path}: no answer (connection refused: the coordinator is down)")
            try:
                return getattr(self.direct, method)(path, *args)
            except SimulatedKill as kill:
                if kill.target != COORDINATOR:
                    raise
                self.federation.down = True
                raise ProtocolError(f"{method} {path}: no answer (connection reset: the coordinator died)") from None
            except Exception as error:  # noqa: BLE001 -- the server answers every engine error with an HTTP status
                raise as_http_error(error, method, path) from None

        return self.switch.call(_call_label(method, path), call)

    def get_json(self, path: str, **_: object) -> Any:
        return self._forward("get_json", path)

    def get_bytes(self, path: str) -> bytes:
        return self._forward("get_bytes", path)  # type: ignore[no-any-return]

    def put_bytes(self, path: str, body: bytes) -> Any:
        return self._forward("put_bytes", path, body)

    def post_json(self, path: str, value: dict[str, Any], **_: object) -> Any:
        return self._forward("post_json", path, value)

    def close(self) -> None:
        pass


@dataclass
class JobKind:
    """One kind of job of the matrix: its spec and its sites' configs (datasets and certificates shared by every run)."""

    name: str
    spec: dict[str, Any]
    configs: dict[str, SiteConfig]

    @property
    def sites(self) -> list[str]:
        return sorted(self.configs)

    @property
    def stage_timeout(self) -> float:
        return float(self.spec["stage_timeout"])


@dataclass
class Outcome:
    """What a run ended with: the job's status, its results, and what the harness saw go wrong."""

    status: str
    error: str | None
    summary: dict[str, Any]
    tables: dict[str, Any]
    problems: list[str]
    calls: dict[str, list[str]]
    fired: str | None = None


class Federation:
    """One run's coordinator (restartable) and site agents, over one folder."""

    def __init__(self, kind: JobKind, folder: Path, fault: Fault | None) -> None:
        self.kind, self.folder, self.fault = kind, folder, fault
        folder.mkdir(parents=True, exist_ok=True)
        self.now = 1_700_000_000.0
        self.down = False
        self.coordinator_switch = KillSwitch(COORDINATOR, fault)
        self.site_switches = {name: KillSwitch(name, fault) for name in kind.sites}
        self.holder: dict[str, Any] = {}
        self.holder["coordinator"] = self._start_coordinator()
        # Each run its own state folders and audit logs; certificates and roster are the kind's, provisioned once.
        self.configs = {
            name: dataclasses.replace(config, state_dir=folder / f"{name}-state", audit_log=folder / f"{name}.audit.log",
                                      poll_interval=0.0)
            for name, config in kind.configs.items()
        }
        self.agents: dict[str, Any] = {name: self._start_site(name) for name in kind.sites}
        self.lost_sites: set[str] = set()

    @property
    def coordinator(self) -> Any:
        return self.holder["coordinator"]

    @property
    def audit_path(self) -> Path:
        return self.folder / "audit.log"

    @property
    def database(self) -> Path:
        return self.folder / "coordinator.db"

    def _start_coordinator(self) -> Any:
        """A fresh engine over the run's database and audit log, its durable operations counted."""
        store, audit = Store(self.database), AuditLog(self.audit_path)
        watch_durable_operations(store, audit, self.coordinator_switch)
        self.down = False
        return Coordinator(store, federation="testfed", sites=self.kind.sites, audit=audit, clock=lambda: self.now)

    def restart_coordinator(self) -> None:
        old = self.holder.get("coordinator")
        if old is not None:
            old.store.close(checkpoint=False)  # a killed process checkpoints nothing; its connection just goes
        self.holder["coordinator"] = self._start_coordinator()

    def _start_site(self, name: str) -> Any:
        return SiteAgent(self.configs[name], connection=SiteLink(self, name, self.site_switches[name]))  # type: ignore[arg-type]

    def on_coordinator(self, call: Callable[[Any], Any]) -> Any:
        """A driver-side call to the engine; a kill in it restarts the engine (and the call's answer is lost: None)."""
        try:
            return call(self.coordinator)
        except SimulatedKill as kill:
            if kill.target != COORDINATOR:
                raise
            self.restart_coordinator()
            return None

    def submit(self) -> str:
        """Submits the job; killed mid-way, the analyst finds it in their job list after the restart, or submits again."""
        while True:
            job_id = self.on_coordinator(lambda c: c.submit(self.kind.spec, "analyst"))
            if job_id is not None:
                return str(job_id)
            jobs = self.coordinator.list_jobs(analyst="analyst")
            if jobs:
                return str(jobs[0]["job_id"])

    def step_site(self, name: str) -> None:
        """One poll of ``name`` and the task it got, as the agent's run loop does; a kill ends the agent."""
        agent = self.agents[name]
        try:
            answer = agent.connection.get_json("/v1/site/work?wait=0")
            if answer and answer.get("task") is not None:
                agent.handle(answer["task"])
        except ProtocolError:
            pass  # the request failed; the agent polls again (SiteAgent.run does the same)
        except SimulatedKill as kill:
            if kill.target != name:
                raise
            if self.fault is not None and self.fault.restart:
                self.agents[name] = self._start_site(name)
            else:
                self.lost_sites.add(name)
        if self.down:
            self.restart_coordinator()

    def fingerprint(self, job_id: str) -> Any:
        """What changes whenever the job moves: its status, stage, the sites it waits for, the messages stored."""
        status = self.on_coordinator(lambda c: c.status(job_id))
        if status is None:
            return None
        return (status["status"], status.get("round"), status.get("stage"), tuple(status.get("waiting_for", ())),
                tuple(sorted(status["declined"])), self._message_count())

    def _message_count(self) -> int:
        with sqlite3.connect(self.database) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])

    def run(self) -> Outcome:
        """Runs the job to its end (or until it is stuck) and collects what the checks need."""
        problems: list[str] = []
        try:
            job_id = self.submit()
            previous, idle = None, 0
            while True:
                status = self.on_coordinator(lambda c: c.status(job_id))
                if status is not None and status["status"] != "running":
                    break
                for name in self.kind.sites:
                    if name not in self.lost_sites:
                        self.step_site(name)
                current = self.fingerprint(job_id)
                if current == previous:
                    idle += 1
                    if idle > STUCK_AFTER:
                        problems.append(f"stuck: no progress in {STUCK_AFTER} passes with the clock advanced ({current})")
                        break
                    # Nothing moved: only a stage deadline can, so time passes.
                    self.now += self.kind.stage_timeout + 1
                    self.on_coordinator(lambda c: c.tick())
                else:
                    idle = 0
                previous = current
            outcome = self._collect(job_id, problems)
        except (Exception, SimulatedKill) as error:  # noqa: BLE001 -- whatever escapes the driver is a finding of the trial
            problems.append(f"exception escaped: {''.join(traceback.format_exception_only(error)).strip()}")
            outcome = Outcome("unknown", None, {}, {}, problems, {})
        finally:
            self.coordinator.store.close(checkpoint=False)
        outcome.calls = {self.coordinator_switch.target: self.coordinator_switch.calls,
                         **{name: switch.calls for name, switch in self.site_switches.items()}}
        outcome.fired = self.coordinator_switch.fired or next((s.fired for s in self.site_switches.values() if s.fired), None)
        return outcome

    def _collect(self, job_id: str, problems: list[str]) -> Outcome:
        status = self.coordinator.status(job_id)
        summary: dict[str, Any] = {}
        tables: dict[str, Any] = {}
        if status["status"] == "done":
            results = self.coordinator.results(job_id)
            summary = results["summary"]
            tables = {name: wire.decode_table(self.coordinator.result_item(job_id, name, "table")) for name in results["tables"]}
        problems += audit_problems(self.audit_path, self.database)
        return Outcome(status["status"], status.get("error"), summary, tables, problems, {})


def audit_problems(audit_path: Path, database: Path) -> list[str]:
    """What the audit log fails to account for: a broken chain, or a stored contribution it does not record."""
    report = verify(audit_path)
    if not report.ok:
        return [f"audit log does not verify: {report.problem} (line {report.line})"]
    recorded = {
        (f["digest"], f["job_id"], f["round"], f["stage"], f["site"])
        for f in (entry["fields"] for entry in read_entries(audit_path, event="contribution.received"))
    }
    with sqlite3.connect(database) as db:
        stored = db.execute("SELECT digest, job_id, round_index, stage, site FROM messages").fetchall()
    return [f"unaudited contribution: {site} round {round_index} stage {stage} (digest {digest[:12]})"
            for digest, job_id, round_index, stage, site in stored
            if (digest, job_id, round_index, stage, site) not in recorded]


def comparable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """A result summary without the fields that differ between runs of one job by design (job ID, timings)."""
    return {key: value for key, value in summary.items() if key not in TIMING_FIELDS}


def fewest_sites(summary: Any) -> int | None:
    """The fewest sites any part of a summary reports (``num_sites``, or a list under a key naming sites)."""
    counts: list[int] = []

    def walk(value: Any, key: str = "") -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            if "sites" in key and value and all(isinstance(v, str) for v in value):
                counts.append(len(value))
            else:
                for v in value:
                    walk(v, key)
        elif key == "num_sites" and isinstance(value, int) and not isinstance(value, bool):
            counts.append(value)

    walk(summary)
    return min(counts) if counts else None


def classify(outcome: Outcome, reference: Outcome, fault: Fault) -> tuple[str, str]:
    """The trial's class and why: ``identical``, ``documented outcome`` or ``lost``.

    The documented outcomes are the two ways a job may end when a site is never restarted:

    * the job failed with an error that says the site ``was lost`` and names it (an analysis
      whose rounds must all cover the same cohort: GWAS, PCA, census);
    * the job is done over fewer sites than the reference (training goes on over the
      survivors; its summary says which sites each round had).

    Anything else is lost: a harness problem (stuck, an exception, an audit that does not
    verify or misses a stored contribution), a failure, or a result unlike the reference.
    """
    if outcome.problems:
        return LOST, "; ".join(outcome.problems)
    if outcome.status == "done" and same_result(outcome, reference):
        return IDENTICAL, ""
    site_lost = fault.target != COORDINATOR and not fault.restart
    if site_lost and outcome.status == "failed" and "was lost" in (outcome.error or "") and fault.target in (outcome.error or ""):
        return DOCUMENTED, f"failed: {outcome.error}"
    fewer = fewest_sites(outcome.summary)
    if site_lost and outcome.status == "done" and fewer is not None and fewer < (fewest_sites(reference.summary) or 0):
        return DOCUMENTED, f"done over {fewer} sites"
    if outcome.status == "done":
        return LOST, f"done with a result unlike the reference ({difference(outcome, reference)})"
    return LOST, f"{outcome.status}: {outcome.error}"


def same_result(outcome: Outcome, reference: Outcome) -> bool:
    return (comparable(outcome.summary) == comparable(reference.summary) and outcome.tables.keys() == reference.tables.keys()
            and all(outcome.tables[name].equals(reference.tables[name]) for name in reference.tables))


def difference(outcome: Outcome, reference: Outcome) -> str:
    """Which tables and summary fields differ from the reference, in a few words."""
    keys = sorted(k for k in comparable(outcome.summary).keys() | comparable(reference.summary).keys()
                  if outcome.summary.get(k) != reference.summary.get(k))
    tables = sorted(n for n in outcome.tables.keys() | reference.tables.keys()
                    if n not in outcome.tables or n not in reference.tables or not outcome.tables[n].equals(reference.tables[n]))
    return f"summary fields {keys}, tables {tables}, sites {fewest_sites(outcome.summary)}"


def sample_faults(rng: random.Random, reference: Outcome, count: int, *, threshold: int) -> list[Fault]:
    """``count`` faults cycling through coordinator kill / site kill and restart / site kill for good.

    Points are drawn over the calls each party made in the undisturbed ``reference`` run.
    A site is only killed for good where the others still meet the job's ``threshold``.
    """
    sites = sorted(name for name in reference.calls if name != COORDINATOR)
    kinds = ["coordinator", "site restarted"] + (["site lost"] if len(sites) - 1 >= threshold else [])
    faults = []
    for index in range(count):
        kind = kinds[index % len(kinds)]
        target = COORDINATOR if kind == "coordinator" else rng.choice(sites)
        point = rng.randint(1, len(reference.calls[target]))
        faults.append(Fault(target, point, after=rng.random() < 0.5, restart=kind != "site lost"))
    return faults


@dataclass
class Tally:
    """Trials by class, and a line for each one that was not identical."""

    trials: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {IDENTICAL: 0, DOCUMENTED: 0, LOST: 0})
    notes: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def add(self, kind: str, fault: Fault, outcome: Outcome, verdict: str, why: str) -> None:
        self.trials += 1
        self.counts[verdict] += 1
        line = f"{kind}: {fault} [{outcome.fired}] -> {verdict}{': ' + why[:240] if why else ''}"
        if verdict != IDENTICAL:
            self.notes.append(line)
        if verdict != IDENTICAL and (fault.target == COORDINATOR or fault.restart):
            self.unexpected.append(line)

    def __str__(self) -> str:
        head = (f"trials {self.trials} / identical {self.counts[IDENTICAL]} / documented outcome {self.counts[DOCUMENTED]} "
                f"/ lost {self.counts[LOST]}")
        return "\n".join([head, *self.notes])


def run_matrix(kinds: Sequence[tuple[JobKind, Outcome]], folder: Path, *, seed: int, per_kind: int) -> Tally:
    """Runs ``per_kind`` sampled faults of every job kind and classifies each against its reference."""
    rng = random.Random(seed)
    tally = Tally()
    for kind, reference in kinds:
        threshold = int(kind.spec["threshold"])
        for index, fault in enumerate(sample_faults(rng, reference, per_kind, threshold=threshold)):
            outcome = Federation(kind, folder / f"{kind.name}-{index}", fault).run()
            verdict, why = classify(outcome, reference, fault)
            tally.add(kind.name, fault, outcome, verdict, why)
    return tally
