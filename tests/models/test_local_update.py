"""The jitted local update against naive numpy gradient descent; compilation and padding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from pipeline.models import ModelConfig, param_space
from pipeline.models.local_update import LocalConfig, clip_by_l2, local_update_fn, soft_threshold, trace_count

P = 5


def _data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, P)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, 0.5, 0.0, 0.0]))))).astype(np.float32)
    return x, y


def naive_logistic_gd(theta: np.ndarray, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float, l2: float, mu: float, l1: float) -> np.ndarray:
    """Proximal gradient descent on the mean logistic loss, written out by hand (kernel first, bias last)."""
    w, b = theta[:P].astype(np.float64).copy(), float(theta[P])
    w0, b0 = w.copy(), b
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        grad_w = x.T @ (p - y) / len(y) + l2 * w + mu * (w - w0)
        grad_b = np.mean(p - y) + mu * (b - b0)
        w, b = w - lr * grad_w, b - lr * grad_b
        w = np.sign(w) * np.maximum(np.abs(w) - lr * l1, 0.0)
    return np.concatenate([w, [b]])


def _bias_last(config: ModelConfig, theta: np.ndarray) -> np.ndarray:
    """Reorders a linear model's flat vector to (kernel..., bias) whatever the flattening order."""
    space = param_space(config)
    kernel = space.first_kernel >= 0
    return np.concatenate([np.asarray(theta)[kernel][np.argsort(space.first_kernel[kernel])], np.asarray(theta)[~kernel]])


@pytest.mark.parametrize("mu, l1", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.05)])
def test_local_update__full_batch_sgd_equals_naive_proximal_gradient_descent(mu, l1):
    model = ModelConfig("logistic", P, "binary")
    config = LocalConfig(model, epochs=4, batch_size=None, learning_rate=0.5, l2=0.01, mu=mu, l1=l1)
    x, y = _data()
    start = np.linspace(-0.2, 0.2, param_space(model).size).astype(np.float32)
    theta, _ = local_update_fn(config)(start, x, y, np.ones(len(y), np.float32), jax.random.key(0))
    expected = naive_logistic_gd(_bias_last(model, start), x, y, steps=4, lr=0.5, l2=0.01, mu=mu, l1=l1)
    np.testing.assert_allclose(_bias_last(model, np.asarray(theta)), expected, atol=2e-5)


def test_local_update__l1_proximal_step_leaves_exact_zeros():
    model = ModelConfig("logistic", P, "binary")
    config = LocalConfig(model, epochs=20, batch_size=None, learning_rate=0.5, l1=0.08)
    x, y = _data(200)
    theta, _ = local_update_fn(config)(param_space(model).initial, x, y, np.ones(len(y), np.float32), jax.random.key(0))
    kernel = _bias_last(model, np.asarray(theta))[:P]
    assert np.count_nonzero(kernel == 0.0) >= 2  # the two null features
    assert abs(kernel[0]) > 0.1 and abs(kernel[1]) > 0.1


def test_local_update__does_not_recompile_on_round_2():
    model = ModelConfig("mlp", P, "binary", hidden=(4,))
    config = LocalConfig(model, epochs=2, batch_size=16, optimizer="adam", learning_rate=0.0123)
    update = local_update_fn(config)
    x, y = _data()
    w = np.ones(len(y), np.float32)
    theta, _ = update(param_space(model).initial, x, y, w, jax.random.key(1))
    assert trace_count(config) == 1
    theta2, _ = update(np.asarray(theta), x, y, w, jax.random.key(2))
    assert trace_count(config) == 1, "round 2 retraced the local update"
    assert local_update_fn(config) is update
    assert np.asarray(theta2).dtype == np.float32 and not np.array_equal(theta, theta2)


def test_local_update__zero_weight_padding_changes_nothing():
    model = ModelConfig("logistic", P, "binary")
    config = LocalConfig(model, epochs=3, batch_size=None, learning_rate=0.3, l2=0.1)
    x, y = _data(40)
    start = param_space(model).initial
    theta, _ = local_update_fn(config)(start, x, y, np.ones(40, np.float32), jax.random.key(0))
    padded_x = np.concatenate([x, np.full((7, P), 9.0, np.float32)])
    padded_y = np.concatenate([y, np.ones(7, np.float32)])
    weight = np.concatenate([np.ones(40), np.zeros(7)]).astype(np.float32)
    theta_padded, _ = local_update_fn(config)(start, padded_x, padded_y, weight, jax.random.key(0))
    np.testing.assert_allclose(theta_padded, theta, atol=1e-6)


def test_local_update__minibatch_shuffle_depends_on_the_key_only():
    model = ModelConfig("logistic", P, "binary")
    config = LocalConfig(model, epochs=2, batch_size=8, learning_rate=0.3)
    x, y = _data(50)
    w = np.ones(50, np.float32)
    update = local_update_fn(config)
    a, _ = update(param_space(model).initial, x, y, w, jax.random.key(5))
    b, _ = update(param_space(model).initial, x, y, w, jax.random.key(5))
    c, _ = update(param_space(model).initial, x, y, w, jax.random.key(6))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_soft_threshold__shrinks_masked_entries_only():
    theta = np.array([0.5, -0.05, 0.02, -2.0])
    out = np.asarray(soft_threshold(theta, 0.1, np.array([1.0, 1.0, 1.0, 0.0])))
    np.testing.assert_allclose(out, [0.4, 0.0, 0.0, -2.0])


def test_clip_by_l2__scales_long_deltas_to_the_norm():
    delta, clipped = clip_by_l2(np.array([3.0, 4.0]), 1.0)
    np.testing.assert_allclose(delta, [0.6, 0.8])
    assert clipped
    same, clipped = clip_by_l2(np.array([0.3, 0.4]), 1.0)
    np.testing.assert_allclose(same, [0.3, 0.4])
    assert not clipped
