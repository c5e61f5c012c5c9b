"""What a GWAS publishes: the ``gwas`` and ``gwas_status`` tables, and the files made from them.

:func:`regression_result` turns the coordinator's per-variant fits into the job's
result: the ``gwas`` table (GWAS-SSF columns, genome order) of the publishable
variants, the ``gwas_status`` table of every tested variant (why a variant has no
estimate, and how many sites were left out of it), and a JSON summary.

Small cells: a site whose own minor allele count of a variant (among its complete
samples with a call) is non-zero and below its policy's ``min_allele_count`` is *left
out* of that variant: it sends zeros for it in every round, as for a variant it does not
hold, plus a 0/1 flag whose secure sum tells the coordinator how many sites were left
out (``n_sites_left_out``). The variant is fitted and published from the other sites'
sums, where they are enough: the estimate is the pooled fit of those sites, the fit's own
status codes apply, and the job's publish threshold (``min_allele_count``, the census'
rule on the pooled minor allele count) is applied again to what remains, since the
census' pool was not this one. A variant whose remainder is below it, or empty (n = 0:
every site that holds it was left out), is withheld with status
``BELOW_SITE_MIN_ALLELE_COUNT``. Why not withhold the variant for everyone, as genofed
did before: with several sites one small cell anywhere hid a fifth of the variants of a
4-site demo, while leaving the cell out is what DataSHIELD's per-cell disclosure filter
implies: the small cell never enters any sum, so the coordinator learns nothing of it but
the flag, and the other sites' results do not depend on it. plink2 has no per-site rule
(one dataset); its ``--mac`` filter is on the pooled count, as the job's threshold is.

:func:`write_outputs` renders the files an analyst downloads: ``gwas.tsv.gz`` (GWAS-SSF
v1.1, bgzipped) with its tabix index, its metadata YAML (``gwas.tsv.gz-meta.yaml``), a
Manhattan and a QQ plot. The rendered file follows the GWAS-SSF conventions a
consortium's submission is validated against (``gwas-ssf validate``): chromosomes as
numbers (X 23, Y 24, MT 25) and ``variant_id`` as ``chromosome_position_other_effect``;
the job's ``gwas`` table keeps genofed's own ``chr:pos:ref:alt`` keys. The ``gwas`` table
always has an ``rsid`` column (:mod:`.rsid`: the one rs ID the sites named, null where they
named none or several); the file carries it, right after ``variant_id`` as GWAS-SSF lists
its optional fields, only when the sites named an rs ID for a published variant.

With privacy terms the sums are noisy: nothing is withheld by site flags (the noise
protects small cells), the sums are not checked against what honest sites can give (noise
can take them anywhere), the summary carries ``privacy`` (the job's target and spend, and
each noisy round's sigma: :func:`~pipeline.analyses.gwas.privacy.job_privacy`), and the
metadata YAML says the statistics are differentially private (``author_notes``, and a
``differential_privacy`` block).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pysam
import yaml

from pipeline import schemas
from pipeline.analyses.census import minor_count
from pipeline.analyses.gwas.plots import GENOME_WIDE, write_plots
from pipeline.analyses.gwas.privacy import job_privacy
from pipeline.analyses.gwas.rsid import Rsids
from pipeline.analyses.gwas.state import RegressionState
from pipeline.analyses.protocol import Result
from pipeline.analyses.sum_checks import refuse_impossible
from pipeline.encoding import Layout
from pipeline.harmonize.contigs import canonical_contig
from pipeline.harmonize.variant_ids import parse_variant_ids
from pipeline.outputs import atomic_file
from pipeline.stats import glm

__all__ = ["DATA_FILE", "DATA_FILES", "OUTPUT_FILES", "VariantFits", "case_control_counts", "check_variant_sums", "data_file_text", "gwas_status_table",
           "gwas_table", "metadata",
           "names_rsids", "phenotype_file", "regression_result", "ssf_chromosome", "stitch_fits", "withheld_below_site_minimum", "write_outputs"]

DATA_FILE = "gwas.tsv.gz"
"""The GWAS-SSF data file (bgzipped, so tabix and the GWAS Catalog read it as it is)."""

DATA_FILES = (DATA_FILE, f"{DATA_FILE}.tbi", f"{DATA_FILE}-meta.yaml")
"""The data file, its tabix index and its metadata, named ``<data file>-meta.yaml`` as GWAS-SSF requires."""

OUTPUT_FILES = (*DATA_FILES, "manhattan.png", "qq.png")
"""The files :func:`write_outputs` always writes (and a regional plot per top locus: :mod:`.plots`)."""

SSF_CHROMOSOMES = {"X": "23", "Y": "24", "MT": "25", "M": "25"}
"""GWAS-SSF codes of the sex chromosomes and the mitochondrion (autosomes keep their number)."""

NOT_REPORTED = "NR"
"""GWAS-SSF's value for a metadata field the study does not report (here: an assembly no site recorded)."""


