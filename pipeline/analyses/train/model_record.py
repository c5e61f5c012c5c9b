"""What a finished training job publishes about its model: the model record and the biomarkers.

The model record is everything ``genofed predict`` needs to score a site's samples at
home (:mod:`pipeline.models.checkpoint`); the biomarker table lists the non-zero
coefficients of a linear or logistic model, per standard deviation and per unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.analyses.train.plan import TrainingPlan
from pipeline.json_arrays import encode_array
from pipeline.models import param_space
from pipeline.models.checkpoint import MODEL_FORMAT
from pipeline.models.features import Standardization

__all__ = ["model_record", "biomarkers"]


def model_record(plan: TrainingPlan, variant_ids: Sequence[str], scaling: Standardization, theta: np.ndarray) -> dict[str, Any]:
    """Everything ``genofed predict`` needs: model config, features, standardization, parameters."""
    return {
        "format": MODEL_FORMAT,
        "config": plan.model(plan.num_features(variant_ids)).to_json(),
        "target": plan.target,
        "task": plan.task,
        "variant_ids": list(variant_ids),
        "covariates": list(plan.covariates),
        "standardization": scaling.to_json(),
        "params": encode_array(np.asarray(theta, np.float32)),
    }


def biomarkers(plan: TrainingPlan, variant_ids: Sequence[str], scaling: Standardization, theta: np.ndarray) -> pa.Table | None:
    """Non-zero coefficients of a linear or logistic model, largest first; None for an MLP.

    ``coefficient`` is per standard deviation of the feature; ``effect`` per unit (per
    ALT allele for a variant), on the log-odds scale for a binary trait and in the
    trait's units for a quantitative one.
    """
    config = plan.model(plan.num_features(variant_ids))
    if config.kind == "mlp":
        return None
    space = param_space(config)
    index = space.first_kernel
    coefficient = np.zeros(config.num_features)
    coefficient[index[index >= 0]] = np.asarray(theta, np.float64)[index >= 0]
    effect = coefficient / scaling.scale * (scaling.target_scale if plan.task == "quantitative" else 1.0)
    names = [*variant_ids, *plan.covariates]
    order = [i for i in np.argsort(-np.abs(coefficient), kind="stable") if coefficient[i] != 0.0]
    return pa.table({
        "feature": pa.array([names[i] for i in order], pa.string()),
        "kind": pa.array(["variant" if i < len(variant_ids) else "covariate" for i in order], pa.string()),
        "coefficient": pa.array(coefficient[order], pa.float64()),
        "effect": pa.array(effect[order], pa.float64()),
        "feature_mean": pa.array(scaling.mean[order], pa.float64()),
        "feature_sd": pa.array(scaling.scale[order], pa.float64()),
    })
