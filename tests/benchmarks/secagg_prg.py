"""Mask PRG throughput: each PRG and engine against OpenSSL's own cipher streaming, timed in one process.

For each mask PRG (AES-128-CTR, ChaCha20) the baseline is the fastest thing its masks
could possibly cost on a CPU: OpenSSL's cipher (through ``cryptography``) writing
keystream into a preallocated buffer, one ``update_into`` call per seed, nothing else.
The engines are timed doing the real job, adding ``k`` signed masks of ``num_words``
uint32 words to a preallocated vector (:func:`pipeline.secagg.masks.add_masks`); the
jax engine (ChaCha20 only) is also timed on the device alone (the coordinator's batched
mask regeneration, :func:`kernels.mask_sum_device`).

Throughput is keystream bytes per second (``k * 4 * num_words / seconds``); ratios are
against the baseline of the same PRG for the same ``k``, and the AES-CTR baseline is
also printed against ChaCha20's. Best of ``repeats`` runs, first run discarded
(page faults, compilation).

Run: ``python tests/benchmarks/secagg_prg.py [--words N] [--seeds 1,4,16] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from pipeline.secagg import chacha20, kernels, masks
from pipeline.secagg.prg import AES_CTR, CHACHA20
from pipeline.encoding import Ring


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: page faults, JIT compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _openssl_baseline(prg: str, seeds: Sequence[bytes], zeros: np.ndarray, out: np.ndarray) -> None:
    for seed in seeds:
        masks.mask_encryptor(prg, seed).update_into(zeros, out)


def bench_prg(
    num_words: int = 10_000_000, seed_counts: Sequence[int] = (1, 4, 16), repeats: int = 3
) -> list[dict]:
    """Time mask generation of each engine and of the OpenSSL baseline; one dict per row.

    Keys of each row: ``prg``, ``case``, ``engine``, ``seeds``, ``words``, ``seconds``, ``gb_per_s``,
    ``baseline_gb_per_s``, ``ratio`` (engine throughput / its PRG's baseline throughput), ``backend``.
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
        baselines = {prg: _best_seconds(lambda prg=prg: _openssl_baseline(prg, seeds, zeros, out), repeats)
                     for prg in (AES_CTR, CHACHA20)}
        cases: list[tuple[str, str, str, Callable[[], object] | None]] = [
            (AES_CTR, "baseline: OpenSSL update_into", "openssl", None),
            (AES_CTR, "add_masks in place", "openssl",
             lambda: masks.add_masks(vector, seeds, signs, prg=AES_CTR, engine="openssl")),
            (CHACHA20, "baseline: OpenSSL update_into", "openssl", None),
            (CHACHA20, "add_masks in place", "openssl",
             lambda: masks.add_masks(vector, seeds, signs, prg=CHACHA20, engine="openssl")),
            (CHACHA20, "add_masks in place", "jax", lambda: masks.add_masks(vector, seeds, signs, prg=CHACHA20, engine="jax")),
            (CHACHA20, "mask_sum on device", "jax",
             lambda: kernels.mask_sum_device(keys, negate, num_words, Ring.R32).block_until_ready()),
        ]
        for prg, case, engine, run in cases:
            baseline = baselines[prg]
            seconds = baseline if run is None else _best_seconds(run, repeats)
            rows.append(
                {
                    "prg": prg,
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
    header = f"{'seeds':>5}  {'prg':<10} {'case':<30} {'engine':<8} {'seconds':>9} {'GB/s':>7} {'x OpenSSL':>9}"
    lines = [header, "-" * len(header)]
    baseline_seconds: dict[tuple[int, str], float] = {}
    for row in rows:
        lines.append(
            f"{row['seeds']:>5}  {row['prg']:<10} {row['case']:<30} {row['engine']:<8} {row['seconds']:>9.4f} "
            f"{row['gb_per_s']:>7.2f} {row['ratio']:>9.2f}"
        )
        if row["case"].startswith("baseline"):
            baseline_seconds[(row["seeds"], row["prg"])] = row["seconds"]
    for (count, prg), seconds in baseline_seconds.items():
        if prg == AES_CTR and (count, CHACHA20) in baseline_seconds:
            lines.append(f"{count:>5}  OpenSSL AES-128-CTR keystream: {baseline_seconds[(count, CHACHA20)] / seconds:.2f}x "
                         "ChaCha20's speed")
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
          f"default ChaCha20 engine {chacha20.default_engine()}")
    print(format_table(rows))


if __name__ == "__main__":
    main()
