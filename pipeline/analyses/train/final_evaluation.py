"""Phase ``evaluate`` of a training job: the final model on the held-out splits, and the result.

One secure sum (Z_2^32 when it fits): the final model's statistics on every site's
held-out split (:mod:`pipeline.models.evaluation`: AUC from per-class score histograms,
accuracy, Brier score, log loss; or R² and MSE). The layout also holds one slot per
participant (the same statistics and a ``shared`` flag): a site whose policy says
``share_site_metrics`` fills its own slot and sets its flag to 1, every other site
contributes zeros there, so the sum reveals the held-out metrics of exactly the sites
that opted in; the flag, not the zeros, tells an opted-out site apart.

After the job, each site writes the final model and its own held-out metrics under its
state folder (:meth:`FinalEvaluation.site_finish`); they stay there unless its policy
shared them in its slot.

With differential privacy (:mod:`.privacy`) the round releases, noisy, only what one
person's presence moves by little: for a binary target the per-class score histograms
(:data:`~.plan.PRIVATE_BINS` bins by default) and the correct calls, so AUC and
accuracy (the Brier score and log loss are not released, and absent from the metrics);
for a quantitative one the squared error, the target's sum and sum of squares and the
count, with the standardized target clipped to ``±PRIVATE_TARGET_BOUND`` and the squared
error capped at its square (tighter than the exact path's caps, so the noise is
smaller), so R² and MSE. A metric the noise leaves undefined (R² when the noisy total
sum of squares is not positive) is left out, so the summary stays strict JSON.
There are no per-site slots: a site's own metrics are one site's statistics and stay at
the site. The coordinator clips noisy counts at 0 (and correct calls at the histograms'
total): the released AUC is then conservative, biased toward 0.5 where the noise is
comparable to the bins' counts (few held-out samples, small epsilon). The result carries
``privacy``: the terms, the budget's split and each release's sigma
(:func:`~.privacy.privacy_summary`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import outputs
from pipeline.analyses.protocol import (
    Analysis,
    Result,
    SiteContext,
    StepResult,
)
from pipeline.analyses.train.declarations import (
    LAYOUT_HINT,
    check_statistics,
    slot,
    slot_fields,
    statistic_fields,
)
from pipeline.analyses.protocol import JsonState
from pipeline.analyses.sum_checks import refuse_impossible
from pipeline.analyses.train.model_record import biomarkers, model_record
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.privacy import NoisyRelease, evaluation_release, privacy_summary
from pipeline.analyses.train.screening import ScreeningSummary
from pipeline.analyses.train.site_data import (
    global_model_on_site,
    held_out_statistics,
    site_data,
    site_training_arrays,
)
from pipeline.dataset import Dataset
from pipeline.encoding import Layout, Ring, plan_layout
from pipeline.json_arrays import decode_array, encode_array
from pipeline.models import evaluation, param_space
from pipeline.models.checkpoint import save_model
from pipeline.models.features import Standardization
from pipeline.models.local_update import predict_fn
from pipeline.privacy import Spend, secret_generator

log = logging.getLogger(__name__)

__all__ = ["FINAL_EVALUATION", "FinalEvaluation", "EvaluationState", "PRIVATE_TARGET_BOUND"]

PRIVATE_TARGET_BOUND = 5.0
"""With privacy, a quantitative held-out target counts within ±5 of its standard deviations, and an error within 5 of them."""


@dataclass(frozen=True, eq=False)
class EvaluationState(JsonState):
    """The evaluation phase's state: the final model and everything the result reports.

    Attributes:
        plan: the job's plan.
        participants: the job's sites, one evaluation slot each.
        variant_ids: the variant features, in column order (covariates follow).
        screening: what the screening phase published; ``None`` without screening.
        scaling: the federated standardization.
        n_train: training samples over the sites.
        n_holdout: held-out samples over the sites.
        params: the final model's parameters (float32).
        history: the training rounds' records.
    """

    plan: TrainingPlan
    participants: tuple[str, ...]
    variant_ids: tuple[str, ...]
    screening: ScreeningSummary | None
    scaling: Standardization
    n_train: int
    n_holdout: int
    params: np.ndarray
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(), "participants": list(self.participants), "variant_ids": list(self.variant_ids),
            "screening": None if self.screening is None else self.screening.to_json(), "scaling": self.scaling.to_json(),
            "n_train": self.n_train, "n_holdout": self.n_holdout, "params": encode_array(self.params),
            "history": [dict(record) for record in self.history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationState:
        screening = data["screening"]
        return cls(
            TrainingPlan.from_json(data["plan"]), tuple(str(p) for p in data["participants"]),
            tuple(str(v) for v in data["variant_ids"]), None if screening is None else ScreeningSummary.from_json(screening),
            Standardization.from_json(data["scaling"]), int(data["n_train"]), int(data["n_holdout"]), decode_array(data["params"]),
            tuple(dict(record) for record in data["history"]),
        )

    @property
    def noise(self) -> NoisyRelease | None:
        """The round's noisy release under the job's privacy terms (``None``: exact). Derived, never stored."""
        return None if self.plan.privacy is None else evaluation_release(self.plan)


def _private_sums(state: EvaluationState, release: NoisyRelease, arrays: Mapping[str, np.ndarray],
                  stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The site's released statistics as integers: the histogram counts, or each person's error and target in units."""
    if state.plan.task == "binary":
        return {name: np.asarray(stats[name], np.int64) for name in ("hist_case", "hist_control", "correct")}
    model = state.plan.model(state.plan.num_features(state.variant_ids))
    prediction = np.asarray(predict_fn(model)(state.params, arrays["holdout_x"]), np.float64)
    target = np.asarray(arrays["holdout_y"], np.float64)
    error = np.minimum(np.square(prediction - target), PRIVATE_TARGET_BOUND**2)
    target = np.clip(target, -PRIVATE_TARGET_BOUND, PRIVATE_TARGET_BOUND) / PRIVATE_TARGET_BOUND
    return {"sse": release.integer_sum(error[:, None] / PRIVATE_TARGET_BOUND**2),
            "target_sum": release.integer_sum(target[:, None]), "target_sumsq": release.integer_sum(np.square(target)[:, None]),
            "count": release.integer_sum(np.ones((target.size, 1)))}


