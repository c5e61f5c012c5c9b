"""Biomarker models for federated training: flax nnx modules as flat parameter vectors.

A model is described by a :class:`ModelConfig` (JSON-serializable, part of a job's
public state) and built with :func:`build_model`. The boundary to pure functions is
``graphdef, params = nnx.split(model, nnx.Param)``; training, transport and
aggregation only see ``params`` flattened into one float32 vector (:class:`ParamSpace`),
so a model delta is a plain vector that fits a secure-sum layout. Data and per-sample
values never leave a site: only parameter vectors do.

Models (:mod:`.linear`, :mod:`.mlp`):

* ``linear``: a linear model of a quantitative trait (squared error);
* ``logistic``: sparse logistic regression (elastic net) for a binary trait;
* ``mlp``: a small multilayer perceptron for either kind of trait.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree

from pipeline.errors import ConfigurationError
from pipeline.models.linear import LinearModel
from pipeline.models.mlp import MLP

__all__ = ["ModelConfig", "ParamSpace", "build_model", "param_space", "TASKS", "MODEL_KINDS"]

Task = Literal["binary", "quantitative"]
TASKS = ("binary", "quantitative")
MODEL_KINDS = ("linear", "logistic", "mlp")


@dataclass(frozen=True)
class ModelConfig:
    """What model to build: kind, input width, hidden widths, task and init seed.

    Attributes:
        kind: ``linear`` (quantitative), ``logistic`` (binary) or ``mlp`` (either).
        num_features: width of the standardized feature matrix.
        task: ``binary`` (outputs a logit) or ``quantitative`` (outputs a value).
        hidden: hidden layer widths of an ``mlp``.
        seed: seed of the initial parameters (every party builds the same model).
    """

    kind: str
    num_features: int
    task: str
    hidden: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigurationError(f"model kind must be one of {list(MODEL_KINDS)}, got {self.kind!r}")
        if self.task not in TASKS:
            raise ConfigurationError(f"model task must be one of {list(TASKS)}, got {self.task!r}")
        if self.kind == "linear" and self.task != "quantitative":
            raise ConfigurationError("model kind 'linear' fits a quantitative trait; use 'logistic' for a binary one")
        if self.kind == "logistic" and self.task != "binary":
            raise ConfigurationError("model kind 'logistic' fits a binary trait; use 'linear' for a quantitative one")
        if isinstance(self.num_features, bool) or not isinstance(self.num_features, int) or self.num_features < 1:
            raise ConfigurationError(f"num_features must be a positive integer, got {self.num_features!r}")
        hidden = tuple(int(h) for h in self.hidden)
        if self.kind == "mlp" and (not hidden or min(hidden) < 1):
            raise ConfigurationError(f"an mlp needs hidden layer widths >= 1 (e.g. hidden: [32]), got {list(self.hidden)}")
        object.__setattr__(self, "hidden", hidden if self.kind == "mlp" else ())

    def to_json(self) -> dict[str, Any]:
        """The config as a JSON mapping (stored in job states and model files)."""
        return {"kind": self.kind, "num_features": self.num_features, "task": self.task, "hidden": list(self.hidden), "seed": self.seed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        return cls(str(data["kind"]), int(data["num_features"]), str(data["task"]), tuple(data.get("hidden", ())), int(data.get("seed", 0)))


def build_model(config: ModelConfig) -> nnx.Module:
    """A freshly initialized model (deterministic in ``config.seed``)."""
    rngs = nnx.Rngs(config.seed)
    if config.kind == "mlp":
        return MLP(config.num_features, config.hidden, rngs=rngs)
    return LinearModel(config.num_features, rngs=rngs)


@dataclass(frozen=True, eq=False)
class ParamSpace:
    """A model's parameters as one float32 vector, and the way back to a module.

    Attributes:
        graphdef: the module's structure (``nnx.split``); never leaves a party.
        initial: (num_params,) float32, the initial parameters.
        unravel: flat vector -> ``nnx.State`` of the parameters.
        kernel_mask: (num_params,) float32, 1 where a parameter is a weight (kernel),
            0 for biases: penalties (L1, L2) apply to weights only.
        first_kernel: (num_params,) int32, the input feature of each first-layer weight,
            -1 elsewhere (to read per-feature coefficients of a linear model).
    """

    graphdef: Any
    initial: np.ndarray
    unravel: Any
    kernel_mask: np.ndarray
    first_kernel: np.ndarray

    @property
    def size(self) -> int:
        return int(self.initial.size)

    def module(self, flat: jax.Array) -> nnx.Module:
        """The module with parameters ``flat`` (usable inside ``jax.jit``)."""
        return nnx.merge(self.graphdef, self.unravel(flat))

    def apply(self, flat: jax.Array, features: jax.Array) -> jax.Array:
        """Model outputs (logits or values), shape (samples,)."""
        return self.module(flat)(features)


_SPACES: dict[ModelConfig, ParamSpace] = {}


def param_space(config: ModelConfig) -> ParamSpace:
    """The :class:`ParamSpace` of ``config`` (cached: the same object for the same config)."""
    if config in _SPACES:
        return _SPACES[config]
    model = build_model(config)
    graphdef, params = nnx.split(model, nnx.Param)
    flat, unravel = ravel_pytree(params)

    def marker(path: tuple[Any, ...], leaf: Any) -> Any:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        return jnp.full(jnp.shape(leaf), 1.0 if "kernel" in names else 0.0, jnp.float32)

    kernel_mask, _ = ravel_pytree(jax.tree_util.tree_map_with_path(marker, params))
    first_kernel = np.full(flat.size, -1, np.int32)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    offset = 0
    first_seen = False
    for path, leaf in leaves:
        size = int(np.prod(np.shape(leaf)))
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if "kernel" in names and not first_seen and np.shape(leaf)[0] == config.num_features:
            rows = np.repeat(np.arange(config.num_features, dtype=np.int32), np.shape(leaf)[1])
            first_kernel[offset : offset + size] = rows
            first_seen = True
        offset += size
    space = ParamSpace(graphdef, np.asarray(flat, np.float32), unravel, np.asarray(kernel_mask, np.float32), first_kernel)
    _SPACES[config] = space
    return space
