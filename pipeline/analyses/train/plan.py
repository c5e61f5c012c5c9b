"""The parameters of a training job: parsed once at the coordinator, then public and typed.

A training spec (``workflows/train.yaml``) is checked against one :class:`~pipeline.parameters.Param`
table per mapping (:data:`PARAMS` for the top level, :data:`FEATURE_PARAMS`,
:data:`MODEL_PARAMS`, :data:`LOCAL_PARAMS`, :data:`SERVER_PARAMS` for the nested ones),
so a typo fails when the job is submitted, naming the key. The result is a frozen
:class:`TrainingPlan` that every phase's state carries; its :meth:`TrainingPlan.to_json`
is the ``parameters`` of the job's result summary.

The feature selection is resolved here: ``features: {gwas: PATH, top: K}`` reads the
GWAS table at the coordinator when the job starts, and the plan keeps the variant list
it chose (the sites never read that file).

A ``privacy`` block (:func:`pipeline.privacy.privacy_terms`) makes the job differentially
private (:mod:`.privacy`). Only what can be noised is accepted then: the features are
given (a variant list or a GWAS table; the key union and the screening would release
which variants a site holds and their exact associations), and every round is one
full-batch gradient step (``local: {epochs: 1}``, no ``batch_size``), whose per-example
gradients are clipped to ``clip_norm``. The score histograms default to
:data:`PRIVATE_BINS` bins (each bin gets its own noise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optax

from pipeline.errors import ConfigurationError
from pipeline.models import MODEL_KINDS, ModelConfig, evaluation
from pipeline.models.features import FeatureSpec, top_hits
from pipeline.models.local_update import LOCAL_OPTIMIZERS, LocalConfig
from pipeline.models.server_optimizers import SERVER_OPTIMIZERS, server_optimizer
from pipeline.parameters import (
    REQUIRED,
    Param,
    choice,
    integer,
    mapping,
    names,
    number,
    optional,
    parse_params,
)
from pipeline.privacy import PrivacyTerms, privacy_terms

__all__ = [
    "PARAMS",
    "FEATURE_PARAMS",
    "MODEL_PARAMS",
    "LOCAL_PARAMS",
    "SERVER_PARAMS",
    "FeatureSelection",
    "ModelSpec",
    "LocalSpec",
    "ServerSpec",
    "TrainingPlan",
    "PRIVATE_BINS",
]

PRIVATE_BINS = 10
"""Score histogram bins of a differentially private job's evaluation, unless the spec says ``bins``."""


def _column(value: Any) -> str:
    """A column name of the samples table."""
    if not isinstance(value, str) or not value:
        raise ValueError("a column of the samples table (e.g. binary_trait)")
    return value


def _variants(value: Any) -> str | list[str]:
    """``all`` or a list of distinct variant IDs."""
    if value == "all":
        return "all"
    try:
        return names(value)
    except ValueError:
        raise ValueError("'all' or a list of distinct variant IDs") from None


def _path(value: Any) -> str:
    """A path to a GWAS result table."""
    if not isinstance(value, str) or not value:
        raise ValueError("the path of a GWAS result table (Parquet or TSV)")
    return value


def _layer_widths(value: Any) -> list[int]:
    """Hidden layer widths of an MLP."""
    if not isinstance(value, list) or not value or not all(
        isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= 1_000_000 for h in value
    ):
        raise ValueError("a non-empty list of layer widths in [1, 1000000] (e.g. [32])")
    return list(value)


PARAMS = {
    "target": Param(REQUIRED, _column),
    "task": Param("binary", choice("binary", "quantitative")),
    "covariates": Param([], names),
    "features": Param({"variants": "all"}, mapping),
    "model": Param({}, mapping),
    "local": Param({}, mapping),
    "server": Param({}, mapping),
    "rounds": Param(20, integer(0, 100_000)),
    "clip_norm": Param(10.0, number(1e-6, 1e6)),
    "seed": Param(0, integer(0, 2**31 - 1)),
    "bins": Param(evaluation.DEFAULT_BINS, integer(2, 100_000)),
    "max_samples_per_site": Param(1_000_000, integer(1, 2**31 - 1)),
    "max_abs_value": Param(1000.0, number(1.0, 1e9)),
    "holdout_fraction": Param(0.2, number(0.01, 0.9)),
    "privacy": Param(None, lambda value: None if value is None else privacy_terms(value)),
}
"""The top-level keys of a training spec, their defaults and checks."""

