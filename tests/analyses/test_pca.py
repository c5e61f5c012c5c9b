"""Federated PCA: equal to a pooled SVD of the same standardized data, scores kept at the sites."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schemas
from pipeline.analyses import KeyUnion, SiteCache
from pipeline.analyses.pca import PCA, SCORES_FILE, PcaRound, local_scores
from pipeline.analyses.registry import get_analysis
from pipeline.dataset import open_dataset
from pipeline.encoding import Layout, Ring
from pipeline.errors import ConfigurationError, InputError
from pipeline.federation.baselines import pca_baselines
from pipeline.federation.in_memory import default_context, plain_sum, run_in_memory
from pipeline.ingest import ingest
from pipeline.sim.cohort import load_manifest
from tests.federation import runtime_support as rs

K = 4
SPEC = {"k": K, "window_bp": 2000, "iterations": 8, "maf": 0.05}


@pytest.fixture(scope="module")
def cohort(small_cohort, tmp_path_factory):
    """The small simulated cohort (3 sites, YRI/CEU/CHB mixes) ingested; site name -> dataset."""
    manifest = load_manifest(small_cohort)
    root = tmp_path_factory.mktemp("pca")
    datasets = {}
    for site in manifest.sites:
        datasets[site.name] = root / site.name
        ingest(manifest.resolve(site.vcf), out=datasets[site.name], fasta=small_cohort / "reference.fa.gz", chunk_size="250kb", workers=1)
    return datasets


@pytest.fixture(scope="module")
def federated(cohort):
    """The federated PCA through the real secure-aggregation protocol."""
    return run_in_memory(PCA, SPEC, cohort, secure=True, seed=3)


def _columns(table, names) -> np.ndarray:
    return np.column_stack([table.column(n).to_numpy() for n in names])


def naive_pooled_matrix(datasets, variant_ids) -> tuple[np.ndarray, list[str]]:
    """Samples x variants: every site's calls concatenated, standardized with the pooled frequency.

    Written independently of pipeline.stats.pca: per variant, p = mean of called dosages / 2
    over all samples, (g - 2p) / sqrt(2p(1-p)), missing -> 0.
    """
    columns, sample_ids = [], []
    for dataset in datasets:
        rows = {}
        for block in dataset.iter_blocks():
            for i, variant in enumerate(block.variants.column("variant_id").to_pylist()):
                rows[variant] = block.call_dosage[i]
        columns.append(np.stack([rows[v] for v in variant_ids]).astype(np.float64))
        sample_ids += dataset.samples().column("sample_id").to_pylist()
    calls = np.concatenate(columns, axis=1)
    out = np.zeros(calls.shape)
    for j, row in enumerate(calls):
        called = row[row >= 0]
        p = called.mean() / 2
        out[j] = np.where(row >= 0, (row - 2 * p) / math.sqrt(2 * p * (1 - p)), 0.0)
    return out.T, sample_ids


def _abs_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(abs(np.corrcoef(a, b)[0, 1]))


def test_pca__registered_and_spec_errors_name_the_key():
    assert get_analysis("pca") is PCA
    with pytest.raises(ConfigurationError, match="unknown spec key.*'kk'"):
        PCA.init({"kk": 4}, ("a", "b"))
    with pytest.raises(ConfigurationError, match="k must be an integer"):
        PCA.init({"k": 0}, ("a", "b"))
    with pytest.raises(ConfigurationError, match="score_scaling"):
        PCA.init({"score_scaling": "unit"}, ("a", "b"))
    state = PCA.init({}, ("a", "b"))
    assert state.round_kind is PcaRound.KEYS and isinstance(PCA.layout(state, 0), KeyUnion)


def test_pca__federated_secure_equals_pooled_svd_on_the_top_components(cohort, federated):
    result = federated.result
    final = federated.states[-1][1]
    assert final.round_kind is PcaRound.SCORES and result.summary["variant_set"]["selected"] >= 100
    loadings_table, eigen_table = result.tables["pca_loadings"], result.tables["pca_eigenvalues"]
    schemas.validate(loadings_table, "pca_loadings")
    schemas.validate(eigen_table, "pca_eigenvalues")
    variant_ids = loadings_table.column("variant_id").to_pylist()
    datasets = [open_dataset(cohort[name]) for name in sorted(cohort)]
    pooled, sample_ids = naive_pooled_matrix(datasets, variant_ids)
    u, s, vt = np.linalg.svd(pooled, full_matrices=False)
    names = [f"PC{c + 1}" for c in range(K)]
    loadings = _columns(loadings_table, names)
    scores_tables = [local_scores(final, d, SiteCache()) for d in datasets]
    scores = np.concatenate([_columns(t, names) for t in scores_tables])
    assert sum((t.column("sample_id").to_pylist() for t in scores_tables), []) == sample_ids
    for c in range(K):
        assert _abs_correlation(loadings[:, c], vt[c]) >= 0.999, c
        assert _abs_correlation(scores[:, c], u[:, c]) >= 0.999, c
    eigenvalues = eigen_table.column("eigenvalue").to_numpy()
    np.testing.assert_allclose(eigenvalues, s[:K] ** 2, rtol=1e-4)
    np.testing.assert_allclose(eigen_table.column("variance_explained").to_numpy(), s[:K] ** 2 / (s**2).sum(), rtol=1e-4)
    # eigenvector scaling: unit norm over all sites' samples, like plink2 --pca's .eigenvec
    np.testing.assert_allclose(np.linalg.norm(scores, axis=0), 1.0, rtol=1e-6)


def test_pca__top_components_separate_the_simulated_populations(small_cohort, cohort, federated):
    final = federated.states[-1][1]
    with open(small_cohort / "ancestry.tsv") as handle:
        population = {row["IID"]: row["population"] for row in csv.DictReader(handle, delimiter="\t")}
    ids, points = [], []
    for name in sorted(cohort):
        table = local_scores(final, open_dataset(cohort[name]), SiteCache())
        ids += table.column("sample_id").to_pylist()
        points.append(_columns(table, ["PC1", "PC2"]))
    points = np.concatenate(points)
    labels = np.array([population[i] for i in ids])
    assert len(set(labels)) == 3
    centroids = {p: points[labels == p].mean(axis=0) for p in set(labels)}
    names = sorted(centroids)
    distance = np.stack([np.linalg.norm(points - centroids[p], axis=1) for p in names], axis=1)
    predicted = np.array(names)[np.argmin(distance, axis=1)]
    assert (predicted == labels).mean() >= 0.95


def test_pca__secure_sum_fields_are_64_bit_fixed_point_with_fine_resolution(federated):
    state = next(s for _, s in federated.states if s.round_kind is PcaRound.ITERATE)
    layout = PCA.layout(state, 2)
    assert isinstance(layout, Layout) and layout.ring is Ring.R64
    for f in layout.fields:
        assert 2.0 ** -f.encoding.scale_bits <= 1e-9 * f.encoding.clip
    layout.check_bit_budget(3)


def test_pca__plain_and_secure_sums_give_the_same_components(cohort, federated):
    plain = run_in_memory(PCA, SPEC, cohort)
    a = federated.result.tables["pca_loadings"]
    b = plain.result.tables["pca_loadings"]
    names = [f"PC{c + 1}" for c in range(K)]
    np.testing.assert_allclose(_columns(a, names), _columns(b, names), atol=1e-9)


def _drive(cohort, spec, *, drop_in_round=None, tamper_scores=False, states=None):
    """Runs the rounds by hand (plain sums) so a test can drop a site or alter a total.

    Appends every state, the final one included, to ``states`` when given.
    """
    names = sorted(cohort)
    datasets = {n: open_dataset(cohort[n]) for n in names}
    contexts = {n: default_context(n) for n in names}
    state = PCA.init(spec, tuple(names))
    for round_index in range(100):
        if states is not None:
            states.append(state)
        layout = PCA.layout(state, round_index)
        sites = [n for n in names if not (state.round_kind is drop_in_round and n == names[-1])]
        parts = [PCA.site_step(state, round_index, datasets[n], contexts[n]) for n in sites]
        if isinstance(layout, KeyUnion):
            total = {layout.name: np.unique(np.concatenate([p[layout.name] for p in parts]))}
        else:
            total = plain_sum(layout, parts)
            if tamper_scores and state.round_kind is PcaRound.SCORES:
                total["score_sum_squares"] = total["score_sum_squares"] * 1.01
        state, done, result = PCA.coordinator_step(state, round_index, total, len(sites))
        if done:
            if states is not None:
                states.append(state)
            return state, result
    raise AssertionError("did not finish")


def test_pca__done_state_holds_everything_a_site_needs_for_its_scores(cohort, federated):
    state, result = _drive(cohort, {**SPEC, "iterations": 2})
    assert state.has_loadings and state.round_kind is PcaRound.DONE
    assert len(state.score_moments.sd) == K
    table = local_scores(state, open_dataset(cohort["site-1"]), SiteCache(), scaling="raw")
    assert table.schema.metadata[b"genofed.pca.scaling"] == b"raw"
    assert result.summary["iterations"] == 2


def test_pca__state_survives_json_at_every_round(cohort):
    states = []
    _drive(cohort, {**SPEC, "iterations": 2}, states=states)
    assert [s.round_kind for s in states] == [PcaRound.KEYS, PcaRound.COUNTS, PcaRound.ITERATE, PcaRound.ITERATE,
                                              PcaRound.SCORES, PcaRound.DONE]
    for state in states:
        data = state.to_json()
        again = PCA.state_from_json(json.loads(json.dumps(data)))
        assert again.to_json() == data
        assert again == state


def test_pca__site_dropping_out_after_the_counts_round_fails_the_job(cohort):
    with pytest.raises(InputError, match="changing set of samples"):
        _drive(cohort, {**SPEC, "iterations": 2}, drop_in_round=PcaRound.ITERATE)


def test_pca__scores_contradicting_the_eigenvalues_fail_the_job(cohort):
    with pytest.raises(InputError, match="data changed"):
        _drive(cohort, {**SPEC, "iterations": 2}, tamper_scores=True)


def test_pca__scores_need_the_final_loadings(cohort, federated):
    state = next(s for _, s in federated.states if s.round_kind is PcaRound.ITERATE)
    assert not state.has_loadings
    with pytest.raises(InputError, match="round 'iterate'"):
        local_scores(state, open_dataset(cohort["site-1"]), SiteCache())
    assert PCA.site_finish(state, open_dataset(cohort["site-1"]), default_context("site-1"), cohort["site-1"].parent / "x") is None


def test_pca__too_few_variants_names_the_filters(cohort):
    with pytest.raises(InputError, match="lower window_bp or maf"):
        _drive(cohort, {**SPEC, "window_bp": 10_000_000, "k": 4})


@pytest.mark.network
def test_pca__site_agents_write_their_scores_at_the_site_through_the_runtime(cohort, tmp_path):
    manifest = rs.provision_federation(tmp_path / "fed", dict(cohort), min_samples=5, analyses=("pca",))
    spec = {"analysis": "pca", **SPEC, "iterations": 3, "stage_timeout": 30}
    with rs.ThreadedCoordinator(manifest.coordinator.config):
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
            job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
            with rs.agent_threads(manifest, max_idle=60) as agents:
                status = rs.wait_for_job(analyst, job_id, timeout=120)
            assert status["status"] == "done", status
            from pipeline.federation.analyst_results import download_results

            results = download_results(analyst, job_id, tmp_path / "results")
    assert sorted(results["tables"]) == ["pca_eigenvalues", "pca_loadings"]
    loadings_table = pq.read_table(tmp_path / "results" / "pca_loadings.parquet")
    eigenvalues = pq.read_table(tmp_path / "results" / "pca_eigenvalues.parquet").column("eigenvalue").to_numpy()
    variant_ids = loadings_table.column("variant_id").to_pylist()
    names = [f"PC{c + 1}" for c in range(K)]
    loadings = _columns(loadings_table, names)
    datasets = [open_dataset(cohort[n]) for n in sorted(cohort)]
    pooled, sample_ids = naive_pooled_matrix(datasets, variant_ids)
    expected = pooled @ loadings / np.sqrt(eigenvalues)[None, :]
    written = []
    for name, agent in sorted(agents.items()):
        path = agent.state_dir / "results" / job_id / SCORES_FILE
        table = pq.read_table(path)
        schemas.validate(table, "pca_scores", source=str(path))
        written.append(table)
        assert table.num_rows == open_dataset(cohort[name]).num_samples
    got = np.concatenate([_columns(t, names) for t in written])
    assert sum((t.column("sample_id").to_pylist() for t in written), []) == sample_ids
    np.testing.assert_allclose(got, expected, atol=1e-8)
    log = (agents["site-1"].config.audit_log).read_text()
    assert "job.outputs_written" in log


def test_pca__simulation_baseline_reports_agreement_with_the_pooled_svd(cohort, federated, tmp_path):
    for name, table in federated.result.tables.items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
    summary = dict(federated.result.summary)
    report = pca_baselines(SPEC, [cohort[n] for n in sorted(cohort)], tmp_path, summary)
    assert (tmp_path / "pca_pooled_comparison.json").is_file()
    assert [row["component"] for row in report["components"]] == [f"PC{c + 1}" for c in range(K)]
    for row in report["components"]:
        assert row["loading_abs_correlation"] >= 0.999
        assert row["eigenvalue_relative_error"] < 1e-4
