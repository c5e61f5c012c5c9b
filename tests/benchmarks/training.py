"""Federated training round cost: local compute, encoding, masking, transport, aggregation.

For an MLP at about 10^5 and 10^6 parameters and 3 and 10 sites, one training round
of the ``train`` analysis is timed piece by piece, in one process:

* **local compute**: each site's jitted local update (E=1 epoch, minibatches of 64
  over 256 samples), warmed up first so compilation is not counted (it happens once
  per job: round 2 reuses it); a first untimed round warms up everything else;
* **encoding**: clipping the delta, ``n_s * delta`` and the fixed-point encoding of the
  round's layout (Z_2^32);
* **masking**: every site's SecAgg client work (key agreement, Shamir shares, ChaCha20
  masks), from the in-memory protocol driver's per-party CPU timers;
* **transport**: serializing and parsing every protocol message with the wire format
  (``pipeline.federation.secagg_wire``) plus the public state (global model and server
  optimizer state as base64 JSON) that each site downloads; the bytes are printed,
  network time is not simulated;
* **aggregation**: the coordinator's protocol work (summing, unmasking), the decoding
  and the server optimizer step.

The baseline is the local compute alone; the ratio is the whole round (every party's
work, added up) over it. Sites run one after another here; in a federation they run
in parallel, so the critical path is shorter than the sum.

Run: ``python tests/benchmarks/training.py [--quick]``. Figures depend on the machine
and its load; report them as measured.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from pipeline.analyses.train.declarations import LAYOUT_HINT, MIN_DELTA_SCALE_BITS, real
from pipeline.encoding import Count, Ring, plan_layout
from pipeline.federation import secagg_wire
from pipeline.json_arrays import decode_array, encode_array
from pipeline.models import ModelConfig, param_space
from pipeline.models.local_update import LocalConfig, clip_by_l2, local_update_fn
from pipeline.models.server_optimizers import (
    server_optimizer,
    server_step,
    state_from_json,
    state_to_json,
)
from pipeline.secagg.driver import run_round
from pipeline.secagg.server import server_result

SAMPLES = 256
FEATURES = 1000


def _sites_data(num_sites: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_sites):
        x = rng.normal(size=(SAMPLES, FEATURES)).astype(np.float32)
        y = (rng.random(SAMPLES) < 0.3).astype(np.float32)
        out.append((x, y, np.ones(SAMPLES, np.float32)))
    return out


def bench(hidden: int, num_sites: int, *, repeats: int) -> dict[str, float]:
    model = ModelConfig("mlp", FEATURES, "binary", hidden=(hidden,))
    config = LocalConfig(model, epochs=1, batch_size=64, optimizer="sgd", learning_rate=0.05)
    space = param_space(model)
    update = local_update_fn(config)
    data = _sites_data(num_sites)
    theta = space.initial
    optimizer = server_optimizer("fedadam", learning_rate=0.01)
    opt_state = optimizer.init(theta)
    update(theta, *data[0], jax.random.key(0))[0].block_until_ready()  # compile once, as round 1 does
    n_total = SAMPLES * num_sites
    # The training round's own declarations (the held-out statistics left out): Z_2^32 when it fits.
    declarations = [real("weighted_delta", (space.size,), n_total * 10.0, min_bits=MIN_DELTA_SCALE_BITS), Count("n_train", (1,), n_total)]
    layout = plan_layout(declarations, num_sites, rings=(Ring.R32, Ring.R64), hint=LAYOUT_HINT)
    times = {"local": 0.0, "encode": 0.0, "mask": 0.0, "transport": 0.0, "aggregate": 0.0}
    transport_bytes = 0
    for repeat in range(repeats + 1):
        if repeat == 1:  # round 1 warmed up the server optimizer and the encoders: not counted
            times = dict.fromkeys(times, 0.0)
            transport_bytes = 0
        # The public state each site downloads: global model + server optimizer state.
        start = time.perf_counter()
        state_json = json.dumps({"params": encode_array(theta), "server_state": state_to_json(opt_state)})
        for _ in range(num_sites):
            received = json.loads(state_json)
            site_theta = decode_array(received["params"])
        times["transport"] += time.perf_counter() - start
        transport_bytes += len(state_json) * num_sites
        vectors = []
        for site, (x, y, w) in enumerate(data):
            start = time.perf_counter()
            local, _ = update(site_theta, x, y, w, jax.random.fold_in(jax.random.key(repeat), site))
            local = np.asarray(local)
            times["local"] += time.perf_counter() - start
            start = time.perf_counter()
            delta, _ = clip_by_l2(local.astype(np.float64) - site_theta, 10.0)
            vectors.append(layout.encode({"weighted_delta": SAMPLES * delta, "n_train": np.array([SAMPLES], np.int64)}))
            times["encode"] += time.perf_counter() - start
        outcome = run_round(vectors, threshold=num_sites // 2 + 1, ring=layout.ring, record_messages=True)
        times["mask"] += outcome.times.total_cpu - outcome.times.server_cpu
        start = time.perf_counter()
        for message in outcome.messages:
            body = secagg_wire.encode_message(message)
            secagg_wire.decode_message(body)
            transport_bytes += len(body)
        times["transport"] += time.perf_counter() - start
        start = time.perf_counter()
        total, survivors = server_result(outcome.server)
        decoded = layout.decode(total, len(survivors))
        restored = state_from_json(optimizer, theta, state_to_json(opt_state))
        theta, opt_state = server_step(optimizer, theta, restored, decoded["weighted_delta"] / decoded["n_train"][0])
        times["aggregate"] += time.perf_counter() - start + outcome.times.server_cpu
    row = {key: value / repeats for key, value in times.items()}
    row["total"] = sum(row.values())
    row["ratio"] = row["total"] / row["local"]
    row["params"] = space.size
    row["sites"] = num_sites
    row["mbytes"] = transport_bytes / repeats / 1e6
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 parameters only, one repeat")
    args = parser.parse_args()
    configs = [(100, 3), (100, 10)] if args.quick else [(100, 3), (100, 10), (1000, 3), (1000, 10)]
    repeats = 1 if args.quick else 2
    print(f"MLP {FEATURES}-h-1, {SAMPLES} samples/site, E=1, batch 64; seconds per round (sites' work added up)")
    header = f"{'params':>10} {'sites':>5} {'local':>8} {'encode':>8} {'mask':>8} {'transport':>9} {'aggregate':>9} {'total':>8} {'ratio':>6} {'MB moved':>9}"
    print(header)
    for hidden, sites in configs:
        row = bench(hidden, sites, repeats=repeats)
        print(f"{row['params']:>10,} {row['sites']:>5} {row['local']:>8.3f} {row['encode']:>8.3f} {row['mask']:>8.3f} "
              f"{row['transport']:>9.3f} {row['aggregate']:>9.3f} {row['total']:>8.3f} {row['ratio']:>6.1f} {row['mbytes']:>9.1f}")
    print("ratio = (local + encode + mask + transport + aggregate) / local compute alone")


if __name__ == "__main__":
    main()
