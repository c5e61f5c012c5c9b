"""Arrays and Arrow tables inside JSON: how a job's public state carries numbers.

A job's state is stored by the coordinator and sent to the sites as JSON, and every
party must read back exactly the arrays that were written (a PCA basis, a model's
parameters, per-variant status codes). JSON numbers would lose float bits and dtypes,
so an array travels as its dtype, shape and base64 little-endian bytes
(:func:`encode_array`), and a table as base64 of a zstd-compressed Arrow IPC stream
(:func:`table_to_json`). Both round-trip bit for bit.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["encode_array", "decode_array", "frozen_array", "table_to_json", "table_from_json"]


def encode_array(array: Any) -> dict[str, Any]:
    """A numpy array as JSON: dtype, shape and base64 of its little-endian bytes."""
    values = np.ascontiguousarray(np.asarray(array))
    dtype = values.dtype.newbyteorder("<") if values.dtype.byteorder == ">" else values.dtype
    return {"dtype": dtype.str, "shape": list(values.shape), "base64": base64.b64encode(values.astype(dtype).tobytes()).decode("ascii")}


def decode_array(data: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array` (a writable copy)."""
    raw = base64.b64decode(data["base64"])
    return np.frombuffer(raw, dtype=np.dtype(data["dtype"])).reshape(tuple(data["shape"])).copy()


def frozen_array(values: Any, dtype: Any = None) -> np.ndarray:
    """A read-only copy of ``values`` (as ``dtype`` if given): an array a frozen state may hold."""
    array = np.array(values, dtype=dtype, copy=True)
    array.setflags(write=False)
    return array


def table_to_json(table: pa.Table) -> str:
    """An Arrow table as base64 of a zstd-compressed IPC stream (compact JSON)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def table_from_json(text: str) -> pa.Table:
    """Inverse of :func:`table_to_json`."""
    return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text))).read_all()
