"""Benchmark: federated training with differential privacy, held-out AUC against epsilon, local-only and pooled models.

Data (:func:`tests.models.training_support.planted_cohort`, numpy only): ``--sizes``
samples per site (default 300, 1200, 200), ``--variants`` variants (default 16) with
site-specific allele frequencies (non-IID), a binary trait from a logistic model of 4
causal variants plus age and sex, and a case fraction that differs by site; 30% of each
site is held out. Every model is a logistic regression on the variants' dosages, age and
sex (``max_abs_value`` 100, which bounds age and sex alike).

Strategies, all evaluated the same way on the union of the sites' held-out splits
(histogram AUC, :mod:`pipeline.models.evaluation`, 1000 bins):

* **federated at epsilon = 8, 3, 1**: the ``train`` analysis with a privacy block
  (``delta`` 1e-6, ``honest_sites`` = ``--threshold`` - ``--max-colluding`` = 2 of 3
  sites): noisy moments, ``--rounds`` DP-FedSGD rounds (one full-batch step per round,
  per-example gradients clipped to ``--clip-norm``, local learning rate
  ``--learning-rate``, FedAvg on the server) and a noisy evaluation
  (:mod:`pipeline.analyses.train.privacy`). Each epsilon is run ``--repeats`` times with
  fresh secret noise. The released model is scored here on the pooled held-out data
  (the benchmark can see every site; a federation cannot); the AUC the job itself
  released, computed from its noisy score histograms, is shown beside it.
* **federated at epsilon = inf**: the exact job with the same schedule (one full-batch
  step per round, no clipping, no noise): FedSGD, i.e. pooled gradient descent.
* **local-only** (:func:`pipeline.federation.baselines.training_baselines`): each site
  trains alone on its own training split with the same schedule and the exact job's
  standardization; the table gives the mean over sites and the best site. A second
  local-only mean uses a minibatch schedule (5 epochs of batches of 32, learning rate
  0.1, L2 0.01, the same rounds), a stronger local baseline; the goal is checked
  against the higher of the two means.
* **pooled**: all training splits in one place, the same schedule.

Goal: at epsilon = 3 the federated model's mean AUC beats the mean local-only model's.
Printed as a table, plotted to ``--plot`` (PNG, matplotlib).

Run: ``python tests/benchmarks/training_privacy.py [--repeats 10] [--rounds 20]
[--epsilons 8 3 1] [--secure] [--plot /tmp/training_privacy.png] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.analyses.train import TRAIN, TrainingPlan, site_training_arrays  # noqa: E402
from pipeline.dataset import open_dataset  # noqa: E402
from pipeline.federation.baselines import training_baselines  # noqa: E402
from pipeline.federation.in_memory import run_in_memory  # noqa: E402
from pipeline.json_arrays import decode_array  # noqa: E402
from pipeline.models import evaluation  # noqa: E402
from pipeline.models.features import Standardization, read_site_data  # noqa: E402
from pipeline.models.local_update import predict_fn  # noqa: E402
from tests.models.training_support import planted_cohort  # noqa: E402

GOAL_EPSILON = 3.0
MINIBATCH = {"epochs": 5, "batch_size": 32, "learning_rate": 0.1, "l2": 0.01}
"""The stronger local-only baseline's schedule (not differentially private: it never leaves the site)."""


def job_spec(args: argparse.Namespace, variant_ids: Sequence[str], epsilon: float | None) -> dict[str, Any]:
    """The training spec at ``epsilon`` (``None``: the exact job with the same schedule)."""
    spec: dict[str, Any] = {
        "target": "binary_trait", "covariates": ["age", "sex"], "features": {"variants": list(variant_ids)},
        "rounds": args.rounds, "clip_norm": args.clip_norm, "max_abs_value": 100.0, "holdout_fraction": 0.3,
        "local": {"epochs": 1, "learning_rate": args.learning_rate}, "seed": args.seed,
    }
    if epsilon is None:  # exact: full batch, and clip_norm (there the site delta's clip) out of the way
        return {**spec, "clip_norm": 1e6, "local": {**spec["local"], "batch_size": None}}
    honest = args.threshold - args.max_colluding
    return {**spec, "privacy": {"epsilon": epsilon, "delta": args.delta, "max_colluding": args.max_colluding,
                                "honest_sites": honest}}


def pooled_holdout_auc(summary: Mapping[str, Any], datasets: Mapping[str, Path]) -> float:
    """The released model's AUC on the union of the sites' held-out splits, standardized as the job published."""
    plan = TrainingPlan.from_json(summary["parameters"])
    record = summary["model"]
    scaling = Standardization.from_json(record["standardization"])
    features = plan.feature_spec(record["variant_ids"])
    x, y = [], []
    for name in sorted(datasets):
        arrays = site_training_arrays(read_site_data(open_dataset(datasets[name]), features), scaling, plan.task)
        x.append(arrays["holdout_x"])
        y.append(arrays["holdout_y"])
    output = np.asarray(predict_fn(plan.model(features.num_features))(decode_array(record["params"]), np.concatenate(x)), np.float64)
    return evaluation.metrics("binary", evaluation.statistics("binary", output, np.concatenate(y)))["auc"]


