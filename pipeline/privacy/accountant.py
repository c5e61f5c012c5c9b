"""Privacy accounting for discrete Gaussian noise added by the sites under secure aggregation.

Accounting is in zero-concentrated DP (zCDP, Bun & Steinke 2016): a release is
``rho``-zCDP when the Rényi divergence of every order ``alpha > 1`` between its output
distributions on neighbouring inputs is at most ``rho * alpha``. zCDP composes by adding
``rho`` (:func:`compose_zcdp`) and converts to (epsilon, delta)-DP at the end
(:func:`zcdp_to_approx_dp`).

A site can subtract its own noise from the sum, and so can sites that collude with the
coordinator; a site that drops out adds none. So a release is calibrated on the noise of
the sites that neither collude nor drop: with a secure-aggregation threshold ``t`` (the sum
is only revealed when at least ``t`` sites contributed) and at most ``c`` colluding sites,
the guaranteed honest contributors are ``t - c`` (:func:`guaranteed_honest_sites`), and
:func:`calibrate_sigma` chooses each site's sigma so that their noise alone meets the
target. The sum of honest sites' discrete Gaussians is not itself a discrete Gaussian;
:func:`distributed_discrete_gaussian_rho` bounds its privacy loss (Kairouz, Liu & Steinke,
ICML 2021).

Neighbouring means one person's data added or removed, *all* of their values in the
release at once: :func:`per_person_sensitivity` gives the norms of that change.

Closed forms only, no accounting library at runtime: dp-accounting has no distributed
discrete Gaussian, and the tests use it as an independent check of the parts it does have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from pipeline.errors import ConfigurationError

MIN_DISTRIBUTED_SIGMA = 0.5
"""Smallest per-site sigma the distributed bound is proven for (KLS21 assume sigma >= 1/2)."""


class Sensitivity(NamedTuple):
    """How far one person can move a released integer vector: its L2 and L1 norms."""

    l2: float
    l1: float


def per_person_sensitivity(max_abs_per_value: float, num_values: int) -> Sensitivity:
    """Norms of the change one person causes to ``num_values`` integer values, each by at most ``max_abs_per_value``.

    For allele counts 0..2 per variant over ``V`` variants a person adds or removes at most
    2 per variant: ``l2 = 2 sqrt(V)``, ``l1 = 2 V``. ``max_abs_per_value`` is the largest
    change of one value: under add/remove the largest ``|value|`` a person contributes,
    under replacement the width of the value range. For real values in fixed point, give it
    in ring units: the clip times ``2^scale_bits``, i.e.
    :attr:`pipeline.encoding.FixedPoint.max_encoded` (rounding can add one unit).

    Raises:
        ConfigurationError: ``max_abs_per_value`` is not positive and finite or
            ``num_values`` is not a positive int.
    """
    bound = _positive(max_abs_per_value, "max_abs_per_value")
    if isinstance(num_values, bool) or not isinstance(num_values, (int, np.integer)) or num_values < 1:
        raise ConfigurationError(f"num_values must be a positive int, got {num_values!r}")
    return Sensitivity(l2=bound * math.sqrt(int(num_values)), l1=bound * int(num_values))


def guaranteed_honest_sites(threshold: int, max_colluding: int) -> int:
    """Sites whose noise is in every revealed sum and unknown to the adversary: ``threshold - max_colluding``.

    A sum is revealed only when at least ``threshold`` sites contributed, and up to
    ``max_colluding`` of them may share their noise with the coordinator.

    Raises:
        ConfigurationError: no site is guaranteed honest, or an argument is not an int.
    """
    for name, value in (("threshold", threshold), ("max_colluding", max_colluding)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    honest = int(threshold) - int(max_colluding)
    if honest < 1:
        raise ConfigurationError(
            f"a threshold of {threshold} with up to {max_colluding} colluding sites guarantees no honest site's noise; "
            "raise the secure-aggregation threshold or assume fewer colluders"
        )
    return honest


def distributed_discrete_gaussian_rho(
    l2_sensitivity: float, l1_sensitivity: float, sigma: float, num_sites: int
) -> float:
    """zCDP ``rho`` of releasing an integer vector plus the sum of ``num_sites`` independent N_Z(0, sigma^2) per value.

    For one site this is the discrete Gaussian mechanism, ``rho = D2^2 / (2 sigma^2)``
    (Canonne, Kamath & Steinke 2020, Theorem 4 per coordinate; Rényi divergences of
    independent coordinates add). For ``n >= 2`` sites, Kairouz, Liu & Steinke (ICML 2021,
    arXiv:2102.06387, Proposition 14, from which their Theorem 1 follows) bound the Rényi
    divergence of order ``alpha >= 1`` of the sum ``Z`` shifted by an integer ``Delta`` by
    the least of::

        alpha D2^2 / (2 n sigma^2) + tau d
        (alpha / 2) (D2^2 / (n sigma^2) + 2 D1 tau / (sqrt(n) sigma) + tau^2 d)
        (alpha / 2) (D2 / (sqrt(n) sigma) + tau sqrt(d))^2

    with ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``, ``D2 >= |Delta|_2``,
    ``D1 >= |Delta|_1``. Coordinates where ``Delta`` is 0 add nothing, so ``d`` is the
    number of coordinates one person changes, at most ``min(D1, D2^2)`` for an integer
    ``Delta``; that is used here, so ``rho`` does not grow with the length of the vector.
    The first bound is not linear in ``alpha``; since ``alpha >= 1``, ``tau d <= alpha tau d``
    makes it ``(D2^2 / (2 n sigma^2) + tau d)``-zCDP. ``rho`` is the least of the three
    slopes. ``tau <= 10 (n - 1) exp(-pi^2 sigma^2)``: about ``5e-4 (n - 1)`` at
    ``sigma = 1``, ``7e-17 (n - 1)`` at ``sigma = 2``; beyond, ``rho`` is the continuous
    Gaussian's ``D2^2 / (2 n sigma^2)``.

    Args:
        l2_sensitivity: ``D2``, in ring units (see :func:`per_person_sensitivity`).
        l1_sensitivity: ``D1``, in ring units.
        sigma: each site's discrete Gaussian parameter; at least 0.5 when ``num_sites >= 2``.
        num_sites: sites whose noise is in the sum and unknown to the adversary.

    Raises:
        ConfigurationError: an argument is invalid, or ``sigma < 0.5`` with several sites.
    """
    l2 = _non_negative(l2_sensitivity, "l2_sensitivity")
    l1 = _non_negative(l1_sensitivity, "l1_sensitivity")
    sigma = _positive(sigma, "sigma")
    n = _sites(num_sites)
    if n == 1:
        return l2 * l2 / (2.0 * sigma * sigma)
    if sigma < MIN_DISTRIBUTED_SIGMA:
        raise ConfigurationError(
            f"sigma={sigma} is below {MIN_DISTRIBUTED_SIGMA}, where the bound for a sum of discrete Gaussians "
            "(Kairouz, Liu & Steinke 2021) is not proven; use sigma >= 0.5 (scale the values up if needed)"
        )
    tau = _tau(sigma, n)
    changed = min(l1, l2 * l2)
    scale = math.sqrt(n) * sigma
    first = l2 * l2 / (2.0 * scale * scale) + tau * changed
    second = 0.5 * ((l2 / scale) ** 2 + 2.0 * l1 * tau / scale + tau * tau * changed)
    third = 0.5 * (l2 / scale + tau * math.sqrt(changed)) ** 2
    return min(first, second, third)


def _tau(sigma: float, num_sites: int) -> float:
    """KLS21's ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1))``: how far the sum is from N_Z(0, n sigma^2)."""
    k = np.arange(1, num_sites, dtype=np.float64)
    return 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma * sigma * k / (k + 1.0))))


