"""Shamir sharing: every t-subset reconstructs, fewer shares never do."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.secagg.keys import DeterministicRandom
from pipeline.secagg.shamir import PRIME, SHARE_BYTES, Share, combine, split


def naive_interpolate_at_zero(shares: list[Share]) -> int:
    """Textbook Lagrange interpolation with Fractions-free modular arithmetic."""
    total = 0
    for i, share_i in enumerate(shares):
        term = share_i.y
        for j, share_j in enumerate(shares):
            if i != j:
                term = term * share_j.x * pow(share_j.x - share_i.x, PRIME - 2, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


@pytest.mark.parametrize("num_shares,threshold", [(1, 1), (3, 2), (5, 3), (6, 6), (7, 4)])
def test_combine__every_subset_of_size_threshold(num_shares: int, threshold: int) -> None:
    secret = os.urandom(32)
    shares = split(secret, threshold=threshold, num_shares=num_shares)
    assert [share.x for share in shares] == list(range(1, num_shares + 1))
    for subset in itertools.combinations(shares, threshold):
        assert combine(list(subset), threshold=threshold) == secret
        assert naive_interpolate_at_zero(list(subset)) == int.from_bytes(b"\x01" + secret, "big")


@pytest.mark.parametrize("num_shares,threshold", [(3, 2), (5, 3), (6, 6), (7, 4)])
def test_combine__every_subset_below_threshold_fails(num_shares: int, threshold: int) -> None:
    secret = os.urandom(32)
    shares = split(secret, threshold=threshold, num_shares=num_shares)
    for size in range(1, threshold):
        for subset in itertools.combinations(shares, size):
            with pytest.raises(ProtocolError, match="need at least"):
                combine(list(subset), threshold=threshold)
            # Lying about the threshold gives garbage (or a detected error), never the secret.
            try:
                assert combine(list(subset), threshold=size) != secret
            except ProtocolError:
                pass
            assert naive_interpolate_at_zero(list(subset)) != int.from_bytes(b"\x01" + secret, "big")


@settings(max_examples=40, deadline=None)
@given(
    n_and_t=st.integers(1, 12).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))),
    secret=st.binary(min_size=0, max_size=64),
    data=st.data(),
)
def test_split_combine__hypothesis(n_and_t: tuple[int, int], secret: bytes, data: st.DataObject) -> None:
    num_shares, threshold = n_and_t
    shares = split(secret, threshold=threshold, num_shares=num_shares)
    chosen = data.draw(st.permutations(shares)).__getitem__(slice(threshold))
    assert combine(chosen, threshold=threshold) == secret
    if threshold > 1:
        with pytest.raises(ProtocolError):
            combine(chosen[:-1], threshold=threshold)


def test_share__bytes_round_trip() -> None:
    shares = split(b"\x00" * 32, threshold=2, num_shares=3, xs=[7, 11, 13])
    for share in shares:
        data = share.to_bytes()
        assert len(data) == SHARE_BYTES
        assert Share.from_bytes(data) == share
    assert combine([Share.from_bytes(s.to_bytes()) for s in shares[1:]], threshold=2) == b"\x00" * 32


def test_share__malformed_bytes_rejected() -> None:
    with pytest.raises(ProtocolError, match="70 bytes"):
        Share.from_bytes(b"\x00" * 10)
    with pytest.raises(ProtocolError, match="malformed"):
        Share.from_bytes(b"\x00" * SHARE_BYTES)


def test_split__deterministic_with_seeded_random() -> None:
    seed = b"\x05" * 32
    first = split(b"secret", threshold=3, num_shares=5, random_bytes=DeterministicRandom(seed))
    second = split(b"secret", threshold=3, num_shares=5, random_bytes=DeterministicRandom(seed))
    third = split(b"secret", threshold=3, num_shares=5, random_bytes=DeterministicRandom(b"\x06" * 32))
    assert first == second != third


def test_split__bad_parameters() -> None:
    with pytest.raises(ConfigurationError, match="threshold"):
        split(b"x", threshold=4, num_shares=3)
    with pytest.raises(ConfigurationError, match="threshold"):
        split(b"x", threshold=0, num_shares=3)
    with pytest.raises(ConfigurationError, match="at most 64"):
        split(b"x" * 65, threshold=1, num_shares=1)
    with pytest.raises(ConfigurationError, match="distinct"):
        split(b"x", threshold=1, xs=[1, 1])


def test_combine__duplicate_points_rejected() -> None:
    shares = split(b"abc", threshold=2, num_shares=3)
    with pytest.raises(ProtocolError, match="duplicate"):
        combine([shares[0], shares[0]], threshold=2)


def test_combine__corrupted_share_detected() -> None:
    shares = split(os.urandom(32), threshold=3, num_shares=4)
    # A random (not adversarially chosen) corruption: Shamir has no MAC, so the protocol
    # checks reconstructed keys against the advertised public keys as well.
    bad = Share(shares[0].x, int.from_bytes(os.urandom(66), "big") % PRIME)
    with pytest.raises(ProtocolError, match="valid secret"):
        combine([bad, shares[1], shares[2]], threshold=3, secret_bytes=32)
    assert combine(shares[1:], threshold=3, secret_bytes=32) == combine(shares[:3], threshold=3)
