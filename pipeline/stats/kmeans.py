"""k-means (Lloyd's algorithm) with k-means++ seeding from a fixed, public seed; numpy only.

A site groups its own samples by their PC scores with it (ancestry clusters for the
GWAS's Hardy-Weinberg test). The seed is a constant, not a secret: two runs on the same
scores give the same clusters, and the clusters depend on the scores alone. A few
restarts from different seedings keep the one with the smallest within-cluster sum of
squares, since one k-means++ seeding can land two centres in one group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KMeans", "kmeans"]


@dataclass(frozen=True)
class KMeans:
    """A k-means fit.

    Attributes:
        centers: (k, dims) cluster means (a cluster left empty keeps its last centre).
        labels: (points,) index of each point's nearest centre.
        inertia: the sum of squared distances of the points to their centres.
    """

    centers: np.ndarray
    labels: np.ndarray
    inertia: float


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(points, k); one centre at a time, so memory stays (points, dims) whatever k."""
    return np.stack([((points - center) ** 2).sum(axis=1) for center in centers], axis=1)


def _seed_centers(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur & Vassilvitskii 2007): each next centre drawn with probability proportional to D^2."""
    centers = [points[int(rng.integers(len(points)))]]
    nearest = ((points - centers[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = nearest.sum()
        index = int(rng.integers(len(points))) if total <= 0 else int(rng.choice(len(points), p=nearest / total))
        centers.append(points[index])
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(axis=1))
    return np.array(centers, np.float64)


def _lloyd(points: np.ndarray, centers: np.ndarray, max_iterations: int) -> KMeans:
    labels = np.full(len(points), -1, np.int64)
    for _ in range(max_iterations):
        new = np.argmin(_squared_distances(points, centers), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for cluster in range(len(centers)):
            members = labels == cluster
            if members.any():
                centers[cluster] = points[members].mean(axis=0)
    distances = _squared_distances(points, centers)
    labels = np.argmin(distances, axis=1)
    return KMeans(centers, labels, float(distances[np.arange(len(points)), labels].sum()))


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, restarts: int = 4, max_iterations: int = 100) -> KMeans:
    """Clusters ``points`` into at most ``k`` groups; deterministic for a given ``seed``.

    Args:
        points: (n, dims) finite coordinates.
        k: clusters (at least 1); with fewer points, some clusters are empty.
        seed: the seeding's generator seed (public: the clusters depend on the points alone).
        restarts: seedings tried; the fit with the smallest inertia is kept (the first on ties).
        max_iterations: Lloyd iterations per seeding at most.

    Raises:
        ValueError: ``k`` or ``restarts`` below 1, or points that are not a finite (n, dims) array.
    """
    points = np.asarray(points, np.float64)
    if k < 1 or restarts < 1:
        raise ValueError(f"kmeans: k and restarts must be at least 1 (got k={k}, restarts={restarts})")
    if points.ndim != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"kmeans: points must be a finite (n, dims) array (got shape {points.shape})")
    if len(points) == 0:
        return KMeans(np.zeros((k, points.shape[1])), np.zeros(0, np.int64), 0.0)
    rng = np.random.default_rng(seed)
    best: KMeans | None = None
    for _ in range(restarts):
        fit = _lloyd(points, _seed_centers(points, k, rng), max_iterations)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None
    return best
