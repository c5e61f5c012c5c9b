"""The SecAgg protocol (Bonawitz et al., CCS 2017) as pure transitions over frozen state.

One secure-sum round runs five stages::

    ADVERTISE_KEYS    site -> server: two X25519 public keys (+ Ed25519 key if checking)
                      server -> site: the directory of its neighbours' keys
    SHARE_KEYS        site -> server: Shamir shares of its masking key and self-mask
                      seed, AES-GCM-encrypted to each neighbour
                      server -> site: the ciphertexts addressed to it
    MASKED_INPUT      site -> server: y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)
                      server -> site: the survivor list (or the unmasking request)
    CONSISTENCY_CHECK (optional) site -> server: Ed25519 signature of the survivor list
                      server -> site: the unmasking request with all signatures
    UNMASKING         site -> server: for each neighbour, the self-mask share if it
                      survived, the masking-key share if it dropped (never both)
                      server: reconstructs, regenerates and removes the masks -> sum

Sign convention: ``sign(u, v) = +1`` when ``u < v`` and ``-1`` when ``u > v``, so the
two ends of a pair cancel. Neighbours are every other site (SecAgg) or the
:func:`~pipeline.secagg.neighbours.neighbour_graph` (SecAgg+, ``num_neighbours=k``).

Every party's state is one frozen dataclass per stage; ``client_advance`` and
``server_advance`` take a state and the messages that arrived for its stage and
return the next state and the outgoing messages. A client's randomness is drawn from
a 32-byte seed in its initial state (``os.urandom`` by default), so transitions are
deterministic functions of their inputs. The server's ``advance`` is given every
message that arrived before the stage's deadline: sites that sent nothing have
dropped out. Messages are checked for stage, round, sender and receiver, and
duplicates are refused, so replays fail with :class:`~pipeline.errors.ProtocolError`.

Dropouts: the sum of the survivors (the sites whose masked input arrived) is
recovered whenever at least ``threshold`` sites answer each stage (and, for SecAgg+,
each affected neighbourhood keeps ``threshold`` shareholders). Otherwise the server
moves to :class:`ServerAborted`, which holds no vector and no secret, and tells the
sites to stop; :func:`server_result` then raises
:class:`~pipeline.errors.AggregationAborted`.

Security model: honest-but-curious server and up to ``threshold - 1`` colluding
sites. Without the consistency check, a *malicious* server could tell two sites
different survivor lists; ``consistency_check=True`` (each site signs the survivor
list and verifies ``threshold`` signatures before unmasking) closes that, given
authentic signing keys (from the federation's certificates in deployment).
"""

from __future__ import annotations

import enum
import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import ClassVar, Union

import numpy as np

from pipeline.errors import AggregationAborted, ConfigurationError, ProtocolError
from pipeline.secagg import chacha20, keys, kernels, masks, shamir
from pipeline.secagg.encoding import Ring
from pipeline.secagg.neighbours import complete_graph, neighbour_graph

__all__ = [
    "SERVER",
    "Stage",
    "RoundConfig",
    "PeerKeys",
    "AdvertiseKeys",
    "KeyDirectory",
    "EncryptedShares",
    "ForwardedShares",
    "MaskedInput",
    "SurvivorList",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskShares",
    "Abort",
    "Message",
    "ClientAdvertise",
    "ClientShareKeys",
    "ClientMaskedInput",
    "ClientConsistencyCheck",
    "ClientUnmasking",
    "ClientDone",
    "ClientAborted",
    "ClientState",
    "ServerAdvertise",
    "ServerShareKeys",
    "ServerMaskedInput",
    "ServerConsistencyCheck",
    "ServerUnmasking",
    "ServerDone",
    "ServerAborted",
    "ServerState",
    "client_init",
    "client_advance",
    "server_init",
    "server_advance",
    "server_result",
    "mask_sign",
]

SERVER = 0
"""The coordinator's party ID in messages; sites are 1, 2, ..."""

_SECRET_BYTES = keys.KEY_BYTES


