"""Mask PRGs: the documented conventions (against published vectors and an independent
construction), cancellation across engines, uniformity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.errors import ConfigurationError
from pipeline.secagg import chacha20, kernels, masks
from pipeline.encoding import FixedPoint, Ring, encode
from pipeline.secagg.masks import add_masks, mask_sum
from pipeline.secagg.prg import AES_CTR, CHACHA20, PRGS
from tests.secagg.mask_reference import reference_keystream, reference_mask

# Every (PRG, engine) pair that makes masks.
MAKERS = [(AES_CTR, "openssl"), (CHACHA20, "openssl"), (CHACHA20, "jax")]


def naive_mask_sum(seeds: list[bytes], signs: list[int], length: int, ring: Ring, prg: str) -> np.ndarray:
    modulus = 1 << ring.modulus_bits
    total = [0] * length
    for seed, sign in zip(seeds, signs):
        total = [(t + sign * m) % modulus for t, m in zip(total, reference_mask(seed, length, ring, prg))]
    return np.array(total, dtype=ring.dtype)


def random_seeds(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(32) for _ in range(count)]


@pytest.mark.parametrize(("prg", "engine"), MAKERS)
@pytest.mark.parametrize("ring", list(Ring))
def test_mask_sum__single_mask_follows_the_convention(prg: str, engine: str, ring: Ring) -> None:
    (seed,) = random_seeds(1)
    mask = mask_sum([seed], [1], 37, ring, prg=prg, engine=engine)
    assert mask.dtype == ring.dtype and mask.shape == (37,)
    assert mask.tolist() == reference_mask(seed, 37, ring, prg)


def test_mask_sum__aes_ctr_mask_of_the_zero_seed_is_the_published_keystream() -> None:
    """AES-128 under the zero key of counter blocks 0, 1, 2: the GCM specification's test cases 1 and 2
    (H = E(K, 0); E(K, Y0) with Y0 = 1; and test case 2's ciphertext of a zero block under Y1 = 2)."""
    published = bytes.fromhex(
        "66e94bd4ef8a2c3b884cfa59ca342b2e" "58e2fccefa7e3061367f1d57a4e7455a" "0388dace60b6a392f328c2b971b2fe78"
    )
    for ring in Ring:
        mask = mask_sum([bytes(32)], [1], len(published) // (ring.modulus_bits // 8), ring, prg=AES_CTR)
        assert mask.astype(mask.dtype.newbyteorder("<")).tobytes() == published
    # Only the seed's first 16 bytes key AES-128.
    assert mask_sum([bytes(16) + b"\xff" * 16], [1], 12, Ring.R32, prg=AES_CTR).view(np.uint8).tobytes() == published


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=4),
    length=st.sampled_from([1, 8, 9, 50]),
    ring=st.sampled_from(list(Ring)),
)
def test_mask_sum__engines_equal_naive_reference(seed: int, signs: list[int], length: int, ring: Ring) -> None:
    seeds = random_seeds(len(signs), seed)
    for prg, engine in MAKERS:
        expected = naive_mask_sum(seeds, signs, length, ring, prg)
        np.testing.assert_array_equal(mask_sum(seeds, signs, length, ring, prg=prg, engine=engine), expected)


def test_mask_sum__the_prgs_make_different_masks() -> None:
    """The PRG is part of the round's parameters: the same seed gives unrelated masks under each."""
    (seed,) = random_seeds(1, seed=9)
    aes, chacha = (mask_sum([seed], [1], 64, Ring.R32, prg=prg) for prg in PRGS)
    assert np.count_nonzero(aes == chacha) <= 1


@pytest.mark.parametrize("ring", list(Ring))
def test_add_masks__plus_and_minus_seed_cancel_across_engines(ring: Ring) -> None:
    seeds = random_seeds(3, seed=1)
    vector = np.random.default_rng(2).integers(0, 2**32, 101).astype(ring.dtype)
    original = vector.copy()
    for added_by, removed_by in [(a, b) for a in MAKERS for b in MAKERS if a[0] == b[0]]:
        result = add_masks(vector, seeds, [1, -1, 1], prg=added_by[0], engine=added_by[1])
        assert result is vector  # in place
        assert not np.array_equal(vector, original)
        add_masks(vector, seeds, [-1, 1, -1], prg=removed_by[0], engine=removed_by[1])
        np.testing.assert_array_equal(vector, original)
    # +seed and -seed in one call cancel too.
    np.testing.assert_array_equal(add_masks(vector, [seeds[0], seeds[0]], [1, -1]), original)
    # Masks of one PRG are not removed by the other's.
    add_masks(vector, seeds, [1, -1, 1], prg=AES_CTR)
    add_masks(vector, seeds, [-1, 1, -1], prg=CHACHA20)
    assert not np.array_equal(vector, original)


