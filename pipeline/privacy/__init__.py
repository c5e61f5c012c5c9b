"""Distributed differential privacy under secure aggregation: secret integer noise and its accounting.

Each site adds discrete Gaussian noise to its integer contribution before it is masked
(:mod:`.discrete_gaussian`), so the coordinator only ever decodes a noisy sum; the sum
of the honest sites' noise makes the release differentially private, accounted in zCDP
and converted to (epsilon, delta) (:mod:`.accountant`). The noise's :func:`tail_bound`
says how much of a ring's bit budget it needs. Pure functions over numbers and arrays;
the package imports nothing of the runtime, the analyses or secure aggregation.
"""

from pipeline.privacy.accountant import (
    MIN_DISTRIBUTED_SIGMA,
    Sensitivity,
    calibrate_sigma,
    compose_zcdp,
    distributed_discrete_gaussian_rho,
    guaranteed_honest_sites,
    per_person_sensitivity,
    rho_for_epsilon,
    sigma_for_rho,
    zcdp_to_approx_dp,
)
from pipeline.privacy.discrete_gaussian import (
    MAX_SIGMA,
    discrete_gaussian_pmf,
    sample_discrete_gaussian,
    secret_generator,
    tail_bound,
)
from pipeline.privacy.terms import (
    WRAP_PROBABILITY,
    PrivacyTerms,
    Spend,
    noise_headroom,
    privacy_terms,
    release_noise,
)

__all__ = [
    "MAX_SIGMA",
    "MIN_DISTRIBUTED_SIGMA",
    "WRAP_PROBABILITY",
    "PrivacyTerms",
    "Sensitivity",
    "Spend",
    "calibrate_sigma",
    "compose_zcdp",
    "discrete_gaussian_pmf",
    "distributed_discrete_gaussian_rho",
    "guaranteed_honest_sites",
    "noise_headroom",
    "per_person_sensitivity",
    "privacy_terms",
    "release_noise",
    "rho_for_epsilon",
    "sample_discrete_gaussian",
    "secret_generator",
    "sigma_for_rho",
    "tail_bound",
    "zcdp_to_approx_dp",
]
