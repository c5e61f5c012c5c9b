"""SecAgg+ neighbour graph: symmetric, k-regular, reproducible from the public seed."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import AggregationAborted, ConfigurationError
from pipeline.secagg.driver import DEFAULT_CONTEXT, run_round, simulate_secure_sum
from pipeline.encoding import Ring
from pipeline.secagg.neighbours import complete_graph, neighbour_graph, secure_permutation
from pipeline.secagg.messages import RoundConfig, Stage


@settings(max_examples=40, deadline=None)
@given(num_sites=st.integers(2, 40), half=st.integers(1, 6), seed=st.binary(min_size=0, max_size=16))
def test_neighbour_graph__symmetric_regular_no_self(num_sites: int, half: int, seed: bytes) -> None:
    sites = list(range(1, num_sites + 1))
    graph = neighbour_graph(sites, num_neighbours=2 * half, seed=seed)
    assert set(graph) == set(sites)
    expected_degree = min(2 * half, num_sites - 1)
    for site, neighbours in graph.items():
        assert site not in neighbours
        assert len(neighbours) == expected_degree
        assert all(site in graph[peer] for peer in neighbours)
    assert graph == neighbour_graph(list(reversed(sites)), num_neighbours=2 * half, seed=seed)


def test_neighbour_graph__seed_changes_graph_and_complete_when_dense() -> None:
    sites = list(range(1, 31))
    first = neighbour_graph(sites, num_neighbours=4, seed=b"a")
    assert first == neighbour_graph(sites, num_neighbours=4, seed=b"a")
    assert first != neighbour_graph(sites, num_neighbours=4, seed=b"b")
    assert neighbour_graph(sites[:5], num_neighbours=4, seed=b"a") == complete_graph(sites[:5])


def test_neighbour_graph__bad_k_rejected() -> None:
    for k in (0, 3, -2, True):
        with pytest.raises(ConfigurationError, match="num_neighbours"):
            neighbour_graph([1, 2, 3, 4, 5], num_neighbours=k, seed=b"")
    with pytest.raises(ConfigurationError, match="distinct"):
        neighbour_graph([1, 1, 2], num_neighbours=2, seed=b"")


def test_secure_permutation__uniform_over_small_sets() -> None:
    counts = collections.Counter(tuple(secure_permutation([1, 2, 3], seed=i.to_bytes(4, "big"))) for i in range(3000))
    assert set(counts) == set(itertools.permutations([1, 2, 3]))
    # 500 expected per permutation; 6 sigma is about 130.
    assert all(abs(count - 500) < 130 for count in counts.values())


def test_secagg_plus__recovers_sum_with_dropouts() -> None:
    rng = np.random.default_rng(1)
    vectors = [rng.integers(-1000, 1000, size=257) for _ in range(16)]
    dropouts = {0: Stage.MASKED_INPUT, 5: Stage.SHARE_KEYS, 9: Stage.UNMASKING, 12: Stage.ADVERTISE_KEYS}
    result = simulate_secure_sum(vectors, threshold=3, dropouts=dropouts, num_neighbours=6, seed=11)
    expected = sum(vectors[i] for i in range(16) if i not in (0, 5, 12))
    np.testing.assert_array_equal(result, expected)


def test_secagg_plus__masks_only_with_neighbours() -> None:
    rng = np.random.default_rng(2)
    vectors = [rng.integers(0, 2**32, size=32, dtype=np.uint64).astype(np.uint32) for _ in range(12)]
    outcome = run_round(vectors, threshold=3, num_neighbours=4, seed=5, record_messages=True)
    shares = [m for m in outcome.messages if type(m).__name__ == "EncryptedShares"]
    assert len(shares) == 12 and all(len(m.ciphertexts) == 4 for m in shares)
    expected = np.zeros(32, dtype=np.uint32)
    for vector in vectors:
        expected += vector
    np.testing.assert_array_equal(outcome.total, expected)


def test_secagg_plus__neighbourhood_below_threshold_aborts() -> None:
    vectors = [np.arange(8, dtype=np.int64)] * 10
    config = RoundConfig(DEFAULT_CONTEXT, tuple(range(1, 11)), threshold=2, ring=Ring.R64, length=8, num_neighbours=2)
    # Drop both neighbours of site 1 before masking: its self mask has 1 live holder (itself) < 2.
    victims = sorted(config.graph[1])
    dropouts = {victim - 1: Stage.MASKED_INPUT for victim in victims}
    with pytest.raises(AggregationAborted, match="holders of site 1's self-mask"):
        simulate_secure_sum(vectors, threshold=2, dropouts=dropouts, num_neighbours=2, seed=1)