def _chromosome_rank(chromosome: str) -> tuple[int, str]:
    return (int(chromosome), "") if chromosome.isdigit() else (1000, chromosome)


def gwas_table(variant_ids: Sequence[str], beta: np.ndarray, se: np.ndarray, eaf: np.ndarray, p_value: np.ndarray,
               n: np.ndarray, rsid: Sequence[str | None] | None = None) -> pa.Table:
    """The ``gwas`` table (GWAS-SSF columns + n, variant_id, rsid), in genome order.

    The effect allele is the ALT allele; chromosomes are written without a ``chr`` prefix;
    ``rsid`` is null where not given.

    Raises:
        InputError: a variant ID is not ``contig:position:ref:alt``.
    """
    contigs, position, other, effect = parse_variant_ids(variant_ids)
    names, of_row = np.unique(np.asarray(contigs, dtype=str), return_inverse=True)  # a few contigs, many rows
    canonical = [canonical_contig(str(c), "nochr") for c in names]
    ranked = sorted(set(canonical), key=_chromosome_rank)
    rank = np.asarray([ranked.index(c) for c in canonical], np.int64)[of_row]
    index = np.lexsort((np.asarray(variant_ids, dtype=str), np.asarray(position, np.int64), rank)).astype(np.int64)
    order = index.tolist()
    chromosome = [canonical[i] for i in of_row.tolist()]

    def floats(values: np.ndarray) -> pa.Array:
        values = np.asarray(values, np.float64)[index]
        return pa.array(values, pa.float64(), mask=~np.isfinite(values))

    table = pa.table({
        "chromosome": pa.array([chromosome[i] for i in order], pa.string()),
        "base_pair_location": pa.array(position[index], pa.int64()),
        "effect_allele": pa.array([effect[i] for i in order], pa.string()),
        "other_allele": pa.array([other[i] for i in order], pa.string()),
        "beta": floats(beta), "standard_error": floats(se), "effect_allele_frequency": floats(eaf),
        "p_value": floats(p_value), "n": pa.array(np.asarray(n, np.int64)[index], pa.int64()),
        "variant_id": pa.array([variant_ids[i] for i in order], pa.string()),
        "rsid": pa.array([None if rsid is None else rsid[i] for i in order], pa.string()),
    })
    return schemas.conform(table, "gwas", source="gwas result")


def check_variant_sums(state: RegressionState, n: np.ndarray, alt_count: np.ndarray, below_min: np.ndarray,
                       num_sites: int) -> None:
    """Refuses per-variant sums that no honest sites can give, before anything is published.

    A variant is called in between 0 and the complete samples the moments round counted
    (n), has between 0 and 2n ALT alleles (allele_count <= allele_number = 2n), and
    between 0 and every included site can be below its own minimum allele count. A site
    below its minimum is left out (sends zeros), so where every included site is, n is 0.

    Raises:
        ProtocolError: naming the first impossible variant and the field.
    """
    n = np.asarray(n, np.int64)
    alt = np.asarray(alt_count, np.float64)
    below = np.asarray(below_min, np.int64)
    ids = state.variant_ids
    complete = state.standardization.n
    refuse_impossible("gwas", "n", n, n < 0, "at least 0", labels=ids, noun="variant")
    refuse_impossible("gwas", "n", n, n > complete, f"at most the {complete} complete samples", labels=ids, noun="variant")
    refuse_impossible("gwas", "alt_count", alt, (alt < -0.5) | (alt > 2 * n + 0.5), "in [0, 2n = {limit}]", limit=2 * n,
                      labels=ids, noun="variant")
    refuse_impossible("gwas", "below_min", below, (below < 0) | (below > num_sites), f"in [0, the {num_sites} sites]", labels=ids,
                      noun="variant")
    refuse_impossible("gwas", "n", n, (below == num_sites) & (n != 0),
                      f"0 where all {num_sites} sites were below their own minimum (each left itself out)", labels=ids,
                      noun="variant")


