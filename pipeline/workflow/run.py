"""Running a site workflow: the out-of-date steps, in order, resuming after a failure.

``genofed workflow run FILE --site site.toml`` loads and validates the file, resolves it
for the site (:func:`pipeline.workflow.plan.resolve`), prints the plan, and runs each
step whose record does not match its inputs and parameters. After a step succeeds its
record is written into its output folder; when a step fails, nothing is recorded for
it, so running the same command again skips the steps that finished and starts at the
failed one. Dask-backed steps (ingest) run on ``--scheduler``; one client (and one
dask-jobqueue cluster) serves the whole run.

The run's working folder (default ``SITE_DIR/runs/WORKFLOW``) holds ``last-run.json``
(what the last run did, step by step), and, for batch submission, the sbatch scripts,
``submission.json`` and ``logs/``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import ConfigurationError
from pipeline.federation.config import SiteConfig, load_site_config
from pipeline.workflow import plan as planning
from pipeline.cluster import ClusterOptions, dask_session, parse_scheduler
from pipeline.workflow.spec import WorkflowSpec, load_workflow
from pipeline.workflow.steps import KINDS, RunContext

__all__ = ["default_work_dir", "load_for_site", "run_workflow", "plan_text"]

log = logging.getLogger(__name__)

LAST_RUN = "last-run.json"


def default_work_dir(spec: WorkflowSpec, site: SiteConfig) -> Path:
    """``SITE_DIR/runs/WORKFLOW``: scripts, logs and run records of a workflow at a site."""
    return site.path.parent.resolve() / "runs" / spec.name


def load_for_site(
    path: Path | str, *, site: Path | str, params: Mapping[str, Any] | None = None, work: Path | str | None = None
) -> tuple[WorkflowSpec, SiteConfig, Path, tuple[planning.Step, ...]]:
    """Loads, validates and resolves a workflow for a site: ``(spec, site, work, steps)``.

    The site's certificates are not required (preparing data needs no federation yet).
    """
    spec = load_workflow(path)
    site_config = load_site_config(site, check_files=False)
    work_dir = Path(work).resolve() if work is not None else default_work_dir(spec, site_config)
    steps = planning.resolve(spec, site=site_config, params=params, work=work_dir)
    return spec, site_config, work_dir, steps


def plan_text(plans: Sequence[planning.StepPlan]) -> str:
    """One line per step: action, name, kind, output and why."""
    lines = []
    for item in plans:
        lines.append(f"  {item.action:<4}  {item.step.name:<12} {item.step.kind:<9} -> {item.step.output}  ({item.reason})")
    return "\n".join(lines)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _write_record(step: planning.Step, *, workflow: str, digests: Mapping[str, str], seconds: float) -> None:
    record = {
        "workflow": workflow, "step": step.name, "kind": step.kind, "key": planning.step_key(step, digests),
        "params": json.loads(json.dumps(dict(step.params), default=str)),
        "inputs": {name: str(path) for name, path in step.inputs.items()}, "input_digests": dict(digests),
        "genofed_version": __version__, "finished_at": _now(), "seconds": round(seconds, 3),
    }
    tmp = step.record_path.with_name(step.record_path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    tmp.replace(step.record_path)


def _check_upstream(step: planning.Step, by_name: Mapping[str, planning.Step], selected: set[str]) -> None:
    for name in step.upstream:
        if name in selected:
            continue
        upstream = by_name[name]
        missing = [n for n, p in upstream.inputs.items() if not p.exists()]
        fresh = not missing and planning.check_step(upstream)[0]
        if not fresh:
            raise ConfigurationError(
                f"{step.where}: step {step.name!r} reads the output of {name!r}, which is out of date or missing; "
                f"run {name!r} first (or the whole workflow without --only)"
            )


def run_workflow(
    path: Path | str,
    *,
    site: Path | str,
    params: Mapping[str, Any] | None = None,
    work: Path | str | None = None,
    dry_run: bool = False,
    only: Sequence[str] = (),
    rerun: Sequence[str] = (),
    scheduler: str = "threads",
    workers: int | None = None,
    cluster: ClusterOptions | None = None,
    performance_report: Path | str | None = None,
    progress: bool = False,
    part: int | None = None,
    parts: int | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Runs the out-of-date steps of the workflow at ``path`` for the site ``site``.

    Args:
        path: the workflow file (``kind: workflow``).
        site: the site's ``site.toml`` (``${site.*}`` values, and the agent's config).
        params: values of the workflow's parameters (``--param NAME=VALUE``).
        work: the run's working folder (default ``SITE_DIR/runs/WORKFLOW``).
        dry_run: print the plan, run nothing.
        only: run just these steps (their upstream outputs must be up to date).
        rerun: run these steps even when up to date.
        scheduler: for Dask-backed steps; see :mod:`pipeline.cluster`.
        workers: workers of a local scheduler.
        cluster: worker jobs for ``slurm``/``pbs``.
        performance_report: write Dask's performance report (HTML) here (distributed only).
        progress: progress bars on stderr.
        part, parts: batch ingest (one ``--only`` ingest step): with both, run array task
            ``part`` of ``parts`` into ``WORK/parts/STEP``; with ``parts`` alone, assemble
            the dataset from those parts (:func:`pipeline.ingest.ingest_part`).
        say: where the plan and step lines go (the CLI prints them).

    Returns:
        ``{"workflow", "site", "work", "dry_run", "steps": [{"name", "kind", "action",
        "reason", "output", "seconds"}]}`` (also written to ``WORK/last-run.json``).

    Raises:
        GenofedError: an invalid file or parameter (naming the line), or the error of
            the step that failed (the steps before it keep their records).
    """
    scheduler = parse_scheduler(scheduler)
    spec, site_config, work_dir, steps = load_for_site(path, site=site, params=params, work=work)
    by_name = {step.name: step for step in steps}
    for name in (*only, *rerun):
        if name not in by_name:
            raise ConfigurationError(f"{spec.path}: no step named {name!r}; steps: {', '.join(by_name)}")
    selected = set(only) if only else set(by_name)
    if parts is not None:
        if len(only) != 1 or by_name[only[0]].kind != "ingest":
            raise ConfigurationError("--parts/--part split one ingest step: give it with --only STEP")
        if parts < 1 or (part is not None and not 0 <= part < parts):
            raise ConfigurationError(f"--part {part} --parts {parts}: expected 0 <= part < parts")
    elif part is not None:
        raise ConfigurationError("--part needs --parts")
    plans = [p for p in planning.plan_steps(steps, rerun=tuple(rerun)) if p.step.name in selected]
    say(f"workflow {spec.name} for site {site_config.name} ({'dry run' if dry_run else 'run'}):\n{plan_text(plans)}")
    summary: dict[str, Any] = {
        "workflow": spec.name, "file": str(spec.path), "site": site_config.name, "work": str(work_dir), "dry_run": dry_run,
        "scheduler": scheduler, "params": json.loads(json.dumps(dict(params or {}), default=str)), "steps": [],
    }
    if dry_run:
        summary["steps"] = [
            {"name": p.step.name, "kind": p.step.kind, "action": p.action, "reason": p.reason, "output": str(p.step.output)} for p in plans
        ]
        return summary
    work_dir.mkdir(parents=True, exist_ok=True)
    needs_dask = any(KINDS[p.step.kind].dask and p.action == "run" for p in plans)
    session_scheduler = scheduler if needs_dask else "threads"
    started_at = _now()
    failed: str | None = None
    try:
        with dask_session(session_scheduler, options=cluster, performance_report=performance_report if needs_dask else None):
            parts_dir = work_dir / "parts" / only[0] if parts is not None else None
            context = RunContext(
                site=site_config, scheduler=scheduler, workers=workers, progress=progress, part=part, parts=parts, parts_dir=parts_dir,
            )
            for step in steps:
                if step.name not in selected:
                    continue
                if only:
                    _check_upstream(step, by_name, selected)
                fresh, reason, digests = planning.check_step(step)
                entry: dict[str, Any] = {"name": step.name, "kind": step.kind, "output": str(step.output), "reason": reason}
                if fresh and step.name not in rerun:
                    entry["action"] = "skipped"
                    summary["steps"].append(entry)
                    say(f"skip  {step.name}: up to date ({reason})")
                    continue
                say(f"run   {step.name} ({step.kind}): {reason}")
                failed = step.name
                began = time.perf_counter()
                entry["action"] = "failed"
                summary["steps"].append(entry)
                KINDS[step.kind].execute(step.inputs, step.params, step.output, context)
                seconds = time.perf_counter() - began
                if part is not None:  # one array task: the assembling job records the step
                    entry.update(action=f"ran part {part} of {parts}", seconds=round(seconds, 3))
                    failed = None
                    say(f"done  {step.name} part {part}/{parts} in {seconds:.1f} s")
                    continue
                if parts_dir is not None:
                    shutil.rmtree(parts_dir, ignore_errors=True)
                    with contextlib.suppress(OSError):
                        parts_dir.parent.rmdir()  # WORK/parts, once no other step's parts are left
                _write_record(step, workflow=spec.name, digests=digests, seconds=seconds)
                entry.update(action="ran", seconds=round(seconds, 3))
                failed = None
                say(f"done  {step.name} in {seconds:.1f} s")
    finally:
        summary.update(started_at=started_at, finished_at=_now(), failed_step=failed)
        if failed is not None:
            say(f"step {failed} failed; the steps before it are recorded: run the same command again to resume from {failed}")
        if part is None:
            (work_dir / LAST_RUN).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