@pytest.mark.parametrize(("prg", "engine"), MAKERS)
@pytest.mark.parametrize("ring", list(Ring))
def test_masked_copy__equals_adding_in_place_and_leaves_the_input_alone(prg: str, engine: str, ring: Ring) -> None:
    per_chunk = chacha20.STREAM_CHUNK_BYTES // np.dtype(ring.dtype).itemsize
    vector = np.random.default_rng(4).integers(0, 2**32, per_chunk + 7).astype(ring.dtype)
    vector.flags.writeable = False  # a site's input held in its state: read, never written
    seeds = random_seeds(3, seed=5)
    masked = masks.masked_copy(vector, seeds, [1, -1, -1], prg=prg, engine=engine)
    np.testing.assert_array_equal(masked, add_masks(vector.copy(), seeds, [1, -1, -1], prg=prg, engine="openssl"))
    assert masked.dtype == ring.dtype and not np.shares_memory(masked, vector)
    empty = masks.masked_copy(vector, [], [], prg=prg, engine=engine)
    np.testing.assert_array_equal(empty, vector)
    assert not np.shares_memory(empty, vector)


@pytest.mark.parametrize("prg", PRGS)
@pytest.mark.parametrize("ring", list(Ring))
def test_add_masks__streams_across_scratch_chunks(prg: str, ring: Ring) -> None:
    """Lengths that span several scratch buffers give the one-shot keystream."""
    per_chunk = chacha20.STREAM_CHUNK_BYTES // np.dtype(ring.dtype).itemsize
    length = 2 * per_chunk + 5
    seeds = random_seeds(2, seed=3)
    vector = add_masks(np.zeros(length, ring.dtype), seeds, [1, -1], prg=prg, engine="openssl")
    width = ring.modulus_bits // 8

    first, second = (np.frombuffer(reference_keystream(s, length * width, prg), dtype=f"<u{width}") for s in seeds)
    np.testing.assert_array_equal(vector, first.astype(ring.dtype) - second.astype(ring.dtype))


def test_add_masks__masked_vector_bytes_are_uniform() -> None:
    """A masked constant vector looks uniform: chi-square over byte values and over low bytes."""
    encoded = encode(np.full(1 << 15, 0.5), FixedPoint(Ring.R32, 16, 1.0))  # every element equal
    masked = add_masks(encoded.copy(), random_seeds(2, seed=42), [1, -1])
    as_bytes = masked.view(np.uint8)
    for sample in (as_bytes, as_bytes[0::4]):  # all bytes; the least significant byte of each element
        observed = np.bincount(sample, minlength=256)
        p_value = stats.chisquare(observed).pvalue
        assert p_value > 1e-4, p_value
    # The unmasked vector fails the same test, so the test can fail.
    assert stats.chisquare(np.bincount(encoded.view(np.uint8), minlength=256)).pvalue < 1e-100


def test_add_masks__refuses_bad_arguments() -> None:
    seeds = random_seeds(1)
    with pytest.raises(ConfigurationError, match="uint32"):
        add_masks(np.zeros(4, np.int32), seeds, [1])
    with pytest.raises(ConfigurationError, match="contiguous"):
        add_masks(np.zeros(8, np.uint32)[::2], seeds, [1])
    with pytest.raises(ConfigurationError, match="32 bytes, got 5") as error:
        add_masks(np.zeros(4, np.uint32), [b"short"], [1])
    assert "short" not in str(error.value)  # seeds are secret, never echoed
    with pytest.raises(ConfigurationError, match=r"\+1 or -1"):
        add_masks(np.zeros(4, np.uint32), seeds, [2])
    with pytest.raises(ConfigurationError, match="signs"):
        add_masks(np.zeros(4, np.uint32), seeds, [1, -1])
    with pytest.raises(ConfigurationError, match="1-D"):
        add_masks(np.zeros((2, 2), np.uint32), seeds, [1])
    with pytest.raises(ConfigurationError, match="unknown mask PRG 'aes'; use one of aes128-ctr, chacha20"):
        add_masks(np.zeros(4, np.uint32), seeds, [1], prg="aes")
    with pytest.raises(ConfigurationError, match="cannot make aes128-ctr masks"):
        add_masks(np.zeros(4, np.uint32), seeds, [1], prg=AES_CTR, engine="jax")


def test_mask_engine__aes_ctr_is_openssl_whatever_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(chacha20.ENV_ENGINE, "jax")
    assert masks.mask_engine(AES_CTR, None) == "openssl"
    assert masks.mask_engine(CHACHA20, None) == "jax"


def test_mask_sum__empty_inputs() -> None:
    for prg, engine in MAKERS:
        assert mask_sum([], [], 5, Ring.R64, prg=prg, engine=engine).tolist() == [0] * 5
        assert mask_sum(random_seeds(2), [1, 1], 0, Ring.R32, prg=prg, engine=engine).shape == (0,)


def test_mask_sum_device__no_recompile_on_second_call() -> None:
    keys, negate = masks.parse_seeds(random_seeds(3, seed=5), [1, -1, 1])
    kernels.mask_sum_device(keys, negate, 24, Ring.R64)
    compiled = kernels._mask_sum_jit._cache_size()
    other_keys, other_negate = masks.parse_seeds(random_seeds(3, seed=6), [-1, -1, 1])
    kernels.mask_sum_device(other_keys, other_negate, 24, Ring.R64)
    assert kernels._mask_sum_jit._cache_size() == compiled
