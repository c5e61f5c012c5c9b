"""Shamir t-of-n secret sharing over the Mersenne prime field GF(2^521 - 1).

Each site shares its masking private key and its self-mask seed (32 bytes each) so
the coordinator can remove the masks of sites that drop out (the key) or that
survive (the seed) once ``threshold`` other sites send their shares, and never
with fewer. The field 2^521 - 1 holds any secret up to 64 bytes, so a secret is
one field element and no chunking is needed; Python ints do the arithmetic.

A secret of ``L`` bytes is embedded as the integer of ``0x01 || secret`` so leading
zero bytes survive the round trip; with the expected length given to :func:`combine`,
randomly corrupted shares are detected (the result is not that short). Shamir shares
carry no MAC, so a deliberately shifted share is not: the protocol checks a
reconstructed key against its advertised public key.

Shares are evaluations of a random polynomial of degree ``threshold - 1`` at
``x = 1..n`` (the protocol uses the holder's site ID as ``x``); a share serialises
to ``4 + 66`` bytes.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from pipeline.errors import ConfigurationError, ProtocolError

__all__ = ["PRIME", "MAX_SECRET_BYTES", "SHARE_BYTES", "Share", "split", "combine"]

PRIME = 2**521 - 1
_ELEMENT_BYTES = 66
MAX_SECRET_BYTES = 64
SHARE_BYTES = 4 + _ELEMENT_BYTES
_TOP_MASK = (1 << 521) - 1


@dataclass(frozen=True)
class Share:
    """One evaluation ``(x, y)`` of the sharing polynomial."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        """Fixed-size encoding: 4-byte big-endian ``x``, 66-byte big-endian ``y``."""
        return struct.pack(">I", self.x) + self.y.to_bytes(_ELEMENT_BYTES, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        """Parse :meth:`to_bytes` output.

        Raises:
            ProtocolError: wrong length, ``x`` of 0, or ``y`` outside the field.
        """
        if len(data) != SHARE_BYTES:
            raise ProtocolError(f"a Shamir share is {SHARE_BYTES} bytes, got {len(data)}")
        (x,) = struct.unpack(">I", data[:4])
        y = int.from_bytes(data[4:], "big")
        if x == 0 or y >= PRIME:
            raise ProtocolError(f"malformed Shamir share (x={x}); expected x >= 1 and y below 2^521 - 1")
        return cls(x, y)


def _random_element(random_bytes: Callable[[int], bytes]) -> int:
    while True:
        value = int.from_bytes(random_bytes(_ELEMENT_BYTES), "big") & _TOP_MASK
        if value < PRIME:
            return value


def _parse_threshold(threshold: int, num_shares: int) -> None:
    if not (isinstance(threshold, int) and isinstance(num_shares, int)):
        raise ConfigurationError(f"threshold and num_shares must be ints, got {threshold!r}, {num_shares!r}")
    if not 1 <= threshold <= num_shares:
        raise ConfigurationError(
            f"Shamir threshold must satisfy 1 <= threshold <= num_shares, got threshold={threshold}, "
            f"num_shares={num_shares}; lower the threshold or add shareholders"
        )


def split(
    secret: bytes,
    *,
    threshold: int,
    num_shares: int | None = None,
    xs: Sequence[int] | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` shares recover it and fewer reveal nothing.

    Args:
        secret: up to 64 bytes.
        threshold: shares needed to reconstruct (the polynomial degree plus one).
        num_shares: evaluate at ``x = 1..num_shares`` (give this or ``xs``).
        xs: explicit distinct positive evaluation points (the holders' site IDs).
        random_bytes: source of the polynomial coefficients (``os.urandom`` by default).

    Returns:
        One :class:`Share` per evaluation point, in the order of ``xs``.
    """
    if len(secret) > MAX_SECRET_BYTES:
        raise ConfigurationError(f"a Shamir secret is at most {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if xs is None:
        if num_shares is None:
            raise ConfigurationError("split() needs num_shares= or xs=")
        xs = range(1, num_shares + 1)
    points = [int(x) for x in xs]
    if len(set(points)) != len(points) or any(not 0 < x < 2**32 for x in points):
        raise ConfigurationError(f"evaluation points must be distinct ints in [1, 2^32), got {points}")
    _parse_threshold(threshold, len(points))
    coefficients = [int.from_bytes(b"\x01" + secret, "big")]
    coefficients += [_random_element(random_bytes) for _ in range(threshold - 1)]
    shares = []
    for x in points:
        y = 0
        for coefficient in reversed(coefficients):
            y = (y * x + coefficient) % PRIME
        shares.append(Share(x, y))
    return shares


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange basis values at 0 for the points ``xs`` (cached: one set serves many secrets)."""
    weights = []
    for i, x_i in enumerate(xs):
        numerator, denominator = 1, 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def combine(shares: Sequence[Share], *, threshold: int, secret_bytes: int | None = None) -> bytes:
    """Reconstruct the secret from at least ``threshold`` shares (uses the first ``threshold``).

    Giving ``secret_bytes`` (the protocol's secrets are 32 bytes) makes corrupted or
    inconsistent shares detectable with probability 1 - 2^-(520 - 8 * secret_bytes):
    a wrong polynomial gives a field element that is almost never that short.

    Raises:
        ProtocolError: fewer than ``threshold`` shares, duplicate points, or shares
            that do not lie on one polynomial of a secret made by :func:`split`.
    """
    if len(shares) < threshold:
        raise ProtocolError(
            f"need at least {threshold} Shamir shares to reconstruct, got {len(shares)}; "
            "too few sites answered the unmasking stage"
        )
    used = list(shares[:threshold])
    xs = tuple(share.x for share in used)
    if len(set(xs)) != len(xs):
        raise ProtocolError(f"duplicate Shamir share points {sorted(xs)}")
    weights = _lagrange_at_zero(xs)
    value = sum(weight * share.y for weight, share in zip(weights, used)) % PRIME
    encoded = value.to_bytes((value.bit_length() + 7) // 8, "big")
    expected_bits = None if secret_bytes is None else 8 * secret_bytes + 1
    if not encoded or encoded[0] != 1 or (expected_bits is not None and value.bit_length() != expected_bits):
        raise ProtocolError(
            f"the {threshold} Shamir shares at x={sorted(xs)} do not reconstruct a valid secret "
            "(corrupted shares, or fewer than the sharing threshold)"
        )
    return encoded[1:]
