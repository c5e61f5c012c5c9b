"""How secure-aggregation messages travel: one Arrow IPC stream per message.

Every message of :mod:`pipeline.secagg.messages` travels as one Arrow IPC stream
(``application/vnd.apache.arrow.stream``): a JSON header in the schema metadata under
``genofed.message`` carries the message type, round, sender, receiver and small scalar
fields; byte strings (keys, encrypted shares, signatures) and ring vectors travel as
columns of one record batch, so a masked vector of 10^6 uint64 values is 8 MB on the
wire and is read without a copy. The generic formats it builds on are in
:mod:`pipeline.federation.wire`.

Decoding never trusts its input: anything malformed raises
:class:`~pipeline.errors.ProtocolError`, which the server answers with 422.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import ProtocolError
from pipeline.federation.wire import canonical_json, decode_table, encode_table
from pipeline.secagg import messages
from pipeline.secagg.messages import Message, PeerKeys, Stage

HEADER_KEY = b"genofed.message"
WIRE_VERSION = 6
"""Raised whenever the protocol's meaning changes, not only its bytes (5: masks are AES-128-CTR unless the job
names ChaCha20; 6: consistency signatures are ECDSA P-256, not Ed25519), so parties of different versions
refuse each other's messages instead of summing masks that never cancel."""

__all__ = [
    "HEADER_KEY",
    "WIRE_VERSION",
    "encode_message",
    "decode_message",
]


def _binary(values: list[bytes | None]) -> pa.Array:
    return pa.array(values, type=pa.binary())


def _ints(values: list[int]) -> pa.Array:
    return pa.array(values, type=pa.int64())


def _peer_columns(peers: tuple[PeerKeys, ...]) -> dict[str, pa.Array]:
    return {
        "site": _ints([p.site for p in peers]),
        "encryption_key": _binary([p.encryption_key for p in peers]),
        "masking_key": _binary([p.masking_key for p in peers]),
        "signing_key": _binary([p.signing_key for p in peers]),
        "share_commitments": _binary([None if p.share_commitments is None else p.commitments_bytes for p in peers]),
        "seed_commitment": _binary([p.seed_commitment for p in peers]),
        "graph_commitment": _binary([p.graph_commitment for p in peers]),
        "identity_signature": _binary([p.identity_signature for p in peers]),
    }


_COMMITMENT_RECORD = 8 + 32 + 32
"""One share commitment on the wire: holder (8 bytes), key-share and seed-share digests."""


def _commitments(data: bytes | None) -> tuple[tuple[int, bytes, bytes], ...] | None:
    if data is None:
        return None
    if len(data) % _COMMITMENT_RECORD:
        raise ProtocolError(f"malformed share commitments: {len(data)} bytes is not a whole number of records")
    records = (data[i : i + _COMMITMENT_RECORD] for i in range(0, len(data), _COMMITMENT_RECORD))
    return tuple((struct.unpack(">Q", r[:8])[0], bytes(r[8:40]), bytes(r[40:72])) for r in records)


def _peers(table: pa.Table) -> tuple[PeerKeys, ...]:
    rows = table.to_pydict()
    missing = sorted({"share_commitments", "seed_commitment", "graph_commitment", "identity_signature"} - set(rows))
    if missing:
        raise ProtocolError(f"malformed key advertisement: no {missing} columns")

    def optional(value: bytes | None) -> bytes | None:
        return None if value is None else bytes(value)

    return tuple(
        PeerKeys(int(site), bytes(enc), bytes(mask), optional(sign), _commitments(optional(commit)), optional(seed),
                 optional(graph), optional(ident))
        for site, enc, mask, sign, commit, seed, graph, ident in zip(
            rows["site"], rows["encryption_key"], rows["masking_key"], rows["signing_key"], rows["share_commitments"],
            rows["seed_commitment"], rows["graph_commitment"], rows["identity_signature"],
        )
    )


def _pairs(table: pa.Table, key: str, value: str) -> tuple[tuple[int, bytes], ...]:
    rows = table.to_pydict()
    return tuple((int(k), bytes(v)) for k, v in zip(rows[key], rows[value]))


