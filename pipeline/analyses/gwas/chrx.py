"""chrX in a GWAS, as plink2 ``--glm`` fits it (``--xchr-model 2``, after ``--split-par``).

Outside the pseudo-autosomal regions a male carries one X. Ingest stores his haploid call
as 0 or 2, which is plink2's ``--xchr-model 2`` coding (males 0..2), so the genotype rows
need no change; what differs is the model. plink2 adds sex (1 male, 2 female) as a
covariate of those variants and of no others, and leaves samples of unknown sex out of
them; variants in the PARs are autosomal (``--split-par b37``/``b38``: the job's
``assembly``). ``x_sex: false`` is plink2's ``no-x-sex``; with ``sex`` among the job's
covariates every variant has it already and nothing is split.

So the regression phase fits such a job in two *parts* (:data:`PARTS`), side by side in the
same secure sums as the phenotypes of a several-phenotype job
(:class:`~pipeline.analyses.gwas.phenotypes.PhenotypesState`): the chrX variants outside
the PARs, with the covariates and ``sex``, over the complete samples of known sex
(samples-table column :data:`SEX`: 1 or 2); and every other variant as before. Each part
is the one-part job's state for its variants (:func:`part_state`): its own moments, its own
statistics, and the job publishes them as one list (:func:`~.outputs.stitch_fits`).

Disclosure: the chrX part's complete cases are a release of their own
(:meth:`pipeline.analyses.gwas.Gwas.contributions`). Where a site's samples of unknown sex
are 1 to ``min_set_difference - 1`` of its complete cases, the two parts' moments would
difference to those people's values, and the site's ledger refuses the job
(``set-too-close``); leaving them out (``samples: "sex == 1 or sex == 2"``), ``x_sex:
false`` or ``sex`` among the covariates avoid it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.analyses.census_chrx import x_rows
from pipeline.analyses.gwas.spec import GwasParameters
from pipeline.analyses.gwas.state import RegressionState
from pipeline.dataset import Dataset, variants_non_par_x
from pipeline.errors import ConfigurationError, InputError

__all__ = ["ALL", "AUTOSOMAL", "CHRX", "PARTS", "SEX", "check_site_assembly", "dataset_has_x", "fits_x_apart", "part_mask",
           "part_state", "parts", "x_parameters", "x_summary"]

SEX = "sex"
"""The samples-table column of the chrX covariate, coded as plink2's (1 male, 2 female; anything else unknown)."""
ALL, AUTOSOMAL, CHRX = "all", "autosomal", "chrX"
PARTS = (ALL, AUTOSOMAL, CHRX)
"""A regression part: every variant (a job fitted in one part), or the variants off / on chrX outside the PARs."""


def fits_x_apart(parameters: GwasParameters) -> bool:
    """Whether chrX variants outside the PARs get their own covariates (``x_sex``, and sex not already a covariate)."""
    return parameters.x_sex and SEX not in parameters.covariates


def x_parameters(parameters: GwasParameters) -> GwasParameters:
    """The chrX part's parameters: ``sex`` appended to the covariates, samples of unknown sex incomplete."""
    return dataclasses.replace(parameters, covariates=(*parameters.covariates, SEX), sex_required=True)


def _on_x(variant_ids: Sequence[str], assembly: str) -> np.ndarray:
    on_x = np.zeros(len(variant_ids), bool)
    on_x[x_rows(variant_ids, assembly)] = True
    return on_x


def parts(parameters: GwasParameters, variant_ids: Sequence[str]) -> tuple[str, ...]:
    """The parts a job's tested variants are fitted in: ``(ALL,)``, or those of autosomal and chrX that have variants.

    Raises:
        ConfigurationError: chrX variants outside the PARs in a differentially private job (its budget
            is split over one release of each kind); the fix is ``x_sex: false``, ``sex`` as a covariate, or
            ``regions`` without chrX.
    """
    if not fits_x_apart(parameters):
        return (ALL,)
    on_x = _on_x(variant_ids, parameters.assembly)
    if not on_x.any():
        return (ALL,)
    if parameters.privacy is not None:
        raise ConfigurationError(
            "gwas: with privacy terms chrX variants outside the PARs cannot get their own sex covariate (a second "
            "release the budget does not cover); set x_sex: false, add sex to the covariates, or select regions off chrX")
    return tuple(part for part, present in ((AUTOSOMAL, (~on_x).any()), (CHRX, True)) if present)


def part_mask(variant_ids: Sequence[str], part: str, assembly: str) -> np.ndarray:
    """(variants,) bool: the tested variants a part fits."""
    if part == ALL:
        return np.ones(len(variant_ids), bool)
    on_x = _on_x(variant_ids, assembly)
    return on_x if part == CHRX else ~on_x


def part_state(state: RegressionState, part: str) -> RegressionState:
    """The one-part job's state of ``part``: its variants, its covariates, and the census' short-form mask of them.

    The rs IDs and the ancestry-cluster HWE screen stay with the whole job's state (the
    result is published over every tested variant: :func:`~.phenotypes.stitched_result`).
    """
    if part == ALL:
        return state
    p = state.parameters
    mask = part_mask(state.variant_ids, part, p.assembly)
    complete = state.complete_mask
    return dataclasses.replace(
        state, parameters=x_parameters(p) if part == CHRX else p,
        variant_ids=tuple(np.asarray(state.variant_ids, dtype=object)[mask].tolist()),
        census_complete=None if complete is None else complete[mask], hwe=None, rsids=None)


def dataset_has_x(dataset: Dataset, assembly: str) -> bool:
    """Whether the dataset (a job's selection of it) holds a chrX variant outside the PARs (its variants tables only)."""
    for chunk in dataset.chunk_names:
        variants = dataset.variants(chunk)
        if variants_non_par_x(variants, assembly).any():
            return True
    return False


def check_site_assembly(parameters: GwasParameters, dataset: Dataset) -> None:
    """Refuses a dataset on another assembly than the job's: its PARs would be elsewhere.

    Raises:
        InputError: naming the dataset, its assembly and the job's.
    """
    recorded = dataset.genome_assembly
    if recorded is not None and recorded != parameters.assembly:
        raise InputError(f"{dataset.path}: the dataset is on {recorded}, the job places chrX's pseudo-autosomal regions "
                         f"by {parameters.assembly}; submit it with assembly: {recorded}")


def x_summary(state: RegressionState, num_variants: int) -> dict[str, Any]:
    """What the result says of its chrX part (the part's state, after its moments round): its fitted columns (no
    ``sex`` where the complete samples are of one sex, as plink2 adds none), its complete samples."""
    return {"variants": num_variants, "covariate_columns": list(state.columns),
            "num_samples": state.standardization.n, "assembly": state.parameters.assembly,
            "model": "plink2 --xchr-model 2: males coded 0/2, sex a covariate of chrX variants outside the "
                     "pseudo-autosomal regions only, samples of unknown sex left out of those"}
