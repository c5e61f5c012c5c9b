"""Hardy-Weinberg within ancestry clusters (``hwe_within: ancestry_clusters``): k-means, the round, the spec checks.

The cohort: two sites, each mixing two populations whose allele frequencies differ
widely at some variants (so each site's own test fails them by the Wahlund effect) and
agree at the others, plus one variant truly out of HWE in every population (everyone
heterozygous).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from pipeline.analyses.census import HWE_FIELD, TYPED_FIELD
from pipeline.analyses.gwas import GWAS, REGRESSION, GwasParameters, RegressionState
from pipeline.analyses.gwas.hwe_clusters import screen_hwe
from pipeline.analyses.gwas.regression import HWE_ROUND, moments_round
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, ProtocolError
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.stats.kmeans import kmeans
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

PCA = {"window_bp": 1, "maf": 0.01, "min_allele_count": 1, "min_call_rate": 0.0}
SPEC = {"phenotype": "quant_trait", "pcs": 2, "pca": PCA, "min_call_rate": 0.0, "min_allele_count": 1, "hwe_p": 1e-6}
AIMS = range(100, 130)  # positions whose frequency differs between the populations
NEUTRAL = range(200, 230)
EXCESS_HET = 300


def _two_blobs(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.normal(0, 0.3, (40, 2)), rng.normal((5, 5), 0.3, (30, 2)), rng.normal((0, 6), 0.3, (50, 2))])


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans__separable_blobs_match_scipy_kmeans2_and_are_deterministic():
    points = _two_blobs(np.random.default_rng(1))
    fit = kmeans(points, 3)
    _, reference = kmeans2(points, 3, minit="++", seed=np.random.default_rng(7))
    assert _same_partition(fit.labels, reference)
    truth = np.repeat([0, 1, 2], [40, 30, 50])
    assert _same_partition(fit.labels, truth)
    for cluster in range(3):
        assert np.allclose(fit.centers[cluster], points[fit.labels == cluster].mean(axis=0))
    again = kmeans(points, 3)
    assert np.array_equal(again.labels, fit.labels) and again.inertia == fit.inertia
    assert kmeans(points[:2], 3).labels.tolist() in ([0, 1], [1, 0], [0, 2], [2, 0], [1, 2], [2, 1])
    assert kmeans(np.zeros((0, 2)), 3).labels.size == 0
    with pytest.raises(ValueError, match="finite"):
        kmeans(np.array([[np.nan, 0.0]]), 1)


def _mixed_site(root, name: str, seed: int, per_population: int = 120):
    rng = np.random.default_rng(seed)
    population = np.repeat([0, 1], per_population)
    low = rng.uniform(0.05, 0.15, len(AIMS))
    aims = rng.binomial(2, np.where(population[None, :] == 0, low[:, None], 1 - low[:, None]))
    neutral = rng.binomial(2, rng.uniform(0.2, 0.5, (len(NEUTRAL), 1)), (len(NEUTRAL), population.size))
    het = np.ones((1, population.size), np.int64)
    calls = np.concatenate([aims, neutral, het]).astype(np.int8)
    ids = rs.variant_ids([*AIMS, *NEUTRAL, EXCESS_HET])
    path = rs.write_dataset(root / name, ids, calls, sample_prefix=name)
    gs.write_phenotypes(path, {"quant_trait": rng.normal(0, 1, population.size) + 0.5 * population})
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp("hwe_clusters")
    return {name: _mixed_site(root, name, seed) for seed, name in enumerate(("alpha", "beta"))}


@pytest.fixture(scope="module")
def within_sites(mixed):
    return run_in_memory(GWAS, SPEC, mixed, seed=1)


@pytest.fixture(scope="module")
def within_clusters(mixed):
    return run_in_memory(GWAS, {**SPEC, "hwe_within": "ancestry_clusters"}, mixed, secure=True, seed=2)


def _statuses(run) -> dict[str, str]:
    table = run.result.tables["gwas_status"]
    return dict(zip(table.column("variant_id").to_pylist(), table.column("status").to_pylist()))


def test_hwe_within_sites__a_site_mixing_populations_fails_the_differing_variants(within_sites):
    statuses = _statuses(within_sites)
    assert not set(rs.variant_ids(AIMS)) & set(statuses)  # the census' within-site test failed them (Wahlund)
    assert rs.variant_ids([EXCESS_HET])[0] not in statuses
    assert set(rs.variant_ids(NEUTRAL)) <= set(statuses)
    assert "hwe_cluster_failures" not in within_sites.result.summary["variants"]


def test_hwe_within_clusters__keeps_the_differing_variants_and_fails_the_excess_heterozygotes(within_clusters):
    statuses = _statuses(within_clusters)
    kept = rs.variant_ids([*AIMS, *NEUTRAL])
    assert all(statuses[v] == "OK" for v in kept)
    assert statuses[rs.variant_ids([EXCESS_HET])[0]] == "HWE_CLUSTER_FAIL"
    assert list(statuses) == sorted(statuses)  # the withheld variant keeps its census position
    variants = within_clusters.result.summary["variants"]
    assert variants["hwe_cluster_failures"] == 1 and variants["tested"] == len(kept)
    assert variants["status"]["HWE_CLUSTER_FAIL"] == 1
    assert within_clusters.result.summary["phases"]["census"]["parameters"]["hwe_p"] == 0.0
    assert rs.variant_ids([EXCESS_HET])[0] not in within_clusters.result.tables["gwas"].column("variant_id").to_pylist()


def _hwe_round(run):
    """(job round, state) of the regression phase's HWE round."""
    gwas = GWAS.phase_named("gwas")
    return next((r, s) for r, s in run.states if s.phase == gwas and r - s.offset == HWE_ROUND)


