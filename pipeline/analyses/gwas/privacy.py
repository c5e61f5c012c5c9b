"""The GWAS's differential-privacy mode: which rounds are noised, their share of the job's budget, their noise.

A GWAS spec with a ``privacy`` block (:func:`pipeline.privacy.privacy_terms`; linear
model with ``pcs: 0`` for now) makes every sum of the job that holds person-level data
noisy. What each round releases:

======================  ===========================================================  ===============
round                   released                                                     share of rho
======================  ===========================================================  ===============
census 0, key union     which variant IDs each site holds at or above its own        -- (not DP)
                        minimum minor allele count; outside the DP guarantee, as
                        in the census
census 1, counts        the census' noisy genotype counts (its own DP mode, with     CENSUS_SHARE
                        the per-site ``below_min`` flag dropped)
regression 0, moments   noisy ``n``, sums of ``x / A`` and of ``(x / A)^2`` per      MOMENTS_SHARE
                        covariate and the phenotype, ``A = max_abs_value``
regression 1, stats     noisy ``xtx``, ``xty``, ``yty`` per variant (``n`` is        STATISTICS_SHARE
                        ``xtx``'s intercept entry; no ``below_min`` flag)
======================  ===========================================================  ===============

Everything published (QC filter, means and SDs, every estimate) is computed from those
noisy sums: post-processing, which keeps the guarantee.

Budget: the job's ``(epsilon, delta)`` covers all its noisy rounds together. It is
turned into zCDP once, ``rho_job = rho_for_epsilon(epsilon, delta)``, split in the fixed
shares above (they add to 1), and each round's per-site sigma is calibrated on
``honest_sites`` for its share (:func:`round_terms`). zCDP adds over rounds, so the
rounds' ``rho`` add to at most ``rho_job``, and the job is ``(epsilon, delta)``-DP.

Sensitivity: one person added or removed, all of their values in a release at once, in
ring units. A round's real values are sent at :data:`DP_SCALE_BITS` fractional bits:
each site rounds its sums to that grid and adds ``k / 2^s``, ``k ~ N_Z(0, sigma^2)`` (a
dyadic number: the encoding passes ``rint(sum 2^s) + k`` exactly). Between neighbouring
datasets a site's real sum moves by the person's values and its rounding by less than 1
unit per value, so for ``P`` values ``l2_ring <= l2_real 2^s + sqrt(P)`` and
``l1_ring <= l1_real 2^s + P`` (:func:`ring_sensitivity`); the float64 error of a site's
own summation (far below ``2^-s``) is not covered, as the sampler's float approximation
is not (:mod:`pipeline.privacy.discrete_gaussian`). The real bounds come from the
site's clipping (:mod:`pipeline.analyses.bounds`): raw values to ``±max_abs_value``
(so ``|x / A| <= 1``), standardized covariates and phenotype to ``±Z = max_abs_z``, and a
genotype is in [0, 2], a dosage too (clipped at the site, :func:`pipeline.dataset.dosage_or_call`)
(:func:`moments_sensitivity`, :func:`statistics_sensitivity`). The
statistics round's ``l2`` grows like ``sqrt(V)`` over ``V`` variants and like ``Z^2``:
a small ``max_abs_z`` (4 or 5) is what makes the noise bearable.

Every round's noise is derived, never stored: from the public terms and the public
state (the number of variants and columns, the bounds), at every party.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.analyses.census import census_sensitivity
from pipeline.encoding import Real
from pipeline.errors import ConfigurationError
from pipeline.privacy import (
    MAX_SIGMA,
    PrivacyTerms,
    Sensitivity,
    Spend,
    noise_headroom,
    release_noise,
    rho_for_epsilon,
    sample_discrete_gaussian,
    zcdp_to_approx_dp,
)
from pipeline.stats import glm

__all__ = [
    "CENSUS_SHARE",
    "DP_SCALE_BITS",
    "MOMENTS_SHARE",
    "STATISTICS_SHARE",
    "add_noise",
    "census_terms",
    "job_privacy",
    "moments_noise",
    "moments_sensitivity",
    "noisy_real",
    "ring_sensitivity",
    "round_terms",
    "statistics_noise",
    "statistics_sensitivity",
]

CENSUS_SHARE = 0.1
"""Share of the job's zCDP rho for the census' counts round (QC needs coarse counts only)."""
MOMENTS_SHARE = 0.1
"""Share for the moments round (means and SDs only standardize: the fit does not depend on them)."""
STATISTICS_SHARE = 0.8
"""Share for the per-variant statistics round: the estimates themselves."""
DP_SCALE_BITS = 10
"""Fractional bits of the noisy real fields: the noise is far coarser than 2^-10, the rounding
term of the sensitivity (``sqrt(P)``) stays below 0.1% of ``l2_real 2^10``, and sigma in ring
units stays below the sampler's 2^32 up to a noise standard deviation of 2^22 per site."""
_MARGIN = 1e-9
"""Relative margin taken off each round's rho, so float round trips never add up above the budget."""


