"""Phase ``moments`` of a training job: the federated standardization of the features.

One secure sum (Z_2^64): per feature the number of observed values, their sum and sum
of squares over each site's training split, the target's sum and sum of squares, and
the split sizes (:func:`pipeline.models.features.moment_statistics`). Covariates and a
quantitative target are clipped to ``±max_abs_value`` at the site, so each sum is
within its layout bound (``max_samples_per_site`` x ``max_abs_value``, or x 2 for a
dosage). From the sums
every site gets the same means and standard deviations
(:func:`pipeline.models.features.standardization`), and the job its sample counts.
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
from pipeline.analyses.train.site_data import checked_site_data
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Declaration, Layout, Ring, plan_layout
from pipeline.errors import InputError
from pipeline.models.features import Standardization, moment_statistics, standardization

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


class Moments(Analysis[MomentsState]):
    """Feature moments and sample counts (see the module docstring)."""

    name = "train.moments"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> MomentsState:
        """``spec``: the phase spec of the training job (``plan``, ``variant_ids``)."""
        return MomentsState(TrainingPlan.from_json(spec["plan"]), len(participants), tuple(spec["variant_ids"]))

    def state_from_json(self, data: Mapping[str, Any]) -> MomentsState:
        return MomentsState.from_json(data)

    def layout(self, state: MomentsState, round_index: int) -> Layout:
        """Real sums bounded by ``max_samples_per_site`` times ``max_abs_value`` (or 2, a dosage), exact counts; Z_2^64."""
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
        _check_sums(state, self.layout(state, round_index), total, num_sites)
        scaling = standardization(total, task=plan.task)
        n_train = int(np.asarray(total["n_train"]).reshape(-1)[0])
        n_holdout = int(np.asarray(total["n_holdout"]).reshape(-1)[0])
        if n_train < 2:
            raise InputError(f"train: only {n_train} training samples across the sites; check the target column {plan.target!r}")
        return dataclasses.replace(state, scaling=scaling, n_train=n_train, n_holdout=n_holdout), True, Result(summary={})


MOMENTS = Moments()
