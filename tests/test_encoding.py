"""Fixed-point encoding: bit budget boundary, round trips, stochastic rounding, exact counts."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigurationError, InputError, ProtocolError
from pipeline import encoding
from pipeline.encoding import (
    Count,
    Field,
    FixedPoint,
    Integer,
    Layout,
    Real,
    Ring,
    check_bit_budget,
    decode,
    encode,
    fit_scale_bits,
    plan_layout,
)


def naive_ring_sum(rows: list[np.ndarray], ring: Ring) -> np.ndarray:
    """Sum with Python integers, reduced modulo 2^bits at the end."""
    modulus = 1 << ring.modulus_bits
    totals = [sum(int(row[i]) for row in rows) % modulus for i in range(len(rows[0]))]
    return np.array(totals, dtype=ring.dtype)


def repeated_ring_sum(row: np.ndarray, copies: int, ring: Ring) -> np.ndarray:
    """The ring sum of ``copies`` identical contributions (Python integers, no loop)."""
    modulus = 1 << ring.modulus_bits
    return np.array([int(x) * copies % modulus for x in row], dtype=ring.dtype)


@pytest.mark.parametrize(
    "ring, scale_bits, clip",
    [(Ring.R32, 16, 1.0), (Ring.R32, 10, 1.5), (Ring.R32, 0, 1000.0), (Ring.R64, 20, 3.25), (Ring.R64, 0, 2.0**40)],
)
def test_check_bit_budget__boundary_is_where_the_sum_starts_to_wrap(ring: Ring, scale_bits: int, clip: float) -> None:
    fixed = FixedPoint(ring, scale_bits, clip)
    fits = fixed.max_sites()
    check_bit_budget(fixed, fits)
    with pytest.raises(ConfigurationError, match="scale_bits") as error:
        check_bit_budget(fixed, fits + 1)
    assert "clip" in str(error.value) and str(fits) in str(error.value)
    # The boundary is real: `fits` sites all at +clip (or -clip) decode exactly,
    # one more site at +clip wraps to a negative sum.
    top = encode(np.array([clip, -clip]), fixed)
    total = repeated_ring_sum(top, fits, ring)
    np.testing.assert_array_equal(encoding.to_signed(total), [fits * fixed.max_encoded, -fits * fixed.max_encoded])
    wrapped = encoding.to_signed(repeated_ring_sum(top, fits + 1, ring))
    assert wrapped[0] < 0  # (the negative side has one value more: -2^(bits-1) still fits)


def test_check_bit_budget__suggests_a_fitting_scale_and_the_ring() -> None:
    fixed = FixedPoint(Ring.R32, 24, 4.0)
    with pytest.raises(ConfigurationError) as error:
        check_bit_budget(fixed, 1000)
    message = str(error.value)
    assert "lower scale_bits to 19" in message  # 1000 * 4 * 2^19 < 2^31 - 1 < 1000 * 4 * 2^20
    assert "Ring.R64" in message
    check_bit_budget(FixedPoint(Ring.R32, 19, 4.0), 1000)
    with pytest.raises(ConfigurationError):
        check_bit_budget(FixedPoint(Ring.R32, 20, 4.0), 1000)


def test_fixed_point__rejects_impossible_parameters() -> None:
    with pytest.raises(ConfigurationError, match="clip"):
        FixedPoint(Ring.R32, 8, 0.0)
    with pytest.raises(ConfigurationError, match="clip"):
        FixedPoint(Ring.R32, 8, float("inf"))
    with pytest.raises(ConfigurationError, match="scale_bits"):
        FixedPoint(Ring.R32, -1, 1.0)
    with pytest.raises(ConfigurationError, match="R64"):
        FixedPoint(Ring.R32, 30, 4.0)  # one site alone would not fit
    with pytest.raises(ConfigurationError, match="num_sites"):
        check_bit_budget(FixedPoint(Ring.R32, 8, 1.0), 0)


@pytest.mark.parametrize("ring, scale_bits", [(Ring.R32, 12), (Ring.R32, 20), (Ring.R64, 32)])
def test_encode_decode__nearest_round_trip_within_half_a_unit_per_site(ring: Ring, scale_bits: int) -> None:
    fixed = FixedPoint(ring, scale_bits, 2.0)
    rng = np.random.default_rng(0)
    num_sites = 5
    values = rng.uniform(-2.0, 2.0, size=(num_sites, 300))
    values[0, :3] = [-2.0, 0.0, 2.0]
    encoded = [encode(v, fixed) for v in values]
    assert all(e.dtype == ring.dtype for e in encoded)
    half_unit = 2.0**-scale_bits / 2
    for v, e in zip(values, encoded):
        assert np.max(np.abs(decode(e, fixed, 1) - v)) <= half_unit
    total = decode(naive_ring_sum(encoded, ring), fixed, num_sites)
    assert np.max(np.abs(total - values.sum(axis=0))) <= num_sites * half_unit + 1e-12


def test_encode__negative_values_are_twos_complement() -> None:
    fixed = FixedPoint(Ring.R32, 4, 10.0)
    encoded = encode(np.array([-1.0, -0.0625, 3.5, -10.0]), fixed)
    np.testing.assert_array_equal(encoded, np.array([2**32 - 16, 2**32 - 1, 56, 2**32 - 160], dtype=np.uint32))
    np.testing.assert_array_equal(decode(encoded, fixed, 1), [-1.0, -0.0625, 3.5, -10.0])
    counts = encode(np.array([-3, 0, 7], dtype=np.int64), FixedPoint(Ring.R64, 0, 100))
    np.testing.assert_array_equal(counts, np.array([2**64 - 3, 0, 7], dtype=np.uint64))


def test_encode__clips_out_of_range_values() -> None:
    fixed = FixedPoint(Ring.R32, 8, 1.5)
    decoded = decode(encode(np.array([-np.inf, -7.0, 7.0, np.inf]), fixed), fixed, 1)
    np.testing.assert_array_equal(decoded, [-1.5, -1.5, 1.5, 1.5])
    clipped_counts = encode(np.array([250, -250, 5], dtype=np.int32), FixedPoint(Ring.R32, 0, 200))
    np.testing.assert_array_equal(encoding.to_signed(clipped_counts), [200, -200, 5])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encode__chunks_with_and_without_values_to_clip_equal_clip_then_round(dtype: type) -> None:
    """Chunks with nothing to clip skip the clipping passes; every chunk gives clip, scale, round."""
    chunk = encoding._ENCODE_CHUNK
    values = np.random.default_rng(3).uniform(-1.0, 1.0, 4 * chunk + 5).astype(dtype)
    values[chunk + 7] = 3.0  # only a high value to clip in chunk 1
    values[2 * chunk + 9] = -5.0  # only a low value in chunk 2; chunks 0 and 3 need none
    values[chunk + 11] = np.inf
    fixed = FixedPoint(Ring.R32, 20, 2.0)
    reference = np.rint(np.clip(values.astype(np.float64), -2.0, 2.0) * 2.0**20).astype(np.int64).astype(np.uint32)
    np.testing.assert_array_equal(encode(values, fixed), reference)
    values[3 * chunk + 2] = np.nan
    with pytest.raises(InputError, match=rf"index \({3 * chunk + 2},\)"):
        encode(values, fixed)


def test_encode__nan_is_refused_with_its_index() -> None:
    with pytest.raises(InputError, match=r"index \(1, 0\)"):
        encode(np.array([[0.0, 1.0], [np.nan, 2.0]]), FixedPoint(Ring.R32, 8, 4.0))


def test_encode__stochastic_rounding_is_unbiased() -> None:
    fixed = FixedPoint(Ring.R32, 4, 8.0)
    unit = 2.0**-4
    value = 1.0 + 0.3 * unit  # 30% of the way to the next representable value
    draws = 200_000
    decoded = decode(encode(np.full(draws, value), fixed, rounding="stochastic", rng=np.random.default_rng(11)), fixed, 1)
    assert set(np.unique(decoded)) == {1.0, 1.0 + unit}  # never more than one unit away
    # Mean of Bernoulli(0.3) * unit: standard error unit * sqrt(0.21 / draws); allow 6 of them.
    assert abs(decoded.mean() - value) < 6 * unit * np.sqrt(0.21 / draws)
    negative = decode(encode(np.full(draws, -value), fixed, rounding="stochastic", rng=np.random.default_rng(12)), fixed, 1)
    assert abs(negative.mean() + value) < 6 * unit * np.sqrt(0.21 / draws)
    nearest = decode(encode(np.full(10, value), fixed), fixed, 1)
    np.testing.assert_array_equal(nearest, 1.0)  # nearest is biased here, which is why stochastic exists


def test_encode__stochastic_rounding_is_reproducible_from_its_generator() -> None:
    fixed = FixedPoint(Ring.R32, 6, 4.0)
    values = np.random.default_rng(1).uniform(-4, 4, 500)
    first = encode(values, fixed, rounding="stochastic", rng=np.random.default_rng(5))
    again = encode(values, fixed, rounding="stochastic", rng=np.random.default_rng(5))
    other = encode(values, fixed, rounding="stochastic", rng=np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.max(np.abs(decode(first, fixed, 1) - values)) < 2.0**-6
    with pytest.raises(ConfigurationError, match="rng="):
        encode(values, fixed, rounding="stochastic")
    with pytest.raises(ConfigurationError, match="rounding"):
        encode(values, fixed, rounding="up")  # type: ignore[arg-type]


def test_encode__uint64_counts_are_exact_beyond_float_precision() -> None:
    fixed = FixedPoint(Ring.R64, 0, 2.0**56)
    num_sites = 100
    rng = np.random.default_rng(2)
    counts = rng.integers(-(2**56), 2**56, size=(num_sites, 50), dtype=np.int64)
    counts[:, 0] = 2**56 - 1  # the sum 100 * (2^56 - 1) is far beyond 2^53
    encoded = [encode(c, fixed) for c in counts]
    total = naive_ring_sum(encoded, Ring.R64)
    expected = [sum(int(c[i]) for c in counts) for i in range(counts.shape[1])]
    decoded = decode(total, fixed, num_sites)
    assert decoded.dtype == np.int64 and decoded.tolist() == expected
    assert decode(total, FixedPoint(Ring.R64, 3, 10.0), num_sites).dtype == np.float64  # scaled: no longer integers


def test_encode__uint64_input_counts_clip_without_overflow() -> None:
    fixed = FixedPoint(Ring.R64, 0, 1000)
    encoded = encode(np.array([5, 2**64 - 1], dtype=np.uint64), fixed)
    np.testing.assert_array_equal(decode(encoded, fixed, 1), [5, 1000])


def test_decode__refuses_wrong_ring_and_unbudgeted_site_counts() -> None:
    fixed = FixedPoint(Ring.R32, 16, 1.0)
    with pytest.raises(ConfigurationError, match="uint32"):
        decode(np.zeros(3, np.uint64), fixed, 2)
    with pytest.raises(ConfigurationError, match="bit budget"):
        decode(np.zeros(3, np.uint32), fixed, fixed.max_sites() + 1)


def test_layout__encode_decode_named_fields() -> None:
    layout = Layout(
        (
            Field("genotype_count", (3, 4), FixedPoint(Ring.R64, 0, 10_000)),
            Field("xty", (4,), FixedPoint(Ring.R64, 24, 1e6)),
        )
    )
    assert layout.ring is Ring.R64 and layout.size == 16
    rng = np.random.default_rng(4)
    sites = [
        {"genotype_count": rng.integers(0, 10_000, (3, 4)), "xty": rng.uniform(-1e6, 1e6, 4)} for _ in range(3)
    ]
    vectors = [layout.encode(s) for s in sites]
    assert all(v.shape == (16,) and v.dtype == np.uint64 for v in vectors)
    layout.check_bit_budget(3)
    decoded = layout.decode(naive_ring_sum(vectors, Ring.R64), 3)
    np.testing.assert_array_equal(decoded["genotype_count"], sum(s["genotype_count"] for s in sites))
    assert np.max(np.abs(decoded["xty"] - sum(s["xty"] for s in sites))) <= 3 * 2.0**-25
    stochastic = layout.encode(sites[0], rounding="stochastic", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(stochastic[:12], vectors[0][:12])  # counts stay exact


def test_layout__refuses_inconsistent_fields_and_values() -> None:
    with pytest.raises(ConfigurationError, match="share one ring"):
        Layout((Field("a", (2,), FixedPoint(Ring.R32, 8, 1.0)), Field("b", (2,), FixedPoint(Ring.R64, 8, 1.0))))
    with pytest.raises(ConfigurationError, match="unique"):
        Layout((Field("a", (2,), FixedPoint(Ring.R32, 8, 1.0)), Field("a", (1,), FixedPoint(Ring.R32, 8, 1.0))))
    layout = Layout((Field("beta", (2,), FixedPoint(Ring.R32, 16, 1.0)),))
    with pytest.raises(InputError, match="missing"):
        layout.encode({"gamma": np.zeros(2)})
    with pytest.raises(InputError, match="shape"):
        layout.encode({"beta": np.zeros(3)})
    with pytest.raises(ConfigurationError, match="field 'beta'"):
        layout.check_bit_budget(40_000)


def test_layout_decode__r64_counts_beyond_2_53_are_exact() -> None:
    layout = Layout((Field("count", (2,), FixedPoint(Ring.R64, 0, float(2**60)), nonnegative=True),))
    sites = [np.array([2**53 + 1, 7], np.int64), np.array([2**53 + 2, 0], np.int64)]
    decoded = layout.decode(naive_ring_sum([layout.encode({"count": s}) for s in sites], Ring.R64), 2)["count"]
    assert decoded.dtype == np.int64
    assert decoded.tolist() == [2**54 + 3, 7]  # float64 would give 2**54 + 4


def test_layout_decode__refuses_a_sum_outside_the_declared_bounds() -> None:
    layout = Layout((Field("n", (3,), FixedPoint(Ring.R64, 0, 10.0), nonnegative=True), Field("x", (1,), FixedPoint(Ring.R64, 4, 1.0))))
    honest = layout.encode({"n": np.array([10, 0, 3]), "x": np.array([-1.0])})
    # A malicious site writes a ring element no honest encoding makes: -1 as a count.
    forged = honest.copy()
    forged[1] = np.uint64(2**64 - 1)
    assert layout.decode(naive_ring_sum([honest, honest], Ring.R64), 2)["n"].tolist() == [20, 0, 6]
    with pytest.raises(ProtocolError, match="field 'n' index 1"):
        layout.decode(naive_ring_sum([honest, forged], Ring.R64), 2)
    huge = honest.copy()
    huge[3] = np.uint64(1000)  # x = 62.5, beyond the per-site bound of 1.0
    with pytest.raises(ProtocolError, match="field 'x' index 0"):
        layout.decode(naive_ring_sum([honest, huge], Ring.R64), 2)


@pytest.mark.parametrize("num_sites", [1, 3, 100, 5000])
@pytest.mark.parametrize("clip", [1e-3, 1.0, 123.456, 1e9])
def test_fit_scale_bits__is_the_largest_scale_within_the_bit_budget(num_sites: int, clip: float) -> None:
    bits = fit_scale_bits(clip, num_sites, ring=Ring.R64, max_bits=62)
    check_bit_budget(FixedPoint(Ring.R64, bits, clip), num_sites)
    if bits < 62 and clip >= 1.0:  # the +1 of rounding room costs at most one bit here
        with pytest.raises(ConfigurationError):
            check_bit_budget(FixedPoint(Ring.R64, bits + 2, clip), num_sites)
    assert fit_scale_bits(clip, num_sites, max_bits=7) == min(bits, 7)
    assert fit_scale_bits(float(2**40), 2**30, ring=Ring.R32) == -1


def test_plan_layout__picks_the_cheapest_ring_where_every_field_fits() -> None:
    declarations = [Count("n", (2,), 1000), Real("delta", (3,), 10.0, min_scale_bits=10, max_scale_bits=32)]
    small = plan_layout(declarations, 3, rings=(Ring.R32, Ring.R64))
    assert small.ring is Ring.R32 and small.field("n").nonnegative and small.field("n").encoding.scale_bits == 0
    assert small.field("delta").encoding.scale_bits == fit_scale_bits(10.0, 3, ring=Ring.R32, max_bits=32)
    many = plan_layout(declarations, 200_000, rings=(Ring.R32, Ring.R64))
    assert many.ring is Ring.R64
    with pytest.raises(ConfigurationError, match="field 'delta'.*lower clip_norm"):
        plan_layout([Real("delta", (1,), 1e15, min_scale_bits=20)], 10, hint="lower clip_norm")
    assert plan_layout([Integer("v", (1,), 2**40)], 2).field("v").nonnegative is False
