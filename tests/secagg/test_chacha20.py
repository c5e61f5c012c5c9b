"""ChaCha20 keystream: RFC 8439 vectors, OpenSSL cross-checks, engine equality, no recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigurationError
from pipeline.secagg import chacha20, chacha20_jax
from pipeline.secagg.chacha20 import chacha20_keystream, keystream_words

ENGINES = ["openssl", "jax"]

# --- RFC 8439 test vectors (literal hex from the RFC) -------------------------------------

# §2.3.2: block function, key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, counter 1.
RFC_2_3_2_KEY = bytes(range(32))
RFC_2_3_2_NONCE = bytes.fromhex("000000090000004a00000000")
RFC_2_3_2_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)

# §2.4.2: encryption, key 00..1f, nonce 00:00:00:00:00:00:00:4a:00:00:00:00, counter 1.
RFC_2_4_2_NONCE = bytes.fromhex("000000000000004a00000000")
RFC_2_4_2_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
RFC_2_4_2_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)

# Appendix A.1: block function test vectors #1..#5 (key, nonce, counter, keystream block).
RFC_A1 = [
    (
        "00" * 32,
        "00" * 12,
        0,
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
    ),
    (
        "00" * 32,
        "00" * 12,
        1,
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f",
    ),
    (
        "00" * 31 + "01",
        "00" * 12,
        1,
        "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
        "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0",
    ),
    (
        "00ff" + "00" * 30,
        "00" * 12,
        2,
        "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
        "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096",
    ),
    (
        "00" * 32,
        "00" * 11 + "02",
        0,
        "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
        "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d",
    ),
]

# Appendix A.2: encryption test vectors #1..#3 (key, nonce, counter, plaintext, ciphertext).
RFC_A2 = [
    (
        "00" * 32,
        "00" * 12,
        0,
        "00" * 64,
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586",
    ),
    (
        "00" * 31 + "01",
        "00" * 11 + "02",
        1,
        "416e79207375626d697373696f6e20746f20746865204945544620696e74656e"
        "6465642062792074686520436f6e7472696275746f7220666f72207075626c69"
        "636174696f6e20617320616c6c206f722070617274206f6620616e2049455446"
        "20496e7465726e65742d4472616674206f722052464320616e6420616e792073"
        "746174656d656e74206d6164652077697468696e2074686520636f6e74657874"
        "206f6620616e204945544620616374697669747920697320636f6e7369646572"
        "656420616e20224945544620436f6e747269627574696f6e222e205375636820"
        "73746174656d656e747320696e636c756465206f72616c2073746174656d656e"
        "747320696e20494554462073657373696f6e732c2061732077656c6c20617320"
        "7772697474656e20616e6420656c656374726f6e696320636f6d6d756e696361"
        "74696f6e73206d61646520617420616e792074696d65206f7220706c6163652c"
        "207768696368206172652061646472657373656420746f",
        "a3fbf07df3fa2fde4f376ca23e82737041605d9f4f4f57bd8cff2c1d4b7955ec"
        "2a97948bd3722915c8f3d337f7d370050e9e96d647b7c39f56e031ca5eb6250d"
        "4042e02785ececfa4b4bb5e8ead0440e20b6e8db09d881a7c6132f420e527950"
        "42bdfa7773d8a9051447b3291ce1411c680465552aa6c405b7764d5e87bea85a"
        "d00f8449ed8f72d0d662ab052691ca66424bc86d2df80ea41f43abf937d3259d"
        "c4b2d0dfb48a6c9139ddd7f76966e928e635553ba76c5c879d7b35d49eb2e62b"
        "0871cdac638939e25e8a1e0ef9d5280fa8ca328b351c3c765989cbcf3daa8b6c"
        "cc3aaf9f3979c92b3720fc88dc95ed84a1be059c6499b9fda236e7e818b04b0b"
        "c39c1e876b193bfe5569753f88128cc08aaa9b63d1a16f80ef2554d7189c411f"
        "5869ca52c5b83fa36ff216b9c1d30062bebcfd2dc5bce0911934fda79a86f6e6"
        "98ced759c3ff9b6477338f3da4f9cd8514ea9982ccafb341b2384dd902f3d1ab"
        "7ac61dd29c6f21ba5b862f3730e37cfdc4fd806c22f221",
    ),
    (
        "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
        "00" * 11 + "02",
        42,
        "2754776173206272696c6c69672c20616e642074686520736c6974687920746f"
        "7665730a446964206779726520616e642067696d626c6520696e207468652077"
        "6162653a0a416c6c206d696d737920776572652074686520626f726f676f7665"
        "732c0a416e6420746865206d6f6d65207261746873206f757467726162652e",
        "62e6347f95ed87a45ffae7426f27a1df5fb69110044c0d73118effa95b01e5cf"
        "166d3df2d721caf9b21e5fb14c616871fd84c54f9d65b283196c7fe4f60553eb"
        "f39c6402c42234e32a356b3e764312a61a5532055716ead6962568f87d3f3f77"
        "04c6a8d1bcd1bf4d50d6154b6da731b187b58dfd728afa36757a797ac188d1",
    ),
]


def openssl_reference(key: bytes, nonce: bytes, num_bytes: int, counter: int) -> bytes:
    """Keystream straight from ``cryptography`` (the independent reference)."""
    iv = counter.to_bytes(4, "little") + nonce
    return Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor().update(bytes(num_bytes))


def xor(a: np.ndarray, b: bytes) -> bytes:
    return (a ^ np.frombuffer(b, dtype=np.uint8)).tobytes()


@pytest.mark.parametrize("engine", ENGINES)
def test_chacha20_keystream__rfc_2_3_2_block(engine: str) -> None:
    block = chacha20_keystream(RFC_2_3_2_KEY, RFC_2_3_2_NONCE, 64, counter=1, engine=engine)
    assert block.dtype == np.uint8
    assert block.tobytes() == RFC_2_3_2_BLOCK


@pytest.mark.parametrize("engine", ENGINES)
def test_chacha20_keystream__rfc_2_4_2_encryption(engine: str) -> None:
    stream = chacha20_keystream(RFC_2_3_2_KEY, RFC_2_4_2_NONCE, len(RFC_2_4_2_PLAINTEXT), counter=1, engine=engine)
    assert xor(stream, RFC_2_4_2_PLAINTEXT) == RFC_2_4_2_CIPHERTEXT


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("vector", range(len(RFC_A1)), ids=lambda i: f"A.1#{i + 1}")
def test_chacha20_keystream__rfc_a1_block_vectors(engine: str, vector: int) -> None:
    key, nonce, counter, expected = RFC_A1[vector]
    block = chacha20_keystream(bytes.fromhex(key), bytes.fromhex(nonce), 64, counter=counter, engine=engine)
    assert block.tobytes().hex() == expected


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("vector", range(len(RFC_A2)), ids=lambda i: f"A.2#{i + 1}")
def test_chacha20_keystream__rfc_a2_encryption_vectors(engine: str, vector: int) -> None:
    key, nonce, counter, plaintext, ciphertext = RFC_A2[vector]
    plaintext_bytes = bytes.fromhex(plaintext)
    stream = chacha20_keystream(bytes.fromhex(key), bytes.fromhex(nonce), len(plaintext_bytes), counter, engine)
    assert xor(stream, plaintext_bytes).hex() == ciphertext


# Few distinct lengths, so the jax engine compiles a handful of programs, not one per example.
LENGTHS = st.sampled_from([0, 1, 3, 4, 63, 64, 65, 127, 200, 1000])


@settings(max_examples=40, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=12, max_size=12),
    num_bytes=LENGTHS,
    counter=st.one_of(st.integers(0, 1000), st.integers(2**32 - 20, 2**32 - 16)),
)
def test_chacha20_keystream__engines_equal_openssl_reference(key: bytes, nonce: bytes, num_bytes: int, counter: int) -> None:
    expected = openssl_reference(key, nonce, num_bytes, counter)
    for engine in ENGINES:
        assert chacha20_keystream(key, nonce, num_bytes, counter, engine).tobytes() == expected, engine


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_keys=st.sampled_from([1, 3]),
    num_words=st.sampled_from([1, 16, 17, 100]),
    counter=st.integers(0, 2**32 - 7),
)
def test_keystream_words__batched_engines_bit_identical(seed: int, num_keys: int, num_words: int, counter: int) -> None:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, (num_keys, 32), dtype=np.uint8)
    nonces = rng.integers(0, 256, (num_keys, 12), dtype=np.uint8)
    by_openssl = keystream_words(keys, nonces, num_words, counter, "openssl")
    by_jax = keystream_words(keys, nonces, num_words, counter, "jax")
    assert by_openssl.dtype == by_jax.dtype == np.uint32
    assert by_openssl.shape == (num_keys, num_words)
    np.testing.assert_array_equal(by_openssl, by_jax)
    for row in range(num_keys):
        reference = openssl_reference(keys[row].tobytes(), nonces[row].tobytes(), 4 * num_words, counter)
        assert by_jax[row].astype("<u4").tobytes() == reference


def test_keystream_words_traced__many_chunks_equal_one_chunk() -> None:
    """The lax.map over chunks (used for long masks) stitches blocks in order."""
    rng = np.random.default_rng(7)
    keys = rng.integers(0, 256, (2, 32), dtype=np.uint8)
    nonces = rng.integers(0, 256, (2, 12), dtype=np.uint8)
    num_words = 16 * 5 + 3  # 6 blocks: 3 chunks of 2, the last partly dropped
    chunked = jax.jit(chacha20_jax.keystream_words_traced, static_argnums=(3, 4))(
        jnp.asarray(keys.view("<u4")), jnp.asarray(nonces.view("<u4")), jnp.uint32(5), num_words, 2
    )
    np.testing.assert_array_equal(np.asarray(chunked), keystream_words(keys, nonces, num_words, 5, "openssl"))


def test_keystream_words__counter_at_32_bit_limit() -> None:
    """The last block before the RFC's 32-bit counter wraps is allowed, one more is refused."""
    key, nonce = bytes(range(32)), bytes(range(12))
    for engine in ENGINES:
        last = chacha20_keystream(key, nonce, 64, counter=2**32 - 1, engine=engine)
        assert last.tobytes() == openssl_reference(key, nonce, 64, 2**32 - 1)
        with pytest.raises(ConfigurationError, match="32-bit counter"):
            chacha20_keystream(key, nonce, 65, counter=2**32 - 1, engine=engine)
        with pytest.raises(ConfigurationError, match="32-bit counter"):
            chacha20_keystream(key, nonce, 1, counter=2**32, engine=engine)
        with pytest.raises(ConfigurationError):
            chacha20_keystream(key, nonce, 1, counter=-1, engine=engine)


