"""Site workflow files (``workflows/site-prep.yaml``...): load and validate, with line numbers.

A *workflow* chains site steps; it is not a *job spec* (``analysis: census``), which an
analyst submits to the coordinator with ``genofed job submit``. A workflow file says
``kind: workflow``::

    kind: workflow
    name: site-prep
    description: ingest and QC a site's VCF
    include: other.yaml            # optional: its params and steps come first
    params:                        # values a run can override (--param NAME=VALUE)
      vcf: {required: true, help: the site's VCF/BCF}
      chunk_size: 5Mb
    steps:
      - name: ingest
        run: ingest                # a kind of pipeline.workflow.steps.KINDS
        inputs: {vcf: "${params.vcf}"}
        params: {chunk_size: "${params.chunk_size}"}
        output: "${site.dataset}"
      - name: qc
        run: qc
        inputs: {dataset: "${steps.ingest.output}"}
        output: "${site.dataset}.qc"
        after: []                  # optional: steps to finish first without reading their output

References: ``${params.NAME}``, ``${steps.NAME.output}`` (an earlier step), ``${site.name}``,
``${site.dataset}``, ``${site.dir}`` (the folder of site.toml), ``${site.state_dir}`` and
``${work}`` (the run's working folder). A value that is exactly one reference keeps the
referenced value's type (a ``null`` optional input is then left out).

Every error names the file and the line: YAML syntax, unknown keys, unknown step
kinds, inputs or parameters, references to undeclared params or later steps,
duplicate names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigurationError
from pipeline.workflow.steps import KINDS
from pipeline.yaml_specs import SpecLoader, load_yaml

__all__ = ["ParamSpec", "StepSpec", "WorkflowSpec", "load_workflow", "is_workflow_file", "REFERENCE", "SITE_FIELDS"]

REFERENCE = re.compile(r"\$\{([^}]*)\}")
SITE_FIELDS = ("name", "dataset", "dir", "state_dir")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TOP_KEYS = ("kind", "name", "description", "include", "params", "steps")
_STEP_KEYS = ("name", "run", "inputs", "params", "output", "after", "description")
_PARAM_KEYS = ("default", "required", "help")


@dataclass(frozen=True)
class ParamSpec:
    """A workflow parameter: default (``None``: none), whether a run must give it, help."""

    name: str
    default: Any
    required: bool
    help: str
    where: str


@dataclass(frozen=True)
class StepSpec:
    """One step as written (references not yet resolved); ``where`` is ``FILE:LINE``."""

    name: str
    run: str
    inputs: Mapping[str, Any]
    params: Mapping[str, Any]
    output: str
    after: tuple[str, ...]
    description: str
    where: str
    key_where: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowSpec:
    """A validated workflow file."""

    path: Path
    name: str
    description: str
    params: Mapping[str, ParamSpec]
    steps: tuple[StepSpec, ...]

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise ConfigurationError(f"{self.path}: no step named {name!r}; steps: {', '.join(s.name for s in self.steps)}")


class _Map(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]


class _List(list):  # type: ignore[type-arg]
    line: int = 0
    item_lines: list[int]


class _Loader(SpecLoader):
    """Exponent numbers as floats (:class:`~pipeline.yaml_specs.SpecLoader`), and lines remembered."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigurationError(f"{loader.name}:{line}: keys are names (strings), got {key!r}")
        if key in result:
            raise ConfigurationError(f"{loader.name}:{line}: duplicate key {key!r} (first on line {result.key_lines[key]})")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _List:
    result = _List(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _parse_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"{path}: cannot read the workflow file ({error.strerror})") from None
    loader = _Loader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        context = f" ({error.context} started on line {error.context_mark.line + 1})" if error.context and error.context_mark else ""
        raise ConfigurationError(f"{path}{line}: not valid YAML: {error.problem or error}{context}") from None
    except yaml.YAMLError as error:
        raise ConfigurationError(f"{path}: not valid YAML: {error}") from None
    finally:
        loader.dispose()


def is_workflow_file(path: Path | str) -> bool:
    """Whether ``path`` is a site workflow (``kind: workflow``) rather than a job spec."""
    try:
        data = load_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("kind") == "workflow"


def _at(path: Path, container: _Map | _List, key: str | int | None = None) -> str:
    if key is None:
        return f"{path}:{container.line}"
    if isinstance(container, _Map):
        return f"{path}:{container.key_lines.get(str(key), container.line)}"
    return f"{path}:{container.item_lines[int(key)]}"


