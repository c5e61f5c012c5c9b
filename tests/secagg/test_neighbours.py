"""SecAgg+ neighbour graph: symmetric, k-regular, drawn after the keys are fixed, and its survivors connected."""

from __future__ import annotations

import collections
import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import AggregationAborted, ConfigurationError
from pipeline.secagg.driver import DEFAULT_CONTEXT, run_round, simulate_secure_sum
from pipeline.encoding import Ring
from pipeline.secagg.client import ClientAborted, client_advance, client_init
from pipeline.secagg.neighbours import complete_graph, is_connected, neighbour_graph, secure_permutation
from pipeline.secagg.messages import (
    SERVER,
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    GraphRandomness,
    GraphReveal,
    RoundConfig,
    Stage,
    SurvivorList,
    graph_commitment,
)
from pipeline.secagg.server import ServerAborted, server_advance, server_init


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


def _graph_of(outcome) -> dict[int, frozenset[int]]:
    """The neighbour graph a round used, read off whom each site sent its shares to."""
    return {m.sender: frozenset(receiver for receiver, _ in m.ciphertexts)
            for m in outcome.messages if isinstance(m, EncryptedShares)}


def test_secagg_plus__neighbourhood_below_threshold_aborts() -> None:
    vectors = [np.arange(8, dtype=np.int64)] * 10
    # The graph is drawn in the round; with the same seed it is drawn again the same.
    encoded = [v.astype(np.uint64) for v in vectors]
    victims = sorted(_graph_of(run_round(encoded, threshold=2, num_neighbours=2, seed=1, record_messages=True))[1])
    # Drop both neighbours of site 1 before masking: its self mask has 1 live holder (itself) < 2.
    dropouts = {victim - 1: Stage.MASKED_INPUT for victim in victims}
    with pytest.raises(AggregationAborted, match="holders of site 1's self-mask"):
        simulate_secure_sum(vectors, threshold=2, dropouts=dropouts, num_neighbours=2, seed=1)


def test_secagg_plus__threshold_must_leave_room_for_one_dropout() -> None:
    with pytest.raises(ConfigurationError, match="between 1 and 4 .num_neighbours"):
        RoundConfig(DEFAULT_CONTEXT, tuple(range(1, 11)), threshold=5, ring=Ring.R64, length=8, num_neighbours=4)
    with pytest.raises(ConfigurationError, match="between 1 and 3 .num_neighbours"):
        RoundConfig(DEFAULT_CONTEXT, (1, 2, 3, 4), threshold=4, ring=Ring.R64, length=8, num_neighbours=6)
    # t <= k: any one site may drop at any stage after the graph is fixed and the round still completes.
    vectors = [np.full(4, site, dtype=np.int64) for site in range(12)]
    for dropped in range(12):
        total = simulate_secure_sum(vectors, threshold=4, num_neighbours=4, seed=dropped, dropouts={dropped: Stage.UNMASKING})
        np.testing.assert_array_equal(total, np.full(4, sum(range(12))))


def test_secagg_plus__graph_comes_from_the_sites_randomness_not_the_round_context() -> None:
    """A coordinator that picks the job ID (the context) cannot pick or predict the graph: grinding IDs is useless."""
    vectors = [np.zeros(4, dtype=np.uint64)] * 12
    graphs = {frozenset(_graph_of(run_round(vectors, threshold=3, num_neighbours=4, seed=seed, record_messages=True))[1])
              for seed in range(12)}
    # Same context, same sites: only the sites' fresh randomness differs, and so does site 1's neighbourhood.
    assert len(graphs) >= 6


def test_secagg_plus__graph_randomness_is_committed_before_any_is_revealed() -> None:
    outcome = run_round([np.zeros(4, dtype=np.uint64)] * 8, threshold=3, num_neighbours=4, seed=3, record_messages=True)
    order = [type(m).__name__ for m in outcome.messages]
    assert order.index("GraphReveal") > max(i for i, name in enumerate(order) if name == "KeyDirectory")
    advertised = {m.sender: m.keys.graph_commitment for m in outcome.messages if isinstance(m, AdvertiseKeys)}
    revealed = {m.sender: m.randomness for m in outcome.messages if isinstance(m, GraphReveal)}
    config = outcome.server.config
    assert all(graph_commitment(config, site, revealed[site]) == advertised[site] for site in advertised)


