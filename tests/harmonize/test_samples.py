from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import schemas
from pipeline.errors import PhenotypeError, VcfFormatError
from pipeline.harmonize.samples import match_samples


def _phenotypes() -> pa.Table:
    return pa.table(
        {
            "sample_id": ["c", "a", "x", "y"],
            "age": pa.array([30.0, None, 50.0, 60.0], pa.float64()),
            "sex": ["F", "M", "F", None],
        }
    )


def test_match_samples__keeps_vcf_order_and_table_columns():
    table, summary = match_samples(["a", "b", "c"], _phenotypes(), phenotype_source="p.tsv")
    schemas.validate(table, "samples")
    assert table.column_names == ["sample_index", "sample_id", "has_phenotypes", "age", "sex"]
    assert table.column("sample_id").to_pylist() == ["a", "b", "c"]
    assert table.column("has_phenotypes").to_pylist() == [True, False, True]
    assert table.column("age").to_pylist() == [None, None, 30.0]
    assert table.column("sex").to_pylist() == ["M", None, "F"]
    assert summary["matched"] == 2 and summary["without_phenotypes"] == 1
    assert summary["phenotypes_without_genotypes"] == 2
    assert summary["examples_without_phenotypes"] == ["b"]
    assert summary["examples_phenotypes_without_genotypes"] == ["x", "y"]


def test_match_samples__without_table():
    table, summary = match_samples(["a", "b"], None)
    assert table.column("has_phenotypes").to_pylist() == [False, False]
    assert summary["matched"] == 0 and summary["without_phenotypes"] == 2


def test_match_samples__examples_are_capped():
    ids = [f"s{i}" for i in range(20)]
    _, summary = match_samples(ids, pa.table({"sample_id": ["z"]}))
    assert len(summary["examples_without_phenotypes"]) == 5 and summary["without_phenotypes"] == 20


def test_match_samples__duplicate_vcf_sample_raises():
    with pytest.raises(VcfFormatError, match="appears twice"):
        match_samples(["a", "a"], None, vcf="x.vcf")


def test_match_samples__colliding_column_raises():
    with pytest.raises(PhenotypeError, match="has_phenotypes"):
        match_samples(["a"], pa.table({"sample_id": ["a"], "has_phenotypes": [1.0]}))
