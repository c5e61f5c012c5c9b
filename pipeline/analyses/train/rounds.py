"""Phase ``train`` of a training job: T rounds of federated optimization.

Skipped with ``rounds: 0``. In round t each site runs the jitted local update
(:mod:`pipeline.models.local_update`: E epochs, minibatches, optional FedProx ``mu``
and elastic net) from the global model, clips its delta to L2 norm ``clip_norm`` and
contributes ``(n_s * delta_s, n_s)``, in Z_2^32 when the sum of all sites keeps enough
fractional bits, else Z_2^64 (:mod:`.declarations`). The coordinator applies the
server optimizer (an optax transformation, :mod:`pipeline.models.server_optimizers`)
to the pseudo-gradient. In the same sum each site adds the held-out statistics of the
global model it started from, which gives the learning curve at no extra round.

The global model, the server optimizer's state and the history are the phase's public
state, stored by the coordinator before each round: a restarted coordinator resumes at
the round it was in, from the last global model.

With differential privacy (:mod:`.privacy`, DP-FedSGD) a round is one full-batch
gradient step: each site contributes only the sum over its whole training split of the
per-example gradients of the global model, each clipped to L2 norm ``clip_norm``
(:func:`pipeline.models.local_update.clipped_gradient_sum_fn`), in integers of
``2^-16 clip_norm``, plus its discrete Gaussian noise. The sum is unweighted: no sample
count is sent (it would be another count to protect); the coordinator divides by the
moments' noisy training count and takes the local optimizer's step
(:func:`pipeline.models.local_update.gradient_step`), then the server optimizer's. The
learning curve (held-out statistics) and the training loss are not sent: each site logs
its own, and the final evaluation releases the end point. The history records only the
rounds and the sites summed.
"""

from __future__ import annotations

import dataclasses
import logging
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
from pipeline.analyses.train.declarations import (
    LAYOUT_HINT,
    MIN_DELTA_SCALE_BITS,
    MIN_METRIC_SCALE_BITS,
    check_samples,
    check_statistics,
    real,
    statistic_fields,
)
from pipeline.analyses.protocol import JsonState
from pipeline.analyses.sum_checks import RELATIVE_TOLERANCE, check_real_sum, refuse_impossible, rounding_slack
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.privacy import REAL_SCALE_BITS, NoisyRelease, gradient_release
from pipeline.analyses.train.site_data import global_model_on_site, site_key
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Layout, Ring, plan_layout
from pipeline.errors import InputError
from pipeline.json_arrays import decode_array, encode_array
from pipeline.models import evaluation, param_space
from pipeline.models.features import Standardization
from pipeline.models.local_update import clip_by_l2, clipped_gradient_sum_fn, gradient_step, local_update_fn
from pipeline.models.server_optimizers import (
    server_step,
    state_from_json,
    state_to_json,
)
from pipeline.privacy import Spend, secret_generator

log = logging.getLogger(__name__)

__all__ = ["TRAINING_ROUNDS", "TrainingRounds", "TrainingRoundsState", "TRAIN_LOSS_CAP"]

TRAIN_LOSS_CAP = 10.0
"""Largest mean local training loss a site reports (the loss is informational)."""


@dataclass(frozen=True, eq=False)
class TrainingRoundsState(JsonState):
    """The training phase's state: the global model and what led to it.

    Attributes:
        plan: the job's plan.
        num_participants: sites invited (the bit budget is sized for all of them).
        variant_ids: the variant features, in column order (covariates follow).
        scaling: the federated standardization.
        n_train: training samples over the sites (the moments round's count).
        n_holdout: held-out samples over the sites.
        params: the global model's parameters (float32).
        server_state: the server optimizer's state, as JSON leaves
            (:func:`~pipeline.models.server_optimizers.state_to_json`).
        train_round: rounds done.
        history: one record per round done: the held-out metrics of the model the round
            started from, the mean training loss, the sites included and clipped.
    """

    plan: TrainingPlan
    num_participants: int
    variant_ids: tuple[str, ...]
    scaling: Standardization
    n_train: int
    n_holdout: int
    params: np.ndarray
    server_state: tuple[dict[str, Any], ...]
    train_round: int = 0
    history: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_json(), "num_participants": self.num_participants, "variant_ids": list(self.variant_ids),
            "scaling": self.scaling.to_json(), "n_train": self.n_train, "n_holdout": self.n_holdout,
            "params": encode_array(self.params), "server_state": [dict(leaf) for leaf in self.server_state],
            "train_round": self.train_round, "history": [dict(record) for record in self.history],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingRoundsState:
        return cls(
            TrainingPlan.from_json(data["plan"]), int(data["num_participants"]), tuple(str(v) for v in data["variant_ids"]),
            Standardization.from_json(data["scaling"]), int(data["n_train"]), int(data["n_holdout"]),
            decode_array(data["params"]), tuple(dict(leaf) for leaf in data["server_state"]), int(data["train_round"]),
            tuple(dict(record) for record in data["history"]),
        )

    @property
    def noise(self) -> NoisyRelease | None:
        """Each round's noisy release under the job's privacy terms (``None``: exact). Derived, never stored."""
        if self.plan.privacy is None:
            return None
        return gradient_release(self.plan, int(self.params.size))

    def handover(self) -> dict[str, Any]:
        """What the evaluation needs: the final global model and the learning curve."""
        return {"params": encode_array(self.params), "history": [dict(record) for record in self.history]}


