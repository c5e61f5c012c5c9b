"""``gwas``: exact federated GWAS (linear or logistic), equal to the pooled fit; or a differentially private one.

A GWAS job is three phases run as one job (:mod:`pipeline.analyses.phases`):

1. **census** (:mod:`pipeline.analyses.census`): variant-key union, summed genotype
   counts and the QC filter (call rate, HWE, MAF, minimum allele count); only variants
   that pass are tested.
2. **pca** (only with ``pcs: K``, :mod:`pipeline.analyses.pca`): the public basis.
   Every site then computes its own samples' PC scores locally; scores never leave it.
3. **regression** (:class:`~pipeline.analyses.gwas.regression.Regression`):

   * round 0, *rs IDs* (a key union, :mod:`.rsid`): each site names the rs IDs its
     dataset records (VCF ID) for the tested variants it shared in the census' key union;
     a variant gets the one rs ID the sites name, NA where they name several
     (``variants.rsid_conflicts``). rs IDs are public annotations of variants the key union
     already revealed, so this reveals nothing about the samples.
   * with ``categorical`` covariates, *levels* (a key union, :mod:`.covariates`): the
     levels each site's complete cases hold, each by at least ``min_level_count`` of them;
     the later rounds come one later.
   * with ``hwe_within: ancestry_clusters`` (needs ``pcs >= 1``), *HWE within ancestry
     clusters* (:mod:`.hwe_clusters`): the census phase then runs without its HWE filter,
     and here each site tests Hardy-Weinberg within k-means clusters of its own samples'
     PC scores and sends per variant a 0/1 flag; the coordinator withholds the variants
     some site flagged (``gwas_status`` ``HWE_CLUSTER_FAIL``). The later rounds come one
     later.
   * round 1, *moments*: per site the sample count and the sums and sums of squares of
     every covariate (PCs included) and of the phenotype over the complete samples. The
     coordinator publishes their means and SDs; every site standardizes with them, so
     each value of the fixed-point encoding is bounded by ``max_abs_z`` (the fit of the
     genotype is invariant to this reparametrization: the intercept absorbs the shift).
     Values beyond ``max_abs_value`` (raw) or ``max_abs_z`` (standardized) are clipped
     at the site, never refused; the count clipped stays in the site's log.
   * linear, round 2: per variant the packed ``X'X``, ``X'y``, ``y'y`` and ``n`` over the
     samples with a called genotype (:func:`pipeline.stats.glm.linear_statistics`); the
     coordinator solves every variant's normal equations in float64: the pooled OLS.
   * logistic, rounds 2..: federated Newton-Raphson over all variants at once. Each round
     every site returns, for the variants still iterating, the score and the packed Fisher
     information at the public coefficients; the coordinator updates every coefficient
     vector in one batched solve. Wald tests at convergence; separation (an allele absent
     from the cases or the controls, or diverging coefficients) and non-convergence are
     reported per variant (``SEPARATION``, ``UNFINISHED``), as plink2 does.

All sums are in Z_2^64; each float field gets the most fractional bits its bound allows
for the job's number of sites (at least 20 bits up to 100 sites with the defaults).

Disclosure: with the first per-variant round each site also contributes, per variant, 1
if its own minor allele count (complete samples with a call) is non-zero and below its
policy's ``min_allele_count``, else 0, and where it is 1 the site is left out of that
variant: it sends zeros in every round, as for a variant it does not hold. The
coordinator only learns the secure sum (``gwas_status.n_sites_left_out``) and fits the
variant from the other sites' sums; it withholds the variant
(``BELOW_SITE_MIN_ALLELE_COUNT``) only where what remains is empty or below the job's
``min_allele_count`` (:mod:`.outputs`). Leaving the small cell out, rather than the
variant for everyone, is DataSHIELD's per-cell rule: one site's rare carrier no longer
hides a variant from a whole consortium, and never enters a sum. plink2 has no per-site
rule; its ``--mac`` is on the pooled count, as the job's threshold. Samples with a
missing phenotype or covariate are dropped at the site; missing genotypes are dropped
per variant.

Dosages: with ``dosages: auto`` (the default) a site whose dataset stores imputed
dosages regresses on them, per sample and variant the dosage where present, else the
hard call, else missing (plink2's ``--vcf dosage=DS``; :mod:`.site_data`); other sites
use their hard calls in the same job. The census' QC stays on hard calls; ``n``,
``alt_count`` and the effect allele frequency are of the values regressed on (plink2's
``OBS_CT`` and ``A1_FREQ``). The linear round's genotype entries are fixed-point reals
anyway; the logistic first round sends its ALT sums as reals instead of counts (exact for
dosages on plink2's 1/16384 grid). A dosage is clipped to [0, 2] at the site, so every
bound and sensitivity that takes a genotype to be at most 2 holds. ``dosages: hard_calls``
is the hard-call regression.

chrX (:mod:`.chrx`): as plink2 ``--glm`` with ``--split-par``, the variants on chrX outside
the pseudo-autosomal regions of ``assembly`` get ``sex`` as a covariate (``x_sex``, the
default; ``false`` is plink2's ``no-x-sex``), fitted over the complete samples of known sex,
with males coded 0/2 as ingest stores their haploid calls (``--xchr-model 2``); the
regression fits them as a second part beside the others, and the census counts a male once
there and tests Hardy-Weinberg by Graffelman-Weir (:mod:`pipeline.analyses.census_chrx`).

Differential privacy: exact is the default. With a ``privacy`` block (a site whose
policy requires it declines an exact job) every round that releases person-level sums
is noised by the sites, and the job's ``(epsilon, delta)`` covers them all together, for
the linear model with ``pcs: 0`` (other combinations are refused at submission). What
each round releases, the budget's split and the sensitivities are in
:mod:`.privacy`; the estimates are not equal to the pooled fit, and their utility is
only what ``tests/benchmarks/gwas_privacy.py`` measures.

Spec (see ``workflows/gwas.yaml``)::

    analysis: gwas
    model: linear                 # or logistic (phenotype coded 0/1)
    phenotype: quant_trait        # or phenotypes: [a, b, ...]: one census and PCA, each fitted (:mod:`.phenotypes`)
    covariates: [age, sex, centre]
    categorical: [centre]         # one-hot at each site, levels agreed in a key union (:mod:`.covariates`)
    reference: {centre: london}   # optional; default plink2's: the most common level
    min_level_count: 5            # a site treats samples of a rarer level as incomplete (at least its min_allele_count)
    site_covariate: false         # true: one column per site (sites sharing site metrics only)
    pcs: 4                        # 0 = no PCA phase
    pca: {}                       # passed to the PCA phase unchanged
    min_allele_count: 5           # census QC (see census): publish threshold
    min_call_rate: 0.95
    hwe_p: 1.0e-6
    maf: 0.01
    hwe_samples: all              # or controls (logistic): HWE on the phenotype's 0s
    hwe_within: sites             # or ancestry_clusters (pcs >= 1, exact only): HWE within each site's PC clusters
    hwe_clusters: 3               # k-means clusters per site for ancestry_clusters
    max_samples_per_site: 1000000
    max_abs_value: 10000          # raw covariate or phenotype values are clipped to +-this at the site
    max_abs_z: 100                # standardized ones are clipped to +-this at the site
    max_iterations: 25            # logistic Newton rounds (and Firth iterations)
    tolerance: 1.0e-8             # logistic: largest coefficient change at convergence
    firth: true                   # Firth-penalized refit of separated / unfinished variants
    dosages: auto                 # or hard_calls: regress on a site's stored dosages where it has them
    x_sex: true                   # chrX outside the PARs: sex a covariate, unknown sex left out (:mod:`.chrx`); false: no-x-sex
    assembly: GRCh38              # whose PARs count as autosomal (plink2 --split-par b38; GRCh37 for b37)
    keep: study_eur               # optional selection (:mod:`pipeline.analyses.selection`): a site-defined sample list,
    remove: withdrawn             # ... another, an expression on the samples table, regions and variant IDs;
    samples: "age >= 40"          # every phase sees only the selected samples and variants
    regions: ["chr22:16000000-17000000"]
    extract: [chr22:16050075:A:G]
    exclude: []
    privacy:                      # optional: differential privacy (linear, pcs: 0); noise grows like max_abs_z^2
      epsilon: 3.0
      delta: 1.0e-6
      max_colluding: 0

The package follows those seams: :mod:`.spec` (parameters), :mod:`.state` (the typed
public state), :mod:`.site_data` (complete samples, design, genotype rows), :mod:`.covariates`
(categorical and site covariates: levels round, one-hot columns, reference levels),
:mod:`.rsid` (the rs ID round), :mod:`.regression` (the moments round and the dispatch), :mod:`.phenotypes`
(several phenotypes in one job), :mod:`.linear`,
:mod:`.logistic`, :mod:`.privacy` (the noisy mode) and :mod:`.outputs` (tables and files).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses.census import CENSUS, CensusState, control_sample_ids
from pipeline.analyses.gwas.chrx import dataset_has_x, fits_x_apart, x_parameters
from pipeline.analyses.gwas.covariates import check_site_policy
from pipeline.analyses.gwas.outputs import gwas_table, regression_result, write_outputs
from pipeline.analyses.gwas.phenotypes import REGRESSIONS, PhenotypesState, Regressions
from pipeline.analyses.gwas.regression import REGRESSION, Regression
from pipeline.analyses.gwas.site_data import complete_cases
from pipeline.analyses.gwas.spec import PARAMS, GwasParameters
from pipeline.analyses.gwas.state import (
    FirthRound,
    FirthState,
    Moments,
    NewtonState,
    RegressionState,
    VariantCounts,
)
from pipeline.analyses.pca import PCA, PcaState
from pipeline.analyses.phases import Phase, Phased, PhasedState
from pipeline.analyses.protocol import (
    GENOTYPES,
    Contribution,
    Result,
    SiteContext,
    dataset_sample_ids,
)
from pipeline.analyses.selection import Selection, selected_dataset
from pipeline.dataset import Dataset
from pipeline.json_arrays import encode_array

__all__ = [
    "GWAS",
    "PARAMS",
    "REGRESSION",
    "REGRESSIONS",
    "FirthRound",
    "FirthState",
    "Gwas",
    "GwasParameters",
    "Moments",
    "NewtonState",
    "PhenotypesState",
    "Regression",
    "RegressionState",
    "Regressions",
    "VariantCounts",
    "gwas_phases",
    "gwas_table",
    "regression_result",
    "write_outputs",
]


def _census_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any]:
    return GwasParameters.parse(job).census_spec()  # the whole spec is checked at submission


def _census_carry(result: Result, state: CensusState) -> dict[str, Any]:
    table = result.tables["census_variants"]
    passing = np.asarray(table.column("pass_qc").to_numpy(zero_copy_only=False), bool)
    ids = np.asarray(table.column("variant_id").to_pylist(), dtype=object)
    return {"variant_ids": [str(v) for v in ids[passing]], "census_variants": int(table.num_rows),
            "census_complete": encode_array(_complete(table)[passing])}


def _complete(table: Any) -> np.ndarray:
    """Per census variant: every site typed it, with no missing call, and none left it out (null counts: unknown, no).

    Over every sample of the sites, so none of a regression's complete cases misses a call
    either: the public, conservative criterion of the linear round's short form (:mod:`.linear`).
    """
    zero = [np.asarray(table.column(name).fill_null(1).to_numpy(zero_copy_only=False)) == 0
            for name in ("n_missing", "n_not_typed", "n_sites_left_out")]
    return np.logical_and.reduce(zero)


def _pca_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any] | None:
    parameters = GwasParameters.parse(job)
    if parameters.pcs == 0:
        return None
    return {**parameters.pca, "k": parameters.pcs}


def _pca_carry(result: Result, state: PcaState) -> dict[str, Any]:
    return {"pca_state": state.to_json()}


def _regression_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(job), "variant_ids": list(carried.get("variant_ids", [])), "pca_state": carried.get("pca_state"),
            "census_variants": carried.get("census_variants"), "census_complete": carried.get("census_complete")}


def gwas_phases() -> tuple[Phase, ...]:
    """census -> pca (when ``pcs > 0``) -> regression."""
    return (
        Phase("census", CENSUS, _census_spec, _census_carry),
        Phase("pca", PCA, _pca_spec, _pca_carry, keep_tables=("pca_loadings", "pca_eigenvalues")),
        Phase("gwas", REGRESSIONS, _regression_spec, lambda result, state: {}),
    )


class Gwas(Phased):
    """The ``gwas`` analysis: census, optional PCA, then the regression rounds."""

    def __init__(self) -> None:
        super().__init__("gwas", gwas_phases())

    def contributions(self, state: PhasedState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """The regression's complete cases, and every sample for the census (and PCA) phase.

        1. The regression's results come from the complete cases of each of the job's
           phenotypes and the covariates (:func:`~.site_data.complete_cases`, the selection
           its site step fits on), over ``sorted((phenotype, *covariates, genotypes))``: one
           release per phenotype (:mod:`.phenotypes`), so two phenotypes whose sets differ by
           a few samples are refused as two jobs would be. Where the site holds chrX variants
           outside the PARs and the job fits them with the sex covariate (:mod:`.chrx`), each
           phenotype's chrX part is one more release: its complete cases of known sex, over the
           phenotype, the covariates, ``sex`` and the genotypes.
        2. The census phase counts every sample's genotypes (its summary, and which
           variants pass QC and are tested, are released), and so does the PCA phase
           with ``pcs > 0`` (its loadings and eigenvalues are in the result): every
           sample, over the genotypes.
        3. With ``hwe_samples: controls`` the Hardy-Weinberg flags (the census', or with
           ``hwe_within: ancestry_clusters`` the regression phase's) come from the
           phenotype's controls: those samples, over the phenotype and the genotypes.

        Read from the samples table alone (no genotype), through the job's selection
        (:func:`_selected`): every set lies within the selected samples. A release the
        site brings no sample to is not listed.

        Raises:
            ConfigurationError: the job spec is not a GWAS spec.
            InputError: the phenotype or a covariate is missing or not numeric (a text covariate not declared
                categorical: :mod:`.covariates`).
            PolicyRefusal: (``unknown-sample-list``) the site defines no list the job names; (``policy``) factor
                columns its policy does not allow (:func:`.covariates.check_site_policy`).
        """
        dataset = _selected(state, dataset, site)
        parameters = GwasParameters.parse(state.job_spec)
        check_site_policy(parameters, site)
        samples = dataset.samples()
        ids = np.asarray([str(s) for s in samples.column("sample_id").to_pylist()], dtype=object)
        fitted = [parameters.single(name) for name in parameters.all_phenotypes]
        if fits_x_apart(parameters) and dataset_has_x(dataset, parameters.assembly):
            fitted += [x_parameters(single) for single in fitted]
        regressions = tuple(
            Contribution(frozenset(ids[complete_cases(single, dataset, samples).keep].tolist()),
                         tuple(sorted((single.phenotype, *single.covariates, GENOTYPES))))
            for single in fitted)
        every = Contribution(dataset_sample_ids(dataset), (GENOTYPES,))
        controls = None
        if parameters.hwe_samples == "controls":  # the HWE flags come from the controls
            controls = Contribution(control_sample_ids(dataset, parameters.phenotype),
                                    tuple(sorted((parameters.phenotype, GENOTYPES))))
        return tuple(c for c in (*regressions, every, controls) if c is not None and c.samples)

    def site_step(self, state: PhasedState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The current phase's site step on the job's selection of the dataset."""
        return super().site_step(state, round_index, _selected(state, dataset, site), site)

    def site_finish(self, state: PhasedState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Keeps this site's PC scores at the site (``pca_scores.parquet``) once the regression phase has begun.

        A job that ended in an earlier phase leaves nothing at the site.
        """
        if state.phase != len(self.phases) - 1:
            return None
        return super().site_finish(state, _selected(state, dataset, site), site, out_dir)


def _selected(state: PhasedState, dataset: Dataset, site: SiteContext) -> Dataset:
    """The site's dataset as the job's ``keep``/``remove``/``samples``/``regions``/``extract``/``exclude`` select it.

    Every phase sees the same view, so QC, PCA and regression all run on the selection (as plink2's filters apply first).
    """
    return selected_dataset(dataset, Selection.parse(state.job_spec), site)


GWAS = Gwas()
