"""The numerical pieces of federated PCA: standardization, thinning, subspace iteration.

Federated PCA (:mod:`pipeline.analyses.pca`) finds the top eigenvectors of
``A = G^T G``, where ``G`` (samples x variants, rows from every site) holds standardized
genotypes ``(g - 2p) / sqrt(2p(1 - p))`` with the *global* alternate allele frequency
``p`` and missing calls set to 0 (mean imputation), as EIGENSOFT and plink2 do. Since
``A = sum_s G_s^T G_s``, one step of randomized subspace iteration (Halko, Martinsson
and Tropp 2011, algorithm 4.4) needs from each site only ``G_s^T (G_s V)``, a
(variants x width) matrix for the public basis ``V``: the sum is what secure
aggregation delivers. The coordinator orthonormalizes (:func:`orthonormalize`) and, at
the end, a Rayleigh-Ritz step (:func:`rayleigh_ritz`) gives the eigenvalues and the
variant-space loadings. Sample scores ``G_s v_c`` never leave a site.

Site products run in float64 (JAX, :mod:`pipeline.stats.pca_jax`, imported by the first
product, with 64-bit types switched on only inside those functions through
``jax.enable_x64``, never globally): float32 sums over thousands of
variants lose ~1e-6 relative precision, which would cap the agreement with a pooled
SVD below what the analysis promises. Blocks are cut into tiles of a few fixed shapes
so a site compiles each kernel a handful of times per job.

Everything here is pure: arrays in, arrays out, no files and no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "standardization",
    "standardized_sum_of_squares",
    "standardize",
    "thin_by_position",
    "initial_basis",
    "orthonormalize",
    "rayleigh_ritz",
    "gram_product",
    "project",
]


def _counts(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, np.float64) for a in arrays)


def standardization(n_hom_ref: np.ndarray, n_het: np.ndarray, n_hom_alt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-variant centre ``2p`` and inverse scale ``1/sqrt(2p(1-p))`` from global counts.

    ``p`` is the alternate allele frequency among called samples of all sites (the
    census' sums). A monomorphic or never-called variant gets inverse scale 0, so it
    contributes nothing (its standardized values are all 0).

    Returns:
        ``(mean, inv_scale)``, float64 arrays of shape (variants,).
    """
    hom_ref, het, hom_alt = _counts(n_hom_ref, n_het, n_hom_alt)
    allele_number = 2.0 * (hom_ref + het + hom_alt)
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = np.where(allele_number > 0, (het + 2.0 * hom_alt) / np.maximum(allele_number, 1.0), 0.0)
        variance = 2.0 * frequency * (1.0 - frequency)
        inv_scale = np.where(variance > 0, 1.0 / np.sqrt(np.where(variance > 0, variance, 1.0)), 0.0)
    return 2.0 * frequency, inv_scale


def standardized_sum_of_squares(
    n_hom_ref: np.ndarray, n_het: np.ndarray, n_hom_alt: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray
) -> np.ndarray:
    """Per variant, the sum over all called samples of the squared standardized genotype.

    This is ``||g_j||^2``, the squared norm of variant ``j``'s column of the pooled
    ``G`` (missing calls are 0). Its sum is ``trace(G^T G)``, the total variance the
    eigenvalues are a share of, and it bounds every site's contribution (see
    :mod:`pipeline.analyses.pca`), all from public counts.
    """
    hom_ref, het, hom_alt = _counts(n_hom_ref, n_het, n_hom_alt)
    mean = np.asarray(mean, np.float64)
    squares = hom_ref * mean**2 + het * (1.0 - mean) ** 2 + hom_alt * (2.0 - mean) ** 2
    return squares * np.asarray(inv_scale, np.float64) ** 2


def standardize(call_dosage: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray) -> np.ndarray:
    """``(g - 2p) / sqrt(2p(1-p))`` for a (variants, samples) block; missing calls become 0.

    A slow, obvious numpy version of what the kernels compute (tests and small data).
    """
    calls = np.asarray(call_dosage)
    values = (calls.astype(np.float64) - np.asarray(mean, np.float64)[:, None]) * np.asarray(inv_scale, np.float64)[:, None]
    return np.where(calls >= 0, values, 0.0)