def _pair_columns(pairs: tuple[tuple[int, bytes], ...], key: str, value: str) -> dict[str, pa.Array]:
    return {key: _ints([k for k, _ in pairs]), value: _binary([v for _, v in pairs])}


def _fields_of(message: Message) -> tuple[dict[str, Any], dict[str, pa.Array]]:
    """Header fields and columns of one message."""
    if isinstance(message, messages.AdvertiseKeys):
        return {}, _peer_columns((message.keys,))
    if isinstance(message, messages.KeyDirectory):
        return {}, _peer_columns(message.peers)
    if isinstance(message, messages.GraphReveal):
        return {}, {"randomness": _binary([message.randomness])}
    if isinstance(message, messages.GraphRandomness):
        return {}, _pair_columns(message.reveals, "peer", "randomness")
    if isinstance(message, (messages.EncryptedShares, messages.ForwardedShares)):
        return {}, _pair_columns(message.ciphertexts, "peer", "ciphertext")
    if isinstance(message, messages.MaskedInput):
        vector = np.ascontiguousarray(message.vector)
        return {"dtype": str(vector.dtype)}, {"vector": pa.array(vector)}
    if isinstance(message, messages.SurvivorList):
        return {"survivors": list(message.survivors)}, {}
    if isinstance(message, messages.ConsistencySignature):
        return {}, {"signature": _binary([message.signature])}
    if isinstance(message, messages.UnmaskRequest):
        header = {
            "survivors": list(message.survivors),
            "dropped": list(message.dropped),
            "signed_survivors": list(message.signed_survivors),
        }
        return header, _pair_columns(message.signatures, "signer", "signature")
    if isinstance(message, messages.UnmaskShares):
        owners = [o for o, _ in message.self_mask_shares] + [o for o, _ in message.key_shares]
        shares = [s for _, s in message.self_mask_shares] + [s for _, s in message.key_shares]
        kinds = ["self_mask"] * len(message.self_mask_shares) + ["masking_key"] * len(message.key_shares)
        return {}, {"owner": _ints(owners), "kind": pa.array(kinds, pa.string()), "share": _binary(shares)}
    if isinstance(message, messages.Abort):
        return {"stage": message.stage.value, "reason": message.reason}, {}
    raise ProtocolError(f"cannot encode an object of type {type(message).__name__} as a protocol message")


def encode_message(message: Message) -> bytes:
    """One protocol message as an Arrow IPC stream (header in the schema metadata)."""
    fields, columns = _fields_of(message)
    header = {
        "wire_version": WIRE_VERSION,
        "type": type(message).__name__,
        "round_index": int(message.round_index),
        "sender": int(message.sender),
        "receiver": int(message.receiver),
        **fields,
    }
    table = pa.table(columns) if columns else pa.table({"_": pa.array([], pa.int8())})
    table = table.replace_schema_metadata({HEADER_KEY: canonical_json(header)})
    return encode_table(table)


def _decode_unmask_shares(header: dict[str, Any], table: pa.Table) -> dict[str, Any]:
    rows = table.to_pydict()
    self_mask, key = [], []
    for owner, kind, share in zip(rows["owner"], rows["kind"], rows["share"]):
        if kind == "self_mask":
            self_mask.append((int(owner), bytes(share)))
        elif kind == "masking_key":
            key.append((int(owner), bytes(share)))
        else:
            raise ProtocolError(f"unknown share kind {kind!r}; expected 'self_mask' or 'masking_key'")
    return {"self_mask_shares": tuple(self_mask), "key_shares": tuple(key)}


def _decode_masked_input(header: dict[str, Any], table: pa.Table) -> dict[str, Any]:
    column = table.column("vector")
    if column.null_count:
        raise ProtocolError("the masked vector has null elements")
    dtype = np.dtype(str(header.get("dtype")))
    vector = column.to_numpy()
    if vector.dtype != dtype or dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise ProtocolError(f"masked vector of dtype {vector.dtype} (header says {dtype}); expected uint32 or uint64")
    return {"vector": vector}


def _single_bytes(column: str, what: str) -> Callable[[dict[str, Any], pa.Table], dict[str, Any]]:
    """Decoder of a message carrying one byte string in ``column``."""

    def decode(header: dict[str, Any], table: pa.Table) -> dict[str, Any]:
        values = table.column(column).to_pylist()
        if len(values) != 1 or values[0] is None:
            raise ProtocolError(f"a {what} message carries exactly one {column}, got {len(values)}")
        return {column: bytes(values[0])}

    return decode


