"""End-to-end rounds in memory: exact ring sums under dropouts at every stage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import AggregationAborted, ConfigurationError
from pipeline.encoding import Field, FixedPoint, Layout, Ring, encode
from pipeline.secagg.driver import simulate_secure_sum
from pipeline.secagg.driver import run_round
from pipeline.secagg.messages import Stage, UnmaskShares
from pipeline.secagg.server import ServerAborted

STAGES = [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING]


def naive_ring_sum(vectors: list[np.ndarray], ring: Ring) -> np.ndarray:
    """Sum with Python ints, reduced mod 2^bits once at the end."""
    modulus = 1 << ring.modulus_bits
    length = len(vectors[0]) if vectors else 0
    totals = [sum(int(vector[i]) for vector in vectors) % modulus for i in range(length)]
    return np.array(totals, dtype=ring.dtype)


def expected_outcome(num_sites: int, threshold: int, dropouts: dict[int, Stage], consistency_check: bool) -> tuple[bool, set[int]]:
    """(aborts, surviving indices) for full SecAgg, from the stage each site goes silent."""
    def alive_at(stage: Stage) -> set[int]:
        return {i for i in range(num_sites) if i not in dropouts or STAGES.index(dropouts[i]) > STAGES.index(stage)}

    stages = [s for s in STAGES if consistency_check or s is not Stage.CONSISTENCY_CHECK]
    aborts = any(len(alive_at(stage)) < threshold for stage in stages)
    return aborts, alive_at(Stage.MASKED_INPUT)


def check_share_rule(outcome) -> None:
    """No site ever had both its self-mask share and its masking-key share revealed."""
    self_revealed, key_revealed = set(), set()
    for message in outcome.messages:
        if isinstance(message, UnmaskShares):
            self_revealed |= {owner for owner, _ in message.self_mask_shares}
            key_revealed |= {owner for owner, _ in message.key_shares}
    assert not self_revealed & key_revealed


@st.composite
def rounds(draw: st.DrawFn, max_sites: int = 20) -> tuple:
    num_sites = draw(st.integers(2, max_sites))
    threshold = draw(st.integers(1, num_sites))
    dropped = draw(st.lists(st.integers(0, num_sites - 1), unique=True, max_size=num_sites))
    dropouts = {index: draw(st.sampled_from(STAGES)) for index in dropped}
    length = draw(st.integers(0, 40))
    ring = draw(st.sampled_from([Ring.R32, Ring.R64]))
    consistency_check = draw(st.booleans())
    return num_sites, threshold, dropouts, length, ring, consistency_check


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=rounds(), seed=st.integers(0, 2**16))
def test_run_round__exact_ring_sum_or_clean_abort(case: tuple, seed: int) -> None:
    num_sites, threshold, dropouts, length, ring, consistency_check = case
    rng = np.random.default_rng(seed)
    vectors = [rng.integers(0, np.iinfo(ring.dtype).max, size=length, dtype=ring.dtype, endpoint=True) for _ in range(num_sites)]
    outcome = run_round(
        vectors,
        threshold=threshold,
        dropouts=dropouts,
        consistency_check=consistency_check,
        seed=seed,
        record_messages=True,
    )
    aborts, survivors = expected_outcome(num_sites, threshold, dropouts, consistency_check)
    check_share_rule(outcome)
    if aborts:
        assert outcome.aborted and outcome.total is None
        assert isinstance(outcome.server, ServerAborted)
        assert not any(isinstance(value, np.ndarray) for value in vars(outcome.server).values())
        return
    assert outcome.survivors == {index + 1 for index in survivors}
    np.testing.assert_array_equal(outcome.total, naive_ring_sum([vectors[i] for i in sorted(survivors)], ring))


@settings(max_examples=15, deadline=None)
@given(
    num_sites=st.integers(3, 12),
    data=st.data(),
)
def test_simulate_secure_sum__integers_exact(num_sites: int, data: st.DataObject) -> None:
    vectors = [np.array(data.draw(st.lists(st.integers(-(2**40), 2**40), min_size=7, max_size=7))) for _ in range(num_sites)]
    dropped = data.draw(st.lists(st.integers(0, num_sites - 1), unique=True, max_size=num_sites - 2))
    result = simulate_secure_sum(vectors, threshold=2, dropouts=dropped, seed=1)
    assert result.dtype == np.int64
    expected = [sum(int(vectors[i][j]) for i in range(num_sites) if i not in dropped) for j in range(7)]
    assert result.tolist() == expected


@pytest.mark.parametrize(
    "num_sites,threshold,length,dropouts",
    [
        (10, 6, 10**6, {0: Stage.MASKED_INPUT, 1: Stage.MASKED_INPUT}),
        (20, 11, 1000, {i: STAGES[i % 5] for i in range(0, 20, 3)}),
    ],
)
def test_run_round__large_cases_exact(num_sites: int, threshold: int, length: int, dropouts: dict) -> None:
    rng = np.random.default_rng(num_sites)
    vectors = [rng.integers(0, 2**63, size=length, dtype=np.uint64) for _ in range(num_sites)]
    outcome = run_round(vectors, threshold=threshold, dropouts=dropouts, consistency_check=True, seed=3)
    survivors = [i for i in range(num_sites) if i not in dropouts or STAGES.index(dropouts[i]) > 2]
    expected = np.zeros(length, dtype=np.uint64)
    for i in survivors:
        expected += vectors[i]
    assert outcome.survivors == {i + 1 for i in survivors}
    np.testing.assert_array_equal(outcome.total, expected)
    assert outcome.times.total_cpu > 0 and set(outcome.times.client_cpu) == set(range(1, num_sites + 1))


def test_simulate_secure_sum__floats_match_fixed_point_sum() -> None:
    rng = np.random.default_rng(0)
    vectors = [rng.normal(scale=100.0, size=(20, 5)) for _ in range(6)]
    result = simulate_secure_sum(vectors, threshold=3, dropouts=[2])
    assert result.shape == (20, 5) and result.dtype == np.float64
    encoding = FixedPoint(Ring.R64, scale_bits=32, clip=2.0**20)
    exact = sum(encode(v, encoding).view(np.int64).astype(object) for i, v in enumerate(vectors) if i != 2)
    np.testing.assert_array_equal(result * 2.0**32, np.array(exact, dtype=np.float64))
    np.testing.assert_allclose(result, sum(v for i, v in enumerate(vectors) if i != 2), atol=6 * 2.0**-33)


def test_simulate_secure_sum__explicit_encoding_and_layout() -> None:
    rng = np.random.default_rng(1)
    encoding = FixedPoint(Ring.R32, scale_bits=10, clip=8.0)
    vectors = [rng.uniform(-20, 20, size=50) for _ in range(4)]
    result = simulate_secure_sum(vectors, threshold=2, encoding=encoding, seed=2)
    expected = sum(np.clip(v, -8, 8) for v in vectors)
    np.testing.assert_allclose(result, expected, atol=4 * 2.0**-11)
    layout = Layout((Field("counts", (3,), FixedPoint(Ring.R64, 0, 1000.0)), Field("beta", (2,), FixedPoint(Ring.R64, 20, 10.0))))
    contributions = [{"counts": np.array([1, 2, 3]) * (i + 1), "beta": np.array([0.5, -0.25]) * i} for i in range(5)]
    summed = simulate_secure_sum(contributions, threshold=3, layout=layout, dropouts={4: Stage.UNMASKING, 0: Stage.SHARE_KEYS})
    np.testing.assert_array_equal(summed["counts"], np.array([1, 2, 3]) * (2 + 3 + 4 + 5))
    np.testing.assert_allclose(summed["beta"], np.array([0.5, -0.25]) * (1 + 2 + 3 + 4))


def test_simulate_secure_sum__below_threshold_aborts() -> None:
    vectors = [np.ones(4)] * 5
    with pytest.raises(AggregationAborted, match="fewer than the threshold 4"):
        simulate_secure_sum(vectors, threshold=4, dropouts=[0, 1])
    with pytest.raises(AggregationAborted, match="UNMASKING"):
        simulate_secure_sum(vectors, threshold=4, dropouts={0: Stage.UNMASKING, 1: Stage.UNMASKING})


def test_simulate_secure_sum__refuses_silent_clipping_and_bad_input() -> None:
    with pytest.raises(ConfigurationError, match="beyond the default encoding's clip"):
        simulate_secure_sum([np.array([1e7]), np.array([0.0])], threshold=2)
    with pytest.raises(ConfigurationError, match="one shape"):
        simulate_secure_sum([np.zeros(3), np.zeros(4)], threshold=2)
    with pytest.raises(ConfigurationError, match="dropout index 5"):
        simulate_secure_sum([np.zeros(3), np.zeros(3)], threshold=2, dropouts=[5])


def test_simulate_secure_sum__seed_makes_round_reproducible() -> None:
    vectors = [np.arange(6, dtype=np.uint32) + i for i in range(3)]
    first = run_round(vectors, threshold=2, seed=b"s" * 32, record_messages=True)
    second = run_round(vectors, threshold=2, seed=b"s" * 32, record_messages=True)
    third = run_round(vectors, threshold=2, seed=b"t" * 32, record_messages=True)
    masked = [[m.vector.tolist() for m in o.messages if type(m).__name__ == "MaskedInput"] for o in (first, second, third)]
    assert masked[0] == masked[1] != masked[2]
    np.testing.assert_array_equal(first.total, third.total)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_run_round__secagg_plus_exact_or_abort(data: st.DataObject, seed: int) -> None:
    num_sites = data.draw(st.integers(4, 20))
    k = data.draw(st.sampled_from([2, 4, 6]))
    threshold = data.draw(st.integers(1, min(num_sites - 1, k)))
    dropped = data.draw(st.lists(st.integers(0, num_sites - 1), unique=True, max_size=num_sites))
    dropouts = {index: data.draw(st.sampled_from([*STAGES, Stage.CHOOSE_GRAPH])) for index in dropped}
    rng = np.random.default_rng(seed)
    vectors = [rng.integers(0, 2**32, size=9, dtype=np.uint64).astype(np.uint32) for _ in range(num_sites)]
    outcome = run_round(vectors, threshold=threshold, dropouts=dropouts, num_neighbours=k, seed=seed, record_messages=True)
    check_share_rule(outcome)
    # With at most k + 1 - t silent sites every neighbourhood keeps t shareholders, and
    # with t >= 2 that is fewer than k, so the k-connected graph stays connected; a site
    # silent in CHOOSE_GRAPH always aborts (the graph is drawn from every advertiser's randomness).
    if Stage.CHOOSE_GRAPH in dropouts.values():
        assert outcome.aborted
    elif threshold >= 2 and len(dropouts) <= min(k, num_sites - 1) + 1 - threshold:
        assert not outcome.aborted
    if outcome.aborted:
        return
    _, possible = expected_outcome(num_sites, threshold, dropouts, False)
    assert outcome.survivors <= {index + 1 for index in possible}
    np.testing.assert_array_equal(outcome.total, naive_ring_sum([vectors[s - 1] for s in sorted(outcome.survivors)], Ring.R32))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_run_round__jax_engine_same_exact_sum(dtype: type) -> None:
    rng = np.random.default_rng(4)
    vectors = [rng.integers(0, 2**32, size=300, dtype=np.uint64).astype(dtype) * dtype(3) for _ in range(5)]
    dropouts = {1: Stage.MASKED_INPUT, 2: Stage.UNMASKING}
    jax_outcome = run_round(vectors, threshold=3, dropouts=dropouts, prg="chacha20", engine="jax", seed=8)
    openssl_outcome = run_round(vectors, threshold=3, dropouts=dropouts, prg="chacha20", engine="openssl", seed=8)
    ring = Ring.from_dtype(dtype)
    expected = naive_ring_sum([vectors[i] for i in (0, 2, 3, 4)], ring)
    np.testing.assert_array_equal(jax_outcome.total, expected)
    np.testing.assert_array_equal(openssl_outcome.total, expected)


def test_simulate_secure_sum__dropout_stages_by_name() -> None:
    vectors = [np.arange(5, dtype=np.int64) * (site + 1) for site in range(4)]
    total = simulate_secure_sum(vectors, threshold=2, dropouts={3: "unmasking", 2: "MASKED_INPUT"}, seed=0)
    # site 3 sent its masked input before dropping, so it is in the sum; site 2 is not
    np.testing.assert_array_equal(total, vectors[0] + vectors[1] + vectors[3])
    with pytest.raises(ConfigurationError, match="expected one of"):
        simulate_secure_sum(vectors, threshold=2, dropouts={3: "no_such_stage"}, seed=0)