def compose_zcdp(rhos: Iterable[float]) -> float:
    """zCDP of running every release in ``rhos`` on the same people: the ``rho`` add.

    Raises:
        ConfigurationError: a ``rho`` is negative or not a number.
    """
    return float(sum(_non_negative(rho, "rho") for rho in rhos))


def zcdp_to_approx_dp(rho: float, delta: float) -> float:
    """The epsilon at which ``rho``-zCDP implies (epsilon, delta)-DP, by the tight conversion.

    Canonne, Kamath & Steinke (2020, Corollary 13)::

        epsilon = inf_{alpha > 1}  rho alpha + log(1 / (alpha delta)) / (alpha - 1) + log(1 - 1/alpha)

    The objective's derivative in ``alpha`` is ``rho - (log(1/delta) - log alpha) / (alpha - 1)^2``,
    which changes sign once, where ``rho (alpha - 1)^2 + log alpha = log(1/delta)``; that
    root is found by bisection in ``x = alpha - 1``, and the objective evaluated there.
    Never larger than the classic ``rho + 2 sqrt(rho log(1/delta))``.

    Raises:
        ConfigurationError: ``rho`` is negative or ``delta`` is not in (0, 1).
    """
    rho = _non_negative(rho, "rho")
    delta = _probability(delta, "delta")
    if rho == 0.0:
        return 0.0
    log_inverse_delta = -math.log(delta)
    root = _bisect_increasing(
        lambda x: rho * x * x + math.log1p(x) - log_inverse_delta, 0.0, math.sqrt(log_inverse_delta / rho)
    )
    x = root
    epsilon = rho * (1.0 + x) + (log_inverse_delta - math.log1p(x)) / x + math.log(x) - math.log1p(x)
    return max(0.0, epsilon)


