"""The training phases refuse decoded sums that no honest sites can give, and pass every honest one.

Honest totals are made by the sites' own functions on small synthetic splits, encoded
and summed in the ring as a secure sum would (stochastic rounding, so the checks' slack
is exercised) and decoded; an impossible total is an honest one with one field changed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from pipeline.analyses.train import TRAIN, TrainingPlan
from pipeline.analyses.train.declarations import slot
from pipeline.analyses.train.final_evaluation import FINAL_EVALUATION
from pipeline.analyses.train.moments import MOMENTS
from pipeline.analyses.train.rounds import TRAINING_ROUNDS
from pipeline.analyses.train.screening import SCREENING
from pipeline.encoding import Layout
from pipeline.errors import ProtocolError
from pipeline.models import evaluation
from pipeline.models.features import SiteData, Standardization, moment_statistics
from pipeline.models.local_update import clip_by_l2

SITES = ("a", "b", "c")
VARIANTS = ("chr22:1000:A:G", "chr22:1010:A:G", "chr22:1020:A:G")
MAX_SAMPLES = 50
SIZES = (30, 20, 12)  # samples per site: 46 train and 16 held out (every fourth) in all
NUM_FEATURES = len(VARIANTS) + 1  # the variants and one covariate


def _plan(task: str, **features) -> TrainingPlan:
    return TrainingPlan.parse({
        "target": "y", "task": task, "covariates": ["age"], "features": {"variants": list(VARIANTS), **features},
        "rounds": 1, "bins": 8, "clip_norm": 1.0, "max_samples_per_site": MAX_SAMPLES,
    })


def _site(task: str, index: int, n: int) -> SiteData:
    """One site's split: the last variant constant (variance 0), the middle one never called, an age covariate."""
    rng = np.random.default_rng(index)
    calls = rng.integers(0, 3, (n, len(VARIANTS))).astype(np.float64)
    calls[:, 1] = np.nan
    calls[:, 2] = 2.0
    calls[rng.random(n) < 0.1, 0] = np.nan
    age = rng.uniform(20, 80, n).round(1)
    target = rng.integers(0, 2, n).astype(np.float64) if task == "binary" else rng.normal(3.0, 2.0, n)
    holdout = np.arange(n) % 4 == 0
    return SiteData(np.array([f"s{index}-{i}" for i in range(n)], dtype=object), np.column_stack([calls, age]), target, holdout)


