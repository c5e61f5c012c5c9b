"""A small expression language over a samples table: ``sex == 2 and age >= 40``.

A job selects samples with an expression of the analyst's (plink2's ``--keep-if``, with
``and``/``or``/``not`` and parentheses); the site evaluates it on its own samples table.
The text travels in the job spec and is run at every site, so it is parsed by a
recursive-descent parser into a tree of frozen nodes, never ``eval``-ed: it can name
columns and literals and compare them, nothing else.

Grammar (keywords lower case)::

    expression := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" expression ")"
                | operand ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                | operand "is" ["not"] "missing"
    operand    := NAME | `any name` | NUMBER | 'text' | "text"

Missing values never match: a comparison with a missing value is *unknown*, and unknown
stays unknown under ``not`` (Kleene's three-valued logic, as SQL's NULL), so ``not (age
>= 40)`` keeps only people whose age is known and below 40. A sample is selected where
the whole expression is true. ``is missing`` / ``is not missing`` test presence itself.
(plink2's ``--keep-if`` agrees except for ``!=``, which it lets a missing value satisfy;
here ``x != 1`` keeps known values other than 1, and ``x != 1 or x is missing`` adds the
missing ones.)

Errors name what the analyst wrote: a syntax error its position (:class:`FilterSyntaxError`,
at submission), a column the site lacks or of the other type its name
(:class:`~pipeline.errors.SpecMismatch`, at the site's pre-flight).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.errors import SpecMismatch

__all__ = ["Column", "Comparison", "Expression", "FilterSyntaxError", "Literal", "Logical", "Missing", "Not",
           "columns", "evaluate", "parse"]


class FilterSyntaxError(ValueError):
    """The expression does not parse; the message names the position (0-based) and what was expected there."""


@dataclass(frozen=True)
class Column:
    name: str


@dataclass(frozen=True)
class Literal:
    value: float | str


Operand = Column | Literal


@dataclass(frozen=True)
class Comparison:
    left: Operand
    op: str
    right: Operand


@dataclass(frozen=True)
class Missing:
    column: Column
    negated: bool


@dataclass(frozen=True)
class Not:
    operand: Expression


@dataclass(frozen=True)
class Logical:
    op: str  # "and" | "or"
    left: Expression
    right: Expression


Expression = Comparison | Missing | Not | Logical

_COMPARE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_KEYWORDS = ("and", "or", "not", "is", "missing")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | `(?P<quoted_name>[^`]+)`
  | '(?P<single>[^']*)'
  | "(?P<double>[^"]*)"
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<paren>[()])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str  # number, name, keyword, string, op, paren, end
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise FilterSyntaxError(f"at position {position}: unexpected character {text[position]!r}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        if kind == "name" and value in _KEYWORDS:
            tokens.append(_Token("keyword", value, position))
        elif kind in ("single", "double"):
            tokens.append(_Token("string", value, position))
        elif kind == "quoted_name":
            tokens.append(_Token("name", value, position))
        elif kind != "space":
            tokens.append(_Token(kind, value, position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """One token of look-ahead over :func:`_tokens`; each method is one rule of the grammar."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    @property
    def next(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.next
        if token.kind == kind and (text is None or token.text == text):
            self.index += 1
            return token
        return None

    def fail(self, expected: str) -> FilterSyntaxError:
        token = self.next
        found = "the end" if token.kind == "end" else repr(token.text)
        return FilterSyntaxError(f"at position {token.position}: expected {expected}, found {found}")

    def expression(self) -> Expression:
        node = self.and_expr()
        while self.take("keyword", "or"):
            node = Logical("or", node, self.and_expr())
        return node

    def and_expr(self) -> Expression:
        node = self.not_expr()
        while self.take("keyword", "and"):
            node = Logical("and", node, self.not_expr())
        return node

    def not_expr(self) -> Expression:
        if self.take("keyword", "not"):
            return Not(self.not_expr())
        return self.atom()

    def atom(self) -> Expression:
        if self.take("paren", "("):
            node = self.expression()
            if not self.take("paren", ")"):
                raise self.fail("')'")
            return node
        left = self.operand()
        if self.take("keyword", "is"):
            negated = self.take("keyword", "not") is not None
            if not self.take("keyword", "missing"):
                raise self.fail("'missing'")
            if not isinstance(left, Column):
                raise FilterSyntaxError(f"'is missing' tests a column, not the literal {left.value!r}")
            return Missing(left, negated)
        op = self.take("op")
        if op is None:
            raise self.fail("a comparison (== != < <= > >=) or 'is [not] missing'")
        return Comparison(left, op.text, self.operand())

    def operand(self) -> Operand:
        token = self.next
        if self.take("name"):
            return Column(token.text)
        if self.take("number"):
            return Literal(float(token.text))
        if self.take("string"):
            return Literal(token.text)
        raise self.fail("a column name, a number or a quoted string")


def parse(text: str) -> Expression:
    """The expression's tree.

    Raises:
        FilterSyntaxError: naming the position and what was expected there.
    """
    if not isinstance(text, str) or not text.strip():
        raise FilterSyntaxError("an expression over the samples table's columns, e.g. \"sex == 2 and age >= 40\"")
    parser = _Parser(text)
    node = parser.expression()
    if parser.next.kind != "end":
        raise parser.fail("'and', 'or' or the end")
    return node


def columns(node: Expression) -> tuple[str, ...]:
    """The column names an expression reads, sorted (what its contributing set's variables include)."""
    found: set[str] = set()

    def visit(item: object) -> None:
        if isinstance(item, Column):
            found.add(item.name)
        elif isinstance(item, (Comparison, Missing, Not, Logical)):
            for value in vars(item).values():
                visit(value)

    visit(node)
    return tuple(sorted(found))


_Values = tuple[np.ndarray, np.ndarray]
"""(values, present) of one operand over the samples: float64 or object (text) values, bool presence."""
_Truth = tuple[np.ndarray, np.ndarray]
"""(true, known) per sample; ``true`` implies ``known``."""


def _column(table: pa.Table, name: str, where: str) -> _Values:
    """A column's values for a comparison (numbers as float64, text as objects) and where they are present (NaN is not)."""
    if name not in table.column_names:
        raise SpecMismatch(f"{where}: the job's samples expression names column {name!r}, which the samples table lacks",
                           public=f"the samples expression's column {name!r} is missing")
    column = table.column(name).combine_chunks()
    present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    kind = column.type
    if pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        values = np.asarray(column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64)
        return values, present & ~np.isnan(values)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_pylist(), dtype=object), present
    raise _OtherType(f"{where}: column {name!r} of the samples expression is {kind}; it compares numbers and text only",
                     public=f"the samples expression's column {name!r} is neither numeric nor text", present=present)


