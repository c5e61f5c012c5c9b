"""The local update a site runs each round: E epochs of minibatch optax steps, one jit.

``local_update(theta_global, features, target, weight, key) -> (theta_local, mean_loss)``
is one jitted function per :class:`LocalConfig`: epochs and minibatches are
``lax.scan`` loops, the PRNG key is an argument (it shuffles the minibatches), and
nothing in the signature changes from round to round, so round 2 reuses round 1's
compilation. The optimizer state starts fresh every round (clients are stateless
between rounds, as in FedAvg).

The loss of a minibatch is the weighted mean per-sample loss (binary cross-entropy on
logits, or half the squared error), plus ``l2/2 * |w|^2`` on the weights (not biases),
plus the FedProx term ``mu/2 * |theta - theta_global|^2``. With ``l1 > 0`` every
optimizer step is followed by the L1 proximal step (soft thresholding of the weights by
``learning_rate * l1``): proximal gradient descent for the elastic net, which leaves
coefficients at exactly zero.

Rows with ``weight == 0`` are padding: they count for nothing, so a site's arrays can
be padded to any size without changing its update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline.errors import ConfigurationError
from pipeline.models import ModelConfig, ParamSpace, param_space

__all__ = [
    "LocalConfig",
    "LOCAL_OPTIMIZERS",
    "local_optimizer",
    "local_update_fn",
    "predict_fn",
    "per_sample_loss",
    "soft_threshold",
    "clip_by_l2",
    "trace_count",
]

LOCAL_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class LocalConfig:
    """The local training schedule: identical at every site of a job.

    Attributes:
        model: the model.
        epochs: E, passes over the site's training split per round.
        batch_size: minibatch size; ``None`` for full-batch gradient steps.
        optimizer: ``sgd`` (with optional momentum) or ``adam``.
        learning_rate: the local step size.
        momentum: SGD momentum (0: plain gradient descent).
        mu: FedProx proximal coefficient (0: FedAvg's plain local objective).
        l1: elastic-net L1 strength (proximal step on the weights).
        l2: elastic-net L2 strength (in the loss, on the weights).
    """

    model: ModelConfig
    epochs: int = 1
    batch_size: int | None = None
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.0
    mu: float = 0.0
    l1: float = 0.0
    l2: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigurationError(f"local epochs must be a positive integer, got {self.epochs!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigurationError(f"batch_size must be a positive integer or null (full batch), got {self.batch_size!r}")
        if self.optimizer not in LOCAL_OPTIMIZERS:
            raise ConfigurationError(f"local optimizer must be one of {list(LOCAL_OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("learning_rate", "momentum", "mu", "l1", "l2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"local {name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate <= 0:
            raise ConfigurationError(f"local learning_rate must be > 0, got {self.learning_rate!r}")


def local_optimizer(config: LocalConfig) -> optax.GradientTransformation:
    """The optax optimizer of the local steps."""
    if config.optimizer == "adam":
        return optax.adam(config.learning_rate)
    return optax.sgd(config.learning_rate, momentum=config.momentum or None)


def soft_threshold(theta: jax.Array, threshold: jax.Array | float, mask: jax.Array) -> jax.Array:
    """The L1 proximal step: shrinks masked entries toward zero by ``threshold``, to exactly zero."""
    shrunk = jnp.sign(theta) * jnp.maximum(jnp.abs(theta) - threshold, 0.0)
    return jnp.where(mask > 0, shrunk, theta)


def clip_by_l2(delta: np.ndarray, max_norm: float) -> tuple[np.ndarray, bool]:
    """Scales ``delta`` down to L2 norm ``max_norm`` if longer; returns (delta, was_clipped).

    Applied to a site's model delta before encoding, so every coordinate is at most
    ``max_norm`` in absolute value and the fixed-point clip is never reached.
    """
    delta = np.asarray(delta, np.float64)
    norm = float(np.linalg.norm(delta))
    if norm > max_norm > 0:
        return delta * (max_norm / norm), True
    return delta, False


def per_sample_loss(task: str, outputs: jax.Array, target: jax.Array) -> jax.Array:
    """Binary cross-entropy on logits, or half the squared error, per sample."""
    if task == "binary":
        return optax.sigmoid_binary_cross_entropy(outputs, target)
    return 0.5 * jnp.square(outputs - target)


_TRACES: dict[LocalConfig, int] = {}


def trace_count(config: LocalConfig) -> int:
    """How many times the local update of ``config`` was traced (compiled) in this process."""
    return _TRACES.get(config, 0)


def _objective(space: ParamSpace, config: LocalConfig) -> Callable[..., jax.Array]:
    kernel = jnp.asarray(space.kernel_mask)
    task = config.model.task

    def objective(theta: jax.Array, theta_global: jax.Array, features: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
        losses = per_sample_loss(task, space.apply(theta, features), target)
        data = jnp.sum(weight * losses) / jnp.maximum(jnp.sum(weight), 1.0)
        ridge = 0.5 * config.l2 * jnp.sum(kernel * jnp.square(theta))
        proximal = 0.5 * config.mu * jnp.sum(jnp.square(theta - theta_global))
        return data + ridge + proximal

    return objective


_UPDATES: dict[LocalConfig, Any] = {}


def local_update_fn(config: LocalConfig) -> Callable[..., Any]:
    """The jitted local update of ``config`` (one function per config, shared in the process).

    Returns:
        ``update(theta_global (P,), features (n, p), target (n,), weight (n,), key)
        -> (theta_local (P,), mean minibatch loss)``.
    """
    if config in _UPDATES:
        return _UPDATES[config]  # type: ignore[no-any-return]
    space = param_space(config.model)
    optimizer = local_optimizer(config)
    objective = _objective(space, config)
    grad = jax.value_and_grad(objective)
    kernel = jnp.asarray(space.kernel_mask)
    threshold = config.learning_rate * config.l1

    def update(theta_global: jax.Array, features: jax.Array, target: jax.Array, weight: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        _TRACES[config] = _TRACES.get(config, 0) + 1
        num_samples = features.shape[0]
        batch = num_samples if config.batch_size is None else min(config.batch_size, num_samples)
        num_batches = -(-num_samples // batch)
        padded = num_batches * batch
        pad = padded - num_samples
        features_p = jnp.pad(features, ((0, pad), (0, 0)))
        target_p = jnp.pad(target, (0, pad))
        weight_p = jnp.pad(weight, (0, pad))

        def step(carry: tuple[jax.Array, Any], minibatch: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, Any], jax.Array]:
            theta, opt_state = carry
            x, y, w = minibatch
            loss, gradient = grad(theta, theta_global, x, y, w)
            updates, opt_state = optimizer.update(gradient, opt_state, theta)
            theta = optax.apply_updates(theta, updates)
            if threshold > 0:
                theta = soft_threshold(theta, threshold, kernel)
            return (theta, opt_state), loss

        def epoch(carry: tuple[jax.Array, Any], epoch_key: jax.Array) -> tuple[tuple[jax.Array, Any], jax.Array]:
            if config.batch_size is None or num_batches == 1:
                order = jnp.arange(padded)
            else:
                order = jax.random.permutation(epoch_key, padded)
            batches = (
                features_p[order].reshape(num_batches, batch, -1),
                target_p[order].reshape(num_batches, batch),
                weight_p[order].reshape(num_batches, batch),
            )
            return jax.lax.scan(step, carry, batches)

        start = (theta_global, optimizer.init(theta_global))
        (theta, _), losses = jax.lax.scan(epoch, start, jax.random.split(key, config.epochs))
        return theta, jnp.mean(losses)

    jitted = jax.jit(update)
    _UPDATES[config] = jitted
    return jitted


_PREDICTS: dict[ModelConfig, Any] = {}


def predict_fn(model: ModelConfig) -> Callable[..., Any]:
    """Jitted ``(theta, features) -> outputs``: probabilities (binary) or values."""
    if model in _PREDICTS:
        return _PREDICTS[model]  # type: ignore[no-any-return]
    space = param_space(model)

    def predict(theta: jax.Array, features: jax.Array) -> jax.Array:
        outputs = space.apply(theta, features)
        return jax.nn.sigmoid(outputs) if model.task == "binary" else outputs

    jitted = jax.jit(predict)
    _PREDICTS[model] = jitted
    return jitted
