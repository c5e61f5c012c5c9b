"""Tests of pipeline.io.phenotypes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import InputError, PhenotypeError
from pipeline.io.phenotypes import read_phenotypes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pheno.tsv"
    path.write_text(text)
    return path


def test_read_phenotypes__types_and_missing(tmp_path: Path) -> None:
    text = "IID\tage\tsex\tquant_trait\tgroup\n" "s1\t41\tF\t0.5\ta\n" "s2\tNA\tM\t-1.25e-1\t.\n" "s3\t38\t\t.\tb\n" "s4\t50\tF\tNaN\tc\n"
    table = read_phenotypes(write(tmp_path, text))
    assert table.column_names == ["sample_id", "age", "sex", "quant_trait", "group"]
    assert table.schema.field("sample_id").type == pa.string()
    assert table.schema.field("age").type == pa.float64()
    assert table.schema.field("sex").type == pa.string()
    assert table.column("age").to_pylist() == [41.0, None, 38.0, 50.0]
    assert table.column("sex").to_pylist() == ["F", "M", None, "F"]
    assert table.column("quant_trait").to_pylist() == [0.5, -0.125, None, None]
    assert table.column("group").to_pylist() == ["a", None, "b", "c"]


@pytest.mark.parametrize(
    ("header", "row"),
    [("#IID\tbmi", "s1\t22.5"), ("FID\tIID\tbmi", "f1\ts1\t22.5"), ("#FID\tIID\tbmi", "f1\ts1\t22.5"), ("FID IID bmi", "f1  s1 22.5"), ("\ufeffIID\tbmi", "s1\t22.5")],
)
def test_read_phenotypes__plink_headers(tmp_path: Path, header: str, row: str) -> None:
    table = read_phenotypes(write(tmp_path, f"{header}\n{row}\n"))
    assert table.to_pylist() == [{"sample_id": "s1", "bmi": 22.5}]


def test_read_phenotypes__ids_stay_strings(tmp_path: Path) -> None:
    table = read_phenotypes(write(tmp_path, "IID\tx\n001\t1\n2\t2\n"))
    assert table.column("sample_id").to_pylist() == ["001", "2"]


def test_read_phenotypes__all_missing_column_is_string(tmp_path: Path) -> None:
    table = read_phenotypes(write(tmp_path, "IID\tx\ns1\tNA\ns2\t\n"))
    assert table.schema.field("x").type == pa.string()
    assert table.column("x").to_pylist() == [None, None]


def test_errors__duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    with pytest.raises(PhenotypeError, match=r"pheno.tsv: line 4: sample ID 's1' already on line 2"):
        read_phenotypes(write(tmp_path, "IID\tx\ns1\t1\ns2\t2\ns1\t3\n"))


def test_errors__ragged_line(tmp_path: Path) -> None:
    with pytest.raises(PhenotypeError, match=r"line 3: 2 columns, expected 3"):
        read_phenotypes(write(tmp_path, "IID\tx\ty\ns1\t1\t2\ns2\t1\n"))


def test_errors__non_number_in_numeric_column(tmp_path: Path) -> None:
    with pytest.raises(PhenotypeError, match=r"line 4, column 'bmi': 'twenty' is not a number"):
        read_phenotypes(write(tmp_path, "IID\tbmi\ns1\t20.1\ns2\tNA\ns3\ttwenty\n"))


def test_errors__number_after_text_is_a_string_column(tmp_path: Path) -> None:
    table = read_phenotypes(write(tmp_path, "IID\tsite\ns1\tA12\ns2\t7\n"))
    assert table.column("site").to_pylist() == ["A12", "7"]


def test_errors__missing_id_empty_file_and_duplicate_columns(tmp_path: Path) -> None:
    with pytest.raises(PhenotypeError, match=r"line 3: missing sample ID"):
        read_phenotypes(write(tmp_path, "IID\tx\ns1\t1\nNA\t2\n"))
    with pytest.raises(PhenotypeError, match="empty file"):
        read_phenotypes(write(tmp_path, ""))
    with pytest.raises(PhenotypeError, match=r"duplicate or reserved column names \['x'\]"):
        read_phenotypes(write(tmp_path, "IID\tx\tx\ns1\t1\t2\n"))
    with pytest.raises(InputError, match="no such file"):
        read_phenotypes(tmp_path / "absent.tsv")


def test_read_phenotypes__plink_missing_code_is_missing(tmp_path: Path) -> None:
    text = "IID\tbmi\tage\tgroup\ns1\t-9\t40\t-9\ns2\t22.5\t-9.0\ta\ns3\t-9.5\t51\tb\n"
    table = read_phenotypes(write(tmp_path, text))
    assert table.column("bmi").to_pylist() == [None, 22.5, -9.5]  # typed by its first non-missing value
    assert table.column("age").to_pylist() == [40.0, None, 51.0]
    assert table.column("group").to_pylist() == [None, "a", "b"]  # a categorical column: -9 is missing there too
    kept = read_phenotypes(write(tmp_path, text.replace("\ta\n", "\t7\n").replace("\tb\n", "\t8\n")), missing_code=None)
    assert kept.column("bmi").to_pylist() == [-9.0, 22.5, -9.5] and kept.column("group").to_pylist() == [-9.0, 7.0, 8.0]
