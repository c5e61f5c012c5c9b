"""Phenotype tables: tab-separated text, one row per sample, as an Arrow table.

The first column holds sample IDs (plink's ``#IID`` / ``IID`` / ``FID IID`` headers are
understood; FID is dropped) and becomes ``sample_id``. ``NA``, ``NaN``, ``.`` and empty
cells are missing, and so is PLINK's missing code ``-9`` (any number equal to it, ``-9.0``
too, in any column; plink2's ``--input-missing-phenotype``, which also applies to
covariates; ``missing_code=None`` keeps -9 as a value). Type rule, fixed here for
every later use: a column is numeric (float64) when its first non-missing value is a
number; any later non-number in it is an error naming the line, the column and the
cell. Other columns are strings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from pipeline.errors import InputError, PhenotypeError

MISSING_VALUES = frozenset({"", "NA", "NaN", "nan", "."})
PLINK_MISSING_CODE = -9.0
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def _split(line: str, tabs: bool) -> list[str]:
    return line.split("\t") if tabs else line.split()


def read_phenotypes(path: str | Path, *, missing_code: float | None = PLINK_MISSING_CODE) -> pa.Table:
    """Reads a phenotype TSV into a table with ``sample_id`` (string) first.

    ``missing_code``: a number that means missing (PLINK's -9), or None.

    Raises:
        InputError: the file is missing or not UTF-8 text.
        PhenotypeError: no header, duplicate column names or sample IDs, ragged lines,
            a missing sample ID, or a non-number in a numeric column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path to the phenotype table (tab-separated, first column IID)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 text (byte {error.start}); save the table as UTF-8 tab-separated text") from error
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise PhenotypeError(f"{path}: empty file; expected a header line (IID and phenotype names) and one line per sample")
    header_number, header_line = lines[0]
    tabs = "\t" in header_line
    header = _split(header_line, tabs)
    if len(header) >= 2 and header[0].lstrip("#") == "FID" and header[1] == "IID":
        id_column, names = 1, header[2:]
    else:
        id_column, names = 0, header[1:]
    if len(set(names)) != len(names) or "sample_id" in names:
        duplicated = sorted({n for n in names if names.count(n) > 1 or n == "sample_id"})
        raise PhenotypeError(f"{path}: line {header_number}: duplicate or reserved column names {duplicated}; rename them")
    width = len(header)
    sample_ids: list[str] = []
    first_line: dict[str, int] = {}
    columns: list[list[str | None]] = [[] for _ in names]
    for number, line in lines[1:]:
        cells = _split(line, tabs)
        if len(cells) != width:
            raise PhenotypeError(f"{path}: line {number}: {len(cells)} columns, expected {width} as in the header (line {header_number}); fix the row")
        sample_id = cells[id_column].strip()
        if sample_id in MISSING_VALUES:
            raise PhenotypeError(f"{path}: line {number}: missing sample ID in column {header[id_column]!r}; every row needs one")
        if sample_id in first_line:
            raise PhenotypeError(f"{path}: line {number}: sample ID {sample_id!r} already on line {first_line[sample_id]}; each sample must appear once")
        first_line[sample_id] = number
        sample_ids.append(sample_id)
        for k, cell in enumerate(cells[id_column + 1 :]):
            value = cell.strip()
            columns[k].append(None if value in MISSING_VALUES else value)
    data: dict[str, pa.Array] = {"sample_id": pa.array(sample_ids, type=pa.string())}
    data_lines = [number for number, _ in lines[1:]]
    for name, values in zip(names, columns, strict=True):
        data[name] = _typed_column(path, name, values, data_lines, missing_code)
    return pa.table(data)


def _typed_column(path: Path, name: str, values: list[str | None], line_numbers: list[int], missing_code: float | None) -> pa.Array:
    """float64 when the first non-missing value is a number, else string; a number equal to ``missing_code`` is missing."""
    if missing_code is not None:
        values = [None if value is not None and _NUMBER.fullmatch(value) and float(value) == missing_code else value for value in values]
    first = next((value for value in values if value is not None), None)
    if first is None or not _NUMBER.fullmatch(first):
        return pa.array(values, type=pa.string())
    numbers: list[float | None] = []
    for value, number in zip(values, line_numbers, strict=True):
        if value is None:
            numbers.append(None)
        elif _NUMBER.fullmatch(value):
            numbers.append(float(value))
        else:
            raise PhenotypeError(
                f"{path}: line {number}, column {name!r}: {value[:40]!r} is not a number, but the column is numeric (its first "
                "value is); fix the cell or write NA for a missing value"
            )
    return pa.array(numbers, type=pa.float64())
