"""A site's side of a SecAgg round: pure transitions over frozen per-stage state.

A site holds one frozen dataclass per stage (:class:`ClientAdvertise` ...
:class:`ClientAborted`). :func:`client_advance` takes it and the server's message for
the stage and returns the next state and the messages to send; what the stages and
messages are is in :mod:`pipeline.secagg.messages`.

A client's randomness is drawn from a 32-byte seed in its initial state
(``os.urandom`` by default), so transitions are deterministic functions of their
inputs. The input vector is dropped from the state as soon as the masked input is sent.

The honest-client rule: whatever the server asks, a site never reveals both the
self-mask share and the masking-key share of one peer (that would unmask the peer's
input). With the consistency check on, it also refuses to unmask unless the request
matches the survivor list it signed and carries ``threshold`` valid signatures of it,
and it signs a survivor list only if the survivors are connected in the round's graph.
A request it refuses ends its round in :class:`ClientAborted` with ``refused`` set and
the reason, as a key directory it refuses does: nothing more leaves the site.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.secagg import keys, masks, shamir
from pipeline.secagg.messages import (
    SECRET_BYTES,
    SERVER,
    Abort,
    AdvertiseKeys,
    BaseMessage,
    ConsistencySignature,
    EncryptedShares,
    ForwardedShares,
    GraphRandomness,
    GraphReveal,
    KeyDirectory,
    MaskedInput,
    Message,
    PeerKeys,
    RoundConfig,
    Stage,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    advertisement_problem,
    advertisement_statement,
    check_incoming,
    seed_commitment,
    share_commitment,
    describe,
    frame,
    frozen_map,
    graph_commitment,
    graph_seed,
    mask_sign,
    round_graph,
    survivor_statement,
    unframe,
)
from pipeline.secagg.neighbours import is_connected

__all__ = [
    "ClientAdvertise",
    "ClientChooseGraph",
    "ClientShareKeys",
    "ClientMaskedInput",
    "ClientConsistencyCheck",
    "ClientUnmasking",
    "ClientDone",
    "ClientAborted",
    "ClientState",
    "client_init",
    "client_advance",
]

# --------------------------------------------------------------------------- client states


@dataclass(frozen=True, eq=False)
class ClientAdvertise:
    """Initial state: the site has its encoded input and its randomness, nothing sent.

    ``identity_key`` is the site's certificate private key, which signs its key
    advertisement when the round binds identities (``config.identities``).
    """

    config: RoundConfig
    site: int
    vector: np.ndarray
    randomness: bytes
    identity_key: ec.EllipticCurvePrivateKey | None = None
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True, eq=False)
class _KeysDealt:
    """What a site holds once it advertised: its round keys, its input, and the shares it dealt.

    ``dealt`` maps each potential shareholder (every site of the round: the graph is not
    known yet) to its (masking-key share, self-mask-seed share), dealt before any
    directory arrives so that the advertisement could commit to every one of them.
    ``advertised`` is the advertisement the site sent: the directory must carry it
    unchanged (which also spares checking the site's own signature).
    """

    config: RoundConfig
    site: int
    vector: np.ndarray
    randomness: bytes
    encryption: keys.KeyPair
    masking: keys.KeyPair
    signing: keys.KeyPair | None
    self_mask_seed: bytes
    dealt: Mapping[int, tuple[bytes, bytes]]
    advertised: PeerKeys


@dataclass(frozen=True, eq=False)
class ClientChooseGraph(_KeysDealt):
    """SecAgg+: keys advertised with a commitment to ``graph_randomness``; waiting for the key directory."""

    graph_randomness: bytes
    stage: ClassVar[Stage] = Stage.CHOOSE_GRAPH


@dataclass(frozen=True, eq=False)
class ClientShareKeys(_KeysDealt):
    """Keys advertised, shares dealt and committed to; waiting for what fixes the graph.

    SecAgg: the key directory. SecAgg+: every site's graph randomness; ``directory``
    then holds the key directory received in CHOOSE_GRAPH (``None`` in SecAgg).
    """

    directory: Mapping[int, PeerKeys] | None = None
    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class ClientMaskedInput:
    """Shares sent; waiting for the shares addressed to this site.

    ``directory`` holds this site's and its neighbours' keys; ``graph`` is the whole
    round's graph and ``graph_seed`` its seed (:func:`~pipeline.secagg.messages.graph_seed`).
    ``inbound_keys`` maps each neighbour to the key of the shares it sends this site,
    derived from the key agreement that encrypted this site's own shares, so opening
    them needs no second agreement.
    """

    config: RoundConfig
    site: int
    vector: np.ndarray
    self_mask_seed: bytes
    inbound_keys: Mapping[int, bytes]
    masking: keys.KeyPair
    signing: keys.KeyPair | None
    directory: Mapping[int, PeerKeys]
    own_shares: tuple[bytes, bytes]
    graph: Mapping[int, frozenset[int]]
    graph_seed: bytes
    stage: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True)
class ClientConsistencyCheck:
    """Masked input sent; waiting for the survivor list to sign. Holds no input vector."""

    config: RoundConfig
    site: int
    inbound_keys: Mapping[int, bytes]
    signing: keys.KeyPair
    directory: Mapping[int, PeerKeys]
    received: Mapping[int, bytes]
    own_shares: tuple[bytes, bytes]
    graph: Mapping[int, frozenset[int]]
    graph_seed: bytes
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True)
class ClientUnmasking:
    """Waiting for the unmasking request. ``signed_survivors`` and ``own_signature`` are set when checking."""

    config: RoundConfig
    site: int
    inbound_keys: Mapping[int, bytes]
    directory: Mapping[int, PeerKeys]
    received: Mapping[int, bytes]
    own_shares: tuple[bytes, bytes]
    signed_survivors: frozenset[int] | None
    graph_seed: bytes
    own_signature: bytes | None = None
    stage: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True)
class ClientDone:
    """Shares sent; the site is finished. Records which peers' secrets it revealed."""

    config: RoundConfig
    site: int
    revealed_self_mask_of: frozenset[int]
    revealed_key_of: frozenset[int]
    stage: ClassVar[Stage] = Stage.DONE


@dataclass(frozen=True)
class ClientAborted:
    """The round was abandoned; the site keeps no secrets of it.

    ``refused`` is true when the site itself stopped because what it received cannot
    come from an honest coordinator (a key not signed by its site's certificate, a
    forged directory...), as opposed to being told to stop.
    """

    config: RoundConfig
    site: int
    at_stage: Stage
    reason: str
    refused: bool = False
    stage: ClassVar[Stage] = Stage.ABORTED


ClientState = Union[
    ClientAdvertise, ClientChooseGraph, ClientShareKeys, ClientMaskedInput, ClientConsistencyCheck, ClientUnmasking, ClientDone, ClientAborted
]

# --------------------------------------------------------------------------- helpers


def _client_abort(state: ClientState, reason: str, *, refused: bool = False) -> ClientAborted:
    return ClientAborted(config=state.config, site=state.site, at_stage=state.stage, reason=reason, refused=refused)


def _client_check(state: ClientState, messages: Sequence[object], expected_type: type) -> BaseMessage:
    """The one server message of the stage: of ``expected_type``, or an :class:`Abort`."""
    single_abort = len(messages) == 1 and isinstance(messages[0], Abort)
    checked = check_incoming(
        messages,
        stage=state.stage,
        expected_type=Abort if single_abort else expected_type,
        config=state.config,
        receiver=state.site,
        allowed_senders=frozenset({SERVER}),
        party=f"site {state.site}",
    )
    if len(messages) != 1:
        raise ProtocolError(
            f"site {state.site} in stage {state.stage.name} expected exactly one {expected_type.__name__} "
            f"from the server, got {len(messages)} messages"
        )
    message = checked[SERVER]
    assert isinstance(message, BaseMessage)
    return message


# --------------------------------------------------------------------------- transitions


def client_init(
    config: RoundConfig, site: int, vector: np.ndarray, *, randomness: bytes | None = None,
    identity_key: ec.EllipticCurvePrivateKey | None = None,
) -> ClientAdvertise:
    """A site's initial state for one round.

    Args:
        config: the round's public parameters.
        site: this site's ID (in ``config.site_ids``).
        vector: the encoded input, 1-D of the ring's dtype and ``config.length``.
        randomness: 32 bytes all the site's secrets derive from; ``None`` draws them
            from ``os.urandom`` (pass bytes only to make tests reproducible).
        identity_key: the site's certificate private key; required when the round binds
            identities, and it must be the key of the certificate the round names.

    Raises:
        ConfigurationError: a site outside the round, a wrong input, or a missing or
            foreign identity key.
    """
    if site not in config.site_ids:
        raise ConfigurationError(f"site {site} is not one of the round's sites {list(config.site_ids)}")
    if config.identities is not None:
        if identity_key is None:
            raise ConfigurationError(f"the round binds keys to identities: site {site} needs identity_key= (its certificate key)")
        own = identity_key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if own != config.identity_of(site):
            raise ConfigurationError(f"site {site}'s identity key is not the key of the certificate the roster names for it")
    vector = np.asarray(vector)
    if vector.dtype != config.ring.dtype or vector.shape != (config.length,):
        raise ConfigurationError(
            f"site {site}'s encoded input must be a ({config.length},) {config.ring.dtype} vector for "
            f"{config.ring.name}, got shape {vector.shape} dtype {vector.dtype}; encode it with the job's Layout"
        )
    randomness = os.urandom(keys.KEY_BYTES) if randomness is None else randomness
    if len(randomness) != keys.KEY_BYTES:
        raise ConfigurationError(f"randomness must be {keys.KEY_BYTES} bytes, got {len(randomness)}")
    return ClientAdvertise(config=config, site=site, vector=vector, randomness=bytes(randomness), identity_key=identity_key)


def _random(state: ClientAdvertise | ClientShareKeys, label: str) -> keys.DeterministicRandom:
    return keys.DeterministicRandom(state.randomness, label.encode() + state.config.context.encode())


def _client_advertise(state: ClientAdvertise, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    if messages:
        raise ProtocolError(
            f"site {state.site} in stage ADVERTISE_KEYS expects no message (it speaks first), got {describe(messages[0])}"
        )
    random = _random(state, "keys")
    encryption = keys.generate_key_pair(random(keys.KEY_BYTES))
    masking = keys.generate_key_pair(random(keys.KEY_BYTES))
    signing = keys.generate_signing_key_pair(random(keys.SIGNING_SEED_BYTES)) if state.config.consistency_check else None
    config, site = state.config, state.site
    # Both secrets are shared now, for every potential holder (any site of the round may
    # become a neighbour), so the advertisement can commit to each share; the
    # coordinator checks what holders return against these commitments.
    dealing = _random(state, "shares")
    self_mask_seed = dealing(SECRET_BYTES)
    holders = list(config.site_ids)
    key_shares = shamir.split(masking.private_key, threshold=config.threshold, xs=holders, random_bytes=dealing)
    seed_shares = shamir.split(self_mask_seed, threshold=config.threshold, xs=holders, random_bytes=dealing)
    dealt = {holder: (k.to_bytes(), v.to_bytes()) for holder, k, v in zip(holders, key_shares, seed_shares)}
    commitments = tuple(
        (holder, share_commitment(config, site, holder, "key", key), share_commitment(config, site, holder, "seed", seed))
        for holder, (key, seed) in dealt.items()
    )
    graph_randomness = _random(state, "graph")(SECRET_BYTES) if config.sparse else b""
    peer = PeerKeys(site, encryption.public_key, masking.public_key, signing.public_key if signing else None, commitments,
                    seed_commitment(config, site, self_mask_seed),
                    graph_commitment(config, site, graph_randomness) if config.sparse else None)
    if state.identity_key is not None:
        signature = keys.sign_identity(state.identity_key, advertisement_statement(state.config, peer))
        peer = dataclasses.replace(peer, identity_signature=signature)
    outgoing = AdvertiseKeys(round_index=state.config.round_index, sender=state.site, receiver=SERVER, keys=peer)
    secrets = dict(config=config, site=site, vector=state.vector, randomness=state.randomness, encryption=encryption,
                   masking=masking, signing=signing, self_mask_seed=self_mask_seed, dealt=frozen_map(dealt),
                   advertised=peer)
    if config.sparse:
        return ClientChooseGraph(**secrets, graph_randomness=graph_randomness), [outgoing]
    return ClientShareKeys(**secrets), [outgoing]


def _signature_problem(state: ClientChooseGraph | ClientShareKeys, peers: Iterable[PeerKeys]) -> str | None:
    """The first of ``peers`` whose advertisement is not signed by its site's certificate, said as a refusal.

    The site's own entry is not checked here: :func:`_directory_problem` requires it to
    be exactly the advertisement the site sent.
    """
    for peer in peers:
        problem = None if peer.site == state.site else advertisement_problem(state.config, peer)
        if problem is not None:
            return f"refuses the key directory: {problem}"
    return None


def _directory_problem(state: ClientChooseGraph | ClientShareKeys, peers: Sequence[PeerKeys]) -> str | None:
    """Why the key directory cannot come from an honest coordinator, checking what needs no signature, or ``None``."""
    config, site = state.config, state.site
    sites = [peer.site for peer in peers]
    if len(set(sites)) != len(sites) or not set(sites) <= set(config.site_ids):
        return f"refuses the key directory: it lists sites {sorted(sites)}, not distinct sites of the round"
    for peer in peers:
        if config.consistency_check and peer.signing_key is None:
            return f"refuses the key directory: site {peer.site} has no signing key but the consistency check is on"
        if config.sparse and peer.graph_commitment is None:
            return f"refuses the key directory: site {peer.site} committed to no graph randomness in a SecAgg+ round"
    own = next((peer for peer in peers if peer.site == site), None)
    if own != state.advertised:
        return "refuses the key directory: it does not carry this site's own advertisement unchanged"
    public_keys = [key for peer in peers for key in (peer.encryption_key, peer.masking_key)]
    if len(set(public_keys)) != len(public_keys):
        return "refuses the key directory: it repeats a public key"
    return None


def _refuse(state: ClientState, problem: str) -> tuple[ClientState, list[Message]]:
    """Nothing secret has left the site yet: it stops here, and says why."""
    return _client_abort(state, f"site {state.site} {problem}", refused=True), []


def _client_choose_graph(state: ClientChooseGraph, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, KeyDirectory)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, KeyDirectory)
    # Signatures are checked once the graph is known, for the neighbours whose keys the site uses.
    problem = _directory_problem(state, message.peers)
    if problem is not None:
        return _refuse(state, problem)
    directory = {peer.site: peer for peer in message.peers}
    # Every advertisement is fixed now: only then is this site's randomness revealed.
    outgoing = GraphReveal(round_index=state.config.round_index, sender=state.site, receiver=SERVER,
                           randomness=state.graph_randomness)
    next_state = ClientShareKeys(
        config=state.config, site=state.site, vector=state.vector, randomness=state.randomness,
        encryption=state.encryption, masking=state.masking, signing=state.signing, self_mask_seed=state.self_mask_seed,
        dealt=state.dealt, advertised=state.advertised, directory=frozen_map(directory),
    )
    return next_state, [outgoing]


def _reveals_problem(state: ClientShareKeys, message: GraphRandomness, directory: Mapping[int, PeerKeys]) -> str | None:
    """Why the relayed graph randomness is not every advertised site's committed randomness, or ``None``."""
    reveals = dict(message.reveals)
    if len(reveals) != len(message.reveals) or set(reveals) != set(directory):
        return (f"refuses the graph randomness: it is for sites {sorted(reveals)}, not exactly the advertised sites "
                f"{sorted(directory)}")
    for peer, randomness in sorted(reveals.items()):
        if graph_commitment(state.config, peer, randomness) != directory[peer].graph_commitment:
            return f"refuses the graph randomness: site {peer}'s does not match the commitment it advertised"
    return None


def _client_share_keys(state: ClientShareKeys, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, KeyDirectory if state.directory is None else GraphRandomness)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    config, site = state.config, state.site
    if isinstance(message, KeyDirectory):
        problem = _signature_problem(state, message.peers) or _directory_problem(state, message.peers)
        everyone, reveals = {peer.site: peer for peer in message.peers}, {}
    else:
        assert isinstance(message, GraphRandomness) and state.directory is not None
        everyone = dict(state.directory)
        problem = _reveals_problem(state, message, everyone)
        reveals = dict(message.reveals)
    if problem is not None:
        return _refuse(state, problem)
    seed = graph_seed(config, everyone, reveals)
    graph = round_graph(config, sorted(everyone), seed)
    directory = {peer: everyone[peer] for peer in sorted(graph[site] | {site})}
    if config.sparse:
        problem = _signature_problem(state, directory.values())
        if problem is not None:
            return _refuse(state, problem)
    holders = sorted(directory)
    if len(holders) < config.threshold:
        return _client_abort(state, f"only {len(holders)} shareholders advertised keys, fewer than the threshold {config.threshold}"), []
    random = _random(state, "nonces")
    ciphertexts = []
    own_shares = state.dealt[site]
    others = [holder for holder in holders if holder != site]
    secrets = keys.agree_many(state.encryption.private_key, [directory[holder].encryption_key for holder in others])
    inbound_keys = {}
    for holder, shared in zip(others, secrets):
        plaintext = frame(struct.pack(">QQ", site, holder), *state.dealt[holder])
        transport_key = keys.share_transport_key(shared, context=config.context, sender=site, receiver=holder)
        inbound_keys[holder] = keys.share_transport_key(shared, context=config.context, sender=holder, receiver=site)
        ciphertexts.append(
            (holder, keys.encrypt_share(transport_key, plaintext, context=config.context, sender=site, receiver=holder, nonce=random(12)))
        )
    outgoing = EncryptedShares(round_index=config.round_index, sender=site, receiver=SERVER, ciphertexts=tuple(ciphertexts))
    next_state = ClientMaskedInput(
        config=config,
        site=site,
        vector=state.vector,
        self_mask_seed=state.self_mask_seed,
        inbound_keys=frozen_map(inbound_keys),
        masking=state.masking,
        signing=state.signing,
        directory=frozen_map(directory),
        own_shares=own_shares,
        graph=graph,
        graph_seed=seed,
    )
    return next_state, [outgoing]


def _client_masked_input(state: ClientMaskedInput, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, ForwardedShares)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, ForwardedShares)
    config, site = state.config, state.site
    received: dict[int, bytes] = {}
    for sender, ciphertext in message.ciphertexts:
        if sender not in state.directory or sender == site or sender in received:
            return _refuse(state, f"refuses the forwarded shares: they claim to come from site {sender}, which is not "
                           "a (unique) neighbour in this site's key directory")
        received[sender] = bytes(ciphertext)
    if len(received) + 1 < config.threshold:
        return _client_abort(state, f"only {len(received) + 1} shareholders sent shares, fewer than the threshold {config.threshold}"), []
    seeds = [state.self_mask_seed]
    signs = [1]
    peers = sorted(received)
    secrets = keys.agree_many(state.masking.private_key, [state.directory[peer].masking_key for peer in peers])
    for peer, shared in zip(peers, secrets):
        seeds.append(keys.pairwise_mask_seed(shared, context=config.context, site_a=site, site_b=peer))
        signs.append(mask_sign(site, peer))
    masked = masks.masked_copy(np.ascontiguousarray(state.vector, dtype=config.ring.dtype), seeds, signs, prg=config.prg,
                               engine=config.engine)
    outgoing = MaskedInput(round_index=config.round_index, sender=site, receiver=SERVER, vector=masked)
    frozen_received = frozen_map(received)
    if config.consistency_check:
        assert state.signing is not None
        next_state: ClientState = ClientConsistencyCheck(
            config=config,
            site=site,
            inbound_keys=state.inbound_keys,
            signing=state.signing,
            directory=state.directory,
            received=frozen_received,
            own_shares=state.own_shares,
            graph=state.graph,
            graph_seed=state.graph_seed,
        )
    else:
        next_state = ClientUnmasking(
            config=config,
            site=site,
            inbound_keys=state.inbound_keys,
            directory=state.directory,
            received=frozen_received,
            own_shares=state.own_shares,
            signed_survivors=None,
            graph_seed=state.graph_seed,
        )
    return next_state, [outgoing]


