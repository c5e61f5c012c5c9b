"""chrX end to end on simulated data: ``genofed cohort simulate`` with a chrX region across PAR1 (males haploid outside
it), ingest, and the federated GWAS with the default QC, against plink2 --glm --split-par b38 on the pooled individuals."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.analyses.gwas import GWAS
from pipeline.dataset import open_dataset, selected_calls
from pipeline.federation.in_memory import run_in_memory
from tests.analyses import gwas_support as gs

SPEC = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age"], "maf": 0.01}
"""The default QC (HWE within sites, Graffelman-Weir on chrX), sex a covariate on chrX outside the PARs only."""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    _, datasets = gs.simulated_datasets(tmp_path_factory.mktemp("chrx-sim"), sites=2, samples=300,
                                        region="chr22:16000000-16400000", background_regions=["chrX:2300000-3300000"], seed=3)
    return datasets


@pytest.fixture(scope="module")
def gwas(simulated):
    return run_in_memory(GWAS, SPEC, simulated, secure=True, seed=9)


def test_simulated_chrx__both_sides_of_par1_are_tested_and_males_are_haploid_outside(simulated, gwas):
    ids = [row["variant_id"] for row in gwas.result.tables["gwas"].to_pylist()]
    contigs = {v.split(":")[0] for v in ids}
    on_x = [int(v.split(":")[1]) for v in ids if v.startswith("chrX:")]
    assert contigs == {"chr22", "chrX"}
    assert min(on_x) <= 2_781_479 < max(on_x)  # PAR1 (GRCh38) and beyond
    assert gwas.result.summary["chrx"]["variants"] == sum(p > 2_781_479 for p in on_x) > 100
    dataset = open_dataset(simulated["site-1"])
    sex = np.asarray(pq.read_table(simulated["site-1"] / "samples.parquet").column("sex").to_pylist(), float)
    beyond = [v for v in ids if v.startswith("chrX:") and int(v.split(":")[1]) > 2_781_479][:50]
    calls = selected_calls(dataset, beyond)
    assert not np.any(calls[:, sex == 1] == 1)  # a male's haploid call is 0 or 2 (plink2's xchr-model 2)
    assert np.any(calls[:, sex == 2] == 1)


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 not installed")
def test_simulated_chrx__equals_plink2_glm_with_split_par_on_the_pooled_individuals(simulated, gwas, tmp_path):
    status = gwas.result.tables["gwas_status"].to_pydict()
    compared_ids = [v for v, s, left_out in zip(status["variant_id"], status["status"], status["n_sites_left_out"])
                    if s == "OK" and left_out == 0]
    calls, fam, pheno = [], [], ["#FID\tIID\ty\tage"]
    for path in simulated.values():
        samples = pq.read_table(path / "samples.parquet").to_pydict()
        y, age = (np.array([np.nan if v is None else v for v in samples[c]], float) for c in ("quant_trait", "age"))
        keep = np.isfinite(y) & np.isfinite(age)
        calls.append(selected_calls(open_dataset(path), compared_ids)[:, keep])
        for i in np.flatnonzero(keep):
            sample, sex = samples["sample_id"][i], samples["sex"][i]
            fam.append(f"{sample}\t{sample}\t0\t0\t{int(sex) if sex in (1, 2) else 0}\t-9")
            pheno.append(f"{sample}\t{sample}\t{float(y[i])!r}\t{float(age[i])!r}")
    prefix = gs.write_bed(tmp_path / "pooled", np.concatenate(calls, axis=1), compared_ids, ["x"] * len(fam))
    (tmp_path / "pooled.fam").write_text("\n".join(fam) + "\n")
    (tmp_path / "pheno.tsv").write_text("\n".join(pheno) + "\n")
    done = subprocess.run(["plink2", "--bfile", str(prefix), "--split-par", "b38", "--pheno", str(tmp_path / "pheno.tsv"),
                           "--pheno-name", "y", "--covar", str(tmp_path / "pheno.tsv"), "--covar-name", "age", "--glm",
                           "hide-covar", "--threads", "1", "--out", str(tmp_path / "plink2")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    reference = gs.read_plink2_table(tmp_path / "plink2.y.glm.linear")
    chromosomes = gs.assert_equals_plink2_glm(reference, gwas.result.tables["gwas"].to_pylist(), compared_ids)
    assert all(chromosomes.count(name) > 20 for name in ("22", "PAR1", "X")), {c: chromosomes.count(c) for c in set(chromosomes)}
