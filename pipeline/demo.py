"""``genofed demo``: a whole federation's site pipeline on this machine, end to end.

Simulates a multi-site cohort (each site with its own file quirks), ingests every site's
VCF/BCF against the shared reference, runs each site's local QC, then federates the
analyses (a census, a GWAS with PCs, a risk model) across the sites by secure
aggregation and prints a short report: the GWAS's hits among the simulated causal
variants (:func:`causal_hits`), and the federated model next to local-only and pooled
ones. Everything lands under one output folder, so a user can open every intermediate
file with plain pyarrow/pandas.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipeline import outputs
from pipeline.analyses.gwas.outputs import DATA_FILE, ssf_chromosome
from pipeline.federation.job_spec import load_spec
from pipeline.federation.localhost import federate, summary_text
from pipeline.harmonize.contigs import canonical_contig
from pipeline.ingest import ingest
from pipeline.qc import run_qc
from pipeline.resources import workflows_dir
from pipeline.sim.ancestry import parse_region
from pipeline.sim.cohort import simulate_cohort
from pipeline.stats.glm import genomic_inflation

log = logging.getLogger(__name__)

DEFAULT_REGION = "chr22:16000000-18000000"
DEFAULT_BACKGROUND_REGIONS = ("chr21:16000000-18000000",)


def run_demo(
    out: Path | str,
    *,
    sites: int = 3,
    samples: int = 1000,
    region: str = DEFAULT_REGION,
    background_regions: Sequence[str] = DEFAULT_BACKGROUND_REGIONS,
    seed: int = 0,
    force: bool = False,
    training_rounds: int = 10,
    progress: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs simulate → ingest → qc (per site) → federated jobs; returns the summary.

    Args:
        out: folder for everything the demo writes (``cohort/``, ``datasets/``,
            ``qc/``, ``summary.json``); refused if it exists unless ``force``.
        sites, samples, region, background_regions, seed: the simulated cohort (see
            ``genofed cohort simulate``); the GWAS reports lambda_GC on the background regions.
        training_rounds: rounds of the federated risk model (short for a demo).
        say: where progress lines go (the CLI passes ``click.echo``).
    """
    root = Path(out)
    outputs.check_output_path(root, force=force)
    started = time.perf_counter()
    summary: dict[str, Any] = {"out": str(root), "sites": {}}
    with outputs.atomic_directory(root, force=force) as work:
        background = "".join(f" and a null background {each}" for each in background_regions)
        say(f"[1/6] simulating {sites} sites x {samples} samples: trait region {region}{background} (seed {seed})")
        manifest = simulate_cohort(work / "cohort", sites=sites, samples=samples, region=region,
                                   background_regions=background_regions, seed=seed, progress=progress)
        reference = manifest.resolve(manifest.reference)
        say("[2/6] ingesting each site's genotypes (harmonized to the reference)")
        for site in manifest.sites:
            report = ingest(
                manifest.resolve(site.vcf),
                out=work / "datasets" / site.name,
                fasta=reference,
                phenotypes=manifest.resolve(site.phenotypes),
                progress=progress,
            )
            summary["sites"][site.name] = {"ingest": _ingest_digest(report)}
            say(f"      {site.name}: {_ingest_line(report)}")
        say("[3/6] local QC at each site")
        for site in manifest.sites:
            qc = run_qc(work / "datasets" / site.name, out=work / "qc" / site.name, progress=progress)
            summary["sites"][site.name]["qc"] = {"variants": qc["variants"], "samples": qc["samples"]}
            variants = qc["variants"]
            say(f"      {site.name}: {variants['passing']:,} of {variants['total']:,} variants pass QC")
        datasets = [work / "datasets" / site.name for site in manifest.sites]
        say("[4/6] federated variant census: global counts by secure aggregation over mutual TLS")
        census = federate(datasets, load_spec(workflows_dir() / "census.yaml"), work / "census")
        summary["census"] = census["summary"]
        say(_indent(summary_text(census), work, root))
        say("[5/6] federated GWAS of quant_trait on age, sex and 4 PCs (census -> PCA -> exact linear regression)")
        gwas = run_federated_gwas(datasets, work / "gwas", truth=manifest.resolve(manifest.truth), pcs=4,
                                  null_contigs=[parse_region(region).contig for region in manifest.background_regions])
        summary["gwas"] = {key: gwas["summary"][key] for key in ("lambda_gc", "variants", "num_samples") if key in gwas["summary"]}
        summary["gwas"]["causal_hits"] = gwas.get("causal_hits", [])
        summary["gwas"]["null"] = gwas.get("null")
        say(_indent(gwas["text"], work, root))
        say(f"[6/6] federated training of a risk model for binary_trait ({training_rounds} rounds, with local and pooled baselines)")
        training = run_federated_training(datasets, work / "train", rounds=training_rounds)
        summary["training"] = training.get("baselines", {}).get("metrics", {})
        say(_indent(training["text"], work, root))
        summary["seconds"] = round(time.perf_counter() - started, 1)
        (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["out"] = str(root)
    return summary


def _ingest_digest(report: dict[str, Any]) -> dict[str, Any]:
    """The few ingest counters the demo shows (keys of ``ingest-report.json``)."""
    return {
        "records_read": report["records_read"],
        "variants_written": report["variants_written"],
        "multiallelic_records_split": report["multiallelic_records_split"],
        "swapped": report["swapped"],
        "strand_flipped": report["strand_flipped"],
        "strand_ambiguous": report["strand_ambiguous"],
        "dropped": sum(report["dropped"].values()),
        "samples_matched": report["samples"]["matched"],
        "samples": report["samples"]["in_vcf"],
    }


def _ingest_line(report: dict[str, Any]) -> str:
    d = _ingest_digest(report)
    return (
        f"{d['records_read']:,} records -> {d['variants_written']:,} variants "
        f"({d['multiallelic_records_split']} multi-allelic split, {d['swapped']} REF/ALT swaps fixed, "
        f"{d['strand_ambiguous']} strand-ambiguous, {d['dropped']} dropped); "
        f"{d['samples_matched']}/{d['samples']} samples with phenotypes"
    )


def _indent(text: str, work: Path, root: Path) -> str:
    """Indents a step's report and names files where they will be once the demo ends."""
    return "\n".join(f"      {line}" for line in text.replace(str(work), str(root)).splitlines())


def _read_ssf(gwas_ssf: Path | str) -> list[dict[str, str]]:
    """The rows of a ``gwas.tsv.gz`` (GWAS-SSF: chromosomes as numbers, X 23)."""
    with gzip.open(gwas_ssf, "rt", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _p_value(row: Mapping[str, str] | None) -> float | None:
    return None if row is None or row["p_value"] == "NA" else float(row["p_value"])


def causal_hits(gwas_ssf: Path | str, truth_tsv: Path | str, *, trait: str = "quant_trait", threshold: float = 5e-8) -> list[dict[str, Any]]:
    """The simulated causal variants of ``trait`` with their GWAS p-values (for the demo).

    ``gwas_ssf`` is the job's ``gwas.tsv.gz`` (GWAS-SSF: chromosomes as numbers, X 23).
    Returns one record per causal variant: variant position, alleles, true effect,
    estimated beta and p-value (None when not tested) and whether p < ``threshold``.
    """
    rows = {(r["chromosome"], int(r["base_pair_location"])): r for r in _read_ssf(gwas_ssf)}
    hits = []
    with open(truth_tsv, newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            if record["kind"] != "causal" or record["trait"] != trait:
                continue
            chromosome = ssf_chromosome(canonical_contig(record["chromosome"], "nochr"))
            position = int(record["base_pair_location"])
            row = rows.get((chromosome, position))
            p_value = _p_value(row)
            hits.append({
                "chromosome": chromosome, "position": position, "effect": record["effect"],
                "beta": None if row is None or row["beta"] == "NA" else float(row["beta"]),
                "p_value": p_value, "significant": p_value is not None and p_value < threshold,
            })
    return hits


def null_inflation(gwas_ssf: Path | str, null_contigs: Sequence[str]) -> dict[str, Any]:
    """lambda_GC over the variants of chromosomes that carry no causal variant.

    The whole-GWAS lambda_GC of a simulated trait mixes true signal spreading through LD
    from the causal loci (expected) with stratification the PCs failed to remove (a
    failure). On the simulator's background regions (unlinked, no causal variant) only
    the second remains, so a value near 1 says that the PCs controlled ancestry.

    Returns:
        ``lambda_gc`` (None without a tested null variant), ``variants`` (how many had a
        p-value) and ``chromosomes`` (GWAS-SSF numbering).
    """
    chromosomes = sorted({ssf_chromosome(canonical_contig(contig, "nochr")) for contig in null_contigs})
    p_values = [p for row in _read_ssf(gwas_ssf) if row["chromosome"] in chromosomes and (p := _p_value(row)) is not None]
    inflation = genomic_inflation(np.array(p_values)) if p_values else None
    return {"lambda_gc": None if inflation is None else round(inflation, 3), "variants": len(p_values), "chromosomes": chromosomes}


def demo_spec(*, pcs: int = 4, phenotype: str = "quant_trait") -> dict[str, Any]:
    """The demo's job: linear GWAS of the simulated trait on age, sex and ``pcs`` PCs."""
    return {
        "analysis": "gwas", "model": "linear", "phenotype": phenotype, "covariates": ["age", "sex"], "pcs": pcs,
        "pca": {"window_bp": 2000, "maf": 0.05}, "maf": 0.01, "min_allele_count": 5, "stage_timeout": 300,
    }


def run_federated_gwas(datasets: Sequence[Path | str], out: Path | str, *, truth: Path | str | None = None, pcs: int = 4,
                       null_contigs: Sequence[str] = (), force: bool = False) -> dict[str, Any]:
    """``genofed federate`` of :func:`demo_spec` over local datasets, with the causal hits when ``truth`` is given.

    Returns the federate summary plus ``causal_hits`` (see :func:`causal_hits`), ``null``
    (:func:`null_inflation` over ``null_contigs``, when given) and ``text``: a few lines for
    a terminal (lambda_GC, hits, where the files are).
    """
    result = federate(list(datasets), demo_spec(pcs=pcs), out, force=force)
    summary = result["summary"]
    results = Path(result["results"])
    lines = [
        f"GWAS of quant_trait on age, sex and {pcs} PCs: {summary['num_samples']} samples, "
        f"{summary['variants']['published']} variants published, {summary['variants']['genome_wide_significant']} "
        f"with p < 5e-8, lambda_GC {summary['lambda_gc']}",
    ]
    if null_contigs:
        null = null_inflation(results / DATA_FILE, null_contigs)
        result["null"] = null
        lines.append(f"  lambda_GC {null['lambda_gc']} on the {null['variants']:,} variants of chromosome "
                     f"{', '.join(null['chromosomes'])}, unlinked to any causal variant (stratification left after the PCs)")
    if truth is not None:
        hits = causal_hits(results / DATA_FILE, truth)
        result["causal_hits"] = hits
        found = sum(hit["significant"] for hit in hits)
        lines.append(f"  simulated causal variants at genome-wide significance: {found} of {len(hits)}")
        for hit in hits:
            p_text = "not tested" if hit["p_value"] is None else f"p = {hit['p_value']:.2e}"
            lines.append(f"    {hit['chromosome']}:{hit['position']}  true effect {hit['effect']}  {p_text}")
    lines.append(f"  results: {results / DATA_FILE} (+ .tbi, -meta.yaml), manhattan.png, qq.png")
    result["text"] = "\n".join(lines)
    return result


def run_federated_training(
    datasets: Sequence[Path | str],
    out: Path | str,
    *,
    spec: Path | str | Mapping[str, Any] | None = None,
    rounds: int | None = None,
    timeout: float = 900.0,
    force: bool = False,
) -> dict[str, Any]:
    """Federated training across local processes (``genofed federate``) with its baselines.

    The demo's training step: one site per dataset, the ``train`` job of ``spec``
    (default ``workflows/train.yaml``: a sparse logistic risk model of
    ``binary_trait``), then the local-only and pooled baselines and the report in
    ``OUT/results``.

    Args:
        datasets: one dataset folder per site (with the phenotype columns).
        out: folder to create (``genofed federate --out``).
        spec: the job spec (YAML path or mapping).
        rounds: overrides the spec's number of training rounds (a shorter demo).
        timeout: seconds to wait for the job.
        force: replace ``out``.

    Returns:
        ``genofed federate``'s summary, with ``baselines`` (``metrics``, ``table``,
        ``files``) and ``text``: lines to print (the table included).

    Raises:
        ConfigurationError: no spec at the default path, or a wrong spec.
    """
    spec_dict = load_spec(workflows_dir() / "train.yaml" if spec is None else spec, {"rounds": rounds})
    summary = federate(list(datasets), spec_dict, out, timeout=timeout, force=force)
    result = summary["summary"]
    lines = [summary_text(summary)]
    markers = Path(summary["results"]) / "biomarkers.parquet"
    if markers.is_file():
        top = pq.read_table(markers).to_pylist()[:5]
        lines.append("  top biomarkers: " + ", ".join(f"{m['feature']} ({m['coefficient']:+.3f}/SD)" for m in top))
    lines.append(f"  {result['num_features']} features, {result['num_params']} parameters, {len(result['history']) - 1} rounds; "
                 f"report: {Path(summary['results']) / 'training_report.md'}")
    summary["text"] = "\n".join(lines)
    return summary
