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

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from pipeline.backends import choose_engine
from pipeline.errors import ConfigurationError

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

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"


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


def _parse_batch(keys: Any, nonces: Any) -> tuple[np.ndarray, np.ndarray]:
    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    nonces = np.ascontiguousarray(nonces, dtype=np.uint8)
    if keys.ndim != 2 or keys.shape[1] != KEY_BYTES:
        raise ConfigurationError(f"keys must have shape (m, {KEY_BYTES}) uint8, got {keys.shape}")
    if nonces.shape != (keys.shape[0], NONCE_BYTES):
        raise ConfigurationError(f"nonces must have shape ({keys.shape[0]}, {NONCE_BYTES}) uint8, got {nonces.shape}")
    return keys, nonces


def _blocks_for_words(num_words: int) -> int:
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


# --- jax engine -----------------------------------------------------------------------------


def _rotl(x: jax.Array, n: int) -> jax.Array:
    return (x << jnp.uint32(n)) | (x >> jnp.uint32(32 - n))


def _quarter_round(a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array) -> tuple[jax.Array, ...]:
    a = a + b
    d = _rotl(d ^ a, 16)
    c = c + d
    b = _rotl(b ^ c, 12)
    a = a + b
    d = _rotl(d ^ a, 8)
    c = c + d
    b = _rotl(b ^ c, 7)
    return a, b, c, d


_COLUMNS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15))
_DIAGONALS = ((0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def _double_round(state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    words = list(state)
    for group in _COLUMNS + _DIAGONALS:
        quarter = _quarter_round(*(words[i] for i in group))
        for i, w in zip(group, quarter):
            words[i] = w
    return tuple(words)


def chacha20_blocks(key_words: jax.Array, nonce_words: jax.Array, counters: jax.Array) -> jax.Array:
    """RFC 8439 block function for one key and many counters (traceable, pure).

    Args:
        key_words: (8,) uint32, the key read little-endian.
        nonce_words: (3,) uint32, the nonce read little-endian.
        counters: (B,) uint32 block counters.

    Returns:
        (B, 16) uint32: each row is one 64-byte keystream block as little-endian words.
    """
    shape = counters.shape
    initial = (
        *(jnp.full(shape, c, dtype=jnp.uint32) for c in _SIGMA),
        *(jnp.broadcast_to(key_words[i], shape) for i in range(8)),
        counters.astype(jnp.uint32),
        *(jnp.broadcast_to(nonce_words[i], shape) for i in range(3)),
    )
    final = jax.lax.fori_loop(0, 10, lambda _, s: _double_round(s), initial)
    return jnp.stack([f + i for f, i in zip(final, initial)], axis=-1)


_blocks_batched = jax.vmap(chacha20_blocks, in_axes=(0, 0, None))


def keystream_words_traced(
    key_words: jax.Array,
    nonce_words: jax.Array,
    counter: jax.Array,
    num_words: int,
    chunk_blocks: int,
    reduce: Callable[[jax.Array], jax.Array] | None = None,
) -> jax.Array:
    """Keystream words for many keys (traceable; ``num_words``, ``chunk_blocks`` static).

    Blocks are produced ``chunk_blocks`` at a time for all keys (``lax.map`` over
    chunks), so the 16 state arrays stay in cache on a CPU; on an accelerator one large
    chunk keeps the device busy. Padding blocks past ``num_words`` are computed and
    dropped (their counters may wrap; they never reach the output).

    Args:
        key_words: (m, 8) uint32.
        nonce_words: (m, 3) uint32.
        counter: uint32 scalar, the first block counter (traced: no recompile per counter).
        num_words: words per key.
        chunk_blocks: blocks per chunk.
        reduce: optional map of one chunk's words (m, chunk_blocks * 16) to
            (chunk_blocks * 16,) words, applied before the next chunk is made, so that a
            combination of m keystreams (the signed sum of masks) never holds m full
            keystreams in memory.

    Returns:
        (m, num_words) uint32, or (num_words,) uint32 with ``reduce``.
    """
    m = key_words.shape[0]
    num_chunks = max(1, -(-_blocks_for_words(num_words) // chunk_blocks))
    offsets = jnp.arange(chunk_blocks, dtype=jnp.uint32)
    counter = jnp.asarray(counter, dtype=jnp.uint32)

    def one_chunk(chunk: jax.Array) -> jax.Array:
        counters = counter + chunk * jnp.uint32(chunk_blocks) + offsets
        words = _blocks_batched(key_words, nonce_words, counters).reshape(m, chunk_blocks * BLOCK_WORDS)
        return words if reduce is None else reduce(words)

    if num_chunks == 1:
        out = one_chunk(jnp.uint32(0))
        return out[..., :num_words]
    per_chunk = jax.lax.map(one_chunk, jnp.arange(num_chunks, dtype=jnp.uint32))  # (C, [m,] chunk words)
    if reduce is None:
        return jnp.moveaxis(per_chunk, 0, 1).reshape(m, -1)[:, :num_words]
    return per_chunk.reshape(-1)[:num_words]


def chunk_blocks_for(num_keys: int, num_words: int, backend: str | None = None) -> int:
    """Blocks per chunk: ~256 KiB of state on a CPU (stays in L2), ~256 MiB on an accelerator.

    A power of two when the request spans several chunks; exactly the blocks needed
    when one chunk holds the whole request, so no work is padded away.
    """
    backend = backend or jax.default_backend()
    budget_bytes = (256 << 10) if backend == "cpu" else (256 << 20)
    per_block = max(1, num_keys) * BLOCK_BYTES
    chunk = max(16, budget_bytes // per_block)
    chunk = 1 << (chunk.bit_length() - 1)
    return min(chunk, max(1, _blocks_for_words(num_words)))


@functools.partial(jax.jit, static_argnames=("num_words", "chunk_blocks"))
def _keystream_words_jit(
    key_words: jax.Array, nonce_words: jax.Array, counter: jax.Array, *, num_words: int, chunk_blocks: int
) -> jax.Array:
    return keystream_words_traced(key_words, nonce_words, counter, num_words, chunk_blocks)


def keystream_words_device(
    keys: Any, nonces: Any, num_words: int, counter: int = 0
) -> jax.Array:
    """Keystream words for many keys on the JAX device, left there (no host copy).

    Same as :func:`keystream_words` with the jax engine, but returns a ``jax.Array``
    for callers that keep working on the device (the coordinator's kernels).
    """
    keys, nonces = _parse_batch(keys, nonces)
    check_counter(counter, _blocks_for_words(num_words))
    return _keystream_words_jit(
        jnp.asarray(keys.view("<u4")),
        jnp.asarray(nonces.view("<u4")),
        jnp.uint32(counter),
        num_words=int(num_words),
        chunk_blocks=chunk_blocks_for(keys.shape[0], num_words),
    )


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
    keys, nonces = _parse_batch(keys, nonces)
    if num_words < 0:
        raise ConfigurationError(f"num_words must be >= 0, got {num_words}")
    check_counter(counter, _blocks_for_words(num_words))
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
