"""The jax engine of ChaCha20 (RFC 8439): the block function as a jitted, vectorized JAX kernel.

The 16-word state of many blocks at once, ``vmap`` over keys, chunked over blocks so the
working set stays in cache on a CPU and one large chunk keeps an accelerator busy; all
the masks a site or the coordinator needs come from one call, without moving keystream
through the host. Conventions, argument checks and the OpenSSL engine, which makes the
same bytes, are :mod:`pipeline.secagg.chacha20`'s; this module is imported only when the
jax engine is chosen, so a process on a CPU never loads JAX for its masks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.secagg.chacha20 import BLOCK_BYTES, BLOCK_WORDS, SIGMA, blocks_for_words


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
        *(jnp.full(shape, c, dtype=jnp.uint32) for c in SIGMA),
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
    num_chunks = max(1, -(-blocks_for_words(num_words) // chunk_blocks))
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
    return min(chunk, max(1, blocks_for_words(num_words)))


@functools.partial(jax.jit, static_argnames=("num_words", "chunk_blocks"))
def _keystream_words_jit(
    key_words: jax.Array, nonce_words: jax.Array, counter: jax.Array, *, num_words: int, chunk_blocks: int
) -> jax.Array:
    return keystream_words_traced(key_words, nonce_words, counter, num_words, chunk_blocks)


def keystream_words(keys: np.ndarray, nonces: np.ndarray, num_words: int, counter: int) -> jax.Array:
    """Keystream words of checked (m, 32) keys and (m, 12) nonces on the JAX device (see
    :func:`pipeline.secagg.chacha20.keystream_words_device`, which checks them)."""
    return _keystream_words_jit(
        jnp.asarray(keys.view("<u4")),
        jnp.asarray(nonces.view("<u4")),
        jnp.uint32(counter),
        num_words=num_words,
        chunk_blocks=chunk_blocks_for(keys.shape[0], num_words),
    )