def _client_consistency(state: ClientConsistencyCheck, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, SurvivorList)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, SurvivorList)
    config, site = state.config, state.site
    survivors = frozenset(message.survivors)
    if len(survivors) != len(message.survivors) or not survivors <= set(state.graph) or site not in survivors:
        return _refuse(state, f"refuses the survivor list {sorted(message.survivors)}: it repeats a site, names one "
                       "outside the round's graph, or omits this site")
    if len(survivors) < config.threshold:
        return _client_abort(state, f"only {len(survivors)} survivors, fewer than the threshold {config.threshold}"), []
    if not is_connected(state.graph, survivors):
        # Masks cancel within each component: the coordinator would learn each part's sum.
        return _refuse(state, f"refuses the survivor list {sorted(survivors)}: it is not connected in the round's "
                       "neighbour graph, so unmasking would reveal the sums of its parts")
    signature = keys.sign(state.signing.private_key, survivor_statement(config, sorted(survivors), state.graph_seed))
    outgoing = ConsistencySignature(round_index=config.round_index, sender=site, receiver=SERVER, signature=signature)
    next_state = ClientUnmasking(
        config=config,
        site=site,
        inbound_keys=state.inbound_keys,
        directory=state.directory,
        received=state.received,
        own_shares=state.own_shares,
        signed_survivors=survivors,
        graph_seed=state.graph_seed,
        own_signature=signature,
    )
    return next_state, [outgoing]