def _private_metrics(state: EvaluationState, release: NoisyRelease, total: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The defined metrics of the noisy statistics (post-processing: counts at least 0, correct calls at most the total)."""
    metrics = _noisy_metrics(state, release, total)
    return {name: value for name, value in metrics.items() if math.isfinite(value)}


def _noisy_metrics(state: EvaluationState, release: NoisyRelease, total: Mapping[str, np.ndarray]) -> dict[str, float]:
    noisy = release.restored(total)
    if state.plan.task == "binary":
        case, control = np.maximum(noisy["hist_case"], 0.0), np.maximum(noisy["hist_control"], 0.0)
        correct = np.clip(noisy["correct"], 0.0, case.sum() + control.sum())
        metrics = evaluation.binary_metrics({"hist_case": case, "hist_control": control, "correct": correct,
                                             "brier_sum": np.zeros(1), "log_loss_sum": np.zeros(1)})
        return {name: metrics[name] for name in ("auc", "accuracy", "n")}  # the Brier score and log loss were not released
    bound = PRIVATE_TARGET_BOUND
    return evaluation.quantitative_metrics({
        "sse": np.maximum(noisy["sse"], 0.0) * bound**2, "target_sum": noisy["target_sum"] * bound,
        "target_sumsq": np.maximum(noisy["target_sumsq"], 0.0) * bound**2, "count": np.round(np.maximum(noisy["count"], 0.0)),
    })


def _site_slots(plan: TrainingPlan, participants: Sequence[str], n_holdout: int, site: SiteContext,
                stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This site's statistics in its own slot if its policy shares them; zeros everywhere else."""
    reals, counts = statistic_fields(plan, n_holdout)
    out: dict[str, np.ndarray] = {}
    for name in participants:
        own = site.share_site_metrics and name == site.name
        for field in reals:
            out[slot(name, field.name)] = np.asarray(stats[field.name], np.float64).reshape(field.shape) if own else np.zeros(field.shape)
        for field in counts:
            out[slot(name, field.name)] = np.asarray(stats[field.name], np.int64).reshape(field.shape) if own else np.zeros(field.shape, np.int64)
        out[slot(name, "shared")] = np.array([int(own)], np.int64)
    return out


def _check_sums(state: EvaluationState, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int) -> None:
    """Refuses evaluation sums no honest sites give, so no impossible metric is published.

    The statistics pass :func:`~.declarations.check_statistics`. Only a site fills its
    own slot: its flag is 0 or 1, at most the sites summed set theirs, a slot whose flag
    is 0 holds only zeros, and a shared slot holds one site's statistics.

    Raises:
        ProtocolError: naming the field (a slot's names its site) and the value.
    """
    where = "train.evaluate"
    check_statistics(where, state.plan, layout, total, num_sites)
    flags = np.array([int(np.asarray(total[slot(site, "shared")]).reshape(-1)[0]) for site in state.participants])
    for site, flag in zip(state.participants, flags):
        refuse_impossible(where, slot(site, "shared"), flag, flag not in (0, 1), f"0 or 1 (only site {site} fills its slot)")
        if flag == 0:
            reals, counts = statistic_fields(state.plan, state.n_holdout, prefix=slot(site, ""))
            for name in (field.name for field in (*reals, *counts)):
                value = np.asarray(total[name])
                refuse_impossible(where, name, value, value != 0, f"0 (site {site} did not share its statistics)")
        else:
            check_statistics(where, state.plan, layout, total, num_sites, prefix=slot(site, ""))
    sharing = int(np.count_nonzero(flags))
    refuse_impossible(where, "number of shared slots", sharing, sharing > num_sites, f"at most the {num_sites} sites summed")


def _shared_site_metrics(task: str, participants: Sequence[str], total: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Held-out metrics of the sites whose ``shared`` flag is 1 in the sum (the others are absent)."""
    shared: dict[str, dict[str, float]] = {}
    for site in participants:
        if int(np.asarray(total[slot(site, "shared")]).reshape(-1)[0]) == 1:
            prefix = slot(site, "")
            stats = {name[len(prefix):]: value for name, value in total.items() if name.startswith(prefix)}
            shared[site] = evaluation.metrics(task, stats)
    return shared


def _disclosure(plan: TrainingPlan, site_metrics: Mapping[str, Any]) -> str:
    """What the job revealed to the coordinator, in one sentence."""
    if plan.privacy is not None:
        return (
            "the coordinator learned only sums over the included sites to which every site added discrete Gaussian noise: "
            "feature moments, sums of per-example clipped gradients and held-out score statistics; the standardization, "
            "the model and the metrics computed from them are (epsilon, delta)-differentially private for each person "
            "over the whole job (see privacy); the features were given by the job"
            + (" (chosen from a GWAS table, whose own release is outside this guarantee)" if plan.features.source.startswith("gwas:")
               else "")
        )
    return (
        "the coordinator learned only sums: feature moments, sample-weighted clipped model deltas and held-out "
        "score histograms over the included sites"
        + ("; the key round revealed which variant IDs each site holds" if plan.features.variant_ids is None else "")
        + ("; the screening round revealed each candidate variant's pooled marginal association with the target"
           if plan.features.screen_top is not None else "")
        + (f"; sites {', '.join(sorted(site_metrics))} shared their own held-out statistics (policy share_site_metrics)"
           if site_metrics else "")
    )


class FinalEvaluation(Analysis[EvaluationState]):
    """The final model's held-out evaluation and the job's result (see the module docstring)."""

    name = "train.evaluate"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> EvaluationState:
        """``spec``: the phase spec of the training job (``plan``, ``variant_ids``, ``screening``,
        ``standardization``, ``n_train``, ``n_holdout``, and ``params`` and ``history`` after
        training; ``params`` ``None`` evaluates the initial model).
        """
        plan = TrainingPlan.from_json(spec["plan"])
        variant_ids = tuple(str(v) for v in spec["variant_ids"])
        screening = spec["screening"]
        params = spec["params"]
        theta = param_space(plan.model(plan.num_features(variant_ids))).initial if params is None else decode_array(params)
        return EvaluationState(
            plan, tuple(participants), variant_ids, None if screening is None else ScreeningSummary.from_json(screening),
            Standardization.from_json(spec["standardization"]), int(spec["n_train"]), int(spec["n_holdout"]), theta,
            tuple(dict(record) for record in spec["history"]),
        )

    def state_from_json(self, data: Mapping[str, Any]) -> EvaluationState:
        return EvaluationState.from_json(data)

    def layout(self, state: EvaluationState, round_index: int) -> Layout:
        """The held-out statistics, then one slot per participant and the slots' flags.

        With privacy: the noisy release's integer fields only, with room for the noise.
        """
        noise = state.noise
        if noise is not None:
            return noise.layout(len(state.participants))
        reals, counts = statistic_fields(state.plan, state.n_holdout)
        slot_reals, slot_counts, flags = slot_fields(state.plan, state.participants, state.n_holdout)
        return plan_layout([*reals, *slot_reals, *counts, *slot_counts, *flags], len(state.participants),
                           rings=(Ring.R32, Ring.R64), hint=LAYOUT_HINT)

    def site_step(self, state: EvaluationState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The final model's held-out statistics, and this site's slot if its policy shares them.

        Raises:
            PolicyRefusal: fewer usable samples than the site's k (``too-few-samples``), or
                more than the job allows (``policy``).
        """
        noise = state.noise
        shares = noise is None and site.share_site_metrics and site.name in state.participants
        arrays, stats = global_model_on_site(state.plan, state.variant_ids, state.scaling, state.params, dataset, site,
                                             phase="evaluate", shared=shares)
        if noise is not None:
            return noise.noised(_private_sums(state, noise, arrays, stats), rng=secret_generator())
        return {**stats, **_site_slots(state.plan, state.participants, state.n_holdout, site, stats)}

    def coordinator_step(
        self, state: EvaluationState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[EvaluationState]:
        """The job's result: metrics, the shared per-site metrics, the model, the history and the biomarkers.

        Raises:
            ProtocolError: sums no honest sites can give (:func:`_check_sums`).
        """
        plan = state.plan
        noise = state.noise
        if noise is None:
            _check_sums(state, self.layout(state, round_index), total, num_sites)
            metrics = evaluation.metrics(plan.task, total)
            site_metrics = _shared_site_metrics(plan.task, state.participants, total)
        else:  # noisy sums: only the layout's bounds were checked
            metrics = _private_metrics(state, noise, total)
            site_metrics = {}
        history = [*state.history, {"round": len(state.history), **metrics, "num_sites": int(num_sites)}]
        tables = {"history": pa.Table.from_pylist(history)}
        markers = biomarkers(plan, state.variant_ids, state.scaling, state.params)
        if markers is not None:
            tables["biomarkers"] = markers
        summary = {
            "analysis": "train",
            "num_sites": int(num_sites),
            "task": plan.task,
            "target": plan.target,
            "metrics": metrics,
            "site_metrics": site_metrics,
            "primary_metric": evaluation.PRIMARY_METRIC[plan.task],
            "n_train": state.n_train,
            "n_holdout": state.n_holdout,
            "num_features": plan.num_features(state.variant_ids),
            "num_params": int(state.params.size),
            "screening": None if state.screening is None else state.screening.to_json(),
            "history": history,
            "model": model_record(plan, state.variant_ids, state.scaling, state.params),
            "parameters": plan.to_json(),
            "disclosure": _disclosure(plan, site_metrics),
        }
        if noise is not None:
            summary["privacy"] = privacy_summary(plan, plan.num_features(state.variant_ids), int(state.params.size), num_sites)
        return state, True, Result(summary=summary, tables=tables)

    def privacy_spend(self, state: EvaluationState, round_index: int) -> Spend | None:
        """The evaluation's noise and cost, when the job asked for differential privacy."""
        noise = state.noise
        return None if noise is None else noise.spend

    def site_finish(self, state: EvaluationState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, str] | None:
        """At the site, after the job: the final model and its metrics on this site's held-out split.

        Writes ``out_dir/model.json`` (for ``genofed predict``) and ``out_dir/site_metrics.json``.
        The metrics stay here unless the site's policy says ``share_site_metrics``, in
        which case the final evaluation round also sent them in this site's slot.

        Returns:
            The paths written.
        """
        plan = state.plan
        data = site_data(dataset, plan.feature_spec(state.variant_ids), site.cache, max_abs_value=plan.max_abs_value)
        arrays = site_training_arrays(data, state.scaling, plan.task)
        model = plan.model(plan.num_features(state.variant_ids))
        stats = held_out_statistics(plan, model, state.params, arrays["holdout_x"], arrays["holdout_y"])
        metrics = evaluation.metrics(plan.task, stats)
        target = Path(out_dir)
        target.mkdir(parents=True, exist_ok=True)
        model_path = save_model(model_record(plan, state.variant_ids, state.scaling, state.params), target / "model.json", force=True)
        report = {"site": site.name, "target": plan.target, "task": plan.task, "held_out_metrics": metrics,
                  "n_train": int(arrays["train_y"].shape[0]), "n_holdout": int(arrays["holdout_y"].shape[0]),
                  "disclosure": "computed at this site from its own held-out split; "
                                + ("also sent to the coordinator in this site's slot of the final evaluation (policy share_site_metrics)"
                                   if site.share_site_metrics else "not sent to the coordinator")}
        with outputs.atomic_file(target / "site_metrics.json", force=True) as tmp:
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return {"model": str(model_path), "site_metrics": str(target / "site_metrics.json")}


FINAL_EVALUATION = FinalEvaluation()
