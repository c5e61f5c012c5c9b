"""A site's side of the regression: its complete samples, their design, its genotype rows.

A site fits on its *complete* samples (phenotype and every covariate present; PC scores
from the PCA phase's basis appended to the covariates), standardized with the pooled
moments the coordinator published, and on the genotype rows of the job's variants it
holds. Reading those is most of a site step's time and every round of a job needs the
same ones, so they are kept in the job's :class:`~pipeline.analyses.SiteCache`:

* :func:`site_data` once per job (keyed by the dataset and :attr:`RegressionState.samples_digest`);
* :func:`complete_calls` for the Newton rounds, only where the rows fit the cache's byte
  budget (an entry larger than ``cache.max_bytes`` would not be kept, so it is not
  gathered either: the rows are then read block by block every round, as the linear
  round always does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.analyses.gwas.state import RegressionState
from pipeline.analyses.pca import local_scores
from pipeline.analyses.protocol import SiteContext
from pipeline.analyses.site_cache import SiteCache
from pipeline.dataset import Dataset, locate
from pipeline.errors import InputError

__all__ = ["SiteData", "below_minimum", "complete_calls", "design", "site_data"]

GenotypeRows = list[tuple[np.ndarray, np.ndarray]]
"""(positions in the job's variant list, int8 calls of the complete samples) per dataset block."""


@dataclass(frozen=True)
class SiteData:
    """A site's complete samples.

    Attributes:
        raw: (complete samples, columns) covariates then PC scores, float64, unstandardized.
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


def site_data(state: RegressionState, dataset: Dataset, cache: SiteCache) -> SiteData:
    """The site's complete samples for this job (read once, then from ``cache``).

    Raises:
        InputError: a missing or non-numeric column, a binary phenotype not coded 0/1,
            or a PCA phase that ended without loadings.
    """
    key = ("gwas.site_data", str(Path(dataset.path).resolve()), state.samples_digest)
    return cache.get(key, lambda: _read_site_data(state, dataset, cache))


def _column(samples: pa.Table, name: str, dataset: Dataset) -> np.ndarray:
    if name not in samples.column_names:
        known = [c for c in samples.column_names if c not in ("sample_index", "sample_id", "has_phenotypes")]
        raise InputError(f"{dataset.path}: the samples table has no column {name!r}; phenotype columns here: {known}")
    column = samples.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
        raise InputError(f"{dataset.path}: column {name!r} is {column.type}, a GWAS needs numeric values")
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def _read_site_data(state: RegressionState, dataset: Dataset, cache: SiteCache) -> SiteData:
    p = state.parameters
    samples = dataset.samples()
    phenotype = _column(samples, p.phenotype, dataset)
    columns = [_column(samples, name, dataset) for name in p.covariates]
    if state.pca is not None:
        if not state.pca.has_loadings:
            raise InputError("gwas: the PCA phase ended without loadings; cannot compute PC covariates")
        scores = local_scores(state.pca, dataset, cache)
        columns += [np.asarray(scores.column(f"PC{j + 1}").to_numpy(zero_copy_only=False), np.float64)
                    for j in range(scores.num_columns - 1)]
    raw = np.column_stack(columns) if columns else np.zeros((dataset.num_samples, 0))
    keep = np.isfinite(phenotype) & np.all(np.isfinite(raw), axis=1)
    if "has_phenotypes" in samples.column_names:
        keep &= np.asarray(samples.column("has_phenotypes").to_numpy(zero_copy_only=False), bool)
    if p.model == "logistic":
        bad = keep & ~np.isin(phenotype, (0.0, 1.0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{dataset.path}: sample {first} has {p.phenotype}={phenotype[first]:g}; a logistic GWAS needs 0 (control) "
                "or 1 (case), missing as NA"
            )
    return SiteData(raw[keep], phenotype[keep], keep)


def design(data: SiteData, state: RegressionState) -> tuple[np.ndarray, np.ndarray]:
    """Standardized covariates (intercept first) and phenotype, checked against max_abs_z.

    The phenotype is standardized for the linear model and kept 0/1 for the logistic one.

    Raises:
        InputError: a value lies more than ``max_abs_z`` SDs from the pooled mean (names the column).
    """
    p = state.parameters
    moments = state.standardization
    m = data.raw.shape[1]
    z = (data.raw - moments.mean[:m]) / moments.sd[:m]
    covariates = np.column_stack([np.ones(len(z)), z])
    if p.model == "linear":
        phenotype = (data.phenotype - moments.mean[m]) / moments.sd[m]
        values = np.column_stack([z, phenotype])
    else:
        phenotype = data.phenotype
        values = z
    if values.size and np.max(np.abs(values)) > p.max_abs_z:
        column = int(np.argmax(np.max(np.abs(values), axis=0)))
        names = [*state.columns, *([p.phenotype] if p.model == "linear" else [])]
        raise InputError(
            f"a value of {names[column]!r} lies more than max_abs_z={p.max_abs_z:g} standard deviations from the federation's "
            "mean; check that column for unit or coding errors, or raise max_abs_z in the job spec"
        )
    return covariates, phenotype


def _read_complete_calls(state: RegressionState, dataset: Dataset, keep: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Reads the site's rows of the job's variants, block by block (complete samples only)."""
    order = state.variant_order
    for block in dataset.iter_blocks():
        block_ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=str)
        where, present = locate(state.sorted_variant_ids, block_ids)
        if present.any():
            yield order[where[present]], np.ascontiguousarray(block.call_dosage[present][:, keep])


def complete_calls(state: RegressionState, dataset: Dataset, data: SiteData, cache: SiteCache | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions in the job's variant list, calls of the complete samples) per dataset block.

    With a ``cache`` (the Newton rounds, which read the same rows every round) the rows
    are kept for the next round when at most ``cache.max_bytes`` of them can exist;
    without one (the single linear round) they are streamed.
    """
    largest = len(state.variant_ids) * int(np.count_nonzero(data.keep))
    if cache is None or largest > cache.max_bytes:
        yield from _read_complete_calls(state, dataset, data.keep)
        return
    keep_digest = hashlib.sha256(np.packbits(data.keep).tobytes()).hexdigest()
    key = ("gwas.complete_calls", str(Path(dataset.path).resolve()), state.variants_digest, keep_digest)
    rows: GenotypeRows = cache.get(key, lambda: list(_read_complete_calls(state, dataset, data.keep)))
    yield from rows


def below_minimum(called: np.ndarray, alt_count: np.ndarray, site: SiteContext) -> np.ndarray:
    """1 where the site's own minor allele count of a variant is non-zero and below its policy minimum.

    As DataSHIELD's ``nfilter.tab``, a count of 0 is not a small cell: no carrier to identify.
    """
    minor = np.minimum(alt_count, 2 * called - alt_count)
    return ((minor > 0) & (minor < site.min_allele_count)).astype(np.int64)
