"""Masks by their written convention, made independently of the masking code (for tests).

AES-CTR is built from AES-128 in ECB mode over explicit big-endian counter blocks, and
ChaCha20 from the RFC 8439 keystream function, so a test comparing
:mod:`pipeline.secagg.masks` against these checks the convention, not the code with itself.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline.encoding import Ring
from pipeline.secagg.chacha20 import chacha20_keystream
from pipeline.secagg.prg import AES_CTR


def reference_keystream(seed: bytes, num_bytes: int, prg: str) -> bytes:
    """The first ``num_bytes`` of ``prg``'s mask keystream for ``seed``."""
    if prg == AES_CTR:
        blocks = b"".join(i.to_bytes(16, "big") for i in range(-(-num_bytes // 16)))
        encryptor = Cipher(algorithms.AES(seed[:16]), modes.ECB()).encryptor()
        return (encryptor.update(blocks) + encryptor.finalize())[:num_bytes]
    return chacha20_keystream(seed, bytes(12), num_bytes, engine="openssl").tobytes()


def reference_mask(seed: bytes, length: int, ring: Ring, prg: str) -> list[int]:
    """The mask as Python ints: little-endian ring elements of the keystream."""
    width = ring.modulus_bits // 8
    return [int(v) for v in np.frombuffer(reference_keystream(seed, length * width, prg), dtype=f"<u{width}")]
