"""Which variants a PCA decomposes, and how it standardizes them, from the global counts.

After the census' counts round the coordinator knows, per union variant, the genotype
counts summed over the sites and how many sites flagged each variant as below their own
minimum minor allele count, and nothing else. From them alone it picks the variant
set: publishable (global minor allele count at least ``min_allele_count`` and no site's
flag, as the census publishes), typed at
every site (``typed_at_all_sites``: no sample left out of the four counts), call rate
at least ``min_call_rate``, MAF at least ``maf``, then at most one variant per
``window_bp`` window (highest MAF first, :func:`pipeline.stats.pca.thin_by_position`)
and at most ``max_variants`` evenly spaced ones. The thinning is a deterministic
stand-in for LD pruning: true pruning needs cross-site correlations between nearby
variants, i.e. extra secure-sum rounds of per-window covariance matrices.

The standardization ``(g - 2p) / sqrt(2p(1-p))`` uses the global ``p``, so every site
standardizes identically; its sums of squares give the total variance and the bounds
of every later contribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.analyses.census import COUNT_FIELDS, FLAG_FIELD, check_counts, minor_count
from pipeline.analyses.pca.state import PcaParameters, Standardization, VariantSelection
from pipeline.errors import InputError
from pipeline.harmonize.variant_ids import parse_variant_ids
from pipeline.stats import pca as linalg

__all__ = ["select_variants"]


def select_variants(
    parameters: PcaParameters, union: Sequence[str], total: Mapping[str, np.ndarray], num_sites: int
) -> tuple[VariantSelection, Standardization]:
    """The variant set and its standardization from the counts round's total.

    Args:
        parameters: the job's filters (``maf``, ``min_call_rate``, ``window_bp``...).
        union: the census' variant union (sorted keys ``contig:pos:ref:alt``).
        total: the summed counts: the four :data:`~pipeline.analyses.census.COUNT_FIELDS`
            and the sites' ``below_min`` flags (per union variant), and ``n_samples``.
        num_sites: sites whose counts the total holds.

    Raises:
        InputError: fewer than ``k`` variants pass (names the filters to lower), or a
            union key is not ``contig:pos:ref:alt``.
        ProtocolError: counts no honest sites can give (:func:`~pipeline.analyses.census.check_counts`).
    """
    p = parameters
    ids = np.asarray(union, dtype=str)
    counts = {name: np.asarray(total[name], np.int64) for name in COUNT_FIELDS}
    num_samples = int(np.asarray(total["n_samples"]).reshape(-1)[0])
    below_min = np.asarray(total[FLAG_FIELD], np.int64)
    check_counts(counts, num_samples, union, below_min=below_min, num_sites=num_sites)
    hom_ref, het, hom_alt, missing = (counts[name] for name in COUNT_FIELDS)
    called = hom_ref + het + hom_alt
    allele_count = het + 2 * hom_alt
    allele_number = 2 * called
    minor = minor_count(called, allele_count)
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = np.where(allele_number > 0, allele_count / np.maximum(allele_number, 1), np.nan)
    maf = np.minimum(frequency, 1.0 - frequency)
    eligible = (minor >= p.min_allele_count) & (below_min == 0) & (called >= p.min_call_rate * num_samples) & (minor > 0)
    if p.typed_at_all_sites:
        eligible &= called + missing == num_samples
    contigs, position, _, _ = parse_variant_ids(ids.tolist())
    chromosome = np.array(contigs, dtype=str)
    keep = linalg.thin_by_position(chromosome, position, maf, window_bp=p.window_bp, min_maf=p.maf, eligible=eligible)
    index = np.flatnonzero(keep)
    if index.size > p.max_variants:
        by_position = index[np.lexsort((position[index], chromosome[index]))]
        chosen = by_position[np.unique(np.linspace(0, index.size - 1, p.max_variants).round().astype(np.int64))]
        index = np.sort(chosen)
    if index.size < p.k:
        raise InputError(
            f"pca: only {index.size} variants pass the filters (of {ids.size} shared: {int(eligible.sum())} eligible, "
            f"then thinned by window_bp={p.window_bp}, maf={p.maf}); need at least k={p.k}: lower window_bp or maf"
        )
    mean, inv_scale = linalg.standardization(hom_ref[index], het[index], hom_alt[index])
    squares = linalg.standardized_sum_of_squares(hom_ref[index], het[index], hom_alt[index], mean, inv_scale)
    selection = VariantSelection(tuple(ids[index].tolist()), shared=int(ids.size), eligible=int(eligible.sum()),
                                 num_sites=int(num_sites), num_samples=num_samples)
    return selection, Standardization(mean, inv_scale, trace=float(squares.sum()), max_column_square=float(squares.max()))