def withheld_below_site_minimum(n: np.ndarray, alt_count: np.ndarray, below_min: np.ndarray,
                                min_allele_count: int) -> np.ndarray:
    """Variants that a site left out and whose remainder is not enough to publish.

    Where no site was left out, the census' publish threshold has already been applied
    (and its pool was this one's samples before the complete-case and call filters). Where
    some were, what remains is a new pool: it is published when its minor allele count
    reaches the job's ``min_allele_count``, and never when it is empty (``n == 0``: every
    site that holds the variant was left out).

    Args:
        n: (variants,) samples with a called genotype over the sites not left out.
        alt_count: (variants,) ALT alleles among them (a dosage sum where sites regressed on dosages).
        below_min: (variants,) sites left out (below their own minimum allele count).
        min_allele_count: the job's publish threshold on the pooled minor allele count.

    Returns:
        (variants,) bool.
    """
    n = np.asarray(n, np.int64)
    minor = minor_count(n, np.asarray(alt_count, np.float64))  # a dosage sum is not rounded up to the threshold
    return (np.asarray(below_min, np.int64) > 0) & ((n == 0) | (minor < min_allele_count))


def case_control_counts(state: RegressionState) -> dict[str, int]:
    """The pooled cases and controls among the complete samples (a binary phenotype's mean times n).

    The moments round already summed the 0/1 phenotype, so this reveals nothing new. With
    privacy terms the sums are noisy and so are these counts (post-processing: no extra spend).
    """
    moments = state.standardization
    cases = int(np.clip(np.rint(float(moments.mean[-1]) * moments.n), 0, moments.n))
    return {"num_cases": cases, "num_controls": moments.n - cases}


def gwas_status_table(state: RegressionState, status: np.ndarray, statistic: np.ndarray, firth: np.ndarray | None,
                      left_out: np.ndarray) -> pa.Table:
    """The ``gwas_status`` table: every variant fitted, and where the census listed them, those the HWE round withheld.

    A variant withheld by the ancestry-cluster Hardy-Weinberg round (``state.hwe``) was
    never fitted: status ``HWE_CLUSTER_FAIL``, no statistic, no site left out.
    """
    ids = np.asarray(state.variant_ids, dtype=object)
    status = np.asarray(status, np.int8)
    statistic = np.where(status == 0, np.asarray(statistic, np.float64), np.nan)
    firth = np.zeros(len(ids), bool) if firth is None else np.asarray(firth, bool)
    left_out = np.asarray(left_out, np.int64)
    screen = state.hwe
    if screen is not None and screen.withheld:
        fitted = np.ones(len(ids) + len(screen.withheld), bool)
        fitted[screen.positions] = False

        def spread(values: np.ndarray, withheld: Any) -> np.ndarray:
            out = np.empty(fitted.size, values.dtype)
            out[fitted], out[~fitted] = values, withheld
            return out

        ids = spread(ids, np.asarray(screen.withheld, dtype=object))
        status = spread(status, glm.STATUS.index("HWE_CLUSTER_FAIL"))
        statistic, firth, left_out = spread(statistic, np.nan), spread(firth, False), spread(left_out, 0)
    ok = status == 0
    table = pa.table({
        "variant_id": pa.array([str(v) for v in ids], pa.string()),
        "status": pa.array([glm.STATUS[s] for s in status], pa.string()),
        "statistic": pa.array(statistic, pa.float64(), mask=~ok),
        "firth": pa.array(firth, pa.bool_()),
        "n_sites_left_out": pa.array(left_out, pa.int64()),
    })
    return schemas.conform(table, "gwas_status", source="gwas result")


