"""The training job: its five phases, run one after another as one :class:`~pipeline.analyses.phases.Phased` job.

Each phase is an ordinary analysis; what one phase learns reaches the next through the
combinator's ``carried`` JSON, under these keys:

* ``plan``: the :class:`~pipeline.analyses.train.plan.TrainingPlan` (parsed from the
  job spec when the job starts; every phase hands it on, so it is never parsed again);
* ``variant_ids``: the variant features (the key union, then the screened ones);
* ``screening``: the screening's summary;
* ``standardization``, ``n_train``, ``n_holdout``: the moments round's result;
* ``params``, ``history``: the trained model and the learning curve.

A phase's spec is the carried JSON over defaults (the plan's own variants, no
screening, no trained model), so a phase reads the same keys whether or not the phases
before it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from pipeline.analyses.phases import Phase, Phased, PhasedState
from pipeline.analyses.protocol import Contribution, Result, SiteContext
from pipeline.analyses.train.final_evaluation import FINAL_EVALUATION
from pipeline.analyses.train.keys import FEATURE_KEYS
from pipeline.analyses.train.moments import MOMENTS
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.rounds import TRAINING_ROUNDS
from pipeline.analyses.train.screening import SCREENING
from pipeline.analyses.train.site_data import contributing_sets
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError

__all__ = ["TRAIN", "Train", "training_phases"]

PhaseSpec = Callable[[Mapping[str, Any], Mapping[str, Any]], "dict[str, Any] | None"]


def _plan(job: Mapping[str, Any], carried: Mapping[str, Any]) -> TrainingPlan:
    """The carried plan, or the job spec parsed (before the first phase has ended)."""
    return TrainingPlan.from_json(carried["plan"]) if "plan" in carried else TrainingPlan.parse(job)


def _phase_spec(runs: Callable[[TrainingPlan], bool]) -> PhaseSpec:
    """The spec function of a phase that runs when ``runs(plan)``: defaults, the carried JSON, the plan."""

    def spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any] | None:
        plan = _plan(job, carried)
        if not runs(plan):
            return None
        defaults = {"variant_ids": list(plan.features.variant_ids or ()), "screening": None, "params": None, "history": []}
        return {**defaults, **carried, "plan": plan.to_json()}

    return spec


class _HandsOver(Protocol):
    def handover(self) -> dict[str, Any]: ...


@runtime_checkable
class _Planned(Protocol):
    plan: TrainingPlan


def _handover(result: Result, state: _HandsOver) -> Mapping[str, Any]:
    """What a finished phase hands to the later ones (its final state says)."""
    return state.handover()


def training_phases() -> tuple[Phase, ...]:
    """The phases of a training job, in order (see :mod:`pipeline.analyses.train`)."""
    return (
        Phase("keys", FEATURE_KEYS, _phase_spec(lambda plan: plan.features.variant_ids is None), _handover),
        Phase("screen", SCREENING, _phase_spec(lambda plan: plan.features.screen_top is not None), _handover),
        Phase("moments", MOMENTS, _phase_spec(lambda plan: True), _handover),
        Phase("train", TRAINING_ROUNDS, _phase_spec(lambda plan: plan.rounds > 0), _handover),
        Phase("evaluate", FINAL_EVALUATION, _phase_spec(lambda plan: True), lambda result, state: {}),
    )


class Train(Phased):
    """The ``train`` analysis: the phases of :func:`training_phases` run as one job."""

    def __init__(self) -> None:
        super().__init__("train", training_phases())

    def contributions(self, state: PhasedState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """The site's training set and held-out set (:func:`~.site_data.contributing_sets`).

        The plan comes from the phase state (every phase's state holds it): the job spec
        may name a GWAS table that only the coordinator reads.
        """
        inner = state.inner
        if not isinstance(inner, _Planned):
            raise ConfigurationError(f"train: the state of phase {self.phases[state.phase].name!r} holds no training plan")
        return contributing_sets(inner.plan, dataset)


TRAIN = Train()
"""Federated training of a biomarker model (see :mod:`pipeline.analyses.train`)."""
