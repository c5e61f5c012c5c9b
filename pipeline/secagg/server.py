"""The coordinator's side of a SecAgg round: pure transitions over frozen per-stage state.

The coordinator holds one frozen dataclass per stage (:class:`ServerAdvertise` ...
:class:`ServerAborted`). :func:`server_advance` is given every message that arrived
before the stage's deadline: sites that sent nothing have dropped out. It returns the
next state and the messages to deliver; what the stages and messages are is in
:mod:`pipeline.secagg.messages`. :func:`server_result` reads the sum off the final state.

Dropouts: the sum of the survivors (the sites whose masked input arrived) is
recovered whenever at least ``threshold`` sites answer each stage (and, for SecAgg+,
each affected neighbourhood keeps ``threshold`` shareholders and the survivors stay
connected in the graph). With SecAgg+ every advertised site must also reveal its graph
randomness: a graph drawn from whoever answered would let the coordinator choose it. Otherwise the server
moves to :class:`ServerAborted`, which holds no vector and no secret, and tells the
sites to stop; :func:`server_result` then raises
:class:`~pipeline.errors.AggregationAborted`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from pipeline import large_arrays
from pipeline.errors import AggregationAborted, ProtocolError
from pipeline.secagg import keys, masks, shamir
from pipeline.secagg.messages import (
    SECRET_BYTES,
    SERVER,
    Abort,
    AdvertiseKeys,
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
    seed_commitment,
    share_commitment,
    check_incoming,
    describe,
    frozen_map,
    graph_commitment,
    graph_seed,
    mask_sign,
    round_graph,
    survivor_statement,
)
from pipeline.secagg.neighbours import is_connected

__all__ = [
    "ServerAdvertise",
    "ServerChooseGraph",
    "ServerShareKeys",
    "ServerMaskedInput",
    "ServerConsistencyCheck",
    "ServerUnmasking",
    "ServerDone",
    "ServerAborted",
    "ServerState",
    "server_init",
    "server_advance",
    "server_result",
]

# --------------------------------------------------------------------------- server states


@dataclass(frozen=True)
class ServerAdvertise:
    """Initial state: waiting for the sites' public keys."""

    config: RoundConfig
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True)
class ServerChooseGraph:
    """SecAgg+: directory sent to U1; waiting for every advertised site's graph randomness."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    stage: ClassVar[Stage] = Stage.CHOOSE_GRAPH


@dataclass(frozen=True)
class _GraphFixed:
    """What the server holds once the graph is fixed: every advertisement, the graph and its seed
    (:func:`~pipeline.secagg.messages.graph_seed`)."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    graph: Mapping[int, frozenset[int]]
    graph_seed: bytes


@dataclass(frozen=True)
class ServerShareKeys(_GraphFixed):
    """The graph is fixed; waiting for encrypted shares."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True)
class ServerMaskedInput(_GraphFixed):
    """Shares forwarded within U2; waiting for masked inputs."""

    shared: frozenset[int]
    stage: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class ServerConsistencyCheck(_GraphFixed):
    """Masked inputs of U3 summed; waiting for signatures of the survivor list."""

    shared: frozenset[int]
    survivors: frozenset[int]
    masked_sum: np.ndarray
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class ServerUnmasking(_GraphFixed):
    """Unmasking requests sent to ``asked``; waiting for their shares."""

    shared: frozenset[int]
    survivors: frozenset[int]
    asked: frozenset[int]
    masked_sum: np.ndarray
    stage: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class ServerDone:
    """The unmasked ring sum of the survivors' encoded inputs.

    ``discarded`` names the shares left out of the reconstruction because they did not
    match the commitment their dealer signed: ``(holder who returned it, dealer, kind)``.
    """

    config: RoundConfig
    survivors: frozenset[int]
    total: np.ndarray
    discarded: tuple[tuple[int, int, str], ...] = ()
    stage: ClassVar[Stage] = Stage.DONE


@dataclass(frozen=True)
class ServerAborted:
    """The round was abandoned at ``at_stage``; no vector, no share, no secret is kept."""

    config: RoundConfig
    at_stage: Stage
    reason: str
    stage: ClassVar[Stage] = Stage.ABORTED


ServerState = Union[
    ServerAdvertise, ServerChooseGraph, ServerShareKeys, ServerMaskedInput, ServerConsistencyCheck, ServerUnmasking, ServerDone, ServerAborted
]

# --------------------------------------------------------------------------- transitions


def server_init(config: RoundConfig) -> ServerAdvertise:
    """The coordinator's initial state for one round."""
    return ServerAdvertise(config=config)