class _OtherType(SpecMismatch):
    """A column neither numeric nor text: refused in a comparison, fine for ``is missing``."""

    def __init__(self, detail: str, *, public: str, present: np.ndarray) -> None:
        super().__init__(detail, public=public)
        self.present = present


def _operand(item: Operand, table: pa.Table, where: str) -> _Values:
    if isinstance(item, Column):
        return _column(table, item.name, where)
    n = table.num_rows
    values = np.full(n, item.value, dtype=np.float64 if isinstance(item.value, float) else object)
    return values, np.ones(n, bool)


def _is_text(values: np.ndarray) -> bool:
    return values.dtype == object


def _compare(node: Comparison, table: pa.Table, where: str) -> _Truth:
    (left, left_present), (right, right_present) = (_operand(item, table, where) for item in (node.left, node.right))
    if _is_text(left) != _is_text(right):
        named = next((item.name for item in (node.left, node.right) if isinstance(item, Column)), "")
        raise SpecMismatch(f"{where}: the samples expression compares text with a number ({named!r} {node.op} ...)",
                           public=f"the samples expression compares the column {named!r} with a value of another type")
    known = left_present & right_present
    true = np.zeros(table.num_rows, bool)
    true[known] = _COMPARE[node.op](left[known], right[known]).astype(bool)
    return true, known


def _truth(node: Expression, table: pa.Table, where: str) -> _Truth:
    if isinstance(node, Comparison):
        return _compare(node, table, where)
    if isinstance(node, Missing):
        try:
            _, present = _column(table, node.column.name, where)
        except _OtherType as other:  # presence needs no comparison: any type will do
            present = other.present
        return (present if node.negated else ~present), np.ones(table.num_rows, bool)
    if isinstance(node, Not):
        true, known = _truth(node.operand, table, where)
        return known & ~true, known
    left_true, left_known = _truth(node.left, table, where)
    right_true, right_known = _truth(node.right, table, where)
    both = left_known & right_known
    if node.op == "and":
        false = (left_known & ~left_true) | (right_known & ~right_true)
        return left_true & right_true, both | false
    return left_true | right_true, both | left_true | right_true


def evaluate(node: Expression, table: pa.Table, *, where: str = "samples table") -> np.ndarray:
    """(rows,) bool: the samples the expression is true for (unknown, from a missing value, is not true).

    Args:
        where: the table's source, for the site's log.

    Raises:
        SpecMismatch: a column the table lacks, or of neither a numeric nor a text type,
            or compared with a value of the other type (``public`` names the column only).
    """
    return _truth(node, table, where)[0]
