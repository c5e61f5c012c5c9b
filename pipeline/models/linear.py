"""Linear models: the linear model of a quantitative trait and sparse logistic regression.

Both are one dense layer from the standardized features to one output (a value or a
logit). What makes the logistic model *sparse* is its training: an L1 proximal step
(soft thresholding, :func:`pipeline.models.local_update.soft_threshold`) after every optimizer
step, plus an L2 term in the loss, i.e. the elastic net. Coefficients that end at
exactly zero are the features the model does not use; the others are the biomarkers.

Weights start at zero (the convex problem needs no symmetry breaking, and an exactly
sparse start keeps unused features at zero).
"""

from __future__ import annotations

import jax
from flax import nnx

__all__ = ["LinearModel"]


class LinearModel(nnx.Module):
    """``features @ kernel + bias`` with one output; kernel (num_features, 1)."""

    def __init__(self, num_features: int, *, rngs: nnx.Rngs) -> None:
        self.dense = nnx.Linear(num_features, 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, features: jax.Array) -> jax.Array:
        """(samples, num_features) -> (samples,)."""
        return self.dense(features)[:, 0]
