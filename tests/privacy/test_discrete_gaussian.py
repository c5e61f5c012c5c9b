"""The discrete Gaussian sampler against its pmf, its moments and its tail bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.errors import ConfigurationError
from pipeline.privacy.discrete_gaussian import (
    discrete_gaussian_pmf,
    sample_discrete_gaussian,
    secret_generator,
    tail_bound,
)


def naive_pmf(k: np.ndarray, sigma: float) -> np.ndarray:
    """The pmf normalized by summing the weights over a range wide enough that the rest underflows."""
    support = np.arange(-math.ceil(40 * sigma) - 60, math.ceil(40 * sigma) + 61, dtype=np.float64)
    weights = np.exp(-support**2 / (2 * sigma**2))
    return np.exp(-np.asarray(k, dtype=np.float64) ** 2 / (2 * sigma**2)) / math.fsum(weights)


def exact_moments(sigma: float) -> tuple[float, float]:
    """Variance and fourth moment of N_Z(0, sigma^2), summed over its support."""
    k = np.arange(-math.ceil(40 * sigma) - 60, math.ceil(40 * sigma) + 61)
    p = discrete_gaussian_pmf(k, sigma)
    return float(np.sum(p * k.astype(float) ** 2)), float(np.sum(p * k.astype(float) ** 4))


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0])
def test_sample__matches_the_pmf_by_chi_square(sigma):
    draws = sample_discrete_gaussian(sigma, 200_000, rng=np.random.default_rng(1))
    support = np.arange(-math.ceil(40 * sigma) - 60, math.ceil(40 * sigma) + 61)
    expected = discrete_gaussian_pmf(support, sigma) * draws.size
    inner = support[expected >= 5]
    low, high = int(inner[0]), int(inner[-1])
    observed = np.bincount(np.clip(draws, low - 1, high + 1) - (low - 1), minlength=high - low + 3)
    expected_bins = np.concatenate(
        [[expected[support < low].sum()], expected[(support >= low) & (support <= high)], [expected[support > high].sum()]]
    )
    keep = expected_bins > 0
    statistic = float(np.sum((observed[keep] - expected_bins[keep]) ** 2 / expected_bins[keep]))
    p_value = stats.chi2.sf(statistic, df=int(keep.sum()) - 1)
    assert p_value > 1e-4, f"chi-square {statistic:.1f} on {keep.sum() - 1} df, p = {p_value:.2e}"


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0])
def test_sample__mean_zero_and_the_discrete_gaussians_variance(sigma):
    draws = sample_discrete_gaussian(sigma, 400_000, rng=np.random.default_rng(2)).astype(np.float64)
    variance, fourth = exact_moments(sigma)
    # Var < sigma^2 (CKS20); the gap is below float precision from sigma ~ 2 on.
    assert variance < sigma**2 if sigma < 1 else variance == pytest.approx(sigma**2, rel=1e-12)
    assert abs(draws.mean()) < 5 * math.sqrt(variance / draws.size)
    assert abs(draws.var() - variance) < 5 * math.sqrt((fourth - variance**2) / draws.size)


def test_sample__sum_of_sites_has_their_variances_added():
    sites, sigma = 7, 3.0
    noise = sample_discrete_gaussian(sigma, (sites, 100_000), rng=np.random.default_rng(3)).sum(axis=0)
    assert noise.var() == pytest.approx(sites * sigma**2, rel=0.03)
    assert abs(noise.mean()) < 5 * math.sqrt(sites * sigma**2 / noise.size)


@pytest.mark.parametrize("sigma", [0.5, 1e6])
def test_sample__extreme_sigmas(sigma):
    draws = sample_discrete_gaussian(sigma, 200_000, rng=np.random.default_rng(4))
    variance, _ = exact_moments(sigma) if sigma < 10 else (sigma**2, None)
    assert draws.dtype == np.int64
    assert draws.astype(np.float64).var() == pytest.approx(variance, rel=0.02)


@pytest.mark.parametrize("shape", [(), (0,), 5, (3, 4), (2, 0, 3)])
def test_sample__int64_of_the_requested_shape(shape):
    draws = sample_discrete_gaussian(2.0, shape, rng=np.random.default_rng(5))
    assert draws.dtype == np.int64
    assert draws.shape == ((shape,) if isinstance(shape, int) else shape)


def test_sample__reproducible_from_a_seeded_generator():
    first = sample_discrete_gaussian(5.0, 1000, rng=np.random.default_rng(6))
    second = sample_discrete_gaussian(5.0, 1000, rng=np.random.default_rng(6))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("rng", [None, 42, np.random.RandomState(0)])
def test_sample__refuses_anything_but_a_generator(rng):
    with pytest.raises(ConfigurationError, match="secret_generator"):
        sample_discrete_gaussian(1.0, 3, rng=rng)


@pytest.mark.parametrize("sigma", [0, -1.0, math.nan, math.inf, 1e12, "3", True])
def test_sample__refuses_invalid_sigma(sigma):
    with pytest.raises(ConfigurationError, match="sigma"):
        sample_discrete_gaussian(sigma, 3, rng=np.random.default_rng(0))


@pytest.mark.parametrize("shape", [-1, (2, -3), "x", (1.5,), True, None])
def test_sample__refuses_invalid_shape(shape):
    with pytest.raises(ConfigurationError, match="shape"):
        sample_discrete_gaussian(1.0, shape, rng=np.random.default_rng(0))


def test_secret_generator__fresh_pcg64dxsm_every_call():
    first, second = secret_generator(), secret_generator()
    assert isinstance(first.bit_generator, np.random.PCG64DXSM)
    assert first.integers(0, 2**63, size=4).tolist() != second.integers(0, 2**63, size=4).tolist()


@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.99, 1.0, 1.01, 7.0, 1000.0])
def test_pmf__normalized_and_equal_to_the_naive_sum(sigma):
    k = np.arange(-math.ceil(40 * sigma) - 60, math.ceil(40 * sigma) + 61)
    p = discrete_gaussian_pmf(k, sigma)
    assert math.fsum(p) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p, naive_pmf(k, sigma), rtol=1e-12, atol=1e-300)


def test_pmf__accepts_integer_floats_and_refuses_fractions():
    assert discrete_gaussian_pmf(np.array([2.0]), 1.5) == pytest.approx(discrete_gaussian_pmf([2], 1.5))
    with pytest.raises(ConfigurationError, match="integers"):
        discrete_gaussian_pmf([0.5], 1.0)


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0])
@pytest.mark.parametrize("failure_probability", [0.1, 1e-3, 1e-9])
def test_tail_bound__holds_for_one_site_exactly(sigma, failure_probability):
    bound = tail_bound(sigma, failure_probability)
    k = np.arange(-math.ceil(60 * sigma) - 60, math.ceil(60 * sigma) + 61)
    p = discrete_gaussian_pmf(k, sigma)
    assert math.fsum(p[np.abs(k) > bound]) <= failure_probability


@pytest.mark.parametrize("failure_probability", [1e-2, 1e-3])
def test_tail_bound__holds_for_a_sum_of_sites_empirically(failure_probability):
    sites, sigma = 5, 3.0
    noise = sample_discrete_gaussian(sigma, (sites, 200_000), rng=np.random.default_rng(7)).sum(axis=0)
    bound = tail_bound(sigma * math.sqrt(sites), failure_probability)
    assert np.count_nonzero(np.abs(noise) > bound) <= failure_probability * noise.size


def test_tail_bound__monotone_integers():
    sigmas = [0.5, 1.0, 3.0, 40.0, 1e6]
    probabilities = [0.5, 1e-2, 1e-6, 1e-12]
    for p in probabilities:
        bounds = [tail_bound(s, p) for s in sigmas]
        assert all(isinstance(b, int) for b in bounds)
        assert bounds == sorted(bounds)
    for s in sigmas:
        bounds = [tail_bound(s, p) for p in probabilities]
        assert bounds == sorted(bounds)
    assert tail_bound(1e6, 1e-9) > tail_bound(1e6, 1e-3) > 1e6


@pytest.mark.parametrize("sigma_total, failure_probability", [(0, 0.1), (-1, 0.1), (math.inf, 0.1), (1, 0), (1, 1), (1, "x")])
def test_tail_bound__refuses_invalid_arguments(sigma_total, failure_probability):
    with pytest.raises(ConfigurationError):
        tail_bound(sigma_total, failure_probability)
