"""``train``: federated training of a biomarker model (FedAvg, FedProx, FedAdam...).

Phases, each one or more secure-sum rounds (the state's ``phase`` says which):

0. **keys** (only with ``features: {variants: all}``): a
   :class:`~pipeline.analyses.KeyUnion` of the variant IDs the sites hold at or above
   their minimum minor allele count (sites whose policy allows ``share_variant_keys``).
1. **screen** (only with ``features: {screen_top: K}``): per candidate variant, sums
   over the training splits of x, x², x·y, y, y² and the count (Z_2^64); the
   coordinator keeps the K variants most correlated with the target (sure independence
   screening, Fan & Lv 2008), the marginal association a GWAS would publish.
2. **moments**: per feature the count, sum and sum of squares over each site's
   training split, and the split sizes (Z_2^64): every site then standardizes with the
   same federated means and standard deviations (:mod:`pipeline.models.features`).
3. **train**, rounds 1..T: each site runs the jitted local update
   (:mod:`pipeline.models.local`: E epochs, minibatches, optional FedProx ``mu`` and
   elastic net) from the global model, clips its delta to L2 norm ``clip_norm`` and
   contributes ``(n_s * delta_s, n_s)`` in Z_2^32 with a fixed-point scale chosen so the
   sum of all sites cannot wrap (Z_2^64 when Z_2^32 would keep fewer than 10 fractional
   bits of the delta); the coordinator applies the server optimizer (an optax
   transformation, :mod:`pipeline.models.server`) to the pseudo-gradient. In the same
   sum each site adds the evaluation statistics of the global model it started from on
   its held-out split, which gives the learning curve at no extra round.
4. **evaluate**: the final model's statistics on the held-out splits
   (:mod:`pipeline.models.evaluation`: AUC from per-class score histograms, accuracy,
   Brier score, log loss; or R² and MSE). The layout also holds one slot per
   participant (the same statistics and a ``shared`` flag): a site whose policy says
   ``share_site_metrics`` fills its own slot and sets its flag to 1, every other site
   contributes zeros there, so the sum reveals the held-out metrics of exactly the
   sites that opted in; the flag, not the zeros, tells an opted-out site apart.

The global model, the server optimizer state and the history are the job's public
state, which the coordinator stores before each round: a restarted coordinator resumes
at the round it was in, from the last global model. Per-site metrics stay local unless
the site's policy allows them (the evaluation slots above): each round a site logs its
own held-out metrics to its own log, and after the job its agent writes the final model
and its held-out metrics under its state folder (:meth:`Train.site_finish`).

Spec (see ``workflows/train.yaml``)::

    analysis: train
    target: binary_trait          # column of the samples table
    task: binary                  # or quantitative
    covariates: [age, sex]
    features: {variants: all, screen_top: 50}   # or {variants: [ids]}, or {gwas: PATH, top: 50}
    model: {kind: logistic, hidden: [32], seed: 0}   # linear | logistic | mlp
    local: {epochs: 1, batch_size: 64, optimizer: sgd, learning_rate: 0.1, mu: 0.0, l1: 0.0, l2: 0.0}
    server: {optimizer: fedavg, learning_rate: 1.0}  # fedavg | fedadam | fedyogi | fedadagrad
    rounds: 20
    clip_norm: 10.0
    holdout_fraction: 0.2
    seed: 0
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pyarrow as pa

from pipeline.analyses import KeyUnion, Result, RoundLayout, SiteContext
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError, InputError, PolicyRefusal, ProtocolError
from pipeline.models import ModelConfig, param_space
from pipeline.models import evaluation
from pipeline.models.features import (
    FeatureSpec,
    SiteData,
    Standardization,
    moment_statistics,
    read_site_data,
    screening_scores,
    screening_statistics,
    standardization,
    standardize,
    top_hits,
)
from pipeline.models.local import LocalConfig, clip_by_l2, local_update_fn, predict_fn
from pipeline.models.server import decode_array, encode_array, server_optimizer, server_step, state_from_json, state_to_json
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring

log = logging.getLogger(__name__)

__all__ = [
    "TRAIN",
    "Train",
    "TrainingPlan",
    "parse_plan",
    "site_key",
    "site_training_arrays",
    "model_record",
    "biomarkers",
]

PHASES = ("keys", "screen", "moments", "train", "evaluate")
MIN_SCALE_BITS = 10
"""Fewer fractional bits than this for the model delta in Z_2^32 and a round uses Z_2^64 instead."""
MIN_METRIC_SCALE_BITS = 4
"""The same for sums of per-sample losses (a 1/32 error on a sum over many samples is harmless)."""
TRAIN_LOSS_CAP = 10.0
"""Largest mean local training loss a site reports (the loss is informational)."""
MAX_SCALE_BITS = 32


class TrainingPlan:
    """The parsed, validated parameters of a training job (public, same at every party)."""

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self.parameters = dict(parameters)
        p = self.parameters
        self.task: str = p["task"]
        self.target: str = p["target"]
        self.covariates: tuple[str, ...] = tuple(p["covariates"])
        self.rounds: int = int(p["rounds"])
        self.clip_norm: float = float(p["clip_norm"])
        self.seed: int = int(p["seed"])
        self.bins: int = int(p["bins"])
        self.max_samples_per_site: int = int(p["max_samples_per_site"])
        self.max_abs_value: float = float(p["max_abs_value"])
        self.holdout_fraction: float = float(p["holdout_fraction"])
        self.model_spec: dict[str, Any] = dict(p["model"])
        self.local_spec: dict[str, Any] = dict(p["local"])
        self.server_spec: dict[str, Any] = dict(p["server"])

    def feature_spec(self, variant_ids: Sequence[str]) -> FeatureSpec:
        return FeatureSpec(tuple(variant_ids), self.covariates, self.target, self.task, self.holdout_fraction, self.seed)

    def model(self, num_features: int) -> ModelConfig:
        return ModelConfig(self.model_spec["kind"], num_features, self.task, tuple(self.model_spec.get("hidden", ())), int(self.model_spec.get("seed", 0)))

    def local(self, num_features: int) -> LocalConfig:
        spec = self.local_spec
        return LocalConfig(
            self.model(num_features), epochs=int(spec["epochs"]), batch_size=spec["batch_size"], optimizer=str(spec["optimizer"]),
            learning_rate=float(spec["learning_rate"]), momentum=float(spec["momentum"]), mu=float(spec["mu"]),
            l1=float(spec["l1"]), l2=float(spec["l2"]),
        )

    def server(self) -> Any:
        spec = self.server_spec
        return server_optimizer(str(spec["optimizer"]), learning_rate=spec.get("learning_rate"), beta1=float(spec["beta1"]),
                                beta2=float(spec["beta2"]), eps=float(spec["eps"]), momentum=float(spec["momentum"]))


_LOCAL_DEFAULTS = {"epochs": 1, "batch_size": 64, "optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0, "mu": 0.0, "l1": 0.0, "l2": 0.0}
_SERVER_DEFAULTS = {"optimizer": "fedavg", "learning_rate": None, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3, "momentum": 0.0}
_TOP_DEFAULTS = {"covariates": [], "rounds": 20, "clip_norm": 10.0, "seed": 0, "bins": evaluation.DEFAULT_BINS,
                 "max_samples_per_site": 1_000_000, "max_abs_value": 1000.0, "holdout_fraction": 0.2}


def _sub(spec: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    given = spec.get(name, {})
    if not isinstance(given, Mapping):
        raise ConfigurationError(f"train: '{name}' must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigurationError(f"train: unknown key(s) {unknown} in '{name}'; expected some of {sorted(defaults)}")
    return {**defaults, **given}


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        raise ConfigurationError(f"train: {name} must be {'an integer' if integer else 'a number'} in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def parse_plan(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a training spec and fills its defaults; returns the JSON parameters.

    Raises:
        ConfigurationError: naming the key, what was expected and what was given.
    """
    known = {"target", "task", "covariates", "features", "model", "local", "server", *_TOP_DEFAULTS}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigurationError(f"train: unknown spec key(s) {unknown}; expected some of {sorted(known)}")
    target = spec.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigurationError("train: the spec needs 'target: COLUMN' (e.g. binary_trait)")
    task = spec.get("task", "binary")
    if task not in ("binary", "quantitative"):
        raise ConfigurationError(f"train: task must be 'binary' or 'quantitative', got {task!r}")
    p: dict[str, Any] = {"target": target, "task": task}
    covariates = spec.get("covariates", [])
    if not isinstance(covariates, list) or not all(isinstance(c, str) and c for c in covariates) or len(set(covariates)) != len(covariates):
        raise ConfigurationError(f"train: covariates must be a list of distinct column names, got {covariates!r}")
    p["covariates"] = list(covariates)
    p["rounds"] = _number(spec.get("rounds", _TOP_DEFAULTS["rounds"]), "rounds", 0, 100_000, integer=True)
    p["clip_norm"] = _number(spec.get("clip_norm", _TOP_DEFAULTS["clip_norm"]), "clip_norm", 1e-6, 1e6)
    p["seed"] = _number(spec.get("seed", 0), "seed", 0, 2**31 - 1, integer=True)
    p["bins"] = _number(spec.get("bins", _TOP_DEFAULTS["bins"]), "bins", 2, 100_000, integer=True)
    p["max_samples_per_site"] = _number(spec.get("max_samples_per_site", _TOP_DEFAULTS["max_samples_per_site"]), "max_samples_per_site", 1, 2**31 - 1, integer=True)
    p["max_abs_value"] = _number(spec.get("max_abs_value", _TOP_DEFAULTS["max_abs_value"]), "max_abs_value", 1.0, 1e9)
    p["holdout_fraction"] = _number(spec.get("holdout_fraction", _TOP_DEFAULTS["holdout_fraction"]), "holdout_fraction", 0.01, 0.9)
    features = spec.get("features", {"variants": "all"})
    if not isinstance(features, Mapping):
        raise ConfigurationError("train: features must be a mapping: {variants: all}, {variants: [IDs]} or {gwas: PATH, top: K}")
    if "gwas" in features:
        top = _number(features.get("top", 50), "features.top", 1, 1_000_000, integer=True)
        p_max = _number(features.get("p_value_max", 1.0), "features.p_value_max", 0.0, 1.0)
        p["features"] = {"variants": top_hits(features["gwas"], top=top, p_value_max=p_max), "source": f"gwas:{features['gwas']}"}
    else:
        unknown_keys = sorted(set(features) - {"variants", "max_variants", "screen_top"})
        if unknown_keys:
            raise ConfigurationError(f"train: unknown key(s) {unknown_keys} in 'features'; expected variants, max_variants, screen_top, or gwas, top, p_value_max")
        variants = features.get("variants", "all")
        max_variants = _number(features.get("max_variants", 20_000), "features.max_variants", 1, 10_000_000, integer=True)
        screen = features.get("screen_top")
        screen_top = None if screen is None else _number(screen, "features.screen_top", 1, 10_000_000, integer=True)
        if variants == "all":
            p["features"] = {"variants": "all", "max_variants": max_variants, "screen_top": screen_top, "source": "union"}
        elif isinstance(variants, list) and all(isinstance(v, str) for v in variants) and len(set(variants)) == len(variants):
            p["features"] = {"variants": list(variants), "screen_top": screen_top, "source": "list"}
        else:
            raise ConfigurationError(f"train: features.variants must be 'all' or a list of distinct variant IDs, got {variants!r}")
    model = _sub(spec, "model", {"kind": "logistic" if task == "binary" else "linear", "hidden": [32], "seed": 0})
    p["model"] = {"kind": model["kind"], "hidden": list(model["hidden"]) if model["kind"] == "mlp" else [], "seed": model["seed"]}
    p["local"] = _sub(spec, "local", _LOCAL_DEFAULTS)
    p["server"] = _sub(spec, "server", _SERVER_DEFAULTS)
    plan = TrainingPlan(p)
    if p["features"]["variants"] != "all" and not p["features"]["variants"] and not p["covariates"]:
        raise ConfigurationError("train: no features: give variants or covariates")
    num_features = 1 if p["features"]["variants"] == "all" else len(p["features"]["variants"]) + len(p["covariates"])
    plan.local(num_features)  # validates the model and the local schedule
    plan.server()
    return p


