"""One script for a borrowed GPU: proves the JAX kernels bit-exact there and times them.

genofed's JAX kernels (the ChaCha20 mask PRG, a job's ``mask_prg: chacha20``; the
coordinator's unmasking; the GWAS site kernels) have an accelerator path that a CPU cannot exercise. When a GPU machine is lent
for a few minutes, run this one script; it prints everything, then one block of figures
to paste into the README.

Run:

* on a GPU machine: ``python tests/benchmarks/accelerator.py`` (defaults below; about
  a few minutes, much of it host-side data generation and the CPU baselines);
* here, to check the script itself: ``python tests/benchmarks/accelerator.py --quick
  --allow-cpu``. Without ``--allow-cpu`` the script stops at once (exit code 0) when
  JAX's default backend is the CPU.

Sections and what each figure means:

1. Device: ``jax.devices()``, ``jax.default_backend()``, the device kind, its memory
   (when JAX reports it), the date (UTC).
2. Bit-exactness (PASS/FAIL per check; exit code 1 on any FAIL): the JAX ChaCha20 engine
   on the device against the "openssl" engine (OpenSSL's ChaCha20 through
   ``cryptography``, an independent implementation) for several keys, nonces, counters
   (0, 1, a random one, and ``2^32 - blocks``, the last allowed start) and lengths (some
   not a multiple of 64 bytes); batched keys; the chunked ``lax.map`` path; and the RFC
   8439 vectors (sections 2.3.2 and 2.4.2, appendix A.1 and A.2) imported from
   ``tests/secagg/test_chacha20.py``.
3. Keystream throughput: keystream bytes per second of
   :func:`chacha20.keystream_words_device` (the jax engine, output left on the device,
   ``block_until_ready``) against the openssl engine's inner loop (``stream_into`` a
   preallocated host buffer: the fastest the CPU path can be) on this host's CPU, one
   core, timed in the same run. Median of ``--repeats`` runs after one warm-up run
   (compilation, page faults). The ratio is device / CPU; the README's goal is >= 20x.
   Also the jax figure including the copy of the keystream to the host, and OpenSSL's
   AES-128-CTR on the host (the default mask PRG, which has no jax engine) for scale. The two outputs
   are compared bit for bit (one more PASS/FAIL).
4. Unmasking at scale: ``--sites`` surviving sites, each with ``--values`` random ring
   elements, masked by the site's real masking call (:func:`masks.add_masks`, ChaCha20
   masks, openssl engine: a self mask, and a pairwise mask with each of ``--dropped`` dropped sites,
   alternating signs); the masked vectors are summed site by site on the host (never
   all held at once), then the coordinator's own call :func:`masks.unmask` removes
   the masks (``sites * (1 + dropped)`` keystreams regenerated in one jitted call).
   Checked equal to the NumPy ring sum of the values. Timed with the jax engine
   (including the transfers to and from the device) and the openssl engine on the host;
   "keystream GB/s" is the regenerated keystream bytes per second. When the stacked
   masked vectors fit a budget (``--stack-gib``, and a quarter of the device memory),
   the coordinator's :func:`kernels.ring_sum` of the stack is timed and checked too.
5. GWAS kernels at ``--samples`` x ``--variants`` (5 covariates, 1.2% missing calls):
   :func:`glm.linear_statistics` jax vs numpy (max relative difference per statistic,
   scaled by the column's largest magnitude; must be <= 1e-9), both timed;
   :func:`glm.logistic_statistics` (JAX only) timed, its first ``--logistic-check``
   variants checked against a naive NumPy ``X'(y - p)``, ``X'WX`` to 1e-9;
   :func:`counts.count_block` jax vs numpy, equal and timed.
6. Figures: one block at the end, device, date, every time, throughput and ratio. Every
   ratio is the host CPU's time over the device's (equivalently device GB/s over CPU
   GB/s): above 1, the device is faster.

Times are wall-clock seconds (medians); a GPU is timed including what the pipeline's
call does (transfers) unless the figure says "on device".
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import jax
import jax.numpy as jnp

from pipeline.encoding import Ring
from pipeline.secagg import chacha20, chacha20_jax, kernels, masks
from pipeline.secagg.prg import AES_CTR, CHACHA20
from pipeline.stats import counts, glm

GOAL_RATIO = 20.0
LINEAR_RTOL = 1e-9


class Report:
    """PASS/FAIL lines as they happen, and the figures for the final block."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []
        self.figures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        print(f"  {'PASS' if ok else 'FAIL'}  {what}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(what)
        return ok

    def figure(self, line: str) -> None:
        self.figures.append(line)
        print(f"  -> {line}", flush=True)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` runs of ``run`` after one warm-up run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.1f} MB"


def _s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1e3:.2f} ms"


# --- 1. device ---------------------------------------------------------------------------------


def device_info() -> dict[str, Any]:
    device = jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 -- not every backend reports memory
        stats = {}
    return {
        "devices": jax.devices(),
        "backend": jax.default_backend(),
        "kind": device.device_kind,
        "memory_bytes": stats.get("bytes_limit"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "jax": jax.__version__,
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }


# --- 2. bit-exactness ----------------------------------------------------------------------------


def check_bit_exactness(report: Report, quick: bool) -> None:
    rng = np.random.default_rng(2024)
    lengths = [1, 63, 64, 65, 1000, 4099] + ([] if quick else [(1 << 20) + 13, (1 << 24) + 5])
    for num_bytes in lengths:
        blocks = -(-num_bytes // chacha20.BLOCK_BYTES)
        for counter in (0, 1, int(rng.integers(2, 2**31)), 2**32 - blocks):
            key, nonce = rng.bytes(32), rng.bytes(12)
            by_jax = chacha20.chacha20_keystream(key, nonce, num_bytes, counter, engine="jax")
            by_openssl = chacha20.chacha20_keystream(key, nonce, num_bytes, counter, engine="openssl")
            report.check(
                by_jax.tobytes() == by_openssl.tobytes(), f"keystream {num_bytes:>9} bytes, counter {counter:>10}: jax == openssl"
            )
    for num_keys, num_words in ((5, 16 * 1000 + 7), (33, 100)):
        keys = rng.integers(0, 256, (num_keys, 32), dtype=np.uint8)
        nonces = rng.integers(0, 256, (num_keys, 12), dtype=np.uint8)
        counter = 2**32 - (-(-num_words // chacha20.BLOCK_WORDS))
        equal = np.array_equal(
            chacha20.keystream_words(keys, nonces, num_words, counter, "jax"),
            chacha20.keystream_words(keys, nonces, num_words, counter, "openssl"),
        )
        report.check(equal, f"batched keystream_words, {num_keys} keys x {num_words} words, counter 2^32-blocks: jax == openssl")
    # The lax.map over chunks (long masks) on the device, whatever chunk size the device would pick.
    keys = rng.integers(0, 256, (3, 32), dtype=np.uint8)
    nonces = rng.integers(0, 256, (3, 12), dtype=np.uint8)
    num_words = 16 * 37 + 5
    chunked = jax.jit(chacha20_jax.keystream_words_traced, static_argnums=(3, 4))(
        jnp.asarray(keys.view("<u4")), jnp.asarray(nonces.view("<u4")), jnp.uint32(9), num_words, 4
    )
    report.check(
        np.array_equal(np.asarray(chunked), chacha20.keystream_words(keys, nonces, num_words, 9, "openssl")),
        f"chunked keystream_words_traced (10 chunks of 4 blocks), 3 keys x {num_words} words: jax == openssl",
    )
    check_rfc_vectors(report)


def check_rfc_vectors(report: Report) -> None:
    try:
        from tests.secagg import test_chacha20 as rfc
    except ImportError as error:  # hypothesis/pytest missing: the vectors live in a test module
        report.check(False, f"RFC 8439 vectors: cannot import tests/secagg/test_chacha20.py ({error}); install the test extras")
        return
    block = chacha20.chacha20_keystream(rfc.RFC_2_3_2_KEY, rfc.RFC_2_3_2_NONCE, 64, counter=1, engine="jax")
    report.check(block.tobytes() == rfc.RFC_2_3_2_BLOCK, "RFC 8439 2.3.2 block function (jax)")
    stream = chacha20.chacha20_keystream(
        rfc.RFC_2_3_2_KEY, rfc.RFC_2_4_2_NONCE, len(rfc.RFC_2_4_2_PLAINTEXT), counter=1, engine="jax"
    )
    report.check(rfc.xor(stream, rfc.RFC_2_4_2_PLAINTEXT) == rfc.RFC_2_4_2_CIPHERTEXT, "RFC 8439 2.4.2 encryption (jax)")
    for index, (key, nonce, counter, expected) in enumerate(rfc.RFC_A1, start=1):
        block = chacha20.chacha20_keystream(bytes.fromhex(key), bytes.fromhex(nonce), 64, counter, engine="jax")
        report.check(block.tobytes().hex() == expected, f"RFC 8439 A.1 #{index} block (jax)")
    for index, (key, nonce, counter, plaintext, ciphertext) in enumerate(rfc.RFC_A2, start=1):
        text = bytes.fromhex(plaintext)
        stream = chacha20.chacha20_keystream(bytes.fromhex(key), bytes.fromhex(nonce), len(text), counter, engine="jax")
        report.check(rfc.xor(stream, text).hex() == ciphertext, f"RFC 8439 A.2 #{index} encryption (jax)")


# --- 3. keystream throughput -----------------------------------------------------------------------


def bench_keystream(report: Report, num_keys: int, num_words: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (num_keys, 32), dtype=np.uint8)
    nonces = rng.integers(0, 256, (num_keys, 12), dtype=np.uint8)
    total_bytes = 4 * num_keys * num_words
    host = np.empty((num_keys, num_words), dtype="<u4")

    def openssl() -> None:
        for row in range(num_keys):
            chacha20.stream_into(chacha20.openssl_encryptor(keys[row].tobytes(), nonces[row].tobytes(), 0), host[row])

    def on_device() -> jax.Array:
        return chacha20.keystream_words_device(keys, nonces, num_words, 0).block_until_ready()

    def openssl_aes_ctr() -> None:
        for row in range(num_keys):
            chacha20.stream_into(masks.mask_encryptor(AES_CTR, keys[row].tobytes()), host_aes[row])

    host_aes = np.empty_like(host)
    aes_s = median_seconds(openssl_aes_ctr, repeats)
    cpu_s = median_seconds(openssl, repeats)
    device_s = median_seconds(on_device, repeats)
    copy_s = median_seconds(lambda: np.asarray(chacha20.keystream_words_device(keys, nonces, num_words, 0)), repeats)
    report.check(np.array_equal(np.asarray(on_device()), host), f"throughput run: jax output == openssl output ({_gib(total_bytes)})")
    cpu, device, copied = (total_bytes / s / 1e9 for s in (cpu_s, device_s, copy_s))
    ratio = device / cpu
    report.figure(
        f"ChaCha20 keystream, {num_keys} keys x {num_words:,} words ({_gb(total_bytes)}): "
        f"jax on device {device:.2f} GB/s ({_s(device_s)}), OpenSSL on host CPU (1 core) {cpu:.2f} GB/s "
        f"({_s(cpu_s)}), ratio {ratio:.2f}x (goal >= {GOAL_RATIO:.0f}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'}); "
        f"jax incl. copy to host {copied:.2f} GB/s; OpenSSL AES-128-CTR on host CPU (1 core) "
        f"{total_bytes / aes_s / 1e9:.2f} GB/s (jax ChaCha20 on device / that: {aes_s / device_s:.2f}x)"
    )


# --- 4. unmasking at scale ---------------------------------------------------------------------------


def bench_unmask(report: Report, args: argparse.Namespace, memory_bytes: int | None) -> None:
    ring = Ring.R32 if args.ring == 32 else Ring.R64
    sites, values, dropped = args.sites, args.values, args.dropped
    rng = np.random.default_rng(3)
    self_seeds = [rng.bytes(32) for _ in range(sites)]
    # pair_seeds[j][i]: the seed survivor i shares with dropped site j; survivor i added it with sign pair_signs[i].
    pair_seeds = [[rng.bytes(32) for _ in range(sites)] for _ in range(dropped)]
    pair_signs = [1 if i % 2 == 0 else -1 for i in range(sites)]
    site_bytes = values * ring.dtype.itemsize
    budget = args.stack_gib * 2**30
    if memory_bytes:
        budget = min(budget, memory_bytes // 4)
    stack = np.empty((sites, values), ring.dtype) if sites * site_bytes <= budget else None
    print(f"  {sites} sites x {values:,} values ({ring.name}, {_gib(site_bytes)} per site), {dropped} dropped site(s): "
          f"masking on the host (openssl) ...", flush=True)
    value_sum = np.zeros(values, ring.dtype)
    masked_sum = np.zeros(values, ring.dtype)
    start = time.perf_counter()
    top = np.iinfo(ring.dtype).max
    for i in range(sites):
        vector = stack[i] if stack is not None else np.empty(values, ring.dtype)
        vector[:] = rng.integers(0, top, values, dtype=ring.dtype, endpoint=True)
        np.add(value_sum, vector, out=value_sum)
        seeds = [self_seeds[i]] + [pair_seeds[j][i] for j in range(dropped)]
        masks.add_masks(vector, seeds, [1] + [pair_signs[i]] * dropped, prg=CHACHA20, engine="openssl")
        np.add(masked_sum, vector, out=masked_sum)
    print(f"  made and masked in {_s(time.perf_counter() - start)}", flush=True)
    flat_pair_seeds = [pair_seeds[j][i] for j in range(dropped) for i in range(sites)]
    flat_pair_signs = [pair_signs[i] for _ in range(dropped) for i in range(sites)]

    def unmask(engine: str) -> np.ndarray:
        return masks.unmask(masked_sum, self_seeds, flat_pair_seeds, flat_pair_signs, ring, prg=CHACHA20, engine=engine)

    report.check(np.array_equal(unmask("jax"), value_sum), "masks.unmask (jax) == NumPy ring sum of the values")
    jax_s = median_seconds(lambda: unmask("jax"), args.repeats)
    openssl_s = median_seconds(lambda: unmask("openssl"), args.cpu_repeats)
    keystream_bytes = sites * (1 + dropped) * site_bytes
    report.figure(
        f"unmask (masks.unmask, the coordinator's call), {sites} sites + {dropped} dropped, {values:,} {ring.name} values, "
        f"{sites * (1 + dropped)} keystreams ({_gb(keystream_bytes)}): jax {_s(jax_s)} incl. transfers "
        f"({keystream_bytes / jax_s / 1e9:.2f} GB/s keystream), openssl on host {_s(openssl_s)} "
        f"({keystream_bytes / openssl_s / 1e9:.2f} GB/s), ratio {openssl_s / jax_s:.2f}x"
    )
    if stack is None:
        print(f"  ring_sum of the stack skipped: {_gib(sites * site_bytes)} is over the budget of {_gib(budget)} (--stack-gib)")
        return
    report.check(np.array_equal(kernels.ring_sum(stack), masked_sum), "kernels.ring_sum (stacked masked vectors) == NumPy sum")
    sum_s = median_seconds(lambda: kernels.ring_sum(stack), args.repeats)
    numpy_s = median_seconds(lambda: np.sum(stack, axis=0, dtype=ring.dtype), args.cpu_repeats)
    report.figure(
        f"ring_sum of {sites} x {values:,} masked {ring.name} vectors: jax {_s(sum_s)} incl. transfers, "
        f"numpy on host {_s(numpy_s)}, ratio {numpy_s / sum_s:.2f}x"
    )


# --- 5. GWAS kernels -----------------------------------------------------------------------------------


def make_genotypes(rng: np.random.Generator, num_variants: int, num_samples: int) -> np.ndarray:
    """Random int8 dosages 0/1/2 with ~1.2% missing (-1), from random bytes (fast at 10^9 calls)."""
    raw = np.frombuffer(rng.bytes(num_variants * num_samples), dtype=np.uint8).reshape(num_variants, num_samples)
    calls = np.remainder(raw, 3).astype(np.int8)
    calls[raw >= 253] = -1
    return calls


def naive_logistic(calls: np.ndarray, theta: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Score, packed information and log-likelihood of each variant from its design matrix, one by one."""
    k = covariates.shape[1]
    score, information, loglik = [], [], []
    for row, coefficients in zip(calls, theta):
        called = row >= 0
        x = np.column_stack([covariates[called], row[called].astype(np.float64)])
        y = phenotype[called]
        p = 1.0 / (1.0 + np.exp(-(x @ coefficients)))
        score.append(x.T @ (y - p))
        information.append(glm.pack_symmetric(x.T @ (x * (p * (1 - p))[:, None]), k))
        loglik.append(np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))
    return np.array(score), np.array(information), np.array(loglik)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| scaled by the largest |b| of the same column (statistic)."""
    a, b = np.atleast_2d(a.T).T, np.atleast_2d(b.T).T
    scale = np.maximum(np.max(np.abs(b), axis=0), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0


def bench_gwas(report: Report, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(5)
    samples, variants = args.samples, args.variants
    start = time.perf_counter()
    calls = make_genotypes(rng, variants, samples)
    covariates = np.column_stack([np.ones(samples), rng.normal(size=(samples, 4))])
    phenotype = rng.normal(size=samples)
    print(f"  {samples:,} samples x {variants:,} variants ({_gib(calls.nbytes)} int8) made in "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    by_jax = glm.linear_statistics(calls, covariates, phenotype, engine="jax")
    by_numpy = glm.linear_statistics(calls, covariates, phenotype, engine="numpy")
    worst = max(relative_difference(by_jax[name], by_numpy[name]) for name in by_numpy)
    report.check(worst <= LINEAR_RTOL, f"linear_statistics jax vs numpy: max relative difference {worst:.2e} <= {LINEAR_RTOL:g}")
    jax_s = median_seconds(lambda: glm.linear_statistics(calls, covariates, phenotype, engine="jax"), args.repeats)
    numpy_s = median_seconds(lambda: glm.linear_statistics(calls, covariates, phenotype, engine="numpy"), args.cpu_repeats)
    report.figure(
        f"linear_statistics, {samples:,} samples x {variants:,} variants: jax {_s(jax_s)}, numpy on host {_s(numpy_s)}, "
        f"ratio {numpy_s / jax_s:.2f}x, max rel. diff {worst:.1e}"
    )

    binary = (rng.random(samples) < 0.3).astype(np.float64)
    theta = np.column_stack([np.full(variants, -0.8), rng.normal(scale=0.1, size=(variants, 4)),
                             rng.normal(scale=0.2, size=variants)])
    result = glm.logistic_statistics(calls, theta, covariates, binary)
    checked = min(args.logistic_check, variants)
    naive = naive_logistic(calls[:checked], theta[:checked], covariates, binary)
    worst = max(relative_difference(result[name][:checked], ref) for name, ref in zip(("score", "information", "loglik"), naive))
    report.check(worst <= LINEAR_RTOL, f"logistic_statistics (jax) vs naive NumPy on {checked} variants: max relative difference "
                                       f"{worst:.2e} <= {LINEAR_RTOL:g}")
    logistic_s = median_seconds(lambda: glm.logistic_statistics(calls, theta, covariates, binary), args.repeats)
    report.figure(f"logistic_statistics (one Newton step's score + information), {samples:,} x {variants:,}: jax {_s(logistic_s)}")

    by_jax_counts = counts.count_block(calls, engine="jax")
    by_numpy_counts = counts.count_block(calls, engine="numpy")
    equal = all(
        np.array_equal(a, b) for part_jax, part_numpy in zip(by_jax_counts, by_numpy_counts) for a, b in zip(part_jax, part_numpy)
    )
    report.check(equal, "count_block jax == numpy (variant and sample counts)")
    jax_s = median_seconds(lambda: counts.count_block(calls, engine="jax"), args.repeats)
    numpy_s = median_seconds(lambda: counts.count_block(calls, engine="numpy"), args.cpu_repeats)
    report.figure(f"count_block, {samples:,} x {variants:,}: jax {_s(jax_s)}, numpy on host {_s(numpy_s)}, "
                  f"ratio {numpy_s / jax_s:.2f}x")


# --- main ------------------------------------------------------------------------------------------------

QUICK = {"ks_keys": 4, "ks_words": 1 << 18, "sites": 3, "values": 1_000_000, "samples": 2000, "variants": 1000, "logistic_check": 8}
FULL = {"ks_keys": 16, "ks_words": 1 << 24, "sites": 10, "values": 10**8, "samples": 100_000, "variants": 10_000, "logistic_check": 64}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script, not the device")
    parser.add_argument("--allow-cpu", action="store_true", help="run even when JAX's default backend is the CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of the JAX side, median kept (3; 1 with --quick)")
    parser.add_argument("--cpu-repeats", type=int, default=None, help="timed runs of the host baselines (2; 1 with --quick)")
    parser.add_argument("--ks-keys", type=int, help=f"keys in the keystream benchmark ({FULL['ks_keys']})")
    parser.add_argument("--ks-words", type=int, help=f"uint32 words per key ({FULL['ks_words']:,})")
    parser.add_argument("--sites", type=int, help=f"surviving sites in the unmasking ({FULL['sites']})")
    parser.add_argument("--values", type=int, help=f"ring elements per site ({FULL['values']:,})")
    parser.add_argument("--dropped", type=int, default=1, help="dropped sites, each paired with every survivor (1)")
    parser.add_argument("--ring", type=int, choices=(32, 64), default=32, help="ring of the unmasking (32)")
    parser.add_argument("--stack-gib", type=float, default=8.0, help="largest stack of masked vectors for ring_sum (8 GiB)")
    parser.add_argument("--samples", type=int, help=f"GWAS samples ({FULL['samples']:,})")
    parser.add_argument("--variants", type=int, help=f"GWAS variants ({FULL['variants']:,})")
    parser.add_argument("--logistic-check", type=int, help="variants checked against the naive logistic reference (64)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: exact,keystream,unmask,gwas")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.cpu_repeats is None:
        args.cpu_repeats = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = device_info()
    print("== device ==")
    print(f"  jax.devices(): {info['devices']}")
    print(f"  jax.default_backend(): {info['backend']}")
    print(f"  device kind: {info['kind']}")
    memory = info["memory_bytes"]
    print(f"  device memory: {_gib(memory) if memory else 'not reported'}")
    print(f"  jax {info['jax']}, host {info['host']}, date {info['date']}", flush=True)
    if info["backend"] == "cpu" and not args.allow_cpu:
        print("JAX's default backend is the CPU: nothing to prove here. Run this on a GPU machine, "
              "or pass --allow-cpu (with --quick) to check the script itself.")
        return 0

    report = Report()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    sections: list[tuple[str, str, Callable[[], None]]] = [
        ("exact", "bit-exactness of the JAX ChaCha20 engine on the device", lambda: check_bit_exactness(report, args.quick)),
        ("keystream", "keystream throughput", lambda: bench_keystream(report, args.ks_keys, args.ks_words, args.repeats)),
        ("unmask", "unmasking at scale", lambda: bench_unmask(report, args, memory)),
        ("gwas", "GWAS site kernels", lambda: bench_gwas(report, args)),
    ]
    for name, title, run in sections:
        if name in skip:
            print(f"\n== {title}: skipped (--skip) ==")
            continue
        print(f"\n== {title} ==", flush=True)
        start = time.perf_counter()
        try:
            run()
        except Exception:  # noqa: BLE001 -- a lent GPU is rare: report and go on to the next section
            traceback.print_exc()
            report.check(False, f"section {name!r} raised (traceback above)")
        print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)

    total = report.passed + len(report.failed)
    print("\n== figures (paste into the README) ==")
    print(f"device: {info['kind']} ({info['backend']}, {len(info['devices'])} device(s)"
          f"{', ' + _gib(memory) if memory else ''}), jax {info['jax']}, host {info['host']}, {info['date']}"
          f"{', --quick' if args.quick else ''}")
    print(f"bit-exactness and correctness: {report.passed}/{total} PASS" + (f", FAILED: {'; '.join(report.failed)}" if report.failed else ""))
    for line in report.figures:
        print(line)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
