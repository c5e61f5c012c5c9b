"""What a site computes from its own genotypes: the selected calls and its samples' scores.

Every round after the counts reads the same rows of the site's genotypes (the selected
variants), so a site keeps them, as int8 (8x smaller than the standardized float64
matrix), in the job's :class:`~pipeline.analyses.SiteCache`, keyed by the dataset and
the selection's digest. Scores ``G_s v_c`` never leave the site: :func:`local_scores`
computes them from a state that holds the loadings (the GWAS uses it for its PC
covariates) and :func:`write_scores` keeps them at the site as ``pca_scores.parquet``.

Scaling ``eigenvector`` (the default) divides by ``sqrt(eigenvalue)``, as plink2
--pca's ``.eigenvec`` (unit norm over all sites' samples, the pooled SVD's left
singular vectors); ``raw`` keeps ``G_s v_c``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline import outputs, schemas
from pipeline.analyses.pca.state import PARAMS, PcaState, VariantSelection
from pipeline.analyses.site_cache import SiteCache
from pipeline.dataset import Dataset, selected_calls
from pipeline.errors import InputError
from pipeline.parameters import check_value
from pipeline.stats import pca as linalg

__all__ = ["SCORES_FILE", "local_scores", "site_calls", "write_scores"]

SCORES_FILE = "pca_scores.parquet"
"""The file a site writes its samples' scores to, in the job's results folder at the site."""


def site_calls(selection: VariantSelection, dataset: Dataset, cache: SiteCache) -> np.ndarray:
    """The site's int8 calls of the selected variants (rows in selection order, -1 where absent).

    Kept in ``cache`` under the dataset's path and the selection's digest: every
    iteration and the scores read the same rows.
    """
    key = ("pca.site_calls", str(Path(dataset.path).resolve()), selection.digest)
    return cache.get(key, lambda: selected_calls(dataset, selection.variant_ids))


def _sample_ids(dataset: Dataset) -> list[str]:
    """The dataset's sample IDs in genotype column order."""
    samples = dataset.samples()
    ids = samples.column("sample_id").to_pylist()
    if "sample_index" in samples.column_names:
        order = np.argsort(np.asarray(samples.column("sample_index").to_numpy(zero_copy_only=False)), kind="stable")
        ids = [ids[i] for i in order]
    return [str(i) for i in ids]


def local_scores(state: PcaState, dataset: Dataset, cache: SiteCache, *, scaling: str | None = None) -> pa.Table:
    """This site's PC scores from a PCA state that holds the loadings (round ``scores`` or ``done``).

    Args:
        state: the PCA job's state after the iterations.
        dataset: the site's dataset (the same one it contributed from).
        cache: the site's cache for the job (the selected calls may already be there).
        scaling: ``eigenvector`` (divide by sqrt(eigenvalue), plink2 --pca style) or
            ``raw``; default: the job's ``score_scaling``.

    Returns:
        A ``pca_scores`` table: sample_id, PC1..PCk (float64), with the scaling in its
        schema metadata (``genofed.pca.scaling``).

    Raises:
        InputError: the state has no loadings yet.
        ConfigurationError: an unknown ``scaling``.
    """
    if state.loadings is None or state.selection is None or state.standardization is None:
        raise InputError(
            f"pca: the job's state is at round {state.round_kind.value!r}; scores need the final loadings "
            "(round 'scores' or 'done')"
        )
    scaling = check_value(PARAMS["score_scaling"], scaling or state.parameters.score_scaling, where="pca", name="scaling")
    calls = site_calls(state.selection, dataset, cache)
    standardization = state.standardization
    raw = linalg.project(calls, standardization.mean, standardization.inv_scale, state.loadings.vectors)
    eigenvalues = state.loadings.eigenvalue_array()
    if scaling == "eigenvector":
        raw = raw / np.sqrt(np.where(eigenvalues > 0, eigenvalues, 1.0))[None, :]
    columns: dict[str, pa.Array] = {"sample_id": pa.array(_sample_ids(dataset), pa.string())}
    for c in range(raw.shape[1]):
        columns[f"PC{c + 1}"] = pa.array(raw[:, c], pa.float64())
    table = schemas.conform(pa.table(columns), "pca_scores", source="pca scores")
    metadata = {**(table.schema.metadata or {}), b"genofed.pca.scaling": scaling.encode()}
    return table.replace_schema_metadata(metadata)


def write_scores(table: pa.Table, out_dir: Path) -> Path:
    """Writes a :func:`local_scores` table to ``out_dir/pca_scores.parquet`` (atomically) and returns the path."""
    path = Path(out_dir) / SCORES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with outputs.atomic_file(path, force=True) as tmp:
        outputs.write_table(table, tmp, "pca_scores", source=str(path))
    return path
