"""The fast fixed-point encoder and decoder give the bits of the plain float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.encoding import FixedPoint, Ring, decode, encode
from pipeline.errors import ConfigurationError

SPECIAL = [0.0, -0.0, np.inf, -np.inf, 1e308, -1e308, 5e-324, 1e-45, 0.5, 1.5, 2.5, -0.5, -2.5, 3.4e38, -3.4e38, 1.17e-38]


def reference_encode(values: np.ndarray, encoding: FixedPoint) -> np.ndarray:
    """Clip, scale, round half to even, wrap: the definition, in float64, one step at a time."""
    scaled = np.clip(values.astype(np.float64), -encoding.clip, encoding.clip) * float(1 << encoding.scale_bits)
    return np.rint(scaled).astype(np.int64).astype(encoding.ring.dtype)


@pytest.mark.parametrize("ring", list(Ring))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("clip", [8.0, 0.1, 1 / 3, 1000.5])
def test_encode__equals_the_float64_definition(ring: Ring, dtype: type, clip: float) -> None:
    rng = np.random.default_rng(0)
    for scale_bits in (0, 7, 20, 23, 40, 60):
        try:
            encoding = FixedPoint(ring, scale_bits, clip)
        except ConfigurationError:
            continue  # no such encoding in this ring
        # More than one chunk of the encoder, odd length, values around every rounding tie.
        with np.errstate(over="ignore"):
            values = np.concatenate([
                rng.normal(0.0, 2 * clip, 70_001), SPECIAL, (np.arange(-500, 500) + 0.5) / 2.0**scale_bits,
            ]).astype(dtype)
        encoded = encode(values, encoding)
        assert encoded.dtype == ring.dtype
        np.testing.assert_array_equal(encoded, reference_encode(values, encoding))


def test_encode__keeps_shape_and_order_of_any_layout() -> None:
    encoding = FixedPoint(Ring.R32, 20, 8.0)
    values = np.random.default_rng(1).normal(size=(3, 40, 50)).astype(np.float32)
    for variant in (values, np.asfortranarray(values), values[:, ::2, :]):
        np.testing.assert_array_equal(encode(variant, encoding), reference_encode(variant, encoding))
    assert encode(np.float32(1.5), encoding).shape == ()
    assert encode(np.zeros(0, np.float32), encoding).shape == (0,)


@pytest.mark.parametrize("ring", list(Ring))
def test_decode__equals_the_division_it_replaces(ring: Ring) -> None:
    top = 1 << ring.modulus_bits
    total = np.random.default_rng(2).integers(0, top, 10_000, dtype=np.uint64).astype(ring.dtype)
    total[:5] = np.array([0, 1, top - 1, top // 2, top // 2 - 1], dtype=np.uint64).astype(ring.dtype)
    for scale_bits in (1, 20, 29, 40, 60):
        if scale_bits > ring.modulus_bits - 2:
            continue
        encoding = FixedPoint(ring, scale_bits, 2.0 ** -(scale_bits // 2))
        expected = total.view(ring.signed_dtype).astype(np.int64).astype(np.float64) / float(1 << scale_bits)
        np.testing.assert_array_equal(decode(total, encoding, 1), expected)
    integers = decode(total, FixedPoint(ring, 0, 1.0), 1)
    np.testing.assert_array_equal(integers, total.view(ring.signed_dtype).astype(np.int64))
    assert not np.shares_memory(integers, total)