@dataclass(frozen=True, eq=False)
class VariantFits:
    """Every tested variant's fit, as the coordinator solved it (one entry per variant).

    Attributes:
        beta, se, statistic, p_value: the genotype's effect, its standard error, test
            statistic and p-value (NaN where not estimated).
        status: :data:`pipeline.stats.glm.STATUS` codes.
        n: samples with a called genotype (or a dosage).
        alt_count: ALT alleles among them, the sum of the values regressed on (dosages
            where sites used them): the effect allele frequency is its mean / 2, as
            plink2's A1_FREQ.
        below_min: sites below their own minimum allele count, each left out of the
            variant's sums (zeros with privacy terms: no site is left out).
        firth: which estimates come from the Firth refit (logistic), else ``None``.
    """

    beta: np.ndarray
    se: np.ndarray
    statistic: np.ndarray
    p_value: np.ndarray
    status: np.ndarray
    n: np.ndarray
    alt_count: np.ndarray
    below_min: np.ndarray
    firth: np.ndarray | None = None


def stitch_fits(parts: Sequence[tuple[np.ndarray, VariantFits]], count: int) -> VariantFits:
    """One :class:`VariantFits` of ``count`` variants from parts fitted separately, each with its variants' positions.

    The chrX variants outside the PARs are fitted with the sex covariate, the others without it
    (:mod:`.chrx`); the job publishes them as one list, in the tested variants' order.
    """
    covered = np.zeros(count, np.int64)
    for positions, _ in parts:
        np.add.at(covered, positions, 1)
    if not np.all(covered == 1):
        raise ValueError(f"the parts cover {int(np.count_nonzero(covered))} of {count} variants, some more than once")

    def gather(values: Sequence[np.ndarray]) -> np.ndarray:
        out = np.empty(count, np.result_type(*values))
        for (positions, _), part in zip(parts, values):
            out[positions] = part
        return out

    def field(name: str) -> np.ndarray:
        return gather([getattr(fits, name) for _, fits in parts])

    firth = None
    if any(fits.firth is not None for _, fits in parts):
        firth = gather([np.zeros(len(positions), bool) if fits.firth is None else fits.firth for positions, fits in parts])
    return VariantFits(field("beta"), field("se"), field("statistic"), field("p_value"), field("status"), field("n"),
                       field("alt_count"), field("below_min"), firth)


