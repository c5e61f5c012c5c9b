"""A job spec: which analysis, which sites, which round options, and the analysis' parameters.

A spec is a YAML mapping (``workflows/*.yaml``) with ``analysis: NAME``. The runtime
reads a few keys of its own (:data:`RUNTIME_KEYS`: sites, threshold, stage timeout,
consistency check, SecAgg+ neighbours, the mask PRG, description); every other key is
a parameter of the analysis, checked by the analysis when the job is submitted.

This module reads and checks the runtime's part only, and knows no analysis, so the
analyst's client (submit, status, results) loads it without the analyses' numeric stack.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigurationError, InputError, ProtocolError
from pipeline.yaml_specs import load_yaml

__all__ = [
    "JOB_ID_PATTERN",
    "check_job_id",
    "new_job_id",
    "RUNTIME_KEYS",
    "complete_privacy",
    "DEFAULT_STAGE_TIMEOUT",
    "CONSISTENCY_CHECK_DEFAULT",
    "THRESHOLD_RULES",
    "minimum_threshold",
    "shareholders",
    "maximum_threshold",
    "RoundOptions",
    "load_spec",
    "parse_round_options",
    "analysis_parameters",
    "default_threshold",
]

RUNTIME_KEYS = (
    "analysis", "threshold", "stage_timeout", "consistency_check", "num_neighbours", "mask_prg", "sites", "description",
)
"""Spec keys the runtime reads; every other key is the analysis' parameter."""

DEFAULT_STAGE_TIMEOUT = 60.0

CONSISTENCY_CHECK_DEFAULT = True
"""The signed survivor-list round is always on in a federation (in-memory simulations may skip it)."""

THRESHOLD_RULES = ("two_thirds", "majority")
"""How many of the parties holding a site's secret shares must answer to reconstruct it.

``two_thirds`` (the default, for a coordinator that may deviate): t >= floor(2m/3) + 1;
``majority`` (a coordinator trusted to follow the protocol): t > m/2. Below a majority,
two disjoint groups could each reconstruct one of a site's two secrets.
"""


JOB_ID_PATTERN = r"^job-[0-9]{8}-[0-9]{6}-[0-9a-f]{8}$"
"""Every job ID the coordinator makes (:func:`new_job_id`): ``job-YYYYmmdd-HHMMSS-`` and 8 lowercase hex digits.

Nothing else is a job ID: the coordinator's API refuses any other ``{job_id}`` before it
looks anything up, and a site agent refuses a task naming one, since a job ID names
folders of its state. The pattern is anchored and ASCII-only, so it reads the same in
Python (``re.fullmatch``) and as the OpenAPI ``pattern`` of the ``job_id`` parameter.
"""

_JOB_ID = re.compile(JOB_ID_PATTERN, re.ASCII)


def new_job_id(now: float) -> str:
    """A fresh job ID for a job submitted at ``now`` (seconds since the epoch, UTC), with 32 random bits."""
    return f"job-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}-{secrets.token_hex(4)}"


def check_job_id(value: object) -> str:
    """``value`` if it is a job ID (:data:`JOB_ID_PATTERN`); a job ID names folders, so nothing else passes.

    Args:
        value: anything read from the wire (a path parameter, a task's ``job_id``).

    Returns:
        ``value``, a ``str`` that matches :data:`JOB_ID_PATTERN`.

    Raises:
        ProtocolError: naming what was expected (the value is shown cut to 80 characters).
    """
    if not isinstance(value, str) or _JOB_ID.fullmatch(value) is None:
        raise ProtocolError(
            f"{str(value)[:80]!r} is not a job ID: expected job-YYYYmmdd-HHMMSS-xxxxxxxx (x: 8 lowercase hex digits), "
            "the form the coordinator issues, e.g. job-20250101-120000-0a1b2c3d"
        )
    return value


