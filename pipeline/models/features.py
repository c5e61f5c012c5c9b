"""The feature matrix of a site: selected variants plus covariates, standardized federally.

Features are the ALT dosages of a list of variants (given by ``variant_id``, or the top
hits of a GWAS table, or every variant the sites share) followed by covariate columns
of the samples table (``age``, ``sex``...). Samples without the target or a covariate
are left out; a missing genotype call is imputed with the federated mean.

Standardization uses federated moments: the first round of a training job sums, per
feature, the number of observed values, their sum and their sum of squares over the
sites' training splits (:func:`moment_statistics`), from which every site gets the
same means and standard deviations (:func:`standardization`). Standardized missing
values are 0 (the mean). For a quantitative target the target is standardized the same
way, so R² and coefficients are on a common scale.

Train / held-out split: a sample is held out when the first 8 bytes of
SHA-256(seed, sample_id) fall below the held-out fraction: deterministic from the job's
seed, independent of sample order and of the site.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.dataset import Dataset, check_binary, numeric_column
from pipeline.errors import ConfigurationError, InputError

__all__ = [
    "MIN_SCALE",
    "FeatureSpec",
    "SiteData",
    "Standardization",
    "held_out",
    "moment_statistics",
    "noisy_standardization",
    "read_site_data",
    "screening_scores",
    "screening_statistics",
    "standardization",
    "standardize",
    "top_hits",
]

MIN_SCALE = 1e-8
"""Standard deviations below this are treated as 1 (a constant feature carries no signal)."""


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns make the feature matrix and the target (identical at every site).

    Attributes:
        variant_ids: variants whose ALT dosage is a feature, in column order.
        covariates: sample-table columns appended after the variants.
        target: the sample-table column to predict.
        task: ``binary`` (0/1 target) or ``quantitative``.
        holdout_fraction: fraction of each site's samples held out for evaluation.
        split_seed: seed of the train / held-out split.
    """

    variant_ids: tuple[str, ...]
    covariates: tuple[str, ...]
    target: str
    task: str
    holdout_fraction: float = 0.2
    split_seed: int = 0

    @property
    def names(self) -> list[str]:
        """Feature names in column order: variant IDs, then covariates."""
        return [*self.variant_ids, *self.covariates]

    @property
    def num_features(self) -> int:
        return len(self.variant_ids) + len(self.covariates)


@dataclass(frozen=True, eq=False)
class SiteData:
    """A site's raw feature matrix and target (never leaves the site).

    Attributes:
        sample_id: (samples,) IDs of the samples kept.
        features: (samples, features) float64, NaN for a missing genotype call.
        target: (samples,) float64, NaN when the target is unknown (prediction only).
        holdout: (samples,) bool, held out for evaluation.
    """

    sample_id: np.ndarray
    features: np.ndarray
    target: np.ndarray
    holdout: np.ndarray

    @property
    def train(self) -> np.ndarray:
        return ~self.holdout


@dataclass(frozen=True)
class Standardization:
    """Per-feature mean and scale (and the target's, for a quantitative trait)."""

    mean: np.ndarray
    scale: np.ndarray
    target_mean: float = 0.0
    target_scale: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "target_mean": self.target_mean, "target_scale": self.target_scale}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Standardization:
        return cls(np.asarray(data["mean"], np.float64), np.asarray(data["scale"], np.float64),
                   float(data.get("target_mean", 0.0)), float(data.get("target_scale", 1.0)))


def held_out(sample_id: Sequence[str], *, seed: int, fraction: float) -> np.ndarray:
    """Whether each sample is in the held-out split (deterministic in seed and ID)."""
    limit = int(fraction * 2**64)
    out = np.zeros(len(sample_id), bool)
    for index, sid in enumerate(sample_id):
        digest = hashlib.sha256(f"genofed-split:{seed}:{sid}".encode()).digest()
        out[index] = int.from_bytes(digest[:8], "little") < limit
    return out