class Stage(enum.Enum):
    """The protocol stage a party is in: the stage whose messages it expects next."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY_CHECK = "consistency_check"
    UNMASKING = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


def mask_sign(site: int, peer: int) -> int:
    """Sign with which ``site`` adds the pairwise mask shared with ``peer``: +1 iff site < peer."""
    return 1 if site < peer else -1


@dataclass(frozen=True)
class RoundConfig:
    """Public parameters of one secure-sum round, identical at every party.

    Attributes:
        context: federation, job and round every key is bound to.
        site_ids: the invited sites (distinct ints >= 1; a site's ID is also its Shamir
            evaluation point).
        threshold: shares needed to reconstruct a secret, and the least number of sites
            that must answer each stage. For SecAgg+ it applies per neighbourhood
            (``threshold <= num_neighbours + 1``).
        ring: the ring of the masked vectors.
        length: number of ring elements per vector.
        consistency_check: run the signed survivor-list stage (malicious-server setting).
        num_neighbours: ``k`` for SecAgg+; ``None`` masks with every other site.
        engine: mask PRG engine (``"openssl"``, ``"jax"``, ``None`` = default).
    """

    context: keys.KeyContext
    site_ids: tuple[int, ...]
    threshold: int
    ring: Ring
    length: int
    consistency_check: bool = False
    num_neighbours: int | None = None
    engine: str | None = None

    def __post_init__(self) -> None:
        sites = tuple(int(site) for site in self.site_ids)
        if len(set(sites)) != len(sites) or any(site < 1 for site in sites):
            raise ConfigurationError(f"site_ids must be distinct ints >= 1 (0 is the server), got {list(self.site_ids)}")
        if len(sites) < 2:
            raise ConfigurationError(f"a secure sum needs at least 2 sites, got {len(sites)}")
        object.__setattr__(self, "site_ids", tuple(sorted(sites)))
        if not isinstance(self.ring, Ring):
            raise ConfigurationError(f"ring must be Ring.R32 or Ring.R64, got {self.ring!r}")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise ConfigurationError(f"length must be a non-negative int, got {self.length!r}")
        max_holders = len(sites)
        if self.num_neighbours is not None:
            self.graph  # validates num_neighbours
            max_holders = min(len(sites), self.num_neighbours + 1)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 1 <= self.threshold <= max_holders:
            where = "sites" if self.num_neighbours is None else "num_neighbours + 1 shareholders per neighbourhood"
            raise ConfigurationError(
                f"threshold must be between 1 and {max_holders} ({where}), got {self.threshold!r}; "
                "lower the threshold or invite more sites"
            )

    @cached_property
    def graph(self) -> Mapping[int, frozenset[int]]:
        """Each site's neighbours: all other sites, or the SecAgg+ graph."""
        if self.num_neighbours is None:
            return MappingProxyType(complete_graph(self.site_ids))
        seed = hashlib.sha256(b"genofed-secagg-graph" + self.context.encode()).digest()
        return MappingProxyType(dict(neighbour_graph(self.site_ids, num_neighbours=self.num_neighbours, seed=seed)))

    @property
    def round_index(self) -> int:
        """The round every message must carry."""
        return self.context.round_index


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class PeerKeys:
    """A site's advertised public keys."""

    site: int
    encryption_key: bytes
    masking_key: bytes
    signing_key: bytes | None = None


@dataclass(frozen=True, eq=False)
class _Message:
    round_index: int
    sender: int
    receiver: int
    STAGE: ClassVar[Stage]


@dataclass(frozen=True, eq=False)
class AdvertiseKeys(_Message):
    """Site -> server: the site's public keys for this round."""

    keys: PeerKeys
    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True, eq=False)