def _fit_scale_bits(clip: float, num_sites: int, ring: Ring) -> int:
    """Most fractional bits (<= 32) such that ``num_sites`` contributions up to ``clip`` cannot wrap."""
    room = ring.max_signed / (num_sites * (clip + 1.0))
    return min(MAX_SCALE_BITS, int(math.floor(math.log2(room)))) if room >= 1 else -1


def _layout(float_clips: Mapping[str, tuple[tuple[int, ...], float]], int_clips: Mapping[str, tuple[tuple[int, ...], float]],
            num_sites: int, *, prefer: Ring) -> Layout:
    """A layout of float fields (scale chosen per field) and exact integer fields, in ``prefer`` if it fits."""
    for ring in (prefer, Ring.R64) if prefer is Ring.R32 else (Ring.R64,):
        bits = {name: _fit_scale_bits(clip, num_sites, ring) for name, (_, clip) in float_clips.items()}
        needed = {name: (MIN_SCALE_BITS if name == "weighted_delta" else MIN_METRIC_SCALE_BITS) if ring is Ring.R32 else 0 for name in bits}
        if all(bits[name] >= needed[name] for name in bits) and all(
            num_sites * math.ceil(clip) <= ring.max_signed for _, clip in int_clips.values()
        ):
            fields = [Field(name, shape, FixedPoint(ring, bits[name], float(clip))) for name, (shape, clip) in float_clips.items()]
            fields += [Field(name, shape, FixedPoint(ring, 0, float(math.ceil(clip)))) for name, (shape, clip) in int_clips.items()]
            return Layout(tuple(fields))
    raise ConfigurationError(
        f"train: the contributions of {num_sites} sites do not fit a 64-bit secure sum; lower max_samples_per_site, "
        "max_abs_value or clip_norm"
    )