def _clients_at_share_keys(num_sites: int = 8, k: int = 4, threshold: int = 3):
    """Every site after CHOOSE_GRAPH, the server's GraphRandomness messages, and the server state."""
    config = RoundConfig(DEFAULT_CONTEXT, tuple(range(1, num_sites + 1)), threshold=threshold, ring=Ring.R64, length=4,
                         num_neighbours=k, consistency_check=True)
    clients = {site: client_init(config, site, np.zeros(4, dtype=np.uint64), randomness=bytes([site]) * 32)
               for site in config.site_ids}
    server, to_server = server_init(config), []
    for stage_index in range(2):
        for site in config.site_ids:
            clients[site], sent = client_advance(clients[site], inbox.get(site, []) if stage_index else [])
            to_server += sent
        server, outgoing = server_advance(server, to_server)
        inbox = {m.receiver: [m] for m in outgoing}
        to_server = []
    return config, clients, inbox, server


def test_secagg_plus__a_coordinator_that_alters_or_withholds_a_reveal_is_refused() -> None:
    config, clients, inbox, _ = _clients_at_share_keys()
    message = inbox[1][0]
    assert isinstance(message, GraphRandomness)
    altered = dataclasses.replace(message, reveals=tuple((s, bytes(32) if s == 5 else r) for s, r in message.reveals))
    withheld = dataclasses.replace(message, reveals=tuple((s, r) for s, r in message.reveals if s != 5))
    for forged, reason in ((altered, "site 5's does not match the commitment"), (withheld, "not exactly the advertised sites")):
        state, sent = client_advance(clients[1], [forged])
        assert isinstance(state, ClientAborted) and state.refused and reason in state.reason and sent == []


def test_secagg_plus__a_site_that_does_not_reveal_aborts_the_round() -> None:
    outcome = run_round([np.zeros(4, dtype=np.uint64)] * 8, threshold=3, num_neighbours=4, seed=3,
                        dropouts={2: Stage.CHOOSE_GRAPH})
    assert outcome.aborted and "did not reveal their graph randomness" in outcome.server.reason


def test_secagg_plus__sites_refuse_to_unmask_survivors_that_split_the_graph() -> None:
    """Survivors in two components would give the coordinator each component's sum."""
    config, clients, inbox, server = _clients_at_share_keys(num_sites=8, k=2, threshold=2)
    graph = server.graph
    to_server = []
    for site in config.site_ids:  # SHARE_KEYS, then MASKED_INPUT
        clients[site], sent = client_advance(clients[site], inbox[site])
        to_server += sent
    server, outgoing = server_advance(server, to_server)
    inbox = {m.receiver: [m] for m in outgoing}
    to_server = []
    for site in config.site_ids:
        clients[site], sent = client_advance(clients[site], inbox[site])
        to_server += sent
    # A malicious coordinator declares two opposite sites of the ring dropped: it breaks into two arcs of three.
    cycle = [1, min(graph[1])]
    while len(cycle) < len(config.site_ids):
        cycle.append(next(iter(graph[cycle[-1]] - {cycle[-2]})))
    cut = {cycle[0], cycle[4]}
    survivors = tuple(sorted(set(config.site_ids) - cut))
    assert not is_connected(graph, frozenset(survivors))
    for site in survivors:
        state, sent = client_advance(clients[site], [SurvivorList(config.round_index, SERVER, site, survivors)])
        assert isinstance(state, ClientAborted) and state.refused and "not connected" in state.reason
        assert not any(isinstance(m, ConsistencySignature) for m in sent)
    # The honest server aborts such a round itself, before asking for any share.
    honest, notices = server_advance(server, [m for m in to_server if m.sender in survivors])
    assert isinstance(honest, ServerAborted) and "not connected" in honest.reason


def test_is_connected() -> None:
    ring = neighbour_graph(range(1, 9), num_neighbours=2, seed=b"x")
    assert is_connected(ring, frozenset(range(1, 9)))
    one = next(iter(ring[1]))
    assert is_connected(ring, frozenset(range(1, 9)) - {one})  # a cycle minus one node is a path
    assert not is_connected(ring, frozenset(range(1, 9)) - ring[1])
    assert not is_connected(ring, frozenset())
