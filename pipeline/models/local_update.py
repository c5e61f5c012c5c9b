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

Differential privacy (DP-FedSGD) replaces the local update by one full-batch gradient
step: a site contributes the sum of its per-example gradients, each clipped to L2 norm
``clip_norm`` (:func:`clipped_gradient_sum_fn`: ``jax.vmap`` of the per-sample gradient
inside one jit), so one person moves the sum by at most ``clip_norm``; the coordinator
takes the step from the noisy mean (:func:`gradient_step`), exactly the step a
full-batch, one-epoch local update takes from the exact mean.
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
    "clipped_gradient_sum_fn",
    "gradient_step",
    "CLIP_MARGIN",
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


CLIP_MARGIN = 2.0**-12
"""Per-example gradients are clipped to ``clip_norm * (1 - CLIP_MARGIN)``: float32 errors of the norm stay inside ``clip_norm``."""
_BLOCK_ROWS = 2**14
"""Rows per jitted call: a block's integer sum (at most 2^14 x 2^16 per coordinate) cannot overflow int32."""
_CHUNK_VALUES = 2**20
"""Per-example gradient values held at once (a chunk of rows x parameters)."""

_CLIPPED: dict[tuple[ModelConfig, float, int], Any] = {}


def clipped_gradient_sum_fn(model: ModelConfig, *, clip_norm: float, scale_bits: int) -> Callable[..., tuple[np.ndarray, int, float]]:
    """The sum of per-example gradients clipped to L2 norm ``clip_norm``, as exact integers of ``2^-scale_bits clip_norm``.

    Each example's gradient of its own loss (the data term only: the elastic-net and
    FedProx terms do not depend on the data, the coordinator adds them) comes from
    ``jax.vmap`` of ``jax.grad`` inside one jit; it is scaled down to L2 norm at most
    ``clip_norm * (1 - CLIP_MARGIN)``, divided by ``clip_norm`` and truncated toward
    zero to integers of ``2^-scale_bits``. Truncation never lengthens a vector, so one
    example's integer vector has L2 norm at most ``2^scale_bits`` (and L1 at most
    ``2^scale_bits sqrt(P)``), and integer sums are exact: with or without one example,
    the sums differ by that example's vector alone. ``scale_bits`` at most 16.

    Returns:
        ``fn(theta (P,), features (n, p), target (n,)) -> (int64 (P,) sum, examples
        clipped, sum of the examples' losses)``; the sum times ``clip_norm / 2^scale_bits``
        is the clipped gradients' sum.
    """
    if not 0 <= scale_bits <= 16:
        raise ConfigurationError(f"scale_bits must be in [0, 16] (an int32 block sum cannot overflow), got {scale_bits}")
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigurationError(f"clip_norm must be positive and finite, got {clip_norm!r}")
    key = (model, float(clip_norm), int(scale_bits))
    if key not in _CLIPPED:
        _CLIPPED[key] = _clipped_block_fn(model, float(clip_norm), int(scale_bits))
    block_fn = _CLIPPED[key]
    space = param_space(model)
    chunk = max(1, min(256, _CHUNK_VALUES // space.size))

    def clipped_sum(theta: np.ndarray, features: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int, float]:
        features = np.asarray(features, np.float32)
        target = np.asarray(target, np.float32)
        total = np.zeros(space.size, np.int64)
        clipped, loss = 0, 0.0
        for start in range(0, features.shape[0], _BLOCK_ROWS):
            x, y = features[start : start + _BLOCK_ROWS], target[start : start + _BLOCK_ROWS]
            rows = -(-max(x.shape[0], 1) // chunk) * chunk
            rows = chunk * (1 << max(0, rows // chunk - 1).bit_length())  # a power of two of chunks: few shapes, few compilations
            pad = rows - x.shape[0]
            mask = np.concatenate([np.ones(x.shape[0], np.float32), np.zeros(pad, np.float32)])
            x = np.pad(x, ((0, pad), (0, 0))).reshape(rows // chunk, chunk, -1)
            y = np.pad(y, (0, pad)).reshape(rows // chunk, chunk)
            block_sum, block_clipped, block_loss = block_fn(theta, x, y, mask.reshape(rows // chunk, chunk))
            total += np.asarray(block_sum, np.int64)
            clipped += int(block_clipped)
            loss += float(block_loss)
        return total, clipped, loss

    return clipped_sum


def _clipped_block_fn(model: ModelConfig, clip_norm: float, scale_bits: int) -> Any:
    """The jitted block of :func:`clipped_gradient_sum_fn`: a scan over chunks of rows, vmap within a chunk."""
    space = param_space(model)
    limit = clip_norm * (1.0 - CLIP_MARGIN)
    unit = float(1 << scale_bits)

    def example_loss(theta: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
        return per_sample_loss(model.task, space.apply(theta, x[None, :]), y[None])[0]

    per_example = jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))

    def block(theta: jax.Array, features: jax.Array, target: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        def chunk_step(carry: tuple[jax.Array, jax.Array, jax.Array],
                       rows: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
            total, clipped, loss = carry
            x, y, m = rows
            losses, gradients = per_example(theta, x, y)
            norms = jnp.sqrt(jnp.sum(jnp.square(gradients), axis=1))
            over = norms > limit
            factor = jnp.where(over, limit / jnp.where(over, norms, 1.0), 1.0) / clip_norm * m
            integers = jnp.trunc(gradients * (factor * unit)[:, None]).astype(jnp.int32)
            return (total + integers.sum(axis=0), clipped + jnp.sum(over & (m > 0)), loss + jnp.sum(losses * m)), None

        start = (jnp.zeros(space.size, jnp.int32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))
        (total, clipped, loss), _ = jax.lax.scan(chunk_step, start, (features, target, mask))
        return total, clipped, loss

    return jax.jit(block)


def gradient_step(config: LocalConfig, theta: np.ndarray, mean_gradient: np.ndarray) -> np.ndarray:
    """One step of the local optimizer (fresh state) from ``theta`` on the data term's mean gradient.

    Adds the elastic net's L2 gradient on the weights (the FedProx term's gradient is 0 at
    the global model), takes one optax step and the L1 proximal step: from the exact mean
    gradient of a site's data, the model one full-batch, one-epoch :func:`local_update_fn`
    reaches. The coordinator of a differentially private job applies it to the noisy mean.
    """
    space = param_space(config.model)
    params = jnp.asarray(theta, jnp.float32)
    gradient = jnp.asarray(mean_gradient, jnp.float32) + config.l2 * jnp.asarray(space.kernel_mask) * params
    optimizer = local_optimizer(config)
    updates, _ = optimizer.update(gradient, optimizer.init(params), params)
    stepped = optax.apply_updates(params, updates)
    threshold = config.learning_rate * config.l1
    if threshold > 0:
        stepped = soft_threshold(stepped, threshold, jnp.asarray(space.kernel_mask))
    return np.asarray(stepped, np.float32)