def _check_sums(state: TrainingRoundsState, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int) -> None:
    """Refuses a round's sums no honest sites give, so no impossible update reaches the model or the history.

    Each site clips its delta to ``clip_norm`` and weights it by its training samples, so
    the summed delta's norm is at most n_train x clip_norm; a site has at most
    ``max_samples_per_site`` training and held-out samples, clips at most once and
    reports a mean loss in [0, TRAIN_LOSS_CAP]; the held-out statistics pass
    :func:`~.declarations.check_statistics`.

    Raises:
        ProtocolError: naming the field and the value.
    """
    plan = state.plan
    where = "train.rounds"
    n_train = int(np.asarray(total["n_train"]).reshape(-1)[0])
    clipped = int(np.asarray(total["n_clipped"]).reshape(-1)[0])
    refuse_impossible(where, "n_clipped", clipped, clipped > num_sites, f"at most the {num_sites} sites summed")
    check_statistics(where, plan, layout, total, num_sites)
    check_samples(where, plan, "n_train + held-out samples", n_train + int(evaluation.metrics(plan.task, total)["n"]), num_sites)
    check_real_sum(where, layout, total, num_sites, "train_loss_sum", at_most=n_train * TRAIN_LOSS_CAP,
                   expected=f"n_train x {TRAIN_LOSS_CAP:g}")
    delta = np.asarray(total["weighted_delta"], np.float64)
    norm = float(np.linalg.norm(delta))
    limit = n_train * plan.clip_norm
    slack = rounding_slack(layout, "weighted_delta", num_sites) * np.sqrt(delta.size)
    refuse_impossible(where, "weighted_delta (L2 norm)", norm, norm - slack > limit * (1 + RELATIVE_TOLERANCE),
                      f"at most n_train x clip_norm = {limit:g}")


def _private_contribution(state: TrainingRoundsState, release: NoisyRelease, dataset: Dataset,
                          site: SiteContext) -> dict[str, np.ndarray]:
    """The site's sum of clipped per-example gradients of the global model, in integers, plus its noise."""
    plan = state.plan
    arrays, _ = global_model_on_site(plan, state.variant_ids, state.scaling, state.params, dataset, site, phase="train",
                                     shared=False)
    model = plan.model(plan.num_features(state.variant_ids))
    clipped_sum = clipped_gradient_sum_fn(model, clip_norm=plan.clip_norm, scale_bits=REAL_SCALE_BITS)
    gradient, clipped, loss = clipped_sum(state.params, arrays["train_x"], arrays["train_y"])
    n_train = int(arrays["train_y"].shape[0])
    log.info("site %s: round %d: %d of %d per-example gradients clipped, mean training loss %.4f (stays local)",
             site.name, state.train_round + 1, clipped, n_train, loss / max(n_train, 1))
    return release.noised({"gradient_sum": gradient}, rng=secret_generator())


def _private_step(state: TrainingRoundsState, release: NoisyRelease, total: Mapping[str, np.ndarray],
                  num_sites: int) -> TrainingRoundsState:
    """One gradient step from the noisy sum over the noisy training count, then the server optimizer's step."""
    plan = state.plan
    gradient = release.restored(total)["gradient_sum"] * plan.clip_norm
    local = plan.local(plan.num_features(state.variant_ids))
    stepped = gradient_step(local, state.params, gradient / max(state.n_train, 1))
    optimizer = plan.server()
    opt_state = state_from_json(optimizer, state.params, list(state.server_state))
    theta, opt_state = server_step(optimizer, state.params, opt_state, np.asarray(stepped, np.float64) - state.params)
    if not np.all(np.isfinite(theta)):
        raise InputError(f"train: round {state.train_round + 1} made the model non-finite; lower the learning rates")
    record = {"round": state.train_round, "num_sites": int(num_sites)}
    return dataclasses.replace(state, params=theta, server_state=tuple(state_to_json(opt_state)),
                               train_round=state.train_round + 1, history=(*state.history, record))


