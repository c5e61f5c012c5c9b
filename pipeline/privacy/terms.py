"""A job's privacy terms and the noise and spend of one release under them.

A job asks for differential privacy with a ``privacy`` block in its spec::

    privacy:
      epsilon: 3.0          # the release's (epsilon, delta) target, one person's data added or removed
      delta: 1.0e-6
      max_colluding: 0      # sites that may share their noise with the coordinator
      honest_sites: 2       # filled in by the coordinator: threshold - max_colluding

A revealed sum holds at least ``threshold`` sites' contributions; a site can subtract
its own noise, and so can ``max_colluding`` sites working with the coordinator. So the
noise is calibrated on ``honest_sites = threshold - max_colluding`` sites alone
(:func:`~pipeline.privacy.accountant.calibrate_sigma`): every site adds noise of that
sigma, and any ``honest_sites`` of them make the target. Dropouts do not weaken it, since
a sum with fewer than ``threshold`` sites is never revealed. Each site checks these terms
against its own policy before it contributes.

:func:`release_noise` gives the per-site sigma of one release, and :class:`Spend` what it
costs in zCDP (``rho``, which adds up over releases) and in (epsilon, delta).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.privacy.accountant import (
    Sensitivity,
    calibrate_sigma,
    distributed_discrete_gaussian_rho,
    zcdp_to_approx_dp,
)
from pipeline.privacy.discrete_gaussian import tail_bound

__all__ = ["WRAP_PROBABILITY", "PrivacyTerms", "Spend", "noise_headroom", "privacy_terms", "release_noise"]

WRAP_PROBABILITY = 2.0**-40
"""Bound on the probability that one release's summed noise leaves the room declared for it (and would wrap)."""

_KEYS = ("epsilon", "delta", "max_colluding", "honest_sites")


@dataclass(frozen=True)
class PrivacyTerms:
    """What a job asks for: ``(epsilon, delta)`` per release, with ``honest_sites`` sites' noise in every sum."""

    epsilon: float
    delta: float
    max_colluding: int = 0
    honest_sites: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrivacyTerms:
        return privacy_terms(data)


def privacy_terms(value: Any) -> PrivacyTerms:
    """Reads a spec's ``privacy`` block (see the module docstring).

    Raises:
        ValueError: what was expected (the spec parser names the key).
    """
    if not isinstance(value, Mapping) or set(value) - set(_KEYS) or not {"epsilon", "delta"} <= set(value):
        raise ValueError(f"a mapping with epsilon and delta (and optionally {', '.join(_KEYS[2:])})")

    def number(key: str, low: float, high: float) -> float:
        item = value[key]
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or not low < item <= high:
            raise ValueError(f"privacy.{key} in ({low}, {high}], got {item!r}")
        return float(item)

    def whole(key: str, low: int, default: int) -> int:
        item = value.get(key, default)
        if isinstance(item, bool) or not isinstance(item, int) or item < low:
            raise ValueError(f"privacy.{key} an integer >= {low}, got {item!r}")
        return int(item)

    return PrivacyTerms(epsilon=number("epsilon", 0.0, 100.0), delta=number("delta", 0.0, 0.01),
                        max_colluding=whole("max_colluding", 0, 0), honest_sites=whole("honest_sites", 1, 1))


@dataclass(frozen=True)
class Spend:
    """What one release costs: the noise each site adds, and the privacy it gives.

    Attributes:
        sigma: each site's discrete Gaussian parameter (in the release's integer units).
        honest_sites: sites whose noise the guarantee counts on.
        rho: zCDP of the release (adds up over releases).
        epsilon, delta: the (epsilon, delta)-DP of this release alone.
        l2, l1: one person's largest change of the released vector.
    """

    sigma: float
    honest_sites: int
    rho: float
    epsilon: float
    delta: float
    l2: float
    l1: float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mechanism": "distributed discrete Gaussian (zCDP, Kairouz, Liu & Steinke 2021)",
                "unit": "one person, all of their values in the release"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spend:
        return cls(**{key: data[key] for key in ("sigma", "honest_sites", "rho", "epsilon", "delta", "l2", "l1")})


def release_noise(terms: PrivacyTerms, sensitivity: Sensitivity) -> Spend:
    """The per-site sigma that makes ``terms`` for one release of ``sensitivity``, and its spend.

    Raises:
        ConfigurationError: the target cannot be met (sigma beyond what the sampler draws).
    """
    sigma = calibrate_sigma(terms.epsilon, terms.delta, sensitivity.l2, sensitivity.l1, terms.honest_sites)
    rho = distributed_discrete_gaussian_rho(sensitivity.l2, sensitivity.l1, sigma, terms.honest_sites)
    return Spend(sigma=sigma, honest_sites=terms.honest_sites, rho=rho, epsilon=zcdp_to_approx_dp(rho, terms.delta),
                 delta=terms.delta, l2=sensitivity.l2, l1=sensitivity.l1)


def noise_headroom(sigma: float, num_values: int) -> int:
    """How far one site's noise may take any of ``num_values`` values: exceeded with probability <= :data:`WRAP_PROBABILITY`.

    A field declared with this much room on each side (per site, so ``n`` sites' sum has
    ``n`` times as much, more than the ``sqrt(n)`` the summed noise needs) is decoded
    without wrapping except with that probability (union bound over the values).
    """
    if num_values < 1:
        raise ConfigurationError(f"num_values must be positive, got {num_values}")
    return tail_bound(sigma, WRAP_PROBABILITY / num_values)
