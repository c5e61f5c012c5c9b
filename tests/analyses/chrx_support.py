"""Small cohorts with chr22, chrX PAR1 and chrX outside the PARs, males haploid there (stored 0/2, as ingest stores
them), some samples of unknown sex; and the same individuals as a VCF with haploid male calls and a .psam for plink2."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

AUTOSOMAL = [f"chr22:{p}:A:G" for p in range(1000, 1006)]
PAR = [f"chrX:{p}:A:G" for p in (1_000_000, 1_500_000, 2_700_000)]  # PAR1 of GRCh38 ends at 2,781,479
NON_PAR = [f"chrX:{p}:A:G" for p in range(5_000_000, 5_000_008)]
OUT_OF_HWE = NON_PAR[-1]
"""With ``out_of_hwe``: this variant has no heterozygous female (a strong departure from the X's equilibrium)."""
UNKNOWN_SEX = 6
"""Samples of unknown sex per site: complete on the autosomes, left out on chrX (enough apart for the ledger)."""


def make_site(root: Path, name: str, index: int, n: int, *, out_of_hwe: bool = False) -> dict:
    """A site's dataset and phenotypes (``sex`` 1/2, NaN for :data:`UNKNOWN_SEX` samples), and its arrays."""
    rng = np.random.default_rng(40 + index)
    sex = rng.integers(1, 3, n).astype(np.float64)
    sex[rng.choice(n, UNKNOWN_SEX, replace=False)] = np.nan
    male = sex == 1
    ids = AUTOSOMAL + PAR + NON_PAR
    calls = np.empty((len(ids), n), np.int8)
    for j, variant in enumerate(ids):
        f = rng.uniform(0.08, 0.5)
        diploid = rng.binomial(2, f, n)
        if out_of_hwe and variant == OUT_OF_HWE:
            diploid = 2 * rng.binomial(1, 0.4, n)
        calls[j] = np.where(male, 2 * rng.binomial(1, f, n), diploid) if variant in NON_PAR else diploid
    calls[rng.random(calls.shape) < 0.03] = -1
    age = rng.normal(50 + 2 * index, 10, n).round()
    g = np.where(calls >= 0, calls, 0).astype(np.float64)
    signal = 0.3 * g[len(AUTOSOMAL) + len(PAR)] + 0.2 * g[1]
    quant = 0.02 * age + 0.5 * male + signal + 0.3 * index + rng.normal(0, 1, n)
    liability = -1.0 + 0.02 * (age - 50) + 0.6 * male + signal + rng.normal(0, 1, n)
    binary = (liability > np.median(liability)).astype(np.float64)
    quant[rng.choice(np.flatnonzero(np.isfinite(sex)), 6, replace=False)] = np.nan  # a set 6 apart from every sample
    path = rs.write_dataset(root / name, ids, calls, sample_prefix=name)
    gs.write_phenotypes(path, {"age": age, "sex": sex, "quant_trait": quant, "binary_trait": binary})
    return {"ids": ids, "calls": calls, "age": age, "sex": sex, "quant_trait": quant, "binary_trait": binary, "path": path}


def write_vcf(sites: Mapping[str, dict], prefix: Path) -> None:
    """``prefix.vcf`` (haploid male calls outside the PARs), ``prefix.psam`` (SEX, NA unknown) and ``prefix.pheno.tsv``."""
    ids = AUTOSOMAL + PAR + NON_PAR
    samples, columns = [], {v: [] for v in ids}
    psam, pheno = ["#IID\tSEX"], ["#IID\tquant_trait\tbinary_trait\tage"]
    for name, site in sites.items():
        n = site["calls"].shape[1]
        names = [f"{name}_{i}" for i in range(n)]
        samples += names
        male = site["sex"] == 1
        for j, variant in enumerate(ids):
            for c, is_male in zip(site["calls"][j].tolist(), male.tolist()):
                if variant in NON_PAR and is_male:
                    columns[variant].append({-1: ".", 0: "0", 2: "1"}[c])
                else:
                    columns[variant].append({-1: "./.", 0: "0/0", 1: "0/1", 2: "1/1"}[c])
        for i, sample in enumerate(names):
            s = site["sex"][i]
            psam.append(f"{sample}\t{int(s) if np.isfinite(s) else 'NA'}")
            values = [site[k][i] for k in ("quant_trait", "binary_trait", "age")]
            pheno.append(sample + "".join(f"\t{v:g}" if np.isfinite(v) else "\tNA" for v in values))
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=22,length=50818468>", "##contig=<ID=X,length=156040895>",
             '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])]
    for variant in ids:
        contig, position, ref, alt = variant.split(":")
        lines.append("\t".join([contig.removeprefix("chr"), position, variant, ref, alt, ".", ".", ".", "GT",
                                *columns[variant]]))
    Path(f"{prefix}.vcf").write_text("\n".join(lines) + "\n")
    Path(f"{prefix}.psam").write_text("\n".join(psam) + "\n")
    Path(f"{prefix}.pheno.tsv").write_text("\n".join(pheno) + "\n")
