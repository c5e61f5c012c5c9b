"""Small GWAS cohorts built from numpy arrays, and pooled reference fits computed directly.

The references use the concatenated (samples x variants) data of all sites and
``numpy.linalg.lstsq`` (linear) or a textbook IRLS loop (logistic): a different route
from the federated sufficient statistics, which never form the pooled matrix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import outputs
from pipeline.analyses import Result
from pipeline.analyses.gwas.outputs import gwas_table
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")


@dataclass
class Site:
    ids: list[str]
    calls: np.ndarray  # (variants, samples) int8
    age: np.ndarray  # NaN missing
    sex: np.ndarray
    quant: np.ndarray
    binary: np.ndarray
    path: Path
    dosage: np.ndarray | None = None  # (variants, samples) float, NaN missing

    def genotypes(self, variant_id: str) -> np.ndarray:
        """The values a site regresses on: the dosage where present, else the hard call, else NaN (plink2's rule)."""
        j = self.ids.index(variant_id)
        calls = np.where(self.calls[j] >= 0, self.calls[j], np.nan)
        return calls if self.dosage is None else np.where(np.isfinite(self.dosage[j]), self.dosage[j], calls)


def write_bed(prefix: Path, calls: np.ndarray, variant_ids: list[str], sample_ids: list[str]) -> Path:
    """A PLINK 1 binary fileset (``prefix.bed/.bim/.fam``) of (variants, samples) int8 ALT counts, -1 missing.

    ``variant_ids`` are genofed keys ``chr:pos:ref:alt``: the .bim has ALT as A1 and REF as
    A2, so plink2 --glm's A1 is the ALT allele, as the federated GWAS's effect allele.
    """
    variants, samples = calls.shape
    code = np.array([1, 3, 2, 0], np.uint8)  # index by dosage + 1: missing 01, 0 ALT = hom A2 11, het 10, 2 ALT = hom A1 00
    padded = np.full((variants, (samples + 3) // 4 * 4), 1, np.uint8)
    padded[:, :samples] = code[calls.astype(np.int16) + 1]
    quads = padded.reshape(variants, -1, 4)
    packed = quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)
    with open(f"{prefix}.bed", "wb") as handle:
        handle.write(bytes([0x6C, 0x1B, 0x01]))
        handle.write(packed.astype(np.uint8).tobytes())
    bim = []
    for variant in variant_ids:
        contig, position, ref, alt = variant.split(":")
        bim.append(f"{contig.removeprefix('chr')}\t{variant}\t0\t{position}\t{alt}\t{ref}\n")
    Path(f"{prefix}.bim").write_text("".join(bim))
    Path(f"{prefix}.fam").write_text("".join(f"{sample}\t{sample}\t0\t0\t0\t-9\n" for sample in sample_ids))
    return prefix


def write_phenotypes(root: Path, columns: dict[str, np.ndarray]) -> None:
    """Replaces a dataset's samples table with one carrying phenotype columns (NaN -> null)."""
    n = len(next(iter(columns.values())))
    table = {
        "sample_index": pa.array(np.arange(n, dtype=np.int32)),
        "sample_id": pa.array([f"{root.name}-{i}" for i in range(n)], pa.string()),
        "has_phenotypes": pa.array([True] * n),
    }
    for name, values in columns.items():
        values = np.asarray(values, np.float64)
        table[name] = pa.array(values, pa.float64(), mask=np.isnan(values))
    outputs.write_table(pa.table(table), root / "samples.parquet", "samples")


def make_cohort(root: Path, *, seed: int = 0, sizes=(150, 110, 90), num_variants: int = 40) -> dict[str, Site]:
    """Three sites with overlapping variant sets, missing calls, phenotypes and covariates."""
    rng = np.random.default_rng(seed)
    positions = {"alpha": range(100, 100 + num_variants), "beta": range(105, 105 + num_variants),
                 "gamma": list(range(100, 100 + num_variants - 5)) + [900, 901]}
    effects = {p: (0.4 if p % 7 == 0 else 0.0) for p in range(100, 1000)}
    sites = {}
    for index, name in enumerate(SITES):
        n = sizes[index]
        ids = rs.variant_ids(positions[name])
        calls = rs.random_genotypes(seed * 10 + index, len(ids), n, missing_rate=0.04)
        for j, variant in enumerate(ids):  # a few variants rare at this site: 1 to 3 ALT alleles
            if int(variant.split(":")[1]) % 11 == 3:
                calls[j] = np.where(calls[j] < 0, -1, 0)
                calls[j, : 1 + j % 3] = 1
        age = rng.normal(55 + 3 * index, 10, n).round()
        sex = rng.integers(1, 3, n).astype(np.float64)
        dosage = np.where(calls >= 0, calls, 0).astype(np.float64)
        signal = sum(effects[int(v.split(":")[1])] * dosage[j] for j, v in enumerate(ids))
        quant = 0.5 + 0.02 * age - 0.3 * sex + signal + 0.2 * index + rng.normal(0, 1, n)
        liability = -3.0 + 0.03 * age + 0.4 * sex + signal + rng.normal(0, 1, n)
        binary = (liability > np.median(liability)).astype(np.float64)
        age[rng.random(n) < 0.03] = np.nan
        quant[rng.random(n) < 0.05] = np.nan
        binary[rng.random(n) < 0.05] = np.nan
        path = rs.write_dataset(root / name, ids, calls, sample_prefix=name)
        write_phenotypes(path, {"age": age, "sex": sex, "quant_trait": quant, "binary_trait": binary})
        sites[name] = Site(ids, calls, age, sex, quant, binary, path)
    return sites


def set_original_ids(root: Path, original_ids: Mapping[str, str | None]) -> None:
    """Rewrites a dataset's variants tables with ``original_id`` (the VCF ID) from ``variant_id -> ID`` (others null)."""
    for path in sorted((root / "variants").glob("*.parquet")):
        table = pq.read_table(path)
        ids = [original_ids.get(v) for v in table.column("variant_id").to_pylist()]
        table = table.set_column(table.column_names.index("original_id"), "original_id", pa.array(ids, pa.string()))
        outputs.write_table(table, path, "variants")


def ssf_validator() -> str | None:
    """``gwas-ssf`` (gwas-sumstats-tools 1.0.25) from ``GENOFED_GWAS_SSF`` or ``PATH``; ``None`` when absent (tests skip)."""
    return os.environ.get("GENOFED_GWAS_SSF") or shutil.which("gwas-ssf")


def genome_wide(result: Result, *, assembly: str | None) -> Result:
    """The job's statistics with variant i moved to autosome 1 + i % 22 (the validator wants every autosome)."""
    table = result.tables["gwas"]
    assert table.num_rows >= 22, "the cohort must publish a variant per autosome"
    column = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    ids = [f"chr{1 + i % 22}:{pos}:{ref}:{alt}" for i, (pos, ref, alt) in
           enumerate(zip(column["base_pair_location"], column["other_allele"], column["effect_allele"]))]
    spread = gwas_table(ids, column["beta"], column["standard_error"], column["effect_allele_frequency"], column["p_value"],
                        column["n"], column["rsid"].tolist())
    return Result({**result.summary, "genome_assembly": assembly}, {**result.tables, "gwas": spread})


def dataset_paths(sites: dict[str, Site]) -> dict[str, Path]:
    """Each site's dataset folder, as the runners take them."""
    return {name: site.path for name, site in sites.items()}


def pooled_design(sites: dict[str, Site], variant_id: str, phenotype: str) -> tuple[np.ndarray, np.ndarray]:
    """[1, age, sex, g] and y over all sites' complete samples with a called genotype."""
    rows, ys = [], []
    for site in sites.values():
        if variant_id not in site.ids:
            continue
        g = site.genotypes(variant_id)
        y = site.quant if phenotype == "quant_trait" else site.binary
        keep = np.isfinite(y) & np.isfinite(site.age) & np.isfinite(g)
        rows.append(np.column_stack([np.ones(keep.sum()), site.age[keep], site.sex[keep], g[keep]]))
        ys.append(y[keep])
    return np.concatenate(rows), np.concatenate(ys)


def contributing_sites(sites: dict[str, Site], variant_id: str, phenotype: str, minimum: int) -> dict[str, Site]:
    """The sites whose own minor allele count of the variant, over their complete samples, is 0 or at least ``minimum``:
    the others leave themselves out of its sums (a small cell)."""
    kept = {}
    for name, site in sites.items():
        if variant_id in site.ids:
            g = site.genotypes(variant_id)
            y = site.quant if phenotype == "quant_trait" else site.binary
            called = g[np.isfinite(y) & np.isfinite(site.age) & np.isfinite(g)]
            minor = min(called.sum(), 2 * called.size - called.sum())
            if 0 < minor < minimum:
                continue
        kept[name] = site
    return kept


def write_pooled_plink_inputs(cohort: Mapping[str, Site], root: Path) -> None:
    """The pooled cohort as one VCF (not-typed = missing; GT:DS where a site has dosages) and phenotype/covariate tables."""
    union = sorted({v for s in cohort.values() for v in s.ids}, key=lambda v: int(v.split(":")[1]))
    with_ds = any(site.dosage is not None for site in cohort.values())
    samples, records = [], {v: [] for v in union}
    pheno = ["#IID\tquant_trait\tbinary_trait\tage\tsex"]

    def text(values):
        return ["NA" if not np.isfinite(x) else f"{x:g}" for x in values]

    for name, site in cohort.items():
        n = site.calls.shape[1]
        samples += [f"{name}_{i}" for i in range(n)]
        row = {v: j for j, v in enumerate(site.ids)}
        for v in union:
            calls = site.calls[row[v]] if v in row else np.full(n, -1, np.int8)
            cells = [{-1: "./.", 0: "0/0", 1: "0/1", 2: "1/1"}[int(c)] for c in calls]
            if with_ds:
                ds = site.dosage[row[v]] if site.dosage is not None and v in row else np.full(n, np.nan)
                cells = [f"{cell}:{d!r}" if np.isfinite(d) else f"{cell}:." for cell, d in zip(cells, ds.tolist())]
            records[v] += cells
        for i, values in enumerate(zip(text(site.quant), text(site.binary), text(site.age), text(site.sex))):
            pheno.append(f"{name}_{i}\t" + "\t".join(values))
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=chr22>", '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
             '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">',
             "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])]
    for v in union:
        contig, position, ref, alt = v.split(":")
        lines.append("\t".join([contig, position, v, ref, alt, ".", ".", ".", "GT:DS" if with_ds else "GT", *records[v]]))
    (root / "pooled.vcf").write_text("\n".join(lines) + "\n")
    (root / "pheno.tsv").write_text("\n".join(pheno) + "\n")


def plink2_glm(root: Path, phenotype: str, *, vcf_options: Sequence[str] = (), columns: str = "",
               extra: Sequence[str] = ()) -> dict[str, dict[str, str]]:
    """``plink2 --glm`` (no Firth, covariates age and sex) on :func:`write_pooled_plink_inputs`'s files, rows by ID.

    ``vcf_options``: e.g. ``("dosage=DS",)``; ``columns``: a ``cols=`` modifier, e.g. ``"cols=+a1freq,+beta"``;
    ``extra``: more plink2 arguments, e.g. ``("--keep", "keep.txt")``.
    """
    arguments = ["plink2", "--vcf", str(root / "pooled.vcf"), *vcf_options, "--pheno", str(root / "pheno.tsv"),
                 "--pheno-name", phenotype, "--covar", str(root / "pheno.tsv"), "--covar-name", "age,sex",
                 "--glm", "hide-covar", "no-firth", *([columns] if columns else []),
                 "--1", "--threads", "1", *extra, "--out", str(root / phenotype)]
    done = subprocess.run(arguments, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    suffix = "linear" if phenotype == "quant_trait" else "logistic"
    return read_plink2_table(root / f"{phenotype}.{phenotype}.glm.{suffix}")


def read_plink2_table(path: Path) -> dict[str, dict[str, str]]:
    """A plink2 output table's rows by ID (header ``#CHROM`` read as ``CHROM``)."""
    header, *body = path.read_text().splitlines()
    names = header.lstrip("#").split("\t")
    return {row["ID"]: row for row in (dict(zip(names, line.split("\t"))) for line in body)}


def assert_equals_plink2_glm(reference: Mapping[str, Mapping[str, str]], rows: Sequence[Mapping], variant_ids: Sequence[str]
                             ) -> list[str]:
    """Each variant's OBS_CT, BETA and SE from ``plink2 --glm`` (``reference``, by ID) equal the published row's (n,
    beta to 1e-5 with plink2's tested allele's sign, SE to 1e-5), where both have an estimate.

    Returns:
        The CHROM plink2 gave each variant compared (``PAR1`` after ``--split-par``), in order.
    """
    ours = {row["variant_id"]: row for row in rows}
    compared = []
    for variant in variant_ids:
        theirs, row = reference[variant], ours[variant]
        if theirs["ERRCODE"] != "." or row["beta"] is None:
            continue
        assert int(theirs["OBS_CT"]) == row["n"], variant
        sign = 1.0 if theirs["A1"] == variant.split(":")[3] else -1.0  # plink2 names the allele it tested
        assert sign * float(theirs["BETA"]) == pytest.approx(row["beta"], rel=1e-5, abs=1e-9), variant
        assert float(theirs["SE"]) == pytest.approx(row["standard_error"], rel=1e-5), variant
        compared.append(theirs["CHROM"])
    return compared


def assert_equals_pooled_ols(rows: list[dict], sites: dict[str, Site], phenotype: str = "quant_trait", *, rel: float = 1e-6) -> None:
    """Each published row's n, beta and SE equal ordinary least squares on the pooled individuals."""
    for row in rows:
        x, y = pooled_design(sites, row["variant_id"], phenotype)
        beta, se = pooled_ols(x, y)
        assert row["n"] == len(y), row["variant_id"]
        assert row["beta"] == pytest.approx(beta, rel=rel), row["variant_id"]
        assert row["standard_error"] == pytest.approx(se, rel=rel), row["variant_id"]


def pooled_ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Genotype beta and its standard error by least squares on the pooled rows."""
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    df = x.shape[0] - x.shape[1]
    q, r = np.linalg.qr(x)
    r_inv = np.linalg.inv(r)
    covariance = r_inv @ r_inv.T * (residual @ residual / df)
    return float(beta[-1]), float(np.sqrt(covariance[-1, -1]))


def pooled_irls(x: np.ndarray, y: np.ndarray, *, iterations: int = 100) -> tuple[float, float]:
    """Genotype log-odds ratio and Wald standard error by iteratively reweighted least squares."""
    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        eta = x @ beta
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p)
        z = eta + (y - p) / w
        sw = np.sqrt(w)
        new, *_ = np.linalg.lstsq(x * sw[:, None], z * sw, rcond=None)
        if np.max(np.abs(new - beta)) < 1e-13:
            beta = new
            break
        beta = new
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    covariance = np.linalg.inv(x.T @ (x * (p * (1 - p))[:, None]))
    return float(beta[-1]), float(np.sqrt(covariance[-1, -1]))


def pooled_firth(x: np.ndarray, y: np.ndarray, *, iterations: int = 500) -> tuple[float, float]:
    """Firth-penalized logistic fit (logistf's algorithm: modified score, step halving on the
    penalized log-likelihood); the genotype's coefficient and Wald standard error."""

    def penalized(beta: np.ndarray) -> float:
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        information = x.T @ (x * (p * (1 - p))[:, None])
        return float(np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)) + 0.5 * np.linalg.slogdet(information)[1])

    beta = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        w = p * (1 - p)
        inverse = np.linalg.inv(x.T @ (x * w[:, None]))
        h = w * np.einsum("ij,jk,ik->i", x, inverse, x)
        step = inverse @ (x.T @ (y - p + h * (0.5 - p)))
        step *= min(1.0, 5.0 / np.max(np.abs(step)))
        current = penalized(beta)
        while penalized(beta + step) < current - 1e-12 and np.max(np.abs(step)) > 1e-14:
            step /= 2
        beta = beta + step
        if np.max(np.abs(step)) < 1e-12:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ beta)))
    covariance = np.linalg.inv(x.T @ (x * (p * (1 - p))[:, None]))
    return float(beta[-1]), float(np.sqrt(covariance[-1, -1]))


def simulated_datasets(root: Path, *, sites: int, samples: int, region: str, background_regions: Sequence[str],
                       seed: int) -> tuple[Path, dict[str, Path]]:
    """``genofed cohort simulate`` into ``root/cohort``, each site ingested with its phenotypes (FASTA check, 250 kb chunks).

    Returns:
        The cohort folder and each site's dataset.
    """
    from pipeline.ingest import ingest
    from pipeline.sim.cohort import load_manifest, simulate_cohort

    simulate_cohort(root / "cohort", sites=sites, samples=samples, region=region, background_regions=background_regions,
                    seed=seed)
    manifest = load_manifest(root / "cohort")
    datasets = {}
    for site in manifest.sites:
        datasets[site.name] = root / site.name
        ingest(manifest.resolve(site.vcf), phenotypes=manifest.resolve(site.phenotypes), out=datasets[site.name],
               fasta=root / "cohort" / "reference.fa.gz", chunk_size="250kb", workers=1)
    return root / "cohort", datasets
