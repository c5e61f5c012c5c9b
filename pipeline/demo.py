"""``genofed demo``: a whole federation's site pipeline on this machine, end to end.

Simulates a multi-site cohort (each site with its own file quirks), ingests every site's
VCF/BCF against the shared reference, runs each site's local QC, then federates the
analyses available (the census across sites by secure aggregation) and prints a short
report. Everything lands under one output folder, so a user can open every
intermediate file with plain pyarrow/pandas.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline import outputs
from pipeline.analyses.gwas import run_federated_gwas
from pipeline.federation.jobs import load_spec
from pipeline.federation.local import federate, summary_text
from pipeline.ingest import ingest
from pipeline.models.report import run_federated_training
from pipeline.qc import run_qc
from pipeline.resources import workflows_dir
from pipeline.sim.cohort import simulate_cohort

log = logging.getLogger(__name__)

DEFAULT_REGION = "chr22:16000000-18000000"


def run_demo(
    out: Path | str,
    *,
    sites: int = 3,
    samples: int = 1000,
    region: str = DEFAULT_REGION,
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
        sites, samples, region, seed: the simulated cohort (see ``genofed cohort simulate``).
        training_rounds: rounds of the federated risk model (short for a demo).
        say: where progress lines go (the CLI passes ``click.echo``).
    """
    root = Path(out)
    outputs.check_output_path(root, force=force)
    started = time.perf_counter()
    summary: dict[str, Any] = {"out": str(root), "sites": {}}
    with outputs.atomic_directory(root, force=force) as work:
        say(f"[1/6] simulating {sites} sites x {samples} samples over {region} (seed {seed})")
        manifest = simulate_cohort(work / "cohort", sites=sites, samples=samples, region=region, seed=seed, progress=progress)
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
        gwas = run_federated_gwas(datasets, work / "gwas", truth=manifest.resolve(manifest.truth), pcs=4)
        summary["gwas"] = {key: gwas["summary"][key] for key in ("lambda_gc", "variants", "num_samples") if key in gwas["summary"]}
        summary["gwas"]["causal_hits"] = gwas.get("causal_hits", [])
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
