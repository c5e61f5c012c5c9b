"""A small multilayer perceptron: dense layers with ReLU, one output (value or logit)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

__all__ = ["MLP"]


class MLP(nnx.Module):
    """``features -> [Linear -> relu] * len(hidden) -> Linear -> (samples,)``."""

    def __init__(self, num_features: int, hidden: Sequence[int], *, rngs: nnx.Rngs) -> None:
        widths = [num_features, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], 1, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        """(samples, num_features) -> (samples,)."""
        hidden = features
        for layer in self.layers:
            hidden = jax.nn.relu(layer(hidden))
        return self.out(hidden)[:, 0]