def load_spec(spec: Path | str | Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A job spec from a YAML file (``workflows/*.yaml``) or a mapping, with ``overrides`` applied.

    Overrides whose value is ``None`` are left out (an option the user did not give).

    Raises:
        InputError: unreadable file or not a YAML mapping.
    """
    if isinstance(spec, Mapping):
        data = dict(spec)
    else:
        path = Path(spec)
        try:
            loaded = load_yaml(path.read_text())
        except OSError as error:
            raise InputError(f"{path}: cannot read the job spec ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{path}: a job spec is a YAML mapping with at least 'analysis: NAME'")
        data = loaded
    return {**data, **{key: value for key, value in (overrides or {}).items() if value is not None}}


def shareholders(num_sites: int, num_neighbours: int | None = None) -> int:
    """How many parties hold shares of one site's secrets: every site, or its SecAgg+ neighbourhood."""
    return num_sites if num_neighbours is None else min(num_sites, num_neighbours + 1)


def maximum_threshold(num_sites: int, num_neighbours: int | None = None) -> int:
    """The largest threshold a round of ``num_sites`` accepts: every site (SecAgg); ``k`` and below ``n`` (SecAgg+).

    With SecAgg+ ``t <= k`` so that one silent site never leaves a neighbourhood
    without ``t`` shareholders: a single dropout cannot halt the round.
    """
    return num_sites if num_neighbours is None else min(num_sites - 1, num_neighbours)


def minimum_threshold(holders: int, rule: str = "two_thirds") -> int:
    """The least threshold ``rule`` accepts for secrets shared among ``holders`` parties (see :data:`THRESHOLD_RULES`).

    Raises:
        ConfigurationError: an unknown rule.
    """
    if rule == "two_thirds":
        return (2 * holders) // 3 + 1
    if rule == "majority":
        return holders // 2 + 1
    raise ConfigurationError(f"unknown threshold rule {rule!r}; expected one of {', '.join(THRESHOLD_RULES)}")


def default_threshold(num_sites: int, num_neighbours: int | None = None) -> int:
    """The threshold every site accepts by default: two thirds of the shareholders plus one (at least 2)."""
    return max(2, minimum_threshold(shareholders(num_sites, num_neighbours)))


@dataclass(frozen=True)
class RoundOptions:
    """The runtime's part of a spec, checked.

    Attributes:
        analysis: the analysis' name (not yet looked up).
        participants: the sites invited (sorted names).
        threshold: sites that must answer each stage (``None``: :func:`default_threshold`).
        num_neighbours: SecAgg+ with this many neighbours per site (``None``: every site).

    The stage timeout and the consistency round are checked here and read from the spec
    where they are used (every party reads the same spec).
    """

    analysis: str
    participants: tuple[str, ...]
    threshold: int | None
    num_neighbours: int | None


def complete_privacy(spec: Mapping[str, Any], threshold: int) -> dict[str, Any]:
    """The spec with its ``privacy`` block's ``honest_sites`` filled in: ``threshold - max_colluding``.

    A revealed sum holds at least ``threshold`` sites' noise, and up to ``max_colluding``
    of them may share theirs with the coordinator (:mod:`pipeline.privacy.terms`); the
    analysis calibrates its noise on the rest. A spec without ``privacy`` is returned as is.

    Raises:
        ConfigurationError: no site would be honest, or ``honest_sites`` asks for more.
    """
    privacy = spec.get("privacy")
    if privacy is None:
        return dict(spec)
    if not isinstance(privacy, Mapping):
        raise ConfigurationError("job spec key 'privacy' must be a mapping: {epsilon: E, delta: D, max_colluding: C}")
    colluding = privacy.get("max_colluding", 0)
    if isinstance(colluding, bool) or not isinstance(colluding, int) or colluding < 0:
        raise ConfigurationError(f"job spec key 'privacy.max_colluding' must be an integer >= 0, got {colluding!r}")
    honest = threshold - colluding
    if honest < 1:
        raise ConfigurationError(
            f"job spec key 'privacy.max_colluding' is {colluding} with a threshold of {threshold}: no site's noise would be "
            "guaranteed in a revealed sum; raise the threshold or lower max_colluding"
        )
    given = privacy.get("honest_sites", honest)
    if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= honest:
        raise ConfigurationError(
            f"job spec key 'privacy.honest_sites' must be an integer in [1, threshold - max_colluding = {honest}], got {given!r}"
        )
    return {**spec, "privacy": {**privacy, "honest_sites": given}}


def analysis_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec without the runtime's keys: what the analysis' ``init`` receives."""
    return {key: value for key, value in spec.items() if key not in RUNTIME_KEYS}


def parse_round_options(
    spec: Mapping[str, Any], enrolled: Sequence[str], *, known_analyses: Sequence[str], mask_prgs: Sequence[str],
) -> RoundOptions:
    """Checks the runtime's part of a spec against the enrolled sites.

    The analyses and mask PRGs there are (the default PRG first) come from the caller,
    so this module loads neither the analyses nor secure aggregation.

    Raises:
        ConfigurationError: naming the key and what was expected.
    """
    if not isinstance(spec, Mapping):
        raise ConfigurationError("a job spec must be a mapping with at least 'analysis: NAME'")
    name = spec.get("analysis")
    if not isinstance(name, str):
        raise ConfigurationError(f"the job spec needs 'analysis: NAME' (one of {', '.join(sorted(known_analyses))})")
    if name not in known_analyses:
        raise ConfigurationError(f"unknown analysis {name!r}; expected one of {sorted(known_analyses)}")
    sites = spec.get("sites", list(enrolled))
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites) or len(set(sites)) != len(sites):
        raise ConfigurationError("job spec key 'sites' must be a list of distinct enrolled site names")
    unknown = sorted(set(sites) - set(enrolled))
    if unknown:
        raise ConfigurationError(f"job spec key 'sites': {unknown} are not enrolled at this coordinator (enrolled: {sorted(enrolled)})")
    if len(sites) < 2:
        raise ConfigurationError(f"a job needs at least 2 sites, the spec names {len(sites)}")
    threshold = spec.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int) or not 2 <= threshold <= len(sites)):
        raise ConfigurationError(f"job spec key 'threshold' must be an integer in [2, {len(sites)}], got {threshold!r}")
    timeout = spec.get("stage_timeout", DEFAULT_STAGE_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86400:
        raise ConfigurationError(f"job spec key 'stage_timeout' must be seconds in (0, 86400], got {timeout!r}")
    consistency_check = spec.get("consistency_check", CONSISTENCY_CHECK_DEFAULT)
    if consistency_check is not True:
        raise ConfigurationError(
            f"job spec key 'consistency_check' is {consistency_check!r}: the signed survivor-list round is always on in a "
            "federation (it stops a coordinator from showing sites different survivor lists); remove the key"
        )
    neighbours = spec.get("num_neighbours")
    if neighbours is not None and (isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 2 or neighbours % 2):
        raise ConfigurationError(
            f"job spec key 'num_neighbours' must be an even integer >= 2 (k/2 neighbours on each side of a ring) or absent, "
            f"got {neighbours!r}"
        )
    if "mask_prg" in spec and spec["mask_prg"] not in mask_prgs:
        raise ConfigurationError(
            f"job spec key 'mask_prg' must be one of {', '.join(mask_prgs)} or absent (default {mask_prgs[0]}), "
            f"got {spec['mask_prg']!r}"
        )
    least = threshold if threshold is not None else default_threshold(len(sites), neighbours)
    most = maximum_threshold(len(sites), neighbours)
    if least > most:
        raise ConfigurationError(
            f"job spec: threshold {least} for {len(sites)} sites with num_neighbours {neighbours}; at most {most} "
            "(t <= num_neighbours, so that one dropout cannot halt a round); raise num_neighbours or lower the threshold"
        )
    return RoundOptions(name, tuple(sorted(sites)), threshold, neighbours)
