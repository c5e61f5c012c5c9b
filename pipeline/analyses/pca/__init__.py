"""``pca``: federated principal components by randomized subspace iteration.

The coordinator learns only variant-space quantities (a basis, the loadings and the
eigenvalues); every site computes its own samples' scores locally. A job advances
through round kinds (the state's ``round_kind``, a :class:`PcaRound`; one secure-sum
round each, except the first):

* **keys** — the census' variant-key union (:mod:`pipeline.analyses.census`, a
  :class:`~pipeline.analyses.KeyUnion`).
* **counts** — the census' per-variant genotype counts summed over the sites, with the
  number of sites whose own minor allele count is below their minimum. From the
  global counts the coordinator derives the standardization ``(g - 2p) /
  sqrt(2p(1-p))`` (global ``p``; missing calls become 0, mean imputation) and picks the
  variant set (:mod:`.selection`: publishable, no site below its own minimum, typed
  everywhere, call rate, MAF, then thinned by position, a deterministic stand-in for LD
  pruning).
* **iterate** x ``iterations`` — the state holds an orthonormal basis ``V`` (variants x
  ``k + oversampling``), first drawn from the public ``seed``. Each site contributes
  ``G_s^T (G_s V)`` (:func:`pipeline.stats.pca.gram_product`, float64); the coordinator
  orthonormalizes the sum (QR) into the next ``V``. After the last one a Rayleigh-Ritz
  step gives the top-``k`` eigenvalues of ``G^T G`` and the loadings.
* **scores** — the state holds the loadings and eigenvalues: every site computes its
  scores ``G_s v_c`` locally and contributes only their per-component sums, sums of
  squares and its sample count. The coordinator checks that the sums of squares add up
  to the eigenvalues (``||G v_c||^2 = lambda_c``: every site used the same data and
  basis) and publishes the global mean and standard deviation of each component's
  scores (what a GWAS needs to standardize PC covariates identically at every site).
* **done** — no more rounds.

Sites keep their scores (:mod:`.scores`): :func:`local_scores` (the GWAS uses it) and
the hook :meth:`Pca.site_finish` (writes ``pca_scores.parquet`` at the site).

Secure sums: ``G_s^T G_s V`` is encoded in Z_2^64 in fixed point. Its entries obey
``|g_sj^T G_s v| <= ||g_j|| * ||G||_F`` (Cauchy-Schwarz, ``V`` orthonormal), and both
norms follow from the public global counts, so the bound is exact for honest data and
the scale takes every remaining bit, at most 62 and at least what a resolution of
:data:`RELATIVE_PRECISION` times the bound needs (about 2^-45 absolute for 3 sites,
10^3 samples and 10^3 variants: far below float64's own rounding); a job where that
does not fit is refused. A site that drops out after the counts round would change the
matrix being decomposed; the job then fails instead of returning the PCA of a different
sample set.

Spec (see ``workflows/pca.yaml``; :data:`PARAMS`)::

    analysis: pca
    k: 4                      # components
    oversampling: 10          # extra basis columns (width k + oversampling)
    iterations: 8             # subspace iteration rounds
    seed: 0                   # public seed of the starting basis
    window_bp: 5000           # thinning window
    maf: 0.05
    min_call_rate: 0.95
    typed_at_all_sites: true
    max_variants: 50000
    min_allele_count: 5
    score_scaling: eigenvector  # or raw
    max_samples_per_site: 10000000

Modules: :mod:`.state` (the typed state), :mod:`.selection` (the variant set from the
counts), :mod:`.scores` (what a site computes from its genotypes), :mod:`.analysis`
(the hooks).
"""

from pipeline.analyses.pca.analysis import PCA, RELATIVE_PRECISION, Pca, min_scale_bits
from pipeline.analyses.pca.scores import (
    SCORES_FILE,
    local_scores,
    site_calls,
    write_scores,
)
from pipeline.analyses.pca.selection import select_variants
from pipeline.analyses.pca.state import (
    PARAMS,
    Basis,
    Loadings,
    PcaParameters,
    PcaRound,
    PcaState,
    ScoreMoments,
    Standardization,
    VariantSelection,
    selection_digest,
)

__all__ = [
    "PARAMS",
    "PCA",
    "RELATIVE_PRECISION",
    "SCORES_FILE",
    "Basis",
    "Loadings",
    "Pca",
    "PcaParameters",
    "PcaRound",
    "PcaState",
    "ScoreMoments",
    "Standardization",
    "VariantSelection",
    "local_scores",
    "min_scale_bits",
    "select_variants",
    "selection_digest",
    "site_calls",
    "write_scores",
]
