"""What the two parties of a SecAgg round say to each other (Bonawitz et al., CCS 2017).

The vocabulary a site (:mod:`pipeline.secagg.client`) and the coordinator
(:mod:`pipeline.secagg.server`) share: the round's public parameters
(:class:`RoundConfig`), the stages, the messages, and the checks both apply to what they
receive. It is a module of its own so that code that only carries, stores or inspects
messages (the wire format, :mod:`pipeline.federation.secagg_wire`) need not load either
party's transitions, and it imports no JAX.

One secure-sum round runs five stages (six with SecAgg+)::

    ADVERTISE_KEYS    site -> server: two X25519 public keys (+ P-256 signing key if checking),
                      share commitments, and for SecAgg+ a commitment to fresh randomness
                      server -> site: the directory of every advertised site's keys
    CHOOSE_GRAPH      (SecAgg+ only) site -> server: the randomness it committed to
                      server -> site: every site's randomness; each site derives the
                      neighbour graph from it and all advertisements (:func:`graph_seed`)
    SHARE_KEYS        site -> server: Shamir shares of its masking key and self-mask
                      seed, AES-GCM-encrypted to each neighbour
                      server -> site: the ciphertexts addressed to it
    MASKED_INPUT      site -> server: y_u = x_u + PRG(b_u) + sum_v sign(u, v) PRG(s_uv)
                      server -> site: the survivor list (or the unmasking request)
    CONSISTENCY_CHECK (optional) site -> server: ECDSA P-256 signature of the survivor list
                      server -> site: the unmasking request with all signatures
    UNMASKING         site -> server: for each neighbour, the self-mask share if it
                      survived, the masking-key share if it dropped (never both)
                      server: reconstructs, regenerates and removes the masks -> sum

Sign convention: ``sign(u, v) = +1`` when ``u < v`` and ``-1`` when ``u > v``, so the
two ends of a pair cancel (:func:`mask_sign`). Neighbours are every other advertised
site (SecAgg) or the :func:`~pipeline.secagg.neighbours.neighbour_graph` (SecAgg+,
``num_neighbours=k``) over the advertised sites, seeded only once every key is fixed
(:func:`round_graph`). Every site checks that the survivors are connected in it before
it reveals a share, and signs the graph's seed with the survivor list.

Every party's state is one frozen dataclass per stage; ``client_advance`` and
``server_advance`` take a state and the messages that arrived for its stage and
return the next state and the outgoing messages. Messages are checked for stage,
round, sender and receiver, and duplicates are refused (:func:`check_incoming`), so
replays fail with :class:`~pipeline.errors.ProtocolError`.

Security model: up to ``threshold - 1`` colluding sites, and a server that may
deviate. Without the consistency check, a *malicious* server could tell two sites
different survivor lists; ``consistency_check=True`` (each site signs the survivor
list and verifies ``threshold`` signatures before unmasking) closes that. With
``RoundConfig.identities`` each advertisement (round keys, share commitments, seed
commitment) is signed by the site's certificate key and checked by every peer, so the
server cannot swap or invent keys (:func:`advertisement_problem`). Every advertisement
commits to each Shamir share its site deals (:func:`share_commitment`) and to its
self-mask seed (:func:`seed_commitment`): the server discards a returned share that
does not match and names its holder, and names a dealer whose shares do not rebuild
what it committed to.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import ClassVar, Union

import numpy as np

from pipeline.encoding import Ring
from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.secagg import keys
from pipeline.secagg.prg import DEFAULT_PRG, check_prg
from pipeline.secagg.neighbours import check_num_neighbours, complete_graph, neighbour_graph

__all__ = [
    "SERVER",
    "SECRET_BYTES",
    "Stage",
    "mask_sign",
    "RoundConfig",
    "PeerKeys",
    "BaseMessage",
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
    "GraphReveal",
    "GraphRandomness",
    "Message",
    "check_incoming",
    "describe",
    "frame",
    "unframe",
    "survivor_statement",
    "round_stages",
    "graph_commitment",
    "graph_seed",
    "round_graph",
    "advertisement_statement",
    "share_commitment",
    "seed_commitment",
    "SHARE_KINDS",
    "advertisement_problem",
    "frozen_map",
]

SERVER = 0
"""The coordinator's party ID in messages; sites are 1, 2, ..."""

