"""Secure aggregation: the coordinator learns the sum of the sites' vectors, nothing else.

Bonawitz et al. (CCS 2017) SecAgg, with the SecAgg+ neighbour graph as an option:
fixed-point encoding into Z_(2^32) or Z_(2^64) (:mod:`.encoding`), ChaCha20 masks
(:mod:`.chacha20`, :mod:`.masks`), the coordinator's vectorized kernels
(:mod:`.kernels`), X25519/HKDF/AES-GCM keys (:mod:`.keys`), Shamir shares
(:mod:`.shamir`), the neighbour graph (:mod:`.neighbours`), the client and server
state machines (:mod:`.protocol`) and an in-memory driver (:mod:`.driver`).

:func:`simulate_secure_sum` runs the real protocol for n simulated sites in memory.
"""

from pipeline.secagg.chacha20 import chacha20_keystream
from pipeline.secagg.driver import run_round, simulate_secure_sum
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring, check_bit_budget, decode, encode
from pipeline.secagg.masks import add_masks, mask_sum
from pipeline.secagg.protocol import RoundConfig, Stage, client_advance, client_init, server_advance, server_init, server_result

__all__ = [
    "chacha20_keystream",
    "simulate_secure_sum",
    "run_round",
    "Ring",
    "FixedPoint",
    "Field",
    "Layout",
    "encode",
    "decode",
    "check_bit_budget",
    "add_masks",
    "mask_sum",
    "Stage",
    "RoundConfig",
    "client_init",
    "client_advance",
    "server_init",
    "server_advance",
    "server_result",
]
