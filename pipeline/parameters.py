"""Checking a spec's parameters: one declaration per parameter, one message per mistake.

Job specs (``workflows/*.yaml``) and workflow steps take parameters from YAML, where a
typo or a string in place of a number must fail at once, naming the key, what was
expected and what was given — not three rounds into a federated job. Each parameter is
a :class:`Param`: its default and a *check* that returns the cast value or raises
``ValueError`` saying what was expected ("an integer in [1, 50]"). :func:`parse_params`
checks a whole mapping against a table of them.

The checks are small factories (:func:`integer`, :func:`number`, :func:`choice`,
:func:`boolean`, :func:`names`, :func:`mapping`) so a table reads like the spec it
describes::

    PARAMS = {"k": Param(4, integer(1, 1000)), "maf": Param(0.05, number(0.0, 0.5))}
    parameters = parse_params(spec, PARAMS, where="pca")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigurationError

__all__ = [
    "REQUIRED",
    "Param",
    "parse_params",
    "check_value",
    "integer",
    "number",
    "boolean",
    "choice",
    "names",
    "mapping",
    "optional",
]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a parameter the spec must give."""


@dataclass(frozen=True)
class Param:
    """One parameter: its default (or :data:`REQUIRED`) and a check returning the cast value.

    ``check`` raises ``ValueError`` with what was expected (e.g. "a number in [0, 1]").
    """

    default: Any
    check: Callable[[Any], Any]


def check_value(param: Param, value: Any, *, where: str, name: str) -> Any:
    """``param.check(value)``, with a failure turned into a :class:`ConfigurationError`.

    Raises:
        ConfigurationError: ``"{where}: {name} must be {expected}, got {value!r}"``.
    """
    try:
        return param.check(value)
    except ValueError as error:
        raise ConfigurationError(f"{where}: {name} must be {error}, got {value!r}") from None


def parse_params(spec: Mapping[str, Any], params: Mapping[str, Param], *, where: str,
                 ignore: Iterable[str] = ()) -> dict[str, Any]:
    """Every parameter of ``params`` from ``spec`` (or its default), checked and cast.

    Args:
        spec: the given mapping (a job spec without the runtime's keys, a step's params).
        params: the parameters it may hold.
        where: what the spec belongs to, first in every message (``gwas``, ``pca``).
        ignore: keys that may be present but are not checked here.

    Raises:
        ConfigurationError: an unknown key (listing the known ones), a missing required
            key, or a value that fails its check.
    """
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"{where}: the spec must be a mapping of parameters, got {spec!r}")
    unknown = sorted(set(spec) - set(params) - set(ignore))
    if unknown:
        raise ConfigurationError(f"{where}: unknown spec key(s) {unknown}; expected some of {sorted(params)}")
    out: dict[str, Any] = {}
    for name, param in params.items():
        if name not in spec and param.default is REQUIRED:
            raise ConfigurationError(f"{where}: the spec needs '{name}'")
        out[name] = check_value(param, spec.get(name, param.default), where=where, name=name)
    return out


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def integer(low: int, high: int) -> Callable[[Any], int]:
    """An integer (not a bool, not a float) in ``[low, high]``."""

    def check(value: Any) -> int:
        if not (_is_number(value) and isinstance(value, int) and low <= value <= high):
            raise ValueError(f"an integer in [{low}, {high}]")
        return int(value)

    return check


def number(low: float, high: float) -> Callable[[Any], float]:
    """A finite number in ``[low, high]``, cast to float."""

    def check(value: Any) -> float:
        if not (_is_number(value) and low <= value <= high):
            raise ValueError(f"a number in [{low}, {high}]")
        return float(value)

    return check


def boolean(value: Any) -> bool:
    """``true`` or ``false`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def choice(*choices: str) -> Callable[[Any], str]:
    """One of ``choices``."""

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("one of " + ", ".join(repr(c) for c in choices))
        return str(value)

    return check


def names(value: Any) -> list[str]:
    """A list of distinct non-empty strings (column names, variant IDs)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise ValueError("a list of distinct names")
    return list(value)


def mapping(value: Any) -> dict[str, Any]:
    """A mapping (checked further by its own table)."""
    if not isinstance(value, Mapping):
        raise ValueError("a mapping")
    return dict(value)


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``None`` (absent, or ``null`` in YAML) or a value that passes ``check``."""

    def checked(value: Any) -> Any:
        return None if value is None else check(value)

    return checked