FEATURE_PARAMS = {
    "variants": Param("all", _variants),
    "max_variants": Param(20_000, integer(1, 10_000_000)),
    "screen_top": Param(None, optional(integer(1, 10_000_000))),
    "gwas": Param(None, optional(_path)),
    "top": Param(50, integer(1, 1_000_000)),
    "p_value_max": Param(1.0, number(0.0, 1.0)),
}
"""``features``: ``{variants: all|[IDs], max_variants, screen_top}`` or ``{gwas: PATH, top, p_value_max}``."""

MODEL_PARAMS = {
    "kind": Param(None, optional(choice(*MODEL_KINDS))),
    "hidden": Param([32], _layer_widths),
    "seed": Param(0, integer(0, 2**31 - 1)),
}
"""``model``: the kind (default: logistic for a binary task, linear for a quantitative one)."""

LOCAL_PARAMS = {
    "epochs": Param(1, integer(1, 100_000)),
    "batch_size": Param(64, optional(integer(1, 2**31 - 1))),
    "optimizer": Param("sgd", choice(*LOCAL_OPTIMIZERS)),
    "learning_rate": Param(0.1, number(1e-12, 1e6)),
    "momentum": Param(0.0, number(0.0, 1.0)),
    "mu": Param(0.0, number(0.0, 1e6)),
    "l1": Param(0.0, number(0.0, 1e6)),
    "l2": Param(0.0, number(0.0, 1e6)),
}
"""``local``: the schedule of every site's local update (:class:`~pipeline.models.local_update.LocalConfig`)."""

SERVER_PARAMS = {
    "optimizer": Param("fedavg", choice(*SERVER_OPTIMIZERS)),
    "learning_rate": Param(None, optional(number(1e-12, 1e6))),
    "beta1": Param(0.9, number(0.0, 1.0)),
    "beta2": Param(0.99, number(0.0, 1.0)),
    "eps": Param(1e-3, number(0.0, 1e6)),
    "momentum": Param(0.0, number(0.0, 1.0)),
}
"""``server``: the server optimizer (:func:`~pipeline.models.server_optimizers.server_optimizer`)."""

_UNION_KEYS = ("variants", "max_variants", "screen_top")
_GWAS_KEYS = ("gwas", "top", "p_value_max")


@dataclass(frozen=True)
class FeatureSelection:
    """Which variants are features.

    Attributes:
        variant_ids: the given or GWAS-chosen variants; ``None`` for every variant the
            sites share (the key-union phase finds them).
        source: ``union``, ``list`` or ``gwas:PATH``.
        max_variants: (union) the largest union accepted without screening.
        screen_top: keep only this many variants, the most associated with the target
            (the screening phase); ``None``: no screening.
    """

    variant_ids: tuple[str, ...] | None
    source: str
    max_variants: int | None = None
    screen_top: int | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> FeatureSelection:
        """Checks ``features`` and resolves a GWAS selection (reads the table).

        Raises:
            ConfigurationError: an unknown or wrong key, keys of both kinds of selection,
                or a GWAS table where no variant passes.
            InputError: an unreadable GWAS table.
        """
        p = parse_params(spec, FEATURE_PARAMS, where="train.features")
        if p["gwas"] is not None:
            mixed = sorted(key for key in _UNION_KEYS if key in spec)
            if mixed:
                raise ConfigurationError(
                    f"train.features: gwas selects the variants; drop {mixed} (or drop gwas and give variants)"
                )
            chosen = top_hits(p["gwas"], top=p["top"], p_value_max=p["p_value_max"])
            return cls(tuple(chosen), f"gwas:{p['gwas']}")
        stray = sorted(key for key in _GWAS_KEYS if key in spec)
        if stray:
            raise ConfigurationError(f"train.features: {stray} go with gwas: PATH (the top hits of a GWAS table)")
        if p["variants"] == "all":
            return cls(None, "union", p["max_variants"], p["screen_top"])
        return cls(tuple(p["variants"]), "list", None, p["screen_top"])

    def to_json(self) -> dict[str, Any]:
        if self.variant_ids is None:
            return {"variants": "all", "max_variants": self.max_variants, "screen_top": self.screen_top, "source": self.source}
        if self.source == "list":
            return {"variants": list(self.variant_ids), "screen_top": self.screen_top, "source": self.source}
        return {"variants": list(self.variant_ids), "source": self.source}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSelection:
        variants = data["variants"]
        max_variants = data.get("max_variants")
        screen_top = data.get("screen_top")
        return cls(
            None if variants == "all" else tuple(str(v) for v in variants), str(data["source"]),
            None if max_variants is None else int(max_variants), None if screen_top is None else int(screen_top),
        )