def thin_by_position(
    chromosome: Sequence[str] | np.ndarray,
    position: np.ndarray,
    minor_allele_frequency: np.ndarray,
    *,
    window_bp: int,
    min_maf: float = 0.0,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Keeps at most one variant per ``window_bp`` window of each chromosome.

    A deterministic stand-in for LD pruning: windows are ``[w * window_bp, (w + 1) *
    window_bp)``; in each, the eligible variant with the highest minor allele frequency
    (ties: the smallest position, then the first given) is kept. Variants closer than
    the window are usually in LD, so this removes most of the local correlation that
    would otherwise let a few dense regions dominate the components. True LD pruning
    (``plink2 --indep-pairwise``) needs correlations between variants *across* sites,
    that is, extra secure-sum rounds of per-window covariance matrices; this does not.

    Args:
        chromosome, position: (variants,) coordinates.
        minor_allele_frequency: (variants,) global MAF (NaN counts as not eligible).
        window_bp: window width in base pairs (>= 1).
        min_maf: variants with a lower MAF are dropped first.
        eligible: optional (variants,) bool mask of variants that may be kept at all.

    Returns:
        A (variants,) bool mask of the kept variants.
    """
    if window_bp < 1:
        raise ValueError(f"window_bp must be at least 1, got {window_bp}")
    position = np.asarray(position, np.int64)
    maf = np.asarray(minor_allele_frequency, np.float64)
    ok = ~np.isnan(maf) & (maf >= min_maf)
    if eligible is not None:
        ok &= np.asarray(eligible, bool)
    keep = np.zeros(position.shape, bool)
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        return keep
    _, contig_code = np.unique(np.asarray(chromosome, dtype=str)[candidates], return_inverse=True)
    window = position[candidates] // int(window_bp)
    # Sort by contig, window, descending MAF, position, input order; the first of each window wins.
    order = np.lexsort((candidates, position[candidates], -maf[candidates], window, contig_code))
    sorted_contig, sorted_window = contig_code[order], window[order]
    first = np.ones(order.size, bool)
    first[1:] = (sorted_contig[1:] != sorted_contig[:-1]) | (sorted_window[1:] != sorted_window[:-1])
    keep[candidates[order[first]]] = True
    return keep


def initial_basis(num_variants: int, width: int, seed: int) -> np.ndarray:
    """The public random starting basis: Gaussian (variants x width), orthonormalized.

    Drawn with numpy's PCG64 from ``seed``: it is public and needs no secrecy, only
    reproducibility at every party.
    """
    rng = np.random.default_rng(seed)
    return orthonormalize(rng.standard_normal((num_variants, width)))


def orthonormalize(matrix: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of ``matrix`` (reduced QR, ``diag(R) >= 0``)."""
    q, r = np.linalg.qr(np.asarray(matrix, np.float64))
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return q * signs[None, :]


def rayleigh_ritz(basis: np.ndarray, product: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` eigenpairs of ``A`` restricted to the span of an orthonormal ``basis``.

    Args:
        basis: (variants, width) orthonormal columns ``V``.
        product: ``A V`` (the secure sum of the sites' ``G_s^T G_s V``).
        k: number of components.

    Returns:
        ``(eigenvalues (k,), loadings (variants, k))``: eigenvalues of ``V^T A V`` in
        descending order and the Ritz vectors ``V W``, each signed so that its entry of
        largest magnitude is positive (a convention, so reruns agree).
    """
    basis = np.asarray(basis, np.float64)
    small = basis.T @ np.asarray(product, np.float64)
    small = 0.5 * (small + small.T)
    values, vectors = np.linalg.eigh(small)
    order = np.argsort(values)[::-1][:k]
    loadings = basis @ vectors[:, order]
    pivot = np.argmax(np.abs(loadings), axis=0)
    signs = np.where(loadings[pivot, np.arange(loadings.shape[1])] < 0, -1.0, 1.0)
    return values[order], loadings * signs[None, :]


# --------------------------------------------------------------------------- site products


def _checked(call_dosage: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    calls = np.asarray(call_dosage, np.int8)
    if calls.ndim != 2:
        raise ValueError(f"call_dosage must be (variants, samples), got shape {calls.shape}")
    mean = np.asarray(mean, np.float64).reshape(-1)
    inv_scale = np.asarray(inv_scale, np.float64).reshape(-1)
    rows = np.asarray(rows, np.float64)
    if not (mean.shape[0] == inv_scale.shape[0] == rows.shape[0] == calls.shape[0]):
        raise ValueError(
            f"{calls.shape[0]} variants of calls, but {mean.shape[0]} means, {inv_scale.shape[0]} scales and {rows.shape[0]} basis rows"
        )
    return calls, mean, inv_scale, rows


def project(call_dosage: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``G V`` for one site: (samples, width) float64 projections of its standardized genotypes.

    Args:
        call_dosage: int8 (variants, samples), -1 missing; rows in the basis' variant order.
        mean, inv_scale: (variants,) from :func:`standardization`.
        basis: (variants, width).
    """
    # JAX: imported by a site's first product, not with the analyses.
    from pipeline.stats import pca_jax

    return pca_jax.project(*_checked(call_dosage, mean, inv_scale, basis))


def gram_product(call_dosage: np.ndarray, mean: np.ndarray, inv_scale: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``G^T (G V)`` for one site: its (variants, width) contribution to a subspace step.

    Two passes over the tiles: ``G V`` (samples x width) first, then each tile's rows of
    ``G^T (G V)``. Never forms ``G^T G``.
    """
    # JAX: imported by a site's first product, not with the analyses.
    from pipeline.stats import pca_jax

    return pca_jax.gram_product(*_checked(call_dosage, mean, inv_scale, basis))
