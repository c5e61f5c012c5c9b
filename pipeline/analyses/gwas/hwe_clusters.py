"""Hardy-Weinberg within ancestry clusters: the GWAS's ``hwe_within: ancestry_clusters`` round.

Why: the census tests HWE within each site (:mod:`pipeline.analyses.census`), which
already avoids the Wahlund effect of pooling sites of different ancestry; but a site
whose own samples mix ancestries still fails true variants whose allele frequency
differs between its populations (a deficit of heterozygotes), causal ones included.
Once the PCA phase has run, every site can tell its populations apart by its own PC
scores, so the test moves there:

* the census phase runs with ``hwe_p: 0`` (no HWE filter; its other rules unchanged);
* this round, one secure sum in the regression phase (after the rs ID round, before the
  moments), has every site cluster its own samples by k-means on their first
  ``min(pcs, 4)`` PC scores (:func:`pipeline.stats.kmeans.kmeans`, ``hwe_clusters``
  clusters, a fixed public seed), then run the census' HWE exact test
  (:func:`~pipeline.analyses.census.hwe_failing`: same test, the job's ``hwe_p``, all
  samples or the controls per ``hwe_samples``) within each cluster of at least
  :data:`MIN_CLUSTER_SIZE` tested samples. Per tested variant it sends ``hwe_fail`` (1
  when any of its clusters fails) and ``typed`` (1 when its counts of the variant would
  enter the census' sums), both 0/1. A cluster smaller than the minimum is not tested
  (a few samples give the test no power, and k-means can split off a handful of
  outliers), so a site whose clusters are all small flags nothing;
* the coordinator withholds from the regression every variant some site flagged; they
  appear in ``gwas_status`` with status ``HWE_CLUSTER_FAIL`` and are counted in the
  summary's ``variants.hwe_cluster_failures``.

With S sites and c clusters tested per site the family-wise rate under HWE is about
S x c x ``hwe_p``.

Privacy: a site sends what the census' counts round already sends, per variant a 0/1
``hwe_fail`` and a 0/1 ``typed``, and the coordinator learns only their secure sums:
how many sites typed and how many failed each variant. The clusters, their sizes, the
PC scores and every count stay at the site. The site's own ``min_allele_count`` rule
applies as in the census: a variant whose minor allele count over the site's samples is
non-zero and below its minimum is not typed there and never flagged, so a small cell
reaches no flag. Differential privacy is refused at submission: a flag would depend on
single people, and the private census sends none either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from pipeline.analyses.census import (
    HWE_FIELD,
    TYPED_FIELD,
    aligned_counts,
    control_mask,
    hwe_failing,
    site_below_minimum,
    site_subset_counts,
    site_variant_counts,
    x_hwe_failing,
)
from pipeline.analyses.census_chrx import x_rows
from pipeline.analyses.gwas.state import HweScreen, RegressionState
from pipeline.analyses.pca import local_scores
from pipeline.analyses.protocol import SiteContext
from pipeline.analyses.sum_checks import refuse_impossible
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Layout, Ring, plan_layout
from pipeline.errors import InputError
from pipeline.stats.kmeans import kmeans

__all__ = ["CLUSTER_SEED", "MAX_CLUSTER_PCS", "MIN_CLUSTER_SIZE", "ancestry_clusters", "hwe_clusters_layout",
           "screen_hwe", "site_hwe_flags"]

MIN_CLUSTER_SIZE = 50
"""Fewest tested samples (all, or controls) a site's cluster needs to be tested for HWE."""
MAX_CLUSTER_PCS = 4
"""The clusters are of the first ``min(pcs, MAX_CLUSTER_PCS)`` PC scores (the later ones carry little ancestry)."""
CLUSTER_SEED = 0
"""The k-means seeding's seed: public and fixed, so the clusters depend on the scores alone."""


def hwe_clusters_layout(state: RegressionState) -> Layout:
    """Two 0/1 flags per tested variant, ``hwe_fail`` and ``typed``, in Z_2^32 (Z_2^64 when the sites do not fit)."""
    v = len(state.variant_ids)
    return plan_layout([Count(HWE_FIELD, (v,), 1), Count(TYPED_FIELD, (v,), 1)], state.num_participants,
                       rings=(Ring.R32, Ring.R64))


