"""Differential privacy of a training job: one (epsilon, delta) for all its noisy rounds, split explicitly.

A training spec with a ``privacy`` block (:mod:`pipeline.privacy.terms`) makes the whole
job (epsilon, delta)-differentially private for each person: the unit is one person, all
of their values in every round of the job. The job's zCDP budget
``rho_for_epsilon(epsilon, delta)`` is split over the rounds that release person-level
sums, in the fixed fractions :data:`SHARES` (normalized over the phases that run; with
``rounds: 0`` the moments and the evaluation take half each):

* **moments** (one round, 10%): per feature the sum, sum of squares and count of the
  training values, and the training and held-out counts (and, for a quantitative
  target, its sum and sum of squares); each value in units of its per-person bound (2
  for a dosage, ``max_abs_value`` for a covariate or target, squared for a sum of
  squares, 1 for a count), so one training person moves each of the ``k = 3p + 1 (+ 2)``
  values by at most 1 unit: ``l2 = sqrt(k)``, ``l1 = k``; a held-out person moves one;
* **train** (T rounds, 80% together, ``0.8 / T`` each): the sum over the site's whole
  training split of per-example gradients clipped to L2 norm ``clip_norm``
  (:func:`pipeline.models.local_update.clipped_gradient_sum_fn`), in units of
  ``clip_norm``: ``l2 = 1``, ``l1 = sqrt(P)`` for P parameters. No sample count and no
  learning curve are released (the coordinator divides by the moments' noisy count);
* **evaluate** (one round, 10%): the final model's per-class score histograms and the
  number of correct calls on the held-out splits (one person: one bin and at most one
  correct call, ``l2 = sqrt(2)``, ``l1 = 2``); for a quantitative target the squared
  error, the standardized target's sum and sum of squares and the count, each in units
  of its bound (5 standard deviations, squared for squares; ``l2 = 2``, ``l1 = 4``). No
  per-site slot.

Each person's values are truncated toward zero to integers of ``2^-scale_bits`` units
(:data:`REAL_SCALE_BITS` fractional bits; counts need none) and the site sums these
integers exactly, so one person's change of a release, in ring units, is exactly within
``l2 * 2^scale_bits`` and ``l1 * 2^scale_bits``: no rounding and no floating-point error
enters the sensitivity. Each site adds discrete Gaussian noise of the round's sigma,
drawn from :func:`~pipeline.privacy.secret_generator`, to those integers before the
runtime masks them; the fields are integers with room for the noise
(:func:`~pipeline.privacy.noise_headroom`). Sigma is calibrated on the ``honest_sites``
of the terms so that the round's zCDP ``rho`` is at most its share
(:func:`sigma_for_rho`), and the rounds' ``rho`` add up to at most the job's budget.
Every party derives a round's noise from the public plan and state
(:class:`NoisyRelease`), so no state a coordinator hands out can shrink it.

Sampling: none. Every round uses every training sample of every site (full batch), so
no privacy amplification by subsampling is claimed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analyses.train.plan import TrainingPlan
from pipeline.encoding import Integer, Layout, Ring, plan_layout
from pipeline.errors import ConfigurationError
from pipeline.privacy import (
    PrivacyTerms,
    Sensitivity,
    Spend,
    distributed_discrete_gaussian_rho,
    noise_headroom,
    rho_for_epsilon,
    sample_discrete_gaussian,
    sigma_for_rho,
    zcdp_to_approx_dp,
)

__all__ = [
    "REAL_SCALE_BITS",
    "SAMPLING",
    "SHARES",
    "NoisyRelease",
    "evaluation_release",
    "gradient_release",
    "job_rho",
    "moments_release",
    "phase_shares",
    "privacy_summary",
]

SHARES = {"moments": 0.10, "train": 0.80, "evaluate": 0.10}
"""The fractions of a job's zCDP budget spent by each phase (the train phase's is split evenly over its rounds)."""
REAL_SCALE_BITS = 16
"""Fractional bits of a person's real value in its units: truncation moves a sum by less than 2^-16 units per person."""
SAMPLING = ("none: every round uses every training sample of every site (full batch, one gradient step per round), "
            "so no amplification by subsampling is claimed")
_HINT = "lower the job's max_samples_per_site"


