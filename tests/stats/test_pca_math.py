"""Pure PCA pieces against naive numpy references on small shapes."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats import pca, pca_jax


def _calls(seed: int, variants: int, samples: int, missing: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.05, 0.5, size=(variants, 1))
    calls = rng.binomial(2, frequency, size=(variants, samples)).astype(np.int8)
    calls[rng.random(calls.shape) < missing] = -1
    return calls


def _counts(calls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (calls == 0).sum(1), (calls == 1).sum(1), (calls == 2).sum(1)


def naive_standardize(calls: np.ndarray) -> np.ndarray:
    out = np.zeros(calls.shape)
    for j, row in enumerate(calls):
        called = row[row >= 0].astype(float)
        p = called.mean() / 2
        sd = np.sqrt(2 * p * (1 - p))
        out[j] = np.where(row >= 0, (row - 2 * p) / sd if sd > 0 else 0.0, 0.0)
    return out


def test_standardization__equals_naive_column_standardization_with_missing_as_zero():
    calls = _calls(0, 30, 50)
    calls[3] = 0  # monomorphic: contributes nothing
    mean, inv_scale = pca.standardization(*_counts(calls))
    assert inv_scale[3] == 0.0
    np.testing.assert_allclose(pca.standardize(calls, mean, inv_scale), naive_standardize(calls), atol=1e-12)


def test_standardized_sum_of_squares__equals_the_column_norms():
    calls = _calls(1, 20, 40)
    counts = _counts(calls)
    mean, inv_scale = pca.standardization(*counts)
    expected = (naive_standardize(calls) ** 2).sum(1)
    np.testing.assert_allclose(pca.standardized_sum_of_squares(*counts, mean, inv_scale), expected, rtol=1e-12)


@pytest.mark.parametrize("variants", [5, 70, 2 * pca_jax.TILE_VARIANTS + 3])
def test_gram_product__equals_dense_float64_product(variants):
    calls = _calls(2, variants, 37)
    mean, inv_scale = pca.standardization(*_counts(calls))
    basis = np.random.default_rng(3).standard_normal((variants, 6))
    g = naive_standardize(calls)
    np.testing.assert_allclose(pca.project(calls, mean, inv_scale, basis), g.T @ basis, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(pca.gram_product(calls, mean, inv_scale, basis), g @ (g.T @ basis), rtol=1e-12, atol=1e-9)


def test_gram_product__keeps_float64_and_leaves_jax_x64_off():
    import jax.numpy as jnp

    calls = _calls(4, 9, 11)
    mean, inv_scale = pca.standardization(*_counts(calls))
    assert pca.gram_product(calls, mean, inv_scale, np.ones((9, 2))).dtype == np.float64
    assert jnp.ones(1).dtype == jnp.float32


def naive_thin(chromosome, position, maf, window, min_maf):
    best = {}
    for i, (c, p, f) in enumerate(zip(chromosome, position, maf)):
        if f < min_maf:
            continue
        key = (c, p // window)
        if key not in best or (f, -p, -i) > (maf[best[key]], -position[best[key]], -best[key]):
            best[key] = i
    keep = np.zeros(len(position), bool)
    keep[list(best.values())] = True
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_thin_by_position__equals_naive_window_choice(seed):
    rng = np.random.default_rng(seed)
    n = 200
    chromosome = rng.choice(["chr1", "chr2"], n)
    position = rng.integers(0, 20_000, n)
    maf = np.round(rng.uniform(0, 0.5, n), 2)
    got = pca.thin_by_position(chromosome, position, maf, window_bp=1000, min_maf=0.05)
    np.testing.assert_array_equal(got, naive_thin(chromosome, position, maf, 1000, 0.05))
    kept = np.flatnonzero(got)
    assert len({(chromosome[i], position[i] // 1000) for i in kept}) == kept.size


def test_orthonormalize_and_rayleigh_ritz__recover_the_eigenpairs_of_a_known_matrix():
    rng = np.random.default_rng(5)
    q = pca.orthonormalize(rng.standard_normal((40, 40)))
    np.testing.assert_allclose(q.T @ q, np.eye(40), atol=1e-12)
    eigenvalues = np.concatenate([[50.0, 20.0, 10.0, 5.0], rng.uniform(0, 1, 36)])
    a = (q * eigenvalues) @ q.T
    basis = pca.initial_basis(40, 10, seed=1)
    for _ in range(30):
        basis = pca.orthonormalize(a @ basis)
    values, loadings = pca.rayleigh_ritz(basis, a @ basis, 4)
    np.testing.assert_allclose(values, eigenvalues[:4], rtol=1e-9)
    for c in range(4):
        assert abs(loadings[:, c] @ q[:, c]) == pytest.approx(1.0, abs=1e-9)
        assert loadings[np.argmax(np.abs(loadings[:, c])), c] > 0
