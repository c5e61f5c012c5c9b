"""Round keys bound to identities: each advertisement is signed by its site's certificate key.

The attacks are run as a malicious coordinator would run them, against the real pure
transitions: it swaps a site's X25519 keys in the directory it relays (man in the
middle), or invents keys for a site, or replays a signed advertisement from another
round. Every honest site refuses the directory before any share leaves it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.encoding import Ring
from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.federation.secagg_wire import decode_message, encode_message
from pipeline.secagg import keys
from pipeline.secagg.client import ClientAborted, client_advance, client_init
from pipeline.secagg.driver import run_round
from pipeline.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    RoundConfig,
    advertisement_statement,
)
from pipeline.secagg.server import server_advance, server_init

CONTEXT = keys.KeyContext("fed", "job-identity", 3)
LENGTH = 8
SITES = (1, 2, 3, 4)


@pytest.fixture(scope="module")
def certificate_keys() -> dict[int, ec.EllipticCurvePrivateKey]:
    return {site: ec.generate_private_key(ec.SECP256R1()) for site in SITES}


def _der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _config(certificate_keys, context: keys.KeyContext = CONTEXT) -> RoundConfig:
    return RoundConfig(context, SITES, 3, Ring.R64, LENGTH, consistency_check=True,
                       identities=tuple((site, _der(key)) for site, key in certificate_keys.items()))


def _advertise(config: RoundConfig, certificate_keys) -> tuple[dict, list]:
    clients, outgoing = {}, []
    for site in SITES:
        vector = np.full(LENGTH, site, np.uint64)
        state = client_init(config, site, vector, randomness=bytes([site]) * 32, identity_key=certificate_keys[site])
        clients[site], sent = client_advance(state, [])
        outgoing += sent
    return clients, outgoing


def test_identity__honest_round_is_exact_and_signatures_are_deterministic(certificate_keys):
    vectors = [np.arange(LENGTH, dtype=np.uint64) * site for site in SITES]
    outcome = run_round(vectors, threshold=3, consistency_check=True, seed=1, record_messages=True,
                        identity_keys=[certificate_keys[s] for s in SITES])
    assert not outcome.aborted
    np.testing.assert_array_equal(outcome.total, sum(vectors))
    advertised = [m for m in outcome.messages if isinstance(m, AdvertiseKeys)]
    assert len(advertised) == len(SITES) and all(m.keys.identity_signature for m in advertised)
    again = run_round(vectors, threshold=3, consistency_check=True, seed=1, record_messages=True,
                      identity_keys=[certificate_keys[s] for s in SITES])
    replayed = [m for m in again.messages if isinstance(m, AdvertiseKeys)]
    # A site restarted mid-round re-sends byte-identical messages (RFC 6979 signatures).
    assert [encode_message(m) for m in replayed] == [encode_message(m) for m in advertised]
    assert decode_message(encode_message(advertised[0])).keys == advertised[0].keys


def test_identity__coordinator_swapping_a_sites_keys_is_refused_before_any_share_is_sent(certificate_keys):
    config = _config(certificate_keys)
    clients, advertisements = _advertise(config, certificate_keys)
    server, directories = server_advance(server_init(config), advertisements)
    attacker = {name: keys.generate_key_pair(bytes([99]) * 32) for name in ("encryption", "masking")}
    forged = []
    for message in directories:  # man in the middle: site 2's keys replaced by the coordinator's own
        peers = tuple(dataclasses.replace(p, encryption_key=attacker["encryption"].public_key,
                                          masking_key=attacker["masking"].public_key) if p.site == 2 else p
                      for p in message.peers)
        forged.append(dataclasses.replace(message, peers=peers))
    for message in forged:
        state, sent = client_advance(clients[message.receiver], [message])
        assert isinstance(state, ClientAborted) and state.refused
        if message.receiver == 2:  # its own advertisement, altered: checked against what it sent
            assert "site 2" in state.reason and "own advertisement unchanged" in state.reason
        else:
            assert "site 2" in state.reason and "not signed by its certificate" in state.reason
        assert not any(isinstance(m, EncryptedShares) for m in sent) and sent == []


def test_identity__invented_keys_and_replayed_advertisements_are_refused(certificate_keys):
    config = _config(certificate_keys)
    clients, advertisements = _advertise(config, certificate_keys)
    _, directories = server_advance(server_init(config), advertisements)
    intruder = ec.generate_private_key(ec.SECP256R1())  # a key the roster does not hold for site 3
    directory = next(m for m in directories if m.receiver == 1)
    site3 = next(p for p in directory.peers if p.site == 3)
    invented = dataclasses.replace(site3, encryption_key=keys.generate_key_pair(bytes([7]) * 32).public_key)
    invented = dataclasses.replace(invented, identity_signature=keys.sign_identity(intruder, advertisement_statement(config, invented)))
    state, sent = client_advance(clients[1], [dataclasses.replace(directory, peers=tuple(
        invented if p.site == 3 else p for p in directory.peers))])
    assert isinstance(state, ClientAborted) and state.refused and sent == []
    # Site 3's genuine signature from another round cannot be replayed into this one.
    other_round = _config(certificate_keys, keys.KeyContext("fed", "job-identity", 4))
    _, old_advertisements = _advertise(other_round, certificate_keys)
    old_site3 = next(m.keys for m in old_advertisements if m.sender == 3)
    state, sent = client_advance(clients[1], [dataclasses.replace(directory, peers=tuple(
        old_site3 if p.site == 3 else p for p in directory.peers))])
    assert isinstance(state, ClientAborted) and state.refused and sent == []


def test_identity__coordinator_refuses_an_unsigned_or_foreign_advertisement(certificate_keys):
    config = _config(certificate_keys)
    _, advertisements = _advertise(config, certificate_keys)
    unsigned = dataclasses.replace(advertisements[0], keys=dataclasses.replace(advertisements[0].keys, identity_signature=None))
    with pytest.raises(ProtocolError, match="site 1.*no signature by its certificate"):
        server_advance(server_init(config), [unsigned])
    with pytest.raises(ConfigurationError, match="not the key of the certificate"):
        client_init(config, 1, np.zeros(LENGTH, np.uint64), identity_key=certificate_keys[2])
    with pytest.raises(ConfigurationError, match="identity_key"):
        client_init(config, 1, np.zeros(LENGTH, np.uint64))


def test_identity__a_peer_without_identities_in_its_config_is_unchanged():
    outcome = run_round([np.ones(LENGTH, np.uint64)] * 3, threshold=2, seed=2, record_messages=True)
    assert not outcome.aborted
    assert all(m.keys.identity_signature is None for m in outcome.messages if isinstance(m, AdvertiseKeys))