def baselines(args: argparse.Namespace, datasets: Mapping[str, Path], variant_ids: Sequence[str], out: Path) -> dict[str, Any]:
    """The exact federated job (epsilon = inf), the local-only models under both schedules, and the pooled model."""
    paths = [datasets[name] for name in sorted(datasets)]
    spec = job_spec(args, variant_ids, None)
    exact = json.loads(json.dumps(run_in_memory(TRAIN, spec, datasets).result.summary, default=float))
    same = training_baselines(spec, paths, out / "same", exact, site_names=sorted(datasets))
    minibatch_spec = {**spec, "local": MINIBATCH}
    minibatch_exact = json.loads(json.dumps(run_in_memory(TRAIN, minibatch_spec, datasets).result.summary, default=float))
    minibatch = training_baselines(minibatch_spec, paths, out / "minibatch", minibatch_exact, site_names=sorted(datasets))
    return {
        "federated_exact": pooled_holdout_auc(exact, datasets),
        "local_mean": same["metrics"]["local_mean"]["auc"], "local_best": same["metrics"]["local_best"]["auc"],
        "best_site": same["best_site"], "local_mean_minibatch": minibatch["metrics"]["local_mean"]["auc"],
        "pooled": same["metrics"]["pooled"]["auc"],
    }


def private_runs(args: argparse.Namespace, datasets: Mapping[str, Path], variant_ids: Sequence[str],
                 epsilon: float) -> dict[str, Any]:
    """``--repeats`` DP jobs at ``epsilon``: the model's pooled held-out AUC, the released AUC and the spend."""
    spec = job_spec(args, variant_ids, epsilon)
    model_auc, released_auc, seconds = [], [], []
    privacy: dict[str, Any] = {}
    for repeat in range(args.repeats):
        started = time.perf_counter()
        run = run_in_memory(TRAIN, spec, datasets, secure=args.secure, threshold=args.threshold, seed=repeat)
        seconds.append(time.perf_counter() - started)
        summary = run.result.summary
        model_auc.append(pooled_holdout_auc(summary, datasets))
        released_auc.append(float(summary["metrics"].get("auc", math.nan)))  # absent when the noise left it undefined
        privacy = summary["privacy"]
    train = privacy["releases"]["train"]
    n_train = summary["n_train"]
    return {
        "epsilon": epsilon, "model_auc": model_auc, "released_auc": released_auc, "seconds_per_job": float(np.mean(seconds)),
        "rho_budget": privacy["rho_budget"], "rho_spent": privacy["rho_spent"], "epsilon_spent": privacy["epsilon_spent"],
        "gradient_sigma_per_site": train["sigma"] / 2 ** train["scale_bits"],  # in units of clip_norm
        # The noise of the mean clipped gradient, per coordinate, relative to clip_norm (sites' noise over the training count).
        "mean_gradient_noise_sd": math.sqrt(len(datasets)) * train["sigma"] / 2 ** train["scale_bits"] / max(n_train, 1),
    }


