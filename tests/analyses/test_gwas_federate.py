"""The GWAS job through the real runtime (``genofed federate``: coordinator and site agents as
processes, mutual TLS, SQLite state), and the science on a simulated cohort (slow)."""

from __future__ import annotations

import csv
import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.analyses import SiteCache
from pipeline.analyses.gwas import GWAS, write_outputs
from pipeline.analyses.gwas.site_data import site_data
from pipeline.dataset import open_dataset, selected_calls
from pipeline.demo import DEFAULT_BACKGROUND_REGIONS, DEFAULT_REGION, causal_hits, null_inflation, run_federated_gwas
from pipeline.federation.in_memory import run_in_memory
from pipeline.federation.localhost import federate
from pipeline.stats.glm import genomic_inflation
from tests.analyses import gwas_support as gs


@pytest.mark.network
def test_gwas_federate__results_folder_equals_pooled_ols(tmp_path):
    # Seed 6: every site lacks the phenotype or a covariate for at least 5 people (12, 7, 10), so the complete cases
    # and the census over every sample are not too close for the sites' min_set_difference (a seed giving 1 to 4
    # would have that site decline, rightly: the two sets would differ by those few people's genotypes).
    cohort = gs.make_cohort(tmp_path / "data", seed=6)
    for site in cohort.values():  # VCF IDs: the rs ID round names them, and the file carries them
        gs.set_original_ids(site.path, {v: f"rs{v.split(':')[1]}" for v in site.ids})
    spec = {"analysis": "gwas", "model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"],
            "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 5, "stage_timeout": 60}
    summary = federate([site.path for site in cohort.values()], spec, tmp_path / "run", timeout=300)
    results = Path(summary["results"])
    assert summary["status"] == "done" and summary["summary"]["analysis"] == "gwas"
    for name in ("gwas.tsv.gz", "gwas.tsv.gz.tbi", "gwas.tsv.gz-meta.yaml", "manhattan.png", "qq.png", "gwas.parquet", "gwas_status.parquet",
                 "summary.json"):
        assert (results / name).is_file(), name
    assert yaml.safe_load((results / "gwas.tsv.gz-meta.yaml").read_text())["file_type"] == "GWAS-SSF v1.1"
    rows = pq.read_table(results / "gwas.parquet").to_pylist()
    assert len(rows) >= 30
    assert all(row["rsid"] == f"rs{row['base_pair_location']}" for row in rows)
    with gzip.open(results / "gwas.tsv.gz", "rt") as handle:
        assert handle.readline().rstrip("\n").split("\t")[-2:] == ["variant_id", "rsid"]
    # provisioned sites (policy min_allele_count 5) leave themselves out of a variant where their own minor allele count
    # is 1..4: those variants are fitted over the other sites' samples
    status = {r["variant_id"]: r for r in pq.read_table(results / "gwas_status.parquet").to_pylist()}
    left_out = 0
    for row in rows:
        sites = gs.contributing_sites(cohort, row["variant_id"], "quant_trait", 5)
        assert status[row["variant_id"]]["n_sites_left_out"] == len(cohort) - len(sites)
        left_out += len(sites) < len(cohort)
        x, y = gs.pooled_design(sites, row["variant_id"], "quant_trait")
        beta, se = gs.pooled_ols(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6)
    assert left_out, "the cohort should have variants where a site holds a small cell"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """The demo's cohort: 3 sites x 1000 simulated samples over 2 Mb of chr22 (the trait region) and 2 Mb of chr21 (a null
    background, unlinked and without causal variants), ingested with their phenotypes."""
    return gs.simulated_datasets(tmp_path_factory.mktemp("gwas-sim"), sites=3, samples=1000, region=DEFAULT_REGION,
                                 background_regions=DEFAULT_BACKGROUND_REGIONS, seed=0)


SIM_SPEC = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "maf": 0.01,
            "pca": {"window_bp": 2000, "maf": 0.05}}