def ancestry_clusters(scores: np.ndarray, k: int) -> np.ndarray:
    """(samples,) the cluster of each sample's PC scores (k-means, :data:`CLUSTER_SEED`); -1 where a score is not finite."""
    scores = np.asarray(scores, np.float64)
    labels = np.full(len(scores), -1, np.int64)
    finite = np.all(np.isfinite(scores), axis=1)
    labels[finite] = kmeans(scores[finite], k, seed=CLUSTER_SEED).labels
    return labels


def site_hwe_flags(state: RegressionState, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
    """The site's ``hwe_fail`` and ``typed`` flags over the tested variants (the rule in the module docstring)."""
    p = state.parameters
    if state.pca is None:
        raise InputError("gwas: hwe_within: ancestry_clusters needs the PCA phase's state (pcs >= 1)")
    tested_ids = pa.array(state.variant_ids, pa.string())
    ids, counts = site_variant_counts(dataset, site.cache)
    totals, held = aligned_counts(tested_ids, ids, counts)
    typed = held & ~site_below_minimum(totals, site).astype(bool)
    scores = local_scores(state.pca, dataset, site.cache)
    points = np.column_stack([scores.column(f"PC{j + 1}").to_numpy(zero_copy_only=False)
                              for j in range(min(p.pcs, MAX_CLUSTER_PCS))])
    labels = ancestry_clusters(points, p.hwe_clusters)
    tested = control_mask(dataset, p.phenotype) if p.hwe_samples == "controls" else np.ones(len(labels), bool)
    failing = np.zeros(len(tested_ids), bool)
    on_x = x_rows(state.variant_ids, p.assembly)
    x_ids = tested_ids.take(pa.array(on_x))
    for cluster in range(p.hwe_clusters):
        members = tested & (labels == cluster)
        if np.count_nonzero(members) >= MIN_CLUSTER_SIZE:
            cluster_counts, _ = aligned_counts(tested_ids, ids, site_subset_counts(dataset, site.cache, members))
            cluster_failing = hwe_failing(cluster_counts, p.hwe_p)
            x_failing = x_hwe_failing(dataset, site, p.assembly, x_ids, p.hwe_p, members) if on_x.size else None
            if x_failing is not None:  # chrX outside the PARs: Graffelman-Weir (pipeline.analyses.census_chrx)
                cluster_failing[on_x] = x_failing
            failing |= cluster_failing
    return {HWE_FIELD: (failing & typed).astype(np.int64), TYPED_FIELD: typed.astype(np.int64)}


def screen_hwe(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> RegressionState:
    """The state with the flagged variants withheld: the regression goes on with the others.

    Raises:
        ProtocolError: sums no honest sites give (``typed`` beyond the sites, ``hwe_fail`` beyond ``typed``).
        InputError: every tested variant was flagged.
    """
    typed = np.asarray(total[TYPED_FIELD], np.int64)
    failing = np.asarray(total[HWE_FIELD], np.int64)
    ids = state.variant_ids
    refuse_impossible("gwas", TYPED_FIELD, typed, (typed < 0) | (typed > num_sites), f"in [0, the {num_sites} sites]",
                      labels=ids, noun="variant")
    refuse_impossible("gwas", HWE_FIELD, failing, (failing < 0) | (failing > typed),
                      "in [0, the sites that typed it = {limit}]", limit=typed, labels=ids, noun="variant")
    flagged = failing > 0
    if flagged.all():
        raise InputError(f"gwas: all {len(ids)} tested variants fail Hardy-Weinberg within some site's ancestry cluster "
                         "(hwe_within: ancestry_clusters); nothing to test: check hwe_p or the genotypes")
    positions = np.flatnonzero(flagged)
    screen = HweScreen(tuple(ids[i] for i in positions), positions, failing[flagged])
    keep = ~flagged
    return dataclasses.replace(state, variant_ids=tuple(v for v, k in zip(ids, keep) if k), hwe=screen,
                               rsids=None if state.rsids is None else state.rsids.take(keep))
