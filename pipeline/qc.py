"""Local QC of one harmonized dataset: a site's own view of its variants and samples.

``genofed qc`` reads a dataset chunk by chunk (memory bounded by one chunk), counts
genotypes with the JAX kernels of :mod:`pipeline.stats.counts` (the same ones the
federated census uses), tests Hardy-Weinberg equilibrium with the exact test of
Wigginton et al. (2005) (:mod:`pipeline.stats.hwe`, plink2 ``--hardy``'s ``P``), and
writes, atomically, into one output folder::

    QC_DIR/variants.parquet    schemas/qc_variants.json, one row per variant, genome order
    QC_DIR/samples.parquet     schemas/qc_samples.json, one row per sample
    QC_DIR/qc-summary.json     thresholds, counts passing and failing by reason

Every metric uses every sample and every variant: the sample and variant thresholds are
evaluated independently on the same data (plink2 would apply ``--mind`` before
``--geno``; run QC again on a filtered dataset for that order). The dataset itself is
never modified.

Thresholds follow plink2's filters: a variant fails ``call_rate`` when its call rate is
below ``min_call_rate`` (``--geno 0.05`` keeps call rate >= 0.95), ``hwe`` when its HWE
p-value is below ``hwe_p`` (``--hwe``), ``maf`` when its minor allele frequency is below
``maf`` (``--maf``); a sample fails ``call_rate`` when its call rate is below
``min_sample_call_rate`` (``--mind``).

With chrX variants outside the pseudo-autosomal regions, the samples table also holds a
sex check as PLINK 1.9's ``--check-sex`` (:mod:`pipeline.stats.sex_check`): F, the sex the
calls say, the sex the samples table reports (its ``sex`` column, 1 male, 2 female), and
OK or PROBLEM. PARs are those of the dataset's recorded assembly (GRCh38 when it records
none, said in the summary). A PROBLEM does not fail the sample: it asks for a look.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import dataset as dataset_io
from pipeline import outputs, schemas
from pipeline.errors import ConfigurationError, InputError
from pipeline.stats.counts import SampleCounts, VariantCounts, count_block
from pipeline.stats import sex_check
from pipeline.stats.hwe import hwe_exact_p

log = logging.getLogger(__name__)

QC_SUFFIX = ".qc"
VARIANT_REASONS = ("call_rate", "hwe", "maf")
SAMPLE_REASONS = ("call_rate",)


@dataclass(frozen=True)
class Thresholds:
    """QC thresholds; a value of 0 disables the corresponding filter."""

    min_call_rate: float = 0.95
    min_sample_call_rate: float = 0.95
    hwe_p: float = 1e-6
    maf: float = 0.0


def parse_thresholds(*, min_call_rate: float, min_sample_call_rate: float, hwe_p: float, maf: float) -> Thresholds:
    """Checks the thresholds' ranges once, before any data is read.

    Raises:
        ConfigurationError: naming the option, its value and the allowed range.
    """
    ranges = {
        "min_call_rate": (min_call_rate, 1.0),
        "min_sample_call_rate": (min_sample_call_rate, 1.0),
        "hwe_p": (hwe_p, 1.0),
        "maf": (maf, 0.5),
    }
    for name, (value, upper) in ranges.items():
        if not 0.0 <= float(value) <= upper:
            option = "--" + name.replace("_", "-")
            raise ConfigurationError(f"{option} is {value}; expected a number between 0 and {upper}")
    return Thresholds(float(min_call_rate), float(min_sample_call_rate), float(hwe_p), float(maf))


def default_output(dataset: Path | str) -> Path:
    """``DATASET.qc`` beside the dataset (the dataset is immutable after ingest)."""
    path = Path(dataset)
    return path.with_name(path.name + QC_SUFFIX)


def variant_failures(
    call_rate: np.ndarray, alt_allele_frequency: np.ndarray, hwe_p_value: np.ndarray, thresholds: Thresholds
) -> dict[str, np.ndarray]:
    """Which variants fail which threshold (a variant may fail several).

    NaN frequencies or p-values (no called sample) fail the MAF filter only when it is
    on, and never the HWE filter: such a variant fails on call rate unless that is off.
    """
    minor = np.minimum(alt_allele_frequency, 1.0 - alt_allele_frequency)
    with np.errstate(invalid="ignore"):
        return {
            "call_rate": call_rate < thresholds.min_call_rate,
            "hwe": hwe_p_value < thresholds.hwe_p,
            "maf": (np.isnan(minor) | (minor < thresholds.maf)) if thresholds.maf > 0 else np.zeros(call_rate.shape, bool),
        }


def variant_qc_table(variants: pa.Table, counts: VariantCounts, thresholds: Thresholds) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The qc_variants rows of one block, and the failure masks by reason.

    Args:
        variants: the block's variants table (schemas/variants.json).
        counts: per-variant genotype counts (int64 NumPy, same rows).
        thresholds: QC thresholds.

    Returns:
        (table following schemas/qc_variants.json, {reason: bool mask}).
    """
    hom_ref, het, hom_alt, missing = (np.asarray(c, dtype=np.int64) for c in counts)
    n_called = hom_ref + het + hom_alt
    n_samples = n_called + missing
    allele_count = het + 2 * hom_alt
    allele_number = 2 * n_called
    with np.errstate(invalid="ignore", divide="ignore"):
        call_rate = np.where(n_samples > 0, n_called / np.maximum(n_samples, 1), 0.0)
        alt_freq = np.where(allele_number > 0, allele_count / np.maximum(allele_number, 1), np.nan)
    hwe_p = hwe_exact_p(hom_ref, het, hom_alt)
    failures = variant_failures(call_rate, alt_freq, hwe_p, thresholds)
    passing = ~np.logical_or.reduce([failures[r] for r in VARIANT_REASONS])
    table = pa.table(
        {
            "variant_id": variants.column("variant_id"),
            "chromosome": variants.column("chromosome"),
            "base_pair_location": variants.column("base_pair_location"),
            "n_hom_ref": pa.array(hom_ref, pa.int64()),
            "n_het": pa.array(het, pa.int64()),
            "n_hom_alt": pa.array(hom_alt, pa.int64()),
            "n_missing": pa.array(missing, pa.int64()),
            "call_rate": pa.array(call_rate, pa.float64()),
            "allele_count": pa.array(allele_count, pa.int64()),
            "allele_number": pa.array(allele_number, pa.int64()),
            "alt_allele_frequency": pa.array(alt_freq, pa.float64(), mask=np.isnan(alt_freq)),
            "hwe_p_value": pa.array(hwe_p, pa.float64(), mask=np.isnan(hwe_p)),
            "pass_qc": pa.array(passing, pa.bool_()),
        }
    )
    return table, failures


