"""Model files and local prediction: a trained model scores a site's own samples at home.

A model record (written by the ``train`` analysis into its result summary, and as
``model.json`` next to the results of ``genofed federate``) holds everything scoring
needs: the model config, the feature list (variant IDs and covariates), the federated
standardization and the parameters. :func:`predict_dataset` reads a dataset's features
the way training did and writes one prediction per sample; nothing leaves the machine.

During training the coordinator checkpoints the global model every round as part of
the job's public state (stored before the round opens), so a restarted coordinator
continues from the last round; this module is about the finished model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import outputs
from pipeline.dataset import open_dataset
from pipeline.errors import InputError
from pipeline.models import ModelConfig, param_space
from pipeline.models.features import FeatureSpec, Standardization, read_site_data, standardize
from pipeline.models.local_update import predict_fn
from pipeline.json_arrays import decode_array

__all__ = ["MODEL_FORMAT", "save_model", "load_model", "predict_dataset"]

MODEL_FORMAT = "genofed-model/1"


def save_model(record: Mapping[str, Any], path: Path | str, *, force: bool = False) -> Path:
    """Writes a model record as JSON (atomically)."""
    target = Path(path)
    with outputs.atomic_file(target, force=force) as tmp:
        tmp.write_text(json.dumps(dict(record), indent=1, sort_keys=True) + "\n")
    return target


def load_model(path: Path | str) -> dict[str, Any]:
    """Reads a model: a ``model.json``, a job's ``summary.json``, or a results folder holding either.

    Raises:
        InputError: no model there, or a record this version cannot read.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.json", path / "summary.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise InputError(f"{path}: no model.json or summary.json; pass a training job's results folder or model file")
        path = found[0]
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise InputError(f"{path}: cannot read the model ({error.strerror})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise InputError(f"{path}: not a genofed model (expected format {MODEL_FORMAT!r}); use the results of a 'train' job")
    config = ModelConfig.from_json(data["config"])
    params = decode_array(data["params"])
    if params.shape != (param_space(config).size,):
        raise InputError(f"{path}: {params.size} parameters, the model config needs {param_space(config).size}")
    return data


def predict_dataset(model: Path | str | Mapping[str, Any], dataset: Path | str, out: Path | str, *, force: bool = False) -> dict[str, Any]:
    """Scores every sample of ``dataset`` that has the model's covariates; writes Parquet.

    The output has ``sample_id`` and ``prediction``: the probability of the trait
    (binary) or the predicted trait value in its own units (quantitative).

    Raises:
        InputError / PhenotypeError: unreadable model, or a covariate missing from the dataset.
    """
    record = dict(model) if isinstance(model, Mapping) else load_model(model)
    config = ModelConfig.from_json(record["config"])
    scaling = Standardization.from_json(record["standardization"])
    spec = FeatureSpec(tuple(record["variant_ids"]), tuple(record["covariates"]), str(record["target"]), str(record["task"]), 0.0, 0)
    opened = open_dataset(dataset)
    data = read_site_data(opened, spec, require_target=False)
    features = standardize(data.features, scaling)
    output = np.asarray(predict_fn(config)(decode_array(record["params"]), features), np.float64)
    if config.task == "quantitative":
        output = output * scaling.target_scale + scaling.target_mean
    missing_variants = int(np.all(np.isnan(data.features[:, : len(spec.variant_ids)]), axis=0).sum()) if spec.variant_ids else 0
    table = pa.table({"sample_id": pa.array(data.sample_id.tolist(), pa.string()), "prediction": pa.array(output, pa.float64())})
    target = Path(out)
    with outputs.atomic_file(target, force=force) as tmp:
        pq.write_table(table, tmp)
    return {
        "out": str(target),
        "samples_scored": int(table.num_rows),
        "samples_skipped": int(opened.num_samples - table.num_rows),
        "task": config.task,
        "target": spec.target,
        "variants_absent": missing_variants,
    }
