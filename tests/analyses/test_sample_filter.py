"""The samples expression language: parsing (positions in errors, no eval), and evaluation against
a plain Python reading of each row with Kleene's three-valued logic written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.analyses.sample_filter import (
    Column,
    Comparison,
    FilterSyntaxError,
    Literal,
    Logical,
    Missing,
    Not,
    columns,
    evaluate,
    parse,
)
from pipeline.errors import SpecMismatch

TABLE = pa.table({
    "sample_id": ["s0", "s1", "s2", "s3", "s4", "s5"],
    "age": pa.array([30.0, 45.0, None, 50.0, float("nan"), 62.0]),
    "sex": pa.array([1, 2, 2, None, 1, 2], pa.int64()),
    "site group": ["a", "b", "a", None, "b", "b"],
    "smoker": [True, False, None, True, False, True],
})


def _selected(text: str) -> list[str]:
    mask = evaluate(parse(text), TABLE)
    return [s for s, keep in zip(TABLE.column("sample_id").to_pylist(), mask) if keep]


def test_parse__precedence_is_not_then_and_then_or():
    tree = parse("not a == 1 or b < 2 and c >= 'x'")
    assert tree == Logical("or", Not(Comparison(Column("a"), "==", Literal(1.0))),
                           Logical("and", Comparison(Column("b"), "<", Literal(2.0)),
                                   Comparison(Column("c"), ">=", Literal("x"))))
    assert parse("(a == 1 or b == 2) and c is not missing") == Logical(
        "and", Logical("or", Comparison(Column("a"), "==", Literal(1.0)), Comparison(Column("b"), "==", Literal(2.0))),
        Missing(Column("c"), negated=True))
    assert parse("`site group` != \"b\"") == Comparison(Column("site group"), "!=", Literal("b"))
    assert parse("x > -1.5e2") == Comparison(Column("x"), ">", Literal(-150.0))
    assert columns(parse("sex == 2 and (age >= 40 or bmi is missing) and not sex == 1")) == ("age", "bmi", "sex")


@pytest.mark.parametrize("text, position, expected", [
    ("age >=", 6, "a column name, a number or a quoted string"),
    ("age >= 40 and", 13, "a column name, a number or a quoted string"),
    ("(age > 1", 8, "')'"),
    ("age 3", 4, "a comparison"),
    ("age >= 40 40", 10, "'and', 'or' or the end"),
    ("age is 3", 7, "'missing'"),
])
def test_parse__errors_name_the_position_and_what_was_expected(text, position, expected):
    with pytest.raises(FilterSyntaxError) as caught:
        parse(text)
    assert str(caught.value).startswith(f"at position {position}: expected {expected}"), caught.value


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "age >= 40; drop", "age + 1 > 2", "len(age) > 1", "age = 40", "", "   ",
    "age >= 40 & sex == 2", "'unterminated == 1",
])
def test_parse__anything_but_the_grammar_is_refused(text):
    with pytest.raises(FilterSyntaxError):
        parse(text)


def _kleene(row: dict, text: str) -> bool:
    """The expected answer for the expressions below, written out per row (None = unknown)."""
    def value(name):
        v = row[name]
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def cmp(name, op, literal):
        v = value(name)
        return None if v is None else {"==": v == literal, "!=": v != literal, ">=": v >= literal, "<": v < literal}[op]

    def not_(a):
        return None if a is None else not a

    def and_(a, b):
        return False if a is False or b is False else (None if a is None or b is None else True)

    def or_(a, b):
        return True if a is True or b is True else (None if a is None or b is None else False)

    cases = {
        "sex == 2 and age >= 40": lambda: and_(cmp("sex", "==", 2), cmp("age", ">=", 40)),
        "not (age >= 40)": lambda: not_(cmp("age", ">=", 40)),
        "age >= 40 or sex == 1": lambda: or_(cmp("age", ">=", 40), cmp("sex", "==", 1)),
        "not (age < 40 and sex == 2)": lambda: not_(and_(cmp("age", "<", 40), cmp("sex", "==", 2))),
        "age is missing or sex != 2": lambda: or_(value("age") is None, cmp("sex", "!=", 2)),
        "age is not missing and smoker == 1": lambda: and_(value("age") is not None, cmp("smoker", "==", True)),
        "`site group` == 'b' and not sample_id == \"s4\"": lambda: and_(cmp("site group", "==", "b"),
                                                                        not_(cmp("sample_id", "==", "s4"))),
    }
    return cases[text]() is True


@pytest.mark.parametrize("text", [
    "sex == 2 and age >= 40", "not (age >= 40)", "age >= 40 or sex == 1", "not (age < 40 and sex == 2)",
    "age is missing or sex != 2", "age is not missing and smoker == 1", "`site group` == 'b' and not sample_id == \"s4\"",
])
def test_evaluate__missing_values_never_match_a_comparison(text):
    rows = TABLE.to_pylist()
    assert _selected(text) == [row["sample_id"] for row in rows if _kleene(row, text)]


def test_evaluate__the_documented_cases():
    assert _selected("not (age >= 40)") == ["s0"]  # s2 (null) and s4 (NaN) are unknown, not selected
    assert _selected("sex != 2") == ["s0", "s4"]  # s3's sex is missing
    assert _selected("sex != 2 or sex is missing") == ["s0", "s3", "s4"]
    assert _selected("sample_id >= 's4'") == ["s4", "s5"]
    assert _selected("1 == 1") == TABLE.column("sample_id").to_pylist()


def test_evaluate__unknown_columns_and_type_mismatches_name_the_column_only():
    with pytest.raises(SpecMismatch) as caught:
        evaluate(parse("sex == 2 and agee >= 40"), TABLE, where="/data/site/samples.parquet")
    assert caught.value.public == "the samples expression's column 'agee' is missing"
    assert "/data/site" in str(caught.value) and "/data" not in caught.value.public
    with pytest.raises(SpecMismatch) as caught:
        evaluate(parse("sex == 'female'"), TABLE)
    assert "'sex'" in caught.value.public and "another type" in caught.value.public
    dated = pa.table({"when": pa.array([1, None], pa.timestamp("s"))})
    with pytest.raises(SpecMismatch, match="compares numbers and text only") as caught:
        evaluate(parse("when == 1"), dated)
    assert caught.value.public == "the samples expression's column 'when' is neither numeric nor text"
    assert evaluate(parse("when is missing"), dated).tolist() == [False, True]  # presence needs no comparison


def test_evaluate__returns_a_boolean_mask_of_the_table_rows():
    mask = evaluate(parse("age >= 0"), TABLE)
    assert mask.dtype == np.bool_ and mask.shape == (TABLE.num_rows,)
    assert evaluate(parse("age >= 0"), TABLE.slice(0, 0)).shape == (0,)
