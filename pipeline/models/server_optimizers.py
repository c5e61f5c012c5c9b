"""Server optimizers: optax transformations applied to the round's pseudo-gradient.

After a round the coordinator knows ``sum_s n_s * delta_s`` and ``sum_s n_s`` (one secure
sum), hence the sample-weighted mean delta. Its negation is the *pseudo-gradient*
(Reddi et al., "Adaptive Federated Optimization", ICLR 2021), and a server optimizer
is any optax transformation of it:

* ``fedavg``: ``optax.sgd(1.0)`` (the global model becomes the weighted mean of the
  local models; other learning rates give FedAvg with server momentum or damping);
* ``fedadam``, ``fedyogi``, ``fedadagrad``: ``optax.adam``, ``optax.yogi``,
  ``optax.adagrad`` with the adaptivity ``eps`` (tau in the paper, default 1e-3).

The optimizer state is part of the job's public state, so it is serialized
(:func:`state_to_json`) with the global model each round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pipeline.errors import ConfigurationError
from pipeline.json_arrays import decode_array, encode_array

__all__ = [
    "SERVER_OPTIMIZERS",
    "server_optimizer",
    "server_step",
    "state_to_json",
    "state_from_json",
]

SERVER_OPTIMIZERS = ("fedavg", "fedadam", "fedyogi", "fedadagrad")


def server_optimizer(name: str, *, learning_rate: float | None = None, beta1: float = 0.9, beta2: float = 0.99,
                     eps: float = 1e-3, momentum: float = 0.0) -> optax.GradientTransformation:
    """The optax transformation of server optimizer ``name``.

    Args:
        name: ``fedavg``, ``fedadam``, ``fedyogi`` or ``fedadagrad``.
        learning_rate: server step size (default 1.0 for fedavg, 0.01 for the others).
        beta1, beta2: moment decay rates (fedadam, fedyogi).
        eps: adaptivity tau (fedadam, fedyogi, fedadagrad).
        momentum: server momentum of fedavg (0: none).

    Raises:
        ConfigurationError: unknown name or a non-positive learning rate.
    """
    if name not in SERVER_OPTIMIZERS:
        raise ConfigurationError(f"server optimizer must be one of {list(SERVER_OPTIMIZERS)}, got {name!r}")
    rate = (1.0 if name == "fedavg" else 0.01) if learning_rate is None else learning_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ConfigurationError(f"server learning_rate must be a positive number, got {learning_rate!r}")
    if name == "fedavg":
        return optax.sgd(rate, momentum=momentum or None)
    if name == "fedadam":
        return optax.adam(rate, b1=beta1, b2=beta2, eps=eps)
    if name == "fedyogi":
        return optax.yogi(rate, b1=beta1, b2=beta2, eps=eps)
    return optax.adagrad(rate, initial_accumulator_value=0.0, eps=eps)


def server_step(
    optimizer: optax.GradientTransformation, theta: np.ndarray, opt_state: Any, mean_delta: np.ndarray
) -> tuple[np.ndarray, Any]:
    """One server update from the weighted mean delta (pseudo-gradient ``-mean_delta``)."""
    params = jnp.asarray(theta, jnp.float32)
    pseudo_gradient = -jnp.asarray(mean_delta, jnp.float32)
    updates, opt_state = optimizer.update(pseudo_gradient, opt_state, params)
    return np.asarray(optax.apply_updates(params, updates), np.float32), opt_state


def state_to_json(opt_state: Any) -> list[dict[str, Any]]:
    """An optax state's leaves as JSON arrays (the structure comes from ``optimizer.init``)."""
    return [encode_array(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(opt_state)]


def state_from_json(optimizer: optax.GradientTransformation, theta: np.ndarray, leaves: list[Mapping[str, Any]]) -> Any:
    """Rebuilds an optax state saved by :func:`state_to_json` for parameters shaped like ``theta``.

    Raises:
        ConfigurationError: the saved leaves do not fit the optimizer's state.
    """
    template = optimizer.init(jnp.asarray(theta, jnp.float32))
    template_leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(template_leaves) != len(leaves):
        raise ConfigurationError(f"saved server optimizer state has {len(leaves)} arrays, the optimizer needs {len(template_leaves)}")
    restored = [jnp.asarray(decode_array(leaf)).astype(jnp.asarray(t).dtype).reshape(jnp.shape(t)) for leaf, t in zip(leaves, template_leaves)]
    return jax.tree_util.tree_unflatten(treedef, restored)