def read_site_data(dataset: Dataset, spec: FeatureSpec, *, require_target: bool = True) -> SiteData:
    """Reads the features and target of a site's samples from its dataset.

    Samples with a missing covariate (or target, when ``require_target``) are left out.

    Raises:
        PhenotypeError: a column is absent or not numeric, or a binary target is not 0/1.
    """
    samples = dataset.samples()
    sample_id = np.asarray(samples.column("sample_id").to_pylist(), dtype=object)
    keep = np.ones(len(sample_id), bool)
    if "has_phenotypes" in samples.column_names:
        keep &= np.asarray(samples.column("has_phenotypes").to_pylist(), bool)
    covariates = (np.column_stack([numeric_column(dataset, samples, c, role="covariate") for c in spec.covariates])
                  if spec.covariates else np.zeros((len(sample_id), 0)))
    keep &= ~np.isnan(covariates).any(axis=1)
    if spec.target in samples.column_names or require_target:
        target = numeric_column(dataset, samples, spec.target, role="target")
    else:
        target = np.full(len(sample_id), np.nan)
    if require_target:
        keep &= ~np.isnan(target)
        if spec.task == "binary":
            check_binary(dataset, spec.target, target[keep], role="target")
    genotypes = np.full((len(sample_id), len(spec.variant_ids)), np.nan)
    column_of = {vid: j for j, vid in enumerate(spec.variant_ids)}
    if column_of:
        for block in dataset.iter_blocks():
            ids = block.variants.column("variant_id").to_pylist()
            rows = [(i, column_of[v]) for i, v in enumerate(ids) if v in column_of]
            if not rows:
                continue
            block_rows, columns = (np.asarray(x) for x in zip(*rows))
            calls = block.call_dosage[block_rows].astype(np.float64)
            calls[calls < 0] = np.nan
            genotypes[:, columns] = calls.T
    features = np.concatenate([genotypes, covariates], axis=1)[keep]
    kept_id = sample_id[keep]
    return SiteData(kept_id, features, target[keep], held_out(kept_id.tolist(), seed=spec.split_seed, fraction=spec.holdout_fraction))


def moment_statistics(data: SiteData) -> dict[str, np.ndarray]:
    """The site's additive moments over its training split (the first round's contribution)."""
    train = data.train
    features = data.features[train]
    observed = ~np.isnan(features)
    filled = np.where(observed, features, 0.0)
    target = data.target[train]
    return {
        "feature_count": observed.sum(axis=0).astype(np.int64),
        "feature_sum": filled.sum(axis=0),
        "feature_sumsq": np.square(filled).sum(axis=0),
        "target_sum": np.array([np.sum(target)]),
        "target_sumsq": np.array([np.sum(np.square(target))]),
        "n_train": np.array([int(train.sum())], np.int64),
        "n_holdout": np.array([int(data.holdout.sum())], np.int64),
    }


def standardization(totals: Mapping[str, np.ndarray], *, task: str) -> Standardization:
    """Means and scales from the summed moments of every site."""
    count = np.asarray(totals["feature_count"], np.float64)
    safe = np.maximum(count, 1.0)
    mean = np.asarray(totals["feature_sum"], np.float64) / safe
    variance = np.maximum(np.asarray(totals["feature_sumsq"], np.float64) / safe - mean**2, 0.0)
    scale = np.sqrt(variance)
    scale = np.where((scale < MIN_SCALE) | (count < 2), 1.0, scale)
    mean = np.where(count > 0, mean, 0.0)
    if task != "quantitative":
        return Standardization(mean, scale)
    n = float(np.asarray(totals["n_train"]).reshape(-1)[0])
    target_mean = float(np.asarray(totals["target_sum"]).reshape(-1)[0]) / max(n, 1.0)
    target_var = float(np.asarray(totals["target_sumsq"]).reshape(-1)[0]) / max(n, 1.0) - target_mean**2
    target_scale = float(np.sqrt(target_var)) if target_var > MIN_SCALE**2 else 1.0
    return Standardization(mean, scale, target_mean, target_scale)


