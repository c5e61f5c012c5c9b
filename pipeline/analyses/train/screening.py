"""Phase ``screen`` of a training job: keep the variants most associated with the target.

Only with ``features: {screen_top: K}``. One secure sum (Z_2^64): per candidate
variant, the sums over every site's training split of x, x², x·y, y, y² and the number
of observed calls (:func:`pipeline.models.features.screening_statistics`, streamed over
the genotype chunks, so the candidates can be every variant of the dataset). The
coordinator keeps the K variants with the largest squared correlation with the target
(sure independence screening, Fan & Lv 2008): the marginal association a GWAS would
publish.
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
from pipeline.analyses.sum_checks import check_moments
from pipeline.analyses.train.declarations import LAYOUT_HINT, real
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.site_data import refuse_below_k, site_data
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Declaration, Layout, Ring, plan_layout
from pipeline.models.features import screening_scores, screening_statistics

__all__ = ["SCREENING", "Screening", "ScreeningState", "ScreeningSummary"]


@dataclass(frozen=True)
class ScreeningSummary:
    """What the screening published: candidates, variants kept and the weakest kept r²."""

    candidates: int
    selected: int
    min_r2_selected: float | None

    def to_json(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "selected": self.selected, "min_r2_selected": self.min_r2_selected}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScreeningSummary:
        r2 = data["min_r2_selected"]
        return cls(int(data["candidates"]), int(data["selected"]), None if r2 is None else float(r2))


@dataclass(frozen=True)
class ScreeningState:
    """The screening phase's state.

    Attributes:
        plan: the job's plan.
        num_participants: sites invited (the bit budget is sized for all of them).
        candidates: the variants screened.
        chosen: the variants kept (candidate order); ``None`` before the round ends.
        summary: what the screening published; ``None`` before the round ends.
    """

    plan: TrainingPlan
    num_participants: int
    candidates: tuple[str, ...]
    chosen: tuple[str, ...] | None = None
    summary: ScreeningSummary | None = None

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "num_participants": self.num_participants, "candidates": list(self.candidates),
                "chosen": None if self.chosen is None else list(self.chosen),
                "summary": None if self.summary is None else self.summary.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScreeningState:
        chosen, summary = data["chosen"], data["summary"]
        return cls(TrainingPlan.from_json(data["plan"]), int(data["num_participants"]), tuple(str(v) for v in data["candidates"]),
                   None if chosen is None else tuple(str(v) for v in chosen),
                   None if summary is None else ScreeningSummary.from_json(summary))

    def handover(self) -> dict[str, Any]:
        """What the later phases need: the plan, the variants kept and the screening's summary."""
        return {"plan": self.plan.to_json(), "variant_ids": list(self.chosen or ()),
                "screening": None if self.summary is None else self.summary.to_json()}


class Screening(Analysis[ScreeningState]):
    """Marginal association screening of the candidate variants (see the module docstring)."""

    name = "train.screen"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> ScreeningState:
        """``spec``: the phase spec of the training job (``plan``, ``variant_ids``: the candidates)."""
        return ScreeningState(TrainingPlan.from_json(spec["plan"]), len(participants), tuple(spec["variant_ids"]))

    def state_from_json(self, data: Mapping[str, Any]) -> ScreeningState:
        return ScreeningState.from_json(data)

    def layout(self, state: ScreeningState, round_index: int) -> Layout:
        """Five real sums and a count per candidate, in Z_2^64."""
        plan = state.plan
        v = len(state.candidates)
        n_max = float(plan.max_samples_per_site)
        y_bound = 1.0 if plan.task == "binary" else plan.max_abs_value
        fields: list[Declaration] = [
            real("x_sum", (v,), 2 * n_max), real("x_sumsq", (v,), 4 * n_max), real("xy_sum", (v,), 2 * n_max * y_bound),
            real("y_sum", (v,), n_max * y_bound), real("y_sumsq", (v,), n_max * y_bound**2), Count("count", (v,), n_max),
        ]
        return plan_layout(fields, state.num_participants, rings=(Ring.R64,), hint=LAYOUT_HINT)

    def site_step(self, state: ScreeningState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's screening sums over its training split.

        Raises:
            PolicyRefusal: fewer usable samples than the site's k (``too-few-samples``).
            PhenotypeError: the target or a covariate is missing from the samples table.
        """
        plan = state.plan
        usable = int(site_data(dataset, plan.feature_spec(()), site.cache, max_abs_value=plan.max_abs_value).features.shape[0])
        refuse_below_k(site, usable, plan)
        return screening_statistics(dataset, plan.feature_spec(state.candidates))

    def coordinator_step(
        self, state: ScreeningState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[ScreeningState]:
        """Keeps the ``screen_top`` candidates with the largest r² (and r² > 0), in candidate order.

        Raises:
            ProtocolError: moments no honest sites give: a negative variance of a dosage
                or of the target, or dosages whose squares exceed 4 per call.
        """
        layout = self.layout(state, round_index)
        target_bound = 1.0 if state.plan.task == "binary" else None  # sites check max_abs_value from the moments on
        for sums, squares, bound in (("x_sum", "x_sumsq", 2.0), ("y_sum", "y_sumsq", target_bound)):
            check_moments("train.screen", layout, total, num_sites, count="count", sums=sums, squares=squares, bound=bound,
                          labels=state.candidates, noun="variant")
        scores = screening_scores(total)
        top = state.plan.features.screen_top
        assert top is not None  # the phase runs only with screen_top
        order = np.argsort(-scores, kind="stable")[:top]
        chosen = np.sort(order[scores[order] > 0])
        summary = ScreeningSummary(len(state.candidates), int(chosen.size), float(scores[chosen].min()) if chosen.size else None)
        new = dataclasses.replace(state, chosen=tuple(state.candidates[i] for i in chosen), summary=summary)
        return new, True, Result(summary={})


SCREENING = Screening()