class KeyDirectory(_Message):
    """Server -> site: the keys of the site and its neighbours that advertised (U1)."""

    peers: tuple[PeerKeys, ...]
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class EncryptedShares(_Message):
    """Site -> server: ``(receiver, ciphertext)`` for each neighbour."""

    ciphertexts: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class ForwardedShares(_Message):
    """Server -> site: ``(sender, ciphertext)`` addressed to it, from the sites in U2."""

    ciphertexts: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """Site -> server: the masked ring vector."""

    vector: np.ndarray
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class SurvivorList(_Message):
    """Server -> site: the sites whose masked input arrived (U3), to be signed."""

    survivors: tuple[int, ...]
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class ConsistencySignature(_Message):
    """Site -> server: Ed25519 signature of the survivor list."""

    signature: bytes
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class UnmaskRequest(_Message):
    """Server -> site: which neighbours survived and which dropped (+ signatures)."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()
    signed_survivors: tuple[int, ...] = ()
    STAGE: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class UnmaskShares(_Message):
    """Site -> server: self-mask shares of survivors, masking-key shares of dropped sites."""

    self_mask_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class Abort(_Message):
    """Server -> site: the round is abandoned; accepted in any stage."""

    stage: Stage
    reason: str
    STAGE: ClassVar[Stage] = Stage.ABORTED


Message = Union[
    AdvertiseKeys,
    KeyDirectory,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    SurvivorList,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskShares,
    Abort,
]

# --------------------------------------------------------------------------- client states


@dataclass(frozen=True, eq=False)
class ClientAdvertise:
    """Initial state: the site has its encoded input and its randomness, nothing sent."""

    config: RoundConfig
    site: int
    vector: np.ndarray
    randomness: bytes
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True, eq=False)
class ClientShareKeys:
    """Keys advertised; waiting for the key directory."""

    config: RoundConfig
    site: int
    vector: np.ndarray
    randomness: bytes
    encryption: keys.KeyPair
    masking: keys.KeyPair
    signing: keys.KeyPair | None
    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class ClientMaskedInput:
    """Shares sent; waiting for the shares addressed to this site."""

    config: RoundConfig
    site: int
    vector: np.ndarray
    self_mask_seed: bytes
    encryption: keys.KeyPair
    masking: keys.KeyPair
    signing: keys.KeyPair | None
    directory: Mapping[int, PeerKeys]
    own_shares: tuple[bytes, bytes]
    stage: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True)
class ClientConsistencyCheck:
    """Masked input sent; waiting for the survivor list to sign. Holds no input vector."""

    config: RoundConfig
    site: int
    encryption: keys.KeyPair
    signing: keys.KeyPair
    directory: Mapping[int, PeerKeys]
    received: Mapping[int, bytes]
    own_shares: tuple[bytes, bytes]
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True)
class ClientUnmasking:
    """Waiting for the unmasking request. ``signed_survivors`` is set when checking."""

    config: RoundConfig
    site: int
    encryption: keys.KeyPair
    directory: Mapping[int, PeerKeys]
    received: Mapping[int, bytes]
    own_shares: tuple[bytes, bytes]
    signed_survivors: frozenset[int] | None
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
    """The round was abandoned; the site keeps no secrets of it."""

    config: RoundConfig
    site: int
    at_stage: Stage
    reason: str
    stage: ClassVar[Stage] = Stage.ABORTED


ClientState = Union[
    ClientAdvertise, ClientShareKeys, ClientMaskedInput, ClientConsistencyCheck, ClientUnmasking, ClientDone, ClientAborted
]

# --------------------------------------------------------------------------- server states


@dataclass(frozen=True)
class ServerAdvertise:
    """Initial state: waiting for the sites' public keys."""

    config: RoundConfig
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True)
class ServerShareKeys:
    """Directory sent to U1; waiting for encrypted shares."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    stage: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True)
class ServerMaskedInput:
    """Shares forwarded within U2; waiting for masked inputs."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    shared: frozenset[int]
    stage: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class ServerConsistencyCheck:
    """Masked inputs of U3 summed; waiting for signatures of the survivor list."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    shared: frozenset[int]
    survivors: frozenset[int]
    masked_sum: np.ndarray
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class ServerUnmasking:
    """Unmasking requests sent to ``asked``; waiting for their shares."""

    config: RoundConfig
    directory: Mapping[int, PeerKeys]
    shared: frozenset[int]
    survivors: frozenset[int]
    asked: frozenset[int]
    masked_sum: np.ndarray
    stage: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class ServerDone:
    """The unmasked ring sum of the survivors' encoded inputs."""

    config: RoundConfig
    survivors: frozenset[int]
    total: np.ndarray
    stage: ClassVar[Stage] = Stage.DONE


@dataclass(frozen=True)
class ServerAborted:
    """The round was abandoned at ``at_stage``; no vector, no share, no secret is kept."""

    config: RoundConfig
    at_stage: Stage
    reason: str
    stage: ClassVar[Stage] = Stage.ABORTED