def noisy_standardization(totals: Mapping[str, np.ndarray], *, task: str, bound: np.ndarray, target_bound: float,
                          noise_sd: Mapping[str, float | np.ndarray]) -> Standardization:
    """Means and scales from summed moments to which noise of known standard deviation was added (differential privacy).

    Only post-processing of the noisy sums, so it keeps their guarantee. Each count is
    taken within [1, n_train], each mean within ``±bound``, and each variance within
    [its noise level, ``bound²``], the noise level being the standard deviation that the
    sums' noise gives the variance estimate: a variance the noise swamps gets a scale of
    the noise's order, never 0, a negative variance or the exact path's fallback of 1
    (which would leave a covariate such as age unscaled).

    Args:
        totals: the noisy sums, in the values' own units: ``feature_sum``,
            ``feature_sumsq``, ``feature_count``, ``n_train`` (and ``target_sum``,
            ``target_sumsq`` for a quantitative task).
        bound: (features,) the largest magnitude of one value of each feature.
        target_bound: the largest magnitude of a quantitative target.
        noise_sd: per field of ``totals``, the standard deviation of its summed noise.
    """
    n = max(float(np.asarray(totals["n_train"], np.float64).reshape(-1)[0]), 1.0)
    count = np.clip(np.asarray(totals["feature_count"], np.float64), 1.0, n)
    mean, scale = _noisy_moments(totals["feature_sum"], totals["feature_sumsq"], count, np.asarray(bound, np.float64),
                                 noise_sd["feature_sum"], noise_sd["feature_sumsq"])
    if task != "quantitative":
        return Standardization(mean, scale)
    target_mean, target_scale = _noisy_moments(totals["target_sum"], totals["target_sumsq"], np.array([n]),
                                               np.array([float(target_bound)]), noise_sd["target_sum"], noise_sd["target_sumsq"])
    return Standardization(mean, scale, float(target_mean[0]), float(target_scale[0]))


