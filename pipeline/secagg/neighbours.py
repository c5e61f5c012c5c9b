"""The SecAgg+ neighbour graph: each site masks and shares with k neighbours only.

SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova; CCS 2020) replaces the complete
graph of SecAgg (every pair of sites agrees on a mask, every site shares its keys with
every other) by a sparse graph of degree ``k``. Client work drops from ``O(n * d)`` mask
expansion to ``O(k * d)``, and the coordinator regenerates only the dropped sites'
edges to survivors.

The graph here is a Harary-style circulant graph on a pseudorandom ordering of the
sites: the sites are permuted, placed on a ring, and each is joined to the ``k / 2``
sites on either side. The permutation comes from SHAKE-256 of a public seed and the
sorted site list (rejection-sampled Fisher-Yates, so it is uniform and the same on
every machine); never from ``random`` or ``jax.random``.

Security trade-off (read this before choosing ``k``):

- Privacy now holds per neighbourhood, not globally. A site's masking key and self-mask
  seed are shared among its ``k`` neighbours (and itself) with threshold ``t``. If the
  coordinator colludes with ``t`` members of one neighbourhood, it can reconstruct both
  secrets of that site and read its input; with full SecAgg it needs ``t`` of all ``n``
  sites. Choose ``t`` above half the neighbourhood and ``k`` of order ``log n`` with
  margin (Bell et al. give ``k = O(log n)`` for a constant fraction of corrupt sites,
  *if the graph is random and fixed before sites are corrupted*).
- The seed is public, so the graph is public: an adversary that can corrupt sites
  *after* seeing it can target one site's neighbourhood. The protocol therefore fixes
  the seed only after every key is advertised, from all advertisements and randomness
  each site committed to in its own (commit, then reveal;
  :func:`pipeline.secagg.messages.graph_seed`): the coordinator cannot choose it, and a
  site's own contribution alone makes it uniform. A static adversary is assumed.
- The survivors must stay connected in the graph (:func:`is_connected`): if they split
  into components, the masks cancel within each component and the coordinator would
  learn each component's sum. Sites check it before revealing any share.
- Dropout tolerance is also per neighbourhood: the sum is recovered only if every
  surviving site, and every dropped site that a survivor masked with, keeps at least
  ``t`` live shareholders. A clustered dropout can abort a round that full SecAgg
  would finish.
- Below those bounds the guarantees are SecAgg's: the coordinator sees masked inputs
  and the sum of the survivors, and the self mask keeps a late input of a site
  declared dropped hidden.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Mapping, Sequence

from pipeline.errors import ConfigurationError

__all__ = ["secure_permutation", "neighbour_graph", "complete_graph", "check_num_neighbours", "is_connected"]


class _ShakeStream:
    """An extendable stream of 64-bit integers from SHAKE-256(domain || seed)."""

    def __init__(self, material: bytes) -> None:
        self._material = material
        self._buffer = b""
        self._offset = 0

    def next_u64(self) -> int:
        if self._offset + 8 > len(self._buffer):
            self._buffer = hashlib.shake_256(self._material).digest(max(64, 2 * len(self._buffer)))
        (value,) = struct.unpack_from("<Q", self._buffer, self._offset)
        self._offset += 8
        return value

    def below(self, bound: int) -> int:
        """Uniform integer in ``[0, bound)`` by rejection (no modulo bias)."""
        limit = (1 << 64) - (1 << 64) % bound
        while True:
            value = self.next_u64()
            if value < limit:
                return value % bound


def _parse_sites(site_ids: Sequence[int]) -> list[int]:
    sites = sorted(int(site) for site in site_ids)
    if len(set(sites)) != len(sites):
        raise ConfigurationError(f"site IDs must be distinct, got {sorted(site_ids)}")
    return sites


def secure_permutation(site_ids: Sequence[int], *, seed: bytes) -> list[int]:
    """A uniform permutation of ``site_ids`` derived from ``seed`` with SHAKE-256.

    Deterministic in (seed, set of site IDs): every party computes the same order.
    """
    sites = _parse_sites(site_ids)
    material = b"genofed-secagg-neighbours-v1" + struct.pack(">I", len(seed)) + seed
    material += b"".join(struct.pack(">Q", site) for site in sites)
    stream = _ShakeStream(material)
    order = list(sites)
    for i in range(len(order) - 1, 0, -1):
        j = stream.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def complete_graph(site_ids: Sequence[int]) -> dict[int, frozenset[int]]:
    """Every site neighbours every other site (plain SecAgg)."""
    sites = _parse_sites(site_ids)
    everyone = frozenset(sites)
    return {site: everyone - {site} for site in sites}


def check_num_neighbours(num_neighbours: object) -> None:
    """Raises :class:`ConfigurationError` unless ``num_neighbours`` is an even int >= 2."""
    if isinstance(num_neighbours, bool) or not isinstance(num_neighbours, int) or num_neighbours < 2 or num_neighbours % 2:
        raise ConfigurationError(
            f"num_neighbours must be an even int >= 2 (k/2 neighbours on each side of the ring), got {num_neighbours!r}"
        )


def is_connected(graph: Mapping[int, frozenset[int]], nodes: frozenset[int] | set[int]) -> bool:
    """Whether ``nodes`` induce a connected subgraph of ``graph`` (an empty set is not connected)."""
    if not nodes:
        return False
    start = min(nodes)
    reached, frontier = {start}, [start]
    while frontier:
        for peer in graph.get(frontier.pop(), frozenset()) & nodes:
            if peer not in reached:
                reached.add(peer)
                frontier.append(peer)
    return len(reached) == len(nodes)


def neighbour_graph(site_ids: Sequence[int], *, num_neighbours: int, seed: bytes) -> Mapping[int, frozenset[int]]:
    """The SecAgg+ graph: each site's ``num_neighbours`` neighbours (symmetric).

    Args:
        site_ids: all sites of the round.
        num_neighbours: ``k``, even and at least 2; with ``k >= n - 1`` the graph is
            complete (plain SecAgg).
        seed: public seed fixing the pseudorandom site order.

    Returns:
        site -> frozenset of its neighbours (never itself); ``v in g[u]`` iff ``u in g[v]``.
    """
    sites = _parse_sites(site_ids)
    check_num_neighbours(num_neighbours)
    if num_neighbours >= len(sites) - 1:
        return complete_graph(sites)
    order = secure_permutation(sites, seed=seed)
    half = num_neighbours // 2
    size = len(order)
    graph: dict[int, frozenset[int]] = {}
    for position, site in enumerate(order):
        graph[site] = frozenset(order[(position + step) % size] for step in range(-half, half + 1) if step)
    return graph