def _client_unmasking(state: ClientUnmasking, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, UnmaskRequest)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, UnmaskRequest)
    config, site = state.config, state.site
    survivors, dropped = frozenset(message.survivors), frozenset(message.dropped)
    problem = _unmask_request_problem(state, message, survivors, dropped)
    if problem is not None:
        return _refuse(state, f"refuses the unmasking request: {problem}")
    bundles = _open_bundles(state, sorted((survivors | dropped) - {site}))
    bundles[site] = state.own_shares
    self_mask_shares: list[tuple[int, bytes]] = []
    key_shares: list[tuple[int, bytes]] = []
    for peer in sorted(survivors | dropped):
        key_share, seed_share = bundles[peer]
        if peer in survivors:
            self_mask_shares.append((peer, seed_share))
        else:
            key_shares.append((peer, key_share))
    revealed_self = frozenset(peer for peer, _ in self_mask_shares)
    revealed_key = frozenset(peer for peer, _ in key_shares)
    assert not revealed_self & revealed_key, "honest-client rule violated"
    outgoing = UnmaskShares(
        round_index=config.round_index,
        sender=site,
        receiver=SERVER,
        self_mask_shares=tuple(self_mask_shares),
        key_shares=tuple(key_shares),
    )
    return ClientDone(config=config, site=site, revealed_self_mask_of=revealed_self, revealed_key_of=revealed_key), [outgoing]


