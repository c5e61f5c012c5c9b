"""Key agreement, key derivation and share transport for secure aggregation.

Everything cryptographic here comes from the ``cryptography`` package:

- X25519 for the two Diffie-Hellman key pairs each site advertises per round
  (one to encrypt the Shamir shares it relays through the coordinator, one to
  agree on pairwise mask seeds);
- HKDF-SHA256 for every derived key, with an ``info`` string that binds the key to
  the federation, the job, the round, the two site IDs and a purpose label, so a
  key can never be reused across rounds, jobs or purposes. Pairwise mask seeds
  sort the two site IDs (both ends must derive the same seed); share-transport
  keys keep the direction (each key encrypts exactly one message);
- AES-256-GCM for the relayed shares, the additional data binding sender,
  receiver, round, job and federation, so the coordinator cannot redirect or
  replay a ciphertext;
- ECDSA P-256 / SHA-256 for both signatures: the consistency check (a site signs the
  survivor list with a key pair it advertised for the round, :func:`sign`,
  :func:`verify_signature`), and the key advertisement, signed with the site's
  *certificate* key (:func:`sign_identity`, :func:`verify_identity`) so a peer can
  check against the federation roster that the round keys it uses are the named
  site's, not keys the coordinator swapped in. OpenSSL verifies P-256 signatures
  about 1.7 times as fast as Ed25519 ones, and a round verifies hundreds. Signatures
  are deterministic (RFC 6979): a site that replays a round after a restart sends
  byte-identical messages.

:class:`DeterministicRandom` turns a 32-byte seed into a ChaCha20 byte stream; the
protocol draws all of a site's secrets from it so that state transitions are pure
functions and tests are reproducible. In production the seed is ``os.urandom(32)``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import ConfigurationError, ProtocolError

__all__ = [
    "KEY_BYTES",
    "KeyContext",
    "KeyPair",
    "DeterministicRandom",
    "generate_key_pair",
    "public_key_of",
    "agree",
    "derive_key",
    "pairwise_mask_seed",
    "share_transport_key",
    "encrypt_share",
    "decrypt_share",
    "generate_signing_key_pair",
    "sign",
    "verify_signature",
    "sign_identity",
    "verify_identity",
    "encode_site_list",
]

KEY_BYTES = 32
SIGNING_SEED_BYTES = 40
"""Random bytes a round's signing key is drawn from: 64 bits beyond the P-256 order, so
reducing them modulo the order is unbiased to 2^-64 (FIPS 186-5, A.2.1)."""
_NONCE_BYTES = 12
_PROTOCOL_LABEL = b"genofed-secagg-v1"
_RAW = serialization.Encoding.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_NO_ENCRYPTION = serialization.NoEncryption()


@dataclass(frozen=True)
class KeyContext:
    """What every derived key is bound to: federation, job and round.

    Attributes:
        federation_id: the federation's name (from its configuration).
        job_id: the job the round belongs to.
        round_index: the secure-sum round within the job (0, 1, ...).
    """

    federation_id: str
    job_id: str
    round_index: int

    def __post_init__(self) -> None:
        if not isinstance(self.round_index, int) or self.round_index < 0:
            raise ConfigurationError(
                f"KeyContext.round_index must be a non-negative int, got {self.round_index!r}"
            )

    def encode(self) -> bytes:
        """Unambiguous byte encoding (length-prefixed fields) used in HKDF info and AAD."""
        return self._encoded

    @cached_property
    def _encoded(self) -> bytes:
        # Every key, share and statement of a round is bound to it: encoded once.
        return _frame(
            self.federation_id.encode("utf-8"),
            self.job_id.encode("utf-8"),
            struct.pack(">Q", self.round_index),
        )


@dataclass(frozen=True)
class KeyPair:
    """A key pair as raw bytes: X25519 (32 and 32 bytes), or a round's P-256 signing
    key (a 32-byte big-endian scalar and a 65-byte uncompressed X9.62 point)."""

    private_key: bytes
    public_key: bytes


class DeterministicRandom:
    """A byte stream from ChaCha20 keyed by a 32-byte seed (callable like ``os.urandom``).

    Used so that a site's secrets derive from one seed: reproducible tests, and pure
    protocol transitions. Never reuse a seed across rounds in production; the protocol
    draws a fresh ``os.urandom(32)`` per round unless a seed is given.
    """

    def __init__(self, seed: bytes, label: bytes = b"") -> None:
        if len(seed) != KEY_BYTES:
            raise ConfigurationError(f"DeterministicRandom needs a 32-byte seed, got {len(seed)} bytes")
        key = derive_key(seed, purpose="random-stream", context_bytes=label)
        self._encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def __call__(self, num_bytes: int) -> bytes:
        return self._encryptor.update(bytes(num_bytes))


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(part)) + part for part in parts)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ProtocolError(f"{what} must be {KEY_BYTES} raw bytes, got {len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__}")


def generate_key_pair(random_bytes: bytes | None = None) -> KeyPair:
    """Make an X25519 key pair, from ``random_bytes`` (32 bytes) or from the OS.

    Args:
        random_bytes: 32 uniformly random bytes (clamped by X25519); ``None`` draws
            them from ``os.urandom``.
    """
    private = X25519PrivateKey.from_private_bytes(random_bytes or os.urandom(KEY_BYTES))
    return KeyPair(
        private.private_bytes(_RAW, _RAW_PRIVATE, _NO_ENCRYPTION),
        private.public_key().public_bytes(_RAW, _RAW_PUBLIC),
    )


def public_key_of(private_key: bytes) -> bytes:
    """The X25519 public key of raw private key bytes (checks reconstructed keys)."""
    _check_key(private_key, "X25519 private key")
    return X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes(_RAW, _RAW_PUBLIC)


def agree(private_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519 shared secret; raw, so always pass it through :func:`derive_key`.

    Raises:
        ProtocolError: the peer's public key is malformed or a low-order point.
    """
    return agree_many(private_key, [peer_public_key])[0]