def sample_qc_table(
    sample_id: pa.Array | pa.ChunkedArray, counts: SampleCounts, num_variants: int, thresholds: Thresholds,
    x_sums: sex_check.XHomozygosity, reported_sex: np.ndarray,
) -> pa.Table:
    """The qc_samples table from per-sample counts accumulated over all variants, and the chrX sums of the sex check."""
    n_called, n_missing, n_het = (np.asarray(c, dtype=np.int64) for c in counts)
    f = sex_check.inbreeding_f(x_sums)
    called_sex = sex_check.snp_sex(f)
    no_x = x_sums.called == 0
    ok = (called_sex == reported_sex) & (reported_sex > 0)
    call_rate = n_called / num_variants
    with np.errstate(invalid="ignore", divide="ignore"):
        heterozygosity = np.where(n_called > 0, n_het / np.maximum(n_called, 1), np.nan)
    return pa.table(
        {
            "sample_id": sample_id,
            "n_called": pa.array(n_called, pa.int64()),
            "n_missing": pa.array(n_missing, pa.int64()),
            "call_rate": pa.array(call_rate, pa.float64()),
            "n_het": pa.array(n_het, pa.int64()),
            "heterozygosity": pa.array(heterozygosity, pa.float64(), mask=np.isnan(heterozygosity)),
            "pass_qc": pa.array(call_rate >= thresholds.min_sample_call_rate, pa.bool_()),
            "x_calls": pa.array(x_sums.called, pa.int64()),
            "x_f": pa.array(f, pa.float64(), mask=np.isnan(f)),
            "reported_sex": pa.array(reported_sex, pa.int64()),
            "snp_sex": pa.array(called_sex, pa.int64(), mask=no_x),
            "sex_check": pa.array(np.where(ok, "OK", "PROBLEM"), pa.string(), mask=no_x),
        }
    )


def _sex_check_summary(table: pa.Table, x_variants: int, assembly: str, assumed: bool) -> dict[str, Any] | None:
    """The sex check's counts for qc-summary.json (None without chrX variants outside the PARs)."""
    if x_variants == 0:
        return None
    status = table.column("sex_check").to_pylist()
    return {"x_variants": x_variants, "pseudoautosomal_regions": assembly + (" (assumed: the dataset records no assembly)" if assumed else ""),
            "ok": status.count("OK"), "problem": status.count("PROBLEM")}


def _check_counts(counts: VariantCounts, num_samples: int, variants: pa.Table, source: str) -> None:
    """Every call must be one of -1, 0, 1, 2 (the genotypes contract)."""
    counted = sum(np.asarray(c) for c in counts)
    bad = np.flatnonzero(counted != num_samples)
    if bad.size:
        variant = variants.column("variant_id")[int(bad[0])].as_py()
        raise InputError(
            f"{source}: variant {variant} has {num_samples - int(counted[bad[0]])} call dosages outside -1/0/1/2 "
            f"({bad.size} such variants in this chunk); the dataset is corrupt, re-run 'genofed ingest'"
        )