def _unmask_request_problem(state: ClientUnmasking, message: UnmaskRequest, survivors: frozenset[int],
                            dropped: frozenset[int]) -> str | None:
    """Why revealing what ``message`` asks for would break the protocol's guarantees, or ``None``.

    Each problem is one an honest coordinator never causes: the site refuses (and says so
    in its audit log) rather than reveal a share.
    """
    site = state.site
    # The honest-client rule: never reveal both secrets of one peer, whatever the server asks.
    both = survivors & dropped
    if both:
        return (f"it asks for both the self-mask share and the masking-key share of site(s) {sorted(both)}, "
                "which would unmask their input")
    known = frozenset(state.received) | {site}
    if not survivors <= known or not dropped <= known - {site} or site not in survivors:
        return (f"it names sites {sorted((survivors | dropped) - known)} that sent this site no shares, or omits "
                "this site from the survivors")
    if state.signed_survivors is None:
        return None
    return _consistency_problem(state, message, survivors, dropped)


def _consistency_problem(state: ClientUnmasking, message: UnmaskRequest, survivors: frozenset[int],
                         dropped: frozenset[int]) -> str | None:
    """Why ``message`` does not carry ``threshold`` valid signatures of the survivor list this site signed, or ``None``."""
    config, site = state.config, state.site
    signed = state.signed_survivors
    assert signed is not None
    if frozenset(message.signed_survivors) != signed:
        return "it is for a survivor list other than the one this site signed"
    if survivors != signed & (frozenset(state.received) | {site}) or dropped & signed:
        return "it disagrees with the signed survivor list"
    statement = survivor_statement(config, sorted(signed), state.graph_seed)
    valid: set[int] = set()
    # The site's own signature first: it needs no verifying, only to be the one the site sent.
    for signer, signature in sorted(message.signatures, key=lambda relayed: relayed[0] != site):
        if len(valid) == config.threshold:
            break  # threshold signatures of this list are the proof; more are not needed
        peer = state.directory.get(signer)
        if signer not in signed or signer in valid:
            return f"it carries an unexpected or repeated consistency signature from site {signer}"
        if signer == site:
            if signature != state.own_signature:
                return "it carries a consistency signature of this site other than the one it sent"
        elif peer is None or peer.signing_key is None:
            return f"no signing key is known for site {signer}"
        elif not keys.verify_signature(peer.signing_key, statement, signature):
            return f"it carries an invalid consistency signature from site {signer}; the survivor lists differ"
        valid.add(signer)
    if len(valid) < config.threshold:
        return f"it carries only {len(valid)} valid consistency signatures, fewer than the threshold {config.threshold}"
    return None


