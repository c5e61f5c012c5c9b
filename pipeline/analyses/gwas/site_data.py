"""A site's side of the regression: its complete samples, their design, its genotype rows.

A site fits on its *complete* samples (:func:`complete_cases`: phenotype and every
covariate present; PC scores from the PCA phase's basis appended to the covariates),
standardized with the pooled moments the coordinator published, and on the genotype
rows of the job's variants it holds. Values beyond the job's bounds are clipped at the
site, never refused (:mod:`pipeline.analyses.bounds`): raw covariate and phenotype
values to ``±max_abs_value`` (:func:`site_data`), standardized ones to ``±max_abs_z``
(:func:`design`), dosages to [0, 2].

The genotype rows are hard calls, or with ``dosages: auto`` on a dataset that stores
dosages (:func:`uses_dosage`), per sample and variant the dosage where present, else the
hard call, else missing (:func:`~pipeline.dataset.dosage_or_call`, plink2's rule for
``--vcf dosage=DS``). A site without dosages sends hard-call sums into the same job.

Reading the samples and genotype rows is most of a site step's time and every round of
a job needs the same ones, so they are kept in the job's
:class:`~pipeline.analyses.SiteCache`:

* :func:`site_data` once per job (keyed by the dataset and :attr:`RegressionState.samples_digest`);
* the dataset's blocks (:func:`~pipeline.analyses.site_cache.dataset_blocks`), read by
  the census and kept for the regression where the whole dataset fits the byte budget
  (read again, with the dosages, where the site regresses on dosages);
* :func:`complete_calls` for the Newton rounds, only where the rows fit the cache's byte
  budget (an entry larger than ``cache.max_bytes`` would not be kept, so it is not
  gathered either: the rows are then taken block by block every round, as the linear
  round always does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from pipeline.analyses.bounds import clip_columns
from pipeline.analyses.gwas.chrx import SEX
from pipeline.analyses.gwas.covariates import (
    categorical_values,
    check_covariate_types,
    covariate_matrix,
    drop_rare_levels,
)
from pipeline.analyses.gwas.spec import GwasParameters
from pipeline.analyses.gwas.state import RegressionState
from pipeline.analyses.pca import local_scores
from pipeline.analyses.site_cache import SiteCache, dataset_blocks
from pipeline.dataset import (
    Dataset,
    check_binary,
    dosage_or_call,
    locate,
    numeric_column,
)
from pipeline.errors import InputError

__all__ = ["CompleteCases", "SiteData", "complete_calls", "complete_cases", "design", "site_data", "uses_dosage"]

GenotypeRows = list[tuple[np.ndarray, np.ndarray]]
"""(positions in the job's variant list, genotypes of the complete samples) per dataset block."""


def uses_dosage(parameters: GwasParameters, dataset: Dataset) -> bool:
    """Whether the site regresses on dosages: the job allows them (``dosages: auto``) and its dataset stores some."""
    return not parameters.integer_genotypes and dataset.has_dosage


@dataclass(frozen=True)
class SiteData:
    """A site's complete samples.

    Attributes:
        raw: (complete samples, columns) covariates (categorical ones as every level's 0/1 column, then the
            site columns: :attr:`RegressionState.all_columns`) then PC scores, float64, unstandardized.
        phenotype: (complete samples,) the phenotype.
        keep: (dataset samples,) which samples are complete.
    """

    raw: np.ndarray
    phenotype: np.ndarray
    keep: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held (what the site cache counts)."""
        return int(self.raw.nbytes + self.phenotype.nbytes + self.keep.nbytes)


def site_data(state: RegressionState, dataset: Dataset, cache: SiteCache, *, site: str = "") -> SiteData:
    """The site's complete samples for this job (read once, then from ``cache``).

    ``site`` (the site's name) places its 1 among the site covariate's columns.

    Covariate (PC scores included) and phenotype values beyond ``±max_abs_value`` are
    clipped to it, the count per column logged at the site only.

    Raises:
        InputError: a missing or non-numeric column, a binary phenotype not coded 0/1,
            or a PCA phase that ended without loadings.
    """
    key = ("gwas.site_data", str(Path(dataset.path).resolve()), state.samples_digest)
    return cache.get(key, lambda: _read_site_data(state, dataset, cache, site))


class CompleteCases(NamedTuple):
    """A site's phenotype and spec covariates, and which samples have them all.

    Attributes:
        phenotype: (dataset samples,) float64, NaN where missing.
        covariates: (dataset samples, numeric covariates) the spec's covariates not declared categorical (no PCs), unclipped.
        keep: (dataset samples,) bool: phenotype and every covariate present (and
            ``has_phenotypes`` where the table has it), no categorical level rarer than ``min_level_count``,
            and for a job's chrX part (``sex_required``) sex 1 or 2.
        categories: (dataset samples, categorical covariates) their levels, text (``None`` where missing).
    """

    phenotype: np.ndarray
    covariates: np.ndarray
    keep: np.ndarray
    categories: np.ndarray


def complete_cases(parameters: GwasParameters, dataset: Dataset, samples: pa.Table | None = None) -> CompleteCases:
    """The complete cases of a job's phenotype and covariates, from the samples table alone.

    What the site fits on (:func:`site_data`) and what it declares it would release
    (:meth:`~pipeline.analyses.gwas.Gwas.contributions`); no genotype is read. PC
    covariates, computed later from every sample's calls with mean imputation, are
    finite for every sample and remove none.

    Args:
        samples: the dataset's samples table, if already read.

    Raises:
        InputError: a missing or non-numeric column (:class:`~pipeline.errors.SpecMismatch`: a text covariate not
            declared categorical, a categorical one neither text nor numbers).
    """
    samples = dataset.samples() if samples is None else samples
    check_covariate_types(parameters, dataset, samples)
    phenotype = numeric_column(dataset, samples, parameters.phenotype, role="phenotype")
    numeric = [name for name in parameters.covariates if name not in parameters.categorical]
    columns = [numeric_column(dataset, samples, name, role="covariate") for name in numeric]
    covariates = np.column_stack(columns) if columns else np.zeros((len(phenotype), 0))
    levels = [categorical_values(dataset, samples, name) for name in parameters.categorical]
    categories = np.column_stack(levels) if levels else np.empty((len(phenotype), 0), dtype=object)
    keep = np.isfinite(phenotype) & np.all(np.isfinite(covariates), axis=1) & np.all(categories != None, axis=1)
    if "has_phenotypes" in samples.column_names:
        keep &= np.asarray(samples.column("has_phenotypes").to_numpy(zero_copy_only=False), bool)
    if parameters.sex_required:  # the chrX part (:mod:`.chrx`): plink2 leaves samples of unknown sex out
        keep &= np.isin(covariates[:, numeric.index(SEX)], (1.0, 2.0))
    if levels:
        keep = drop_rare_levels(keep, categories, parameters.min_level_count)
    if parameters.model == "logistic":
        check_binary(dataset, parameters.phenotype, phenotype[keep], role="phenotype")
    return CompleteCases(phenotype, covariates, keep, categories)


def _read_site_data(state: RegressionState, dataset: Dataset, cache: SiteCache, site: str) -> SiteData:
    p = state.parameters
    phenotype, numeric, keep, categories = complete_cases(p, dataset)
    raw = covariate_matrix(p, state.factors, numeric, categories, keep, site)
    if state.pca is not None:
        if not state.pca.has_loadings:
            raise InputError("gwas: the PCA phase ended without loadings; cannot compute PC covariates")
        scores = local_scores(state.pca, dataset, cache)
        pcs = np.column_stack([np.asarray(scores.column(f"PC{j + 1}").to_numpy(zero_copy_only=False), np.float64)
                               for j in range(scores.num_columns - 1)])
        raw = np.column_stack([raw, pcs])
        keep &= np.all(np.isfinite(pcs), axis=1)
    values = clip_columns(np.column_stack([raw[keep], phenotype[keep]]), [*state.all_columns, p.phenotype], p.max_abs_value,
                          where="gwas", spec_key="max_abs_value")
    return SiteData(np.ascontiguousarray(values[:, :-1]), np.ascontiguousarray(values[:, -1]), keep)


def design(data: SiteData, state: RegressionState) -> tuple[np.ndarray, np.ndarray]:
    """Standardized covariates (intercept first) and phenotype, clipped to ``±max_abs_z``.

    The phenotype is standardized for the linear model and kept 0/1 for the logistic
    one. A standardized value beyond ``max_abs_z`` is clipped to it (the count per
    column logged at the site only), so every value of the fixed-point encoding stays
    within the bound the layouts were planned for; a refusal would reveal that the
    site holds such a value.
    """
    p = state.parameters
    moments = state.standardization
    raw = data.raw
    if state.columns != state.all_columns:  # each factor's reference level dropped after the moments round
        raw = raw[:, [state.all_columns.index(name) for name in state.columns]]
    m = raw.shape[1]
    z = (raw - moments.mean[:m]) / moments.sd[:m]
    if p.model == "linear":
        names = [*state.columns, p.phenotype]
        values = np.column_stack([z, (data.phenotype - moments.mean[m]) / moments.sd[m]])
    else:
        names = list(state.columns)
        values = z
    values = clip_columns(values, names, p.max_abs_z, where="gwas", spec_key="max_abs_z")
    covariates = np.column_stack([np.ones(len(z)), values[:, :m]])
    phenotype = values[:, m] if p.model == "linear" else data.phenotype
    return covariates, phenotype


def _read_complete_calls(state: RegressionState, dataset: Dataset, keep: np.ndarray, cache: SiteCache | None
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reads the site's rows of the job's variants, block by block (complete samples only).

    The blocks come from :func:`~pipeline.analyses.site_cache.dataset_blocks`: kept since
    the census when the dataset fits the job's cache. A block with dosages gives float32
    rows (:func:`~pipeline.dataset.dosage_or_call`: the dosage where present, else the
    hard call, -1 where neither), one without int8 hard calls.

    Raises:
        InputError: the dataset holds a job variant twice (which row's calls would enter
            the regression would be arbitrary); ``genofed ingest`` refuses such files.
    """
    order = state.variant_order
    seen = np.zeros(len(state.variant_ids), bool)
    for block in dataset_blocks(dataset, cache, with_dosage=uses_dosage(state.parameters, dataset)):
        block_ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=str)
        where, present = locate(state.sorted_variant_ids, block_ids)
        if present.any():
            rows = order[where[present]]
            _refuse_repeated_rows(dataset, state, rows, seen)
            seen[rows] = True
            calls, dosage = block.call_dosage, block.dosage
            if not present.all():
                calls, dosage = calls[present], (None if dosage is None else dosage[present])
            values = dosage_or_call(calls, dosage)
            # np.compress copies the kept columns row by row; a boolean mask on the second axis gathers element by
            # element (7x slower on a 10,000 x 3,334 block); nothing to drop, nothing to copy.
            yield rows, (values if keep.all() else np.compress(keep, values, axis=1))


def _refuse_repeated_rows(dataset: Dataset, state: RegressionState, rows: np.ndarray, seen: np.ndarray) -> None:
    """Refuses a block whose rows repeat a job variant already read, or repeat one within the block."""
    _, first = np.unique(rows, return_index=True)
    repeated = seen[rows].copy()
    repeated[np.setdiff1d(np.arange(rows.size), first)] = True
    if repeated.any():
        variant = state.variant_ids[int(rows[int(np.flatnonzero(repeated)[0])])]
        raise InputError(
            f"{dataset.path}: variant {variant} is stored twice, so which copy enters the regression would be arbitrary; "
            "re-ingest the VCF with 'genofed ingest', which refuses duplicate records"
        )


def complete_calls(state: RegressionState, dataset: Dataset, data: SiteData, cache: SiteCache | None = None, *,
                   keep_rows: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in the job's variant list, genotypes of the complete samples) per dataset block.

    The dataset is read through ``cache`` (once per job where it fits). With ``keep_rows``
    (the Newton rounds, which take the same rows every round) the rows themselves are kept
    for the next round when at most ``cache.max_bytes`` of them can exist; otherwise they
    are taken from the blocks anew.
    """
    itemsize = 4 if uses_dosage(state.parameters, dataset) else 1  # float32 dosages, int8 hard calls
    largest = len(state.variant_ids) * int(np.count_nonzero(data.keep)) * itemsize
    if not keep_rows or cache is None or largest > cache.max_bytes:
        yield from _read_complete_calls(state, dataset, data.keep, cache)
        return
    keep_digest = hashlib.sha256(np.packbits(data.keep).tobytes()).hexdigest()
    key = ("gwas.complete_calls", str(Path(dataset.path).resolve()), state.variants_digest, keep_digest)
    rows: GenotypeRows = cache.get(key, lambda: list(_read_complete_calls(state, dataset, data.keep, cache)))
    yield from rows
