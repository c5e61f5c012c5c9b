"""Secure-sum round cost: the whole protocol's compute vs a plain float sum (and vs Flower).

First runs the mask-PRG benchmark (``bench_prg`` from ``secagg_prg.py``, next to this
file) and prints it. Then, for each (n sites, d values, dropout rate), it runs a full
secure round with the in-memory driver (:func:`pipeline.secagg.driver.run_round`) as
deployed: every site's encoding, key agreement, Shamir sharing, its key advertisement
signed with its certificate key and checked by every peer, masking, the signed
consistency round, and the coordinator's share handling, summation, mask regeneration
and unmasking, plus the decoding. The figure is the compute summed over all parties
(process CPU time of each party call; wall time is printed too); only the making of
the test vectors is excluded. Dropped sites go silent before sending their masked input
(after sharing their keys), the case that forces the coordinator to regenerate their
pairwise masks.

The baseline, timed in the same process, is a plain float sum of the same vectors.

If ``flwr`` is importable, Flower's SecAgg / SecAgg+ is timed on the same n, d and
dropouts: its client stages are Flower's own functions
(``flwr.client.mod.secure_aggregation.secaggplus_mod._setup/_share_keys/
_collect_masked_vectors/_unmask``) and its server computation is the body of
``SecAggPlusWorkflow``'s stages transcribed with Flower's own primitives
(``combine_shares``, ``pseudo_rand_gen``, ``parameters_*``, ``dequantize``); only the
Grid/message transport is left out. Flower's client code includes its (de)serialisation
of the parameters (``parameters_to_ndarrays`` / ``ndarray_to_bytes``), which is part of
its mod; ours passes arrays. Flower has no signatures or consistency round here.
Without ``flwr`` the headline divides by ``FLOWER_REFERENCE`` and says so. Flower
pins its own dependencies: install it in a separate virtual environment and run this
script with that environment's python and ``PYTHONPATH`` at the repository.

The headline (10 sites, 10^6 values, 20% dropout) alternates Flower's round and ours
``--repeats`` times, so drifting load falls on both, and prints medians and the fastest
runs' ratio (load on shared cores only ever adds time). It also prints where the CPU goes
(an instrumented rerun of the same round, by section) and the keystream floor: OpenSSL
alone making the same number of keystreams of the round's mask PRG, the cost no
implementation of these masks avoids.

Mask PRG: the default (AES-128-CTR) unless ``--prg chacha20``; ``--prg both`` times
each on the same vectors.

Ring: R32 for the comparison (the same 2^32 modulus Flower uses, clip 8 as Flower's
default clipping range, and the most fractional bits the ring allows for n sites);
``--ring 64`` uses R64; ``--ring both`` times both on the same vectors and prints the
R64 / R32 ratio of the headline.

Run: ``python tests/benchmarks/secagg.py [--quick] [--sizes 10:1000000,50:100000]
[--dropouts 0,0.2] [--ring 32|64|both] [--prg aes128-ctr|chacha20|both] [--repeats N]
[--no-flower] [--no-prg]``.
Figures depend on the machine and its load (printed); report them as measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.encoding import FixedPoint, Ring, check_bit_budget, decode, encode
from pipeline.secagg.driver import run_round
from pipeline.secagg.messages import Stage
from pipeline.secagg.prg import DEFAULT_PRG, PRGS

# Flower's CPU seconds for the headline round (10 sites, 10^6 values, 20% dropout), used
# only when flwr is not importable here; FLOWER_SOURCE says where they come from.
FLOWER_REFERENCE = {
    "SecAgg": 0.99,
    "SecAgg+ (5 shares)": 0.556,
}
FLOWER_SOURCE = ("Flower 1.42 timed by this script (median of 4 runs x 5 repeats) from a separate venv "
                 "on the 2-core dev machine, load average 2-3")


def run_prg_benchmark() -> None:
    path = Path(__file__).with_name("secagg_prg.py")
    if not path.exists():
        print("mask PRG benchmark: tests/benchmarks/secagg_prg.py not present, skipped\n")
        return
    spec = importlib.util.spec_from_file_location("secagg_prg", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.bench_prg()
    print("== mask PRG (bench_prg from secagg_prg.py) ==")
    if hasattr(module, "format_table"):
        print(module.format_table(rows))
    elif rows:
        columns = list(rows[0])
        print("  ".join(f"{c:>12}" for c in columns))
        for row in rows:
            print("  ".join(f"{_fmt(row.get(c)):>12}" for c in columns))
    print()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def benchmark_encoding(num_sites: int, ring: Ring) -> FixedPoint:
    """Clip 8 (Flower's default) with the most fractional bits the ring allows for n sites."""
    bits = ring.modulus_bits - 1 - 3 - max(1, math.ceil(math.log2(num_sites))) - 1
    encoding = FixedPoint(ring, scale_bits=min(bits, 40), clip=8.0)
    check_bit_budget(encoding, num_sites)
    return encoding


def secagg_plus_neighbours(num_sites: int) -> int | None:
    """SecAgg+ from 50 sites on: k = 2 * ceil(log2(n) / 2) neighbours (6 for 50)."""
    if num_sites < 50:
        return None
    return 2 * math.ceil(math.log2(num_sites) / 2)


def recoverable(graph: dict[int, frozenset[int]], dropped: set[int], threshold: int) -> bool:
    """Whether every neighbourhood keeps ``threshold`` live shareholders and the survivors stay connected."""
    from pipeline.secagg.neighbours import is_connected

    for site, neighbours in graph.items():
        if site in dropped:
            if neighbours - dropped and len(neighbours - dropped) < threshold:
                return False
        elif len((neighbours | {site}) - dropped) < threshold:
            return False
    return is_connected(graph, frozenset(graph) - dropped)


def round_graph_of(
    num_sites: int, threshold: int, k: int | None, seed: int, identity_keys: list[ec.EllipticCurvePrivateKey] | None,
) -> dict[int, frozenset[int]]:
    """The neighbour graph a round with this ``seed`` draws (read off a dry run's share messages).

    The graph is drawn inside the round from every site's advertisement and randomness,
    so a benchmark that wants a recoverable dropout pattern runs the round's key
    exchange once beforehand, as the timed round will run it: with the same identity
    keys, hence the same signed advertisements (both signatures are deterministic).
    """
    outcome = run_round([np.zeros(0, dtype=np.uint32)] * num_sites, threshold=threshold, num_neighbours=k, seed=seed,
                        consistency_check=identity_keys is not None, identity_keys=identity_keys, record_messages=True)
    return {m.sender: frozenset(receiver for receiver, _ in m.ciphertexts)
            for m in outcome.messages if type(m).__name__ == "EncryptedShares"}


def choose_dropouts(
    num_sites: int, count: int, k: int | None, threshold: int, rng: np.random.Generator, seed: int,
    identity_keys: list[ec.EllipticCurvePrivateKey] | None = None,
) -> list[int]:
    """``count`` random site indices whose silence still lets the round of ``seed`` finish."""
    if k is None:
        return sorted(rng.choice(num_sites, size=count, replace=False).tolist())
    graph = round_graph_of(num_sites, threshold, k, seed, identity_keys)
    for _ in range(1000):
        dropped = sorted(rng.choice(num_sites, size=count, replace=False).tolist())
        if recoverable(graph, {index + 1 for index in dropped}, threshold):
            return dropped
    raise RuntimeError(f"no recoverable dropout pattern of {count} sites for k={k}, t={threshold}")


def plain_sum_seconds(vectors: list[np.ndarray]) -> float:
    start = time.process_time()
    total = vectors[0].astype(np.float64)
    for vector in vectors[1:]:
        total += vector
    return time.process_time() - start


def ours(
    vectors: list[np.ndarray], *, threshold: int, dropped: list[int], ring: Ring, num_neighbours: int | None,
    identity_keys: list[ec.EllipticCurvePrivateKey] | None = None, seed: int | None = None, prg: str = DEFAULT_PRG,
) -> tuple[float, float, float, float]:
    """(total CPU s, client CPU s, server CPU s, total wall s) of one secure round.

    With ``identity_keys`` the round runs as deployed against a malicious coordinator:
    advertisements signed by each site's certificate key and checked by every peer,
    and the signed consistency round on.
    """
    encoding = benchmark_encoding(len(vectors), ring)
    outcome = run_round(
        vectors,
        threshold=threshold,
        ring=ring,
        encoder=lambda values: encode(values, encoding),
        dropouts={index: Stage.MASKED_INPUT for index in dropped},
        num_neighbours=num_neighbours,
        consistency_check=identity_keys is not None,
        identity_keys=identity_keys,
        seed=seed,
        prg=prg,
    )
    assert outcome.total is not None
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    result = decode(outcome.total, encoding, len(outcome.survivors))
    decode_cpu, decode_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    expected = np.sum([vectors[i].astype(np.float64) for i in range(len(vectors)) if i not in dropped], axis=0)
    error = float(np.max(np.abs(result - expected))) if result.size else 0.0
    assert error <= len(vectors) * 2.0 ** -encoding.scale_bits, f"secure sum off by {error}"
    times = outcome.times
    client = sum(times.client_cpu.values())
    server = times.server_cpu + decode_cpu
    return client + server, client, server, times.total_wall + decode_wall


# --------------------------------------------------------------------------- where the CPU goes


def _breakdown_targets() -> dict[str, list[tuple[object, str]]]:
    """Section -> the (module, function) pairs whose calls it covers; the protocol calls them through these names."""
    from pipeline.secagg import client, keys, masks, server, shamir

    this = sys.modules[__name__]
    return {
        "encode": [(this, "encode")],
        "decode": [(this, "decode")],
        "masks (keystream + adding)": [(masks, "add_masks"), (masks, "masked_copy"), (masks, "mask_sum"),
                                       (masks, "unmask")],
        "summing masked inputs": [(server, "_sum_masked")],
        "X25519 + HKDF": [(keys, "agree"), (keys, "agree_many"), (keys, "generate_key_pair"), (keys, "public_key_of"),
                          (keys, "derive_key")],
        "signatures": [(keys, "sign_identity"), (keys, "verify_identity"), (keys, "sign"), (keys, "verify_signature"),
                       (keys, "generate_signing_key_pair")],
        "Shamir + AES-GCM": [(shamir, "split"), (shamir, "combine"), (keys, "encrypt_share"), (keys, "decrypt_share")],
    }


class _Sections:
    """Exclusive CPU time per section: a call inside another section's call counts only for the inner one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []

    def timed(self, name: str, function: Callable) -> Callable:
        def call(*args: object, **kwargs: object) -> object:
            self.enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                self.leave()
        return call

    def enter(self, name: str) -> None:
        now = time.process_time()
        if self._stack:
            self._charge(now)
        self._stack.append([name, now])

    def leave(self) -> None:
        now = time.process_time()
        self._charge(now)
        self._stack.pop()
        if self._stack:
            self._stack[-1][1] = now

    def _charge(self, now: float) -> None:
        name, since = self._stack[-1]
        self.seconds[name] = self.seconds.get(name, 0.0) + now - since


def round_breakdown(vectors: list[np.ndarray], **round_args: object) -> dict[str, float]:
    """CPU seconds of one round (as :func:`ours` runs it) per section, from a separate, instrumented run.

    "other protocol work" is what no section covers: message checks, hashing
    (commitments, statements, the graph seed), the driver, and the masked copies' fresh
    memory. The instrumentation costs a few microseconds per call.
    """
    sections = _Sections()
    targets = {"other protocol work": [(sys.modules[__name__], "run_round")], **_breakdown_targets()}
    _run_wrapped(vectors, [(module, attribute, lambda function, name=name: sections.timed(name, function))
                           for name, pairs in targets.items() for module, attribute in pairs], **round_args)
    return sections.seconds


def signature_operations(vectors: list[np.ndarray], **round_args: object) -> Counter[str]:
    """How many signatures one round (as :func:`ours` runs it) makes and verifies: ``"sign"`` and ``"verify"``."""
    from pipeline.secagg import keys

    counts: Counter[str] = Counter()

    def counted(kind: str) -> Callable[[Callable], Callable]:
        def wrap(function: Callable) -> Callable:
            def call(*args: object, **kwargs: object) -> object:
                counts[kind] += 1
                return function(*args, **kwargs)
            return call
        return wrap

    _run_wrapped(vectors, [(keys, "sign_identity", counted("sign")), (keys, "sign", counted("sign")),
                           (keys, "verify_identity", counted("verify")), (keys, "verify_signature", counted("verify"))],
                 **round_args)
    return counts


def _run_wrapped(vectors: list[np.ndarray], wrappers: list[tuple[object, str, Callable[[Callable], Callable]]],
                 **round_args: object) -> None:
    """Run one round with each ``module.attribute`` replaced by ``wrap(original)``, then put the originals back."""
    patched: list[tuple[object, str, object]] = []
    for module, attribute, wrap in wrappers:
        original = getattr(module, attribute, None)
        if original is None:
            continue  # not in this version of the package
        patched.append((module, attribute, original))
        setattr(module, attribute, wrap(original))
    try:
        ours(vectors, **round_args)  # type: ignore[arg-type]
    finally:
        for module, attribute, original in reversed(patched):
            setattr(module, attribute, original)


def keystream_floor(num_masks: int, length: int, ring: Ring, prg: str) -> float:
    """CPU seconds OpenSSL alone takes for ``num_masks`` keystreams of ``prg`` of a ring vector, streamed into one buffer."""
    from pipeline.secagg import chacha20, masks

    nbytes = length * ring.words * 4
    scratch = np.empty(chacha20.STREAM_CHUNK_BYTES, dtype=np.uint8)
    start = time.process_time()
    for index in range(num_masks):
        encryptor = masks.mask_encryptor(prg, index.to_bytes(32, "little"))
        for offset in range(0, nbytes, scratch.size):
            size = min(scratch.size, nbytes - offset)
            encryptor.update_into(chacha20.ZERO_CHUNK[:size], scratch[:size])
    return time.process_time() - start


def masks_of_round(num_sites: int, dropped: int) -> int:
    """Masks a plain-SecAgg round makes: every survivor's self and pairwise masks, then the coordinator's regeneration."""
    survivors = num_sites - dropped
    return survivors * num_sites + survivors + dropped * survivors


def print_breakdown(seconds: dict[str, float], floor: float) -> None:
    total = sum(seconds.values())
    parts = ", ".join(f"{name} {value:.3f}" for name, value in sorted(seconds.items(), key=lambda item: -item[1]))
    print(f"    where the CPU goes (instrumented run, {total:.3f} s): {parts}")
    print(f"    keystream floor (OpenSSL alone, same masks into one buffer): {floor:.3f} s; everything else: "
          f"{total - floor:.3f} s")


# --------------------------------------------------------------------------- Flower


def flower_available() -> bool:
    return importlib.util.find_spec("flwr") is not None


def flower_round(vectors: list[np.ndarray], *, num_shares: int, threshold: int, dropped: list[int]) -> tuple[float, float, float]:
    """(total CPU s, client CPU s, server CPU s) of Flower's SecAgg+ compute, in process."""
    import logging

    # The package re-exports the function under the module's name: import the module itself.
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    logging.getLogger("flwr").setLevel(logging.WARNING)
    clip, quantization, modulus, max_weight = 8.0, 2**22, 2**32, 1000.0
    num_sites = len(vectors)
    node_ids = list(range(1, num_sites + 1))
    client_cpu = {nid: 0.0 for nid in node_ids}
    server_cpu = 0.0

    def client_call(nid: int, function: Callable, *args: object) -> object:
        start = time.process_time()
        result = function(*args)
        client_cpu[nid] += time.process_time() - start
        return result

    # Fit results as Flower's ClientApp hands them to the mod (made outside the timing).
    parameters = {nid: ndarrays_to_parameters([vectors[nid - 1]]) for nid in node_ids}
    dead = {node_ids[index] for index in dropped}
    active = set(node_ids) - dead
    for _ in range(1000):  # Flower's graph (with self loops) from its own shuffle; redrawn until recoverable
        start = time.process_time()
        shuffled = list(node_ids)
        random.shuffle(shuffled)
        half = num_shares >> 1
        neighbours = {
            nid: {shuffled[(idx + offset) % num_sites] for offset in range(-half, half + 1)}
            for idx, nid in enumerate(shuffled)
        }
        server_cpu = time.process_time() - start
        if recoverable({nid: peers - {nid} for nid, peers in neighbours.items()}, dead, threshold):
            break
    setup = {
        Key.SAMPLE_NUMBER: num_sites,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: threshold,
        Key.CLIPPING_RANGE: clip,
        Key.TARGET_RANGE: quantization,
        Key.MOD_RANGE: modulus,
        Key.MAX_WEIGHT: max_weight,
    }
    states = {}
    public_keys = {}
    for nid in node_ids:
        state = mod.SecAggPlusState()
        state.nid = nid
        reply = client_call(nid, mod._setup, state, dict(setup))
        states[nid] = state
        public_keys[nid] = [reply[Key.PUBLIC_KEY_1], reply[Key.PUBLIC_KEY_2]]
    forward: dict[int, list[tuple[int, bytes]]] = {nid: [] for nid in node_ids}
    for nid in node_ids:
        start = time.process_time()
        configs = {str(peer): public_keys[peer] for peer in neighbours[nid]}
        server_cpu += time.process_time() - start
        reply = client_call(nid, mod._share_keys, states[nid], configs)
        start = time.process_time()
        for dst, ciphertext in zip(reply[Key.DESTINATION_LIST], reply[Key.CIPHERTEXT_LIST]):
            forward[dst].append((nid, ciphertext))
        server_cpu += time.process_time() - start
    masked_sum = None
    for nid in sorted(active):
        configs = {Key.CIPHERTEXT_LIST: [c for _, c in forward[nid]], Key.SOURCE_LIST: [s for s, _ in forward[nid]]}
        reply = client_call(nid, mod._collect_masked_vectors, states[nid], configs, 1, parameters[nid])
        start = time.process_time()
        vector = [bytes_to_ndarray(b) for b in reply[Key.MASKED_PARAMETERS]]
        masked_sum = vector if masked_sum is None else parameters_addition(masked_sum, vector)
        server_cpu += time.process_time() - start
    start = time.process_time()
    masked_sum = parameters_mod(masked_sum, modulus)
    server_cpu += time.process_time() - start
    collected: dict[int, list[bytes]] = {nid: [] for nid in node_ids}
    for nid in sorted(active):
        configs = {
            Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & active),
            Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead),
        }
        reply = client_call(nid, mod._unmask, states[nid], configs)
        start = time.process_time()
        for owner, share in zip(reply[Key.NODE_ID_LIST], reply[Key.SHARE_LIST]):
            collected[owner].append(share)
        server_cpu += time.process_time() - start
    start = time.process_time()
    masked_vector = masked_sum
    for nid, share_list in collected.items():
        if len(share_list) < threshold:
            raise RuntimeError("Flower round: not enough shares")
        secret = combine_shares(share_list)
        if nid in active:
            private_mask = pseudo_rand_gen(secret, modulus, get_parameters_shape(masked_vector))
            masked_vector = parameters_subtraction(masked_vector, private_mask)
        else:
            for peer in neighbours[nid] - {nid}:
                shared_key = generate_shared_key(bytes_to_private_key(secret), bytes_to_public_key(public_keys[peer][0]))
                pairwise_mask = pseudo_rand_gen(shared_key, modulus, get_parameters_shape(masked_vector))
                if nid > peer:
                    masked_vector = parameters_addition(masked_vector, pairwise_mask)
                else:
                    masked_vector = parameters_subtraction(masked_vector, pairwise_mask)
    recon = parameters_mod(masked_vector, modulus)
    q_total_ratio, recon = factor_extract(recon)
    aggregated = dequantize(recon, clip, quantization)
    offset = -(len(active) - 1) * clip
    for vec in aggregated:
        vec += offset
        vec *= quantization / q_total_ratio
    server_cpu += time.process_time() - start
    # Sanity: equal weights, so Flower returns the survivors' mean.
    expected = np.mean([vectors[nid - 1].astype(np.float64) for nid in sorted(active)], axis=0)
    error = float(np.max(np.abs(aggregated[0] - expected)))
    assert error < 1e-2, f"Flower round off by {error}"
    client = sum(client_cpu.values())
    return client + server_cpu, client, server_cpu