def site_key(seed: int, train_round: int, site: str) -> jax.Array:
    """The PRNG key of a site's local update in a round (same key in the local-only baseline)."""
    site_number = int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), train_round), site_number)


_CACHE: dict[tuple[str, FeatureSpec], SiteData] = {}


def _site_data(dataset: Dataset, spec: FeatureSpec) -> SiteData:
    key = (str(Path(dataset.path).resolve()), spec)
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = read_site_data(dataset, spec)
    return _CACHE[key]


def site_training_arrays(data: SiteData, scaling: Standardization, task: str) -> dict[str, np.ndarray]:
    """Standardized float32 train and held-out arrays of a site (target standardized if quantitative)."""
    features = standardize(data.features, scaling)
    target = data.target if task == "binary" else (data.target - scaling.target_mean) / scaling.target_scale
    target = np.asarray(target, np.float32)
    return {
        "train_x": features[data.train], "train_y": target[data.train],
        "holdout_x": features[data.holdout], "holdout_y": target[data.holdout],
    }


def _eval_shapes(plan: TrainingPlan, n_holdout: int) -> tuple[dict[str, Any], dict[str, Any]]:
    n = float(max(n_holdout, 1))
    if plan.task == "binary":
        floats = {"brier_sum": ((1,), n), "log_loss_sum": ((1,), n * evaluation.LOG_LOSS_CAP)}
        ints = {"hist_case": ((plan.bins,), n), "hist_control": ((plan.bins,), n), "correct": ((1,), n)}
    else:
        floats = {"sse": ((1,), n * evaluation.SQUARED_ERROR_CAP), "target_sum": ((1,), n * 50.0), "target_sumsq": ((1,), n * 2500.0)}
        ints = {"count": ((1,), n)}
    return floats, ints


