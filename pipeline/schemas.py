"""The Arrow contract: loads ``schemas/*.json`` into pyarrow schemas and validates tables.

Nothing else in genofed defines a column. The JSON files are language-neutral so that a
site running other tools can check its data against the same contract.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

import pyarrow as pa

from pipeline.errors import SchemaError
from pipeline.resources import schemas_dir

_PRIMITIVES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int8": pa.int8(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "uint32": pa.uint32(),
    "uint64": pa.uint64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
}
_LIST_TYPE = re.compile(r"^list<(\w+)>$")


@dataclass(frozen=True)
class TableSpec:
    """One table of the contract: its pyarrow schema and what may be added to it."""

    name: str
    version: str
    schema: pa.Schema
    additional_types: tuple[pa.DataType, ...]


def parse_type(text: str) -> pa.DataType:
    """Turns a type name of the JSON contract (``int8``, ``list<float32>``) into Arrow."""
    if text in _PRIMITIVES:
        return _PRIMITIVES[text]
    match = _LIST_TYPE.match(text)
    if match and match.group(1) in _PRIMITIVES:
        return pa.list_(_PRIMITIVES[match.group(1)])
    raise SchemaError(f"unknown type {text!r} in a schema file; expected one of {sorted(_PRIMITIVES)} or list<T>")


@functools.cache
def load(name: str) -> TableSpec:
    """Loads ``schemas/<name>.json``."""
    path = schemas_dir() / f"{name}.json"
    if not path.is_file():
        raise SchemaError(f"no schema named {name!r} ({path} does not exist)")
    spec = json.loads(path.read_text())
    fields = [
        pa.field(
            f["name"],
            parse_type(f["type"]),
            nullable=f.get("nullable", True),
            metadata={"description": f.get("description", "")},
        )
        for f in spec["fields"]
    ]
    metadata = {"genofed.schema": spec["name"], "genofed.schema_version": spec["version"]}
    extra = spec.get("additional_fields", {}).get("allowed_types", [])
    return TableSpec(
        name=spec["name"],
        version=spec["version"],
        schema=pa.schema(fields, metadata=metadata),
        additional_types=tuple(parse_type(t) for t in extra),
    )


def schema(name: str) -> pa.Schema:
    """The pyarrow schema of table ``name`` (with the contract's version in its metadata)."""
    return load(name).schema


def validate(table: pa.Table, name: str, *, source: str = "table") -> None:
    """Checks that ``table`` has exactly the contract's columns, types and nullability.

    Raises:
        SchemaError: naming ``source``, the column and what was expected.
    """
    spec = load(name)
    expected = spec.schema
    for i, field in enumerate(expected):
        if i >= table.num_columns or table.schema.field(i).name != field.name:
            got = table.schema.names[i] if i < table.num_columns else "nothing"
            raise SchemaError(f"{source}: column {i} should be {field.name!r} ({name} schema), found {got!r}")
        actual = table.schema.field(i).type
        if not actual.equals(field.type):
            raise SchemaError(f"{source}: column {field.name!r} has type {actual}, the {name} schema says {field.type}")
        if not field.nullable and table.column(i).null_count:
            raise SchemaError(f"{source}: column {field.name!r} has {table.column(i).null_count} nulls; the {name} schema forbids nulls")
    for field in list(table.schema)[len(expected):]:
        if not any(field.type.equals(t) for t in spec.additional_types):
            allowed = ", ".join(map(str, spec.additional_types)) or "none"
            raise SchemaError(f"{source}: extra column {field.name!r} of type {field.type} is not allowed in {name} (allowed extra types: {allowed})")


def conform(table: pa.Table, name: str, *, source: str = "table") -> pa.Table:
    """Validates ``table`` and attaches the contract's field docs and version metadata."""
    validate(table, name, source=source)
    spec = load(name)
    fields = list(spec.schema) + list(table.schema)[len(spec.schema):]
    return table.cast(pa.schema(fields, metadata=spec.schema.metadata))
