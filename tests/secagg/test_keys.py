"""Key agreement, HKDF binding, AES-GCM share transport, ECDSA P-256 signatures."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.secagg import keys

CONTEXT = keys.KeyContext("fed", "job-1", 3)


def test_agree__matches_cryptography_and_is_symmetric() -> None:
    alice, bob = keys.generate_key_pair(), keys.generate_key_pair()
    shared = keys.agree(alice.private_key, bob.public_key)
    assert shared == keys.agree(bob.private_key, alice.public_key)
    reference = X25519PrivateKey.from_private_bytes(alice.private_key).exchange(
        X25519PrivateKey.from_private_bytes(bob.private_key).public_key()
    )
    assert shared == reference
    assert keys.public_key_of(alice.private_key) == alice.public_key


def test_agree__rfc7748_vector() -> None:
    # RFC 7748 section 6.1.
    alice_private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    expected = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert keys.agree(alice_private, bob_public) == expected
    assert keys.generate_key_pair(alice_private).public_key == bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )


def test_agree__low_order_point_rejected() -> None:
    with pytest.raises(ProtocolError, match="invalid public key"):
        keys.agree(keys.generate_key_pair().private_key, bytes(32))
    with pytest.raises(ProtocolError, match="32 raw bytes"):
        keys.agree(keys.generate_key_pair().private_key, bytes(31))


def test_agree_many__equals_one_agreement_per_peer_and_refuses_a_bad_key() -> None:
    own = keys.generate_key_pair()
    peers = [keys.generate_key_pair().public_key for _ in range(4)]
    assert keys.agree_many(own.private_key, peers) == [keys.agree(own.private_key, peer) for peer in peers]
    assert keys.agree_many(own.private_key, []) == []
    with pytest.raises(ProtocolError, match="invalid public key"):
        keys.agree_many(own.private_key, [peers[0], bytes(32)])
    with pytest.raises(ProtocolError, match="32 raw bytes"):
        keys.agree_many(own.private_key, [peers[0], bytes(31)])


def test_derive_key__matches_independent_hkdf() -> None:
    secret = os.urandom(32)
    info = b"".join(len(p).to_bytes(4, "big") + p for p in (b"genofed-secagg-v1", b"purpose", b"ctx"))
    reference = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)
    assert keys.derive_key(secret, purpose="purpose", context_bytes=b"ctx") == reference


def test_pairwise_mask_seed__order_independent_and_bound_to_everything() -> None:
    secret = os.urandom(32)
    seed = keys.pairwise_mask_seed(secret, context=CONTEXT, site_a=2, site_b=5)
    assert seed == keys.pairwise_mask_seed(secret, context=CONTEXT, site_a=5, site_b=2)
    others = {
        keys.pairwise_mask_seed(secret, context=keys.KeyContext("fed", "job-1", 4), site_a=2, site_b=5),
        keys.pairwise_mask_seed(secret, context=keys.KeyContext("fed", "job-2", 3), site_a=2, site_b=5),
        keys.pairwise_mask_seed(secret, context=keys.KeyContext("other", "job-1", 3), site_a=2, site_b=5),
        keys.pairwise_mask_seed(secret, context=CONTEXT, site_a=2, site_b=6),
        keys.share_transport_key(secret, context=CONTEXT, sender=2, receiver=5),
    }
    assert seed not in others and len(others) == 5
    assert keys.share_transport_key(secret, context=CONTEXT, sender=2, receiver=5) != keys.share_transport_key(
        secret, context=CONTEXT, sender=5, receiver=2
    )


def test_key_context__ambiguous_fields_do_not_collide() -> None:
    assert keys.KeyContext("ab", "c", 0).encode() != keys.KeyContext("a", "bc", 0).encode()
    with pytest.raises(ConfigurationError, match="round_index"):
        keys.KeyContext("a", "b", -1)


def test_encrypt_share__round_trip_and_binding() -> None:
    key = os.urandom(32)
    ciphertext = keys.encrypt_share(key, b"shares", context=CONTEXT, sender=1, receiver=2)
    assert keys.decrypt_share(key, ciphertext, context=CONTEXT, sender=1, receiver=2) == b"shares"
    for context, sender, receiver in [
        (CONTEXT, 2, 1),
        (CONTEXT, 1, 3),
        (keys.KeyContext("fed", "job-1", 4), 1, 2),
        (keys.KeyContext("fed", "job-9", 3), 1, 2),
    ]:
        with pytest.raises(ProtocolError, match="failed authentication"):
            keys.decrypt_share(key, ciphertext, context=context, sender=sender, receiver=receiver)
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    with pytest.raises(ProtocolError, match="failed authentication"):
        keys.decrypt_share(key, tampered, context=CONTEXT, sender=1, receiver=2)
    with pytest.raises(ProtocolError, match="truncated"):
        keys.decrypt_share(key, ciphertext[:20], context=CONTEXT, sender=1, receiver=2)


def test_sign__verify_and_reject() -> None:
    pair = keys.generate_signing_key_pair()
    message = keys.encode_site_list([3, 1, 2])
    assert message == keys.encode_site_list([1, 2, 3])
    signature = keys.sign(pair.private_key, message)
    assert signature == keys.sign(pair.private_key, message)  # deterministic: a replayed round repeats it
    assert keys.verify_signature(pair.public_key, message, signature)
    assert not keys.verify_signature(pair.public_key, keys.encode_site_list([1, 2]), signature)
    assert not keys.verify_signature(keys.generate_signing_key_pair().public_key, message, signature)
    assert not keys.verify_signature(pair.public_key, message, b"\x00" * 64)
    assert not keys.verify_signature(pair.public_key, message, b"")


# RFC 6979, A.2.5: ECDSA, 256 bits (prime field), SHA-256.
_RFC6979_KEY = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
_RFC6979_POINT = bytes.fromhex(
    "04"
    "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6"
    "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299"
)


def test_signing_key__rfc6979_vectors() -> None:
    """The key from its seed, its public point, and the deterministic signatures of RFC 6979's P-256 example."""
    seed = (_RFC6979_KEY - 1).to_bytes(keys.SIGNING_SEED_BYTES, "big")  # random mod (n - 1) + 1 = the RFC's key
    pair = keys.generate_signing_key_pair(seed)
    assert pair.private_key == _RFC6979_KEY.to_bytes(32, "big")
    assert pair.public_key == _RFC6979_POINT
    expected = {
        b"sample": (0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716,
                    0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8),
        b"test": (0xF1ABB023518351CD71D881567B1EA663ED3EFCF6C5132B354F28D3B0B7D38367,
                  0x019F4113742A2B14BD25926B49C649155F267E60D3814B4C0CC84250E46F0083),
    }
    for message, (r, s) in expected.items():
        signature = keys.sign(pair.private_key, message)
        assert decode_dss_signature(signature) == (r, s)
        assert keys.verify_signature(pair.public_key, message, signature)


