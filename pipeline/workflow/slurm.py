"""Batch submission of a site workflow to Slurm: one job per step, dependencies, logs, status.

``genofed workflow submit FILE --site site.toml --scheduler slurm`` plans the workflow
like ``workflow run --dry-run`` and writes one sbatch script per step that has to run
into ``WORK/slurm/``; each script runs ``genofed workflow run FILE --only STEP`` on a
compute node, so a job re-checks its step's record and skips work that is already
done. A job depends on the jobs of the steps it reads (``--dependency=afterok``, with
``--kill-on-invalid-dep=yes`` so that a failure cancels what depends on it).

An indexed VCF's ingest becomes an array job: task ``i`` of ``K`` ingests every K-th
genomic region (:func:`pipeline.ingest.ingest_part`) into ``WORK/parts/STEP/``, and a
last job, dependent on the whole array, assembles the dataset from the parts.

Logs land in ``WORK/logs/STEP-JOBID.out`` (array tasks: ``STEP-part-JOBID_TASK.out``);
``WORK/submission.json`` records the jobs, and ``genofed workflow status`` reads it and
asks Slurm (``squeue``, then ``sacct``, then ``scontrol``) about them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.federation.config import load_site_config
from pipeline.ingest import parse_chunk_size
from pipeline.io.vcf import open_vcf
from pipeline.workflow import plan as planning
from pipeline.workflow.run import LAST_RUN, default_work_dir, load_for_site, plan_text
from pipeline.workflow.spec import load_workflow
from pipeline.workflow.steps import KINDS

__all__ = ["BatchOptions", "SUBMISSION", "render_script", "submit_workflow", "workflow_status", "job_states"]

log = logging.getLogger(__name__)

SUBMISSION = "submission.json"
_ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED")


@dataclass(frozen=True)
class BatchOptions:
    """sbatch options of every step job (``None``: the cluster's default).

    Attributes:
        partition: ``--partition``.
        account: ``--account``.
        walltime: ``--time`` (``HH:MM:SS``).
        cpus: ``--cpus-per-task``.
        memory: ``--mem`` (``4G``).
        max_array: most tasks of an ingest array job (regions are dealt round-robin).
        extra: more ``#SBATCH`` lines, verbatim options (``--qos=short``).
    """

    partition: str | None = None
    account: str | None = None
    walltime: str | None = None
    cpus: int | None = None
    memory: str | None = None
    max_array: int = 32
    extra: tuple[str, ...] = ()


def _directives(options: BatchOptions) -> list[str]:
    pairs = (
        ("--partition", options.partition), ("--account", options.account), ("--time", options.walltime),
        ("--cpus-per-task", options.cpus), ("--mem", options.memory),
    )
    return [f"#SBATCH {flag}={value}" for flag, value in pairs if value is not None] + [f"#SBATCH {extra}" for extra in options.extra]


def render_script(*, job_name: str, log_path: str, command: Sequence[str], options: BatchOptions, array: str | None = None) -> str:
    """An sbatch script: ``#SBATCH`` lines, then ``exec`` of the command from the submit directory."""
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --output={log_path}"]
    if array is not None:
        lines.append(f"#SBATCH --array={array}")
    lines += _directives(options)
    lines += [
        "set -euo pipefail",
        f"cd {shlex.quote(os.getcwd())}",
        'echo "genofed step job ${SLURM_JOB_ID:-?} on $(hostname) at $(date -u +%FT%TZ)" >&2',
        "exec " + " ".join(shlex.quote(part) for part in command),
        "",
    ]
    return "\n".join(lines)


def _base_command(spec_path: Path, site: Path, work: Path, params: Mapping[str, Any], step: str) -> list[str]:
    command = [sys.executable, "-m", "pipeline.cli", "workflow", "run", str(spec_path), "--site", str(site), "--work", str(work), "--only", step, "--no-progress"]
    for name, value in params.items():
        command += ["--param", f"{name}={'null' if value is None else value}"]
    return command


def _sbatch(script: Path, dependencies: Sequence[str], sbatch: str) -> str:
    arguments = [sbatch, "--parsable"]
    if dependencies:
        arguments += [f"--dependency=afterok:{':'.join(dependencies)}", "--kill-on-invalid-dep=yes"]
    arguments.append(str(script))
    try:
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise ConfigurationError(f"{sbatch} not found: submit from a Slurm login node, or run the workflow with 'genofed workflow run'") from None
    if done.returncode != 0:
        raise ConfigurationError(f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip().split(";")[0]


def _region_count(step: planning.Step) -> int:
    source = open_vcf(str(step.inputs["vcf"]))
    return len(source.regions(parse_chunk_size(step.params["chunk_size"]))) if source.has_index else 0


def submit_workflow(
    path: Path | str,
    *,
    site: Path | str,
    params: Mapping[str, Any] | None = None,
    work: Path | str | None = None,
    options: BatchOptions | None = None,
    step_scheduler: str = "processes",
    federated_on: str = "batch",
    rerun: Sequence[str] = (),
    dry_run: bool = False,
    sbatch: str = "sbatch",
) -> dict[str, Any]:
    """Writes and submits one sbatch job per out-of-date step, chained by ``afterok``.

    Args:
        path: the workflow file; site, params, work: as for :func:`pipeline.workflow.run.run_workflow`.
        options: sbatch options of every job.
        step_scheduler: ``--scheduler`` inside each job (``processes`` uses the job's cores).
        federated_on: ``batch`` submits federated steps too (compute nodes need outbound
            HTTPS to the coordinator); ``login`` leaves them to the site agent's node:
            the summary then says which command to run there once the jobs are done.
        rerun: steps to submit even when up to date.
        dry_run: write the scripts, submit nothing.
        sbatch: the sbatch executable.

    Returns:
        The submission (also ``WORK/submission.json``): per step the job IDs, scripts and logs.
    """
    if federated_on not in ("batch", "login"):
        raise ConfigurationError(f"--federated-on must be batch or login, not {federated_on!r}")
    options = options or BatchOptions()
    spec, site_config, work_dir, steps = load_for_site(path, site=site, params=params, work=work)
    given = dict(params or {})
    site_path = site_config.path.resolve()
    plans = planning.plan_steps(steps, rerun=tuple(rerun))
    scripts_dir, logs_dir = work_dir / "slurm", work_dir / "logs"
    for folder in (scripts_dir, logs_dir):
        folder.mkdir(parents=True, exist_ok=True)
    job_of: dict[str, str] = {}
    submitted: list[dict[str, Any]] = []
    left: list[str] = []
    for item in plans:
        step = item.step
        entry: dict[str, Any] = {"name": step.name, "kind": step.kind, "action": item.action, "reason": item.reason, "output": str(step.output)}
        submitted.append(entry)
        if item.action == "skip":
            continue
        if step.kind == "federated" and federated_on == "login":
            entry["action"] = "left-for-login-node"
            left.append(step.name)
            continue
        dependencies = [job_of[name] for name in step.upstream if name in job_of]
        command = _base_command(spec.path, site_path, work_dir, given, step.name) + ["--scheduler", step_scheduler]
        if step.name in rerun:
            command += ["--rerun", step.name]
        if options.cpus is not None and KINDS[step.kind].dask:
            command += ["--workers", str(options.cpus)]  # the job's cores, not the node's
        job_name = f"genofed-{spec.name}-{step.name}"
        regions = _region_count(step) if step.kind == "ingest" and step.inputs["vcf"].exists() else 0
        if regions > 1 and options.max_array > 1:
            parts = min(regions, options.max_array)
            part_script = scripts_dir / f"{step.name}-part.sbatch"
            part_command = command + ["--parts", str(parts), "--part", "${SLURM_ARRAY_TASK_ID}"]
            text = render_script(
                job_name=job_name + "-part", log_path=str(logs_dir / f"{step.name}-part-%A_%a.out"), command=part_command,
                options=options, array=f"0-{parts - 1}",
            )
            # the task index must expand in the shell: unquote it
            part_script.write_text(text.replace(shlex.quote("${SLURM_ARRAY_TASK_ID}"), '"${SLURM_ARRAY_TASK_ID}"'))
            entry.update(array_script=str(part_script), parts=parts, array_log=str(logs_dir / f"{step.name}-part-%A_%a.out"))
            if not dry_run:
                entry["array_job_id"] = _sbatch(part_script, dependencies, sbatch)
                dependencies = [entry["array_job_id"]]
            command = command + ["--parts", str(parts)]
        script = scripts_dir / f"{step.name}.sbatch"
        script.write_text(render_script(job_name=job_name, log_path=str(logs_dir / f"{step.name}-%j.out"), command=command, options=options))
        entry.update(script=str(script), log=str(logs_dir / f"{step.name}-%j.out"))
        if not dry_run:
            entry["job_id"] = _sbatch(script, dependencies, sbatch)
            job_of[step.name] = entry["job_id"]
            entry["action"] = "submitted"
    summary: dict[str, Any] = {
        "workflow": spec.name, "file": str(spec.path), "site": site_config.name, "site_config": str(site_path), "work": str(work_dir),
        "params": {k: v for k, v in given.items()}, "dry_run": dry_run, "options": asdict(options),
        "submitted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "steps": submitted, "plan": plan_text(plans),
    }
    if left:
        summary["login_node_command"] = " ".join(
            shlex.quote(part) for part in ["genofed", "workflow", "run", str(spec.path), "--site", str(site_path), "--work", str(work_dir)]
            + [x for name, value in given.items() for x in ("--param", f"{name}={value}")]
        )
    if not dry_run:
        (work_dir / SUBMISSION).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _run(arguments: list[str]) -> str | None:
    if shutil.which(arguments[0]) is None:
        return None
    try:
        done = subprocess.run(arguments, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _combine(states: Sequence[str]) -> str:
    if not states:
        return "UNKNOWN"
    for state in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"):
        if any(s.startswith(state) for s in states):
            return state
    for state in _ACTIVE:
        if state in states:
            return state
    return "COMPLETED" if all(s == "COMPLETED" for s in states) else states[0]


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """Slurm state of each job (an array job: its tasks' states combined), ``UNKNOWN`` if Slurm forgot it."""
    found: dict[str, list[str]] = {job: [] for job in job_ids}
    if not job_ids:
        return {}
    text = _run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%F %i %T"]) or ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in found:
            found[parts[0]].append(parts[2])
    missing = [job for job, states in found.items() if not states]
    if missing:
        text = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"]) or ""
        for line in text.splitlines():
            job_id, _, state = line.partition("|")
            base = job_id.split("_")[0]
            if base in found and not found[base]:
                found[base].append(state.split()[0] if state else "UNKNOWN")
    for job in [job for job, states in found.items() if not states]:
        text = _run(["scontrol", "show", "job", "-o", job]) or ""
        for line in text.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if "JobState" in fields:
                found[job].append(fields["JobState"])
    return {job: _combine(states) for job, states in found.items()}


def workflow_status(path: Path | str, *, site: Path | str, params: Mapping[str, Any] | None = None, work: Path | str | None = None) -> dict[str, Any]:
    """Per step: up to date or not (records), the last local run, and the Slurm jobs' states.

    Parameters default to those of the last submission or local run (the later one), so
    ``status`` needs only the file and the site.
    """
    spec = load_workflow(path)
    site_config = load_site_config(site, check_files=False)
    work_dir = Path(work).resolve() if work is not None else default_work_dir(spec, site_config)
    submission: dict[str, Any] = {}
    if (work_dir / SUBMISSION).is_file():
        submission = json.loads((work_dir / SUBMISSION).read_text())
    last_run: dict[str, Any] = json.loads((work_dir / LAST_RUN).read_text()) if (work_dir / LAST_RUN).is_file() else {}
    if params is not None:
        given = dict(params)
    else:  # those of the latest of the last submission and the last local run
        candidates = [(submission.get("submitted_at", ""), submission.get("params")), (last_run.get("started_at", ""), last_run.get("params"))]
        given = dict(max((c for c in candidates if c[1] is not None), default=("", {}), key=lambda c: c[0])[1])
    steps = planning.resolve(spec, site=site_config, params=given, work=work_dir)
    last_actions = {s["name"]: s["action"] for s in last_run.get("steps", [])}
    jobs = {s["name"]: s for s in submission.get("steps", [])}
    ids = [job for s in jobs.values() for job in (s.get("array_job_id"), s.get("job_id")) if job]
    states = job_states(ids)
    rows = []
    for item in planning.plan_steps(steps):
        step = item.step
        row: dict[str, Any] = {"name": step.name, "kind": step.kind, "up_to_date": item.action == "skip", "reason": item.reason, "output": str(step.output)}
        if step.name in last_actions:
            row["last_local_run"] = last_actions[step.name]
        job = jobs.get(step.name, {})
        for key in ("job_id", "array_job_id"):
            if job.get(key):
                row[key] = job[key]
                row[key.replace("id", "state")] = states.get(job[key], "UNKNOWN")
        if job.get("job_id"):
            row["log"] = job["log"].replace("%j", job["job_id"])
        rows.append(row)
    return {"workflow": spec.name, "site": site_config.name, "work": str(work_dir), "submitted_at": submission.get("submitted_at"), "steps": rows}
