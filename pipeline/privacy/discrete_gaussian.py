"""The discrete Gaussian N_Z(0, sigma^2): secret integer noise a site adds before secure aggregation.

Secure aggregation sums integers modulo 2^bits (:mod:`pipeline.encoding`), so the noise
that makes a release differentially private has to be an integer too: the discrete
Gaussian, ``P(X = k) ∝ exp(-k^2 / (2 sigma^2))`` over all integers ``k`` (Canonne,
Kamath & Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020;
arXiv:2004.00010). Each site adds its own draw; the coordinator only ever sees the sum of
the sites' values plus the sum of their noise.

The sampler follows CKS20 Algorithm 3 (rejection from a discrete Laplace of scale
``t = floor(sigma) + 1``), vectorized: candidates are drawn in batches and accepted or
rejected all at once until the requested number is reached.

Floating point, honestly: CKS20 sample *exactly*, with rational arithmetic and
Bernoulli(exp(-gamma)) built from coin flips. This module uses float64 instead, in two
places: the discrete Laplace candidates come from ``floor(t * E)`` with ``E`` a float64
standard exponential (exactly geometric in real arithmetic), and the acceptance test
compares a float64 uniform with a float64 ``exp``. The output distribution is therefore
close to the discrete Gaussian, not equal to it: each acceptance probability is off by
about 2^-53 absolutely (relatively more far in the tails, where it is tiny), and numpy's
exponential sampler is itself a float approximation. Unlike the textbook failure of
floating-point Laplace noise (Mironov, CCS 2012), the output is an integer chosen among
integer candidates and never added to the data in floating point, so its low bits do
not carry the input; the remaining gap between the sampled and the ideal distribution is
not covered by the privacy accounting. ``sigma`` is capped at :data:`MAX_SIGMA` so that
``t * E`` keeps many fractional bits of precision.

The noise must be secret to the site that draws it (whoever knows a site's noise can
subtract it from the sum). :func:`secret_generator` seeds a generator from the operating
system's entropy; reusing a seeded, logged or shared generator for noise would defeat the
privacy guarantee. Tests pass a seeded generator to be reproducible.

:func:`tail_bound` bounds the *sum* of the sites' noise with high probability; it is what
lets a ring's bit budget make room for the noise.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from pipeline.errors import ConfigurationError

MAX_SIGMA = float(2**32)
"""Largest sigma the sampler accepts: ``t * E`` stays far below 2^53, with ~2^-16 resolution or finer."""

_FIRST_ACCEPTANCE_GUESS = 0.5
"""Acceptance rate assumed for the first batch; later batches use the rate observed (about 0.6 to 0.9)."""


def secret_generator() -> np.random.Generator:
    """A generator seeded with 256 fresh bits from the operating system, for a site's secret noise.

    The seed comes from :func:`secrets.randbits` (``os.urandom``) and is never stored, so
    neither the coordinator nor the other sites can reproduce the noise. The bit generator
    is PCG64DXSM: fast and statistically strong, but *not* a cryptographic generator; its
    raw outputs are never published (only the noisy sum is), which is what the secrecy
    relies on.
    """
    return np.random.Generator(np.random.PCG64DXSM(secrets.randbits(256)))


def sample_discrete_gaussian(sigma: float, shape: int | tuple[int, ...], *, rng: np.random.Generator) -> np.ndarray:
    """Independent draws of N_Z(0, sigma^2), as int64 of ``shape``.

    CKS20 Algorithm 3, vectorized: a candidate ``Y`` from the discrete Laplace of scale
    ``t = floor(sigma) + 1`` is kept with probability
    ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``; kept candidates are exactly discrete
    Gaussian (in real arithmetic; see the module's note on floating point).

    Args:
        sigma: the scale parameter (not quite the standard deviation, which is a little
            smaller), in ``(0, MAX_SIGMA]``.
        shape: the output's shape.
        rng: keyword-only and required: pass :func:`secret_generator()` for noise that
            protects a release, a seeded generator only in tests.

    Returns:
        An int64 array of ``shape``.

    Raises:
        ConfigurationError: ``sigma`` or ``shape`` is invalid, or ``rng`` is not a
            ``numpy.random.Generator``.
    """
    sigma = _parse_sigma(sigma)
    shape = _parse_shape(shape)
    if not isinstance(rng, np.random.Generator):
        raise ConfigurationError(
            f"rng must be a numpy.random.Generator, got {type(rng).__name__}; pass "
            "rng=pipeline.privacy.secret_generator() for a release (the noise must stay secret to the site), "
            "or a seeded numpy.random.default_rng(seed) in tests"
        )
    size = math.prod(shape)
    out = np.empty(size, dtype=np.int64)
    t = math.floor(sigma) + 1
    centre = sigma * sigma / t
    two_variance = 2.0 * sigma * sigma
    filled = 0
    rate = _FIRST_ACCEPTANCE_GUESS
    while filled < size:
        need = size - filled
        batch = int(need / rate * 1.05) + 32
        candidates = _discrete_laplace(t, batch, rng)
        keep = rng.random(batch) < np.exp(-np.square(np.abs(candidates) - centre) / two_variance)
        accepted = candidates[keep]
        take = min(accepted.size, need)
        out[filled : filled + take] = accepted[:take]
        filled += take
        rate = max(accepted.size / batch, 0.05)
    return out.reshape(shape)


def _discrete_laplace(t: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws with ``P(Y = y) ∝ exp(-|y| / t)``, as float64 holding integers.

    The difference of two independent geometrics on {0, 1, ...} with success probability
    ``1 - exp(-1/t)``; each geometric is ``floor(t * E)`` for ``E`` standard exponential,
    since ``P(floor(t E) >= k) = P(E >= k / t) = exp(-k / t)``.
    """
    first = np.floor(t * rng.standard_exponential(size))
    second = np.floor(t * rng.standard_exponential(size))
    return first - second


def discrete_gaussian_pmf(k: Any, sigma: float) -> np.ndarray:
    """``P(X = k)`` for X ~ N_Z(0, sigma^2), normalized, elementwise over integer ``k``.

    The normalizer ``sum_j exp(-j^2 / (2 sigma^2))`` is summed directly for small sigma and
    through its Poisson-summation dual ``sigma sqrt(2 pi) sum_m exp(-2 pi^2 sigma^2 m^2)``
    for sigma >= 1, where both series are exact to float64 after a few terms.

    Raises:
        ConfigurationError: ``sigma`` is invalid or ``k`` is not integer-valued.
    """
    sigma = _parse_sigma(sigma)
    k = np.asarray(k)
    if k.dtype.kind not in "iu" and (
        k.dtype.kind != "f" or not np.all(np.isfinite(k)) or not np.all(k == np.round(k))
    ):
        raise ConfigurationError("discrete_gaussian_pmf is defined on integers; k has non-integer values")
    squares = np.square(k.astype(np.float64))
    return np.exp(-squares / (2.0 * sigma * sigma) - _log_normalizer(sigma))


def _log_normalizer(sigma: float) -> float:
    """``log sum_{j in Z} exp(-j^2 / (2 sigma^2))``, to float64 precision."""
    if sigma < 1.0:
        j = np.arange(1, 64, dtype=np.float64)  # exp(-63^2 / 2) underflows: the rest is 0
        return math.log(1.0 + 2.0 * float(np.sum(np.exp(-j * j / (2.0 * sigma * sigma)))))
    m = np.arange(1, 4, dtype=np.float64)  # the m = 1 term is already below 3e-9
    dual = 1.0 + 2.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma * sigma * m * m)))
    return math.log(sigma * math.sqrt(2.0 * math.pi)) + math.log(dual)