def test_hwe_within_clusters__sites_send_two_flags_and_the_state_round_trips(within_clusters, mixed):
    round_index, state = _hwe_round(within_clusters)
    layout = GWAS.layout(state, round_index)
    assert [f.name for f in layout.fields] == [HWE_FIELD, TYPED_FIELD]
    assert GWAS.privacy_spend(state, round_index) is None
    inner = state.inner
    assert moments_round(inner.parameters) == HWE_ROUND + 1
    out = REGRESSION.site_step(inner, HWE_ROUND, open_dataset(mixed["alpha"]), default_context("alpha"))
    assert set(out) == {HWE_FIELD, TYPED_FIELD}
    assert out[TYPED_FIELD].tolist() == [1] * len(inner.variant_ids)
    assert out[HWE_FIELD].tolist() == [0] * (len(inner.variant_ids) - 1) + [1]  # only the excess heterozygotes
    # A site's own minimum allele count: a variant below it is not typed there, so never flagged.
    strict = dataclasses.replace(default_context("alpha"), min_allele_count=10**6)
    out = REGRESSION.site_step(inner, HWE_ROUND, open_dataset(mixed["alpha"]), strict)
    assert out[HWE_FIELD].sum() == 0 and out[TYPED_FIELD].sum() == 0
    final = within_clusters.states[-1][1].inner
    assert isinstance(final, RegressionState) and final.hwe is not None
    assert RegressionState.from_json(final.to_json()).to_json() == final.to_json()


def test_hwe_within_clusters__coordinator_refuses_flags_no_honest_site_gives(within_clusters):
    _, state = _hwe_round(within_clusters)
    v = len(state.inner.variant_ids)
    typed = np.ones(v, np.int64)
    with pytest.raises(ProtocolError, match="hwe_fail"):
        screen_hwe(state.inner, {TYPED_FIELD: typed, HWE_FIELD: typed * 2}, 2)
    with pytest.raises(ProtocolError, match="typed"):
        screen_hwe(state.inner, {TYPED_FIELD: typed * 3, HWE_FIELD: typed * 0}, 2)


def test_hwe_within__spec_checks():
    base = {"phenotype": "quant_trait"}
    assert GwasParameters.parse(base).hwe_within == "sites"
    with pytest.raises(ConfigurationError, match="pcs >= 1"):
        GwasParameters.parse({**base, "hwe_within": "ancestry_clusters"})
    with pytest.raises(ConfigurationError, match="differentially private"):
        GwasParameters.parse({**base, "hwe_within": "ancestry_clusters", "pcs": 2,
                              "privacy": {"epsilon": 3.0, "delta": 1e-6}})
    with pytest.raises(ConfigurationError, match="hwe_within"):
        GwasParameters.parse({**base, "hwe_within": "clusters", "pcs": 2})
    with pytest.raises(ConfigurationError, match="hwe_clusters"):
        GwasParameters.parse({**base, "hwe_within": "ancestry_clusters", "pcs": 2, "hwe_clusters": 0})
    clusters = GwasParameters.parse({**base, "model": "logistic", "phenotype": "binary_trait", "pcs": 2,
                                     "hwe_within": "ancestry_clusters", "hwe_samples": "controls"})
    census = clusters.census_spec()
    assert census["hwe_p"] == 0.0 and "hwe_controls" not in census  # the census does not filter on HWE
    assert GwasParameters.parse({**base, "hwe_p": 1e-4}).census_spec()["hwe_p"] == 1e-4


@pytest.mark.slow
def test_hwe_within_clusters__simulated_cohort_fails_fewer_variants_and_keeps_every_causal_one(tmp_path):
    """The simulated sites mix ancestries: within their clusters fewer variants fail HWE than within the sites."""
    import csv

    from pipeline.ingest import ingest
    from pipeline.sim.cohort import load_manifest, simulate_cohort

    simulate_cohort(tmp_path / "cohort", sites=3, samples=1000, region="chr22:16000000-18000000", seed=0)
    manifest = load_manifest(tmp_path / "cohort")
    datasets = {site.name: tmp_path / site.name for site in manifest.sites}
    for site in manifest.sites:
        ingest(manifest.resolve(site.vcf), phenotypes=manifest.resolve(site.phenotypes), out=datasets[site.name],
               fasta=tmp_path / "cohort" / "reference.fa.gz", chunk_size="250kb", workers=1)
    spec = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "maf": 0.01, "pcs": 4,
            "pca": {"window_bp": 2000, "maf": 0.05}}
    sites = _statuses(run_in_memory(GWAS, spec, datasets, seed=1))
    clusters = _statuses(run_in_memory(GWAS, {**spec, "hwe_within": "ancestry_clusters"}, datasets, seed=1))
    failing_within_sites = len(clusters) - len(sites)  # the census filters differ by the HWE rule only
    failing_within_clusters = sum(status == "HWE_CLUSTER_FAIL" for status in clusters.values())
    assert set(sites) <= set(clusters) and failing_within_clusters < failing_within_sites
    with open(tmp_path / "cohort" / "truth.tsv", newline="") as handle:
        causal = {(r["chromosome"], r["base_pair_location"]) for r in csv.DictReader(handle, delimiter="\t")
                  if r["kind"] == "causal"}
    by_position = {tuple(v.split(":")[:2]): status for v, status in clusters.items()}
    assert causal and all(by_position.get(c) not in (None, "HWE_CLUSTER_FAIL") for c in causal)