def _server_abort(state: ServerState, reason: str, notify: frozenset[int]) -> tuple[ServerAborted, list[Message]]:
    config = state.config
    aborted = ServerAborted(config=config, at_stage=state.stage, reason=reason)
    notices: list[Message] = [
        Abort(round_index=config.round_index, sender=SERVER, receiver=site, stage=state.stage, reason=reason)
        for site in sorted(notify)
    ]
    return aborted, notices


def _server_check(state: ServerState, messages: Sequence[object], expected_type: type, allowed: frozenset[int]) -> dict[int, object]:
    return check_incoming(
        messages,
        stage=state.stage,
        expected_type=expected_type,
        config=state.config,
        receiver=SERVER,
        allowed_senders=allowed,
        party="server",
    )


def _server_advertise(state: ServerAdvertise, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    received = _server_check(state, messages, AdvertiseKeys, frozenset(config.site_ids))
    directory: dict[int, PeerKeys] = {}
    for site, message in received.items():
        assert isinstance(message, AdvertiseKeys)
        if message.keys.site != site:
            raise ProtocolError(f"server: site {site} advertised keys labelled for site {message.keys.site}")
        if config.consistency_check and message.keys.signing_key is None:
            raise ProtocolError(f"server: site {site} advertised no signing key but the consistency check is on")
        if config.sparse and message.keys.graph_commitment is None:
            raise ProtocolError(f"server: site {site} committed to no graph randomness in a SecAgg+ round")
        problem = advertisement_problem(config, message.keys)
        if problem is not None:
            raise ProtocolError(f"server: refused the advertisement of site {site}: {problem}")
        directory[site] = message.keys
    advertised = frozenset(directory)
    if len(advertised) < config.threshold:
        return _server_abort(
            state, f"only {len(advertised)} sites advertised keys, fewer than the threshold {config.threshold}", advertised
        )
    peers = tuple(directory[site] for site in sorted(advertised))
    outgoing: list[Message] = [
        KeyDirectory(round_index=config.round_index, sender=SERVER, receiver=site, peers=peers) for site in sorted(advertised)
    ]
    if config.sparse:
        return ServerChooseGraph(config=config, directory=frozen_map(directory)), outgoing
    seed = graph_seed(config, directory, {})
    return ServerShareKeys(config=config, directory=frozen_map(directory), graph=round_graph(config, sorted(advertised), seed),
                           graph_seed=seed), outgoing


def _server_choose_graph(state: ServerChooseGraph, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    advertised = frozenset(state.directory)
    received = _server_check(state, messages, GraphReveal, advertised)
    reveals: dict[int, bytes] = {}
    for site, message in received.items():
        assert isinstance(message, GraphReveal)
        if graph_commitment(config, site, message.randomness) != state.directory[site].graph_commitment:
            raise ProtocolError(f"server: site {site}'s graph randomness does not match the commitment it signed")
        reveals[site] = bytes(message.randomness)
    missing = sorted(advertised - frozenset(reveals))
    if missing:
        # A graph drawn from the sites that happened to answer would be the coordinator's choice.
        return _server_abort(state, f"sites {missing} did not reveal their graph randomness; the neighbour graph is "
                             "drawn from every advertised site's or not at all", frozenset(reveals))
    seed = graph_seed(config, state.directory, reveals)
    pairs = tuple(sorted(reveals.items()))
    outgoing: list[Message] = [
        GraphRandomness(round_index=config.round_index, sender=SERVER, receiver=site, reveals=pairs) for site in sorted(advertised)
    ]
    return ServerShareKeys(config=config, directory=state.directory, graph=round_graph(config, sorted(advertised), seed),
                           graph_seed=seed), outgoing


def _server_share_keys(state: ServerShareKeys, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    advertised = frozenset(state.directory)
    received = _server_check(state, messages, EncryptedShares, advertised)
    inbox: dict[int, list[tuple[int, bytes]]] = {}
    for sender, message in sorted(received.items()):
        assert isinstance(message, EncryptedShares)
        receivers = [receiver for receiver, _ in message.ciphertexts]
        expected = state.graph[sender]
        if len(set(receivers)) != len(receivers) or set(receivers) != expected:
            raise ProtocolError(
                f"server: site {sender} sent shares to sites {sorted(receivers)}, expected exactly one to each of "
                f"its advertised neighbours {sorted(expected)}"
            )
        for receiver, ciphertext in message.ciphertexts:
            inbox.setdefault(receiver, []).append((sender, bytes(ciphertext)))
    shared = frozenset(received)
    if len(shared) < config.threshold:
        return _server_abort(state, f"only {len(shared)} sites sent their shares, fewer than the threshold {config.threshold}", shared)
    outgoing: list[Message] = [
        ForwardedShares(
            round_index=config.round_index,
            sender=SERVER,
            receiver=site,
            ciphertexts=tuple((sender, ciphertext) for sender, ciphertext in inbox.get(site, []) if sender in shared),
        )
        for site in sorted(shared)
    ]
    return ServerMaskedInput(config=config, directory=state.directory, graph=state.graph, graph_seed=state.graph_seed,
                             shared=shared), outgoing


def _unrecoverable(config: RoundConfig, graph: Mapping[int, frozenset[int]], shared: frozenset[int],
                   survivors: frozenset[int], responders: frozenset[int]) -> str | None:
    """Why the sum cannot be unmasked if only ``responders`` answer, or ``None`` if it can."""
    threshold = config.threshold
    for site in sorted(survivors):
        holders = len((graph[site] | {site}) & responders)
        if holders < threshold:
            return (
                f"only {holders} holders of site {site}'s self-mask shares remain, fewer than the threshold {threshold}"
            )
    for site in sorted(shared - survivors):
        if graph[site] & survivors:
            holders = len(graph[site] & responders)
            if holders < threshold:
                return (
                    f"only {holders} holders of dropped site {site}'s masking-key shares remain, fewer than the "
                    f"threshold {threshold}"
                )
    return None


def _sum_masked(vectors: Sequence[np.ndarray], config: RoundConfig) -> np.ndarray:
    """Ring sum of the masked inputs.

    On the CPU engine a numpy in-place accumulation (wrap-around is the ring's
    arithmetic, one pass over each vector, no (n, d) stack); on the JAX engine the
    vectorized :func:`kernels.ring_sum` over the stacked vectors.
    """
    if masks.mask_engine(config.prg, config.engine) != "openssl":
        # The JAX engine: imported when it is chosen.
        from pipeline.secagg import kernels

        return kernels.ring_sum(np.stack(vectors))
    total = large_arrays.empty(vectors[0].size, vectors[0].dtype)
    np.copyto(total, vectors[0])
    for vector in vectors[1:]:
        np.add(total, vector, out=total)
    return total


def _unmask_requests(
    config: RoundConfig,
    graph: Mapping[int, frozenset[int]],
    shared: frozenset[int],
    survivors: frozenset[int],
    asked: frozenset[int],
    signatures: Mapping[int, bytes] | None,
) -> list[Message]:
    requests: list[Message] = []
    for site in sorted(asked):
        neighbours = graph[site]
        signed: tuple[tuple[int, bytes], ...] = ()
        if signatures is not None:
            signed = tuple((peer, signatures[peer]) for peer in sorted((neighbours | {site}) & frozenset(signatures)))
        requests.append(
            UnmaskRequest(
                round_index=config.round_index,
                sender=SERVER,
                receiver=site,
                survivors=tuple(sorted((neighbours & survivors) | {site})),
                dropped=tuple(sorted(neighbours & (shared - survivors))),
                signatures=signed,
                signed_survivors=tuple(sorted(survivors)) if signatures is not None else (),
            )
        )
    return requests


def _server_masked_input(state: ServerMaskedInput, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    received = _server_check(state, messages, MaskedInput, state.shared)
    for sender, message in received.items():
        assert isinstance(message, MaskedInput)
        vector = message.vector
        if not isinstance(vector, np.ndarray) or vector.dtype != config.ring.dtype or vector.shape != (config.length,):
            raise ProtocolError(
                f"server: site {sender}'s masked input must be a ({config.length},) {config.ring.dtype} vector, got "
                f"{getattr(vector, 'shape', None)} {getattr(vector, 'dtype', type(vector).__name__)}"
            )
    survivors = frozenset(received)
    if len(survivors) < config.threshold:
        return _server_abort(state, f"only {len(survivors)} masked inputs arrived, fewer than the threshold {config.threshold}", survivors)
    reason = _unrecoverable(config, state.graph, state.shared, survivors, survivors)
    if reason is None and not is_connected(state.graph, survivors):
        # Each connected part's masks cancel on their own: unmasking would reveal each part's sum.
        reason = f"the survivors {sorted(survivors)} are not connected in the neighbour graph"
    if reason is not None:
        return _server_abort(state, reason, survivors)
    masked_sum = _sum_masked([received[site].vector for site in sorted(survivors)], config)  # type: ignore[attr-defined]
    if config.consistency_check:
        outgoing: list[Message] = [
            SurvivorList(round_index=config.round_index, sender=SERVER, receiver=site, survivors=tuple(sorted(survivors)))
            for site in sorted(survivors)
        ]
        next_state: ServerState = ServerConsistencyCheck(
            config=config, directory=state.directory, graph=state.graph, graph_seed=state.graph_seed, shared=state.shared,
            survivors=survivors, masked_sum=masked_sum,
        )
        return next_state, outgoing
    next_state = ServerUnmasking(
        config=config,
        directory=state.directory,
        graph=state.graph,
        graph_seed=state.graph_seed,
        shared=state.shared,
        survivors=survivors,
        asked=survivors,
        masked_sum=masked_sum,
    )
    return next_state, _unmask_requests(config, state.graph, state.shared, survivors, survivors, None)


def _server_consistency(state: ServerConsistencyCheck, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    received = _server_check(state, messages, ConsistencySignature, state.survivors)
    statement = survivor_statement(config, sorted(state.survivors), state.graph_seed)
    signatures: dict[int, bytes] = {}
    for sender, message in received.items():
        assert isinstance(message, ConsistencySignature)
        signing_key = state.directory[sender].signing_key
        if signing_key is None or not keys.verify_signature(signing_key, statement, message.signature):
            raise ProtocolError(f"server: site {sender}'s consistency signature does not verify for the survivor list")
        signatures[sender] = message.signature
    signers = frozenset(signatures)
    if len(signers) < config.threshold:
        return _server_abort(state, f"only {len(signers)} sites signed the survivor list, fewer than the threshold {config.threshold}", signers)
    reason = _unrecoverable(config, state.graph, state.shared, state.survivors, signers)
    if reason is not None:
        return _server_abort(state, reason, signers)
    next_state = ServerUnmasking(
        config=config,
        directory=state.directory,
        graph=state.graph,
        graph_seed=state.graph_seed,
        shared=state.shared,
        survivors=state.survivors,
        asked=signers,
        masked_sum=state.masked_sum,
    )
    return next_state, _unmask_requests(config, state.graph, state.shared, state.survivors, signers, signatures)


def _server_unmasking(state: ServerUnmasking, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config, graph = state.config, state.graph
    received = _server_check(state, messages, UnmaskShares, state.asked)
    dropped = state.shared - state.survivors
    seed_shares: dict[int, list[shamir.Share]] = {}
    key_shares: dict[int, list[shamir.Share]] = {}
    discarded: list[tuple[int, int, str]] = []
    for sender, message in sorted(received.items()):
        assert isinstance(message, UnmaskShares)
        want_seeds = (graph[sender] & state.survivors) | {sender}
        want_keys = graph[sender] & dropped
        for pairs, want, store, what in (
            (message.self_mask_shares, want_seeds, seed_shares, "self-mask"),
            (message.key_shares, want_keys, key_shares, "masking-key"),
        ):
            owners = [owner for owner, _ in pairs]
            if len(set(owners)) != len(owners) or set(owners) != want:
                raise ProtocolError(
                    f"server: site {sender} sent {what} shares of sites {sorted(owners)}, expected those of {sorted(want)}"
                )
            kind = "seed" if what == "self-mask" else "key"
            for owner, data in pairs:
                share = shamir.Share.from_bytes(data)
                if share.x != sender:
                    raise ProtocolError(f"server: site {sender} sent a share with evaluation point {share.x}, expected {sender}")
                if share_commitment(config, owner, sender, kind, bytes(data)) != state.directory[owner].commitment(sender, kind):
                    discarded.append((sender, owner, kind))  # altered by the holder: left out, and named
                    continue
                store.setdefault(owner, []).append(share)
    responders = frozenset(received)
    reason = _unrecoverable(config, graph, state.shared, state.survivors, responders)
    if reason is None:
        reason = _too_few_valid(config, graph, state.survivors, dropped, seed_shares, key_shares, discarded)
    if reason is not None:
        return _server_abort(state, reason, frozenset())
    self_mask_seeds = []
    for site in sorted(state.survivors):
        try:
            seed = _combine(seed_shares[site], config, what=f"site {site}'s self-mask seed")
        except ProtocolError as error:
            return _server_abort(state, str(error), frozenset())
        if seed_commitment(config, site, seed) != state.directory[site].seed_commitment:
            return _server_abort(
                state, f"site {site}'s self-mask seed reconstructed from shares that match the commitments it signed is "
                f"not the seed it committed to: the dealer shared it inconsistently", frozenset())
        self_mask_seeds.append(seed)
    pair_seeds: list[bytes] = []
    pair_signs: list[int] = []
    for site in sorted(dropped):
        partners = graph[site] & state.survivors
        if not partners:
            continue
        try:
            private_key = _combine(key_shares[site], config, what=f"dropped site {site}'s masking key")
        except ProtocolError as error:
            return _server_abort(state, str(error), frozenset())
        if keys.public_key_of(private_key) != state.directory[site].masking_key:
            return _server_abort(
                state, f"the masking key reconstructed for dropped site {site} does not match the public key it signed: "
                f"site {site} dealt shares of another key", frozenset())
        ordered = sorted(partners)
        secrets = keys.agree_many(private_key, [state.directory[partner].masking_key for partner in ordered])
        for partner, shared_secret in zip(ordered, secrets):
            pair_seeds.append(keys.pairwise_mask_seed(shared_secret, context=config.context, site_a=partner, site_b=site))
            pair_signs.append(mask_sign(partner, site))
    total = masks.unmask(state.masked_sum, self_mask_seeds, pair_seeds, pair_signs, config.ring, prg=config.prg,
                           engine=config.engine)
    return ServerDone(config=config, survivors=state.survivors, total=total, discarded=tuple(discarded)), []


def _too_few_valid(config: RoundConfig, graph: Mapping[int, frozenset[int]], survivors: frozenset[int], dropped: frozenset[int],
                   seed_shares: Mapping[int, list[shamir.Share]], key_shares: Mapping[int, list[shamir.Share]],
                   discarded: Sequence[tuple[int, int, str]]) -> str | None:
    """Why too few shares that match their commitments remain to unmask, naming the holders that altered theirs."""
    needed = [(site, seed_shares, "self-mask seed") for site in sorted(survivors)]
    needed += [(site, key_shares, "masking key") for site in sorted(dropped) if graph[site] & survivors]
    for site, shares, what in needed:
        if len(shares.get(site, [])) < config.threshold:
            altered = sorted({holder for holder, dealer, _ in discarded if dealer == site})
            return (
                f"only {len(shares.get(site, []))} shares of site {site}'s {what} match the commitments it signed, fewer "
                f"than the threshold {config.threshold}; sites {altered} returned altered shares"
            )
    return None


def _combine(shares: Sequence[shamir.Share], config: RoundConfig, *, what: str) -> bytes:
    """A secret from shares that all match their dealer's commitments; a failure is the dealer's."""
    try:
        return shamir.combine(shares, threshold=config.threshold, secret_bytes=SECRET_BYTES)
    except ProtocolError as error:
        raise ProtocolError(
            f"{what} cannot be reconstructed from shares that match the commitments its dealer signed ({error}): "
            "the dealer shared it inconsistently"
        ) from None


_SERVER_TRANSITIONS = {
    Stage.ADVERTISE_KEYS: _server_advertise,
    Stage.CHOOSE_GRAPH: _server_choose_graph,
    Stage.SHARE_KEYS: _server_share_keys,
    Stage.MASKED_INPUT: _server_masked_input,
    Stage.CONSISTENCY_CHECK: _server_consistency,
    Stage.UNMASKING: _server_unmasking,
}


def server_advance(state: ServerState, messages: Sequence[Message]) -> tuple[ServerState, list[Message]]:
    """Close the server's current stage with every message that arrived for it.

    Sites that sent nothing are treated as dropped from this stage on. Too few
    answers move the server to :class:`ServerAborted` (holding nothing) and emit
    :class:`Abort` to the sites still waiting.

    Args:
        state: the server's current state.
        messages: all messages received for this stage before its deadline.

    Returns:
        The next state and the messages to deliver to the sites.

    Raises:
        ProtocolError: a message of another stage, round, sender or receiver, a
            duplicate (replay), or malformed content. The state is left unchanged
            (it is immutable), so the caller may drop the offending message and retry.
    """
    transition = _SERVER_TRANSITIONS.get(state.stage)
    if transition is None:
        if messages:
            raise ProtocolError(f"server is in stage {state.stage.name} and accepts no more messages, got {describe(messages[0])}")
        return state, []
    return transition(state, list(messages))  # type: ignore[operator]


def server_result(state: ServerState) -> tuple[np.ndarray, frozenset[int]]:
    """The unmasked ring sum and the sites it includes.

    Raises:
        AggregationAborted: the round was abandoned (too few sites answered).
        ProtocolError: the round has not finished.
    """
    if isinstance(state, ServerDone):
        return state.total, state.survivors
    if isinstance(state, ServerAborted):
        raise AggregationAborted(
            f"secure sum of round {state.config.round_index} (job {state.config.context.job_id!r}) aborted in stage "
            f"{state.at_stage.name}: {state.reason}; nothing was revealed"
        )
    raise ProtocolError(f"the secure sum has not finished: the server is in stage {state.stage.name}")