@dataclass(frozen=True)
class ModelSpec:
    """The model's kind, hidden layer widths (an MLP's only) and initialization seed."""

    kind: str
    hidden: tuple[int, ...]
    seed: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, task: str) -> ModelSpec:
        p = parse_params(spec, MODEL_PARAMS, where="train.model")
        kind = p["kind"] or ("logistic" if task == "binary" else "linear")
        return cls(kind, tuple(p["hidden"]) if kind == "mlp" else (), p["seed"])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": list(self.hidden), "seed": self.seed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(str(data["kind"]), tuple(int(h) for h in data["hidden"]), int(data["seed"]))


@dataclass(frozen=True)
class LocalSpec:
    """The local update's schedule (see :data:`LOCAL_PARAMS`)."""

    epochs: int
    batch_size: int | None
    optimizer: str
    learning_rate: float
    momentum: float
    mu: float
    l1: float
    l2: float

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> LocalSpec:
        return cls(**parse_params(spec, LOCAL_PARAMS, where="train.local"))

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "optimizer": self.optimizer,
                "learning_rate": self.learning_rate, "momentum": self.momentum, "mu": self.mu, "l1": self.l1, "l2": self.l2}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalSpec:
        batch = data["batch_size"]
        return cls(int(data["epochs"]), None if batch is None else int(batch), str(data["optimizer"]),
                   float(data["learning_rate"]), float(data["momentum"]), float(data["mu"]), float(data["l1"]), float(data["l2"]))


@dataclass(frozen=True)
class ServerSpec:
    """The server optimizer (see :data:`SERVER_PARAMS`); ``learning_rate`` ``None`` is its default."""

    optimizer: str
    learning_rate: float | None
    beta1: float
    beta2: float
    eps: float
    momentum: float

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> ServerSpec:
        return cls(**parse_params(spec, SERVER_PARAMS, where="train.server"))

    def to_json(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "learning_rate": self.learning_rate, "beta1": self.beta1,
                "beta2": self.beta2, "eps": self.eps, "momentum": self.momentum}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerSpec:
        rate = data["learning_rate"]
        return cls(str(data["optimizer"]), None if rate is None else float(rate), float(data["beta1"]),
                   float(data["beta2"]), float(data["eps"]), float(data["momentum"]))


