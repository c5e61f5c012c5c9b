"""Phase ``moments`` of a training job: the federated standardization of the features.

One secure sum (Z_2^64): per feature the number of observed values, their sum and sum
of squares over each site's training split, the target's sum and sum of squares, and
the split sizes (:func:`pipeline.models.features.moment_statistics`). Covariates and a
quantitative target are clipped to ``±max_abs_value`` at the site, so each sum is
within its layout bound (``max_samples_per_site`` x ``max_abs_value``, or x 2 for a
dosage). From the sums
every site gets the same means and standard deviations
(:func:`pipeline.models.features.standardization`), and the job its sample counts.

With differential privacy (:mod:`.privacy`) the same moments are released noisy: each
person's values in units of their bound (2 for a dosage, ``max_abs_value`` for a
covariate or target, squared for a sum of squares), summed as integers, plus each site's
discrete Gaussian noise; a binary target's moments, which the standardization does not
use, are left out. The coordinator standardizes from the noisy sums with every variance
at least its own noise level (:func:`pipeline.models.features.noisy_standardization`), and
the noisy, rounded split sizes become the job's public sample counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analyses.protocol import (
    Analysis,
    Result,
    SiteContext,
    StepResult,
)
from pipeline.analyses.train.declarations import LAYOUT_HINT, check_samples, real
from pipeline.analyses.protocol import JsonState
from pipeline.analyses.sum_checks import check_moments, refuse_impossible
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.privacy import NoisyRelease, moments_release
from pipeline.analyses.train.site_data import checked_site_data
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Declaration, Layout, Ring, plan_layout
from pipeline.errors import InputError
from pipeline.models.features import (
    SiteData,
    Standardization,
    moment_statistics,
    noisy_standardization,
    standardization,
)
from pipeline.privacy import Spend, secret_generator

__all__ = ["MOMENTS", "Moments", "MomentsState"]


@dataclass(frozen=True, eq=False)
class MomentsState(JsonState):
    """The moments phase's state.

    Attributes:
        plan: the job's plan.
        num_participants: sites invited (the bit budget is sized for all of them).
        variant_ids: the variant features, in column order (covariates follow).
        scaling: the federated standardization; ``None`` before the round ends.
        n_train: training samples over the included sites (after the round).
        n_holdout: held-out samples over the included sites (after the round).
    """

    plan: TrainingPlan
    num_participants: int
    variant_ids: tuple[str, ...]
    scaling: Standardization | None = None
    n_train: int = 0
    n_holdout: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "num_participants": self.num_participants, "variant_ids": list(self.variant_ids),
                "scaling": None if self.scaling is None else self.scaling.to_json(), "n_train": self.n_train,
                "n_holdout": self.n_holdout}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MomentsState:
        scaling = data["scaling"]
        return cls(TrainingPlan.from_json(data["plan"]), int(data["num_participants"]), tuple(str(v) for v in data["variant_ids"]),
                   None if scaling is None else Standardization.from_json(scaling), int(data["n_train"]), int(data["n_holdout"]))

    @property
    def noise(self) -> NoisyRelease | None:
        """The round's noisy release under the job's privacy terms (``None``: exact). Derived, never stored."""
        if self.plan.privacy is None:
            return None
        return moments_release(self.plan, self.plan.num_features(self.variant_ids))

    def handover(self) -> dict[str, Any]:
        """What the later phases need: the plan, the features, the standardization and the sample counts."""
        assert self.scaling is not None, "the moments phase hands over once its round has ended"
        return {"plan": self.plan.to_json(), "variant_ids": list(self.variant_ids), "standardization": self.scaling.to_json(),
                "n_train": self.n_train, "n_holdout": self.n_holdout}


def _check_sums(state: MomentsState, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int) -> None:
    """Refuses moments no honest sites give, so no impossible mean or scale reaches every site.

    Each site has at most ``max_samples_per_site`` samples, split into training and
    held-out ones; a feature is observed in at most every training sample; a variance
    is never negative; a value's magnitude is at most the layout's bound (``max_abs_value``,
    or 2 for a dosage), a binary target's at most 1.

    Raises:
        ProtocolError: naming the field, the feature and the value.
    """
    plan = state.plan
    where = "train.moments"
    n_train = int(np.asarray(total["n_train"]).reshape(-1)[0])
    check_samples(where, plan, "n_train + n_holdout", n_train + int(np.asarray(total["n_holdout"]).reshape(-1)[0]), num_sites)
    names = plan.feature_spec(state.variant_ids).names
    count = np.asarray(total["feature_count"])
    refuse_impossible(where, "feature_count", count, count > n_train, f"at most n_train = {n_train}", labels=names,
                      noun="feature")
    check_moments(where, layout, total, num_sites, count="feature_count", sums="feature_sum", squares="feature_sumsq",
                  bound=max(2.0, plan.max_abs_value), labels=names, noun="feature")
    check_moments(where, layout, total, num_sites, count="n_train", sums="target_sum", squares="target_sumsq",
                  bound=1.0 if plan.task == "binary" else plan.max_abs_value)


def _units(plan: TrainingPlan, variant_ids: tuple[str, ...]) -> np.ndarray:
    """(features,) the largest magnitude of one value: 2 for a dosage, ``max_abs_value`` for a (clipped) covariate."""
    return np.array([2.0] * len(variant_ids) + [plan.max_abs_value] * len(plan.covariates))


def _private_sums(state: MomentsState, release: NoisyRelease, data: SiteData) -> dict[str, np.ndarray]:
    """The site's moments as exact integer sums of each training person's values in units of their bounds."""
    plan = state.plan
    units = _units(plan, state.variant_ids)
    train = data.train
    features = data.features[train]
    observed = ~np.isnan(features)
    filled = np.where(observed, features, 0.0)
    people = features.shape[0]
    sums = {
        "feature_sum": release.integer_sum(filled / units), "feature_sumsq": release.integer_sum(np.square(filled / units)),
        "feature_count": release.integer_sum(observed.astype(np.float64)), "n_train": release.integer_sum(np.ones((people, 1))),
        "n_holdout": release.integer_sum(np.ones((int(data.holdout.sum()), 1))),
    }
    if plan.task == "quantitative":
        target = data.target[train] / plan.max_abs_value
        sums["target_sum"] = release.integer_sum(target[:, None])
        sums["target_sumsq"] = release.integer_sum(np.square(target)[:, None])
    return sums


def _private_step(state: MomentsState, release: NoisyRelease, total: Mapping[str, np.ndarray],
                  num_sites: int) -> MomentsState:
    """The standardization and the sample counts from the noisy sums (post-processing only)."""
    plan = state.plan
    units = _units(plan, state.variant_ids)
    noisy = release.restored(total)
    sd = release.noise_sd(num_sites)
    target = plan.max_abs_value
    sums = {"feature_sum": noisy["feature_sum"] * units, "feature_sumsq": noisy["feature_sumsq"] * units**2,
            "feature_count": noisy["feature_count"], "n_train": noisy["n_train"]}
    noise_sd: dict[str, float | np.ndarray] = {"feature_sum": sd * units, "feature_sumsq": sd * units**2}
    if plan.task == "quantitative":
        sums |= {"target_sum": noisy["target_sum"] * target, "target_sumsq": noisy["target_sumsq"] * target**2}
        noise_sd |= {"target_sum": sd * target, "target_sumsq": sd * target**2}
    scaling = noisy_standardization(sums, task=plan.task, bound=units, target_bound=target, noise_sd=noise_sd)
    n_train = round(float(noisy["n_train"][0]))
    n_holdout = max(round(float(noisy["n_holdout"][0])), 0)
    if n_train < 2:
        raise InputError(f"train: about {n_train} training samples across the sites (noisy count); check the target column "
                         f"{plan.target!r}")
    return dataclasses.replace(state, scaling=scaling, n_train=n_train, n_holdout=n_holdout)


class Moments(Analysis[MomentsState]):
    """Feature moments and sample counts (see the module docstring)."""

    name = "train.moments"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> MomentsState:
        """``spec``: the phase spec of the training job (``plan``, ``variant_ids``)."""
        return MomentsState(TrainingPlan.from_json(spec["plan"]), len(participants), tuple(spec["variant_ids"]))

    def state_from_json(self, data: Mapping[str, Any]) -> MomentsState:
        return MomentsState.from_json(data)

    def layout(self, state: MomentsState, round_index: int) -> Layout:
        """Real sums bounded by ``max_samples_per_site`` times ``max_abs_value`` (or 2, a dosage), exact counts; Z_2^64.

        With privacy: the noisy release's integer fields, with room for the noise.
        """
        noise = state.noise
        if noise is not None:
            return noise.layout(state.num_participants)
        plan = state.plan
        p = plan.num_features(state.variant_ids)
        n_max = float(plan.max_samples_per_site)
        bound = max(2.0, plan.max_abs_value)
        target_bound = 1.0 if plan.task == "binary" else plan.max_abs_value
        fields: list[Declaration] = [
            real("feature_sum", (p,), n_max * bound), real("feature_sumsq", (p,), n_max * bound**2),
            real("target_sum", (1,), n_max * target_bound), real("target_sumsq", (1,), n_max * target_bound**2),
            Count("feature_count", (p,), n_max), Count("n_train", (1,), n_max), Count("n_holdout", (1,), n_max),
        ]
        return plan_layout(fields, state.num_participants, rings=(Ring.R64,), hint=LAYOUT_HINT)

    def site_step(self, state: MomentsState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's moments over its training split.

        Covariate and quantitative target values beyond the job's ``max_abs_value`` were
        clipped to it when the site read its data (:func:`~.site_data.site_data`; the count
        per column is in the site's log only), so every sum stays within the layout's
        bounds and no value leads to a refusal an analyst could bisect.

        Raises:
            PolicyRefusal: fewer usable samples than the site's k (``too-few-samples``), or
                more than the job allows (``policy``).
        """
        data = checked_site_data(state.plan, state.variant_ids, dataset, site)
        noise = state.noise
        if noise is not None:
            return noise.noised(_private_sums(state, noise, data), rng=secret_generator())
        return moment_statistics(data)

    def coordinator_step(
        self, state: MomentsState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[MomentsState]:
        """The standardization and the sample counts.

        Raises:
            ProtocolError: sums no honest sites can give (:func:`_check_sums`).
            InputError: fewer than 2 training samples over the sites.
        """
        plan = state.plan
        noise = state.noise
        if noise is not None:  # noisy sums: only the layout's bounds were checked (relations between them need not hold)
            return _private_step(state, noise, total, num_sites), True, Result(summary={})
        _check_sums(state, self.layout(state, round_index), total, num_sites)
        scaling = standardization(total, task=plan.task)
        n_train = int(np.asarray(total["n_train"]).reshape(-1)[0])
        n_holdout = int(np.asarray(total["n_holdout"]).reshape(-1)[0])
        if n_train < 2:
            raise InputError(f"train: only {n_train} training samples across the sites; check the target column {plan.target!r}")
        return dataclasses.replace(state, scaling=scaling, n_train=n_train, n_holdout=n_holdout), True, Result(summary={})

    def privacy_spend(self, state: MomentsState, round_index: int) -> Spend | None:
        """The noisy moments' noise and cost, when the job asked for differential privacy."""
        noise = state.noise
        return None if noise is None else noise.spend


MOMENTS = Moments()
