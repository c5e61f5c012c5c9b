"""The JAX engine of the genotype counts: pure, jitted kernels over an int8 block.

The same code runs on a site's CPU, on an accelerator, or under ``vmap`` over sites.
A jitted kernel compiles once per input shape. Chunks of a dataset hold different
numbers of variants, so :func:`tiled_counts` cuts a block into tiles of a few fixed
shapes (padding the last tile) and sums the tiles' results; a whole dataset then costs
at most a handful of compilations. :mod:`pipeline.stats.counts` checks the block,
chooses the engine and imports this module only when the JAX engine is chosen.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pipeline.stats.counts import MISSING, SampleCounts, VariantCounts, tile_rows


@jax.jit
def variant_genotype_counts(call_dosage: jax.Array) -> VariantCounts:
    """Counts hom-ref, het, hom-alt and missing calls of every variant (row).

    Args:
        call_dosage: int8 (variants, samples), ALT dosage 0/1/2, -1 missing.

    Returns:
        :class:`VariantCounts` of int32 arrays of shape (variants,).
    """
    def count(value: int) -> jax.Array:
        return jnp.sum(call_dosage == value, axis=1, dtype=jnp.int32)

    return VariantCounts(n_hom_ref=count(0), n_het=count(1), n_hom_alt=count(2), n_missing=count(MISSING))


@jax.jit
def sample_genotype_counts(call_dosage: jax.Array, variant_mask: jax.Array) -> SampleCounts:
    """Counts called, missing and heterozygous calls of every sample (column).

    Args:
        call_dosage: int8 (variants, samples), ALT dosage 0/1/2, -1 missing.
        variant_mask: bool (variants,); rows where it is False are ignored (padding).

    Returns:
        :class:`SampleCounts` of int32 arrays of shape (samples,).
    """
    rows = variant_mask[:, None]
    called = (call_dosage >= 0) & (call_dosage <= 2) & rows
    return SampleCounts(
        n_called=jnp.sum(called, axis=0, dtype=jnp.int32),
        n_missing=jnp.sum((call_dosage == MISSING) & rows, axis=0, dtype=jnp.int32),
        n_het=jnp.sum((call_dosage == 1) & rows, axis=0, dtype=jnp.int32),
    )



def tiled_counts(call_dosage: np.ndarray, tile_variants: int, *, with_samples: bool) -> tuple[VariantCounts, SampleCounts | None]:
    """Both count sets with the jitted kernels over padded tiles of :func:`tile_rows` rows (the JAX engine of
    :func:`pipeline.stats.counts.count_block`; int64 results)."""
    num_variants, num_samples = call_dosage.shape
    rows = tile_rows(num_variants, tile_variants)
    variant_parts: list[VariantCounts] = []
    sample_total = SampleCounts(*(np.zeros(num_samples, np.int64) for _ in SampleCounts._fields))
    for start in range(0, num_variants, rows):
        tile = call_dosage[start : start + rows]
        used = tile.shape[0]
        mask = np.zeros(rows, dtype=bool)
        mask[:used] = True
        if used < rows:
            tile = np.concatenate([tile, np.full((rows - used, num_samples), MISSING, np.int8)])
        per_variant = variant_genotype_counts(tile)
        variant_parts.append(VariantCounts(*(np.asarray(a)[:used].astype(np.int64) for a in per_variant)))
        if with_samples:
            per_sample = sample_genotype_counts(tile, mask)
            sample_total = SampleCounts(*(t + np.asarray(a, dtype=np.int64) for t, a in zip(sample_total, per_sample)))
    if variant_parts:
        variants = VariantCounts(*(np.concatenate(parts) for parts in zip(*variant_parts)))
    else:
        variants = VariantCounts(*(np.zeros(0, np.int64) for _ in VariantCounts._fields))
    return variants, (sample_total if with_samples else None)
