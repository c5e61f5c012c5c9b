"""What a federation run on one machine can add: baselines that need every site's data.

When a whole federation runs on one machine (``genofed federate``, the demo,
benchmarks) every site's data is at hand, so the run can also compute what a real
federation never can, next to the federated result (:data:`BASELINES`, by analysis):

* ``pca``: the pooled SVD of the same standardized matrix, and the agreement of each
  component's loadings and eigenvalue with it (:func:`pca_baselines`);
* ``train``: a *local-only* model at each site and a *pooled* model on all training
  data in one place, with the same model, features, standardization and budget (T
  rounds of the same jitted local update, i.e. a one-site federation with FedAvg),
  every model evaluated on the union of the sites' held-out splits with the same
  histogram metrics as the federated evaluation (:func:`training_baselines`).

The report follows the FLamby benchmark's table (Ogier du Terrail et al., NeurIPS
2022): local mean (the average of the local-only models), local best (the local-only
model with the best primary metric), federated, pooled. Written to the job's results:

* ``metrics.json``: ``{"local_mean", "local_best", "federated", "pooled"}``, each a
  mapping metric -> value;
* ``baselines.json``: per-site local metrics and per-round learning curves;
* ``learning_curve.png``: the primary metric per round (matplotlib, Agg backend);
* ``training_report.md``: the table, the per-site metrics the sites shared (policy
  ``share_site_metrics``) and the selected biomarkers;
* ``model.json``: the federated model, for ``genofed predict``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.analyses.train import TrainingPlan, site_key, site_training_arrays
from pipeline.dataset import open_dataset, selected_calls
from pipeline.models import ModelConfig, evaluation, param_space
from pipeline.models.checkpoint import save_model
from pipeline.models.features import Standardization, read_site_data
from pipeline.models.local_update import LocalConfig, local_update_fn, predict_fn
from pipeline.stats import pca as linalg

__all__ = ["BASELINES", "pca_baselines", "training_baselines", "train_sequential", "comparison_table", "site_metrics_section",
           "TABLE_METRICS"]

TABLE_METRICS = {"binary": ("auc", "accuracy", "brier", "log_loss"), "quantitative": ("r2", "mse")}
POOLED = "pooled"


def _evaluate(task: str, config: ModelConfig, theta: np.ndarray, holdout_x: np.ndarray, holdout_y: np.ndarray, bins: int) -> dict[str, float]:
    output = np.asarray(predict_fn(config)(theta, holdout_x), np.float64)
    return evaluation.metrics(task, evaluation.statistics(task, output, holdout_y, bins=bins))


def train_sequential(plan: TrainingPlan, config: LocalConfig, name: str, train_x: np.ndarray, train_y: np.ndarray, theta: np.ndarray,
                     holdout_x: np.ndarray, holdout_y: np.ndarray) -> tuple[np.ndarray, list[dict[str, float]]]:
    """T rounds of the local update on one party's data (a one-site FedAvg); returns the model and its curve."""
    update = local_update_fn(config)
    weight = np.ones(train_y.shape[0], np.float32)
    curve = []
    for train_round in range(plan.rounds):
        curve.append({"round": train_round, **_evaluate(plan.task, config.model, theta, holdout_x, holdout_y, plan.bins)})
        theta, _ = update(theta, train_x, train_y, weight, site_key(plan.seed, train_round, name))
        theta = np.asarray(theta, np.float32)
    curve.append({"round": plan.rounds, **_evaluate(plan.task, config.model, theta, holdout_x, holdout_y, plan.bins)})
    return theta, curve