@pytest.fixture(scope="module")
def simulated_gwas(simulated, tmp_path_factory):
    """The demo's GWAS (4 PCs, default QC) of the simulated cohort, in memory, with its files written."""
    _, datasets = simulated
    run = run_in_memory(GWAS, {**SIM_SPEC, "pcs": 4}, datasets, secure=True, seed=1)
    out = tmp_path_factory.mktemp("gwas-sim-results")
    write_outputs(run.result, out)
    return run, out


@pytest.mark.slow
def test_gwas_simulated__causal_variants_genome_wide_significant_and_null_chromosome_uninflated_with_pcs(simulated, simulated_gwas):
    cohort, _ = simulated
    run, results = simulated_gwas
    assert set(run.result.tables) == {"gwas", "gwas_status", "pca_loadings", "pca_eigenvalues"}
    hits = causal_hits(results / "gwas.tsv.gz", cohort / "truth.tsv")
    assert len(hits) == 10 and all(hit["significant"] for hit in hits), hits
    null = null_inflation(results / "gwas.tsv.gz", ["chr21"])  # sites of different ancestry mixes, adjusted by 4 PCs
    assert null["variants"] > 5000 and 0.95 <= null["lambda_gc"] <= 1.10, null
    assert run.result.summary["lambda_gc"] > null["lambda_gc"]  # the trait region's true signal, spread through LD