def test_signing_key__every_seed_gives_a_key_and_one_encoding_verifies() -> None:
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    for value in (0, order - 2, order - 1, 2 ** 320 - 1):
        pair = keys.generate_signing_key_pair(value.to_bytes(keys.SIGNING_SEED_BYTES, "big"))
        assert int.from_bytes(pair.private_key, "big") == value % (order - 1) + 1
        assert keys.verify_signature(pair.public_key, b"m", keys.sign(pair.private_key, b"m"))
    with pytest.raises(ConfigurationError, match="40 random bytes"):
        keys.generate_signing_key_pair(bytes(32))
    with pytest.raises(ProtocolError, match="between 1 and the group order"):
        keys.sign(order.to_bytes(32, "big"), b"m")
    signature = keys.sign(_RFC6979_KEY.to_bytes(32, "big"), b"m")
    compressed = bytes([2 + _RFC6979_POINT[-1] % 2]) + _RFC6979_POINT[1:33]
    assert not keys.verify_signature(compressed, b"m", signature)  # the same key, another encoding
    off_curve = _RFC6979_POINT[:-1] + bytes([_RFC6979_POINT[-1] ^ 1])
    assert not keys.verify_signature(off_curve, b"m", signature)


def test_deterministic_random__reproducible_stream() -> None:
    seed = os.urandom(32)
    first = keys.DeterministicRandom(seed)
    second = keys.DeterministicRandom(seed)
    assert first(10) + first(30) == second(40)
    assert keys.DeterministicRandom(seed, b"other")(40) != keys.DeterministicRandom(seed)(40)
    with pytest.raises(ConfigurationError, match="32-byte"):
        keys.DeterministicRandom(b"short")
    assert keys.generate_key_pair(first(32)) == keys.generate_key_pair(second(32))