def comparison_table(metrics: Mapping[str, Mapping[str, float]], task: str, *, best_site: str | None = None) -> str:
    """The FLamby-style table as Markdown: one row per strategy, one column per metric."""
    names = TABLE_METRICS[task]
    labels = {"local_mean": "Local (mean over sites)", "local_best": f"Local (best site{': ' + best_site if best_site else ''})",
              "federated": "Federated", "pooled": "Pooled (all data in one place)"}
    lines = ["| strategy | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
    for key, label in labels.items():
        values = metrics.get(key, {})
        cells = [f"{values[n]:.4f}" if n in values and math.isfinite(values[n]) else "n/a" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def site_metrics_section(site_metrics: Mapping[str, Mapping[str, float]], task: str) -> list[str]:
    """Report lines for the per-site metrics the sites chose to share (none: no lines).

    Only sites whose policy says ``share_site_metrics`` appear; each row is the
    federated model on that site's own held-out split.
    """
    if not site_metrics:
        return []
    names = [*TABLE_METRICS[task], "n"]
    lines = [f"Federated model on each site's own held-out split (shared by {len(site_metrics)} site(s) whose policy "
             "allows share_site_metrics; other sites' metrics stayed at the site):", "",
             "| site | " + " | ".join(names) + " |", "| --- | " + " | ".join("---:" for _ in names) + " |"]
    for site in sorted(site_metrics):
        values = site_metrics[site]
        cells = [(f"{values[n]:.0f}" if n == "n" else f"{values[n]:.4f}") if n in values and math.isfinite(values[n]) else "n/a" for n in names]
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plot(path: Path, task: str, federated: Sequence[Mapping[str, Any]], pooled: Sequence[Mapping[str, Any]],
          local: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    metric = evaluation.PRIMARY_METRIC[task]
    figure = Figure(figsize=(6.4, 4.2), dpi=110)  # matplotlib's object API: no pyplot, no global backend
    axis = figure.subplots()
    for name, curve in local.items():
        axis.plot([c["round"] for c in curve], [c[metric] for c in curve], color="0.6", linewidth=1, linestyle="--",
                  label="local-only" if name == next(iter(local)) else None)
    axis.plot([c["round"] for c in pooled], [c[metric] for c in pooled], color="tab:green", linewidth=2, label="pooled")
    # A job with differential privacy publishes no learning curve (its rounds release only noisy gradients).
    federated = [c for c in federated if metric in c]
    axis.plot([c["round"] for c in federated], [c[metric] for c in federated], color="tab:blue", linewidth=2, marker="o", markersize=3, label="federated")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel(f"held-out {metric.upper() if metric == 'auc' else metric}")
    axis.set_title("Learning curve on the union of held-out splits")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)


def training_baselines(spec: Mapping[str, Any], datasets: Sequence[Path | str], out_dir: Path | str,
                         summary: Mapping[str, Any], *, site_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Trains the local-only and pooled baselines and writes the report into ``out_dir``.

    Args:
        spec: the job spec (runtime keys are ignored).
        datasets: the sites' datasets, in the order of ``site_names``.
        out_dir: the job's results folder (exists).
        summary: the federated job's result summary (``train`` analysis).
        site_names: the sites' names in the federation (default ``site-1``...), which
            seed their local updates exactly as in the federated run.

    Returns:
        ``{"metrics": ..., "table": markdown, "files": [...], "best_site": ...}``.
    """
    plan = TrainingPlan.from_json(summary["parameters"])
    record = summary["model"]
    variant_ids = record["variant_ids"]
    scaling = Standardization.from_json(record["standardization"])
    spec_features = plan.feature_spec(variant_ids)
    config = plan.local(spec_features.num_features)
    names = list(site_names) if site_names is not None else [f"site-{i + 1}" for i in range(len(datasets))]
    arrays = {name: site_training_arrays(read_site_data(open_dataset(path), spec_features), scaling, plan.task) for name, path in zip(names, datasets)}
    holdout_x = np.concatenate([a["holdout_x"] for a in arrays.values()])
    holdout_y = np.concatenate([a["holdout_y"] for a in arrays.values()])
    initial = param_space(config.model).initial
    local_curves: dict[str, list[dict[str, float]]] = {}
    for name, a in arrays.items():
        _, local_curves[name] = train_sequential(plan, config, name, a["train_x"], a["train_y"], initial, holdout_x, holdout_y)
    pooled_x = np.concatenate([a["train_x"] for a in arrays.values()])
    pooled_y = np.concatenate([a["train_y"] for a in arrays.values()])
    _, pooled_curve = train_sequential(plan, config, POOLED, pooled_x, pooled_y, initial, holdout_x, holdout_y)
    metric_names = TABLE_METRICS[plan.task]
    primary = evaluation.PRIMARY_METRIC[plan.task]
    local_final = {name: {m: float(curve[-1][m]) for m in metric_names} for name, curve in local_curves.items()}
    sign = 1.0 if primary in ("auc", "r2", "accuracy") else -1.0
    best_site = max(local_final, key=lambda n: sign * (local_final[n][primary] if math.isfinite(local_final[n][primary]) else -math.inf))
    metrics = {
        "local_mean": {m: float(np.nanmean([v[m] for v in local_final.values()])) for m in metric_names},
        "local_best": dict(local_final[best_site]),
        "federated": {m: float(summary["metrics"][m]) for m in metric_names if m in summary["metrics"]},
        "pooled": {m: float(pooled_curve[-1][m]) for m in metric_names},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (out / "baselines.json").write_text(json.dumps({
        "primary_metric": primary, "best_site": best_site, "local": local_final, "evaluated_on": "union of the sites' held-out splits",
        "curves": {"federated": list(summary["history"]), "pooled": pooled_curve, "local": local_curves},
        "budget": {"rounds": plan.rounds, "local": plan.local_spec.to_json()},
    }, indent=2, sort_keys=True, default=float) + "\n")
    _plot(out / "learning_curve.png", plan.task, summary["history"], pooled_curve, local_curves)
    save_model(record, out / "model.json", force=True)
    table = comparison_table(metrics, plan.task, best_site=best_site)
    lines = [f"# Federated training of {plan.target} ({plan.task}, {config.model.kind})", "",
             f"{len(names)} sites, {summary['n_train']} training and {summary['n_holdout']} held-out samples, "
             f"{summary['num_features']} features, {plan.rounds} rounds; all models evaluated on the union of the held-out splits.", "",
             table, ""]
    lines += site_metrics_section(summary.get("site_metrics") or {}, plan.task)
    markers_path = out / "biomarkers.parquet"
    if markers_path.is_file():
        markers = pq.read_table(markers_path).to_pylist()
        lines += [f"Selected biomarkers (non-zero coefficients): {len(markers)}", "",
                  "| feature | coefficient (per SD) | effect (per unit) |", "| --- | ---: | ---: |"]
        lines += [f"| {m['feature']} | {m['coefficient']:.4f} | {m['effect']:.4f} |" for m in markers[:20]]
    (out / "training_report.md").write_text("\n".join(lines) + "\n")
    files = ["metrics.json", "baselines.json", "learning_curve.png", "training_report.md", "model.json"]
    return {"metrics": metrics, "table": table, "best_site": best_site, "files": [str(out / f) for f in files]}


def pca_baselines(spec: Mapping[str, Any], datasets: Sequence[Path | str], out_dir: Path | str,
                  summary: Mapping[str, Any]) -> dict[str, Any]:
    """The pooled SVD of the federated PCA's matrix, and how the federated components agree with it.

    Builds the pooled standardized matrix over the federated job's variant set
    (``out_dir/pca_loadings.parquet``), takes its SVD and writes the agreement to
    ``out_dir/pca_pooled_comparison.json``: per component, |correlation| of the
    loadings and the relative error of the eigenvalue. A federation never does this.
    """
    loadings_table = pq.read_table(Path(out_dir) / "pca_loadings.parquet")
    variant_ids = [str(v) for v in loadings_table.column("variant_id").to_pylist()]
    calls = np.concatenate([selected_calls(open_dataset(d), variant_ids) for d in datasets], axis=1)
    mean, inv_scale = linalg.standardization((calls == 0).sum(1), (calls == 1).sum(1), (calls == 2).sum(1))
    _, singular, vt = np.linalg.svd(linalg.standardize(calls, mean, inv_scale).T, full_matrices=False)
    names = [c for c in loadings_table.column_names if c != "variant_id"]
    eigenvalues = np.asarray(summary["eigenvalues"], np.float64)
    rows = []
    for c, name in enumerate(names):
        loading = loadings_table.column(name).to_numpy()
        rows.append({
            "component": name,
            "loading_abs_correlation": float(abs(np.corrcoef(loading, vt[c])[0, 1])),
            "eigenvalue": float(eigenvalues[c]),
            "pooled_eigenvalue": float(singular[c] ** 2),
            "eigenvalue_relative_error": float(abs(eigenvalues[c] - singular[c] ** 2) / singular[c] ** 2),
        })
    path = Path(out_dir) / "pca_pooled_comparison.json"
    path.write_text(json.dumps({"components": rows}, indent=2) + "\n")
    lines = ["  component  |corr(loadings, pooled SVD)|  eigenvalue rel. error"]
    lines += [f"  {r['component']:<9}  {r['loading_abs_correlation']:.9f}                  {r['eigenvalue_relative_error']:.2e}" for r in rows]
    return {"components": rows, "table": "\n".join(lines), "files": [str(path)]}


Baseline = Callable[[Mapping[str, Any], Sequence[Path], Path, Mapping[str, Any]], dict[str, Any]]

BASELINES: Mapping[str, Baseline] = {"pca": pca_baselines, "train": training_baselines}
"""The baselines of each analysis that has some: ``(spec, datasets, results folder, summary) -> report``."""
