"""Planning: resolve a workflow for one site and decide which steps are out of date.

A step is up to date when its output folder holds a record, ``.genofed-step.json``,
whose key equals the key computed now: the SHA-256 of the step's kind, its resolved
parameters, the genofed version and the *content* digests of its inputs (a file's
bytes; a folder's relative paths and file bytes, the record itself excluded). Editing
an input or a parameter therefore reruns the step and, through its new output, the
steps that read it; touching a file without changing it reruns nothing. The record
is written only after the step succeeded, so a failed step (and everything after it)
is simply out of date, and the next run resumes there.

Relative paths in a workflow resolve against the current directory, as they would on
the command line; ``${site.*}`` paths are absolute.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline import __version__
from pipeline.errors import ConfigurationError
from pipeline.federation.config import SiteConfig
from pipeline.workflow.spec import REFERENCE, WorkflowSpec
from pipeline.workflow.steps import KINDS
from pipeline.yaml_specs import load_yaml

__all__ = [
    "RECORD_NAME", "Step", "StepPlan", "resolve", "parse_param_overrides", "content_digest", "step_key", "read_record",
    "input_digests", "check_step", "plan_steps",
]

RECORD_NAME = ".genofed-step.json"
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Step:
    """A step with every reference resolved: input paths, cast parameters, output folder."""

    name: str
    kind: str
    inputs: Mapping[str, Path]
    params: Mapping[str, Any]
    output: Path
    upstream: tuple[str, ...]
    where: str

    @property
    def record_path(self) -> Path:
        return self.output / RECORD_NAME


@dataclass(frozen=True)
class StepPlan:
    """What a run would do with a step: ``run`` or ``skip``, and why."""

    step: Step
    action: str
    reason: str


def parse_param_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs from ``--param``; values read as YAML scalars (``0.98``, ``true``, ``null``).

    Raises:
        ConfigurationError: a pair without ``=``.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--param {pair!r}: expected NAME=VALUE, e.g. --param vcf=site-1.vcf.gz")
        try:
            value = load_yaml(text) if text else ""
        except yaml.YAMLError:
            value = text
        values[name.strip()] = text if isinstance(value, (dict, list)) else value
    return values


def _site_values(site: SiteConfig) -> dict[str, Any]:
    return {
        "name": site.name, "dataset": str(site.dataset), "dir": str(site.path.parent.resolve()), "state_dir": str(site.state_dir),
    }


def _substitute(value: Any, lookup: Mapping[str, Any], where: str) -> Any:
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value.strip())
    if whole:
        return lookup[whole.group(1).strip()]

    def one(match: Any) -> str:
        found = lookup[match.group(1).strip()]
        if found is None:
            raise ConfigurationError(f"{where}: ${{{match.group(1)}}} has no value, so {value!r} cannot be built; give it with --param")
        return str(found)

    return REFERENCE.sub(one, value)


def resolve(spec: WorkflowSpec, *, site: SiteConfig, params: Mapping[str, Any] | None = None, work: Path | str) -> tuple[Step, ...]:
    """Resolves every reference of ``spec`` for ``site`` with the run's parameter values.

    Raises:
        ConfigurationError: an unknown or missing required parameter, or a parameter
            value a step rejects (naming the step's line and what was expected).
    """
    given = dict(params or {})
    for name in given:
        if name not in spec.params:
            raise ConfigurationError(
                f"{spec.path}: --param {name}: the workflow has no such parameter; it takes {', '.join(spec.params) or 'none'}"
            )
    values: dict[str, Any] = {}
    for name, param in spec.params.items():
        value = given.get(name, param.default)
        if param.required and value is None:
            help_text = f" ({param.help})" if param.help else ""
            raise ConfigurationError(f"{param.where}: parameter {name!r}{help_text} is required; give it with --param {name}=VALUE")
        values[name] = value
    lookup: dict[str, Any] = {f"params.{k}": v for k, v in values.items()}
    lookup.update({f"site.{k}": v for k, v in _site_values(site).items()})
    lookup["work"] = str(Path(work).resolve())
    steps: list[Step] = []
    for step_spec in spec.steps:
        kind = KINDS[step_spec.run]
        inputs: dict[str, Path] = {}
        upstream = list(step_spec.after)
        for name, raw in step_spec.inputs.items():
            value = _substitute(raw, lookup, step_spec.key_where.get("inputs", step_spec.where))
            if value is None:
                if name in kind.required_inputs:
                    raise ConfigurationError(f"{step_spec.where}: step {step_spec.name!r} needs inputs.{name}, which resolved to nothing")
                continue
            inputs[name] = Path(str(value)).resolve()
            for reference in REFERENCE.findall(str(raw)):
                parts = reference.strip().split(".")
                if parts[0] == "steps" and parts[1] not in upstream:
                    upstream.append(parts[1])
        cast: dict[str, Any] = {}
        for name, param in kind.params.items():
            raw = step_spec.params.get(name, param.default)
            value = _substitute(raw, lookup, step_spec.key_where.get("params", step_spec.where))
            if value is None:
                value = param.default
            try:
                cast[name] = param.check(value)
            except ValueError as error:
                raise ConfigurationError(
                    f"{step_spec.key_where.get('params', step_spec.where)}: step {step_spec.name!r}: {name} is {value!r}; expected {error}"
                ) from None
        output = _substitute(step_spec.output, lookup, step_spec.key_where.get("output", step_spec.where))
        if output is None or not str(output).strip():
            raise ConfigurationError(f"{step_spec.key_where.get('output', step_spec.where)}: step {step_spec.name!r}: output resolved to nothing")
        step = Step(step_spec.name, kind.name, inputs, cast, Path(str(output)).resolve(), tuple(upstream), step_spec.where)
        lookup[f"steps.{step.name}.output"] = str(step.output)
        steps.append(step)
    outputs = {}
    for step in steps:
        if step.output in outputs:
            raise ConfigurationError(f"{step.where}: step {step.name!r} writes {step.output}, as step {outputs[step.output]!r} does; give each step its own output")
        outputs[step.output] = step.name
    return tuple(steps)


def _file_digest(path: Path, into: Any) -> None:
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            into.update(block)


def content_digest(path: Path | str) -> str:
    """SHA-256 of a file's bytes, or of a folder's sorted relative paths and file bytes.

    Step records (``.genofed-step.json``) are left out, so recording a step does not
    change its output's digest.

    Raises:
        ConfigurationError: the path does not exist.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _file_digest(path, digest)
        return "file:" + digest.hexdigest()
    if not path.is_dir():
        raise ConfigurationError(f"{path}: input does not exist")
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name == RECORD_NAME:
                continue
            file_path = Path(root) / name
            relative = file_path.relative_to(path).as_posix()
            digest.update(len(relative).to_bytes(4, "big") + relative.encode())
            inner = hashlib.sha256()
            _file_digest(file_path, inner)
            digest.update(inner.digest())
    return "dir:" + digest.hexdigest()


def step_key(step: Step, input_digests: Mapping[str, str]) -> str:
    """The key a step's record must hold for the step to be up to date."""
    payload = {
        "kind": step.kind, "params": dict(step.params), "inputs": dict(sorted(input_digests.items())), "genofed": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def read_record(step: Step) -> dict[str, Any] | None:
    """The step's record, or ``None`` when the output or its record is missing or unreadable."""
    try:
        record = json.loads(step.record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _why(step: Step, record: dict[str, Any] | None, digests: Mapping[str, str]) -> str:
    if not step.output.exists():
        return "no output yet"
    if record is None:
        return "output has no step record"
    changed = [name for name, digest in digests.items() if record.get("input_digests", {}).get(name) != digest]
    changed += [name for name in record.get("input_digests", {}) if name not in digests]
    if changed:
        return "input changed: " + ", ".join(sorted(set(changed)))
    if record.get("params") != json.loads(json.dumps(dict(step.params), default=str)):
        differing = sorted(k for k in step.params if record.get("params", {}).get(k) != step.params[k])
        return "parameters changed: " + (", ".join(differing) or "kind")
    return "genofed version changed"


def input_digests(step: Step) -> dict[str, str]:
    """Content digests of a step's inputs (which must exist)."""
    missing = [f"{name} ({path})" for name, path in step.inputs.items() if not path.exists()]
    if missing:
        raise ConfigurationError(f"{step.where}: step {step.name!r}: input {', '.join(missing)} does not exist")
    return {name: content_digest(path) for name, path in step.inputs.items()}


def check_step(step: Step) -> tuple[bool, str, dict[str, str]]:
    """``(up_to_date, reason, input_digests)`` for a step whose inputs exist now."""
    digests = input_digests(step)
    record = read_record(step)
    key = step_key(step, digests)
    if record is not None and record.get("key") == key and step.output.exists():
        return True, "inputs and parameters unchanged", digests
    return False, _why(step, record, digests), digests


def plan_steps(steps: tuple[Step, ...], *, rerun: tuple[str, ...] = ()) -> list[StepPlan]:
    """What a run would do now, without running anything (``--dry-run``).

    A step after one that will run is planned to run too: its input will be rewritten.
    """
    plans: list[StepPlan] = []
    running: set[str] = set()
    for step in steps:
        pending = [name for name in step.upstream if name in running]
        if step.name in rerun:
            plans.append(StepPlan(step, "run", "asked to rerun"))
        elif pending:
            plans.append(StepPlan(step, "run", f"after {', '.join(pending)}"))
        else:
            missing = [name for name, path in step.inputs.items() if not path.exists()]
            if missing:
                plans.append(StepPlan(step, "run", f"input missing now: {', '.join(missing)}"))
            else:
                fresh, reason, _ = check_step(step)
                plans.append(StepPlan(step, "skip" if fresh else "run", reason))
        if plans[-1].action == "run":
            running.add(step.name)
    return plans
