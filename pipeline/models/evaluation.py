"""Federated evaluation from sums: AUC from per-class score histograms, accuracy, Brier, R².

Each site scores its own held-out split and contributes only additive statistics, so
the coordinator's secure sum yields the metrics of the union of the held-out splits
without any per-sample score leaving a site:

* binary traits: a histogram of predicted probabilities per class (``bins`` equal bins
  on [0, 1]), the number of correct calls at 0.5, the sum of squared errors of the
  probability (Brier) and the sum of log losses. The AUC is the Mann-Whitney statistic
  on the binned scores: pairs in the same bin count one half, so it differs from the
  exact AUC by at most half the fraction of case-control pairs sharing a bin;
* quantitative traits: the sum of squared errors, the sum and the sum of squares of
  the target, from which R² = 1 - SSE / SST and the mean squared error follow.

The same functions serve the per-round learning curve, the final evaluation and the
local and pooled baselines, so all numbers in a report are computed the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "DEFAULT_BINS",
    "LOG_LOSS_CAP",
    "SQUARED_ERROR_CAP",
    "binary_statistics",
    "binary_metrics",
    "quantitative_statistics",
    "quantitative_metrics",
    "statistics",
    "metrics",
    "PRIMARY_METRIC",
]

DEFAULT_BINS = 1000
LOG_LOSS_CAP = 50.0
"""Largest per-sample log loss counted (a probability of 1e-22 for the true class)."""
SQUARED_ERROR_CAP = 100.0
"""Largest per-sample squared error counted, in standard deviations of the target squared."""

PRIMARY_METRIC = {"binary": "auc", "quantitative": "r2"}


def binary_statistics(probability: np.ndarray, target: np.ndarray, *, bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Additive statistics of predicted probabilities against 0/1 targets."""
    probability = np.clip(np.asarray(probability, np.float64), 0.0, 1.0)
    target = np.asarray(target, np.float64)
    positive = target > 0.5
    index = np.minimum((probability * bins).astype(np.int64), bins - 1)
    eps = np.exp(-LOG_LOSS_CAP)
    log_loss = -(target * np.log(np.maximum(probability, eps)) + (1 - target) * np.log(np.maximum(1 - probability, eps)))
    return {
        "hist_case": np.bincount(index[positive], minlength=bins).astype(np.int64),
        "hist_control": np.bincount(index[~positive], minlength=bins).astype(np.int64),
        "correct": np.array([np.count_nonzero((probability >= 0.5) == positive)], np.int64),
        "brier_sum": np.array([np.sum(np.square(probability - target))]),
        "log_loss_sum": np.array([np.sum(np.minimum(log_loss, LOG_LOSS_CAP))]),
    }


def binary_metrics(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    """AUC, accuracy, Brier score and log loss from (summed) :func:`binary_statistics`."""
    case = np.asarray(stats["hist_case"], np.float64).reshape(-1)
    control = np.asarray(stats["hist_control"], np.float64).reshape(-1)
    num_case, num_control = case.sum(), control.sum()
    n = num_case + num_control
    controls_below = np.concatenate([[0.0], np.cumsum(control)[:-1]])
    pairs = num_case * num_control
    auc = float(np.sum(case * (controls_below + 0.5 * control)) / pairs) if pairs > 0 else float("nan")
    scalar = {name: float(np.asarray(stats[name]).reshape(-1)[0]) for name in ("correct", "brier_sum", "log_loss_sum")}
    return {
        "auc": auc,
        "accuracy": float(scalar["correct"] / n) if n else float("nan"),
        "brier": float(scalar["brier_sum"] / n) if n else float("nan"),
        "log_loss": float(scalar["log_loss_sum"] / n) if n else float("nan"),
        "n": float(n),
    }


def quantitative_statistics(prediction: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Additive statistics of predictions of a (standardized) quantitative target."""
    prediction = np.asarray(prediction, np.float64)
    target = np.asarray(target, np.float64)
    return {
        "sse": np.array([np.sum(np.minimum(np.square(prediction - target), SQUARED_ERROR_CAP))]),
        "target_sum": np.array([np.sum(target)]),
        "target_sumsq": np.array([np.sum(np.square(target))]),
        "count": np.array([target.size], np.int64),
    }


def quantitative_metrics(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    """R² and mean squared error from (summed) :func:`quantitative_statistics`."""
    value = {name: float(np.asarray(stats[name]).reshape(-1)[0]) for name in ("sse", "target_sum", "target_sumsq", "count")}
    n = value["count"]
    if n <= 0:
        return {"r2": float("nan"), "mse": float("nan"), "n": 0.0}
    total = value["target_sumsq"] - value["target_sum"] ** 2 / n
    return {"r2": 1.0 - value["sse"] / total if total > 0 else float("nan"), "mse": value["sse"] / n, "n": float(n)}


def statistics(task: str, output: np.ndarray, target: np.ndarray, *, bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """:func:`binary_statistics` or :func:`quantitative_statistics` by task."""
    if task == "binary":
        return binary_statistics(output, target, bins=bins)
    return quantitative_statistics(output, target)


def metrics(task: str, stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    """:func:`binary_metrics` or :func:`quantitative_metrics` by task."""
    return binary_metrics(stats) if task == "binary" else quantitative_metrics(stats)
