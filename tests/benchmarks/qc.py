"""Local QC speed: vectorized HWE and JAX counts against baselines timed in this process.

Run: python tests/benchmarks/qc.py [--variants 2000] [--samples 2000]

Prints, for the same inputs:
  * hwe_exact_p (all variants at once) vs a per-variant Python loop of the classic
    Wigginton et al. (2005) SNPHWE recurrence (the algorithm plink ports), and checks
    that both give the same p-values;
  * count_block with its JAX and NumPy engines vs plain NumPy reductions on the same block;
  * run_qc end to end on a dataset of that size (variants per second).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.qc import run_qc  # noqa: E402
from pipeline.stats.counts import count_block, default_engine  # noqa: E402
from pipeline.stats.hwe import hwe_exact_p  # noqa: E402
from tests.test_qc import build_dataset, genotype_matrix  # noqa: E402


def snphwe_loop(n_het: int, n_hom1: int, n_hom2: int) -> float:
    """Wigginton et al. (2005) SNPHWE, one variant at a time (the usual scalar code)."""
    n_hom_rare, n_hom_common = min(n_hom1, n_hom2), max(n_hom1, n_hom2)
    n = n_het + n_hom_rare + n_hom_common
    if n == 0:
        return float("nan")
    rare = 2 * n_hom_rare + n_het
    probs = np.zeros(rare + 1)
    mid = rare * (2 * n - rare) // (2 * n)
    if (rare & 1) ^ (mid & 1):
        mid += 1
    probs[mid] = 1.0
    hom_r, hom_c = (rare - mid) // 2, n - mid - (rare - mid) // 2
    total = 1.0
    h = mid
    while h > 1:
        probs[h - 2] = probs[h] * h * (h - 1) / (4.0 * (hom_r + 1) * (hom_c + 1))
        total += probs[h - 2]
        h -= 2
        hom_r += 1
        hom_c += 1
    hom_r, hom_c = (rare - mid) // 2, n - mid - (rare - mid) // 2
    h = mid
    while h <= rare - 2:
        probs[h + 2] = probs[h] * 4.0 * hom_r * hom_c / ((h + 2) * (h + 1))
        total += probs[h + 2]
        h += 2
        hom_r -= 1
        hom_c -= 1
    observed = probs[n_het]
    return float(min(1.0, probs[probs <= observed * (1 + 1e-9)].sum() / total))


def best_of(repeats: int, func, *args) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    calls = genotype_matrix(seed=0, n_variants=args.variants, n_samples=args.samples)

    variants, _ = count_block(calls)  # compile once
    tables = (variants.n_hom_ref, variants.n_het, variants.n_hom_alt)
    fast = best_of(3, hwe_exact_p, *tables)
    loop = best_of(1, lambda: [snphwe_loop(int(b), int(a), int(c)) for a, b, c in zip(*tables)])
    reference = np.array([snphwe_loop(int(b), int(a), int(c)) for a, b, c in zip(*tables)])
    np.testing.assert_allclose(hwe_exact_p(*tables), reference, rtol=1e-8, atol=1e-300)
    print(f"HWE, {args.variants} variants x {args.samples} samples: vectorized {fast * 1e3:.1f} ms, "
          f"per-variant loop {loop * 1e3:.1f} ms, speed-up x{loop / fast:.1f} (same p-values)")

    count_block(calls, engine="jax")  # compile once
    jax_time = best_of(3, lambda: count_block(calls, engine="jax"))
    engine_time = best_of(3, lambda: count_block(calls, engine="numpy"))
    numpy_time = best_of(3, lambda: ([(calls == v).sum(1) for v in (0, 1, 2, -1)], (calls >= 0).sum(0), (calls == 1).sum(0), (calls == -1).sum(0)))
    print(f"counts, same block: count_block JAX engine {jax_time * 1e3:.1f} ms, NumPy engine {engine_time * 1e3:.1f} ms "
          f"(default here: {default_engine()}), plain NumPy reductions {numpy_time * 1e3:.1f} ms; "
          f"JAX / NumPy engine x{jax_time / engine_time:.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        chunk = max(1, args.variants // 4)
        sizes = [chunk] * (args.variants // chunk) + ([args.variants % chunk] if args.variants % chunk else [])
        root = build_dataset(Path(tmp) / "bench.dataset", calls, chunk_sizes=sizes)
        start = time.perf_counter()
        run_qc(root, out=Path(tmp) / "bench.qc")
        elapsed = time.perf_counter() - start
    print(f"run_qc end to end: {args.variants} variants x {args.samples} samples in {elapsed:.2f} s "
          f"({args.variants / elapsed:,.0f} variants/s, {len(sizes)} chunks)")


if __name__ == "__main__":
    main()