def _single_peer(header: dict[str, Any], table: pa.Table) -> dict[str, Any]:
    peers = _peers(table)
    if len(peers) != 1:
        raise ProtocolError(f"an advertise-keys message carries exactly one site's keys, got {len(peers)}")
    return {"keys": peers[0]}


def _sites(header: dict[str, Any], name: str) -> tuple[int, ...]:
    values = header.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ProtocolError(f"header field {name!r} must be a list of site IDs")
    return tuple(values)


_DECODERS: dict[str, tuple[type, Callable[[dict[str, Any], pa.Table], dict[str, Any]]]] = {
    "AdvertiseKeys": (messages.AdvertiseKeys, _single_peer),
    "KeyDirectory": (messages.KeyDirectory, lambda h, t: {"peers": _peers(t)}),
    "GraphReveal": (messages.GraphReveal, _single_bytes("randomness", "graph reveal")),
    "GraphRandomness": (messages.GraphRandomness, lambda h, t: {"reveals": _pairs(t, "peer", "randomness")}),
    "EncryptedShares": (messages.EncryptedShares, lambda h, t: {"ciphertexts": _pairs(t, "peer", "ciphertext")}),
    "ForwardedShares": (messages.ForwardedShares, lambda h, t: {"ciphertexts": _pairs(t, "peer", "ciphertext")}),
    "MaskedInput": (messages.MaskedInput, _decode_masked_input),
    "SurvivorList": (messages.SurvivorList, lambda h, t: {"survivors": _sites(h, "survivors")}),
    "ConsistencySignature": (messages.ConsistencySignature, _single_bytes("signature", "consistency signature")),
    "UnmaskRequest": (
        messages.UnmaskRequest,
        lambda h, t: {
            "survivors": _sites(h, "survivors"),
            "dropped": _sites(h, "dropped"),
            "signed_survivors": _sites(h, "signed_survivors"),
            "signatures": _pairs(t, "signer", "signature"),
        },
    ),
    "UnmaskShares": (messages.UnmaskShares, _decode_unmask_shares),
    "Abort": (messages.Abort, lambda h, t: {"stage": Stage(h.get("stage")), "reason": str(h.get("reason", ""))}),
}


def decode_message(data: bytes) -> Message:
    """Reads one protocol message written by :func:`encode_message`.

    Raises:
        ProtocolError: not an Arrow stream, no or bad header, unknown type, missing
            columns or wrong types. The message says what was expected.
    """
    table = decode_table(data, what="protocol message")
    metadata = table.schema.metadata or {}
    if HEADER_KEY not in metadata:
        raise ProtocolError(f"malformed protocol message: no {HEADER_KEY.decode()!r} header in the Arrow schema metadata")
    try:
        header = json.loads(metadata[HEADER_KEY])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ProtocolError(f"malformed protocol message header: {error}") from None
    except RecursionError:
        raise ProtocolError("malformed protocol message header: nested too deeply") from None
    if not isinstance(header, dict) or "wire_version" not in header:
        raise ProtocolError(f"protocol message header must be an object with wire_version {WIRE_VERSION}")
    if header["wire_version"] != WIRE_VERSION:
        raise ProtocolError(
            f"protocol message of wire version {header['wire_version']!r}, and this party speaks {WIRE_VERSION}: every "
            "party of a federation must run a genofed of the same protocol version (upgrade the older ones)"
        )
    kind = header.get("type")
    if kind not in _DECODERS:
        raise ProtocolError(f"unknown protocol message type {kind!r}; expected one of {sorted(_DECODERS)}")
    cls, decode_fields = _DECODERS[kind]
    try:
        base = {name: int(header[name]) for name in ("round_index", "sender", "receiver")}
        if any(isinstance(header[name], bool) for name in base):
            raise TypeError("booleans are not party IDs")
        return cls(**base, **decode_fields(header, table))  # type: ignore[no-any-return]
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, pa.ArrowException) as error:
        raise ProtocolError(f"malformed {kind} message: {type(error).__name__}: {error}") from None
