"""The census on chrX outside the PARs: a male counted once, Hardy-Weinberg by Graffelman-Weir at each site.

References: plink2 ``--freq counts`` and ``--hardy`` (``.hardy.x``) with ``--split-par b38`` on the pooled VCF and on
each site's VCF (haploid male calls, sex from a .psam), and the counts written out directly here.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyses.census import CENSUS, COUNT_FIELDS, check_x_counts
from pipeline.analyses.census_chrx import X_FIELDS, x_rows
from pipeline.errors import ProtocolError
from pipeline.federation.in_memory import run_in_memory
from pipeline.stats.hwe import hwe_exact_p
from tests.analyses import chrx_support as cs
from tests.analyses import gwas_support as gs

SITES = ("alpha", "beta", "gamma")
SPEC = {"min_allele_count": 1, "min_call_rate": 0.0, "hwe_p": 1e-6, "maf": 0.0}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("census_chrx")
    return {name: cs.make_site(root, name, i, n, out_of_hwe=name == "alpha")
            for i, (name, n) in enumerate(zip(SITES, (160, 120, 100)))}


@pytest.fixture(scope="module")
def census(cohort):
    return run_in_memory(CENSUS, SPEC, {name: site["path"] for name, site in cohort.items()}, secure=True, seed=7)


def _rows(run) -> dict[str, dict]:
    return {row["variant_id"]: row for row in run.result.tables["census_variants"].to_pylist()}


def test_allele_counts__a_male_counts_once_outside_the_pars_and_unknown_sex_twice(cohort, census):
    rows = _rows(census)
    for variant in cs.AUTOSOMAL + cs.PAR + cs.NON_PAR:
        alt = number = 0
        for site in cohort.values():
            calls = site["calls"][site["ids"].index(variant)]
            called = calls >= 0
            haploid = (site["sex"] == 1) & (variant in cs.NON_PAR)
            alt += int(np.sum(np.where(haploid, calls // 2, calls)[called]))
            number += int(np.sum(np.where(haploid, 1, 2)[called]))
        assert (rows[variant]["allele_count"], rows[variant]["allele_number"]) == (alt, number), variant
        assert rows[variant]["alt_allele_frequency"] == pytest.approx(alt / number, rel=1e-12)


def test_hwe__the_out_of_equilibrium_x_variant_fails_at_its_site_only(census):
    rows = _rows(census)
    assert rows[cs.OUT_OF_HWE]["n_sites_hwe_fail"] == 1
    assert "hwe" in rows[cs.OUT_OF_HWE]["filter"]
    assert all(rows[v]["n_sites_hwe_fail"] == 0 for v in cs.NON_PAR[:-1])


def _plink2(prefix: Path, *arguments: str) -> None:
    done = subprocess.run(["plink2", "--vcf", f"{prefix}.vcf", "--psam", f"{prefix}.psam", "--split-par", "b38",
                           "--threads", "1", *arguments, "--out", str(prefix)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 not installed")
def test_equals_plink2_freq_and_hardy_on_the_pooled_and_per_site_vcfs(cohort, census, tmp_path):
    rows = _rows(census)
    pooled = tmp_path / "pooled"
    cs.write_vcf(cohort, pooled)
    _plink2(pooled, "--freq", "counts", "--hardy")
    counts = gs.read_plink2_table(Path(f"{pooled}.acount"))
    hardy = {**gs.read_plink2_table(Path(f"{pooled}.hardy")), **gs.read_plink2_table(Path(f"{pooled}.hardy.x"))}
    for variant, row in rows.items():
        assert (row["allele_count"], row["allele_number"]) == (int(counts[variant]["ALT_CTS"]),
                                                               int(counts[variant]["OBS_CT"])), variant
        assert row["hwe_p_value"] == pytest.approx(float(hardy[variant]["P"]), rel=1e-4, abs=1e-300), variant
    failing = {variant: 0 for variant in rows}
    for name, site in cohort.items():  # each site's own test: plink2 --hardy on its samples
        prefix = tmp_path / name
        cs.write_vcf({name: site}, prefix)
        _plink2(prefix, "--hardy")
        for table in (".hardy", ".hardy.x"):
            for variant, row in gs.read_plink2_table(Path(f"{prefix}{table}")).items():
                failing[variant] += float(row["P"]) < SPEC["hwe_p"]
    assert failing[cs.OUT_OF_HWE] == 1
    assert {v: row["n_sites_hwe_fail"] for v, row in rows.items()} == failing


def test_a_site_reporting_no_sex_tests_its_chrx_as_an_autosome(cohort, tmp_path):
    site = cohort["alpha"]
    path = tmp_path / "nosex"
    shutil.copytree(site["path"], path)
    gs.write_phenotypes(path, {"age": site["age"], "quant_trait": site["quant_trait"]})
    run = run_in_memory(CENSUS, SPEC, {"alpha": path}, secure=False)
    rows = _rows(run)
    calls = site["calls"][site["ids"].index(cs.OUT_OF_HWE)]
    p = hwe_exact_p(*(np.array([np.sum(calls == g)]) for g in (0, 1, 2)))[0]
    assert rows[cs.OUT_OF_HWE]["n_sites_hwe_fail"] == int(p < SPEC["hwe_p"]) == 1
    assert rows[cs.OUT_OF_HWE]["allele_number"] == 2 * int(np.sum(calls >= 0))  # no known male: all diploid


def test_attack__sums_of_males_and_females_beyond_the_totals_are_refused():
    """A site (or a coordinator's forged sum) claiming more male hom-alt calls than the total hom-alt calls."""
    ids = ["chr22:100:A:G", "chrX:5000000:A:G"]
    rows = x_rows(ids, "GRCh38")
    assert rows.tolist() == [1]
    counts = {name: np.array([10, 10]) for name in COUNT_FIELDS}
    by_sex = {name: np.array([3]) for name in X_FIELDS}
    check_x_counts(counts, by_sex, rows, ids)
    with pytest.raises(ProtocolError, match="chrX:5000000:A:G"):
        check_x_counts(counts, {**by_sex, "male_n_hom_alt": np.array([8])}, rows, ids)
    with pytest.raises(ProtocolError, match="at least 0"):
        check_x_counts(counts, {**by_sex, "female_n_het": np.array([-1])}, rows, ids)
