"""Matches the VCF's samples to the phenotype table and builds ``samples.parquet``.

The table keeps the VCF's sample order (it indexes every genotype list); phenotype
columns follow in the phenotype table's order, null for samples without phenotypes. The
match summary names at most a few example IDs: they are this site's own and stay in its
report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.errors import PhenotypeError, VcfFormatError

MAX_EXAMPLES = 5


def match_samples(
    sample_id: Sequence[str], phenotypes: pa.Table | None, *, vcf: str = "VCF", phenotype_source: str = "phenotype table"
) -> tuple[pa.Table, dict[str, Any]]:
    """Builds the samples table and the match summary.

    Args:
        sample_id: the VCF header's samples, in column order.
        phenotypes: the table from ``read_phenotypes`` (first column ``sample_id``), or None.

    Returns:
        (samples table validated against schemas/samples.json, summary dict for the report).

    Raises:
        VcfFormatError: the VCF repeats a sample ID.
        PhenotypeError: a phenotype column collides with a fixed column of the samples table.
    """
    ids = list(sample_id)
    seen: set[str] = set()
    for i, name in enumerate(ids):
        if name in seen:
            raise VcfFormatError(f"{vcf}: sample {name!r} appears twice in the #CHROM header (column {i + 10}); rename or remove the duplicate (bcftools reheader)")
        seen.add(name)
    fixed = {
        "sample_index": pa.array(np.arange(len(ids), dtype=np.int32)),
        "sample_id": pa.array(ids, pa.string()),
    }
    if phenotypes is None:
        table = pa.table({**fixed, "has_phenotypes": pa.array(np.zeros(len(ids), bool))})
        summary = {
            "in_vcf": len(ids),
            "phenotype_table": None,
            "matched": 0,
            "without_phenotypes": len(ids),
            "phenotypes_without_genotypes": 0,
            "examples_without_phenotypes": [],
            "examples_phenotypes_without_genotypes": [],
        }
        return schemas.conform(table, "samples", source="samples table"), summary
    pheno_ids = phenotypes.column(0).to_pylist()
    row_of = {name: row for row, name in enumerate(pheno_ids)}
    take = pa.array([row_of.get(name) for name in ids], pa.int64())
    has = np.array([name in row_of for name in ids], dtype=bool)
    columns: dict[str, pa.Array] = {**fixed, "has_phenotypes": pa.array(has)}
    for name in phenotypes.column_names[1:]:
        if name in columns:
            raise PhenotypeError(f"{phenotype_source}: column {name!r} clashes with a fixed column of the samples table; rename it")
        columns[name] = phenotypes.column(name).combine_chunks().take(take)
    table = pa.table(columns)
    vcf_ids = set(ids)
    unmatched_vcf = [name for name in ids if name not in row_of]
    unmatched_table = [name for name in pheno_ids if name not in vcf_ids]
    summary = {
        "in_vcf": len(ids),
        "phenotype_table": str(phenotype_source),
        "matched": int(has.sum()),
        "without_phenotypes": len(unmatched_vcf),
        "phenotypes_without_genotypes": len(unmatched_table),
        "examples_without_phenotypes": unmatched_vcf[:MAX_EXAMPLES],
        "examples_phenotypes_without_genotypes": unmatched_table[:MAX_EXAMPLES],
    }
    return schemas.conform(table, "samples", source=f"samples table built from {phenotype_source}"), summary
