"""The mask PRG of secure aggregation: a keystream read as ring elements.

A round's masks come from one of two PRGs (:data:`pipeline.secagg.prg.PRGS`, the
job's ``mask_prg``):

* ``"aes128-ctr"`` (the default): the AES-128-CTR keystream with key = the 32-byte
  seed's first 16 bytes and a 128-bit big-endian counter block starting at 0 (the
  keystream is AES_k(0) || AES_k(1) || ...). 128-bit keys match the protocol's X25519
  and P-256 (about 128-bit security each), and CPUs with AES instructions make this
  keystream about 1.5 times as fast as ChaCha20's (10 against 6.5 GB/s on one core of
  the development machine): it is most of a round's cost. OpenSSL engine only.
* ``"chacha20"``: the RFC 8439 ChaCha20 keystream with key = the 32-byte seed, nonce =
  12 zero bytes and initial block counter 0. Both engines make it, so a coordinator
  with an accelerator regenerates masks there; it is also the faster PRG on CPUs
  without AES instructions.

Convention (both PRGs, every engine, every caller):

* Ring.R32: element ``i`` is keystream word ``i`` (bytes ``4i..4i+3``, little-endian).
  Ring.R64: element ``i`` is words ``2i`` (low) and ``2i+1`` (high), i.e. bytes
  ``8i..8i+7`` read as a little-endian uint64.
* Seeds are single-use: the protocol derives them per (federation, job, round, pair)
  by HKDF, so the fixed nonce (ChaCha20) or first counter block (AES-CTR) never
  repeats under one key.

A sign of +1 adds a mask, -1 subtracts it (mod 2^bits), so ``+seed`` and ``-seed``
cancel exactly, whichever engine made each of them.

Engines (:func:`mask_engine`; :mod:`pipeline.secagg.chacha20`): ``"openssl"`` adds
masks in place, streaming each seed's keystream through one cache-sized scratch buffer,
chunk by chunk (for each chunk of the vector, every seed in turn), so no full-length
temporary exists and the vector is read and written once whatever the number of
seeds; :func:`masked_copy` reads the input while adding the first mask, so a site's
masked copy of its input costs no copy pass. ``"jax"`` (ChaCha20 only) makes all masks
and their signed sum in one jitted call (:mod:`pipeline.secagg.kernels`, imported when
that engine is chosen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from pipeline import large_arrays
from pipeline.errors import ConfigurationError
from pipeline.secagg import chacha20
from pipeline.encoding import Ring
from pipeline.secagg.prg import AES_CTR, CHACHA20, DEFAULT_PRG, check_prg

SEED_BYTES = chacha20.KEY_BYTES
MASK_NONCE = bytes(chacha20.NONCE_BYTES)
MASK_COUNTER = 0

AES_KEY_BYTES = 16
_AES_FIRST_COUNTER_BLOCK = bytes(16)


def mask_engine(prg: str, engine: str | None) -> str:
    """The engine that makes ``prg``'s masks: ``engine`` if given, else the PRG's default.

    ChaCha20 masks follow :func:`chacha20.resolve_engine` (the JAX kernel when JAX runs
    on an accelerator). AES-CTR masks are made by OpenSSL only, whatever
    ``GENOFED_PRG_ENGINE`` says.

    Raises:
        ConfigurationError: an unknown PRG or engine, or ``"jax"`` for AES-CTR masks.
    """
    if check_prg(prg) == CHACHA20:
        return chacha20.resolve_engine(engine)
    if engine not in (None, "openssl"):
        raise ConfigurationError(
            f"mask engine {engine!r} cannot make {AES_CTR} masks (OpenSSL only); "
            f"use mask_prg {CHACHA20!r} to regenerate masks with the jax engine"
        )
    return "openssl"


def mask_encryptor(prg: str, seed: bytes) -> Any:
    """An OpenSSL encryptor whose output on zeros is the mask keystream of ``seed`` (successive calls continue it)."""
    if check_prg(prg) == AES_CTR:
        key = bytes(seed[:AES_KEY_BYTES])
        return Cipher(algorithms.AES(key), modes.CTR(_AES_FIRST_COUNTER_BLOCK)).encryptor()
    return chacha20.openssl_encryptor(bytes(seed), MASK_NONCE, MASK_COUNTER)


def parse_seeds(seeds: Sequence[bytes], signs: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Check seeds and signs; return them as (m, 32) uint8 keys and (m,) bool "negate" flags.

    Raises:
        ConfigurationError: unequal lengths, a seed that is not 32 bytes, a sign not +-1.
    """
    seeds = list(seeds)
    signs = [int(s) for s in signs]
    if len(seeds) != len(signs):
        raise ConfigurationError(f"got {len(seeds)} seeds but {len(signs)} signs; give one sign (+1 or -1) per seed")
    for index, seed in enumerate(seeds):
        if not isinstance(seed, (bytes, bytearray, memoryview)) or len(seed) != SEED_BYTES:
            # The seed itself is secret: the message names its position and size only.
            size = len(seed) if isinstance(seed, (bytes, bytearray, memoryview)) else type(seed).__name__
            raise ConfigurationError(f"mask seed {index} must be {SEED_BYTES} bytes, got {size}")
    bad = [s for s in signs if s not in (1, -1)]
    if bad:
        raise ConfigurationError(f"mask signs must be +1 or -1, got {bad[:5]}")
    keys = np.frombuffer(b"".join(bytes(s) for s in seeds), dtype=np.uint8).reshape(len(seeds), SEED_BYTES)
    return keys, np.asarray(signs, dtype=np.int64) < 0


