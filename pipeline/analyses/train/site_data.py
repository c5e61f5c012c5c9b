"""A site's side of training: its feature matrix, its policy checks, its arrays and its keys.

Every round of a training job reads the same rows of the same dataset (the feature
matrix of the job's variants and covariates), so a site reads them once per job, into
the job's :class:`~pipeline.analyses.SiteCache`, keyed by the dataset's path and the
:class:`~pipeline.models.features.FeatureSpec` (variants, covariates, target, split).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from pipeline.analyses.protocol import SiteContext
from pipeline.analyses.site_cache import SiteCache
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.dataset import Dataset
from pipeline.errors import PolicyRefusal
from pipeline.models import ModelConfig, evaluation
from pipeline.models.features import (
    FeatureSpec,
    SiteData,
    Standardization,
    read_site_data,
    standardize,
)
from pipeline.models.local_update import predict_fn

log = logging.getLogger(__name__)

__all__ = [
    "global_model_on_site","site_key", "site_data", "refuse_below_k", "checked_site_data", "site_training_arrays", "held_out_statistics"]


def site_key(seed: int, train_round: int, site: str) -> jax.Array:
    """The PRNG key of a site's local update in a round (same key in the local-only baseline)."""
    site_number = int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), train_round), site_number)


def site_data(dataset: Dataset, spec: FeatureSpec, cache: SiteCache) -> SiteData:
    """The site's raw features and target for ``spec``, read once per job."""
    key = ("train.site_data", str(Path(dataset.path).resolve()), spec)
    return cache.get(key, lambda: read_site_data(dataset, spec))


def refuse_below_k(site: SiteContext, usable: int, plan: TrainingPlan) -> None:
    """Raises :class:`PolicyRefusal` when fewer samples than the site's k are usable."""
    if usable < site.min_samples:
        raise PolicyRefusal(
            f"site {site.name}: {usable} samples with {plan.target} and the covariates, fewer than the policy's "
            f"min_samples {site.min_samples}"
        )


def checked_site_data(plan: TrainingPlan, variant_ids: Sequence[str], dataset: Dataset, site: SiteContext) -> SiteData:
    """The site's data for the job's features, once the site's policy and the job's bounds allow it.

    Raises:
        PolicyRefusal: fewer usable samples than the site's k, or more than the job allows.
        PhenotypeError: the target or a covariate is missing from the samples table.
    """
    data = site_data(dataset, plan.feature_spec(variant_ids), site.cache)
    usable = int(data.features.shape[0])
    refuse_below_k(site, usable, plan)
    if usable > plan.max_samples_per_site:
        raise PolicyRefusal(f"site {site.name}: {usable} samples exceed the job's max_samples_per_site {plan.max_samples_per_site}")
    return data


def site_training_arrays(data: SiteData, scaling: Standardization, task: str) -> dict[str, np.ndarray]:
    """Standardized float32 train and held-out arrays of a site (target standardized if quantitative)."""
    features = standardize(data.features, scaling)
    target = data.target if task == "binary" else (data.target - scaling.target_mean) / scaling.target_scale
    target = np.asarray(target, np.float32)
    return {
        "train_x": features[data.train], "train_y": target[data.train],
        "holdout_x": features[data.holdout], "holdout_y": target[data.holdout],
    }


def global_model_on_site(plan: TrainingPlan, variant_ids: Sequence[str], scaling: Standardization, theta: np.ndarray,
                         dataset: Dataset, site: SiteContext, *, phase: str, shared: bool
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A site's standardized arrays, and the global model's statistics on its held-out split (logged locally).

    Both the training rounds and the final evaluation start from this; whether the
    statistics leave the site is the caller's layout's business (``shared`` only says
    so in the site's log).

    Raises:
        PolicyRefusal: fewer usable samples than the site's k, or more than the job allows.
    """
    data = checked_site_data(plan, variant_ids, dataset, site)
    arrays = site_training_arrays(data, scaling, plan.task)
    model = plan.model(plan.num_features(variant_ids))
    stats = held_out_statistics(plan, model, theta, arrays["holdout_x"], arrays["holdout_y"])
    log.info("site %s: held-out %s of the global model (%s): %s", site.name, phase,
             "shared in this site's slot, policy share_site_metrics" if shared else "stays local",
             {k: round(v, 4) for k, v in evaluation.metrics(plan.task, stats).items()})
    return arrays, stats


def held_out_statistics(plan: TrainingPlan, model: ModelConfig, theta: np.ndarray, holdout_x: np.ndarray,
                        holdout_y: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluation statistics of model ``theta`` on a held-out split (additive over sites)."""
    output = np.asarray(predict_fn(model)(theta, holdout_x), np.float64)
    return evaluation.statistics(plan.task, output, holdout_y, bins=plan.bins)