@pytest.mark.slow
def test_gwas_simulated__equals_plink2_glm_on_the_pooled_individuals_with_the_same_pcs(simulated, simulated_gwas, tmp_path):
    """Default QC, 4 federated PCs, two chromosomes: plink2 --glm on the pooled complete samples, given each site's own PC
    scores as covariates, agrees on every variant that no site left out (its small cell would change the pooled set)."""
    if shutil.which("plink2") is None:
        pytest.skip("plink2 is not installed")
    _, datasets = simulated
    run, _ = simulated_gwas
    state = run.states[-1][1].inner
    tested = run.result.tables["gwas_status"].to_pydict()
    compared_ids = sorted(v for v, status, left_out in zip(tested["variant_id"], tested["status"], tested["n_sites_left_out"])
                          if status == "OK" and left_out == 0)
    calls, samples, rows = [], [], []
    for name, path in datasets.items():
        dataset = open_dataset(path)
        data = site_data(state, dataset, SiteCache())
        calls.append(selected_calls(dataset, compared_ids)[:, data.keep])
        ids = np.asarray(dataset.samples().column("sample_id").to_pylist())[data.keep]
        samples += list(ids)
        rows += ["\t".join([i, i, repr(float(y)), *(repr(float(x)) for x in raw)]) for i, y, raw in zip(ids, data.phenotype, data.raw)]
    prefix = gs.write_bed(tmp_path / "pooled", np.concatenate(calls, axis=1), compared_ids, samples)
    columns = [*SIM_SPEC["covariates"], "PC1", "PC2", "PC3", "PC4"]
    (tmp_path / "pheno.tsv").write_text("\n".join(["#FID\tIID\ty\t" + "\t".join(columns), *rows]) + "\n")
    done = subprocess.run(["plink2", "--bfile", str(prefix), "--pheno", str(tmp_path / "pheno.tsv"), "--pheno-name", "y",
                           "--covar", str(tmp_path / "pheno.tsv"), "--covar-name", ",".join(columns), "--covar-variance-standardize", "--glm", "hide-covar",
                           "--threads", "1", "--out", str(tmp_path / "plink2")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = gs.read_plink2_table(tmp_path / "plink2.y.glm.linear")
    compared = len(gs.assert_equals_plink2_glm(reference, run.result.tables["gwas"].to_pylist(), compared_ids))
    assert compared > 10_000 and {v.split(":")[0] for v in compared_ids} == {"chr21", "chr22"}


@pytest.mark.slow
def test_gwas_simulated__pcs_remove_stratification_of_a_null_trait(simulated, tmp_path):
    """A trait with population means but no genetic effect: lambda_GC far above 1 without PCs, near 1 with."""
    cohort, datasets = simulated
    population = {row["IID"]: row["population"] for row in csv.DictReader(open(cohort / "ancestry.tsv"), delimiter="\t")}
    shift = {"YRI": 0.6, "CEU": 0.0, "CHB": -0.5}
    rng = np.random.default_rng(11)
    copies = {}
    for name, path in datasets.items():
        copy = tmp_path / name
        shutil.copytree(path, copy)
        samples = pq.read_table(copy / "samples.parquet")
        ids = samples.column("sample_id").to_pylist()
        null_trait = np.array([shift[population[i]] for i in ids]) + rng.normal(0, 1, len(ids))
        columns = {c: np.asarray(samples.column(c).to_numpy(zero_copy_only=False), np.float64) for c in ("age", "sex")}
        gs.write_phenotypes(copy, {**columns, "null_trait": null_trait})
        copies[name] = copy
    spec = {**SIM_SPEC, "phenotype": "null_trait"}
    without = run_in_memory(GWAS, {**spec, "pcs": 0}, copies).result.summary["lambda_gc"]
    with_pcs = run_in_memory(GWAS, {**spec, "pcs": 4}, copies).result.summary["lambda_gc"]
    assert without > 3.0
    assert 0.85 < with_pcs < 1.2, (without, with_pcs)
    assert genomic_inflation(np.array([0.5])) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.network
def test_gwas_federate__demo_job_with_pcs_finds_causal_hits_and_sites_keep_scores(simulated, tmp_path):
    cohort, datasets = simulated
    result = run_federated_gwas(list(datasets.values()), tmp_path / "run", truth=cohort / "truth.tsv", pcs=4)
    assert result["status"] == "done"
    hits = result["causal_hits"]
    assert len(hits) == 10 and all(hit["significant"] for hit in hits), result["text"]
    results = Path(result["results"])
    for name in ("pca_loadings.parquet", "pca_eigenvalues.parquet", "gwas.tsv.gz", "manhattan.png", "qq.png"):
        assert (results / name).is_file(), name
    scores = sorted((tmp_path / "run" / "federation" / "sites").glob("*/**/pca_scores.parquet"))
    assert len(scores) == 3, "each site keeps its own PC scores"
    assert sum(pq.read_table(path).num_rows for path in scores) == sum(
        pq.read_table(Path(d) / "samples.parquet").num_rows for d in datasets.values())


@pytest.mark.slow
def test_census_simulated__default_qc_keeps_every_causal_variant_the_pooled_hwe_test_would_fail(simulated):
    """Sites of different ancestry: the pooled Hardy-Weinberg test (plink2 --hwe on all samples) fails true variants whose
    frequencies differ between populations; tested within sites, the default QC keeps them, every causal one included."""
    from pipeline.analyses.census import CENSUS

    cohort, datasets = simulated
    table = run_in_memory(CENSUS, {"maf": 0.01}, datasets).result.tables["census_variants"].to_pydict()
    row = {variant: j for j, variant in enumerate(table["variant_id"])}
    truth = csv.DictReader(open(cohort / "truth.tsv"), delimiter="\t")
    causal = [f"{r['chromosome']}:{r['base_pair_location']}:{r['ref']}:{r['alt']}" for r in truth if r["kind"] == "causal"]
    tested = [row[variant] for variant in causal if variant in row]
    verdicts = [(table["variant_id"][j], table["filter"][j]) for j in tested]
    # every causal variant passes, or fails only the MAF cut (a rare one of the binary trait)
    assert len(tested) >= 10 and all(f in ("PASS", "maf") for _, f in verdicts), verdicts
    assert sum(f == "PASS" for _, f in verdicts) >= 10, verdicts
    pooled_fail = [j for j, p in enumerate(table["hwe_p_value"]) if p is not None and p < 1e-6]
    kept = [j for j in pooled_fail if "hwe" not in table["filter"][j]]
    assert kept, "no variant fails the pooled test: the cohort shows no stratification to guard against"
    assert all(table["n_sites_hwe_fail"][j] == 0 for j in kept)
