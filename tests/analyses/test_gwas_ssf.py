"""The GWAS result a consortium submits: GWAS-SSF v1.1, bgzipped, tabix-indexed, checked by the reference validator.

Real linear and logistic jobs (in memory, through secure aggregation) are rendered with
:func:`write_outputs`; for the validator, which expects a genome-wide file, the same
statistics are spread over the 22 autosomes. ``gwas-ssf validate`` (gwas-sumstats-tools
1.0.25, in its own environment: see ``.ci/run``) is found through ``GENOFED_GWAS_SSF`` or
``PATH``; without it those tests skip. Metadata is also loaded into the validator's own
pydantic model, since ``validate`` reads only the data file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pysam
import pytest
import yaml

from pipeline import outputs
from pipeline.analyses.gwas import GWAS, write_outputs
from pipeline.analyses.gwas.outputs import DATA_FILE, DATA_FILES
from pipeline.federation.in_memory import run_in_memory
from tests.analyses import gwas_support as gs

BASE = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1}
SPECS = {"linear": {**BASE, "model": "linear", "phenotype": "quant_trait"},
         "logistic": {**BASE, "model": "logistic", "phenotype": "binary_trait"}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.make_cohort(tmp_path_factory.mktemp("gwas-ssf"), seed=4)


@pytest.fixture(scope="module")
def runs(cohort):
    return {model: run_in_memory(GWAS, spec, gs.dataset_paths(cohort), secure=True, seed=7) for model, spec in SPECS.items()}


@pytest.mark.parametrize("model", ["linear", "logistic"])
def test_gwas_ssf__linear_and_logistic_results_pass_the_reference_validator(runs, model, tmp_path):
    validator = gs.ssf_validator()
    if validator is None:
        pytest.skip("gwas-ssf (gwas-sumstats-tools 1.0.25) not found: set GENOFED_GWAS_SSF or put it on PATH (see .ci/run)")
    write_outputs(gs.genome_wide(runs[model].result, assembly="GRCh38"), tmp_path)
    done = subprocess.run([validator, "validate", "--min-rows", "1", str(tmp_path / DATA_FILE)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "Validation status: True" in done.stdout, done.stdout + done.stderr
    python = Path(validator).with_name("python")
    if python.exists():  # the metadata against the validator's own model (validate reads only the data file)
        check = ("import sys, yaml; from gwas_sumstats_tools.schema.metadata import SumStatsMetadata; "
                 "m = SumStatsMetadata(**yaml.safe_load(open(sys.argv[1]))); print(m.genome_assembly, m.samples[0].case_count)")
        done = subprocess.run([str(python), "-c", check, str(tmp_path / f"{DATA_FILE}-meta.yaml")], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[0] == "GRCh38"


def test_gwas_ssf__tabix_reads_a_region_back(runs, tmp_path):
    result = gs.genome_wide(runs["linear"].result, assembly=None)
    write_outputs(result, tmp_path)
    table = result.tables["gwas"].to_pandas()
    on_7 = table[table["chromosome"] == "7"]
    low, high = int(on_7["base_pair_location"].min()), int(on_7["base_pair_location"].max())
    with pysam.TabixFile(str(tmp_path / DATA_FILE)) as handle:
        assert sorted(handle.contigs, key=int) == [str(c) for c in range(1, 23)]
        rows = [line.split("\t") for line in handle.fetch("7", low - 1, high)]  # 0-based half-open: 7:low-high
        assert list(handle.fetch("7", high, high + 10**6)) == []  # nothing past the last position on 7
    assert [int(r[1]) for r in rows] == on_7["base_pair_location"].tolist()
    assert [r[9] for r in rows] == [f"7_{p}_{o}_{e}" for p, o, e in
                                    zip(on_7["base_pair_location"], on_7["other_allele"], on_7["effect_allele"])]


def test_gwas_ssf__metadata_md5_names_and_case_control_counts(runs, cohort, tmp_path):
    result = runs["logistic"].result
    write_outputs(result, tmp_path)
    meta = yaml.safe_load((tmp_path / f"{DATA_FILE}-meta.yaml").read_text())
    assert meta["data_file_name"] == DATA_FILE
    assert meta["data_file_md5sum"] == hashlib.md5((tmp_path / DATA_FILE).read_bytes()).hexdigest()
    assert gzip.decompress((tmp_path / DATA_FILE).read_bytes()).startswith(b"chromosome\tbase_pair_location\t")
    # Reference: the complete cases (phenotype and every covariate present) counted directly in the sites' samples.
    samples = pd.concat([pd.read_parquet(path / "samples.parquet") for path in gs.dataset_paths(cohort).values()])
    complete = samples.dropna(subset=["binary_trait", "age", "sex"])
    sample = meta["samples"][0]
    assert sample["case_control_study"] is True
    assert (sample["case_count"], sample["control_count"]) == (int((complete["binary_trait"] == 1).sum()),
                                                               int((complete["binary_trait"] == 0).sum()))
    assert sample["sample_size"] == len(complete) == result.summary["num_cases"] + result.summary["num_controls"]
    assert meta["adjusted_covariates"] == ["age", "sex"] and "covariates" not in meta
    assert meta["genome_assembly"] == "NR" and meta["coordinate_system"] == "1-based"
    write_outputs(runs["linear"].result, tmp_path / "linear")
    linear = yaml.safe_load((tmp_path / "linear" / f"{DATA_FILE}-meta.yaml").read_text())
    assert "case_count" not in linear["samples"][0] and "num_cases" not in runs["linear"].result.summary


def test_gwas_ssf__result_files_are_readable_by_others_and_keys_stay_private(runs, tmp_path):
    previous = os.umask(0o022)
    try:
        written = write_outputs(runs["linear"].result, tmp_path / "results")
        with outputs.atomic_directory(tmp_path / "download") as folder:
            (folder / "gwas.tsv.gz").write_bytes(b"")
        outputs.write_private(tmp_path / "key.bin", b"secret")
    finally:
        os.umask(previous)
    assert set(DATA_FILES) <= set(written)
    for name in written:
        assert stat.S_IMODE((tmp_path / "results" / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((tmp_path / "download").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "download" / "gwas.tsv.gz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "key.bin").stat().st_mode) == 0o600