ServerState = Union[
    ServerAdvertise, ServerShareKeys, ServerMaskedInput, ServerConsistencyCheck, ServerUnmasking, ServerDone, ServerAborted
]

# --------------------------------------------------------------------------- helpers


def _frozen_map(items: Mapping[int, object]) -> Mapping:
    return MappingProxyType(dict(items))


def _describe(message: object) -> str:
    if isinstance(message, _Message):
        return f"{type(message).__name__} from party {message.sender} (round {message.round_index})"
    return f"object of type {type(message).__name__}"


def _check_incoming(
    messages: Sequence[object],
    *,
    stage: Stage,
    expected_type: type,
    config: RoundConfig,
    receiver: int,
    allowed_senders: frozenset[int],
    party: str,
) -> dict[int, object]:
    """Validate stage, round, sender, receiver and uniqueness; return sender -> message."""
    by_sender: dict[int, object] = {}
    for message in messages:
        if not isinstance(message, _Message):
            raise ProtocolError(f"{party} in stage {stage.name} expected {expected_type.__name__} messages, got {_describe(message)}")
        if not isinstance(message, expected_type):
            raise ProtocolError(
                f"{party} expected a stage {stage.name} message ({expected_type.__name__}), got {_describe(message)} "
                f"of stage {message.STAGE.name}; out-of-order or replayed message"
            )
        if message.round_index != config.round_index:
            raise ProtocolError(
                f"{party} in round {config.round_index} (stage {stage.name}) got {_describe(message)}; "
                "replayed or misrouted message from another round"
            )
        if message.receiver != receiver:
            raise ProtocolError(f"{party} got {_describe(message)} addressed to party {message.receiver}")
        if message.sender not in allowed_senders:
            raise ProtocolError(
                f"{party} in stage {stage.name} got {_describe(message)}, but that party is not expected to send "
                f"in this stage (expected one of {sorted(allowed_senders)})"
            )
        if message.sender in by_sender:
            raise ProtocolError(f"{party} in stage {stage.name} got a second {_describe(message)}; replayed message")
        by_sender[message.sender] = message
    return by_sender


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _unframe(data: bytes, count: int, what: str) -> list[bytes]:
    parts, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(data):
            raise ProtocolError(f"malformed {what}: truncated")
        (size,) = struct.unpack_from(">I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise ProtocolError(f"malformed {what}: truncated")
        parts.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ProtocolError(f"malformed {what}: trailing bytes")
    return parts


def _survivor_statement(config: RoundConfig, survivors: Sequence[int]) -> bytes:
    return _frame(b"genofed-secagg-survivors", config.context.encode(), keys.encode_site_list(survivors))


def _client_abort(state: ClientState, reason: str) -> ClientAborted:
    return ClientAborted(config=state.config, site=state.site, at_stage=state.stage, reason=reason)


def _client_check(state: ClientState, messages: Sequence[object], expected_type: type) -> _Message:
    """The one server message of the stage: of ``expected_type``, or an :class:`Abort`."""
    single_abort = len(messages) == 1 and isinstance(messages[0], Abort)
    checked = _check_incoming(
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
    assert isinstance(message, _Message)
    return message


# --------------------------------------------------------------------------- client


def client_init(
    config: RoundConfig, site: int, vector: np.ndarray, *, randomness: bytes | None = None
) -> ClientAdvertise:
    """A site's initial state for one round.

    Args:
        config: the round's public parameters.
        site: this site's ID (in ``config.site_ids``).
        vector: the encoded input, 1-D of the ring's dtype and ``config.length``.
        randomness: 32 bytes all the site's secrets derive from; ``None`` draws them
            from ``os.urandom`` (pass bytes only to make tests reproducible).
    """
    if site not in config.site_ids:
        raise ConfigurationError(f"site {site} is not one of the round's sites {list(config.site_ids)}")
    vector = np.asarray(vector)
    if vector.dtype != config.ring.dtype or vector.shape != (config.length,):
        raise ConfigurationError(
            f"site {site}'s encoded input must be a ({config.length},) {config.ring.dtype} vector for "
            f"{config.ring.name}, got shape {vector.shape} dtype {vector.dtype}; encode it with the job's Layout"
        )
    randomness = os.urandom(keys.KEY_BYTES) if randomness is None else randomness
    if len(randomness) != keys.KEY_BYTES:
        raise ConfigurationError(f"randomness must be {keys.KEY_BYTES} bytes, got {len(randomness)}")
    return ClientAdvertise(config=config, site=site, vector=vector, randomness=bytes(randomness))


def _random(state: ClientAdvertise | ClientShareKeys, label: str) -> keys.DeterministicRandom:
    return keys.DeterministicRandom(state.randomness, label.encode() + state.config.context.encode())


def _client_advertise(state: ClientAdvertise, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    if messages:
        raise ProtocolError(
            f"site {state.site} in stage ADVERTISE_KEYS expects no message (it speaks first), got {_describe(messages[0])}"
        )
    random = _random(state, "keys")
    encryption = keys.generate_key_pair(random(keys.KEY_BYTES))
    masking = keys.generate_key_pair(random(keys.KEY_BYTES))
    signing = keys.generate_signing_key_pair(random(keys.KEY_BYTES)) if state.config.consistency_check else None
    peer = PeerKeys(state.site, encryption.public_key, masking.public_key, signing.public_key if signing else None)
    outgoing = AdvertiseKeys(round_index=state.config.round_index, sender=state.site, receiver=SERVER, keys=peer)
    next_state = ClientShareKeys(
        config=state.config,
        site=state.site,
        vector=state.vector,
        randomness=state.randomness,
        encryption=encryption,
        masking=masking,
        signing=signing,
    )
    return next_state, [outgoing]


def _client_share_keys(state: ClientShareKeys, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, KeyDirectory)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, KeyDirectory)
    config, site = state.config, state.site
    allowed = config.graph[site] | {site}
    directory: dict[int, PeerKeys] = {}
    for peer in message.peers:
        if peer.site not in allowed or peer.site in directory:
            raise ProtocolError(
                f"site {site}: the key directory lists site {peer.site}, which is not a (unique) neighbour "
                f"of site {site}; the server sent a forged directory"
            )
        if config.consistency_check and peer.signing_key is None:
            raise ProtocolError(f"site {site}: site {peer.site} advertised no signing key but the consistency check is on")
        directory[peer.site] = peer
    own = directory.get(site)
    if own is None or own.encryption_key != state.encryption.public_key or own.masking_key != state.masking.public_key:
        raise ProtocolError(f"site {site}: the key directory does not carry this site's own advertised keys")
    public_keys = [key for peer in directory.values() for key in (peer.encryption_key, peer.masking_key)]
    if len(set(public_keys)) != len(public_keys):
        raise ProtocolError(f"site {site}: the key directory repeats a public key; refusing to share")
    holders = sorted(directory)
    if len(holders) < config.threshold:
        return _client_abort(state, f"only {len(holders)} shareholders advertised keys, fewer than the threshold {config.threshold}"), []
    random = _random(state, "shares")
    self_mask_seed = random(_SECRET_BYTES)
    key_shares = shamir.split(state.masking.private_key, threshold=config.threshold, xs=holders, random_bytes=random)
    seed_shares = shamir.split(self_mask_seed, threshold=config.threshold, xs=holders, random_bytes=random)
    ciphertexts = []
    own_shares: tuple[bytes, bytes] = (b"", b"")
    for holder, key_share, seed_share in zip(holders, key_shares, seed_shares):
        bundle = (key_share.to_bytes(), seed_share.to_bytes())
        if holder == site:
            own_shares = bundle
            continue
        plaintext = _frame(struct.pack(">QQ", site, holder), *bundle)
        shared = keys.agree(state.encryption.private_key, directory[holder].encryption_key)
        transport_key = keys.share_transport_key(shared, context=config.context, sender=site, receiver=holder)
        ciphertexts.append(
            (holder, keys.encrypt_share(transport_key, plaintext, context=config.context, sender=site, receiver=holder, nonce=random(12)))
        )
    outgoing = EncryptedShares(round_index=config.round_index, sender=site, receiver=SERVER, ciphertexts=tuple(ciphertexts))
    next_state = ClientMaskedInput(
        config=config,
        site=site,
        vector=state.vector,
        self_mask_seed=self_mask_seed,
        encryption=state.encryption,
        masking=state.masking,
        signing=state.signing,
        directory=_frozen_map(directory),
        own_shares=own_shares,
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
            raise ProtocolError(
                f"site {site}: forwarded shares claim to come from site {sender}, which is not a (unique) "
                "neighbour in this site's key directory"
            )
        received[sender] = bytes(ciphertext)
    if len(received) + 1 < config.threshold:
        return _client_abort(state, f"only {len(received) + 1} shareholders sent shares, fewer than the threshold {config.threshold}"), []
    seeds = [state.self_mask_seed]
    signs = [1]
    for peer in sorted(received):
        shared = keys.agree(state.masking.private_key, state.directory[peer].masking_key)
        seeds.append(keys.pairwise_mask_seed(shared, context=config.context, site_a=site, site_b=peer))
        signs.append(mask_sign(site, peer))
    masked = np.array(state.vector, dtype=config.ring.dtype, copy=True, order="C")
    masks.add_masks(masked, seeds, signs, engine=config.engine)
    outgoing = MaskedInput(round_index=config.round_index, sender=site, receiver=SERVER, vector=masked)
    frozen_received = _frozen_map(received)
    if config.consistency_check:
        assert state.signing is not None
        next_state: ClientState = ClientConsistencyCheck(
            config=config,
            site=site,
            encryption=state.encryption,
            signing=state.signing,
            directory=state.directory,
            received=frozen_received,
            own_shares=state.own_shares,
        )
    else:
        next_state = ClientUnmasking(
            config=config,
            site=site,
            encryption=state.encryption,
            directory=state.directory,
            received=frozen_received,
            own_shares=state.own_shares,
            signed_survivors=None,
        )
    return next_state, [outgoing]


def _client_consistency(state: ClientConsistencyCheck, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, SurvivorList)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, SurvivorList)
    config, site = state.config, state.site
    survivors = frozenset(message.survivors)
    if len(survivors) != len(message.survivors) or not survivors <= set(config.site_ids) or site not in survivors:
        raise ProtocolError(f"site {site}: the survivor list {sorted(message.survivors)} is malformed or omits this site")
    if len(survivors) < config.threshold:
        return _client_abort(state, f"only {len(survivors)} survivors, fewer than the threshold {config.threshold}"), []
    signature = keys.sign(state.signing.private_key, _survivor_statement(config, sorted(survivors)))
    outgoing = ConsistencySignature(round_index=config.round_index, sender=site, receiver=SERVER, signature=signature)
    next_state = ClientUnmasking(
        config=config,
        site=site,
        encryption=state.encryption,
        directory=state.directory,
        received=state.received,
        own_shares=state.own_shares,
        signed_survivors=survivors,
    )
    return next_state, [outgoing]


def _client_unmasking(state: ClientUnmasking, messages: Sequence[object]) -> tuple[ClientState, list[Message]]:
    message = _client_check(state, messages, UnmaskRequest)
    if isinstance(message, Abort):
        return _client_abort(state, message.reason), []
    assert isinstance(message, UnmaskRequest)
    config, site = state.config, state.site
    survivors, dropped = frozenset(message.survivors), frozenset(message.dropped)
    # The honest-client rule: never reveal both secrets of one peer, whatever the server asks.
    both = survivors & dropped
    if both:
        raise ProtocolError(
            f"site {site}: the server asked for both the self-mask share and the masking-key share of "
            f"site(s) {sorted(both)}; that would unmask their input, refusing"
        )
    known = frozenset(state.received) | {site}
    if not survivors <= known or not dropped <= known - {site} or site not in survivors:
        raise ProtocolError(
            f"site {site}: the unmasking request names sites {sorted((survivors | dropped) - known)} that sent "
            "this site no shares, or omits this site from the survivors"
        )
    if state.signed_survivors is not None:
        _verify_consistency(state, message, survivors, dropped)
    own_key_share, own_seed_share = state.own_shares
    self_mask_shares: list[tuple[int, bytes]] = []
    key_shares: list[tuple[int, bytes]] = []
    for peer in sorted(survivors | dropped):
        if peer == site:
            key_share, seed_share = own_key_share, own_seed_share
        else:
            key_share, seed_share = _open_bundle(state, peer)
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


def _verify_consistency(state: ClientUnmasking, message: UnmaskRequest, survivors: frozenset[int], dropped: frozenset[int]) -> None:
    config, site = state.config, state.site
    signed = state.signed_survivors
    assert signed is not None
    if frozenset(message.signed_survivors) != signed:
        raise ProtocolError(f"site {site}: the unmasking request is for a survivor list other than the one this site signed")
    if survivors != signed & (frozenset(state.received) | {site}) or dropped & signed:
        raise ProtocolError(f"site {site}: the unmasking request disagrees with the signed survivor list")
    statement = _survivor_statement(config, sorted(signed))
    valid = set()
    for signer, signature in message.signatures:
        peer = state.directory.get(signer)
        if signer not in signed or signer in valid:
            raise ProtocolError(f"site {site}: unexpected or repeated consistency signature from site {signer}")
        if peer is None or peer.signing_key is None:
            raise ProtocolError(f"site {site}: no signing key known for site {signer}")
        if not keys.verify_signature(peer.signing_key, statement, signature):
            raise ProtocolError(f"site {site}: invalid consistency signature from site {signer}; the survivor lists differ")
        valid.add(signer)
    if len(valid) < config.threshold:
        raise ProtocolError(
            f"site {site}: only {len(valid)} valid consistency signatures, fewer than the threshold {config.threshold}"
        )


def _open_bundle(state: ClientUnmasking, peer: int) -> tuple[bytes, bytes]:
    config, site = state.config, state.site
    shared = keys.agree(state.encryption.private_key, state.directory[peer].encryption_key)
    transport_key = keys.share_transport_key(shared, context=config.context, sender=peer, receiver=site)
    plaintext = keys.decrypt_share(transport_key, state.received[peer], context=config.context, sender=peer, receiver=site)
    header, key_share, seed_share = _unframe(plaintext, 3, f"share bundle from site {peer}")
    if header != struct.pack(">QQ", peer, site):
        raise ProtocolError(f"site {site}: the share bundle from site {peer} names another sender or receiver")
    return key_share, seed_share


_CLIENT_TRANSITIONS = {
    Stage.ADVERTISE_KEYS: _client_advertise,
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
        ProtocolError: a message of another stage, round, sender or receiver, a
            replay, or a request that would break the protocol's guarantees.
    """
    transition = _CLIENT_TRANSITIONS.get(state.stage)
    if transition is None:
        if messages:
            raise ProtocolError(
                f"site {state.site} is in stage {state.stage.name} and accepts no more messages, got {_describe(messages[0])}"
            )
        return state, []
    return transition(state, list(messages))  # type: ignore[operator]


# --------------------------------------------------------------------------- server


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
    return _check_incoming(
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
        directory[site] = message.keys
    advertised = frozenset(directory)
    if len(advertised) < config.threshold:
        return _server_abort(
            state, f"only {len(advertised)} sites advertised keys, fewer than the threshold {config.threshold}", advertised
        )
    outgoing: list[Message] = []
    for site in sorted(advertised):
        peers = tuple(directory[peer] for peer in sorted((config.graph[site] & advertised) | {site}))
        outgoing.append(KeyDirectory(round_index=config.round_index, sender=SERVER, receiver=site, peers=peers))
    return ServerShareKeys(config=config, directory=_frozen_map(directory)), outgoing


def _server_share_keys(state: ServerShareKeys, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    advertised = frozenset(state.directory)
    received = _server_check(state, messages, EncryptedShares, advertised)
    inbox: dict[int, list[tuple[int, bytes]]] = {}
    for sender, message in sorted(received.items()):
        assert isinstance(message, EncryptedShares)
        receivers = [receiver for receiver, _ in message.ciphertexts]
        expected = config.graph[sender] & advertised
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
    return ServerMaskedInput(config=config, directory=state.directory, shared=shared), outgoing


def _unrecoverable(config: RoundConfig, shared: frozenset[int], survivors: frozenset[int], responders: frozenset[int]) -> str | None:
    """Why the sum cannot be unmasked if only ``responders`` answer, or ``None`` if it can."""
    graph, threshold = config.graph, config.threshold
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
    if chacha20.resolve_engine(config.engine) != "openssl":
        return kernels.ring_sum(np.stack(vectors))
    total = np.array(vectors[0], copy=True)
    for vector in vectors[1:]:
        np.add(total, vector, out=total)
    return total


def _unmask_requests(
    config: RoundConfig,
    shared: frozenset[int],
    survivors: frozenset[int],
    asked: frozenset[int],
    signatures: Mapping[int, bytes] | None,
) -> list[Message]:
    requests: list[Message] = []
    for site in sorted(asked):
        neighbours = config.graph[site]
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
    reason = _unrecoverable(config, state.shared, survivors, survivors)
    if reason is not None:
        return _server_abort(state, reason, survivors)
    masked_sum = _sum_masked([received[site].vector for site in sorted(survivors)], config)  # type: ignore[attr-defined]
    if config.consistency_check:
        outgoing: list[Message] = [
            SurvivorList(round_index=config.round_index, sender=SERVER, receiver=site, survivors=tuple(sorted(survivors)))
            for site in sorted(survivors)
        ]
        next_state: ServerState = ServerConsistencyCheck(
            config=config, directory=state.directory, shared=state.shared, survivors=survivors, masked_sum=masked_sum
        )
        return next_state, outgoing
    next_state = ServerUnmasking(
        config=config,
        directory=state.directory,
        shared=state.shared,
        survivors=survivors,
        asked=survivors,
        masked_sum=masked_sum,
    )
    return next_state, _unmask_requests(config, state.shared, survivors, survivors, None)


def _server_consistency(state: ServerConsistencyCheck, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config = state.config
    received = _server_check(state, messages, ConsistencySignature, state.survivors)
    statement = _survivor_statement(config, sorted(state.survivors))
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
    reason = _unrecoverable(config, state.shared, state.survivors, signers)
    if reason is not None:
        return _server_abort(state, reason, signers)
    next_state = ServerUnmasking(
        config=config,
        directory=state.directory,
        shared=state.shared,
        survivors=state.survivors,
        asked=signers,
        masked_sum=state.masked_sum,
    )
    return next_state, _unmask_requests(config, state.shared, state.survivors, signers, signatures)


def _server_unmasking(state: ServerUnmasking, messages: Sequence[object]) -> tuple[ServerState, list[Message]]:
    config, graph = state.config, state.config.graph
    received = _server_check(state, messages, UnmaskShares, state.asked)
    dropped = state.shared - state.survivors
    seed_shares: dict[int, list[shamir.Share]] = {}
    key_shares: dict[int, list[shamir.Share]] = {}
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
            for owner, data in pairs:
                share = shamir.Share.from_bytes(data)
                if share.x != sender:
                    raise ProtocolError(f"server: site {sender} sent a share with evaluation point {share.x}, expected {sender}")
                store.setdefault(owner, []).append(share)
    responders = frozenset(received)
    reason = _unrecoverable(config, state.shared, state.survivors, responders)
    if reason is not None:
        return _server_abort(state, reason, frozenset())
    self_mask_seeds = [
        shamir.combine(seed_shares[site], threshold=config.threshold, secret_bytes=_SECRET_BYTES)
        for site in sorted(state.survivors)
    ]
    pair_seeds: list[bytes] = []
    pair_signs: list[int] = []
    for site in sorted(dropped):
        partners = graph[site] & state.survivors
        if not partners:
            continue
        private_key = shamir.combine(key_shares[site], threshold=config.threshold, secret_bytes=_SECRET_BYTES)
        if keys.public_key_of(private_key) != state.directory[site].masking_key:
            raise ProtocolError(
                f"server: the masking key reconstructed for dropped site {site} does not match its advertised "
                "public key; a site sent corrupted shares"
            )
        for partner in sorted(partners):
            shared_secret = keys.agree(private_key, state.directory[partner].masking_key)
            pair_seeds.append(keys.pairwise_mask_seed(shared_secret, context=config.context, site_a=partner, site_b=site))
            pair_signs.append(mask_sign(partner, site))
    total = kernels.unmask(state.masked_sum, self_mask_seeds, pair_seeds, pair_signs, config.ring, engine=config.engine)
    return ServerDone(config=config, survivors=state.survivors, total=total), []


_SERVER_TRANSITIONS = {
    Stage.ADVERTISE_KEYS: _server_advertise,
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
            raise ProtocolError(f"server is in stage {state.stage.name} and accepts no more messages, got {_describe(messages[0])}")
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