SECRET_BYTES = keys.KEY_BYTES
"""Length of each site's two shared secrets (masking private key, self-mask seed)."""


class Stage(enum.Enum):
    """The protocol stage a party is in: the stage whose messages it expects next."""

    ADVERTISE_KEYS = "advertise_keys"
    CHOOSE_GRAPH = "choose_graph"
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
            that must answer each stage. For SecAgg+ it applies per neighbourhood, and
            ``threshold <= num_neighbours`` so that one dropout cannot halt a round.
        ring: the ring of the masked vectors.
        length: number of ring elements per vector.
        consistency_check: run the signed survivor-list stage (malicious-server setting).
        num_neighbours: ``k`` for SecAgg+; ``None`` masks with every other site.
        prg: the mask PRG (:data:`pipeline.secagg.prg.PRGS`); every party must use the same.
        engine: this party's mask engine (``"openssl"``, ``"jax"``, ``None`` = the PRG's default); local, not agreed.
        identities: each site's certificate public key (DER SubjectPublicKeyInfo), from
            the party's own copy of the federation roster, never from the wire. When
            set, every key advertisement must carry its site's certificate signature
            (:func:`advertisement_statement`) and is refused otherwise.
    """

    context: keys.KeyContext
    site_ids: tuple[int, ...]
    threshold: int
    ring: Ring
    length: int
    consistency_check: bool = False
    num_neighbours: int | None = None
    prg: str = DEFAULT_PRG
    engine: str | None = None
    identities: tuple[tuple[int, bytes], ...] | None = None

    def __post_init__(self) -> None:
        sites = tuple(int(site) for site in self.site_ids)
        if len(set(sites)) != len(sites) or any(site < 1 for site in sites):
            raise ConfigurationError(f"site_ids must be distinct ints >= 1 (0 is the server), got {list(self.site_ids)}")
        if len(sites) < 2:
            raise ConfigurationError(f"a secure sum needs at least 2 sites, got {len(sites)}")
        object.__setattr__(self, "site_ids", tuple(sorted(sites)))
        if not isinstance(self.ring, Ring):
            raise ConfigurationError(f"ring must be Ring.R32 or Ring.R64, got {self.ring!r}")
        check_prg(self.prg)
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise ConfigurationError(f"length must be a non-negative int, got {self.length!r}")
        if self.identities is not None:
            identities = tuple(sorted((int(site), bytes(key)) for site, key in self.identities))
            if [site for site, _ in identities] != sorted(sites):
                raise ConfigurationError(
                    f"identities must name exactly the round's sites {sorted(sites)}, got {[site for site, _ in identities]}"
                )
            object.__setattr__(self, "identities", identities)
        max_threshold = len(sites)
        if self.num_neighbours is not None:
            check_num_neighbours(self.num_neighbours)
            max_threshold = min(len(sites) - 1, self.num_neighbours)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or not 1 <= self.threshold <= max_threshold:
            where = "sites" if self.num_neighbours is None else "num_neighbours, so that one dropout cannot halt the round"
            raise ConfigurationError(
                f"threshold must be between 1 and {max_threshold} ({where}), got {self.threshold!r}; "
                "lower the threshold or invite more sites"
            )

    @property
    def sparse(self) -> bool:
        """SecAgg+: a neighbour graph of degree ``num_neighbours``, chosen in the CHOOSE_GRAPH stage."""
        return self.num_neighbours is not None

    @property
    def round_index(self) -> int:
        """The round every message must carry."""
        return self.context.round_index

    @cached_property
    def _identity_map(self) -> Mapping[int, bytes]:
        return MappingProxyType(dict(self.identities or ()))

    def identity_of(self, site: int) -> bytes | None:
        """Site ``site``'s certificate public key, or ``None`` (no identities bound, or not a site of the round)."""
        return self._identity_map.get(site)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class PeerKeys:
    """A site's advertised public keys, and its certificate's signature of them.

    Attributes:
        site: the advertising site.
        encryption_key, masking_key: its X25519 public keys for this round.
        signing_key: its P-256 key for the consistency check (a 65-byte uncompressed
            point), if the round runs one.
        share_commitments: per potential shareholder ``(holder, commitment to its
            masking-key share, commitment to its self-mask-seed share)``
            (:func:`share_commitment`), fixed before any share is sent; the coordinator
            checks every share it is given to reconstruct against them.
        seed_commitment: commitment to the self-mask seed itself (:func:`seed_commitment`),
            so a seed reconstructed from inconsistently dealt shares is caught and the
            dealer named (the masking key is checked against ``masking_key``).
        graph_commitment: SecAgg+ only: commitment to the randomness the site will
            reveal towards the neighbour graph's seed (:func:`graph_commitment`).
        identity_signature: ECDSA signature by the site's certificate key of
            :func:`advertisement_statement` (``None`` when the round binds no identities).
    """

    site: int
    encryption_key: bytes
    masking_key: bytes
    signing_key: bytes | None = None
    share_commitments: tuple[tuple[int, bytes, bytes], ...] | None = None
    seed_commitment: bytes | None = None
    graph_commitment: bytes | None = None
    identity_signature: bytes | None = None

    @cached_property
    def commitments_bytes(self) -> bytes:
        """The share commitments as one byte string (holder, key-share digest, seed-share digest per record)."""
        return b"".join(struct.pack(">Q", holder) + key + seed for holder, key, seed in self.share_commitments or ())

    def commitment(self, holder: int, kind: str) -> bytes | None:
        """The commitment to the ``kind`` (``key`` or ``seed``) share this site dealt to ``holder``."""
        for site, key_commitment, seed_commitment in self.share_commitments or ():
            if site == holder:
                return key_commitment if kind == "key" else seed_commitment
        return None


