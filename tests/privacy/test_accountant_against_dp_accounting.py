"""The accountant against dp-accounting, an independent implementation of the parts it has.

dp-accounting has no distributed discrete Gaussian; it has the single discrete Gaussian's
privacy loss distribution (exact up to its discretization) and the zCDP-to-(epsilon,
delta) conversion of its RDP accountant.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.privacy.accountant import (
    distributed_discrete_gaussian_rho,
    zcdp_to_approx_dp,
)

pytest.importorskip("dp_accounting", reason="dp-accounting comes with the test extra: pip install -e '.[test]'")
from dp_accounting import dp_event
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import RdpAccountant


def pld_epsilon(sigma: float, sensitivity: int, delta: float) -> float:
    pld = privacy_loss_distribution.from_discrete_gaussian_mechanism(sigma, sensitivity=sensitivity)
    return float(pld.get_epsilon_for_delta(delta))


def rdp_epsilon(event: dp_event.DpEvent, delta: float) -> float:
    accountant = RdpAccountant(orders=list(1.0 + np.geomspace(0.02, 1e5, 40_000)))
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("sigma", [0.7, 1.0, 3.0, 10.0])
@pytest.mark.parametrize("sensitivity", [1, 2])
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_rho__one_site_bounds_the_pld_epsilon_of_dp_accounting_closely(sigma, sensitivity, delta):
    """zCDP then conversion is an upper bound on the exact privacy curve (PLD), and not a loose one."""
    ours = zcdp_to_approx_dp(distributed_discrete_gaussian_rho(sensitivity, sensitivity, sigma, 1), delta)
    reference = pld_epsilon(sigma, sensitivity, delta)
    assert reference <= ours <= 1.3 * reference


@pytest.mark.parametrize("rho", [1e-4, 0.01, 0.1, 0.5, 1.0, 5.0])
@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-10])
def test_zcdp_to_approx_dp__equals_the_rdp_accountants_conversion(rho, delta):
    """dp-accounting converts with the same CKS20 bound, minimized over a grid of orders: ours is its infimum."""
    ours = zcdp_to_approx_dp(rho, delta)
    reference = rdp_epsilon(dp_event.ZCDpEvent(rho), delta)
    assert ours <= reference + 1e-12
    assert ours == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("noise_multiplier", [0.8, 2.0, 10.0])
def test_zcdp_to_approx_dp__a_gaussian_event_is_rho_one_over_two_z_squared(noise_multiplier):
    ours = zcdp_to_approx_dp(1 / (2 * noise_multiplier**2), 1e-6)
    assert ours == pytest.approx(rdp_epsilon(dp_event.GaussianDpEvent(noise_multiplier), 1e-6), rel=1e-5)


@pytest.mark.parametrize("sigma", [2.0, 6.0])
@pytest.mark.parametrize("sites", [2, 5])
def test_rho__several_sites_bound_the_pld_of_one_gaussian_with_their_total_variance(sigma, sites):
    """From sigma ~ 2 on, the sum of the sites' noise is N_Z(0, n sigma^2) to float precision (tau < 1e-15)."""
    ours = zcdp_to_approx_dp(distributed_discrete_gaussian_rho(2, 2, sigma, sites), 1e-6)
    reference = pld_epsilon(sigma * np.sqrt(sites), 2, 1e-6)
    assert reference <= ours <= 1.3 * reference