# --------------------------------------------------------------------------- main


def cpu_model() -> str:
    """The CPU's model name (Linux), printed with the figures: the ratio to Flower moves with the CPU."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else (platform.processor() or platform.machine())


def median_of(repeats: int, run: Callable[[], tuple[float, ...]]) -> tuple[float, ...]:
    """The run with the median total (first field) of ``repeats`` runs: load on shared cores skews single runs."""
    return median_run([run() for _ in range(max(1, repeats))])


def median_run(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The run with the median total (first field); of an even number, the faster middle one."""
    ordered = sorted(runs, key=lambda result: result[0])
    return ordered[(len(ordered) - 1) // 2]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        n, d = item.split(":")
        sizes.append((int(n), int(float(d))))
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n in {3, 10}, d in {1e5, 1e6}")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated n:d pairs, e.g. 10:1e6,50:1e5")
    parser.add_argument("--dropouts", default="0,0.2", help="dropout fractions (default 0,0.2)")
    parser.add_argument("--ring", choices=("32", "64", "both"), default="32",
                        help="ring Z_2^32, Z_2^64, or both in one run (then the headline prints R64 / R32)")
    parser.add_argument("--prg", choices=(*PRGS, "both"), default=DEFAULT_PRG,
                        help=f"the mask PRG (default {DEFAULT_PRG}, as a job without mask_prg), or both in one run")
    parser.add_argument("--no-flower", action="store_true", help="skip timing Flower even if installed")
    parser.add_argument("--no-prg", action="store_true", help="skip the mask PRG benchmark")
    parser.add_argument(
        "--flower-max-values", type=float, default=1e8, help="time Flower only where n*d is at most this (default 1e8)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per row; the median is printed (default 1)")
    parser.add_argument("--active-only", action="store_true",
                        help="only the cost of the active-adversary defences (signed keys, consistency round) off vs on")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = args.sizes
    elif args.quick:
        sizes = [(n, d) for n in (3, 10) for d in (10**5, 10**6)]
    else:
        sizes = [(n, d) for n in (3, 10, 50) for d in (10**5, 10**6, 10**7)]
    rates = [float(x) for x in args.dropouts.split(",")]
    rings = {"32": [Ring.R32], "64": [Ring.R64], "both": [Ring.R32, Ring.R64]}[args.ring]
    prgs = list(PRGS) if args.prg == "both" else [args.prg]
    if args.active_only:
        for ring in rings:
            active_adversary_cost(ring, args.repeats)
        return
    use_flower = flower_available() and not args.no_flower
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores (shared, measured under load); "
          f"load average {os.getloadavg()[0]:.2f}; "
          f"rings {', '.join(ring.name for ring in rings)}; mask PRG {', '.join(prgs)}; "
          f"Flower {'1.42 timed in process' if use_flower else 'not installed: reference figures only'}")
    if not args.no_prg:
        run_prg_benchmark()
    print("== full secure round as deployed (signed keys, consistency round): compute summed over all parties (CPU s) "
          "vs plain float sum ==")
    print(f"{'ring':>4} {'prg':>10} {'n':>3} {'d':>9} {'drop':>5} {'protocol':>14} {'secure_s':>9} {'client_s':>9} {'server_s':>9} "
          f"{'wall_s':>8} {'plain_s':>8} {'x_plain':>8} {'flower_s':>9} {'ours/flwr':>9}")
    rng = np.random.default_rng(0)
    # Warm-up (imports, first-call set-up) so that no row pays one-time costs.
    warm = [rng.uniform(-1, 1, 1000).astype(np.float32) for _ in range(3)]
    for ring in rings:
        ours(warm, threshold=2, dropped=[0], ring=ring, num_neighbours=None,
             identity_keys=[ec.generate_private_key(ec.SECP256R1()) for _ in range(3)])
    if use_flower:
        flower_round(warm, num_shares=3, threshold=2, dropped=[0])
    for num_sites, length in sizes:
        vectors = [rng.uniform(-1.0, 1.0, size=length).astype(np.float32) for _ in range(num_sites)]
        k = secagg_plus_neighbours(num_sites)
        identity_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(num_sites)]
        for rate in rates:
            count = round(rate * num_sites)
            shareholders = num_sites if k is None else k + 1
            threshold = max(2, min(num_sites - count, shareholders // 2 + 1))
            dropped = choose_dropouts(num_sites, count, k, threshold, rng, seed=num_sites, identity_keys=identity_keys)
            label = "SecAgg" if k is None else f"SecAgg+ k={k}"
            flower_total = None
            if use_flower and num_sites * length <= args.flower_max_values:
                num_shares = num_sites if k is None else k + 1
                flower_total = median_of(args.repeats, lambda: flower_round(
                    vectors, num_shares=num_shares, threshold=threshold, dropped=dropped))[0]
            plain = plain_sum_seconds(vectors)
            for ring, prg in [(ring, prg) for ring in rings for prg in prgs]:
                total, client, server, wall = median_of(args.repeats, lambda: ours(
                    vectors, threshold=threshold, dropped=dropped, ring=ring, num_neighbours=k,
                    identity_keys=identity_keys, seed=num_sites, prg=prg))
                flower = "" if flower_total is None else f"{flower_total:.3f}"
                ratio = "" if flower_total is None else f"{total / flower_total:.3f}"
                print(
                    f"{ring.modulus_bits:>4} {prg:>10} {num_sites:>3} {length:>9.0e} {rate:>5.0%} {label:>14} {total:>9.3f} "
                    f"{client:>9.3f} {server:>9.3f} {wall:>8.3f} {plain:>8.4f} {total / max(plain, 1e-9):>8.1f} "
                    f"{flower:>9} {ratio:>9}",
                    flush=True,
                )
    headline(rings, prgs, use_flower, args.repeats, rng)


def headline(rings: list[Ring], prgs: list[str], use_flower: bool, repeats: int, rng: np.random.Generator) -> None:
    """10 sites, 10^6 values, 20% dropout, as deployed (signed keys, consistency round), against Flower SecAgg."""
    print("\n== headline: 10 sites, 10^6 values, 20% dropout (2 drop before masking); ours as deployed: "
          "signed key advertisements checked by every peer and the signed consistency round ==")
    vectors = [rng.uniform(-1.0, 1.0, size=10**6).astype(np.float32) for _ in range(10)]
    identity_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(10)]
    secagg: dict[tuple[Ring, str], float] = {}
    combinations = [(ring, prg) for ring in rings for prg in prgs]
    for label, k, threshold, num_shares in (("SecAgg", None, 6, 10), ("SecAgg+ (5 shares)", 4, 3, 5)):
        dropped = choose_dropouts(10, 2, k, threshold, rng, seed=10, identity_keys=identity_keys)
        round_args = {(ring, prg): dict(threshold=threshold, dropped=dropped, ring=ring, num_neighbours=k,
                                        identity_keys=identity_keys, seed=10, prg=prg) for ring, prg in combinations}
        # Flower's round and ours alternate, so drifting load on the shared cores falls on both.
        flower_runs: list[float] = []
        our_runs: dict[tuple[Ring, str], list[tuple[float, ...]]] = {combination: [] for combination in combinations}
        for _ in range(max(1, repeats)):
            if use_flower:
                flower_runs.append(flower_round(vectors, num_shares=num_shares, threshold=threshold, dropped=dropped)[0])
            for combination in combinations:
                our_runs[combination].append(ours(vectors, **round_args[combination]))
        if use_flower:
            flower_total, flower_fastest = median_run([(run,) for run in flower_runs])[0], min(flower_runs)
            source = "Flower 1.42 timed here, Z_2^32"
        else:
            flower_total = flower_fastest = FLOWER_REFERENCE[label]
            source = f"reference figure, not measured here: {FLOWER_SOURCE}"
        for ring, prg in combinations:
            total, client, server, _ = median_run(our_runs[ring, prg])
            fastest = min(run[0] for run in our_runs[ring, prg])
            print(
                f"{label:>20} {ring.name} {prg}: ours {total:.3f} s (clients {client:.3f}, server {server:.3f}); "
                f"Flower {flower_total:.3f} s [{source}]; ratio {total / flower_total:.3f} (goal <= 0.1)"
                + (f"; fastest runs {fastest:.3f} / {flower_fastest:.3f} s = {fastest / flower_fastest:.3f}"
                   if repeats > 1 else "")
            )
            if k is None:
                secagg[ring, prg] = total
                floor = keystream_floor(masks_of_round(10, 2), 10**6, ring, prg)
                print_breakdown(round_breakdown(vectors, **round_args[ring, prg]), floor)
    for prg in prgs:
        if (Ring.R64, prg) in secagg and (Ring.R32, prg) in secagg:
            print(f"{'SecAgg':>20} {prg} R64 / R32: {secagg[Ring.R64, prg] / secagg[Ring.R32, prg]:.2f} "
                  "(goal <= 2.1; the keystream doubles)")


def active_adversary_cost(ring: Ring, repeats: int = 1) -> None:
    """The same round with the defences against a malicious coordinator off and on, in this run.

    With ``repeats`` > 1 the off and on rounds alternate and each column is the median;
    the fastest run of each is printed too (load on shared cores only ever adds time).

    Off: honest-but-curious SecAgg. On: each site signs its advertisement with its
    certificate key (ECDSA P-256), every peer verifies every key it is relayed, and the
    signed consistency round runs. Goals: on <= 1.3x off at 10 sites x 10^6 values;
    <= 1.5x at 50 sites with SecAgg+.
    """
    print("== cost of the active-adversary defences (signed keys + consistency round): off vs on, same vectors ==")
    rng = np.random.default_rng(1)
    warm = [rng.uniform(-1, 1, 1000).astype(np.float32) for _ in range(3)]
    ours(warm, threshold=2, dropped=[], ring=ring, num_neighbours=None,
         identity_keys=[ec.generate_private_key(ec.SECP256R1()) for _ in range(3)])
    for num_sites, length, k, goal in ((10, 10**6, None, 1.3), (50, 10**5, secagg_plus_neighbours(50), 1.5),
                                      (50, 10**6, secagg_plus_neighbours(50), 1.5)):
        vectors = [rng.uniform(-1.0, 1.0, size=length).astype(np.float32) for _ in range(num_sites)]
        holders = num_sites if k is None else k + 1
        threshold = (2 * holders) // 3 + 1
        identity_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(num_sites)]
        offs, ons = [], []
        for _ in range(max(1, repeats)):
            offs.append(ours(vectors, threshold=threshold, dropped=[], ring=ring, num_neighbours=k))
            ons.append(ours(vectors, threshold=threshold, dropped=[], ring=ring, num_neighbours=k,
                            identity_keys=identity_keys))
        off = median_run(offs)[0]
        on, client, server, _ = median_run(ons)
        label = "SecAgg" if k is None else f"SecAgg+ k={k}"
        signatures = signature_operations(vectors, threshold=threshold, dropped=[], ring=ring, num_neighbours=k,
                                          identity_keys=identity_keys)
        print(f"{num_sites:>3} sites x {length:.0e} {label:>14}: off {off:.3f} s, on {on:.3f} s "
              f"(clients {client:.3f}, server {server:.3f}); defences +{on - off:.3f} s; on/off {on / off:.2f}x (goal <= {goal})"
              + (f"; fastest runs {min(ons)[0]:.3f} / {min(offs)[0]:.3f} s = {min(ons)[0] / min(offs)[0]:.2f}x" if repeats > 1 else "")
              + f"; per round {signatures['sign']} signatures made, {signatures['verify']} verified",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
