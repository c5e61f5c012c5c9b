"""Histogram metrics against naive per-sample references, and additivity across sites."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models import evaluation


def naive_auc(score: np.ndarray, target: np.ndarray) -> float:
    """Mann-Whitney over all case-control pairs, ties counting one half."""
    case, control = score[target == 1], score[target == 0]
    diff = case[:, None] - control[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics__auc_equals_the_pairwise_auc_of_the_binned_scores(seed):
    rng = np.random.default_rng(seed)
    target = (rng.random(300) < 0.3).astype(float)
    probability = np.clip(rng.beta(2, 3, 300) + 0.2 * target, 0, 1)
    bins = 200
    stats = evaluation.binary_statistics(probability, target, bins=bins)
    binned = np.minimum((probability * bins).astype(int), bins - 1)
    got = evaluation.binary_metrics(stats)
    assert got["auc"] == pytest.approx(naive_auc(binned.astype(float), target), abs=1e-12)
    assert abs(got["auc"] - naive_auc(probability, target)) < 0.01
    assert got["accuracy"] == pytest.approx(np.mean((probability >= 0.5) == (target == 1)))
    assert got["brier"] == pytest.approx(np.mean((probability - target) ** 2))
    eps = 1e-12
    assert got["log_loss"] == pytest.approx(-np.mean(target * np.log(probability + eps) + (1 - target) * np.log(1 - probability + eps)), rel=1e-6)


def test_statistics__sum_over_sites_equals_the_pooled_statistics():
    rng = np.random.default_rng(3)
    parts = [(rng.random(n), (rng.random(n) < 0.4).astype(float)) for n in (50, 120, 7)]
    summed = {k: sum(evaluation.binary_statistics(p, t)[k] for p, t in parts) for k in evaluation.binary_statistics(*parts[0])}
    pooled = evaluation.binary_statistics(np.concatenate([p for p, _ in parts]), np.concatenate([t for _, t in parts]))
    for key in pooled:
        np.testing.assert_allclose(summed[key], pooled[key])
    q = [(rng.normal(size=n), rng.normal(size=n)) for n in (30, 40)]
    q_sum = {k: sum(evaluation.quantitative_statistics(a, b)[k] for a, b in q) for k in ("sse", "target_sum", "target_sumsq", "count")}
    pred, target = np.concatenate([a for a, _ in q]), np.concatenate([b for _, b in q])
    r2 = 1 - np.sum((pred - target) ** 2) / np.sum((target - target.mean()) ** 2)
    assert evaluation.quantitative_metrics(q_sum)["r2"] == pytest.approx(r2)


def test_binary_metrics__one_class_only_gives_nan_auc():
    stats = evaluation.binary_statistics(np.array([0.2, 0.7]), np.array([1.0, 1.0]))
    assert np.isnan(evaluation.binary_metrics(stats)["auc"])