def _check_vector(vector: Any, prg: str, *, writeable: bool = True) -> Ring:
    if not isinstance(vector, np.ndarray) or vector.ndim != 1:
        raise ConfigurationError(
            "masks are added to a 1-D numpy ring vector (uint32 or uint64); encode the values first"
        )
    ring = Ring.from_dtype(vector.dtype)
    if not (vector.flags.c_contiguous and (vector.flags.writeable or not writeable)):
        raise ConfigurationError(
            "masks are added to a C-contiguous array (np.ascontiguousarray), writeable for add_masks, which works in place"
        )
    check_mask_bytes(prg, vector.nbytes)
    return ring


def check_mask_bytes(prg: str, num_bytes: int) -> None:
    """Refuse a mask longer than ``prg`` makes under one seed (ChaCha20: 2^32 blocks; AES-CTR: no practical limit)."""
    if check_prg(prg) == CHACHA20:
        chacha20.check_counter(MASK_COUNTER, -(-num_bytes // chacha20.BLOCK_BYTES))


def add_masks(
    vector: np.ndarray, seeds: Sequence[bytes], signs: Sequence[int], *, prg: str = DEFAULT_PRG,
    engine: str | None = None,
) -> np.ndarray:
    """Add ``sign * mask(seed)`` for every seed to a ring vector, in place, and return it.

    Args:
        vector: 1-D uint32 (Ring.R32) or uint64 (Ring.R64), C-contiguous; modified.
        seeds: 32-byte mask seeds.
        signs: +1 or -1 per seed.
        prg: the mask PRG (:data:`pipeline.secagg.prg.PRGS`).
        engine: ``"openssl"``, ``"jax"`` or None for the PRG's default (:func:`mask_engine`).

    Raises:
        ConfigurationError: bad vector, seeds, signs, PRG or engine.
    """
    _check_vector(vector, prg)
    return _masked_into(vector, vector, seeds, signs, prg, engine)


def masked_copy(
    vector: np.ndarray, seeds: Sequence[bytes], signs: Sequence[int], *, prg: str = DEFAULT_PRG,
    engine: str | None = None,
) -> np.ndarray:
    """``vector`` plus ``sign * mask(seed)`` for every seed, as a new array; ``vector`` is left alone.

    The copy costs no pass of its own: the first mask is added while reading ``vector``.
    Same arguments and errors as :func:`add_masks` (``vector`` need not be writeable).
    """
    _check_vector(vector, prg, writeable=False)
    return _masked_into(vector, large_arrays.empty(vector.size, vector.dtype), seeds, signs, prg, engine)


def _masked_into(
    source: np.ndarray, out: np.ndarray, seeds: Sequence[bytes], signs: Sequence[int], prg: str, engine: str | None
) -> np.ndarray:
    """Write ``source`` plus the signed masks into ``out`` (which may be ``source``) and return ``out``."""
    keys, negate = parse_seeds(seeds, signs)
    engine = mask_engine(prg, engine)
    if keys.shape[0] == 0 or source.size == 0:
        np.copyto(out, source)
    elif engine == "openssl":
        _add_masks_openssl(source, out, [mask_encryptor(prg, key.tobytes()) for key in keys], negate)
    else:
        np.add(source, mask_sum(seeds, signs, source.size, Ring.from_dtype(source.dtype), prg=prg, engine=engine), out=out)
    return out


def _add_masks_openssl(source: np.ndarray, out: np.ndarray, encryptors: Sequence[Any], negate: np.ndarray) -> None:
    """Stream every seed's keystream through one scratch buffer, adding it to ``source`` into ``out``.

    The outer loop runs over cache-sized chunks of the vector and the inner loop over
    seeds, so each chunk stays in cache while all masks are added to it; the first mask
    reads the chunk from ``source``, the others update ``out`` in place.
    """
    scratch = np.empty(chacha20.STREAM_CHUNK_BYTES, dtype=np.uint8)
    elements = scratch.view(np.dtype(out.dtype).newbyteorder("<"))
    step = elements.size
    operations = [np.subtract if n else np.add for n in negate]
    for start in range(0, out.size, step):
        stop = min(start + step, out.size)
        count = stop - start
        nbytes = count * out.itemsize
        zeros = chacha20.ZERO_CHUNK[:nbytes]
        target = scratch[:nbytes]
        chunk = out[start:stop]
        mask = elements[:count]
        addend = source[start:stop]
        for encryptor, operation in zip(encryptors, operations):
            encryptor.update_into(zeros, target)
            operation(addend, mask, out=chunk)
            addend = chunk


def words_to_ring(words: Any, ring: Ring) -> np.ndarray:
    """Host view of ring words (uint32, little-endian pairs for R64) as ring elements."""
    words = np.ascontiguousarray(np.asarray(words), dtype="<u4")
    return words.view("<u8").astype(np.uint64, copy=False) if ring is Ring.R64 else words.astype(np.uint32, copy=False)


def mask_sum(
    seeds: Sequence[bytes], signs: Sequence[int], length: int, ring: Ring, *, prg: str = DEFAULT_PRG,
    engine: str | None = None,
) -> np.ndarray:
    """The signed sum of masks, ``sum_i signs[i] * mask(seeds[i])`` mod 2^bits.

    What the coordinator subtracts to unmask, and what a site adds to its vector.

    Returns:
        (length,) ring dtype.

    Raises:
        ConfigurationError: bad seeds, signs, length, PRG or engine.
    """
    if length < 0:
        raise ConfigurationError(f"mask length must be >= 0, got {length}")
    if not isinstance(ring, Ring):
        raise ConfigurationError(f"ring must be Ring.R32 or Ring.R64, got {ring!r}")
    keys, negate = parse_seeds(seeds, signs)
    engine = mask_engine(prg, engine)
    if engine == "openssl" or keys.shape[0] == 0 or length == 0:
        return add_masks(np.zeros(length, dtype=ring.dtype), seeds, signs, prg=prg, engine="openssl")
    check_mask_bytes(prg, length * ring.words * 4)
    # The JAX engine: imported when it is chosen.
    from pipeline.secagg import kernels

    return words_to_ring(kernels.mask_sum_device(keys, negate, length, ring), ring)


def unmask(
    total: np.ndarray,
    self_mask_seeds: Sequence[bytes],
    pair_seeds: Sequence[bytes],
    pair_signs: Sequence[int],
    ring: Ring,
    *,
    prg: str = DEFAULT_PRG,
    engine: str | None = None,
) -> np.ndarray:
    """Remove the surviving sites' self masks and the dropped sites' pairwise masks.

    ``total - sum PRG(self) - sum pair_signs[i] * PRG(pair_seeds[i])``: self masks were
    added with +1, and ``pair_signs[i]`` is the sign with which a surviving site added
    ``PRG(pair_seeds[i])`` to its masked input.

    Args:
        total: (d,) ring sum of the surviving sites' masked vectors.
        self_mask_seeds: the self-mask seed of every surviving site.
        pair_seeds: pairwise seeds between a surviving and a dropped site.
        pair_signs: the sign (+1/-1) with which the surviving site added each pair mask.
        ring: the job's ring (must match ``total``'s dtype).
        prg: the round's mask PRG (:data:`pipeline.secagg.prg.PRGS`).
        engine: ``"openssl"``, ``"jax"`` or None for the PRG's default (:func:`mask_engine`).

    Returns:
        (d,) the sum of the surviving sites' encoded inputs (a new array).

    Raises:
        ConfigurationError: bad shapes, dtype, seeds, signs, PRG or engine.
    """
    total = np.asarray(total)
    if total.ndim != 1 or total.dtype != ring.dtype:
        raise ConfigurationError(
            f"unmask expects a 1-D {ring.dtype} sum for {ring.name}, got shape {total.shape} dtype {total.dtype}"
        )
    seeds = list(self_mask_seeds) + list(pair_seeds)
    signs = [1] * len(self_mask_seeds) + [int(s) for s in pair_signs]
    if len(pair_signs) != len(pair_seeds):
        raise ConfigurationError(f"got {len(pair_seeds)} pair seeds but {len(pair_signs)} pair signs")
    keys, negate = parse_seeds(seeds, signs)
    if mask_engine(prg, engine) == "openssl" or keys.shape[0] == 0 or total.size == 0:
        return masked_copy(np.ascontiguousarray(total), seeds, [-s for s in signs], prg=prg, engine="openssl")
    check_mask_bytes(prg, total.nbytes)
    # The JAX engine: imported when it is chosen.
    from pipeline.secagg import kernels

    return words_to_ring(kernels.unmask_device(total, keys, negate, ring), ring)