def agree_many(private_key: bytes, peer_public_keys: Sequence[bytes]) -> list[bytes]:
    """X25519 shared secrets of one private key with each peer key, in order (see :func:`agree`).

    Loading a private key costs as much as an exchange (it derives the public key), so
    a party agreeing with all its neighbours loads its key once.

    Raises:
        ProtocolError: a peer's public key is malformed or a low-order point (the first such).
    """
    _check_key(private_key, "X25519 private key")
    for peer_public_key in peer_public_keys:
        _check_key(peer_public_key, "X25519 public key")
    if not peer_public_keys:
        return []
    private = X25519PrivateKey.from_private_bytes(private_key)
    try:
        return [private.exchange(X25519PublicKey.from_public_bytes(peer)) for peer in peer_public_keys]
    except ValueError as error:
        raise ProtocolError(f"X25519 key agreement failed: {error}; the peer advertised an invalid public key") from error


def derive_key(secret: bytes, *, purpose: str, context_bytes: bytes = b"", length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` bound to a purpose label and a context encoding."""
    info = _frame(_PROTOCOL_LABEL, purpose.encode("utf-8"), context_bytes)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def _site_bytes(site_id: int) -> bytes:
    if not isinstance(site_id, int) or site_id < 0:
        raise ConfigurationError(f"site IDs are non-negative ints, got {site_id!r}")
    return struct.pack(">Q", site_id)


def pairwise_mask_seed(shared_secret: bytes, *, context: KeyContext, site_a: int, site_b: int) -> bytes:
    """The 32-byte seed of the pairwise mask between two sites (its PRG is the round's, :mod:`pipeline.secagg.masks`).

    Order-independent in the two site IDs: both ends derive the same seed.
    """
    low, high = sorted((site_a, site_b))
    return derive_key(
        shared_secret,
        purpose="pairwise-mask",
        context_bytes=context.encode() + _site_bytes(low) + _site_bytes(high),
    )


def share_transport_key(shared_secret: bytes, *, context: KeyContext, sender: int, receiver: int) -> bytes:
    """The AES-256-GCM key for the shares ``sender`` relays to ``receiver`` (directional)."""
    return derive_key(
        shared_secret,
        purpose="share-transport",
        context_bytes=context.encode() + _site_bytes(sender) + _site_bytes(receiver),
    )


def _share_aad(context: KeyContext, sender: int, receiver: int) -> bytes:
    return _frame(b"share", context.encode(), _site_bytes(sender), _site_bytes(receiver))


def encrypt_share(
    key: bytes, plaintext: bytes, *, context: KeyContext, sender: int, receiver: int, nonce: bytes | None = None
) -> bytes:
    """AES-GCM encrypt a share bundle; returns ``nonce || ciphertext || tag``.

    The additional data binds sender, receiver, round, job and federation.
    """
    nonce = os.urandom(_NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != _NONCE_BYTES:
        raise ConfigurationError(f"AES-GCM nonce must be {_NONCE_BYTES} bytes, got {len(nonce)}")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _share_aad(context, sender, receiver))


def decrypt_share(key: bytes, ciphertext: bytes, *, context: KeyContext, sender: int, receiver: int) -> bytes:
    """Inverse of :func:`encrypt_share`.

    Raises:
        ProtocolError: the ciphertext was altered, or is relayed for another sender,
            receiver, round, job or federation than it was made for.
    """
    if len(ciphertext) < _NONCE_BYTES + 16:
        raise ProtocolError(f"encrypted shares from site {sender} to site {receiver} are truncated ({len(ciphertext)} bytes)")
    try:
        return AESGCM(key).decrypt(
            ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], _share_aad(context, sender, receiver)
        )
    except InvalidTag as error:
        raise ProtocolError(
            f"encrypted shares from site {sender} to site {receiver} failed authentication in round "
            f"{context.round_index} of job {context.job_id!r}: altered, or replayed from another round/pair"
        ) from error


_P256 = ec.SECP256R1()
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P256_POINT_BYTES = 65
_SIGNING = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_VERIFYING = ec.ECDSA(hashes.SHA256())


def generate_signing_key_pair(random_bytes: bytes | None = None) -> KeyPair:
    """Make a round's P-256 signing key pair from ``SIGNING_SEED_BYTES`` random bytes (or the OS's).

    The scalar is ``random mod (n - 1) + 1`` for the group order ``n`` (FIPS 186-5,
    A.2.1), so every seed gives a valid key.
    """
    seed = os.urandom(SIGNING_SEED_BYTES) if random_bytes is None else bytes(random_bytes)
    if len(seed) != SIGNING_SEED_BYTES:
        raise ConfigurationError(f"a signing key is drawn from {SIGNING_SEED_BYTES} random bytes, got {len(seed)}")
    scalar = int.from_bytes(seed, "big") % (_P256_ORDER - 1) + 1
    public = ec.derive_private_key(scalar, _P256).public_key()
    return KeyPair(scalar.to_bytes(KEY_BYTES, "big"),
                   public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))


def sign(private_key: bytes, message: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature (DER, deterministic) of ``message`` with a round's signing key."""
    _check_key(private_key, "P-256 signing key")
    scalar = int.from_bytes(private_key, "big")
    if not 0 < scalar < _P256_ORDER:
        raise ProtocolError("a P-256 signing key must be a scalar between 1 and the group order")
    return ec.derive_private_key(scalar, _P256).sign(message, _SIGNING)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid signature of ``message`` by a round's signing key (65-byte point)."""
    if len(public_key) != _P256_POINT_BYTES:
        return False  # one encoding per key: the uncompressed point
    try:
        point = ec.EllipticCurvePublicKey.from_encoded_point(_P256, bytes(public_key))
    except ValueError:
        return False  # not a point of the curve
    return _verifies(point, message, signature)


def sign_identity(private_key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature of ``message`` with a certificate's key (deterministic, RFC 6979)."""
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"an identity key is the site's certificate EC private key, got {type(private_key).__name__}")
    return private_key.sign(message, _SIGNING)


def verify_identity(public_key_der: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a certificate key's signature of ``message`` (DER SubjectPublicKeyInfo key)."""
    try:
        public_key = _load_identity(bytes(public_key_der))
    except (ValueError, TypeError):
        return False
    return isinstance(public_key, ec.EllipticCurvePublicKey) and _verifies(public_key, message, signature)


def _verifies(public_key: ec.EllipticCurvePublicKey, message: bytes, signature: bytes) -> bool:
    try:
        public_key.verify(bytes(signature), message, _VERIFYING)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@lru_cache(maxsize=4096)
def _load_identity(public_key_der: bytes) -> object:
    """A certificate's public key, parsed once: every party checks every roster key every round."""
    return serialization.load_der_public_key(public_key_der)


def encode_site_list(site_ids: Sequence[int]) -> bytes:
    """Canonical bytes of a sorted site list (what the consistency check signs)."""
    return b"".join(_site_bytes(site) for site in sorted(site_ids))