@dataclass(frozen=True)
class TrainingPlan:
    """The parsed, validated parameters of a training job (public, the same at every party).

    Attributes:
        target: the samples-table column to predict.
        task: ``binary`` or ``quantitative``.
        covariates: sample-table columns used as features after the variants.
        rounds: T, the training rounds (0: evaluate the initial model only).
        clip_norm: the L2 clip of each site's model delta.
        seed: seed of the train / held-out split and of the local updates' shuffling.
        bins: score histogram bins of the binary metrics (AUC).
        max_samples_per_site: the bound of a site's sample count in every layout.
        max_abs_value: the bound of a raw covariate or quantitative target value (sites clip beyond it).
        holdout_fraction: each site's held-out fraction.
        features: the feature selection.
        model_spec: the model.
        local_spec: the local update's schedule.
        server_spec: the server optimizer.
        privacy: the job's differential-privacy terms; ``None``: exact sums.
    """

    target: str
    task: str
    covariates: tuple[str, ...]
    rounds: int
    clip_norm: float
    seed: int
    bins: int
    max_samples_per_site: int
    max_abs_value: float
    holdout_fraction: float
    features: FeatureSelection
    model_spec: ModelSpec
    local_spec: LocalSpec
    server_spec: ServerSpec
    privacy: PrivacyTerms | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> TrainingPlan:
        """Checks a training spec and fills its defaults (reads a GWAS table if the features name one).

        Raises:
            ConfigurationError: naming the key, what was expected and what was given.
        """
        p = parse_params(spec, PARAMS, where="train")
        plan = cls(
            target=p["target"], task=p["task"], covariates=tuple(p["covariates"]), rounds=p["rounds"],
            clip_norm=p["clip_norm"], seed=p["seed"], bins=p["bins"], max_samples_per_site=p["max_samples_per_site"],
            max_abs_value=p["max_abs_value"], holdout_fraction=p["holdout_fraction"],
            features=FeatureSelection.parse(p["features"]), model_spec=ModelSpec.parse(p["model"], task=p["task"]),
            local_spec=LocalSpec.parse(p["local"]), server_spec=ServerSpec.parse(p["server"]), privacy=p["privacy"],
        )
        if plan.privacy is not None:
            plan = _private(plan, spec)
        variants = plan.features.variant_ids
        if variants is not None and not variants and not plan.covariates:
            raise ConfigurationError("train: no features: give variants or covariates")
        plan.local(1 if variants is None else len(variants) + len(plan.covariates))  # validates the model and the schedule
        plan.server()
        return plan

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON: the ``parameters`` of the job's result summary."""
        return {
            "target": self.target, "task": self.task, "covariates": list(self.covariates), "rounds": self.rounds,
            "clip_norm": self.clip_norm, "seed": self.seed, "bins": self.bins, "max_samples_per_site": self.max_samples_per_site,
            "max_abs_value": self.max_abs_value, "holdout_fraction": self.holdout_fraction, "features": self.features.to_json(),
            "model": self.model_spec.to_json(), "local": self.local_spec.to_json(), "server": self.server_spec.to_json(),
            **({} if self.privacy is None else {"privacy": self.privacy.to_json()}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingPlan:
        """The plan :meth:`to_json` wrote (a stored state, or a result's ``parameters``)."""
        return cls(
            target=str(data["target"]), task=str(data["task"]), covariates=tuple(str(c) for c in data["covariates"]),
            rounds=int(data["rounds"]), clip_norm=float(data["clip_norm"]), seed=int(data["seed"]), bins=int(data["bins"]),
            max_samples_per_site=int(data["max_samples_per_site"]), max_abs_value=float(data["max_abs_value"]),
            holdout_fraction=float(data["holdout_fraction"]), features=FeatureSelection.from_json(data["features"]),
            model_spec=ModelSpec.from_json(data["model"]), local_spec=LocalSpec.from_json(data["local"]),
            server_spec=ServerSpec.from_json(data["server"]),
            privacy=None if data.get("privacy") is None else PrivacyTerms.from_json(data["privacy"]),
        )

    def num_features(self, variant_ids: Sequence[str]) -> int:
        """Width of the feature matrix: the variants, then the covariates."""
        return len(variant_ids) + len(self.covariates)

    def feature_spec(self, variant_ids: Sequence[str]) -> FeatureSpec:
        """Which columns a site reads, and its train / held-out split."""
        return FeatureSpec(tuple(variant_ids), self.covariates, self.target, self.task, self.holdout_fraction, self.seed)

    def model(self, num_features: int) -> ModelConfig:
        """The model over ``num_features`` standardized features."""
        spec = self.model_spec
        return ModelConfig(spec.kind, num_features, self.task, spec.hidden, spec.seed)

    def local(self, num_features: int) -> LocalConfig:
        """The local update's configuration (raises ``ConfigurationError`` if the model does not fit the task)."""
        spec = self.local_spec
        return LocalConfig(
            self.model(num_features), epochs=spec.epochs, batch_size=spec.batch_size, optimizer=spec.optimizer,
            learning_rate=spec.learning_rate, momentum=spec.momentum, mu=spec.mu, l1=spec.l1, l2=spec.l2,
        )

    def server(self) -> optax.GradientTransformation:
        """The server optimizer, an optax transformation of the pseudo-gradient."""
        spec = self.server_spec
        return server_optimizer(spec.optimizer, learning_rate=spec.learning_rate, beta1=spec.beta1, beta2=spec.beta2,
                                eps=spec.eps, momentum=spec.momentum)


def _private(plan: TrainingPlan, spec: Mapping[str, Any]) -> TrainingPlan:
    """The plan of a differentially private job, or the reason it cannot be one.

    Raises:
        ConfigurationError: a feature selection or local schedule whose releases the
            noise does not cover, naming the key and what to give instead.
    """
    if plan.features.variant_ids is None:
        raise ConfigurationError(
            "train: with privacy, features: {variants: all} is not supported: its key round reveals which variants "
            "each site holds, outside the differential-privacy guarantee; list the variants "
            "(features: {variants: [IDs]}) or take them from a GWAS table (features: {gwas: PATH, top: K})"
        )
    if plan.features.screen_top is not None:
        raise ConfigurationError(
            "train: with privacy, features.screen_top is not supported: the screening round releases each candidate's "
            "exact association with the target; drop screen_top (list fewer variants, or select them with "
            "features: {gwas: PATH, top: K})"
        )
    local = spec.get("local") or {}
    if plan.local_spec.epochs != 1 or local.get("batch_size") is not None:
        raise ConfigurationError(
            "train: with privacy, each round is one full-batch gradient step over each site's training split, with "
            "per-example gradients clipped to clip_norm (DP-FedSGD); set local: {epochs: 1} and drop local.batch_size "
            f"(got epochs {plan.local_spec.epochs}, batch_size {local.get('batch_size')!r})"
        )
    bins = plan.bins if "bins" in spec else PRIVATE_BINS
    return dataclasses.replace(plan, bins=bins, local_spec=dataclasses.replace(plan.local_spec, batch_size=None))