def _noisy_moments(sums: Any, squares: Any, count: np.ndarray, bound: np.ndarray, sums_sd: Any,
                   squares_sd: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale of each column from noisy sums (see :func:`noisy_standardization`)."""
    mean = np.clip(np.asarray(sums, np.float64).reshape(count.shape) / count, -bound, bound)
    variance = np.asarray(squares, np.float64).reshape(count.shape) / count - mean**2
    floor = np.sqrt(np.square(squares_sd) + np.square(2.0 * mean * sums_sd)) / count
    scale = np.sqrt(np.minimum(np.maximum(variance, floor), bound**2))
    return mean, np.where(scale < MIN_SCALE, 1.0, scale)


def standardize(features: np.ndarray, scaling: Standardization) -> np.ndarray:
    """(features - mean) / scale as float32, missing values at 0 (the mean)."""
    values = (np.asarray(features, np.float64) - scaling.mean) / scaling.scale
    return np.nan_to_num(values, nan=0.0).astype(np.float32)


def top_hits(path: Path | str, *, top: int, p_value_max: float = 1.0) -> list[str]:
    """The ``top`` variants with the smallest p-values of a GWAS result table (Parquet or TSV).

    The table needs ``p_value`` and either ``variant_id`` or the GWAS-SSF columns
    ``chromosome``, ``base_pair_location``, ``other_allele``, ``effect_allele``
    (the variant ID is then ``chromosome:position:other:effect``).

    Raises:
        InputError: unreadable table or missing columns; ConfigurationError: no variant passes.
    """
    path = Path(path)
    try:
        if path.suffix in (".tsv", ".txt", ".gz"):
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
        else:
            table = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the GWAS table ({error})") from None
    if "p_value" not in table.column_names:
        raise InputError(f"{path}: a GWAS table needs a p_value column; it has {table.column_names}")
    if "variant_id" in table.column_names:
        ids = [str(v) for v in table.column("variant_id").to_pylist()]
    elif all(c in table.column_names for c in ("chromosome", "base_pair_location", "other_allele", "effect_allele")):
        ids = [f"{c}:{p}:{o}:{e}" for c, p, o, e in zip(*(table.column(n).to_pylist() for n in ("chromosome", "base_pair_location", "other_allele", "effect_allele")))]
    else:
        raise InputError(f"{path}: a GWAS table needs variant_id or chromosome/base_pair_location/other_allele/effect_allele columns")
    p_value = np.asarray(pc.cast(table.column("p_value"), "float64").to_numpy(zero_copy_only=False), np.float64)
    order = np.argsort(np.where(np.isnan(p_value), np.inf, p_value), kind="stable")
    chosen = [ids[i] for i in order[:top] if p_value[i] <= p_value_max]
    if not chosen:
        raise ConfigurationError(f"{path}: no variant has p_value <= {p_value_max}; raise features.p_value_max")
    return sorted(set(chosen), key=chosen.index)


def screening_statistics(dataset: Dataset, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Per-variant sums for marginal association screening, over the site's training split.

    Streams the genotype chunks (memory: one chunk), so it scales to every variant of a
    dataset. For each of ``spec.variant_ids``, over training samples with an observed
    call: their number, the sums of x, x², x·y, y and y². Summed over sites these give
    each variant's correlation with the target (:func:`screening_scores`).
    """
    base = FeatureSpec((), spec.covariates, spec.target, spec.task, spec.holdout_fraction, spec.split_seed)
    data = read_site_data(dataset, base)
    samples = np.asarray(dataset.samples().column("sample_id").to_pylist(), dtype=object)
    column = {sid: i for i, sid in enumerate(samples.tolist())}
    train_columns = np.asarray([column[s] for s in data.sample_id[data.train].tolist()], np.int64)
    y = data.target[data.train]
    v = len(spec.variant_ids)
    out = {name: np.zeros(v) for name in ("x_sum", "x_sumsq", "xy_sum", "y_sum", "y_sumsq")}
    out["count"] = np.zeros(v, np.int64)
    row_of = {vid: j for j, vid in enumerate(spec.variant_ids)}
    for block in dataset.iter_blocks():
        ids = block.variants.column("variant_id").to_pylist()
        pairs = [(i, row_of[x]) for i, x in enumerate(ids) if x in row_of]
        if not pairs or train_columns.size == 0:
            continue
        block_rows, rows = (np.asarray(p) for p in zip(*pairs))
        calls = block.call_dosage[np.ix_(block_rows, train_columns)].astype(np.float64)
        observed = calls >= 0
        x = np.where(observed, calls, 0.0)
        out["count"][rows] += observed.sum(axis=1)
        out["x_sum"][rows] += x.sum(axis=1)
        out["x_sumsq"][rows] += np.square(x).sum(axis=1)
        out["xy_sum"][rows] += x @ y
        out["y_sum"][rows] += observed @ y
        out["y_sumsq"][rows] += observed @ np.square(y)
    return out


def screening_scores(totals: Mapping[str, np.ndarray]) -> np.ndarray:
    """Squared correlation of each variant with the target, from summed screening statistics."""
    n = np.asarray(totals["count"], np.float64)
    sx, sxx, sxy = (np.asarray(totals[k], np.float64) for k in ("x_sum", "x_sumsq", "xy_sum"))
    sy, syy = np.asarray(totals["y_sum"], np.float64), np.asarray(totals["y_sumsq"], np.float64)
    covariance = n * sxy - sx * sy
    variance_x = n * sxx - sx**2
    variance_y = n * syy - sy**2
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = covariance**2 / (variance_x * variance_y)
    return np.where((variance_x > 1e-9 * np.maximum(n, 1) ** 2) & (variance_y > 0) & (n >= 3), r2, 0.0)
