"""GWAS kernels against naive per-variant numpy references (one variant at a time, explicit masks)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats import glm


def _data(seed: int = 0, variants: int = 23, samples: int = 70, k: int = 3):
    rng = np.random.default_rng(seed)
    covariates = np.column_stack([np.ones(samples), rng.normal(size=(samples, k - 1))])
    calls = rng.binomial(2, rng.uniform(0.05, 0.5, (variants, 1)), size=(variants, samples)).astype(np.int8)
    calls[rng.random(calls.shape) < 0.1] = -1
    phenotype = covariates @ rng.normal(size=k) + 0.3 * np.where(calls[0] >= 0, calls[0], 0) + rng.normal(size=samples)
    return calls, covariates, phenotype


def naive_design(calls_row: np.ndarray, covariates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    called = calls_row >= 0
    return np.column_stack([covariates[called], calls_row[called].astype(np.float64)]), called


def test_unpack_symmetric__packed_order_round_trips():
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(5, 5))
    matrix = matrix + matrix.T
    rows, cols = glm.packed_index(4)
    assert len(rows) == glm.packed_size(4) == 15
    np.testing.assert_array_equal(glm.unpack_symmetric(matrix[rows, cols][None], 4)[0], matrix)


@pytest.mark.parametrize("engine", glm.ENGINES)
def test_linear_statistics__equal_naive_masked_sums(engine, monkeypatch):
    monkeypatch.setattr(glm, "_SLAB_BYTES", 8 * 70 * 5)  # NumPy slabs of 5 variants: the last one shorter
    calls, covariates, phenotype = _data()
    calls[1] = -1  # a variant with no call at all
    calls[2, :] = np.where(calls[2] < 0, 0, calls[2])  # and one with no missing call
    stats = glm.linear_statistics(calls, covariates, phenotype, engine=engine)
    rows, cols = glm.packed_index(covariates.shape[1])
    for j in range(calls.shape[0]):
        x, called = naive_design(calls[j], covariates)
        y = phenotype[called]
        np.testing.assert_allclose(stats["xtx"][j], (x.T @ x)[rows, cols], rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(stats["xty"][j], x.T @ y, rtol=1e-12, atol=1e-10)
        assert stats["yty"][j] == pytest.approx(y @ y, rel=1e-12)
        assert stats["n"][j] == called.sum()
        assert stats["alt_count"][j] == x[:, -1].sum()


def test_linear_statistics__engines_agree_to_rounding():
    calls, covariates, phenotype = _data(seed=9, variants=300, samples=400, k=4)
    by_engine = {engine: glm.linear_statistics(calls, covariates, phenotype, engine=engine) for engine in glm.ENGINES}
    for name, values in by_engine["jax"].items():
        np.testing.assert_allclose(by_engine["numpy"][name], values, rtol=1e-12, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(by_engine["numpy"]["n"], by_engine["jax"]["n"])
    np.testing.assert_array_equal(by_engine["numpy"]["alt_count"], by_engine["jax"]["alt_count"])


def test_linear_statistics__more_variants_than_a_tile(monkeypatch):
    monkeypatch.setattr(glm, "_TILE_ELEMENTS", 64 * 70)  # tiles of 64 variants: the last one padded
    calls, covariates, phenotype = _data(variants=150)
    tiled = glm.linear_statistics(calls, covariates, phenotype, engine="jax")
    for j in (0, 63, 64, 149):
        x, called = naive_design(calls[j], covariates)
        assert tiled["n"][j] == called.sum()
        assert tiled["yty"][j] == pytest.approx(phenotype[called] @ phenotype[called], rel=1e-12)


def test_linear_fit__equals_lstsq_per_variant():
    calls, covariates, phenotype = _data(seed=2)
    stats = glm.linear_statistics(calls, covariates, phenotype)
    fit = glm.linear_fit(stats["xtx"], stats["xty"], stats["yty"], stats["n"])
    for j in range(calls.shape[0]):
        x, called = naive_design(calls[j], covariates)
        y = phenotype[called]
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        residual = y - x @ beta
        se = np.sqrt(residual @ residual / (len(y) - x.shape[1]) * np.linalg.inv(x.T @ x)[-1, -1])
        assert fit.status[j] == 0
        assert fit.beta[j] == pytest.approx(beta[-1], rel=1e-9)
        assert fit.standard_error[j] == pytest.approx(se, rel=1e-9)


def test_linear_fit__constant_genotype_and_too_few_samples_flagged():
    calls, covariates, phenotype = _data(seed=3, variants=3, samples=30)
    calls[1] = 1  # every sample heterozygous: collinear with the intercept
    calls[2, 3:] = -1  # 3 called samples for 4 parameters
    stats = glm.linear_statistics(calls, covariates, phenotype)
    fit = glm.linear_fit(stats["xtx"], stats["xty"], stats["yty"], stats["n"])
    assert [glm.STATUS[s] for s in fit.status] == ["OK", "CONST_ALLELE", "TOO_FEW_SAMPLES"]
    assert np.isnan(fit.beta[1:]).all() and np.isfinite(fit.beta[0])


def test_logistic_statistics__equal_naive_score_and_information():
    calls, covariates, _ = _data(seed=4)
    rng = np.random.default_rng(4)
    y = (rng.random(calls.shape[1]) < 0.4).astype(np.float64)
    theta = rng.normal(scale=0.3, size=(calls.shape[0], covariates.shape[1] + 1))
    stats = glm.logistic_statistics(calls, theta, covariates, y)
    rows, cols = glm.packed_index(covariates.shape[1])
    for j in range(calls.shape[0]):
        x, called = naive_design(calls[j], covariates)
        p = 1 / (1 + np.exp(-(x @ theta[j])))
        np.testing.assert_allclose(stats["score"][j], x.T @ (y[called] - p), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats["information"][j], (x.T @ (x * (p * (1 - p))[:, None]))[rows, cols], rtol=1e-10, atol=1e-10)


def test_newton_step__converges_to_the_maximum_likelihood_fit():
    calls, covariates, _ = _data(seed=5, variants=6, samples=200)
    rng = np.random.default_rng(5)
    y = (rng.random(200) < 0.3).astype(np.float64)
    theta = np.zeros((6, covariates.shape[1] + 1))
    for _ in range(12):
        stats = glm.logistic_statistics(calls, theta, covariates, y)
        step = glm.newton_step(theta, stats["score"], stats["information"])
        theta = step.theta
    assert step.step.max() < 1e-10
    final = glm.logistic_statistics(calls, theta, covariates, y)
    assert np.abs(final["score"]).max() < 1e-8


def test_genomic_inflation__uniform_p_values_near_one():
    p = (np.arange(1, 100_001) - 0.5) / 100_000
    assert glm.genomic_inflation(p) == pytest.approx(1.0, abs=1e-3)
    assert glm.genomic_inflation(np.array([np.nan])) != glm.genomic_inflation(np.array([np.nan]))  # NaN