def regression_result(state: RegressionState, fits: VariantFits, num_sites: int, *, layout: Layout) -> Result:
    """The job's result from every tested variant's fit (already checked: :func:`check_variant_sums`).

    Args:
        state: the regression's final state (its variants are the fits' variants).
        fits: every tested variant's fit.
        num_sites: sites included in the sums.
        layout: the per-variant round's layout (its scale bits go into the summary).
    """
    beta, se, statistic, p_value = fits.beta, fits.se, fits.statistic, fits.p_value
    status, n, alt_count, below_min, firth = fits.status, fits.n, fits.alt_count, fits.below_min, fits.firth
    p = state.parameters
    ids = np.asarray(state.variant_ids, dtype=object)
    status = np.asarray(status, np.int8).copy()
    left_out = np.asarray(below_min, np.int64)
    publishable = ~withheld_below_site_minimum(n, alt_count, left_out, p.min_allele_count)
    status[~publishable] = glm.STATUS.index("BELOW_SITE_MIN_ALLELE_COUNT")
    with np.errstate(invalid="ignore", divide="ignore"):
        eaf = np.where(n > 0, np.clip(alt_count / (2.0 * np.maximum(n, 1)), 0.0, 1.0), np.nan)
    rsids = state.rsids if state.rsids is not None else Rsids((None,) * len(ids))
    rsid = np.asarray(rsids.rsid, dtype=object)
    conflicts = np.zeros(len(ids), bool)
    conflicts[list(rsids.conflicts)] = True
    table = gwas_table([str(v) for v in ids[publishable]], beta[publishable], se[publishable], eaf[publishable],
                       p_value[publishable], np.asarray(n)[publishable], rsid[publishable].tolist())
    ok_mask = (status == 0)
    status_table = gwas_status_table(state, status, statistic, firth, left_out)
    tested = p_value[ok_mask]
    lam = glm.genomic_inflation(tested)
    order = np.argsort(np.where(ok_mask, p_value, np.inf))[: min(10, int(ok_mask.sum()))]
    every_status = np.asarray(status_table.column("status").to_pylist(), dtype=object)
    counts = {name: int(np.count_nonzero(every_status == name)) for name in glm.STATUS if np.any(every_status == name)}
    parameters = {key: value for key, value in p.to_json().items() if key != "pca"}
    summary: dict[str, Any] = {
        "analysis": "gwas",
        "model": p.model,
        "phenotype": p.phenotype,
        "covariates": list(p.covariates),
        "pcs": p.pcs,
        "covariate_columns": list(state.columns),
        "num_sites": int(num_sites),
        "num_samples": state.standardization.n,
        "variants": {"tested": len(ids), "published": int(publishable.sum()), "ok": int(ok_mask.sum()),
                     "with_sites_left_out": int(np.count_nonzero(left_out > 0)),
                     "with_rsid": int(sum(r is not None for r in rsid[publishable])),
                     "rsid_conflicts": int(np.count_nonzero(conflicts & publishable)),
                     "genome_wide_significant": int(np.count_nonzero(tested < GENOME_WIDE)), "status": counts},
        "lambda_gc": None if not math.isfinite(lam) else round(lam, 6),
        "top_hits": [{"variant_id": str(ids[i]), "beta": float(beta[i]), "p_value": float(p_value[i])} for i in order],
        "test": "t (Student, n - k - 1 df), as plink2 --glm" if p.model == "linear" else "Wald z at the maximum-likelihood fit (Firth-penalized where gwas_status.firth)",
        "encoding": {"ring": layout.ring.name, "scale_bits": {f.name: f.encoding.scale_bits for f in layout.fields}},
        "parameters": parameters,
        "disclosure": (
            "the rs ID round revealed the rs IDs the sites' datasets record for tested variants they had named in the "
            "census' key round (public annotations, no count); the other regression rounds revealed only sums over the "
            "included sites: covariate moments, per-variant sufficient "
            "statistics (or Newton scores and information), and per variant the number of sites below their own minimum "
            "allele count; each such site was left out of that variant's sums (its small cell entered none), and a "
            "variant is withheld only where what the other sites hold is below the job's min_allele_count or empty"
        ),
        "schemas": {name: schemas.load(name).version for name in ("gwas", "gwas_status")},
    }
    if state.hwe is not None:
        summary["variants"]["hwe_cluster_failures"] = len(state.hwe.withheld)
        summary["disclosure"] += (
            "; the ancestry-cluster Hardy-Weinberg round revealed per variant only how many sites typed it and how many "
            "failed HWE within one of their own ancestry clusters (clusters and PC scores stayed at the sites)"
        )
    if p.privacy is not None:
        summary["privacy"] = job_privacy(
            p.privacy, census_variants=int(state.census_variants or 0), num_columns=len(state.columns) + 1,
            num_variants=len(ids), num_coefficients=state.num_coefficients, max_abs_z=p.max_abs_z, num_sites=num_sites)
        summary["test"] = ("t (Student, n - k - 1 df) from noisy sums; the standard error adds the noise's first-order "
                           "variance to the sampling variance")
        summary["disclosure"] = (
            "the census' key round revealed which variant IDs each site holds at or above its own minimum minor allele "
            "count, and the rs ID round the rs IDs its dataset records for those it named, outside the "
            "differential-privacy guarantee; every other round revealed only sums to which every site "
            "added discrete Gaussian noise (census counts, covariate moments, per-variant sufficient statistics): "
            "everything published is (epsilon, delta)-differentially private for each person over the whole job "
            "(see privacy)"
        )
    if p.model == "logistic":
        summary.update(case_control_counts(state))
        summary["newton_rounds"] = state.logistic_fit.iteration
        summary["firth"] = {"enabled": p.firth, "variants": int(0 if firth is None else firth.sum()),
                            "rounds": state.firth.iteration if state.firth is not None else 0}
    return Result(summary=summary, tables={"gwas": table, "gwas_status": status_table})