@dataclass(frozen=True, eq=False)
class BaseMessage:
    """Fields every message carries. ``STAGE``: the receiver's stage that accepts it (:class:`Abort`: any)."""

    round_index: int
    sender: int
    receiver: int
    STAGE: ClassVar[Stage]


@dataclass(frozen=True, eq=False)
class AdvertiseKeys(BaseMessage):
    """Site -> server: the site's public keys for this round."""

    keys: PeerKeys
    STAGE: ClassVar[Stage] = Stage.ADVERTISE_KEYS


@dataclass(frozen=True, eq=False)
class KeyDirectory(BaseMessage):
    """Server -> site: the keys of every site that advertised (U1); accepted in CHOOSE_GRAPH with SecAgg+."""

    peers: tuple[PeerKeys, ...]
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class GraphReveal(BaseMessage):
    """Site -> server (SecAgg+): the randomness its advertisement committed to."""

    randomness: bytes
    STAGE: ClassVar[Stage] = Stage.CHOOSE_GRAPH


@dataclass(frozen=True, eq=False)
class GraphRandomness(BaseMessage):
    """Server -> site (SecAgg+): ``(site, randomness)`` of every advertised site."""

    reveals: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class EncryptedShares(BaseMessage):
    """Site -> server: ``(receiver, ciphertext)`` for each neighbour."""

    ciphertexts: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.SHARE_KEYS


@dataclass(frozen=True, eq=False)
class ForwardedShares(BaseMessage):
    """Server -> site: ``(sender, ciphertext)`` addressed to it, from the sites in U2."""

    ciphertexts: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class MaskedInput(BaseMessage):
    """Site -> server: the masked ring vector."""

    vector: np.ndarray
    STAGE: ClassVar[Stage] = Stage.MASKED_INPUT


@dataclass(frozen=True, eq=False)
class SurvivorList(BaseMessage):
    """Server -> site: the sites whose masked input arrived (U3), to be signed."""

    survivors: tuple[int, ...]
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class ConsistencySignature(BaseMessage):
    """Site -> server: ECDSA P-256 signature (DER) of the survivor list."""

    signature: bytes
    STAGE: ClassVar[Stage] = Stage.CONSISTENCY_CHECK


