"""Server optimizers: optax on the pseudo-gradient, and their state through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import ConfigurationError
from pipeline.models.server_optimizers import SERVER_OPTIMIZERS, server_optimizer, server_step, state_from_json, state_to_json
from pipeline.json_arrays import decode_array, encode_array


def test_fedavg__global_model_becomes_the_weighted_mean_of_local_models():
    theta = np.array([0.5, -1.0, 2.0], np.float32)
    local = [theta + np.array([0.1, 0.2, -0.3]), theta + np.array([-0.4, 0.0, 0.5])]
    n = [30, 10]
    mean_delta = sum(k * (m - theta) for k, m in zip(n, local)) / sum(n)
    optimizer = server_optimizer("fedavg")
    new, _ = server_step(optimizer, theta, optimizer.init(theta), mean_delta)
    np.testing.assert_allclose(new, (30 * local[0] + 10 * local[1]) / 40, atol=1e-6)


def test_fedadam__first_step_matches_the_adam_formula_on_the_pseudo_gradient():
    theta = np.array([1.0, -2.0, 0.0, 3.0], np.float32)
    mean_delta = np.array([0.2, -0.05, 0.0, 1.0])
    lr, b1, b2, eps = 0.1, 0.9, 0.99, 1e-3
    optimizer = server_optimizer("fedadam", learning_rate=lr, beta1=b1, beta2=b2, eps=eps)
    new, _ = server_step(optimizer, theta, optimizer.init(theta), mean_delta)
    g = -mean_delta
    m_hat = (1 - b1) * g / (1 - b1)
    v_hat = (1 - b2) * g**2 / (1 - b2)
    np.testing.assert_allclose(new, theta - lr * m_hat / (np.sqrt(v_hat) + eps), atol=1e-6)


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS)
def test_server_state__json_round_trip_continues_identically(name):
    theta = np.array([0.3, -0.7, 1.1], np.float32)
    optimizer = server_optimizer(name, learning_rate=0.05)
    state = optimizer.init(theta)
    deltas = [np.array([0.1, -0.2, 0.05]), np.array([0.3, 0.1, -0.1]), np.array([-0.2, 0.2, 0.0])]
    in_memory, saved = theta, theta
    saved_state = json.loads(json.dumps(state_to_json(state)))
    for delta in deltas:
        in_memory, state = server_step(optimizer, in_memory, state, delta)
        restored = state_from_json(optimizer, saved, saved_state)
        saved, restored = server_step(optimizer, saved, restored, delta)
        saved_state = json.loads(json.dumps(state_to_json(restored)))
        saved = decode_array(json.loads(json.dumps(encode_array(saved))))
    np.testing.assert_array_equal(saved, in_memory)


def test_server_optimizer__unknown_name_lists_the_known_ones():
    with pytest.raises(ConfigurationError, match="fedadam"):
        server_optimizer("fedsgd")


def test_encode_array__round_trips_dtype_and_shape():
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    back = decode_array(json.loads(json.dumps(encode_array(array))))
    assert back.dtype == np.int32 and back.shape == (3, 4)
    np.testing.assert_array_equal(back, array)