# --------------------------------------------------------------------------- files


def _format_float(values: np.ndarray, digits: int = 6) -> list[str]:
    return ["NA" if not math.isfinite(x) else f"{x:.{digits}g}" for x in values.tolist()]


def ssf_chromosome(chromosome: str) -> str:
    """A chromosome as GWAS-SSF writes it: autosomes by number, X 23, Y 24, MT 25 (other contigs as they are)."""
    return SSF_CHROMOSOMES.get(chromosome, chromosome)


def data_file_text(table: pa.Table) -> str:
    """The ``gwas`` table as GWAS-SSF v1.1 text: tab-separated, NA for missing, header line first.

    p-values are floored at the smallest positive double (the validator refuses 0); the
    ``variant_id`` column is rewritten to the spec's ``chromosome_position_other_effect``
    (its pattern allows letters, digits and ``_`` only, so genofed's ``chr:pos:ref:alt`` is refused).
    """
    columns = table.column_names
    data = {name: table.column(name).to_numpy(zero_copy_only=False) for name in columns}
    p = np.asarray(data["p_value"], np.float64)
    p = np.where(np.isfinite(p), np.maximum(p, np.finfo(np.float64).tiny), np.nan)
    chromosome = [ssf_chromosome(str(x)) for x in data["chromosome"]]
    position = [str(int(x)) for x in data["base_pair_location"]]
    effect = [str(x) for x in data["effect_allele"]]
    other = [str(x) for x in data["other_allele"]]
    rendered = {
        "chromosome": chromosome,
        "base_pair_location": position,
        "effect_allele": effect,
        "other_allele": other,
        "beta": _format_float(np.asarray(data["beta"], np.float64), 8),
        "standard_error": _format_float(np.asarray(data["standard_error"], np.float64), 8),
        "effect_allele_frequency": _format_float(np.asarray(data["effect_allele_frequency"], np.float64)),
        "p_value": _format_float(p, 6),
        "n": [str(int(x)) for x in data["n"]],
        "variant_id": ["_".join(parts) for parts in zip(chromosome, position, other, effect)],
        "rsid": ["NA" if x is None else str(x) for x in data.get("rsid", ())],
    }
    lines = ["\t".join(columns)] + ["\t".join(row) for row in zip(*(rendered[c] for c in columns))]
    return "\n".join(lines) + "\n"


def names_rsids(summary: Mapping[str, Any]) -> bool:
    """Whether the sites named an rs ID for any published variant (agreed or conflicting): the file then has ``rsid``."""
    variants = summary.get("variants", {})
    return bool(variants.get("with_rsid", 0) or variants.get("rsid_conflicts", 0))


def phenotype_file(name: str, phenotype: str | None) -> str:
    """A result file's name for one phenotype of several (``gwas.tsv.gz`` -> ``gwas.<phenotype>.tsv.gz``); as is for one."""
    if phenotype is None:
        return name
    stem, dot, extension = name.partition(".")
    return f"{stem}.{phenotype}{dot}{extension}"


def _write_data_file(text: str, out: Path, data_file: str = DATA_FILE) -> str:
    """Writes ``gwas.tsv.gz`` (BGZF) and its tabix index (sequence column 1, position column 2, header skipped).

    Returns:
        The MD5 of the compressed file, as the metadata's ``data_file_md5sum`` needs it.
    """
    with atomic_file(out / data_file, force=True) as data, atomic_file(out / f"{data_file}.tbi", force=True) as index:
        with pysam.BGZFile(str(data), "wb", index=None) as handle:
            handle.write(text.encode())
        pysam.tabix_index(str(data), seq_col=0, start_col=1, end_col=1, line_skip=1, force=True, index=str(index))
        return hashlib.md5(data.read_bytes()).hexdigest()