def test_chacha20_keystream__bad_arguments_raise() -> None:
    with pytest.raises(ConfigurationError, match="32-byte key"):
        chacha20_keystream(bytes(16), bytes(12), 8)
    with pytest.raises(ConfigurationError, match="12-byte nonce"):
        chacha20_keystream(bytes(32), bytes(8), 8)
    with pytest.raises(ConfigurationError, match="unknown PRG engine"):
        chacha20_keystream(bytes(32), bytes(12), 8, engine="numpy")
    with pytest.raises(ConfigurationError, match="shape"):
        keystream_words(np.zeros((2, 16), np.uint8), np.zeros((2, 12), np.uint8), 4)


def test_default_engine__follows_backend_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(chacha20.ENV_ENGINE, raising=False)
    expected = "openssl" if jax.default_backend() == "cpu" else "jax"
    assert chacha20.default_engine() == expected
    monkeypatch.setenv(chacha20.ENV_ENGINE, "jax")
    assert chacha20.default_engine() == "jax"
    monkeypatch.setenv(chacha20.ENV_ENGINE, "OpenSSL")
    assert chacha20.default_engine() == "openssl"
    monkeypatch.setenv(chacha20.ENV_ENGINE, "threefry")
    with pytest.raises(ConfigurationError, match=chacha20.ENV_ENGINE):
        chacha20.default_engine()


def test_keystream_words_device__no_recompile_on_second_call() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 256, (2, 32), dtype=np.uint8)
    nonces = rng.integers(0, 256, (2, 12), dtype=np.uint8)
    first = chacha20.keystream_words_device(keys, nonces, 40, counter=1)
    compiled = chacha20_jax._keystream_words_jit._cache_size()
    # Other keys, nonces and counter: same shapes, so the compiled program is reused.
    second = chacha20.keystream_words_device(keys[::-1].copy(), nonces[::-1].copy(), 40, counter=9)
    assert chacha20_jax._keystream_words_jit._cache_size() == compiled
    assert first.dtype == second.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(second)[1], keystream_words(keys[:1], nonces[:1], 40, 9, "openssl")[0])