def _slot(site: str, statistic: str) -> str:
    """The field of ``site``'s own slot in the evaluation layout."""
    return f"site:{site}:{statistic}"


def _site_slot_shapes(plan: TrainingPlan, participants: Sequence[str], n_holdout: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One slot per participant: the evaluation statistics and a 0/1 ``shared`` flag."""
    floats, ints = _eval_shapes(plan, n_holdout)
    slot_floats = {_slot(site, name): shape for site in participants for name, shape in floats.items()}
    slot_ints = {_slot(site, name): shape for site in participants for name, shape in ints.items()}
    slot_ints.update({_slot(site, "shared"): ((1,), 1.0) for site in participants})
    return slot_floats, slot_ints


def _site_slots(plan: TrainingPlan, participants: Sequence[str], n_holdout: int, site: SiteContext,
                stats: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This site's statistics in its own slot if its policy shares them; zeros everywhere else."""
    floats, ints = _eval_shapes(plan, n_holdout)
    out: dict[str, np.ndarray] = {}
    for name in participants:
        own = site.share_site_metrics and name == site.name
        for statistic, (shape, _) in floats.items():
            out[_slot(name, statistic)] = np.asarray(stats[statistic], np.float64).reshape(shape) if own else np.zeros(shape)
        for statistic, (shape, _) in ints.items():
            out[_slot(name, statistic)] = np.asarray(stats[statistic], np.int64).reshape(shape) if own else np.zeros(shape, np.int64)
        out[_slot(name, "shared")] = np.array([int(own)], np.int64)
    return out


def _shared_site_metrics(task: str, participants: Sequence[str], total: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Held-out metrics of the sites whose ``shared`` flag is 1 in the sum (the others are absent).

    Raises:
        ProtocolError: a flag is neither 0 nor 1 (a site filled a slot that is not its own).
    """
    shared: dict[str, dict[str, float]] = {}
    for site in participants:
        flag = int(np.asarray(total[_slot(site, "shared")]).reshape(-1)[0])
        if flag not in (0, 1):
            raise ProtocolError(f"train: the evaluation slot of site {site} has shared flag {flag}; expected 0 or 1")
        if flag == 1:
            prefix = _slot(site, "")
            stats = {name[len(prefix):]: value for name, value in total.items() if name.startswith(prefix)}
            shared[site] = evaluation.metrics(task, stats)
    return shared


def model_record(plan: TrainingPlan, variant_ids: Sequence[str], scaling: Standardization, theta: np.ndarray) -> dict[str, Any]:
    """Everything ``genofed predict`` needs: model config, features, standardization, parameters."""
    return {
        "format": "genofed-model/1",
        "config": plan.model(len(variant_ids) + len(plan.covariates)).to_json(),
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
    config = plan.model(len(variant_ids) + len(plan.covariates))
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


class Train:
    """Federated model training (see the module docstring)."""

    name = "train"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """Parses the spec; the variant list is fixed now, or after the key-union round."""
        parameters = parse_plan(spec)
        variants = parameters["features"]["variants"]
        screening = parameters["features"].get("screen_top") is not None
        return {
            "parameters": parameters,
            "num_participants": len(participants),
            "participants": list(participants),
            "phase": "keys" if variants == "all" else ("screen" if screening else "moments"),
            "variant_ids": None if variants == "all" else list(variants),
            "train_round": 0,
            "history": [],
        }

    # ------------------------------------------------------------------ layouts

    def layout(self, state: Mapping[str, Any], round_index: int) -> RoundLayout:
        """The round's contribution layout, by phase."""
        plan = TrainingPlan(state["parameters"])
        phase = state["phase"]
        sites = int(state["num_participants"])
        if phase == "keys":
            return KeyUnion("variant_id", "variants each site holds at or above its minimum minor allele count (feature union)")
        if phase == "screen":
            v = len(state["variant_ids"])
            n_max = float(plan.max_samples_per_site)
            y_bound = 1.0 if plan.task == "binary" else plan.max_abs_value
            floats = {"x_sum": ((v,), 2 * n_max), "x_sumsq": ((v,), 4 * n_max), "xy_sum": ((v,), 2 * n_max * y_bound),
                      "y_sum": ((v,), n_max * y_bound), "y_sumsq": ((v,), n_max * y_bound**2)}
            return _layout(floats, {"count": ((v,), n_max)}, sites, prefer=Ring.R64)
        if phase == "moments":
            p = len(state["variant_ids"]) + len(plan.covariates)
            n_max = float(plan.max_samples_per_site)
            bound = max(2.0, plan.max_abs_value)
            target_bound = 1.0 if plan.task == "binary" else plan.max_abs_value
            floats = {
                "feature_sum": ((p,), n_max * bound), "feature_sumsq": ((p,), n_max * bound**2),
                "target_sum": ((1,), n_max * target_bound), "target_sumsq": ((1,), n_max * target_bound**2),
            }
            ints = {"feature_count": ((p,), n_max), "n_train": ((1,), n_max), "n_holdout": ((1,), n_max)}
            return _layout(floats, ints, sites, prefer=Ring.R64)
        eval_floats, eval_ints = _eval_shapes(plan, int(state["n_holdout"]))
        if phase == "evaluate":
            # A state stored before per-site slots existed has no participant list: no slots.
            slot_floats, slot_ints = _site_slot_shapes(plan, state.get("participants") or (), int(state["n_holdout"]))
            return _layout({**eval_floats, **slot_floats}, {**eval_ints, **slot_ints}, sites, prefer=Ring.R32)
        n_train = float(state["n_train"])
        size = int(state["params"]["shape"][0])
        floats = {"weighted_delta": ((size,), n_train * plan.clip_norm), "train_loss_sum": ((1,), n_train * TRAIN_LOSS_CAP), **eval_floats}
        ints = {"n_train": ((1,), n_train), "n_clipped": ((1,), 1.0), **eval_ints}
        return _layout(floats, ints, sites, prefer=Ring.R32)

    # ------------------------------------------------------------------ site side

    def site_step(self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's contribution in the current phase (only sums and a clipped model delta).

        Raises:
            PolicyRefusal: fewer usable samples than the site's k, or more than the job allows.
            PhenotypeError: the target or a covariate is missing from the samples table.
        """
        plan = TrainingPlan(state["parameters"])
        phase = state["phase"]
        if phase == "keys":
            return {"variant_id": _variant_keys(dataset, site)}
        spec = plan.feature_spec(state["variant_ids"])
        if phase == "screen":
            # Streams the chunks: the candidates can be every variant of the dataset.
            usable = read_site_data(dataset, plan.feature_spec(())).features.shape[0]
            if usable < site.min_samples:
                raise PolicyRefusal(f"site {site.name}: {usable} samples with {plan.target} and the covariates, fewer than the policy's min_samples {site.min_samples}")
            return screening_statistics(dataset, spec)
        data = _site_data(dataset, spec)
        if data.features.shape[0] < site.min_samples:
            raise PolicyRefusal(f"site {site.name}: {data.features.shape[0]} samples with {plan.target} and the covariates, fewer than the policy's min_samples {site.min_samples}")
        if data.features.shape[0] > plan.max_samples_per_site:
            raise PolicyRefusal(f"site {site.name}: {data.features.shape[0]} samples exceed the job's max_samples_per_site {plan.max_samples_per_site}")
        if phase == "moments":
            observed = np.abs(np.nan_to_num(data.features, nan=0.0))
            covariate_max = float(observed[:, len(spec.variant_ids):].max(initial=0.0))
            target_max = float(np.max(np.abs(data.target), initial=0.0))
            if max(covariate_max, target_max) > plan.max_abs_value:
                raise InputError(
                    f"site {site.name}: a covariate or target value of magnitude {max(covariate_max, target_max):.6g} exceeds the job's "
                    f"max_abs_value {plan.max_abs_value}; rescale the column or raise max_abs_value"
                )
            return moment_statistics(data)
        scaling = Standardization.from_json(state["standardization"])
        arrays = site_training_arrays(data, scaling, plan.task)
        local = plan.local(spec.num_features)
        theta_global = decode_array(state["params"])
        predict = predict_fn(local.model)
        output = np.asarray(predict(theta_global, arrays["holdout_x"]), np.float64)
        stats = evaluation.statistics(plan.task, output, arrays["holdout_y"], bins=plan.bins)
        participants = state.get("participants") or ()
        shares = phase == "evaluate" and site.share_site_metrics and site.name in participants
        log.info("site %s: held-out %s of the global model (%s): %s", site.name, phase,
                 "shared in this site's slot, policy share_site_metrics" if shares else "stays local",
                 {k: round(v, 4) for k, v in evaluation.metrics(plan.task, stats).items()})
        if phase == "evaluate":
            return {**stats, **_site_slots(plan, participants, int(state["n_holdout"]), site, stats)}
        n_train = int(arrays["train_y"].shape[0])
        if n_train == 0:  # every sample held out: the site only evaluates
            return {"weighted_delta": np.zeros(theta_global.size), "train_loss_sum": np.zeros(1), "n_train": np.zeros(1, np.int64),
                    "n_clipped": np.zeros(1, np.int64), **stats}
        update = local_update_fn(local)
        weight = np.ones(n_train, np.float32)
        theta, loss = update(theta_global, arrays["train_x"], arrays["train_y"], weight, site_key(plan.seed, int(state["train_round"]), site.name))
        delta, clipped = clip_by_l2(np.asarray(theta, np.float64) - theta_global, plan.clip_norm)
        return {
            "weighted_delta": n_train * delta,
            "train_loss_sum": np.array([n_train * min(float(loss), TRAIN_LOSS_CAP)]),
            "n_train": np.array([n_train], np.int64),
            "n_clipped": np.array([int(clipped)], np.int64),
            **stats,
        }

    # ------------------------------------------------------------------ coordinator side

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Next phase or round from the sum; the result after the evaluation round."""
        plan = TrainingPlan(state["parameters"])
        phase = state["phase"]
        new = dict(state)
        if phase == "keys":
            union = sorted({str(k) for k in np.asarray(total["variant_id"]).tolist()})
            limit = int(plan.parameters["features"]["max_variants"])
            if not union and not plan.covariates:
                raise InputError("train: no site shared any variant key and there are no covariates; nothing to train on")
            screen_top = plan.parameters["features"].get("screen_top")
            if len(union) > limit and screen_top is None:
                raise ConfigurationError(
                    f"train: the sites share {len(union)} variants, more than features.max_variants {limit}; "
                    "screen them (features: {variants: all, screen_top: K}), select them from a GWAS table "
                    "(features: {gwas: PATH, top: K}) or raise max_variants"
                )
            new.update(variant_ids=union, phase="moments" if screen_top is None else "screen")
            return new, False, None
        if phase == "screen":
            scores = screening_scores(total)
            top = int(plan.parameters["features"]["screen_top"])
            order = np.argsort(-scores, kind="stable")[:top]
            chosen = np.sort(order[scores[order] > 0])
            new.update(variant_ids=[state["variant_ids"][i] for i in chosen], phase="moments",
                       screening={"candidates": len(state["variant_ids"]), "selected": int(chosen.size),
                                  "min_r2_selected": float(scores[chosen].min()) if chosen.size else None})
            return new, False, None
        if phase == "moments":
            scaling = standardization(total, task=plan.task)
            n_train = int(np.asarray(total["n_train"]).reshape(-1)[0])
            n_holdout = int(np.asarray(total["n_holdout"]).reshape(-1)[0])
            if n_train < 2:
                raise InputError(f"train: only {n_train} training samples across the sites; check the target column {plan.target!r}")
            config = plan.model(len(state["variant_ids"]) + len(plan.covariates))
            theta = param_space(config).initial
            optimizer = plan.server()
            new.update(
                standardization=scaling.to_json(), n_train=n_train, n_holdout=n_holdout, params=encode_array(theta),
                server_state=state_to_json(optimizer.init(theta)), phase="train" if plan.rounds > 0 else "evaluate",
            )
            return new, False, None
        metrics = evaluation.metrics(plan.task, total)
        train_round = int(state["train_round"])
        if phase == "train":
            round_samples = float(np.asarray(total["n_train"]).reshape(-1)[0])
            mean_delta = np.asarray(total["weighted_delta"], np.float64) / max(round_samples, 1.0)
            optimizer = plan.server()
            theta = decode_array(state["params"])
            opt_state = state_from_json(optimizer, theta, state["server_state"])
            theta, opt_state = server_step(optimizer, theta, opt_state, mean_delta)
            if not np.all(np.isfinite(theta)):
                raise InputError(f"train: round {train_round + 1} made the model non-finite; lower the learning rates")
            record = {"round": train_round, **metrics, "train_loss": float(np.asarray(total["train_loss_sum"]).reshape(-1)[0]) / max(round_samples, 1.0),
                      "num_sites": int(num_sites), "clipped_sites": int(np.asarray(total["n_clipped"]).reshape(-1)[0])}
            new.update(params=encode_array(theta), server_state=state_to_json(opt_state), train_round=train_round + 1,
                       history=[*state["history"], record], phase="train" if train_round + 1 < plan.rounds else "evaluate")
            return new, False, None
        history = [*state["history"], {"round": train_round, **metrics, "num_sites": int(num_sites)}]
        site_metrics = _shared_site_metrics(plan.task, state.get("participants") or (), total)
        variant_ids = state["variant_ids"]
        scaling = Standardization.from_json(state["standardization"])
        theta = decode_array(state["params"])
        tables = {"history": pa.Table.from_pylist(history)}
        markers = biomarkers(plan, variant_ids, scaling, theta)
        if markers is not None:
            tables["biomarkers"] = markers
        summary = {
            "analysis": self.name,
            "num_sites": int(num_sites),
            "task": plan.task,
            "target": plan.target,
            "metrics": metrics,
            "site_metrics": site_metrics,
            "primary_metric": evaluation.PRIMARY_METRIC[plan.task],
            "n_train": int(state["n_train"]),
            "n_holdout": int(state["n_holdout"]),
            "num_features": len(variant_ids) + len(plan.covariates),
            "num_params": int(theta.size),
            "screening": state.get("screening"),
            "history": history,
            "model": model_record(plan, variant_ids, scaling, theta),
            "parameters": plan.parameters,
            "disclosure": (
                "the coordinator learned only sums: feature moments, sample-weighted clipped model deltas and held-out "
                "score histograms over the included sites"
                + ("; the key round revealed which variant IDs each site holds" if plan.parameters["features"]["variants"] == "all" else "")
                + ("; the screening round revealed each candidate variant's pooled marginal association with the target"
                   if plan.parameters["features"].get("screen_top") is not None else "")
                + (f"; sites {', '.join(sorted(site_metrics))} shared their own held-out statistics (policy share_site_metrics)"
                   if site_metrics else "")
            ),
        }
        new["history"] = history
        return new, True, Result(summary=summary, tables=tables)

    def site_finish(self, state: Mapping[str, Any], dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, str] | None:
        """At the site, after the job: the final model and its metrics on this site's held-out split.

        Writes ``out_dir/model.json`` (for ``genofed predict``) and ``out_dir/site_metrics.json``.
        The metrics stay here unless the site's policy says ``share_site_metrics``, in
        which case the final evaluation round also sent them in this site's slot.

        Returns:
            The paths written, or ``None`` when ``state`` is not the final evaluation's.
        """
        if state.get("phase") != "evaluate":
            return None
        import json

        from pipeline import outputs
        from pipeline.models.checkpoint import save_model

        plan = TrainingPlan(state["parameters"])
        spec = plan.feature_spec(state["variant_ids"])
        scaling = Standardization.from_json(state["standardization"])
        arrays = site_training_arrays(_site_data(dataset, spec), scaling, plan.task)
        theta = decode_array(state["params"])
        output = np.asarray(predict_fn(plan.model(spec.num_features))(theta, arrays["holdout_x"]), np.float64)
        metrics = evaluation.metrics(plan.task, evaluation.statistics(plan.task, output, arrays["holdout_y"], bins=plan.bins))
        target = Path(out_dir)
        target.mkdir(parents=True, exist_ok=True)
        model_path = save_model(model_record(plan, state["variant_ids"], scaling, theta), target / "model.json", force=True)
        report = {"site": site.name, "target": plan.target, "task": plan.task, "held_out_metrics": metrics,
                  "n_train": int(arrays["train_y"].shape[0]), "n_holdout": int(arrays["holdout_y"].shape[0]),
                  "disclosure": "computed at this site from its own held-out split; "
                                + ("also sent to the coordinator in this site's slot of the final evaluation (policy share_site_metrics)"
                                   if site.share_site_metrics else "not sent to the coordinator")}
        with outputs.atomic_file(target / "site_metrics.json", force=True) as tmp:
            tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        return {"model": str(model_path), "site_metrics": str(target / "site_metrics.json")}

    def simulation_baselines(self, spec: Mapping[str, Any], datasets: Sequence[Path], out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Local-only and pooled baselines next to the federated result (all data on one machine)."""
        from pipeline.models.report import simulation_baselines

        return simulation_baselines(spec, datasets, out_dir, summary)


def _variant_keys(dataset: Dataset, site: SiteContext) -> np.ndarray:
    if not site.share_variant_keys:
        return np.array([], dtype=str)
    from pipeline.analyses.census import minor_allele_count
    from pipeline.stats.counts import count_block

    kept: list[np.ndarray] = []
    for block in dataset.iter_blocks():
        counts, _ = count_block(block.call_dosage)
        minor = minor_allele_count(np.asarray(counts.n_hom_ref), np.asarray(counts.n_het), np.asarray(counts.n_hom_alt))
        ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=object)
        kept.append(ids[minor >= max(site.min_allele_count, 1)])
    keys = np.concatenate(kept) if kept else np.array([], dtype=object)
    return np.unique(keys.astype(str))


TRAIN = Train()
