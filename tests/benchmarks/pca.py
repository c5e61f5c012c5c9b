"""PCA site-step benchmark: the tiled JAX float64 product G^T (G V) against dense numpy.

Prints seconds and the ratio to a numpy baseline timed in the same process (standardize
the whole block in float64, then ``X @ (X.T @ V)``), plus the pooled SVD a federation
replaces. Run: ``python tests/benchmarks/pca.py [variants] [samples]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from pipeline.stats import pca


def _best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(num_variants: int = 5000, num_samples: int = 2000, width: int = 14) -> None:
    rng = np.random.default_rng(0)
    frequency = rng.uniform(0.05, 0.5, (num_variants, 1))
    calls = rng.binomial(2, frequency, (num_variants, num_samples)).astype(np.int8)
    calls[rng.random(calls.shape) < 0.02] = -1
    counts = ((calls == 0).sum(1), (calls == 1).sum(1), (calls == 2).sum(1))
    mean, inv_scale = pca.standardization(*counts)
    basis = pca.initial_basis(num_variants, width, 0)

    def numpy_baseline() -> np.ndarray:
        x = pca.standardize(calls, mean, inv_scale)
        return x @ (x.T @ basis)

    pca.gram_product(calls, mean, inv_scale, basis)  # compile
    baseline = _best(numpy_baseline)
    kernel = _best(lambda: pca.gram_product(calls, mean, inv_scale, basis))
    error = np.max(np.abs(pca.gram_product(calls, mean, inv_scale, basis) - numpy_baseline())) / np.max(np.abs(numpy_baseline()))
    svd = _best(lambda: np.linalg.svd(pca.standardize(calls, mean, inv_scale).T, full_matrices=False), repeats=1)
    print(f"G^T(GV), {num_variants} variants x {num_samples} samples, width {width}")
    print(f"  numpy dense float64 (baseline) {baseline:8.3f} s")
    print(f"  jax tiled float64              {kernel:8.3f} s   ratio {kernel / baseline:5.2f}   max rel. diff {error:.1e}")
    print(f"  pooled SVD of the same block   {svd:8.3f} s   ratio {svd / baseline:5.2f}  (one iteration vs a full SVD)")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