def _open_bundles(state: ClientUnmasking, peers: Sequence[int]) -> dict[int, tuple[bytes, bytes]]:
    """Decrypt the (masking-key share, self-mask-seed share) bundle each of ``peers`` sent this site."""
    config, site = state.config, state.site
    bundles = {}
    for peer in peers:
        plaintext = keys.decrypt_share(state.inbound_keys[peer], state.received[peer], context=config.context,
                                       sender=peer, receiver=site)
        header, key_share, seed_share = unframe(plaintext, 3, f"share bundle from site {peer}")
        if header != struct.pack(">QQ", peer, site):
            raise ProtocolError(f"site {site}: the share bundle from site {peer} names another sender or receiver")
        bundles[peer] = (key_share, seed_share)
    return bundles


_CLIENT_TRANSITIONS = {
    Stage.ADVERTISE_KEYS: _client_advertise,
    Stage.CHOOSE_GRAPH: _client_choose_graph,
    Stage.SHARE_KEYS: _client_share_keys,
    Stage.MASKED_INPUT: _client_masked_input,
    Stage.CONSISTENCY_CHECK: _client_consistency,
    Stage.UNMASKING: _client_unmasking,
}


def client_advance(state: ClientState, messages: Sequence[Message] = ()) -> tuple[ClientState, list[Message]]:
    """Run one stage of a site: consume the server's message, emit the site's reply.

    Args:
        state: the site's current state.
        messages: the server's message for this stage (none in ADVERTISE_KEYS); an
            :class:`Abort` is accepted in any stage.

    Returns:
        The next state and the messages to send to the server.

    Raises:
        ProtocolError: a message of another stage, round, sender or receiver, or a
            replay (a request that would break the protocol's guarantees is refused
            instead: :class:`ClientAborted` with ``refused``).
    """
    transition = _CLIENT_TRANSITIONS.get(state.stage)
    if transition is None:
        if messages:
            raise ProtocolError(
                f"site {state.site} is in stage {state.stage.name} and accepts no more messages, got {describe(messages[0])}"
            )
        return state, []
    return transition(state, list(messages))  # type: ignore[operator]
