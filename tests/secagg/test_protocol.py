"""SecAgg client and server transitions: masking formula, message checks, aborts, share rule."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.errors import AggregationAborted, ConfigurationError, ProtocolError
from pipeline.secagg import keys, shamir
from pipeline.secagg.prg import PRGS
from tests.secagg.mask_reference import reference_mask
from pipeline.encoding import Ring
from pipeline.secagg.client import ClientAborted, ClientDone, ClientMaskedInput, ClientState, client_advance, client_init
from pipeline.secagg.messages import (
    SERVER,
    AdvertiseKeys,
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    RoundConfig,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    share_commitment,
)
from pipeline.secagg.server import ServerAborted, server_advance, server_init, server_result

CONTEXT = keys.KeyContext("fed", "job-a", 7)
LENGTH = 33


def make_config(num_sites: int = 5, threshold: int = 3, ring: Ring = Ring.R32, **options: object) -> RoundConfig:
    return RoundConfig(CONTEXT, tuple(range(1, num_sites + 1)), threshold, ring, LENGTH, **options)  # type: ignore[arg-type]


def make_clients(config: RoundConfig, seed: int = 0) -> dict[int, ClientState]:
    rng = np.random.default_rng(seed)
    info = np.iinfo(config.ring.dtype)
    return {
        site: client_init(
            config,
            site,
            rng.integers(0, int(info.max), size=config.length, dtype=config.ring.dtype, endpoint=True),
            randomness=bytes([site, seed % 256]) * 16,
        )
        for site in config.site_ids
    }


def step_clients(clients: dict, delivered: dict[int, list], sites: object = None) -> list:
    outgoing = []
    for site in sorted(clients) if sites is None else sites:
        clients[site], messages = client_advance(clients[site], delivered.get(site, []))
        outgoing.extend(messages)
    return outgoing


def deliver(messages: list) -> dict[int, list]:
    inbox: dict[int, list] = {}
    for message in messages:
        inbox.setdefault(message.receiver, []).append(message)
    return inbox


def run_to(config: RoundConfig, stage: Stage, seed: int = 0) -> tuple:
    """Run every site honestly until the server reaches ``stage``; return the pending messages too."""
    clients = make_clients(config, seed)
    inputs = {site: state.vector.copy() for site, state in clients.items()}
    server = server_init(config)
    to_clients: dict[int, list] = {}
    while server.stage is not stage:
        to_server = step_clients(clients, to_clients)
        server, outgoing = server_advance(server, to_server)
        to_clients = deliver(outgoing)
    return server, clients, to_clients, inputs


def ring_sum(vectors: list[np.ndarray], ring: Ring) -> np.ndarray:
    modulus = 1 << ring.modulus_bits
    total = [0] * LENGTH
    for vector in vectors:
        total = [(a + int(b)) % modulus for a, b in zip(total, vector)]
    return np.array(total, dtype=ring.dtype)


@pytest.mark.parametrize("prg", PRGS)
@pytest.mark.parametrize("ring", [Ring.R32, Ring.R64])
def test_client_masked_input__matches_naive_formula(ring: Ring, prg: str) -> None:
    config = make_config(4, 2, ring, prg=prg)
    server, clients, to_clients, inputs = run_to(config, Stage.MASKED_INPUT)
    modulus = 1 << ring.modulus_bits
    for site in config.site_ids:
        state = clients[site]
        assert isinstance(state, ClientMaskedInput)
        expected = [int(v) for v in inputs[site]]
        terms = [(state.self_mask_seed, 1)]
        for peer in config.site_ids:
            if peer != site:
                shared = keys.agree(state.masking.private_key, state.directory[peer].masking_key)
                seed = keys.pairwise_mask_seed(shared, context=CONTEXT, site_a=site, site_b=peer)
                terms.append((seed, 1 if site < peer else -1))
        for seed, sign in terms:
            expected = [(e + sign * m) % modulus for e, m in zip(expected, reference_mask(seed, LENGTH, ring, prg))]
        _, [masked] = client_advance(state, to_clients[site])
        assert isinstance(masked, MaskedInput)
        np.testing.assert_array_equal(masked.vector, np.array(expected, dtype=ring.dtype))
        np.testing.assert_array_equal(state.vector, inputs[site])  # the input is not modified


def test_round__pairwise_masks_cancel_and_server_recovers_sum() -> None:
    config = make_config(5, 3)
    server, clients, to_clients, inputs = run_to(config, Stage.MASKED_INPUT)
    self_seeds = [clients[site].self_mask_seed for site in config.site_ids]
    masked = step_clients(clients, to_clients)
    without_self = ring_sum([m.vector for m in masked], config.ring)
    for seed in self_seeds:
        without_self = (without_self - np.array(reference_mask(seed, LENGTH, config.ring, config.prg), dtype=np.uint32)).astype(np.uint32)
    np.testing.assert_array_equal(without_self, ring_sum(list(inputs.values()), config.ring))
    server, requests = server_advance(server, masked)
    server, _ = server_advance(server, step_clients(clients, deliver(requests)))
    total, survivors = server_result(server)
    assert survivors == frozenset(config.site_ids)
    np.testing.assert_array_equal(total, ring_sum(list(inputs.values()), config.ring))


def test_round__deterministic_given_randomness() -> None:
    config = make_config(3, 2)
    first = run_to(config, Stage.UNMASKING)
    second = run_to(config, Stage.UNMASKING)
    np.testing.assert_array_equal(first[0].masked_sum, second[0].masked_sum)


def test_server__wrong_stage_rejected_naming_expected_stage() -> None:
    config = make_config()
    clients = make_clients(config)
    stray = MaskedInput(round_index=7, sender=1, receiver=SERVER, vector=np.zeros(LENGTH, np.uint32))
    with pytest.raises(ProtocolError, match="expected a stage ADVERTISE_KEYS message"):
        server_advance(server_init(config), [stray])
    advertised = step_clients(clients, {})
    server, _ = server_advance(server_init(config), advertised)
    # A replay of the previous stage's message is refused in the next stage.
    with pytest.raises(ProtocolError, match="expected a stage SHARE_KEYS message"):
        server_advance(server, [advertised[0]])


def test_server__wrong_round_sender_receiver_and_duplicates_rejected() -> None:
    config = make_config()
    advertised = step_clients(make_clients(config), {})
    good = advertised[0]
    assert isinstance(good, AdvertiseKeys)
    with pytest.raises(ProtocolError, match="another round"):
        server_advance(server_init(config), [dataclasses.replace(good, round_index=6)])
    with pytest.raises(ProtocolError, match="not expected to send"):
        server_advance(server_init(config), [dataclasses.replace(good, sender=9)])
    with pytest.raises(ProtocolError, match="addressed to party 3"):
        server_advance(server_init(config), [dataclasses.replace(good, receiver=3)])
    with pytest.raises(ProtocolError, match="second AdvertiseKeys"):
        server_advance(server_init(config), advertised + [good])
    with pytest.raises(ProtocolError, match="labelled for site 2"):
        server_advance(server_init(config), [dataclasses.replace(good, keys=advertised[1].keys)])


def test_server__shares_from_site_that_did_not_advertise_rejected() -> None:
    config = make_config(5, 3)
    clients = make_clients(config)
    advertised = step_clients(clients, {})
    server, directories = server_advance(server_init(config), advertised[1:])  # site 1 silent
    shares = step_clients(clients, deliver(directories), sites=[2, 3, 4, 5])
    forged = EncryptedShares(round_index=7, sender=1, receiver=SERVER, ciphertexts=shares[0].ciphertexts)
    with pytest.raises(ProtocolError, match="not expected to send"):
        server_advance(server, shares + [forged])
    with pytest.raises(ProtocolError, match="expected exactly one to each"):
        server_advance(server, [dataclasses.replace(shares[0], ciphertexts=shares[0].ciphertexts[:-1])] + shares[1:])


def test_client__replayed_or_misaddressed_messages_rejected() -> None:
    config = make_config()
    clients = make_clients(config)
    with pytest.raises(ProtocolError, match="expects no message"):
        client_advance(clients[1], [KeyDirectory(round_index=7, sender=SERVER, receiver=1, peers=())])
    server, directories = server_advance(server_init(config), step_clients(clients, {}))
    inbox = deliver(directories)
    directory = inbox[1][0]
    with pytest.raises(ProtocolError, match="addressed to party 1"):
        client_advance(clients[2], [directory])
    with pytest.raises(ProtocolError, match="not expected to send"):
        client_advance(clients[1], [dataclasses.replace(directory, sender=2)])
    with pytest.raises(ProtocolError, match="another round"):
        client_advance(clients[1], [dataclasses.replace(directory, round_index=8)])
    with pytest.raises(ProtocolError, match="expected exactly one|second KeyDirectory"):
        client_advance(clients[1], [directory, directory])
    step_clients(clients, inbox)
    with pytest.raises(ProtocolError, match="expected a stage MASKED_INPUT message"):
        client_advance(clients[1], [directory])  # the directory replayed one stage later


def test_client__forged_directory_rejected() -> None:
    config = make_config(4, 2)
    clients = make_clients(config)
    server, directories = server_advance(server_init(config), step_clients(clients, {}))
    directory = deliver(directories)[1][0]
    others = [peer for peer in directory.peers if peer.site != 1]
    duplicate_key = dataclasses.replace(others[0], masking_key=others[1].masking_key)
    stranger = dataclasses.replace(others[0], site=9)
    for peers, reason in (
        (tuple(others), "own advertisement unchanged"),
        ((dataclasses.replace(directory.peers[0], seed_commitment=bytes(32)), *others), "own advertisement unchanged"),
        ((directory.peers[0], duplicate_key, *others[1:]), "repeats a public key"),
        ((*directory.peers, stranger), "not distinct sites of the round"),
    ):
        # Nothing secret has left the site: it stops, refusing, and says why.
        state, sent = client_advance(clients[1], [dataclasses.replace(directory, peers=peers)])
        assert isinstance(state, ClientAborted) and state.refused and reason in state.reason and sent == []


def test_client__ciphertext_relayed_for_another_pair_fails_authentication() -> None:
    config = make_config(4, 2)
    server, clients, to_clients, _ = run_to(config, Stage.MASKED_INPUT)
    # The server relays to site 2 the ciphertext site 1 made for site 3, claiming it is for site 2.
    shares_for_3 = dict(to_clients[3][0].ciphertexts)
    forged = dict(to_clients[2][0].ciphertexts)
    forged[1] = shares_for_3[1]
    to_clients[2] = [dataclasses.replace(to_clients[2][0], ciphertexts=tuple(sorted(forged.items())))]
    server, requests = server_advance(server, step_clients(clients, to_clients))
    with pytest.raises(ProtocolError, match="failed authentication"):
        client_advance(clients[2], deliver(requests)[2])


def _assert_refused(client: ClientState, message: object, match: str) -> None:
    """The site refuses the request: its round ends in ClientAborted (refused, saying why), and nothing leaves it."""
    state, outgoing = client_advance(client, [message])  # type: ignore[list-item]
    assert isinstance(state, ClientAborted) and state.refused and outgoing == [], state
    assert match in state.reason, state.reason


def test_client__never_reveals_both_shares_of_a_peer() -> None:
    config = make_config(4, 2)
    server, clients, to_clients, _ = run_to(config, Stage.UNMASKING)
    request = to_clients[1][0]
    assert isinstance(request, UnmaskRequest)
    greedy = dataclasses.replace(request, survivors=(1, 2, 3, 4), dropped=(2,))
    _assert_refused(clients[1], greedy, "both the self-mask share and the masking-key share")
    stranger = dataclasses.replace(request, survivors=(1, 2, 3), dropped=(5,))
    _assert_refused(clients[1], stranger, "sent this site no shares")
    done, [answer] = client_advance(clients[1], [request])
    assert isinstance(done, ClientDone) and isinstance(answer, UnmaskShares)
    assert done.revealed_self_mask_of == {1, 2, 3, 4} and not done.revealed_key_of
    # A second request (replay) is refused once the site has answered.
    with pytest.raises(ProtocolError, match="accepts no more messages"):
        client_advance(done, [dataclasses.replace(request, survivors=(1,), dropped=(2, 3, 4))])


def test_client__dropped_peer_gets_key_share_only() -> None:
    config = make_config(4, 2)
    server, clients, to_clients, inputs = run_to(config, Stage.MASKED_INPUT)
    masked = step_clients(clients, to_clients, sites=[1, 2, 3])  # site 4 drops before masking
    server, requests = server_advance(server, masked)
    answers = step_clients(clients, deliver(requests), sites=[1, 2, 3])
    for site in (1, 2, 3):
        assert clients[site].revealed_key_of == {4}
        assert clients[site].revealed_self_mask_of == {1, 2, 3}
    server, _ = server_advance(server, answers)
    total, survivors = server_result(server)
    assert survivors == {1, 2, 3}
    np.testing.assert_array_equal(total, ring_sum([inputs[s] for s in (1, 2, 3)], config.ring))


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.CONSISTENCY_CHECK, Stage.UNMASKING])
def test_server__below_threshold_aborts_holding_nothing(stage: Stage) -> None:
    config = make_config(5, 4, consistency_check=True)
    server, clients, to_clients, _ = run_to(config, stage)
    answering = [site for site in config.site_ids if site in to_clients or stage is Stage.ADVERTISE_KEYS][:3]
    messages = step_clients(clients, to_clients, sites=answering)
    aborted, notices = server_advance(server, messages)
    assert isinstance(aborted, ServerAborted) and aborted.at_stage is stage
    for item in dataclasses.fields(aborted):
        assert not isinstance(getattr(aborted, item.name), np.ndarray)
    assert set(vars(aborted)) <= {"config", "at_stage", "reason"}
    with pytest.raises(AggregationAborted, match=f"aborted in stage {stage.name}.*nothing was revealed"):
        server_result(aborted)
    for notice in notices:
        state, outgoing = client_advance(clients[notice.receiver], [notice])
        assert isinstance(state, ClientAborted) and outgoing == []
    if stage is not Stage.UNMASKING:
        assert {notice.receiver for notice in notices} == set(answering)


def test_consistency_check__mismatched_survivor_list_refused() -> None:
    config = make_config(4, 3, consistency_check=True)
    server, clients, to_clients, _ = run_to(config, Stage.UNMASKING)
    request = to_clients[1][0]
    assert len(request.signatures) == 4
    _assert_refused(clients[1], dataclasses.replace(request, signed_survivors=(1, 2, 3)),
                    "other than the one this site signed")
    _assert_refused(clients[1], dataclasses.replace(request, signatures=request.signatures[:2]), "fewer than the threshold")
    own, second = request.signatures[0], request.signatures[1]
    assert own[0] == 1 and second[0] == 2
    bad = (own, (2, bytes(64))) + request.signatures[2:]
    _assert_refused(clients[1], dataclasses.replace(request, signatures=bad), "invalid consistency signature from site 2")
    # A site does not verify its own signature, but accepts only the one it sent.
    for forged in (bytes(64), second[1]):
        _assert_refused(clients[1], dataclasses.replace(request, signatures=((1, forged),) + request.signatures[1:]),
                        "consistency signature of this site other than the one it sent")
    # Its own signature counts towards the threshold wherever the coordinator lists it.
    reordered = request.signatures[1:3] + (own,)
    done, _ = client_advance(clients[1], [dataclasses.replace(request, signatures=reordered)])
    assert isinstance(done, ClientDone)



def test_client__refuses_forwarded_shares_from_outside_its_directory() -> None:
    config = make_config(4, 3)
    _, clients, to_clients, _ = run_to(config, Stage.MASKED_INPUT)
    forwarded = to_clients[1][0]
    assert isinstance(forwarded, ForwardedShares)
    first = forwarded.ciphertexts[0]
    stranger, repeated, itself = ((9, first[1]),) + forwarded.ciphertexts, (first,) + forwarded.ciphertexts, ((1, first[1]),)
    for forged in (stranger, repeated, itself + forwarded.ciphertexts[1:]):
        _assert_refused(clients[1], dataclasses.replace(forwarded, ciphertexts=forged), "refuses the forwarded shares")


def test_consistency_check__a_survivor_list_that_omits_the_site_or_repeats_one_is_refused() -> None:
    config = make_config(4, 3, consistency_check=True)
    _, clients, to_clients, _ = run_to(config, Stage.CONSISTENCY_CHECK)
    survivors = to_clients[1][0]
    assert isinstance(survivors, SurvivorList)
    for forged in ((2, 3, 4), (1, 2, 2, 3), (1, 2, 3, 9)):
        _assert_refused(clients[1], dataclasses.replace(survivors, survivors=forged), "refuses the survivor list")

def test_consistency_check__server_rejects_bad_signature() -> None:
    config = make_config(4, 3, consistency_check=True)
    server, clients, to_clients, _ = run_to(config, Stage.CONSISTENCY_CHECK)
    signatures = step_clients(clients, to_clients)
    forged = [dataclasses.replace(signatures[0], signature=signatures[1].signature)] + signatures[1:]
    with pytest.raises(ProtocolError, match="does not verify"):
        server_advance(server, forged)


def test_server__altered_share_is_discarded_named_and_the_others_reconstruct() -> None:
    config = make_config(4, 2)
    server, clients, to_clients, inputs = run_to(config, Stage.MASKED_INPUT)
    server, requests = server_advance(server, step_clients(clients, to_clients, sites=[1, 2, 3]))
    answers = step_clients(clients, deliver(requests), sites=[1, 2, 3])
    (owner, data), = answers[0].key_shares
    corrupted = data[:4] + bytes(66 - 33) + bytes(33 * [7])
    answers[0] = dataclasses.replace(answers[0], key_shares=((owner, corrupted),))
    done, _ = server_advance(server, answers)
    total, survivors = server_result(done)
    assert done.discarded == ((1, owner, "key"),)  # site 1 returned a share its dealer never committed to
    np.testing.assert_array_equal(total, ring_sum([inputs[s] for s in sorted(survivors)], config.ring))


def test_server__too_few_committed_shares_left_aborts_naming_who_altered_them() -> None:
    config = make_config(4, 3)
    server, clients, to_clients, _ = run_to(config, Stage.MASKED_INPUT)
    server, requests = server_advance(server, step_clients(clients, to_clients, sites=[1, 2, 3]))
    answers = step_clients(clients, deliver(requests), sites=[1, 2, 3])
    (owner, data), = answers[1].key_shares
    answers[1] = dataclasses.replace(answers[1], key_shares=((owner, data[:-1] + bytes([data[-1] ^ 1])),))
    aborted, _ = server_advance(server, answers)
    assert isinstance(aborted, ServerAborted)
    assert f"site {owner}'s masking key" in aborted.reason and "sites [2] returned altered shares" in aborted.reason


def test_server__share_set_other_than_requested_rejected() -> None:
    config = make_config(4, 2)
    server, clients, to_clients, _ = run_to(config, Stage.UNMASKING)
    answers = step_clients(clients, to_clients)
    answers[0] = dataclasses.replace(answers[0], self_mask_shares=answers[0].self_mask_shares[:-1])
    with pytest.raises(ProtocolError, match="expected those of"):
        server_advance(server, answers)


def test_states__frozen() -> None:
    config = make_config(3, 2)
    server, clients, _, _ = run_to(config, Stage.SHARE_KEYS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        server.config = config  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        clients[1].site = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        server.directory[1] = None  # type: ignore[index]


def test_round_config__invalid_parameters() -> None:
    with pytest.raises(ConfigurationError, match="threshold must be between 1 and 5"):
        make_config(5, 6)
    with pytest.raises(ConfigurationError, match="between 1 and 2 .num_neighbours, so that one dropout"):
        RoundConfig(CONTEXT, tuple(range(1, 11)), 3, Ring.R32, 8, num_neighbours=2)
    with pytest.raises(ConfigurationError, match="distinct ints >= 1"):
        RoundConfig(CONTEXT, (0, 1, 2), 2, Ring.R32, 8)
    with pytest.raises(ConfigurationError, match="at least 2 sites"):
        RoundConfig(CONTEXT, (1,), 1, Ring.R32, 8)
    config = make_config(3, 2)
    with pytest.raises(ConfigurationError, match="encoded input must be"):
        client_init(config, 1, np.zeros(LENGTH, np.float64))
    with pytest.raises(ConfigurationError, match="not one of the round's sites"):
        client_init(config, 9, np.zeros(LENGTH, np.uint32))


def test_server_result__unfinished_round() -> None:
    with pytest.raises(ProtocolError, match="not finished"):
        server_result(server_init(make_config()))


def test_server__a_dealer_that_shares_its_seed_inconsistently_is_named() -> None:
    config = make_config(5, 3)
    clients = make_clients(config)
    server = server_init(config)
    advertisements = step_clients(clients, {})
    # Site 1 deals holder 2 a shifted self-mask-seed share, and commits to the shifted one,
    # so every holder's check of what it received passes.
    dealer = clients[1]
    key_share, seed_share = dealer.dealt[2]
    share = shamir.Share.from_bytes(seed_share)
    shifted = shamir.Share(share.x, (share.y + 1) % shamir.PRIME).to_bytes()
    commitments = tuple((holder, key, share_commitment(config, 1, 2, "seed", shifted) if holder == 2 else seed)
                        for holder, key, seed in advertisements[0].keys.share_commitments)
    advertisements[0] = dataclasses.replace(advertisements[0], keys=dataclasses.replace(advertisements[0].keys,
                                                                                        share_commitments=commitments))
    clients[1] = dataclasses.replace(dealer, dealt={**dealer.dealt, 2: (key_share, shifted)},
                                     advertised=advertisements[0].keys)
    server, outgoing = server_advance(server, advertisements)
    while server.stage not in (Stage.DONE, Stage.ABORTED):
        server, outgoing = server_advance(server, step_clients(clients, deliver(outgoing)))
    assert isinstance(server, ServerAborted)
    assert "site 1's self-mask seed" in server.reason and "the dealer shared it inconsistently" in server.reason
