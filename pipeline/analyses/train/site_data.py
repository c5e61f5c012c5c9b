"""A site's side of training: its feature matrix, its policy checks, its arrays and its keys.

Every round of a training job reads the same rows of the same dataset (the feature
matrix of the job's variants and covariates), so a site reads them once per job, into
the job's :class:`~pipeline.analyses.SiteCache`, keyed by the dataset's path, the
:class:`~pipeline.models.features.FeatureSpec` (variants, covariates, target, split) and
the job's ``max_abs_value``: covariate and quantitative target values beyond it are
clipped to it there (:mod:`pipeline.analyses.bounds`), never refused, so every phase
sees the same bounded values and the layouts' bounds hold.

:func:`contributing_sets` says which samples the job would release from the site: the
usable samples (:func:`~pipeline.models.features.read_site_data`'s selection, the one
every site step uses) split into the training and the held-out sets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from pipeline.analyses.bounds import check_sample_bound, clip_columns
from pipeline.analyses.protocol import GENOTYPES, Contribution, SiteContext
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
    "checked_site_data",
    "contributing_sets",
    "global_model_on_site",
    "held_out_statistics",
    "refuse_below_k",
    "site_data",
    "site_key",
    "site_training_arrays",
]


def site_key(seed: int, train_round: int, site: str) -> jax.Array:
    """The PRNG key of a site's local update in a round (same key in the local-only baseline)."""
    site_number = int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), train_round), site_number)


def site_data(dataset: Dataset, spec: FeatureSpec, cache: SiteCache, *, max_abs_value: float) -> SiteData:
    """The site's raw features and target for ``spec``, read once per job, clipped to ``±max_abs_value``.

    Covariates and a quantitative target beyond ``max_abs_value`` are clipped to it (the
    count per column goes to the site's log only); dosages (at most 2) and a binary
    target (0/1) are within any bound the spec allows (``max_abs_value >= 1``).
    """
    key = ("train.site_data", str(Path(dataset.path).resolve()), spec, max_abs_value)
    return cache.get(key, lambda: _bounded(read_site_data(dataset, spec), spec, max_abs_value))


def _bounded(data: SiteData, spec: FeatureSpec, bound: float) -> SiteData:
    """``data`` with its covariate columns and quantitative target clipped to ``±bound``."""
    v = len(spec.variant_ids)
    covariates = clip_columns(data.features[:, v:], spec.covariates, bound, where="train", spec_key="max_abs_value")
    features = np.concatenate([data.features[:, :v], covariates], axis=1)
    target = data.target
    if spec.task != "binary":
        target = clip_columns(target, [spec.target], bound, where="train", spec_key="max_abs_value")
    return dataclasses.replace(data, features=features, target=target)


def contributing_sets(plan: TrainingPlan, dataset: Dataset) -> tuple[Contribution, ...]:
    """The samples a training job would release from a site: its training set, then its held-out set.

    Both come from the usable samples (target and every covariate present), split by
    the job's seed (:func:`~pipeline.models.features.read_site_data`, the selection the
    site steps use; no genotype is read). The model (feature moments, screening sums,
    model deltas) comes from the training set; the learning curve and the final metrics
    from the held-out set. Variables: the target, the covariates and, when variants are
    features, the genotypes. A set without samples (a small site may hold out none) is
    no release of the site's and is not listed.

    The key round (``features: {variants: all}``) shares variant IDs, never a count,
    under the site's ``share_variant_keys`` policy; it is not a contributing set.

    Raises:
        PhenotypeError: the target or a covariate is missing or not numeric, or a
            binary target is not coded 0/1.
    """
    data = read_site_data(dataset, plan.feature_spec(()))
    variants = plan.features.variant_ids
    genotypes = (GENOTYPES,) if variants is None or len(variants) > 0 else ()
    variables = tuple(sorted({plan.target, *plan.covariates, *genotypes}))
    ids = np.asarray([str(s) for s in data.sample_id.tolist()], dtype=object)
    sets = (ids[data.train], ids[data.holdout])
    return tuple(Contribution(frozenset(chosen.tolist()), variables) for chosen in sets if chosen.size)


def refuse_below_k(site: SiteContext, usable: int, plan: TrainingPlan) -> None:
    """Raises :class:`PolicyRefusal` (code ``too-few-samples``) when fewer samples than the site's k are usable.

    The analyst sees only the code and the job's own column names, never the count.
    """
    if usable < site.min_samples:
        raise PolicyRefusal(
            f"site {site.name}: {usable} samples with {plan.target} and the covariates, fewer than the policy's "
            f"min_samples {site.min_samples}",
            code="too-few-samples",
            public=f"fewer of the site's samples have {plan.target!r} and the covariates {list(plan.covariates)} than its "
                   "policy's minimum",
        )


def checked_site_data(plan: TrainingPlan, variant_ids: Sequence[str], dataset: Dataset, site: SiteContext) -> SiteData:
    """The site's data for the job's features (clipped to ``max_abs_value``), once the site's policy and the job's bounds allow it.

    Raises:
        PolicyRefusal: fewer usable samples than the site's k (``too-few-samples``), or
            more than the job allows (``policy``).
        PhenotypeError: the target or a covariate is missing from the samples table.
    """
    data = site_data(dataset, plan.feature_spec(variant_ids), site.cache, max_abs_value=plan.max_abs_value)
    usable = int(data.features.shape[0])
    refuse_below_k(site, usable, plan)
    check_sample_bound(usable, plan.max_samples_per_site, site=site.name,
                       public=f"the site has more samples with {plan.target!r} and the covariates {list(plan.covariates)} "
                              "than the job's max_samples_per_site allows")
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
