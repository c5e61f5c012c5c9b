"""Refusing decoded sums that no set of honest sites can give.

The coordinator sees only totals, so it cannot tell which site lied, but it can tell a
total that no honest sites produce: a count above the samples that exist, a negative
variance, a loss below zero. Publishing one would publish a lie, so the round fails with
:class:`~pipeline.errors.ProtocolError` naming the field, the value and what was
expected (:func:`refuse_impossible`). :meth:`~pipeline.encoding.Layout.decode` already
refuses a sum outside the declared per-site bounds; these checks are the relations
between fields that the bounds alone do not see. Sums of real values are judged with the
slack that fixed-point rounding leaves (:func:`rounding_slack`) and
:data:`RELATIVE_TOLERANCE` for float64 arithmetic, so an honest sum always passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.encoding import Layout
from pipeline.errors import ProtocolError

__all__ = ["RELATIVE_TOLERANCE", "refuse_impossible", "rounding_slack", "check_real_sum", "check_moments"]

RELATIVE_TOLERANCE = 1e-8
"""Float64 error allowed, relative to the values compared (a site's sum of up to ~10^7 terms errs by less)."""


def _show(value: Any) -> str:
    value = value.item() if isinstance(value, np.generic) else value
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def refuse_impossible(where: str, field: str, value: ArrayLike, impossible: ArrayLike, expected: str, *,
                      limit: ArrayLike | None = None, labels: Sequence[str] | None = None, noun: str = "index") -> None:
    """Raises :class:`ProtocolError` at the first entry of ``field`` that ``impossible`` marks.

    Args:
        where: the analysis or phase (``gwas``, ``train.moments``).
        field: the summed field, or an expression of fields, that is impossible.
        value: its value per entry (broadcast to the shape of ``impossible``).
        impossible: where no honest sites give that value.
        expected: what honest sites give; ``{limit}`` in it becomes the entry's ``limit``.
        labels: the entries' names (variant IDs, feature names); else their index is given.
        noun: what an entry is (``variant``, ``feature``).
    """
    impossible = np.asarray(impossible, bool)
    if not impossible.any():
        return
    first = int(np.flatnonzero(impossible)[0])

    def entry(array: ArrayLike) -> str:
        return _show(np.broadcast_to(np.asarray(array), impossible.shape).reshape(-1)[first])

    named = f"{noun} {labels[first]}: " if labels is not None else (f"{noun} {first}: " if impossible.size > 1 else "")
    count = f" ({int(impossible.sum())} of {impossible.size} impossible)" if impossible.size > 1 else ""
    raise ProtocolError(
        f"{where}: {named}the summed {field} is {entry(value)}, expected "
        f"{expected.replace('{limit}', entry(limit)) if limit is not None else expected}{count}; "
        "a site sent values beyond its own data, so nothing is published"
    )


def rounding_slack(layout: Layout, name: str, num_sites: int) -> float:
    """How far fixed-point rounding may move the decoded sum of field ``name``: one unit of 2^-scale_bits per site."""
    return num_sites * 2.0 ** -layout.field(name).encoding.scale_bits


def check_real_sum(where: str, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int, name: str, *,
                   at_most: ArrayLike, expected: str) -> None:
    """Refuses a sum of non-negative real values (losses, squared errors) below 0 or above ``at_most``, beyond rounding.

    Args:
        expected: the upper limit in words (``"n x 50"``); its value is added.
    """
    value = np.asarray(total[name], np.float64)
    slack = rounding_slack(layout, name, num_sites)
    most = np.asarray(at_most, np.float64)
    refuse_impossible(where, name, value, value < -slack, "at least 0")
    refuse_impossible(where, name, value, value - slack > most * (1 + RELATIVE_TOLERANCE), f"at most {expected} = {{limit}}",
                      limit=most)


def check_moments(where: str, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int, *, count: str, sums: str,
                  squares: str, bound: float | None = None, labels: Sequence[str] | None = None, noun: str = "index") -> None:
    """Refuses a sum and a sum of squares that no ``count`` real values of magnitude at most ``bound`` give.

    Over n values, 0 <= sum of squares <= n x bound^2 and sum^2 <= n x sum of squares
    (the variance is not negative); each side first gets its rounding slack.

    Args:
        count, sums, squares: the fields of the number of values, their sum and their sum of squares.
        bound: the largest magnitude of one value; ``None`` where none is known.
    """
    n = np.asarray(total[count], np.float64)
    s1 = np.asarray(total[sums], np.float64)
    s2 = np.asarray(total[squares], np.float64)
    r1, r2 = rounding_slack(layout, sums, num_sites), rounding_slack(layout, squares, num_sites)
    refuse_impossible(where, squares, s2, s2 < -r2, "at least 0", labels=labels, noun=noun)
    if bound is not None:
        most = n * bound**2
        refuse_impossible(where, squares, s2, s2 - r2 > most * (1 + RELATIVE_TOLERANCE),
                          f"at most {count} x {bound:g}^2 = {{limit}}", limit=most, labels=labels, noun=noun)
    shrunk, grown = np.maximum(np.abs(s1) - r1, 0.0) ** 2, n * (s2 + r2)
    refuse_impossible(where, f"{sums}^2", s1**2, shrunk - grown > RELATIVE_TOLERANCE * (s1**2 + np.abs(n * s2)),
                      f"at most {count} x {squares} = {{limit}}, as a variance is never negative", limit=n * s2, labels=labels,
                      noun=noun)
