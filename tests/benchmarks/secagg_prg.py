"""Mask PRG throughput: each engine against OpenSSL's ChaCha20 streaming, timed in one process.

The baseline is the fastest thing our masks could possibly cost on a CPU: OpenSSL's
ChaCha20 (through ``cryptography``) writing keystream into a preallocated buffer, one
``update_into`` call per seed, nothing else. The engines are timed doing the real job,
adding ``k`` signed masks of ``num_words`` uint32 words to a preallocated vector
(:func:`pipeline.secagg.masks.add_masks`); the jax engine is also timed on the device
alone (the coordinator's batched mask regeneration, :func:`masks.mask_sum_device`).

Throughput is keystream bytes per second (``k * 4 * num_words / seconds``); ratios are
against the baseline for the same ``k``. Best of ``repeats`` runs, first run discarded
(page faults, compilation).

Run: ``python tests/benchmarks/secagg_prg.py [--words N] [--seeds 1,4,16] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from pipeline.secagg import chacha20, masks
from pipeline.encoding import Ring


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: page faults, JIT compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _openssl_baseline(seeds: Sequence[bytes], zeros: np.ndarray, out: np.ndarray) -> None:
    for seed in seeds:
        chacha20.openssl_encryptor(seed, masks.MASK_NONCE, 0).update_into(zeros, out)


def bench_prg(
    num_words: int = 10_000_000, seed_counts: Sequence[int] = (1, 4, 16), repeats: int = 3
) -> list[dict]:
    """Time mask generation of each engine and of the OpenSSL baseline; one dict per row.

    Keys of each row: ``case``, ``engine``, ``seeds``, ``words``, ``seconds``, ``gb_per_s``,
    ``baseline_gb_per_s``, ``ratio`` (engine throughput / baseline throughput), ``backend``.
    """
    rng = np.random.default_rng(0)
    zeros = np.zeros(4 * num_words, dtype=np.uint8)
    out = np.empty(4 * num_words, dtype=np.uint8)
    vector = rng.integers(0, 2**32, num_words, dtype=np.uint64).astype(np.uint32)
    backend = jax.default_backend()
    rows: list[dict] = []
    for count in seed_counts:
        seeds = [rng.bytes(32) for _ in range(count)]
        signs = [1 if i % 2 == 0 else -1 for i in range(count)]
        keys, negate = masks.parse_seeds(seeds, signs)
        total_bytes = 4 * num_words * count
        baseline = _best_seconds(lambda: _openssl_baseline(seeds, zeros, out), repeats)
        cases: list[tuple[str, str, Callable[[], object]]] = [
            ("baseline: OpenSSL update_into", "openssl", lambda: _openssl_baseline(seeds, zeros, out)),
            ("add_masks in place", "openssl", lambda: masks.add_masks(vector, seeds, signs, engine="openssl")),
            ("add_masks in place", "jax", lambda: masks.add_masks(vector, seeds, signs, engine="jax")),
            (
                "mask_sum on device",
                "jax",
                lambda: masks.mask_sum_device(keys, negate, num_words, Ring.R32).block_until_ready(),
            ),
        ]
        for case, engine, run in cases:
            seconds = baseline if case.startswith("baseline") else _best_seconds(run, repeats)
            rows.append(
                {
                    "case": case,
                    "engine": engine,
                    "seeds": count,
                    "words": num_words,
                    "seconds": seconds,
                    "gb_per_s": total_bytes / seconds / 1e9,
                    "baseline_gb_per_s": total_bytes / baseline / 1e9,
                    "ratio": baseline / seconds,
                    "backend": backend,
                }
            )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The rows as a small fixed-width table."""
    header = f"{'seeds':>5}  {'case':<30} {'engine':<8} {'seconds':>9} {'GB/s':>7} {'x OpenSSL':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['seeds']:>5}  {row['case']:<30} {row['engine']:<8} {row['seconds']:>9.4f} "
            f"{row['gb_per_s']:>7.2f} {row['ratio']:>9.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=10_000_000, help="uint32 words per mask (default 10^7)")
    parser.add_argument("--seeds", default="1,4,16", help="comma-separated numbers of seeds (default 1,4,16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case; the best is kept")
    args = parser.parse_args()
    seed_counts = [int(s) for s in args.seeds.split(",") if s]
    rows = bench_prg(args.words, seed_counts, args.repeats)
    print(f"mask PRG, {args.words} uint32 words per mask, JAX backend {rows[0]['backend']}, "
          f"default engine {chacha20.default_engine()}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
