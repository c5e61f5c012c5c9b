"""Coordinator kernels: ring sums and mask removal with dropped sites, both rings, PRGs and engines."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.encoding import FixedPoint, Ring, decode, encode
from pipeline.errors import ConfigurationError
from pipeline.secagg import kernels, masks
from pipeline.secagg.kernels import ring_sum
from pipeline.secagg.masks import add_masks, unmask
from pipeline.secagg.prg import AES_CTR, CHACHA20

# Every (PRG, engine) pair that makes masks.
MAKERS = [(AES_CTR, "openssl"), (CHACHA20, "openssl"), (CHACHA20, "jax")]


def naive_ring_sum(rows: np.ndarray, ring: Ring) -> np.ndarray:
    modulus = 1 << ring.modulus_bits
    return np.array([sum(int(x) for x in column) % modulus for column in rows.T], dtype=ring.dtype)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_sites=st.sampled_from([1, 2, 7]), ring=st.sampled_from(list(Ring)))
def test_ring_sum__wraps_like_integer_arithmetic(seed: int, num_sites: int, ring: Ring) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 2**63, (num_sites, 12), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    rows = rows.astype(ring.dtype)  # uint32 keeps the low words
    total = ring_sum(rows)
    assert total.dtype == ring.dtype and total.shape == (12,)
    np.testing.assert_array_equal(total, naive_ring_sum(rows, ring))


def test_ring_sum__accepts_jax_arrays_and_refuses_other_shapes() -> None:
    rows = np.array([[2**32 - 1, 5], [3, 7]], dtype=np.uint32)
    np.testing.assert_array_equal(ring_sum(jnp.asarray(rows)), [2, 12])
    with pytest.raises(ConfigurationError, match="n_sites, d"):
        ring_sum(rows[0])
    with pytest.raises(ConfigurationError, match="uint32"):
        ring_sum(rows.astype(np.int64))


def simulate_round(ring: Ring, prg: str, engine: str, dropped: set[int], num_sites: int = 4, length: int = 21):
    """Bonawitz-style masking by hand: site u adds +PRG(s_uv) for v > u and -PRG(s_uv) for v < u."""
    rng = np.random.default_rng(9)
    fixed = FixedPoint(ring, 16, 100.0)
    values = rng.uniform(-100, 100, (num_sites, length))
    self_seeds = [rng.bytes(32) for _ in range(num_sites)]
    pair_seed = {(u, v): rng.bytes(32) for u in range(num_sites) for v in range(u + 1, num_sites)}

    def seed_of(u: int, v: int) -> bytes:
        return pair_seed[(min(u, v), max(u, v))]

    def sign_of(u: int, v: int) -> int:
        return 1 if u < v else -1

    survivors = [u for u in range(num_sites) if u not in dropped]
    masked = []
    for u in survivors:
        others = [v for v in range(num_sites) if v != u]
        seeds = [self_seeds[u]] + [seed_of(u, v) for v in others]
        signs = [1] + [sign_of(u, v) for v in others]
        masked.append(add_masks(encode(values[u], fixed), seeds, signs, prg=prg, engine=engine))
    total = ring_sum(np.stack(masked))
    pair_seeds = [seed_of(u, v) for u in survivors for v in sorted(dropped)]
    pair_signs = [sign_of(u, v) for u in survivors for v in sorted(dropped)]
    unmasked = unmask(total, [self_seeds[u] for u in survivors], pair_seeds, pair_signs, ring, prg=prg, engine=engine)
    expected = naive_ring_sum(np.stack([encode(values[u], fixed) for u in survivors]), ring)
    return unmasked, expected, decode(unmasked, fixed, len(survivors)), values[survivors].sum(axis=0)


@pytest.mark.parametrize(("prg", "engine"), MAKERS)
@pytest.mark.parametrize("ring", list(Ring))
@pytest.mark.parametrize("dropped", [set(), {2}, {0, 3}], ids=["none", "one", "two"])
def test_unmask__recovers_the_survivors_sum(prg: str, engine: str, ring: Ring, dropped: set[int]) -> None:
    unmasked, expected, decoded, true_sum = simulate_round(ring, prg, engine, dropped)
    np.testing.assert_array_equal(unmasked, expected)
    assert np.max(np.abs(decoded - true_sum)) <= 4 * 2.0**-17


@pytest.mark.parametrize("ring", list(Ring))
def test_unmask__engines_bit_identical_and_by_definition(ring: Ring) -> None:
    rng = np.random.default_rng(11)
    total = rng.integers(0, 2**32, 33).astype(ring.dtype)
    self_seeds = [rng.bytes(32) for _ in range(2)]
    pair_seeds = [rng.bytes(32) for _ in range(3)]
    by_engine = [unmask(total, self_seeds, pair_seeds, [1, -1, -1], ring, prg=CHACHA20, engine=e) for e in ("openssl", "jax")]
    np.testing.assert_array_equal(by_engine[0], by_engine[1])
    assert by_engine[0] is not total and not np.array_equal(by_engine[0], total)
    # Definition: total - self masks - signed pair masks, made with the round's PRG.
    results = {}
    for prg in (CHACHA20, AES_CTR):
        results[prg] = unmask(total, self_seeds, pair_seeds, [1, -1, -1], ring, prg=prg)
        expected = total - masks.mask_sum(self_seeds + pair_seeds, [1, 1, 1, -1, -1], 33, ring, prg=prg, engine="openssl")
        np.testing.assert_array_equal(results[prg], expected)
    np.testing.assert_array_equal(results[CHACHA20], by_engine[0])
    assert not np.array_equal(results[CHACHA20], results[AES_CTR])


def test_unmask__jax_no_recompile_on_second_call() -> None:
    rng = np.random.default_rng(12)
    total = rng.integers(0, 2**32, 16).astype(np.uint32)
    unmask(total, [rng.bytes(32)], [rng.bytes(32)], [1], Ring.R32, prg=CHACHA20, engine="jax")
    compiled = kernels._unmask_jit._cache_size()
    unmask(total + np.uint32(1), [rng.bytes(32)], [rng.bytes(32)], [-1], Ring.R32, prg=CHACHA20, engine="jax")
    assert kernels._unmask_jit._cache_size() == compiled


def test_unmask__many_chunks_equal_one_chunk() -> None:
    """The chunked reduction (lax.map over blocks) matches the streamed masks."""
    rng = np.random.default_rng(13)
    seeds = [rng.bytes(32) for _ in range(3)]
    keys, negate = masks.parse_seeds(seeds, [1, -1, 1])
    words = kernels.signed_mask_sum_traced(jnp.asarray(keys.view("<u4")), jnp.asarray(negate), 45, 64, 2)
    expected = masks.mask_sum(seeds, [1, -1, 1], 45, Ring.R64, prg=CHACHA20, engine="openssl")
    np.testing.assert_array_equal(masks.words_to_ring(words, Ring.R64), expected)


def test_unmask__refuses_mismatched_inputs() -> None:
    with pytest.raises(ConfigurationError, match="uint64"):
        unmask(np.zeros(4, np.uint32), [], [], [], Ring.R64)
    with pytest.raises(ConfigurationError, match="pair signs"):
        unmask(np.zeros(4, np.uint32), [], [bytes(32)], [], Ring.R32)