def job_rho(terms: PrivacyTerms) -> float:
    """The job's zCDP budget: the largest ``rho`` that converts to the terms' (epsilon, delta)."""
    return rho_for_epsilon(terms.epsilon, terms.delta)


def phase_shares(plan: TrainingPlan) -> dict[str, float]:
    """The fraction of the budget of each noisy phase that runs (:data:`SHARES`, normalized)."""
    running = {name: share for name, share in SHARES.items() if name != "train" or plan.rounds > 0}
    total = sum(running.values())
    return {name: share / total for name, share in running.items()}


@dataclass(frozen=True)
class NoisyRelease:
    """One round's person-level sums under differential privacy: integers in ring units, plus each site's noise.

    Every value is in units of one person's bound and carried as an integer of
    ``2^-scale_bits`` units; one person changes the vector by at most ``l2`` (L2) and
    ``l1`` (L1) units. Derived from the public plan and state at every party.

    Attributes:
        phase: the phase that releases it (``moments``, ``train``, ``evaluate``).
        fields: the fields' names and shapes, in layout order.
        scale_bits: fractional bits of a unit (0 for counts).
        l2, l1: one person's largest change, in units.
        rho: the round's share of the job's budget (the spend's ``rho`` is at most this).
        terms: the job's privacy terms.
        max_samples_per_site: the job's bound of a site's samples (each adds at most 1 unit per value).
    """

    phase: str
    fields: tuple[tuple[str, tuple[int, ...]], ...]
    scale_bits: int
    l2: float
    l1: float
    rho: float
    terms: PrivacyTerms
    max_samples_per_site: int

    @property
    def unit(self) -> int:
        """One unit in ring units: ``2^scale_bits``."""
        return 1 << self.scale_bits

    @property
    def num_values(self) -> int:
        return sum(math.prod(shape) for _, shape in self.fields)

    @property
    def sensitivity(self) -> Sensitivity:
        """One person's largest change in ring units (exact: the sites sum integers)."""
        return Sensitivity(l2=self.l2 * self.unit, l1=self.l1 * self.unit)

    @functools.cached_property
    def spend(self) -> Spend:
        """Each site's sigma (ring units) and what the round costs."""
        sensitivity = self.sensitivity
        honest = self.terms.honest_sites
        sigma = sigma_for_rho(self.rho, sensitivity.l2, sensitivity.l1, honest)
        rho = distributed_discrete_gaussian_rho(sensitivity.l2, sensitivity.l1, sigma, honest)
        return Spend(sigma=sigma, honest_sites=honest, rho=rho, epsilon=zcdp_to_approx_dp(rho, self.terms.delta),
                     delta=self.terms.delta, l2=sensitivity.l2, l1=sensitivity.l1)

    def layout(self, num_sites: int) -> Layout:
        """Integer fields: a site's sum (at most ``max_samples_per_site`` units per value) and room for its noise."""
        room = noise_headroom(self.spend.sigma, self.num_values)
        bound = float(self.max_samples_per_site * self.unit + room)
        return plan_layout([Integer(name, shape, bound) for name, shape in self.fields], num_sites,
                           rings=(Ring.R32, Ring.R64), hint=_HINT)

    def integer_sum(self, per_person: np.ndarray) -> np.ndarray:
        """The exact sum over persons (axis 0) of each person's values, clipped to ±1 unit and truncated to ring units."""
        values = np.clip(np.asarray(per_person, np.float64), -1.0, 1.0) * float(self.unit)
        return np.trunc(values).astype(np.int64).sum(axis=0)

    def noised(self, sums: Mapping[str, np.ndarray], *, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The site's integer sums plus its discrete Gaussian noise (pass :func:`~pipeline.privacy.secret_generator`)."""
        sigma = self.spend.sigma
        out = {}
        for name, shape in self.fields:
            values = np.asarray(sums[name], np.int64).reshape(shape)
            out[name] = values + sample_discrete_gaussian(sigma, shape, rng=rng)
        return out

    def restored(self, total: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoded noisy sums in units (float64)."""
        return {name: np.asarray(total[name], np.float64).reshape(shape) / self.unit for name, shape in self.fields}

    def noise_sd(self, num_sites: int) -> float:
        """The standard deviation (at most) of a summed value's noise, in units, over ``num_sites`` sites."""
        return math.sqrt(num_sites) * self.spend.sigma / self.unit

    def to_json(self, rounds: int = 1) -> dict[str, Any]:
        """What the result reports of this release (``rounds`` releases of it)."""
        spend = self.spend
        return {"rounds": rounds, "rho_per_round": spend.rho, "rho": spend.rho * rounds, "share": self.rho / job_rho(self.terms) * rounds,
                "sigma": spend.sigma, "scale_bits": self.scale_bits, "l2": spend.l2, "l1": spend.l1,
                "values": self.num_values, "fields": [name for name, _ in self.fields]}


def _terms(plan: TrainingPlan) -> PrivacyTerms:
    if plan.privacy is None:
        raise ConfigurationError("train: this job has no privacy block; its rounds add no noise")
    return plan.privacy


def _release(plan: TrainingPlan, phase: str, fields: Sequence[tuple[str, tuple[int, ...]]], scale_bits: int, l2: float,
             l1: float) -> NoisyRelease:
    terms = _terms(plan)
    per_round = phase_shares(plan)[phase] / (plan.rounds if phase == "train" else 1)
    return NoisyRelease(phase, tuple(fields), scale_bits, l2, l1, per_round * job_rho(terms), terms, plan.max_samples_per_site)


@functools.lru_cache(maxsize=64)
def moments_release(plan: TrainingPlan, num_features: int) -> NoisyRelease:
    """The moments round: per feature the sum, sum of squares and count, the split sizes (and the target's moments)."""
    p = num_features
    fields = [("feature_sum", (p,)), ("feature_sumsq", (p,)), ("feature_count", (p,)), ("n_train", (1,)), ("n_holdout", (1,))]
    if plan.task == "quantitative":
        fields += [("target_sum", (1,)), ("target_sumsq", (1,))]
    touched = 3 * p + 1 + (2 if plan.task == "quantitative" else 0)  # a training person; a held-out one moves n_holdout only
    return _release(plan, "moments", fields, REAL_SCALE_BITS, math.sqrt(touched), float(touched))


@functools.lru_cache(maxsize=64)
def gradient_release(plan: TrainingPlan, num_params: int) -> NoisyRelease:
    """A training round: the sum of per-example gradients clipped to ``clip_norm``, in units of ``clip_norm``."""
    return _release(plan, "train", [("gradient_sum", (num_params,))], REAL_SCALE_BITS, 1.0, math.sqrt(num_params))


@functools.lru_cache(maxsize=64)
def evaluation_release(plan: TrainingPlan) -> NoisyRelease:
    """The final evaluation: score histograms and correct calls (binary), or error and target moments (quantitative)."""
    if plan.task == "binary":
        fields = [("hist_case", (plan.bins,)), ("hist_control", (plan.bins,)), ("correct", (1,))]
        return _release(plan, "evaluate", fields, 0, math.sqrt(2.0), 2.0)
    fields = [("sse", (1,)), ("target_sum", (1,)), ("target_sumsq", (1,)), ("count", (1,))]
    return _release(plan, "evaluate", fields, REAL_SCALE_BITS, 2.0, 4.0)


def privacy_summary(plan: TrainingPlan, num_features: int, num_params: int, num_sites: int) -> dict[str, Any]:
    """The result's ``privacy``: the terms, the budget, its split, each release's noise and the total spent."""
    terms = _terms(plan)
    releases = {"moments": moments_release(plan, num_features).to_json()}
    if plan.rounds > 0:
        releases["train"] = gradient_release(plan, num_params).to_json(plan.rounds)
    releases["evaluate"] = evaluation_release(plan).to_json()
    spent = sum(release["rho"] for release in releases.values())
    return {
        "epsilon": terms.epsilon, "delta": terms.delta, "honest_sites": terms.honest_sites,
        "max_colluding": terms.max_colluding, "sites_adding_noise": int(num_sites), "rho_budget": job_rho(terms),
        "rho_spent": spent, "epsilon_spent": zcdp_to_approx_dp(spent, terms.delta), "shares": phase_shares(plan),
        "releases": releases, "clip_norm": plan.clip_norm, "sampling": SAMPLING,
        "mechanism": "distributed discrete Gaussian (zCDP, Kairouz, Liu & Steinke 2021), composed over the job's rounds",
        "unit": "one person: all of their values in every round of the job",
    }
