"""ChaCha20 keystream (RFC 8439): a mask PRG with two bit-identical engines.

Secure aggregation needs masks that are (a) cryptographically pseudorandom, so a
masked vector reveals nothing, and (b) exactly reproducible by the coordinator from a
recovered seed, so a dropped site's masks cancel. ChaCha20 gives both; ``jax.random``
(threefry) gives neither guarantee and never generates masks. A job's masks are
ChaCha20 when it names ``mask_prg: chacha20`` (:mod:`pipeline.secagg.masks`): the PRG
with an accelerator engine, for a coordinator that regenerates masks on a GPU. The
default, AES-128-CTR, is faster on CPUs with AES instructions and has the OpenSSL
engine only.

Engines:

* ``"openssl"``: OpenSSL's ChaCha20 through ``cryptography``, streamed straight into
  preallocated numpy arrays. The fastest choice on a CPU.
* ``"jax"``: a jitted, vectorized JAX kernel over uint32 words (the 16-word state of
  many blocks at once, ``vmap`` over keys, chunked over blocks so the working set stays
  in cache), so all the masks a site or the coordinator needs come from one call on an
  accelerator, without moving keystream through the host.

The jax engine lives in :mod:`pipeline.secagg.chacha20_jax`, imported when it is chosen.
:func:`default_engine` picks ``"jax"`` when JAX's default backend is not the CPU and
``"openssl"`` otherwise; the environment variable ``GENOFED_PRG_ENGINE`` (``openssl`` or
``jax``) or an explicit ``engine=`` argument forces one. Both engines produce the same
bytes, so a mask added by one engine is cancelled by the same mask from the other.

The jax engine compiles one program per (number of keys, number of words, chunk size);
keys, nonces and the counter are traced arguments, so a new round with new seeds and
the same shapes reuses the compiled program.

Conventions:

* key: 32 bytes; nonce: 12 bytes; counter: the RFC's 32-bit initial block counter.
  State words are ``constants | key (8 LE words) | counter | nonce (3 LE words)``.
* Keystream bytes are the state words serialized little-endian, block after block;
  :func:`keystream_words` returns those words as uint32 (byte ``4i..4i+3`` is word ``i``).
* OpenSSL treats the first 8 bytes of its 16-byte IV as a 64-bit counter that carries
  into the nonce's first word, while RFC 8439's counter is 32-bit and the JAX kernel
  wraps at 2^32. To keep both engines equal to the RFC, a request must satisfy
  ``counter + number_of_blocks <= 2^32`` (number_of_blocks = ``ceil(bytes / 64)``);
  anything beyond raises :class:`~pipeline.errors.ConfigurationError`. That is 256 GiB
  of keystream per (key, nonce): more than any mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from pipeline.backends import choose_engine
from pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    import jax

ENGINES = ("openssl", "jax")
ENV_ENGINE = "GENOFED_PRG_ENGINE"
KEY_BYTES = 32
NONCE_BYTES = 12
BLOCK_BYTES = 64
BLOCK_WORDS = 16
MAX_BLOCKS = 1 << 32

# Scratch size for streaming: large enough that per-call overhead vanishes, small
# enough to stay in L2 next to the destination chunk.
STREAM_CHUNK_BYTES = 256 * 1024
# OpenSSL encrypts these zeros, so its output is the keystream; a memoryview slices without copying.
ZERO_CHUNK = memoryview(bytes(STREAM_CHUNK_BYTES))

SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


# --- engine selection and argument parsing ---------------------------------------------


def default_engine() -> str:
    """The engine to use when none is given: env ``GENOFED_PRG_ENGINE``, else by JAX backend."""
    return choose_engine(None, engines=ENGINES, env_var=ENV_ENGINE, what="PRG")


def resolve_engine(engine: str | None) -> str:
    """``engine`` checked, or :func:`default_engine` when None."""
    return choose_engine(engine, engines=ENGINES, env_var=ENV_ENGINE, what="PRG")


def check_counter(counter: int, num_blocks: int) -> None:
    """Refuse requests that would run past the RFC's 32-bit block counter.

    Raises:
        ConfigurationError: if ``counter`` is negative or ``counter + num_blocks > 2^32``.
    """
    if counter < 0 or counter + num_blocks > MAX_BLOCKS:
        raise ConfigurationError(
            f"ChaCha20 block counter {counter} + {num_blocks} blocks exceeds the 32-bit counter of RFC 8439 "
            f"(at most 2^32 blocks per key and nonce); start at a lower counter, request fewer bytes, "
            f"or use a fresh nonce"
        )


def parse_batch(keys: Any, nonces: Any) -> tuple[np.ndarray, np.ndarray]:
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    nonces = np.ascontiguousarray(nonces, dtype=np.uint8)
    if keys.ndim != 2 or keys.shape[1] != KEY_BYTES:
        raise ConfigurationError(f"keys must have shape (m, {KEY_BYTES}) uint8, got {keys.shape}")
    if nonces.shape != (keys.shape[0], NONCE_BYTES):
        raise ConfigurationError(f"nonces must have shape ({keys.shape[0]}, {NONCE_BYTES}) uint8, got {nonces.shape}")
    return keys, nonces


def blocks_for_words(num_words: int) -> int:
    return -(-num_words // BLOCK_WORDS)


# --- openssl engine ----------------------------------------------------------------------


def openssl_encryptor(key: bytes, nonce: bytes, counter: int = 0) -> Any:
    """A ``cryptography`` ChaCha20 encryptor positioned at block ``counter``.

    Encrypting zeros yields the keystream; successive ``update_into`` calls continue it,
    which is what lets callers stream a long keystream through a small buffer.
    """
    iv = int(counter).to_bytes(4, "little") + bytes(nonce)
    return Cipher(algorithms.ChaCha20(bytes(key), iv), mode=None).encryptor()


def stream_into(encryptor: Any, out: np.ndarray) -> None:
    """Write the next ``out.nbytes`` keystream bytes into ``out`` (C-contiguous), chunk by chunk."""
    view = out.reshape(-1).view(np.uint8)
    for start in range(0, view.size, STREAM_CHUNK_BYTES):
        stop = min(start + STREAM_CHUNK_BYTES, view.size)
        encryptor.update_into(ZERO_CHUNK[: stop - start], view[start:stop])


def _keystream_words_openssl(keys: np.ndarray, nonces: np.ndarray, num_words: int, counter: int) -> np.ndarray:
    out = np.empty((keys.shape[0], num_words), dtype="<u4")
    for row in range(keys.shape[0]):
        stream_into(openssl_encryptor(keys[row].tobytes(), nonces[row].tobytes(), counter), out[row])
    return out.astype(np.uint32, copy=False)


def keystream_words_device(keys: Any, nonces: Any, num_words: int, counter: int = 0) -> jax.Array:
    """Keystream words for many keys on the JAX device, left there (no host copy).

    Same as :func:`keystream_words` with the jax engine, but returns a ``jax.Array``
    for callers that keep working on the device (the coordinator's kernels).
    """
    # The JAX engine: imported when it is chosen.
    from pipeline.secagg import chacha20_jax

    keys, nonces = parse_batch(keys, nonces)
    check_counter(counter, blocks_for_words(num_words))
    return chacha20_jax.keystream_words(keys, nonces, int(num_words), counter)


# --- public entry points --------------------------------------------------------------------


def keystream_words(
    keys: Any, nonces: Any, num_words: int, counter: int = 0, engine: str | None = None
) -> np.ndarray:
    """ChaCha20 keystream for many (key, nonce) pairs at once, as uint32 words.

    Args:
        keys: (m, 32) uint8.
        nonces: (m, 12) uint8.
        num_words: words of keystream per key (4 bytes each).
        counter: first block counter, shared by all keys.
        engine: ``"openssl"``, ``"jax"`` or None for :func:`default_engine`.

    Returns:
        (m, num_words) uint32; row ``i`` read as little-endian bytes is the RFC 8439
        keystream of ``keys[i], nonces[i]`` from block ``counter``.

    Raises:
        ConfigurationError: bad shapes, unknown engine, or ``counter + blocks > 2^32``.
    """
    engine = resolve_engine(engine)
    keys, nonces = parse_batch(keys, nonces)
    if num_words < 0:
        raise ConfigurationError(f"num_words must be >= 0, got {num_words}")
    check_counter(counter, blocks_for_words(num_words))
    if keys.shape[0] == 0 or num_words == 0:
        return np.zeros((keys.shape[0], num_words), dtype=np.uint32)
    if engine == "openssl":
        return _keystream_words_openssl(keys, nonces, num_words, counter)
    return np.asarray(keystream_words_device(keys, nonces, num_words, counter))


def chacha20_keystream(
    key: bytes, nonce: bytes, num_bytes: int, counter: int = 0, engine: str | None = None
) -> np.ndarray:
    """The RFC 8439 ChaCha20 keystream of one key and nonce, as uint8.

    A thin wrapper over :func:`keystream_words`. XOR it with a plaintext to get the
    RFC's ciphertext.

    Args:
        key: 32 bytes.
        nonce: 12 bytes.
        num_bytes: length of the keystream.
        counter: initial 32-bit block counter (RFC 8439 uses 1 for encryption).
        engine: ``"openssl"``, ``"jax"`` or None for :func:`default_engine`.

    Raises:
        ConfigurationError: bad key or nonce length, or ``counter + ceil(num_bytes/64) > 2^32``.
    """
    if len(key) != KEY_BYTES or len(nonce) != NONCE_BYTES:
        raise ConfigurationError(
            f"ChaCha20 needs a {KEY_BYTES}-byte key and a {NONCE_BYTES}-byte nonce, got {len(key)} and {len(nonce)}"
        )
    if num_bytes < 0:
        raise ConfigurationError(f"num_bytes must be >= 0, got {num_bytes}")
    check_counter(counter, -(-num_bytes // BLOCK_BYTES))
    words = keystream_words(
        np.frombuffer(key, dtype=np.uint8)[None],
        np.frombuffer(nonce, dtype=np.uint8)[None],
        -(-num_bytes // 4),
        counter,
        engine,
    )
    return words[0].astype("<u4", copy=False).view(np.uint8)[:num_bytes].copy()