def metadata(summary: Mapping[str, Any], md5sum: str, data_file: str = DATA_FILE) -> dict[str, Any]:
    """The GWAS-SSF v1.1 metadata of a result (the spec's fields in its order, then genofed's own).

    ``genome_assembly`` is the one every summed site's dataset records (the coordinator
    learns it at the pre-flight), else ``NR``; a logistic job's sample carries its pooled
    case and control counts. ``adjusted_covariates`` are the fit's covariate columns (the
    summary's ``covariate_columns``): a categorical covariate's non-reference levels as
    ``<column>=<level>``, the site covariate's as ``site=<name>``, principal components last
    (``PC1``..); a summary without them (written before they were recorded) gives the spec's
    covariates and PCs.
    """
    sample: dict[str, Any] = {"sample_size": int(summary.get("num_samples", 0)), "sample_ancestry": ["NR"]}
    if summary.get("model") == "logistic":
        sample.update(case_control_study=True, case_count=int(summary["num_cases"]), control_count=int(summary["num_controls"]))
    columns = summary.get("covariate_columns")
    adjusted = ([str(c) for c in columns] if columns is not None else
                list(summary.get("covariates", [])) + [f"PC{i + 1}" for i in range(int(summary.get("pcs", 0)))])
    return {
        "date_metadata_last_modified": datetime.date.today(),
        "trait_description": [str(summary.get("phenotype"))],
        "genome_assembly": summary.get("genome_assembly") or NOT_REPORTED,
        "coordinate_system": "1-based",
        "samples": [sample],
        "data_file_name": data_file,
        "file_type": "GWAS-SSF v1.1",
        "data_file_md5sum": md5sum,
        "analysis_software": "genofed (federated, exact pooled fit over secure aggregation)",
        "adjusted_covariates": adjusted,
        "is_harmonised": False,
        "is_sorted": True,
        "test_statistic": summary.get("test"),
        "model": summary.get("model"),
        "lambda_gc": summary.get("lambda_gc"),
        "effect_statistic": "beta",
    }


def write_outputs(result: Result, out_dir: Path | str, *, phenotype: str | None = None) -> list[str]:
    """Writes the GWAS-SSF file, its index and metadata (:data:`DATA_FILES`) and the plots; returns the file names.

    ``gwas.tsv.gz`` is :func:`data_file_text` in genome order, bgzipped and tabix-indexed,
    so an analyst can query a region (``tabix gwas.tsv.gz 22:16000000-17000000``). Each
    file is written to a temporary path and renamed, readable as any output is (umask).
    With ``phenotype`` (one of a job's several) every name carries it (:func:`phenotype_file`).
    """
    out = Path(out_dir)
    table = result.tables["gwas"]
    summary = result.summary
    data_file = phenotype_file(DATA_FILE, phenotype)
    if "rsid" in table.column_names and not names_rsids(summary):
        table = table.drop_columns(["rsid"])  # GWAS-SSF: an optional column no site has anything for is left out
    meta = metadata(summary, _write_data_file(data_file_text(table), out, data_file), data_file)
    privacy = summary.get("privacy")
    if privacy:
        meta["analysis_software"] = "genofed (federated, differentially private: noisy sums over secure aggregation)"
        meta["author_notes"] = (
            f"Differentially private summary statistics: (epsilon {privacy['epsilon']:.4g}, delta {privacy['delta']:g}) for "
            "each person over the whole job. Every site added discrete Gaussian noise to its sums before secure "
            "aggregation; beta, standard_error, p_value, effect_allele_frequency and n (and the sample, case and control "
            "counts) are computed from the noisy sums and differ from an exact pooled fit; standard_error includes the "
            "noise's first-order variance."
        )
        meta["differential_privacy"] = {
            **{key: privacy[key] for key in ("epsilon", "delta", "rho", "honest_sites", "max_colluding")},
            "rounds": [{key: r[key] for key in ("phase", "round", "sigma_real", "rho")} for r in privacy["rounds"]],
        }
    with atomic_file(out / f"{data_file}-meta.yaml", force=True) as tmp:
        Path(tmp).write_text(yaml.safe_dump(meta, sort_keys=False))
    files = [phenotype_file(name, phenotype) for name in DATA_FILES]
    return [*files, *write_plots(table, summary, out, lambda name: phenotype_file(name, phenotype))]
