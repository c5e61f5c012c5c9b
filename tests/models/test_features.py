"""Feature matrices, federated standardization and feature selection from GWAS tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import open_dataset
from pipeline.errors import PhenotypeError
from pipeline.models.features import FeatureSpec, held_out, moment_statistics, read_site_data, standardization, standardize, top_hits
from tests.models.training_support import planted_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return planted_cohort(tmp_path_factory.mktemp("features"), sizes=(40, 70, 25), num_variants=14, missing_rate=0.1)


def _spec(ids, **kw):
    return FeatureSpec(tuple(ids), ("age", "sex"), "binary_trait", "binary", **kw)


def test_federated_standardization__equals_pooled_mean_and_sd_of_the_training_splits(cohort):
    ids = open_dataset(cohort["site-1"]).variants().column("variant_id").to_pylist()
    spec = _spec(ids[:6] + ["chr9:1:A:C"])  # one variant no site has
    data = [read_site_data(open_dataset(path), spec) for path in cohort.values()]
    totals = {k: sum(moment_statistics(d)[k] for d in data) for k in moment_statistics(data[0])}
    scaling = standardization(totals, task="binary")
    pooled = np.concatenate([d.features[d.train] for d in data])
    np.testing.assert_allclose(scaling.mean[:6], np.nanmean(pooled[:, :6], axis=0))
    np.testing.assert_allclose(scaling.scale[:6], np.nanstd(pooled[:, :6], axis=0))
    np.testing.assert_allclose(scaling.mean[7:], pooled[:, 7:].mean(axis=0))
    assert scaling.mean[6] == 0.0 and scaling.scale[6] == 1.0
    x = standardize(data[0].features, scaling)
    assert x.dtype == np.float32 and not np.isnan(x).any()
    assert np.all(x[np.isnan(data[0].features)] == 0.0)


def test_read_site_data__missing_target_column_names_the_file_and_the_columns(cohort):
    spec = FeatureSpec((), ("age",), "bmi", "quantitative")
    with pytest.raises(PhenotypeError, match=r"samples.parquet: no column 'bmi'.*binary_trait"):
        read_site_data(open_dataset(cohort["site-1"]), spec)


def test_held_out__deterministic_by_seed_and_sample_id():
    ids = [f"S{i}" for i in range(2000)]
    a = held_out(ids, seed=1, fraction=0.25)
    assert np.array_equal(a, held_out(ids, seed=1, fraction=0.25))
    assert np.array_equal(a[::-1], held_out(ids[::-1], seed=1, fraction=0.25))
    assert 0.2 < a.mean() < 0.3
    assert not np.array_equal(a, held_out(ids, seed=2, fraction=0.25))


def test_top_hits__smallest_p_values_first_from_gwas_ssf_columns(tmp_path):
    table = pa.table({
        "chromosome": ["chr22"] * 4, "base_pair_location": [10, 20, 30, 40], "other_allele": ["A"] * 4,
        "effect_allele": ["G"] * 4, "p_value": [0.5, 1e-9, None, 1e-4],
    })
    pq.write_table(table, tmp_path / "gwas.parquet")
    assert top_hits(tmp_path / "gwas.parquet", top=2) == ["chr22:20:A:G", "chr22:40:A:G"]
    assert top_hits(tmp_path / "gwas.parquet", top=5, p_value_max=1e-3) == ["chr22:20:A:G", "chr22:40:A:G"]


def test_screening_statistics__streamed_sums_equal_the_dense_matrix_and_rank_the_causal_variants(cohort):
    from pipeline.models.features import screening_scores, screening_statistics
    from tests.models.training_support import CAUSAL

    ids = open_dataset(cohort["site-2"]).variants().column("variant_id").to_pylist()
    spec = _spec(ids)
    per_site = []
    for path in cohort.values():
        stats = screening_statistics(open_dataset(path), spec)
        data = read_site_data(open_dataset(path), spec)
        x = data.features[data.train][:, : len(ids)]
        y = data.target[data.train]
        observed = ~np.isnan(x)
        filled = np.where(observed, x, 0.0)
        np.testing.assert_array_equal(stats["count"], observed.sum(axis=0))
        np.testing.assert_allclose(stats["xy_sum"], filled.T @ y)
        np.testing.assert_allclose(stats["y_sumsq"], observed.T @ (y**2))
        per_site.append(stats)
    totals = {k: sum(s[k] for s in per_site) for k in per_site[0]}
    scores = screening_scores(totals)
    top = {ids[i] for i in np.argsort(-scores)[:6]}
    assert sum(f"chr22:{1000 + 10 * i}:A:G" in top for i in CAUSAL) >= 3