def round_terms(terms: PrivacyTerms, share: float) -> PrivacyTerms:
    """Terms whose one release costs ``share`` of the job's zCDP ``rho`` (a little less).

    :func:`~pipeline.privacy.calibrate_sigma` targets ``rho_for_epsilon(epsilon, delta)``,
    so the round's epsilon is the one of its rho: ``zcdp_to_approx_dp(share * rho_job)``.
    """
    if not 0.0 < share <= 1.0:
        raise ConfigurationError(f"gwas: a round's share of the privacy budget must be in (0, 1], got {share}")
    rho = share * rho_for_epsilon(terms.epsilon, terms.delta) * (1.0 - _MARGIN)
    return dataclasses.replace(terms, epsilon=zcdp_to_approx_dp(rho, terms.delta))


def census_terms(terms: PrivacyTerms) -> PrivacyTerms:
    """The census phase's terms: its counts round gets :data:`CENSUS_SHARE` of the job's rho."""
    return round_terms(terms, CENSUS_SHARE)


def ring_sensitivity(l2_real: float, l1_real: float, num_values: int, scale_bits: int = DP_SCALE_BITS) -> Sensitivity:
    """One person's change of ``num_values`` real sums in ring units (rounding moves each by < 1)."""
    scale = float(1 << scale_bits)
    return Sensitivity(l2=l2_real * scale + math.sqrt(num_values), l1=l1_real * scale + num_values)


def moments_sensitivity(num_columns: int) -> Sensitivity:
    """The moments round (``n``, ``sum x / A``, ``sum (x / A)^2`` over ``num_columns``): each value moves by <= 1."""
    values = 1 + 2 * num_columns
    return ring_sensitivity(math.sqrt(values), float(values), values)


def statistics_sensitivity(num_variants: int, num_coefficients: int, max_abs_z: float) -> Sensitivity:
    """The statistics round: one person's ``xtx``, ``xty``, ``yty`` at every variant.

    Per variant the person adds ``u_i u_j`` to each packed entry of ``xtx``, ``u_i y`` to
    ``xty`` and ``y^2`` to ``yty``, where ``u = (1, z_1..z_m, g)``, ``|z|, |y| <= Z`` and
    ``0 <= g <= 2`` (a hard call or a clipped dosage); the largest absolute values give the per-variant norms, and the
    ``V`` variants multiply ``l2^2`` and ``l1`` by ``V`` (a person may be called at all).

    Args:
        num_variants: V, the variants tested.
        num_coefficients: k, the intercept and the covariates (the genotype comes on top).
        max_abs_z: Z, the clip of the standardized covariates and phenotype.
    """
    z = float(max_abs_z)
    u = np.array([1.0, *([z] * (num_coefficients - 1)), 2.0])
    rows, cols = glm.packed_index(num_coefficients)
    xtx = u[rows] * u[cols]
    xty = u * z
    per_value = np.concatenate([xtx, xty, [z * z]])
    l2 = math.sqrt(num_variants * float(np.sum(per_value**2)))
    l1 = num_variants * float(np.sum(per_value))
    return ring_sensitivity(l2, l1, num_variants * per_value.size)


def _checked(noise: Spend, release: str) -> Spend:
    if noise.sigma > MAX_SIGMA:
        raise ConfigurationError(
            f"gwas: with privacy the {release} needs per-site noise sigma {noise.sigma / (1 << DP_SCALE_BITS):.4g} "
            f"(real units), beyond what the sampler draws; the results would be noise: lower max_abs_z, test fewer "
            "variants (raise maf) or raise privacy.epsilon"
        )
    return noise