@dataclass(frozen=True, eq=False)
class UnmaskRequest(BaseMessage):
    """Server -> site: which neighbours survived and which dropped (+ signatures)."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...] = ()
    signed_survivors: tuple[int, ...] = ()
    STAGE: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class UnmaskShares(BaseMessage):
    """Site -> server: self-mask shares of survivors, masking-key shares of dropped sites."""

    self_mask_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    STAGE: ClassVar[Stage] = Stage.UNMASKING


@dataclass(frozen=True, eq=False)
class Abort(BaseMessage):
    """Server -> site: the round is abandoned; accepted in any stage."""

    stage: Stage
    reason: str
    STAGE: ClassVar[Stage] = Stage.ABORTED


Message = Union[
    AdvertiseKeys,
    KeyDirectory,
    GraphReveal,
    GraphRandomness,
    EncryptedShares,
    ForwardedShares,
    MaskedInput,
    SurvivorList,
    ConsistencySignature,
    UnmaskRequest,
    UnmaskShares,
    Abort,
]

# --------------------------------------------------------------------------- helpers


def frozen_map(items: Mapping[int, object]) -> Mapping:
    """A read-only copy of ``items``, for the mappings held in frozen states."""
    return MappingProxyType(dict(items))


def describe(message: object) -> str:
    """A message (or a stray object) as error messages name it: type, sender and round."""
    if isinstance(message, BaseMessage):
        return f"{type(message).__name__} from party {message.sender} (round {message.round_index})"
    return f"object of type {type(message).__name__}"


def check_incoming(
    messages: Sequence[object],
    *,
    stage: Stage,
    expected_type: type,
    config: RoundConfig,
    receiver: int,
    allowed_senders: frozenset[int],
    party: str,
) -> dict[int, object]:
    """Validate stage, round, sender, receiver and uniqueness; return sender -> message.

    Args:
        messages: what arrived for the stage.
        stage: the receiving party's stage (named in errors).
        expected_type: the message class the stage accepts.
        config: the round's parameters (its round index is checked).
        receiver: the receiving party's ID.
        allowed_senders: the parties that may send in this stage.
        party: the receiving party as errors name it (``"server"``, ``"site 3"``).

    Returns:
        Each sender's message.

    Raises:
        ProtocolError: a message of another type, round or receiver, from an
            unexpected sender, or a second one from the same sender (a replay).
    """
    by_sender: dict[int, object] = {}
    for message in messages:
        if not isinstance(message, BaseMessage):
            raise ProtocolError(f"{party} in stage {stage.name} expected {expected_type.__name__} messages, got {describe(message)}")
        if not isinstance(message, expected_type):
            raise ProtocolError(
                f"{party} expected a stage {stage.name} message ({expected_type.__name__}), got {describe(message)} "
                f"of stage {message.STAGE.name}; out-of-order or replayed message"
            )
        if message.round_index != config.round_index:
            raise ProtocolError(
                f"{party} in round {config.round_index} (stage {stage.name}) got {describe(message)}; "
                "replayed or misrouted message from another round"
            )
        if message.receiver != receiver:
            raise ProtocolError(f"{party} got {describe(message)} addressed to party {message.receiver}")
        if message.sender not in allowed_senders:
            raise ProtocolError(
                f"{party} in stage {stage.name} got {describe(message)}, but that party is not expected to send "
                f"in this stage (expected one of {sorted(allowed_senders)})"
            )
        if message.sender in by_sender:
            raise ProtocolError(f"{party} in stage {stage.name} got a second {describe(message)}; replayed message")
        by_sender[message.sender] = message
    return by_sender


def frame(*parts: bytes) -> bytes:
    """Length-prefixed concatenation (4-byte big-endian lengths): unambiguous to split."""
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def unframe(data: bytes, count: int, what: str) -> list[bytes]:
    """Splits what :func:`frame` joined into exactly ``count`` parts.

    Raises:
        ProtocolError: ``data`` is truncated or has trailing bytes (``what`` names it).
    """
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


SHARE_KINDS = ("key", "seed")
"""The two secrets a site shares: its masking private key and its self-mask seed."""


def share_commitment(config: RoundConfig, dealer: int, holder: int, kind: str, share: bytes) -> bytes:
    """SHA-256 commitment to the ``kind`` share ``dealer`` deals to ``holder`` in this round."""
    return hashlib.sha256(
        frame(b"genofed-secagg-share", config.context.encode(), struct.pack(">QQ", dealer, holder), kind.encode(), share)
    ).digest()


def seed_commitment(config: RoundConfig, dealer: int, seed: bytes) -> bytes:
    """SHA-256 commitment to ``dealer``'s self-mask seed in this round."""
    return hashlib.sha256(frame(b"genofed-secagg-seed", config.context.encode(), struct.pack(">Q", dealer), seed)).digest()