def tail_bound(sigma_total: float, failure_probability: float) -> int:
    """The integer T with ``P(|X| > T) <= failure_probability`` for the sum X of the sites' noise.

    The discrete Gaussian is sub-Gaussian with the same parameter as the continuous one,
    ``E[exp(lambda X)] <= exp(lambda^2 sigma^2 / 2)`` (CKS20), so for a sum of independent
    N_Z(0, sigma_i^2) the parameters' squares add: ``sigma_total = sqrt(sum sigma_i^2)``,
    ``sigma * sqrt(n)`` for ``n`` sites with the same sigma. Chernoff then gives
    ``P(|X| >= T) <= 2 exp(-T^2 / (2 sigma_total^2))``, and
    ``T = ceil(sigma_total * sqrt(2 log(2 / failure_probability)))``.

    A ring whose signed half holds the data's bound plus T decodes the noisy sum without
    wrapping, except with probability ``failure_probability`` per value; for a vector of
    ``V`` values pass ``failure_probability / V`` (union bound).

    Raises:
        ConfigurationError: ``sigma_total`` is not positive and finite, or
            ``failure_probability`` is not in (0, 1).
    """
    if isinstance(sigma_total, bool) or not isinstance(sigma_total, (int, float, np.integer, np.floating)):
        raise ConfigurationError(f"sigma_total must be a number, got {sigma_total!r}")
    if not (math.isfinite(sigma_total) and sigma_total > 0):
        raise ConfigurationError(f"sigma_total must be finite and positive, got {sigma_total!r}")
    if isinstance(failure_probability, bool) or not isinstance(failure_probability, (int, float, np.floating)):
        raise ConfigurationError(f"failure_probability must be a number, got {failure_probability!r}")
    if not 0.0 < failure_probability < 1.0:
        raise ConfigurationError(f"failure_probability must be in (0, 1), got {failure_probability!r}")
    return math.ceil(float(sigma_total) * math.sqrt(2.0 * math.log(2.0 / float(failure_probability))))


def _parse_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)):
        raise ConfigurationError(f"sigma must be a number, got {sigma!r}")
    sigma = float(sigma)
    if not (math.isfinite(sigma) and 0.0 < sigma <= MAX_SIGMA):
        raise ConfigurationError(
            f"sigma must be in (0, {MAX_SIGMA:.0f}], got {sigma!r}; noise this large or invalid is a "
            "configuration mistake (check the sensitivity's scale)"
        )
    return sigma


def _parse_shape(shape: Any) -> tuple[int, ...]:
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    if not isinstance(dims, (tuple, list)) or any(
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0 for d in dims
    ):
        raise ConfigurationError(f"shape must be a non-negative int or a tuple of them, got {shape!r}")
    return tuple(int(d) for d in dims)