def plot(path: Path, rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any]) -> None:
    """AUC against epsilon (1, 3, 8, inf on an evenly spaced axis), with the baselines as lines."""
    figure = Figure(figsize=(8.8, 4.2), dpi=110)
    axis = figure.subplots()
    positions = list(range(len(rows) + 1))
    means = [float(np.mean(row["model_auc"])) for row in rows] + [base["federated_exact"]]
    errors = [float(np.std(row["model_auc"])) for row in rows] + [0.0]
    released = [float(np.nanmean(row["released_auc"])) for row in rows]
    axis.errorbar(positions, means, yerr=errors, color="tab:blue", marker="o", capsize=3, linewidth=2,
                  label="federated (released model, pooled held-out AUC)")
    axis.plot(positions[:-1], released, color="tab:blue", marker="x", linestyle="none", label="federated (AUC it released, noisy)")
    axis.axhline(base["pooled"], color="tab:green", linewidth=1.5, label="pooled")
    axis.axhline(base["local_best"], color="0.4", linestyle=":", label=f"local-only, best site ({base['best_site']})")
    axis.axhline(base["local_mean"], color="0.4", linestyle="--", label="local-only, mean over sites")
    axis.axhline(base["local_mean_minibatch"], color="tab:orange", linestyle="--", linewidth=1,
                 label="local-only mean, minibatch schedule")
    axis.set_xticks(positions, [f"{row['epsilon']:g}" for row in rows] + ["inf"])
    axis.set_xlabel("epsilon (delta = 1e-6, whole job)")
    axis.set_ylabel("held-out AUC")
    axis.set_title("Federated training with differential privacy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1200, 200], help="samples per site")
    parser.add_argument("--variants", type=int, default=16, help="variant features (at least 13: 4 of them causal)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 3.0, 1.0], help="besides inf")
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--threshold", type=int, default=2, help="secure aggregation threshold t")
    parser.add_argument("--max-colluding", type=int, default=0, help="honest_sites = threshold - max_colluding")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--clip-norm", type=float, default=1.0, help="per-example gradient clip (DP jobs)")
    parser.add_argument("--learning-rate", type=float, default=1.0, help="the full-batch step's learning rate")
    parser.add_argument("--repeats", type=int, default=10, help="DP jobs per epsilon (fresh noise each)")
    parser.add_argument("--secure", action="store_true", help="sum through the SecAgg protocol (slower; same noise)")
    parser.add_argument("--seed", type=int, default=3, help="the cohort's seed (and the job's split seed)")
    parser.add_argument("--plot", type=Path, default=Path(tempfile.gettempdir()) / "training_privacy.png")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.variants < 13 or len(args.sizes) < 2 or args.repeats < 1:
        parser.error("--variants must be at least 13, --sizes name at least 2 sites, --repeats at least 1")
    if not 1 <= args.threshold - args.max_colluding <= args.threshold <= len(args.sizes):
        parser.error("need 1 <= --threshold - --max-colluding and --threshold <= the number of sites")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        datasets = planted_cohort(root / "cohort", sizes=tuple(args.sizes), num_variants=args.variants, seed=args.seed)
        variant_ids = [f"chr22:{1000 + 10 * i}:A:G" for i in range(args.variants)]
        base = baselines(args, datasets, variant_ids, root / "baselines")
        rows = [private_runs(args, datasets, variant_ids, epsilon) for epsilon in sorted(args.epsilons, reverse=True)]
    rows.sort(key=lambda row: row["epsilon"])
    plot(args.plot, rows, base)
    elapsed = time.perf_counter() - started
    local = max(base["local_mean"], base["local_mean_minibatch"])
    goal_row = next((row for row in rows if row["epsilon"] == GOAL_EPSILON), None)
    goal = None if goal_row is None else {
        "federated_mean_auc": float(np.mean(goal_row["model_auc"])), "local_mean_auc": local,
        "runs_beating": int(sum(auc > local for auc in goal_row["model_auc"])), "runs": len(goal_row["model_auc"]),
        "passed": bool(np.mean(goal_row["model_auc"]) > local),
    }
    if args.json:
        print(json.dumps({"parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
                          "baselines": base, "private": rows, "goal": goal, "plot": str(args.plot), "seconds": elapsed}, indent=2))
        return
    honest = args.threshold - args.max_colluding
    print(f"DP federated training (train analysis): {len(args.sizes)} sites of {args.sizes} samples, {args.variants} variants + "
          f"age + sex, logistic; {args.rounds} rounds of one full-batch step (learning rate {args.learning_rate:g}), "
          f"clip_norm {args.clip_norm:g} per example; delta {args.delta:g}, {honest} honest sites; AUC on the union of the "
          f"held-out splits, mean +- sd over {args.repeats} DP jobs per epsilon")
    print(f"{'epsilon':>8} {'federated AUC':>16} {'released AUC':>16} {'eps spent':>10} {'rho spent':>10} "
          f"{'grad sd/C':>10} {'local mean':>11} {'local best':>11} {'pooled':>7}")
    for row in rows:
        model, released = np.asarray(row["model_auc"]), np.asarray(row["released_auc"])
        print(f"{row['epsilon']:>8g} {model.mean():>9.4f} +- {model.std():.3f} {np.nanmean(released):>9.4f} +- {np.nanstd(released):.3f} "
              f"{row['epsilon_spent']:>10.4f} {row['rho_spent']:>10.5f} {row['mean_gradient_noise_sd']:>10.4f} "
              f"{base['local_mean']:>11.4f} {base['local_best']:>11.4f} {base['pooled']:>7.4f}")
    print(f"{'inf':>8} {base['federated_exact']:>9.4f}          {'(exact)':>16} {'-':>10} {'-':>10} {'0':>10} "
          f"{base['local_mean']:>11.4f} {base['local_best']:>11.4f} {base['pooled']:>7.4f}")
    print(f"local-only mean with a minibatch schedule ({MINIBATCH}): {base['local_mean_minibatch']:.4f}; best site "
          f"{base['best_site']}; 'grad sd/C' is the noise sd of the mean clipped gradient per coordinate, in units of clip_norm")
    if goal is not None:
        print(f"goal at epsilon = {GOAL_EPSILON:g}: federated mean AUC {goal['federated_mean_auc']:.4f} vs the higher local-only "
              f"mean {goal['local_mean_auc']:.4f}: {'PASS' if goal['passed'] else 'FAIL'} "
              f"({goal['runs_beating']}/{goal['runs']} jobs above it)")
    print(f"plot: {args.plot}\n{elapsed:.1f} s")


if __name__ == "__main__":
    main()