class TrainingRounds(Analysis[TrainingRoundsState]):
    """Federated optimization rounds (see the module docstring)."""

    name = "train.rounds"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> TrainingRoundsState:
        """The initial global model and server optimizer state.

        ``spec``: the phase spec of the training job (``plan``, ``variant_ids``,
        ``standardization``, ``n_train``, ``n_holdout``).
        """
        plan = TrainingPlan.from_json(spec["plan"])
        variant_ids = tuple(str(v) for v in spec["variant_ids"])
        theta = param_space(plan.model(plan.num_features(variant_ids))).initial
        return TrainingRoundsState(
            plan, len(participants), variant_ids, Standardization.from_json(spec["standardization"]), int(spec["n_train"]),
            int(spec["n_holdout"]), theta, tuple(state_to_json(plan.server().init(theta))),
        )

    def state_from_json(self, data: Mapping[str, Any]) -> TrainingRoundsState:
        return TrainingRoundsState.from_json(data)

    def layout(self, state: TrainingRoundsState, round_index: int) -> Layout:
        """``n_s * delta_s`` (at least 10 fractional bits), the loss, the counts and the held-out statistics.

        With privacy: the clipped gradients' integer sum only, with room for the noise.
        """
        noise = state.noise
        if noise is not None:
            return noise.layout(state.num_participants)
        plan = state.plan
        n_train = float(state.n_train)
        reals, counts = statistic_fields(plan, state.n_holdout)
        fields = [
            real("weighted_delta", (int(state.params.size),), n_train * plan.clip_norm, min_bits=MIN_DELTA_SCALE_BITS),
            real("train_loss_sum", (1,), n_train * TRAIN_LOSS_CAP, min_bits=MIN_METRIC_SCALE_BITS), *reals,
            Count("n_train", (1,), n_train), Count("n_clipped", (1,), 1.0), *counts,
        ]
        return plan_layout(fields, state.num_participants, rings=(Ring.R32, Ring.R64), hint=LAYOUT_HINT)

    def site_step(self, state: TrainingRoundsState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's clipped, sample-weighted model delta and the held-out statistics of the global model.

        Raises:
            PolicyRefusal: fewer usable samples than the site's k (``too-few-samples``), or
                more than the job allows (``policy``).
        """
        noise = state.noise
        if noise is not None:
            return _private_contribution(state, noise, dataset, site)
        plan = state.plan
        theta_global = state.params
        arrays, stats = global_model_on_site(plan, state.variant_ids, state.scaling, theta_global, dataset, site,
                                             phase="train", shared=False)
        local = plan.local(plan.num_features(state.variant_ids))
        n_train = int(arrays["train_y"].shape[0])
        if n_train == 0:  # every sample held out: the site only evaluates
            return {"weighted_delta": np.zeros(theta_global.size), "train_loss_sum": np.zeros(1), "n_train": np.zeros(1, np.int64),
                    "n_clipped": np.zeros(1, np.int64), **stats}
        update = local_update_fn(local)
        weight = np.ones(n_train, np.float32)
        theta, loss = update(theta_global, arrays["train_x"], arrays["train_y"], weight, site_key(plan.seed, state.train_round, site.name))
        delta, clipped = clip_by_l2(np.asarray(theta, np.float64) - theta_global, plan.clip_norm)
        return {
            "weighted_delta": n_train * delta,
            "train_loss_sum": np.array([n_train * min(float(loss), TRAIN_LOSS_CAP)]),
            "n_train": np.array([n_train], np.int64),
            "n_clipped": np.array([int(clipped)], np.int64),
            **stats,
        }

    def coordinator_step(
        self, state: TrainingRoundsState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[TrainingRoundsState]:
        """The server optimizer's step on the mean delta; done after ``rounds`` rounds.

        Raises:
            ProtocolError: sums no honest sites can give (:func:`_check_sums`).
            InputError: the step made the model non-finite.
        """
        plan = state.plan
        noise = state.noise
        if noise is not None:  # noisy sums: only the layout's bounds were checked
            new = _private_step(state, noise, total, num_sites)
            return (new, False, None) if new.train_round < plan.rounds else (new, True, Result(summary={}))
        _check_sums(state, self.layout(state, round_index), total, num_sites)
        metrics = evaluation.metrics(plan.task, total)
        round_samples = float(np.asarray(total["n_train"]).reshape(-1)[0])
        mean_delta = np.asarray(total["weighted_delta"], np.float64) / max(round_samples, 1.0)
        optimizer = plan.server()
        opt_state = state_from_json(optimizer, state.params, list(state.server_state))
        theta, opt_state = server_step(optimizer, state.params, opt_state, mean_delta)
        if not np.all(np.isfinite(theta)):
            raise InputError(f"train: round {state.train_round + 1} made the model non-finite; lower the learning rates")
        record = {"round": state.train_round, **metrics,
                  "train_loss": float(np.asarray(total["train_loss_sum"]).reshape(-1)[0]) / max(round_samples, 1.0),
                  "num_sites": int(num_sites), "clipped_sites": int(np.asarray(total["n_clipped"]).reshape(-1)[0])}
        new = dataclasses.replace(state, params=theta, server_state=tuple(state_to_json(opt_state)),
                                  train_round=state.train_round + 1, history=(*state.history, record))
        if new.train_round < plan.rounds:
            return new, False, None
        return new, True, Result(summary={})


    def partial_rounds(self, state: TrainingRoundsState, round_index: int) -> bool:
        """Yes: a FedAvg step averages the updates of the sites that reported; a site that missed one is invited to the next."""
        return True

    def privacy_spend(self, state: TrainingRoundsState, round_index: int) -> Spend | None:
        """The round's noise and cost, when the job asked for differential privacy."""
        noise = state.noise
        return None if noise is None else noise.spend


TRAINING_ROUNDS = TrainingRounds()