def _unknown(path: Path, mapping: _Map, allowed: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigurationError(f"{_at(path, mapping, key)}: unknown key {key!r} in {what}; expected one of {', '.join(allowed)}")


def _references(value: Any) -> list[str]:
    if isinstance(value, str):
        return [m.group(1).strip() for m in REFERENCE.finditer(value)]
    return []


def _check_references(value: Any, where: str, *, params: Mapping[str, ParamSpec], earlier: set[str]) -> None:
    for reference in _references(value):
        parts = reference.split(".")
        if parts[0] == "params" and len(parts) == 2:
            if parts[1] not in params:
                raise ConfigurationError(
                    f"{where}: ${{{reference}}} names no declared parameter; declare it under params: "
                    f"(declared: {', '.join(params) or 'none'})"
                )
        elif parts[0] == "steps" and len(parts) == 3 and parts[2] == "output":
            if parts[1] not in earlier:
                raise ConfigurationError(
                    f"{where}: ${{{reference}}} names no earlier step; a step reads only outputs of steps above it "
                    f"(earlier: {', '.join(sorted(earlier)) or 'none'})"
                )
        elif parts[0] == "site" and len(parts) == 2:
            if parts[1] not in SITE_FIELDS:
                raise ConfigurationError(f"{where}: ${{{reference}}}: the site has {', '.join(SITE_FIELDS)}")
        elif parts != ["work"]:
            raise ConfigurationError(
                f"{where}: unknown reference ${{{reference}}}; use ${{params.NAME}}, ${{steps.NAME.output}}, "
                f"${{site.{'|'.join(SITE_FIELDS)}}} or ${{work}}"
            )
    if isinstance(value, str) and "${" in REFERENCE.sub("", value):
        raise ConfigurationError(f"{where}: unclosed reference in {value!r}; write ${{params.NAME}}")


def _parse_params(path: Path, data: Any, into: dict[str, ParamSpec]) -> None:
    if data is None:
        return
    if not isinstance(data, _Map):
        raise ConfigurationError(f"{path}: params: expected a mapping of NAME: default")
    for name, value in data.items():
        where = _at(path, data, name)
        if not _NAME.fullmatch(name):
            raise ConfigurationError(f"{where}: parameter name {name!r}: use letters, digits, '_' or '-'")
        if isinstance(value, _Map):
            _unknown(path, value, _PARAM_KEYS, f"parameter {name!r}")
            required = value.get("required", False)
            if not isinstance(required, bool):
                raise ConfigurationError(f"{_at(path, value, 'required')}: required: expected true or false")
            into[name] = ParamSpec(name, value.get("default"), required, str(value.get("help", "")), where)
        elif isinstance(value, _List):
            raise ConfigurationError(f"{where}: parameter {name!r}: expected a single value or {{default, required, help}}")
        else:
            into[name] = ParamSpec(name, value, False, "", where)


def _parse_step(path: Path, data: Any, index: int, steps: _List, params: Mapping[str, ParamSpec], earlier: set[str]) -> StepSpec:
    where = _at(path, steps, index)
    if not isinstance(data, _Map):
        raise ConfigurationError(f"{where}: a step is a mapping with name, run, inputs, params, output")
    _unknown(path, data, _STEP_KEYS, "a step")
    for key in ("name", "run", "output"):
        if key not in data:
            raise ConfigurationError(f"{where}: the step has no {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(f"{_at(path, data, 'name')}: step name {name!r}: use letters, digits, '_' or '-'")
    if name in earlier:
        raise ConfigurationError(f"{_at(path, data, 'name')}: a step named {name!r} already exists; step names are unique")
    kind = KINDS.get(data["run"]) if isinstance(data["run"], str) else None
    if kind is None:
        raise ConfigurationError(
            f"{_at(path, data, 'run')}: step {name!r}: unknown kind {data['run']!r}; expected one of {', '.join(KINDS)}"
        )
    sections: dict[str, Mapping[str, Any]] = {}
    for section, allowed in (("inputs", kind.inputs), ("params", tuple(kind.params))):
        value = data.get(section, _Map())
        if value is None:
            value = _Map()
        if not isinstance(value, _Map):
            raise ConfigurationError(f"{_at(path, data, section)}: step {name!r}: {section}: expected a mapping")
        for key, item in value.items():
            item_where = _at(path, value, key) if value.key_lines else _at(path, data, section)
            if key not in allowed:
                raise ConfigurationError(
                    f"{item_where}: step {name!r} ({kind.name}) has no {section[:-1]} {key!r}; expected one of {', '.join(allowed) or 'none'}"
                )
            if isinstance(item, (_Map, _List)):
                raise ConfigurationError(f"{item_where}: step {name!r}: {key}: expected a single value or a ${{reference}}")
            _check_references(item, item_where, params=params, earlier=earlier)
            if section == "params" and not _references(item):
                try:
                    kind.params[key].check(item)
                except ValueError as error:
                    raise ConfigurationError(f"{item_where}: step {name!r}: {key} is {item!r}; expected {error}") from None
        sections[section] = dict(value)
    for required in kind.required_inputs:
        if required not in sections["inputs"]:
            raise ConfigurationError(f"{where}: step {name!r} ({kind.name}) needs inputs.{required}")
    for key, param in kind.params.items():
        if param.default is None and key not in sections["params"]:
            raise ConfigurationError(f"{where}: step {name!r} ({kind.name}) needs params.{key}")
    output = data["output"]
    if not isinstance(output, str) or not output.strip():
        raise ConfigurationError(f"{_at(path, data, 'output')}: step {name!r}: output: expected a path (a folder to create)")
    _check_references(output, _at(path, data, "output"), params=params, earlier=earlier)
    after = data.get("after", _List())
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        raise ConfigurationError(f"{_at(path, data, 'after')}: step {name!r}: after: expected a list of earlier step names")
    for other in after:
        if other not in earlier:
            raise ConfigurationError(f"{_at(path, data, 'after')}: step {name!r}: after: {other!r} is not an earlier step")
    key_where = {key: _at(path, data, key) for key in data}
    return StepSpec(
        name=name, run=kind.name, inputs=sections["inputs"], params=sections["params"], output=output, after=tuple(after),
        description=str(data.get("description", "")), where=where, key_where=key_where,
    )


def _load(path: Path, seen: tuple[Path, ...]) -> tuple[str, str, dict[str, ParamSpec], list[StepSpec]]:
    data = _parse_yaml(path)
    if not isinstance(data, _Map):
        raise ConfigurationError(f"{path}: a workflow file is a YAML mapping with kind: workflow, name, params, steps")
    if "analysis" in data and "kind" not in data:
        raise ConfigurationError(
            f"{_at(path, data, 'analysis')}: this is a federated job spec (analysis: {data['analysis']}), not a site workflow; "
            "an analyst submits it with 'genofed job submit', a site workflow says 'kind: workflow'"
        )
    if data.get("kind") != "workflow":
        raise ConfigurationError(f"{_at(path, data, 'kind') if 'kind' in data else f'{path}:1'}: a site workflow starts with 'kind: workflow'")
    _unknown(path, data, _TOP_KEYS, "a workflow")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(f"{_at(path, data, 'name') if 'name' in data else f'{path}:1'}: name: expected a workflow name (letters, digits, '_', '-')")
    params: dict[str, ParamSpec] = {}
    steps: list[StepSpec] = []
    include = data.get("include")
    if include is not None:
        if not isinstance(include, str):
            raise ConfigurationError(f"{_at(path, data, 'include')}: include: expected the path of another workflow file")
        included = (path.parent / include).resolve()
        if included in seen:
            raise ConfigurationError(f"{_at(path, data, 'include')}: include: {include} includes itself")
        if not included.is_file():
            raise ConfigurationError(f"{_at(path, data, 'include')}: include: {included} does not exist")
        _, _, params, steps = _load(included, seen + (included,))
    own: dict[str, ParamSpec] = {}
    _parse_params(path, data.get("params"), own)
    params.update(own)
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, _List) or (not raw_steps and not steps):
        where = _at(path, data, "steps") if "steps" in data else f"{path}:1"
        raise ConfigurationError(f"{where}: steps: expected a non-empty list of steps")
    earlier = {step.name for step in steps}
    for index, item in enumerate(raw_steps):
        step = _parse_step(path, item, index, raw_steps, params, earlier)
        steps.append(step)
        earlier.add(step.name)
    return name, str(data.get("description", "")), params, steps


def load_workflow(path: Path | str) -> WorkflowSpec:
    """Reads and validates a site workflow file.

    Raises:
        ConfigurationError: ``FILE:LINE: what is wrong; what was expected``.
    """
    path = Path(path).resolve()
    name, description, params, steps = _load(path, (path,))
    return WorkflowSpec(path=path, name=name, description=description, params=params, steps=tuple(steps))
