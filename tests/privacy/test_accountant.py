"""The zCDP accountant against exact Rényi divergences, its own inverses and its rules (dp-accounting: the other file)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from pipeline.errors import ConfigurationError
from pipeline.privacy.accountant import (
    Sensitivity,
    calibrate_sigma,
    compose_zcdp,
    distributed_discrete_gaussian_rho,
    guaranteed_honest_sites,
    per_person_sensitivity,
    rho_for_epsilon,
    zcdp_to_approx_dp,
)

ORDERS = [1.0001, 1.01, 1.1, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0]


def naive_log_pmf_of_sum(sigma: float, num_sites: int) -> np.ndarray:
    """The exact pmf (as logs, on -m..m) of a sum of ``num_sites`` N_Z(0, sigma^2), by convolution in log space.

    Each summand is truncated to |k| <= max(60, 30 sigma), where its weight is below e^-450
    of the peak; the sums' values are exact far beyond the range the divergences use.
    """
    half = max(60, math.ceil(30 * sigma))
    k = np.arange(-half, half + 1)
    one = -(k.astype(float) ** 2) / (2 * sigma**2)
    one -= logsumexp(one)
    total = one
    for _ in range(num_sites - 1):
        out = np.full(total.size + one.size - 1, -np.inf)
        for i, log_p in enumerate(one):
            out[i : i + total.size] = np.logaddexp(out[i : i + total.size], log_p + total)
        total = out
    return total


def naive_renyi(log_pmf: np.ndarray, shift: int, order: float) -> float:
    """D_order(Z + shift || Z) for the integer distribution with ``log_pmf``, summed over its support."""
    shifted, base = log_pmf[: log_pmf.size - shift], log_pmf[shift:]
    return float(logsumexp(order * shifted + (1 - order) * base) / (order - 1))


def epsilon_of(sigma: float, sensitivity: Sensitivity, sites: int, delta: float) -> float:
    return zcdp_to_approx_dp(distributed_discrete_gaussian_rho(sensitivity.l2, sensitivity.l1, sigma, sites), delta)


# --- one site: the discrete Gaussian mechanism ------------------------------------------


@pytest.mark.parametrize("sigma", [0.2, 0.7, 3.0, 1e6])
@pytest.mark.parametrize("l2", [0.0, 1.0, 2.0, 2 * math.sqrt(1000)])
def test_rho__one_site_is_the_discrete_gaussians(sigma, l2):
    assert distributed_discrete_gaussian_rho(l2, l2 * l2, sigma, 1) == pytest.approx(l2**2 / (2 * sigma**2))


# --- several sites: KLS21 -----------------------------------------------------------------


@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.0])
@pytest.mark.parametrize("sites", [1, 2, 3])
@pytest.mark.parametrize("shift", [1, 2])
def test_rho__bounds_the_exact_renyi_divergences_of_the_sum(sigma, sites, shift):
    log_pmf = naive_log_pmf_of_sum(sigma, sites)
    rho = distributed_discrete_gaussian_rho(shift, shift, sigma, sites)
    for order in ORDERS:
        assert naive_renyi(log_pmf, shift, order) <= rho * order * (1 + 1e-9), order


@pytest.mark.parametrize("sigma", [0.5, 0.8])
def test_rho__bounds_a_two_coordinate_change(sigma):
    """Delta = (1, 1): coordinates are independent, so the exact divergence is twice the one-coordinate one."""
    log_pmf = naive_log_pmf_of_sum(sigma, 2)
    rho = distributed_discrete_gaussian_rho(math.sqrt(2), 2, sigma, 2)
    for order in ORDERS:
        assert 2 * naive_renyi(log_pmf, 1, order) <= rho * order * (1 + 1e-9)


@pytest.mark.parametrize("sigma", [2.0, 5.0, 50.0])
@pytest.mark.parametrize("sites", [2, 10, 100])
def test_rho__approaches_the_continuous_gaussians_for_large_sigma(sigma, sites):
    l2, l1 = per_person_sensitivity(2, 500)
    central = l2**2 / (2 * sites * sigma**2)
    rho = distributed_discrete_gaussian_rho(l2, l1, sigma, sites)
    assert rho == pytest.approx(central, rel=1e-9)
    assert rho >= central * (1 - 1e-12)


def test_rho__small_sigma_costs_more_than_the_continuous_gaussian():
    rho = distributed_discrete_gaussian_rho(1, 1, 0.6, 5)
    assert rho > 1.5 * (1 / (2 * 5 * 0.6**2))


def test_rho__decreases_with_sigma_and_sites_and_grows_with_sensitivity():
    sigmas = [0.5, 0.6, 0.8, 1.0, 2.0, 10.0]
    rhos = [distributed_discrete_gaussian_rho(2, 2, s, 4) for s in sigmas]
    assert rhos == sorted(rhos, reverse=True)
    by_sites = [distributed_discrete_gaussian_rho(2, 2, 3.0, n) for n in (1, 2, 5, 20)]
    assert by_sites == sorted(by_sites, reverse=True)
    by_sensitivity = [distributed_discrete_gaussian_rho(*per_person_sensitivity(2, v), 0.7, 3) for v in (1, 10, 100)]
    assert by_sensitivity == sorted(by_sensitivity)


def test_rho__refuses_small_sigma_for_several_sites_and_invalid_arguments():
    with pytest.raises(ConfigurationError, match="0.5"):
        distributed_discrete_gaussian_rho(1, 1, 0.4, 2)
    for arguments in [(-1, 1, 1, 1), (1, math.nan, 1, 1), (1, 1, 0, 1), (1, 1, 1, 0), (1, 1, 1, 2.0), (1, 1, 1, True)]:
        with pytest.raises(ConfigurationError):
            distributed_discrete_gaussian_rho(*arguments)


# --- zCDP to (epsilon, delta) -----------------------------------------------------------


def test_zcdp_to_approx_dp__below_the_classic_bound_and_monotone():
    for delta in (1e-3, 1e-9):
        epsilons = [zcdp_to_approx_dp(rho, delta) for rho in (0.0, 1e-3, 0.1, 1.0, 10.0, 1e3)]
        assert epsilons[0] == 0.0
        assert epsilons == sorted(epsilons)
        for rho, epsilon in zip((1e-3, 0.1, 1.0, 10.0, 1e3), epsilons[1:]):
            assert epsilon <= rho + 2 * math.sqrt(rho * math.log(1 / delta))
    assert zcdp_to_approx_dp(0.1, 1e-9) > zcdp_to_approx_dp(0.1, 1e-3)


@pytest.mark.parametrize("rho, delta", [(-0.1, 1e-6), (math.inf, 1e-6), (0.1, 0), (0.1, 1), ("0.1", 1e-6)])
def test_zcdp_to_approx_dp__refuses_invalid_arguments(rho, delta):
    with pytest.raises(ConfigurationError):
        zcdp_to_approx_dp(rho, delta)


@pytest.mark.parametrize("epsilon", [0.05, 0.5, 1.0, 3.0, 10.0, 100.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-9])
def test_rho_for_epsilon__inverts_the_conversion(epsilon, delta):
    rho = rho_for_epsilon(epsilon, delta)
    assert zcdp_to_approx_dp(rho, delta) <= epsilon
    assert zcdp_to_approx_dp(rho * (1 + 1e-9), delta) == pytest.approx(epsilon, rel=1e-8)


def test_compose__adds_rho():
    assert compose_zcdp([0.1, 0.2, 0.3]) == pytest.approx(0.6)
    assert compose_zcdp([]) == 0.0
    with pytest.raises(ConfigurationError):
        compose_zcdp([0.1, -0.1])


# --- calibration --------------------------------------------------------------------------

CALIBRATIONS = [
    (1.0, 1e-6, per_person_sensitivity(2, 1), 1),
    (1.0, 1e-6, per_person_sensitivity(2, 1000), 5),
    (0.3, 1e-9, per_person_sensitivity(1, 20), 3),
    (8.0, 1e-5, per_person_sensitivity(2, 1), 10),
    (0.5, 1e-6, per_person_sensitivity(2**16, 100), 2),
]


@pytest.mark.parametrize("epsilon, delta, sensitivity, honest", CALIBRATIONS)
def test_calibrate__meets_the_target_and_barely(epsilon, delta, sensitivity, honest):
    sigma = calibrate_sigma(epsilon, delta, sensitivity.l2, sensitivity.l1, honest)
    assert epsilon_of(sigma, sensitivity, honest, delta) <= epsilon
    assert epsilon_of(sigma * 1.01, sensitivity, honest, delta) <= epsilon
    assert epsilon_of(sigma * (1 - 5e-3), sensitivity, honest, delta) > epsilon


@pytest.mark.parametrize("epsilon, delta, sensitivity, honest", [c for c in CALIBRATIONS if c[3] > 1])
def test_calibrate__one_sites_noise_does_not_meet_a_target_calibrated_for_several(epsilon, delta, sensitivity, honest):
    sigma = calibrate_sigma(epsilon, delta, sensitivity.l2, sensitivity.l1, honest)
    assert epsilon_of(sigma, sensitivity, 1, delta) > epsilon


def test_calibrate__more_honest_sites_need_less_noise_each():
    l2, l1 = per_person_sensitivity(2, 100)
    sigmas = [calibrate_sigma(1.0, 1e-6, l2, l1, n) for n in (1, 2, 4, 16)]
    assert sigmas == sorted(sigmas, reverse=True)
    assert sigmas[3] == pytest.approx(sigmas[0] / 4, rel=3e-3)  # the continuous regime: sigma ~ 1 / sqrt(n)


def test_calibrate__never_below_half_and_rounded_to_four_digits():
    assert calibrate_sigma(50.0, 1e-6, 1, 1, 3) == 0.5
    sigma = calibrate_sigma(1.0, 1e-6, 7, 49, 3)
    assert float(f"{sigma:.4g}") == sigma


def test_calibrate__refuses_invalid_arguments():
    for arguments in [(0, 1e-6, 1, 1, 1), (1, 1.5, 1, 1, 1), (1, 1e-6, 0, 1, 1), (1, 1e-6, 1, 1, 0)]:
        with pytest.raises(ConfigurationError):
            calibrate_sigma(*arguments)


# --- who is honest, and how far one person moves a release -------------------------------


def test_guaranteed_honest_sites__threshold_minus_colluders():
    assert guaranteed_honest_sites(5, 0) == 5
    assert guaranteed_honest_sites(7, 2) == 5
    with pytest.raises(ConfigurationError, match="threshold"):
        guaranteed_honest_sites(3, 3)
    with pytest.raises(ConfigurationError):
        guaranteed_honest_sites(3, -1)


def test_per_person_sensitivity__norms_of_all_their_values():
    assert per_person_sensitivity(2, 100) == Sensitivity(l2=20.0, l1=200.0)
    l2, l1 = per_person_sensitivity(2**10, 4)
    assert (l2, l1) == (2**11, 2**12)
    for arguments in [(0, 1), (2, 0), (math.inf, 1), (2, 1.5)]:
        with pytest.raises(ConfigurationError):
            per_person_sensitivity(*arguments)
