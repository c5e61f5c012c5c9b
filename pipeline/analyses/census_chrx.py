"""The census on chrX outside the pseudo-autosomal regions, where a male carries one X (plink2's rules).

Ingest stores a male's haploid call there as 0 or 2 (plink2's ``--xchr-model 2``), so the
census' four counts see him as a homozygote. plink2 counts him once instead:

* **allele counts** (``--freq``, ``--maf``, ``--mac``): a male is one allele, a female or a
  sample of unknown sex two (``allele_count = het + 2 hom_alt`` over the others, plus the
  males' ALT calls; a male het, impossible on a haploid X, counts as missing);
* **Hardy-Weinberg** (``--hwe``): the Graffelman-Weir exact test with males haploid and
  females diploid (:func:`pipeline.stats.hwe_x.hwe_x_exact_p`), samples of unknown sex left
  out. A site that reports no sex at all tests its chrX as an autosome (plink2 refuses such
  a file).

So for the union's variants on chrX outside the PARs of the job's ``assembly``
(:func:`x_rows`: public, from the IDs alone) each site also sends its males' and its
females' hom-ref, het and hom-alt counts (:data:`X_FIELDS`, reported sex from the samples
table's ``sex``, 1 male and 2 female: :func:`pipeline.dataset.reported_sex`). The
coordinator learns those sums (plink2 ``--hardy``'s ``.hardy.x`` publishes them too), and
computes the allele counts and the pooled test from them (:func:`x_allele_counts`). A site
that leaves a variant out (below its own minimum, counted the same way) sends zeros there,
as in every census field. A differentially private census sends none of this (its noise
is sized for the four counts) and counts chrX as an autosome.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.analyses.site_cache import SiteCache, dataset_blocks, dataset_fingerprint
from pipeline.assembly import non_par_x
from pipeline.dataset import Dataset, reported_sex, variants_non_par_x
from pipeline.harmonize.variant_ids import parse_variant_ids
from pipeline.stats.counts import count_variants
from pipeline.stats.hwe_x import hwe_x_exact_p

__all__ = ["FEMALE_FIELDS", "MALE_FIELDS", "X_FIELDS", "site_x_counts", "x_allele_counts", "x_hwe_p", "x_rows"]

GENOTYPE_FIELDS = ("n_hom_ref", "n_het", "n_hom_alt")
MALE_FIELDS = tuple(f"male_{name}" for name in GENOTYPE_FIELDS)
FEMALE_FIELDS = tuple(f"female_{name}" for name in GENOTYPE_FIELDS)
X_FIELDS = (*MALE_FIELDS, *FEMALE_FIELDS)
"""The counts round's fields over the union's chrX variants outside the PARs (in :func:`x_rows` order)."""


def x_rows(variant_ids: Sequence[str], assembly: str) -> np.ndarray:
    """Positions in ``variant_ids`` of the variants on chrX outside the PARs of ``assembly`` (only chrX keys are parsed)."""
    keys = np.asarray(variant_ids, dtype=str)
    if not keys.size:
        return np.zeros(0, np.int64)
    candidates = np.flatnonzero(np.char.startswith(keys, "chrX:") | np.char.startswith(keys, "X:"))
    if not candidates.size:
        return candidates.astype(np.int64)
    contigs, positions, _, _ = parse_variant_ids(keys[candidates].tolist())
    return candidates[non_par_x(np.asarray(contigs, dtype=object), positions, assembly)].astype(np.int64)


def site_x_counts(dataset: Dataset, cache: SiteCache, assembly: str, samples: np.ndarray | None = None
                  ) -> tuple[pa.Array, np.ndarray]:
    """The dataset's chrX variants outside the PARs and their males' and females' genotype counts.

    Only those rows of each block are counted (one pass over them); kept in ``cache``.

    Args:
        samples: (dataset samples,) bool, a subset to count (e.g. the controls); ``None``: all.

    Returns:
        (their IDs, int64 (6, variants) counts in :data:`X_FIELDS` order).
    """
    sex = reported_sex(dataset.samples())
    within = np.ones(len(sex), bool) if samples is None else np.asarray(samples, bool)
    male, female = within & (sex == 1), within & (sex == 2)

    def count() -> tuple[pa.Array, np.ndarray]:
        ids, parts = [], []
        for block in dataset_blocks(dataset, cache):
            variants = block.variants
            rows = np.flatnonzero(variants_non_par_x(variants, assembly))
            if not rows.size:
                continue
            calls = block.call_dosage[rows]
            ids.append(variants.column("variant_id").combine_chunks().take(pa.array(rows)))
            parts.append(np.vstack([np.stack(count_variants(np.compress(group, calls, axis=1)))[:3]
                                    for group in (male, female)]))
        counts = np.concatenate(parts, axis=1) if parts else np.zeros((len(X_FIELDS), 0), np.int64)
        return (pa.concat_arrays(ids) if ids else pa.array([], pa.string())), counts

    key = ("census.site_x_counts", assembly, None if samples is None else hashlib.sha256(within.tobytes()).hexdigest(),
           dataset_fingerprint(dataset))
    return cache.get(key, count)


def x_allele_counts(counts: Mapping[str, np.ndarray], x: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """ALT alleles and alleles called at chrX variants, a male counted once (plink2 ``--freq``).

    Args:
        counts: the four census counts of those variants (every sample).
        x: :data:`X_FIELDS` of the same variants.
    """
    hom_ref, het, hom_alt = (np.asarray(counts[name], np.int64) for name in GENOTYPE_FIELDS)
    male_ref, male_het, male_alt = (np.asarray(x[name], np.int64) for name in MALE_FIELDS)
    diploid_called = hom_ref + het + hom_alt - male_ref - male_het - male_alt
    allele_count = (het - male_het) + 2 * (hom_alt - male_alt) + male_alt
    return allele_count, 2 * diploid_called + male_ref + male_alt


def x_hwe_p(x: Mapping[str, np.ndarray]) -> np.ndarray:
    """Graffelman-Weir p per chrX variant over the samples of known sex (plink2 ``--hardy``'s ``.hardy.x``).

    Args:
        x: :data:`X_FIELDS` of the variants.
    """
    female = [np.asarray(x[name], np.int64) for name in FEMALE_FIELDS]
    male_ref, _, male_alt = (np.asarray(x[name], np.int64) for name in MALE_FIELDS)
    return hwe_x_exact_p(female[0], female[1], female[2], male_ref, male_alt)
