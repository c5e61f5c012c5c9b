"""Genotype counts over a dense (variants x samples) block of hard-call ALT dosages.

These are the sufficient statistics of local QC and of the federated variant census:
per variant, how many samples are hom-ref, het, hom-alt or missing; per sample, how
many calls it has and how many are heterozygous, from an int8 array (0, 1, 2 = ALT
dosage, -1 = missing; haploid calls arrive as 0/2, as plink stores them). They know
nothing of files.

Values outside {-1, 0, 1, 2} are counted in no class: a caller can detect them because
the four per-variant counts then add up to less than the number of samples.

:func:`count_block` and :func:`count_variants` have two engines with identical results:
``"jax"`` (pure JAX kernels in :mod:`pipeline.stats.counts_jax`, for accelerators,
imported when chosen) and ``"numpy"`` (comparisons into a
reused boolean tile of about a megabyte, summed as uint8 into int32 along the samples),
which XLA's CPU reductions of int8 comparisons trail by an order of magnitude.
:func:`default_engine` picks ``"numpy"`` when JAX's default backend is the CPU and
``"jax"`` otherwise; ``GENOFED_COUNT_ENGINE`` (``numpy`` or ``jax``) forces one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from pipeline.backends import choose_engine

if TYPE_CHECKING:
    import jax

MISSING = -1
"""Call dosage of a missing call (any allele of the call missing)."""

DEFAULT_TILE_VARIANTS = 4096
"""Largest number of variants handed to a kernel at once by :func:`count_block`."""

ENGINES = ("numpy", "jax")
ENV_ENGINE = "GENOFED_COUNT_ENGINE"

_NUMPY_TILE_BYTES = 1 << 20
"""Calls per tile of the NumPy engine: its boolean scratch stays in the CPU's L2 cache."""


class VariantCounts(NamedTuple):
    """Per-variant genotype counts, each of shape (variants,)."""

    n_hom_ref: jax.Array | np.ndarray
    n_het: jax.Array | np.ndarray
    n_hom_alt: jax.Array | np.ndarray
    n_missing: jax.Array | np.ndarray


class SampleCounts(NamedTuple):
    """Per-sample call counts over a set of variants, each of shape (samples,)."""

    n_called: jax.Array | np.ndarray
    n_missing: jax.Array | np.ndarray
    n_het: jax.Array | np.ndarray


def tile_rows(num_variants: int, tile_variants: int = DEFAULT_TILE_VARIANTS) -> int:
    """Rows of the tiles used for a block of ``num_variants`` rows.

    A power of two no larger than ``tile_variants``, so the set of shapes (and of
    compilations) stays small whatever the chunk sizes are.
    """
    if tile_variants < 1:
        raise ValueError(f"tile_variants must be at least 1, got {tile_variants}")
    if num_variants >= tile_variants:
        return tile_variants
    rows = 1
    while rows < num_variants:
        rows *= 2
    return rows


def default_engine() -> str:
    """The count engine to use when none is given: env ``GENOFED_COUNT_ENGINE``, else by JAX backend."""
    return choose_engine(None, engines=ENGINES, env_var=ENV_ENGINE, what="count")


def _parse_block(call_dosage: np.ndarray, engine: str | None) -> tuple[np.ndarray, str]:
    call_dosage = np.asarray(call_dosage)
    if call_dosage.ndim != 2:
        raise ValueError(f"call_dosage must be 2-D (variants, samples), got shape {call_dosage.shape}")
    if call_dosage.dtype != np.int8:
        raise ValueError(f"call_dosage must be int8, got {call_dosage.dtype}")
    return call_dosage, choose_engine(engine, engines=ENGINES, env_var=ENV_ENGINE, what="count")


def _numpy_counts(call_dosage: np.ndarray, *, with_samples: bool) -> tuple[VariantCounts, SampleCounts | None]:
    """Both count sets with NumPy, tile by tile (the CPU engine; int64 results)."""
    num_variants, num_samples = call_dosage.shape
    rows = max(1, _NUMPY_TILE_BYTES // max(1, num_samples))
    per_variant = np.zeros((4, num_variants), np.int32)
    per_sample = np.zeros((3, num_samples), np.int64) if with_samples else None
    scratch = np.empty((min(rows, num_variants), num_samples), bool)
    flags = scratch.view(np.uint8)
    codes = call_dosage.view(np.uint8)  # -1 reads 255, so "called" is codes <= 2
    for start in range(0, num_variants, rows):
        tile = call_dosage[start : start + rows]
        used = tile.shape[0]
        for row, value in enumerate((0, 1, 2, MISSING)):
            np.equal(tile, value, out=scratch[:used])
            np.add.reduce(flags[:used], axis=1, dtype=np.int32, out=per_variant[row, start : start + used])
            if per_sample is not None and value == 1:
                per_sample[2] += np.add.reduce(flags[:used], axis=0, dtype=np.int32)
            if per_sample is not None and value == MISSING:
                per_sample[1] += np.add.reduce(flags[:used], axis=0, dtype=np.int32)
        if per_sample is not None:
            np.less_equal(codes[start : start + used], 2, out=scratch[:used])
            per_sample[0] += np.add.reduce(flags[:used], axis=0, dtype=np.int32)
    variants = VariantCounts(*(row.astype(np.int64) for row in per_variant))
    return variants, (SampleCounts(*per_sample) if per_sample is not None else None)


def count_block(
    call_dosage: np.ndarray, *, tile_variants: int = DEFAULT_TILE_VARIANTS, engine: str | None = None
) -> tuple[VariantCounts, SampleCounts]:
    """Per-variant and per-sample counts of one block, as int64 NumPy arrays.

    With the ``"jax"`` engine, cuts the block into tiles of :func:`tile_rows` rows (the
    last one padded with masked rows), runs both kernels on each tile and concatenates
    (variants) or sums (samples) the results; memory is one tile on the device at a
    time. The ``"numpy"`` engine gives the same numbers faster on a CPU.

    Args:
        call_dosage: int8 (variants, samples), ALT dosage 0/1/2, -1 missing.
        tile_variants: the largest tile of the JAX engine, in variants.
        engine: ``"numpy"`` or ``"jax"``; None for :func:`default_engine`.

    Returns:
        (:class:`VariantCounts`, :class:`SampleCounts`) of int64 NumPy arrays.
    """
    variants, samples = _counts(call_dosage, tile_variants, engine, with_samples=True)
    assert samples is not None
    return variants, samples


def count_variants(
    call_dosage: np.ndarray, *, tile_variants: int = DEFAULT_TILE_VARIANTS, engine: str | None = None
) -> VariantCounts:
    """Per-variant counts only (what the census needs), as int64 NumPy arrays.

    The first half of :func:`count_block` (same arguments), without the per-sample sums.
    """
    return _counts(call_dosage, tile_variants, engine, with_samples=False)[0]


def _counts(call_dosage: np.ndarray, tile_variants: int, engine: str | None, *,
            with_samples: bool) -> tuple[VariantCounts, SampleCounts | None]:
    """The block checked, then counted by the chosen engine (the JAX one imported only when chosen)."""
    call_dosage, engine = _parse_block(call_dosage, engine)
    if engine == "numpy":
        return _numpy_counts(call_dosage, with_samples=with_samples)
    from pipeline.stats import counts_jax

    return counts_jax.tiled_counts(call_dosage, tile_variants, with_samples=with_samples)