@functools.lru_cache(maxsize=64)
def moments_noise(terms: PrivacyTerms, num_columns: int) -> Spend:
    """The moments round's per-site noise and spend (:data:`MOMENTS_SHARE` of the job's rho)."""
    return _checked(release_noise(round_terms(terms, MOMENTS_SHARE), moments_sensitivity(num_columns)), "moments round")


@functools.lru_cache(maxsize=64)
def statistics_noise(terms: PrivacyTerms, num_variants: int, num_coefficients: int, max_abs_z: float) -> Spend:
    """The statistics round's per-site noise and spend (:data:`STATISTICS_SHARE` of the job's rho)."""
    sensitivity = statistics_sensitivity(num_variants, num_coefficients, max_abs_z)
    return _checked(release_noise(round_terms(terms, STATISTICS_SHARE), sensitivity), "statistics round")


def noisy_real(name: str, shape: tuple[int, ...], bound: float, noise: Spend, num_values: int) -> Real:
    """A real field at :data:`DP_SCALE_BITS` whose bound leaves room for one site's noise on ``num_values`` values."""
    room = noise_headroom(noise.sigma, num_values) / float(1 << DP_SCALE_BITS)
    return Real(name, shape, bound + room, min_scale_bits=DP_SCALE_BITS, max_scale_bits=DP_SCALE_BITS)


def add_noise(values: Mapping[str, np.ndarray], noise: Spend, *, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Each sum rounded to the ``2^-s`` grid plus ``k 2^-s``, ``k ~ N_Z(0, sigma^2)`` drawn from ``rng``.

    ``rint(x 2^s) + k`` is an integer below 2^53, so the float holds it exactly and the
    encoding sends exactly that ring element. ``rng`` must be
    :func:`~pipeline.privacy.secret_generator` at a site (a seeded one only in tests).
    """
    scale = float(1 << DP_SCALE_BITS)
    out = {}
    for name, value in values.items():
        grid = np.rint(np.asarray(value, np.float64) * scale)
        out[name] = (grid + sample_discrete_gaussian(noise.sigma, grid.shape, rng=rng)) / scale
    return out


def noise_sd(noise: Spend, num_sites: int, scale_bits: int = DP_SCALE_BITS) -> float:
    """Standard deviation of the summed noise of ``num_sites`` sites, in real units (at most; N_Z's is a little below sigma)."""
    return math.sqrt(num_sites) * noise.sigma / float(1 << scale_bits)


def job_privacy(terms: PrivacyTerms, *, census_variants: int, num_columns: int, num_variants: int,
                num_coefficients: int, max_abs_z: float, num_sites: int) -> dict[str, Any]:
    """The job's ``summary["privacy"]``: its target, what its noisy rounds spent together, and each round's noise."""
    census = release_noise(census_terms(terms), census_sensitivity(census_variants))
    moments = moments_noise(terms, num_columns)
    statistics = statistics_noise(terms, num_variants, num_coefficients, max_abs_z)
    rounds = [("census", "counts", CENSUS_SHARE, census, 0), ("gwas", "moments", MOMENTS_SHARE, moments, DP_SCALE_BITS),
              ("gwas", "statistics", STATISTICS_SHARE, statistics, DP_SCALE_BITS)]
    rho = sum(spend.rho for _, _, _, spend, _ in rounds)
    return {
        "target_epsilon": terms.epsilon,
        "epsilon": zcdp_to_approx_dp(rho, terms.delta),
        "delta": terms.delta,
        "rho": rho,
        "rho_budget": rho_for_epsilon(terms.epsilon, terms.delta),
        "honest_sites": terms.honest_sites,
        "max_colluding": terms.max_colluding,
        "sites_adding_noise": int(num_sites),
        "rounds": [
            {"phase": phase, "round": name, "share": share, "sigma": spend.sigma, "scale_bits": bits,
             "sigma_real": spend.sigma / float(1 << bits), "noise_sd_of_sum": noise_sd(spend, num_sites, bits),
             "rho": spend.rho, "epsilon": spend.epsilon, "l2": spend.l2, "l1": spend.l1}
            for phase, name, share, spend, bits in rounds
        ],
        "mechanism": "distributed discrete Gaussian (zCDP, Kairouz, Liu & Steinke 2021); rounds compose by adding rho",
        "unit": "one person, all of their values in every release of the job",
        "outside_the_guarantee": "the census' key round: which variant IDs each site holds at or above its own minimum "
                                 "minor allele count; the gwas phase's rs ID round: the rs IDs its dataset records for those",
    }