def advertisement_statement(config: RoundConfig, peer: PeerKeys) -> bytes:
    """The bytes a site's certificate key signs: its round keys and share commitments, bound to the round."""
    return frame(
        b"genofed-secagg-advertisement", config.context.encode(), struct.pack(">Q", peer.site),
        peer.encryption_key, peer.masking_key, peer.signing_key or b"", peer.commitments_bytes, peer.seed_commitment or b"",
        peer.graph_commitment or b"",
    )


def advertisement_problem(config: RoundConfig, peer: PeerKeys) -> str | None:
    """Why ``peer``'s advertisement cannot be trusted in this round, or ``None`` when it can.

    With identities bound, the advertisement must carry a valid signature by the
    certificate key the party's own roster holds for that site; a key the coordinator
    invented or swapped has none.
    """
    if config.identities is None:
        return None
    identity = config.identity_of(peer.site)
    if identity is None:
        return f"site {peer.site} is not one of the round's sites"
    if peer.identity_signature is None:
        return f"the keys of site {peer.site} carry no signature by its certificate"
    if not keys.verify_identity(identity, advertisement_statement(config, peer), peer.identity_signature):
        return f"the keys of site {peer.site} are not signed by its certificate (forged, swapped or altered keys)"
    return None


def survivor_statement(config: RoundConfig, survivors: Sequence[int], seed: bytes) -> bytes:
    """The bytes a site signs in the consistency check: the survivor list and the graph's seed, bound to the round.

    Signing the seed too means ``threshold`` signatures vouch that the signers agree
    on every advertised key and on the graph, not only on who survived.
    """
    return frame(b"genofed-secagg-survivors", config.context.encode(), keys.encode_site_list(survivors), seed)


def round_stages(config: RoundConfig) -> tuple[Stage, ...]:
    """The stages a round of ``config`` runs, in order (CHOOSE_GRAPH with SecAgg+, CONSISTENCY_CHECK when checking)."""
    return tuple(
        stage for stage in (Stage.ADVERTISE_KEYS, Stage.CHOOSE_GRAPH, Stage.SHARE_KEYS, Stage.MASKED_INPUT,
                            Stage.CONSISTENCY_CHECK, Stage.UNMASKING)
        if (stage is not Stage.CHOOSE_GRAPH or config.sparse) and (stage is not Stage.CONSISTENCY_CHECK or config.consistency_check)
    )


def graph_commitment(config: RoundConfig, site: int, randomness: bytes) -> bytes:
    """SHA-256 commitment to the randomness ``site`` contributes to this round's neighbour graph."""
    return hashlib.sha256(frame(b"genofed-secagg-graph-commitment", config.context.encode(), struct.pack(">Q", site), randomness)).digest()


def graph_seed(config: RoundConfig, directory: Mapping[int, PeerKeys], reveals: Mapping[int, bytes]) -> bytes:
    """The seed of the round's neighbour graph: every advertisement, then every site's revealed randomness.

    It is fixed only after all keys are (commit, then reveal): the coordinator sees the
    reveals only once it has relayed the advertisements that commit to them, so it can
    neither choose the graph nor grind it; one honest site's randomness makes it uniform.
    For plain SecAgg (no reveals) it is a digest of the key directory, which the
    consistency round then signs.
    """
    parts = [b"genofed-secagg-graph-seed", config.context.encode()]
    for site in sorted(directory):
        parts += [struct.pack(">Q", site), advertisement_statement(config, directory[site]), reveals.get(site, b"")]
    return hashlib.sha256(frame(*parts)).digest()


def round_graph(config: RoundConfig, sites: Sequence[int], seed: bytes) -> Mapping[int, frozenset[int]]:
    """Each advertised site's neighbours: every other one (SecAgg), or the SecAgg+ graph drawn from ``seed``."""
    if config.num_neighbours is None:
        return MappingProxyType(complete_graph(sites))
    return MappingProxyType(dict(neighbour_graph(sites, num_neighbours=config.num_neighbours, seed=seed)))