def _held_out(task: str, data: SiteData, bins: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(len(data.target))
    y = data.target[data.holdout]
    output = rng.random(y.size) if task == "binary" else y + rng.normal(0.0, 0.5, y.size)
    return evaluation.statistics(task, output, y, bins=bins)


def _screening(data: SiteData) -> dict[str, np.ndarray]:
    """The site's screening sums over its training split (as :func:`~pipeline.models.features.screening_statistics`)."""
    calls, y = data.features[data.train, : len(VARIANTS)].T, data.target[data.train]
    observed = ~np.isnan(calls)
    x = np.where(observed, calls, 0.0)
    return {"count": observed.sum(axis=1), "x_sum": x.sum(axis=1), "x_sumsq": np.square(x).sum(axis=1), "xy_sum": x @ y,
            "y_sum": observed @ y, "y_sumsq": observed @ np.square(y)}


def _phase(name: str, task: str):
    """(analysis, state, each site's honest contribution) of a training phase."""
    plan = _plan(task, **({"screen_top": 2} if name == "screen" else {}))
    sites = [_site(task, i, n) for i, n in enumerate(SIZES)]
    later = {"plan": plan.to_json(), "variant_ids": list(VARIANTS), "standardization": Standardization(
        np.zeros(NUM_FEATURES), np.ones(NUM_FEATURES)).to_json(),
        "n_train": sum(int(d.train.sum()) for d in sites), "n_holdout": sum(int(d.holdout.sum()) for d in sites)}
    if name == "moments":
        return MOMENTS, MOMENTS.init(later, SITES), [moment_statistics(d) for d in sites]
    if name == "screen":
        return SCREENING, SCREENING.init(later, SITES), [_screening(d) for d in sites]
    if name == "rounds":
        state = TRAINING_ROUNDS.init(later, SITES)
        contributions = []
        for i, data in enumerate(sites):
            n = int(data.train.sum())
            delta, clipped = clip_by_l2(np.random.default_rng(i).normal(0.0, 1.0, state.params.size), plan.clip_norm)
            contributions.append({"weighted_delta": n * delta, "train_loss_sum": np.array([n * 0.69]), "n_train": np.array([n]),
                                  "n_clipped": np.array([int(clipped)]), **_held_out(task, data, plan.bins)})
        return TRAINING_ROUNDS, state, contributions
    final = FINAL_EVALUATION.init({**later, "screening": None, "params": None, "history": []}, SITES)
    contributions = []
    for site, data in zip(SITES, sites):
        stats = _held_out(task, data, plan.bins)
        slots = {}
        for owner in SITES:  # site "a" shares its own statistics, the others do not
            own = site == owner == "a"
            slots.update({slot(owner, k): v if own else np.zeros_like(v) for k, v in stats.items()})
            slots[slot(owner, "shared")] = np.array([int(own)])
        contributions.append({**stats, **slots})
    return FINAL_EVALUATION, final, contributions


def _secure_sum(layout: Layout, contributions: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The decoded sum of the encoded contributions (the masks of a secure sum cancel; the ring wraps)."""
    rng = np.random.default_rng(0)
    ring = np.zeros(layout.size, layout.ring.dtype)
    for contribution in contributions:
        ring += layout.encode(contribution, rounding="stochastic", rng=rng)
    return layout.decode(ring, len(contributions))


def _honest(name: str, task: str):
    analysis, state, contributions = _phase(name, task)
    return analysis, state, _secure_sum(analysis.layout(state, 0), contributions)


def _changed(total: dict[str, np.ndarray], name: str, change: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    value = np.array(total[name], copy=True)
    return {**total, name: change(value)}


@pytest.mark.parametrize("task", ["binary", "quantitative"])
@pytest.mark.parametrize("phase", ["moments", "screen", "rounds", "evaluate"])
def test_train_sanity__honest_sums_pass_every_phase(phase, task):
    analysis, state, total = _honest(phase, task)
    analysis.coordinator_step(state, 0, total, len(SITES))


def _set(index: int, value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(array: np.ndarray) -> np.ndarray:
        array.reshape(-1)[index] = value
        return array
    return change


def _scale(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda array: array * factor


IMPOSSIBLE = [
    ("moments", "binary", "feature_count", _set(0, 60),
     r"feature chr22:1000:A:G: the summed feature_count is 60, expected at most n_train = 46"),
    ("moments", "binary", "feature_sumsq", _set(3, 1.0),
     r"feature age: the summed feature_sum\^2 is .*, as a variance is never negative"),
    ("moments", "binary", "feature_sumsq", _set(0, -3.0),
     r"feature chr22:1000:A:G: the summed feature_sumsq is -3, expected at least 0"),
    ("moments", "binary", "n_holdout", _set(0, 120),
     r"the summed n_train \+ n_holdout is 166, expected at most 3 sites x max_samples_per_site 50 = 150"),
    ("moments", "binary", "target_sumsq", _set(0, 47.0), r"the summed target_sumsq is 47, expected at most n_train x 1\^2 = 46"),
    ("moments", "quantitative", "target_sumsq", _scale(0.5), r"the summed target_sum\^2 is"),
    ("screen", "binary", "x_sumsq", _set(0, 200.0),
     r"variant chr22:1000:A:G: the summed x_sumsq is 200, expected at most count x 2\^2"),
    ("screen", "quantitative", "y_sumsq", _scale(0.1), r"variant chr22:1000:A:G: the summed y_sum\^2"),
    ("rounds", "binary", "n_clipped", _set(0, 4), r"the summed n_clipped is 4, expected at most the 3 sites summed"),
    ("rounds", "binary", "train_loss_sum", _set(0, -1.0), r"the summed train_loss_sum is -1, expected at least 0"),
    ("rounds", "binary", "train_loss_sum", _set(0, 1000.0), r"train_loss_sum is 1000, expected at most n_train x 10"),
    ("rounds", "binary", "weighted_delta", _scale(10.0),
     r"weighted_delta \(L2 norm\) is .*, expected at most n_train x clip_norm = 46"),
    ("rounds", "binary", "correct", _set(0, 17), r"the summed correct is 17, expected at most the 16 held-out samples"),
    ("rounds", "binary", "brier_sum", _set(0, 16.5), r"the summed brier_sum is 16.5, expected at most n x 1 = 16"),
    ("rounds", "binary", "hist_case", _set(0, 200), r"the summed hist_case \+ hist_control is .*, expected at most 3 sites x"),
    ("rounds", "binary", "n_train", _set(0, 140), r"the summed n_train \+ held-out samples is 156"),
    ("rounds", "quantitative", "sse", _set(0, 1601.0), r"the summed sse is 1601, expected at most n x 100 = 1600"),
    ("evaluate", "binary", "log_loss_sum", _set(0, -0.5),
     r"train\.evaluate: the summed log_loss_sum is -0.5, expected at least 0"),
    ("evaluate", "binary", "site:b:correct", _set(0, 1), r"the summed site:b:correct is 1, expected 0 \(site b did not share"),
    ("evaluate", "binary", "site:a:correct", _set(0, 9),
     r"the summed site:a:correct is 9, expected at most the 8 held-out samples"),
    ("evaluate", "binary", "site:c:shared", _set(0, 2), r"the summed site:c:shared is 2, expected 0 or 1"),
    ("evaluate", "quantitative", "target_sumsq", _set(0, 0.0), r"the summed target_sum\^2 is"),
]


@pytest.mark.parametrize("phase, task, field, change, message", IMPOSSIBLE, ids=[f"{p}-{t}-{f}" for p, t, f, _, _ in IMPOSSIBLE])
def test_train_sanity__an_impossible_sum_is_refused_naming_the_field(phase, task, field, change, message):
    analysis, state, total = _honest(phase, task)
    with pytest.raises(ProtocolError, match=message):
        analysis.coordinator_step(state, 0, _changed(total, field, change), len(SITES))


def test_train_sanity__more_shared_slots_than_sites_summed_are_refused():
    analysis, state, total = _honest("evaluate", "binary")
    flagged = {**total, slot("b", "shared"): np.array([1]), slot("c", "shared"): np.array([1])}  # empty, as an empty site's
    analysis.coordinator_step(state, 0, flagged, 3)
    with pytest.raises(ProtocolError, match="the summed number of shared slots is 3, expected at most the 2 sites summed"):
        analysis.coordinator_step(state, 0, flagged, 2)


@pytest.mark.parametrize("field, lie, message", [
    ("feature_count", MAX_SAMPLES, r"feature chr22:1000:A:G: the summed feature_count is \d+, expected at most n_train = 46"),
    ("feature_sumsq", 0.0,
     r"feature chr22:1020:A:G: the summed feature_sum\^2 is 8464, expected at most feature_count x feature_sumsq = 6808, as a"),
])
def test_train_sanity__a_lie_within_the_declared_bounds_passes_the_decode_and_fails_the_job(field, lie, message):
    state = TRAIN.init({"target": "y", "covariates": ["age"], "features": {"variants": list(VARIANTS)}, "rounds": 1,
                        "max_samples_per_site": MAX_SAMPLES}, SITES)
    assert TRAIN.phases[state.phase].name == "moments"
    _, _, contributions = _phase("moments", "binary")
    contributions[2] = {**contributions[2], field: np.full_like(contributions[2][field], lie)}  # within one site's bounds
    total = _secure_sum(TRAIN.layout(state, 0), contributions)  # so the decode accepts it
    with pytest.raises(ProtocolError, match=f"train.moments: {message}"):
        TRAIN.coordinator_step(state, 0, total, len(SITES))