def run_qc(
    dataset: Path | str,
    *,
    out: Path | str | None = None,
    min_call_rate: float = 0.95,
    min_sample_call_rate: float = 0.95,
    hwe_p: float = 1e-6,
    maf: float = 0.0,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Computes per-variant and per-sample QC of a dataset and writes them to ``out``.

    Args:
        dataset: a dataset folder written by ``genofed ingest``.
        out: output folder; default ``DATASET.qc`` beside the dataset.
        min_call_rate: variants with a lower call rate fail (``call_rate``).
        min_sample_call_rate: samples with a lower call rate fail.
        hwe_p: variants with a lower HWE exact-test p-value fail (``hwe``); 0 disables.
        maf: variants with a lower minor allele frequency fail (``maf``); 0 disables.
        force: replace ``out`` if it exists.
        progress: show a progress bar on stderr.

    Returns:
        The summary also written to ``qc-summary.json``.

    Raises:
        InputError: the dataset is missing, has no samples or no variants, or holds
            call dosages outside the contract.
        ConfigurationError: a threshold is out of range.
        OutputExistsError: ``out`` exists and ``force`` is False.
    """
    thresholds = parse_thresholds(min_call_rate=min_call_rate, min_sample_call_rate=min_sample_call_rate, hwe_p=hwe_p, maf=maf)
    data = dataset_io.open_dataset(dataset)
    target = Path(out) if out is not None else default_output(dataset)
    outputs.check_output_path(target, force=force)
    if data.num_samples == 0:
        raise InputError(f"{data.path}: the dataset has no samples; nothing to QC")
    if data.num_variants == 0:
        raise InputError(f"{data.path}: the dataset has no variants; nothing to QC")
    samples = data.samples()
    num_samples = samples.num_rows
    sample_total = SampleCounts(*(np.zeros(num_samples, np.int64) for _ in SampleCounts._fields))
    reported_sex = dataset_io.reported_sex(samples)
    par_assembly = data.genome_assembly or "GRCh38"
    x_sums, x_variants = sex_check.empty(num_samples), 0
    failing = {reason: 0 for reason in VARIANT_REASONS}
    num_variants = 0
    num_passing = 0
    qc_schema = schemas.schema("qc_variants")
    with outputs.atomic_directory(target, force=force) as tmp:
        variants_path = tmp / "variants.parquet"
        with pq.ParquetWriter(variants_path, qc_schema, compression="zstd") as writer, tqdm(
            total=data.num_variants, unit="variant", unit_scale=True, desc="qc", disable=not progress
        ) as bar:
            for name, block in zip(data.chunk_names, data.iter_blocks()):
                source = f"{data.path}/genotypes/{name}.parquet"
                variant_counts, sample_counts = count_block(block.call_dosage)
                _check_counts(variant_counts, num_samples, block.variants, source)
                table, failures = variant_qc_table(block.variants, variant_counts, thresholds)
                writer.write_table(schemas.conform(table, "qc_variants", source=f"{target}/variants.parquet ({name})"))
                sample_total = SampleCounts(*(t + s for t, s in zip(sample_total, sample_counts)))
                on_x = dataset_io.variants_non_par_x(block.variants, par_assembly)
                if on_x.any():
                    x_sums = x_sums + sex_check.x_homozygosity(block.call_dosage[on_x], reported_sex == 1)
                    x_variants += int(on_x.sum())
                for reason, mask in failures.items():
                    failing[reason] += int(np.count_nonzero(mask))
                num_passing += int(np.count_nonzero(table.column("pass_qc").to_numpy(zero_copy_only=False)))
                num_variants += block.num_variants
                bar.update(block.num_variants)
                log.debug("%s: %d variants", name, block.num_variants)
        sample_table = sample_qc_table(samples.column("sample_id"), sample_total, num_variants, thresholds, x_sums, reported_sex)
        outputs.write_table(sample_table, tmp / "samples.parquet", "qc_samples", source=f"{target}/samples.parquet")
        samples_passing = int(np.count_nonzero(sample_table.column("pass_qc").to_numpy(zero_copy_only=False)))
        summary: dict[str, Any] = {
            "dataset": str(data.path),
            "out": str(target),
            "thresholds": asdict(thresholds),
            "variants": {
                "total": num_variants,
                "passing": num_passing,
                "failing": num_variants - num_passing,
                "failing_by_reason": failing,
            },
            "samples": {
                "total": num_samples,
                "passing": samples_passing,
                "failing": num_samples - samples_passing,
                "failing_by_reason": {"call_rate": num_samples - samples_passing},
                "sex_check": _sex_check_summary(sample_table, x_variants, par_assembly, data.genome_assembly is None),
            },
            "schemas": {name: schemas.load(name).version for name in ("qc_variants", "qc_samples")},
        }
        (tmp / "qc-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """A few human lines: totals, passing, and failing counts by reason."""
    variants, samples = summary["variants"], summary["samples"]

    def reasons(counts: dict[str, int]) -> str:
        return ", ".join(f"{reason.replace('_', ' ')} {count:,}" for reason, count in counts.items())

    return "\n".join(
        [
            f"QC of {summary['dataset']} written to {summary['out']}",
            f"  variants: {variants['total']:,} total, {variants['passing']:,} pass, {variants['failing']:,} fail "
            f"(by reason, may overlap: {reasons(variants['failing_by_reason'])})",
            f"  samples:  {samples['total']:,} total, {samples['passing']:,} pass, {samples['failing']:,} fail "
            f"(by reason: {reasons(samples['failing_by_reason'])})",
        ]
    )