def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest ``rho`` whose :func:`zcdp_to_approx_dp` at ``delta`` is at most ``epsilon`` (bisection).

    Raises:
        ConfigurationError: ``epsilon`` is not positive and finite or ``delta`` is not in (0, 1).
    """
    epsilon = _positive(epsilon, "epsilon")
    delta = _probability(delta, "delta")
    high = 1.0
    while zcdp_to_approx_dp(high, delta) <= epsilon:
        high *= 2.0
    low = 0.0
    while high - low > 1e-12 * high:
        middle = 0.5 * (low + high)
        if zcdp_to_approx_dp(middle, delta) <= epsilon:
            low = middle
        else:
            high = middle
    return low


def calibrate_sigma(
    epsilon: float,
    delta: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    honest_sites: int,
    *,
    relative_tolerance: float = 1e-3,
) -> float:
    """The smallest per-site sigma (within ``relative_tolerance``, rounded up) at which ``honest_sites`` meet (epsilon, delta).

    Every site adds N_Z(0, sigma^2), but only the noise of the sites that neither drop out
    nor collude protects the release: pass ``honest_sites`` =
    :func:`guaranteed_honest_sites` (``threshold - max_colluding``), never the number of
    sites expected to take part. The noise of the others only adds accuracy loss.

    ``rho`` of :func:`distributed_discrete_gaussian_rho` decreases in sigma; sigma is
    bisected (geometrically) against ``rho_for_epsilon(epsilon, delta)`` until the bracket
    is narrower than ``relative_tolerance``, and the upper end, rounded up to four
    significant digits, is returned, so the result always meets the target. It is at
    least 0.5 (:data:`MIN_DISTRIBUTED_SIGMA`), even where less noise would do.

    Raises:
        ConfigurationError: an argument is invalid.
    """
    _positive(epsilon, "epsilon")
    _probability(delta, "delta")
    return sigma_for_rho(rho_for_epsilon(epsilon, delta), l2_sensitivity, l1_sensitivity, honest_sites,
                         relative_tolerance=relative_tolerance)


def sigma_for_rho(
    rho: float,
    l2_sensitivity: float,
    l1_sensitivity: float,
    honest_sites: int,
    *,
    relative_tolerance: float = 1e-3,
) -> float:
    """The smallest per-site sigma (within ``relative_tolerance``, rounded up) whose release is ``rho``-zCDP.

    :func:`calibrate_sigma` for a target ``rho`` rather than an (epsilon, delta): what a
    round needs when a job's budget is split over several noisy rounds (zCDP adds up).

    Raises:
        ConfigurationError: an argument is invalid.
    """
    target = _positive(rho, "rho")
    l2 = _positive(l2_sensitivity, "l2_sensitivity")
    l1 = _positive(l1_sensitivity, "l1_sensitivity")
    n = _sites(honest_sites, "honest_sites")
    tolerance = _positive(relative_tolerance, "relative_tolerance")

    def meets(sigma: float) -> bool:
        return distributed_discrete_gaussian_rho(l2, l1, sigma, n) <= target

    # rho >= D2^2 / (2 n sigma^2) always, so no sigma below the continuous Gaussian's can do.
    low = max(MIN_DISTRIBUTED_SIGMA, l2 / math.sqrt(2.0 * n * target))
    if meets(_round_up(low)):
        return _round_up(low)
    high = 2.0 * low
    while not meets(high):
        low, high = high, 2.0 * high
    while high / low > 1.0 + tolerance:
        middle = math.sqrt(low * high)
        if meets(middle):
            high = middle
        else:
            low = middle
    return _round_up(high)


def _round_up(value: float, digits: int = 4) -> float:
    """``value`` rounded up to ``digits`` significant digits (never down: more noise is still private)."""
    exponent = math.floor(math.log10(value)) - digits + 1
    units = math.ceil(value / 10.0**exponent)
    rounded = float(f"{units}e{exponent}")  # the float nearest the decimal, not units * 10.0**exponent
    return rounded if rounded >= value else float(f"{units + 1}e{exponent}")


def _bisect_increasing(function: Callable[[float], float], low: float, high: float) -> float:
    """The root of an increasing ``function`` with ``function(low) < 0 <= function(high)``, to float precision."""
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle <= low or middle >= high:
            break
        if function(middle) < 0.0:
            low = middle
        else:
            high = middle
    return high


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")
    return value


def _positive(value: Any, name: str) -> float:
    value = _number(value, name)
    if value <= 0.0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
    return value


def _non_negative(value: Any, name: str) -> float:
    value = _number(value, name)
    if value < 0.0:
        raise ConfigurationError(f"{name} must be non-negative, got {value!r}")
    return value


def _probability(value: Any, name: str) -> float:
    value = _number(value, name)
    if not 0.0 < value < 1.0:
        raise ConfigurationError(f"{name} must be in (0, 1), got {value!r}")
    return value


def _sites(value: Any, name: str = "num_sites") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return int(value)
