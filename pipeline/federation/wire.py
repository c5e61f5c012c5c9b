"""Byte formats the federation's parties agree on: digests, canonical JSON, Arrow IPC tables.

JSON carries control (job specs, task descriptions, receipts), written canonically so
that equal values give equal bytes and equal digests; arrays and tables (census
results, variant keys) travel as plain Arrow IPC streams
(``application/vnd.apache.arrow.stream``).

Only the generic formats live here (the JSON ones in :mod:`pipeline.federation.json_wire`,
re-exported). Secure-aggregation messages are encoded on top of
them in :mod:`pipeline.federation.secagg_wire` and the HTTPS client is
:mod:`pipeline.federation.transport`; this module imports neither secure aggregation
nor JAX, so an analyst's client that submits jobs and downloads results loads neither.

Decoding never trusts its input: anything malformed raises
:class:`~pipeline.errors.ProtocolError`, which the server answers with 422.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.errors import ProtocolError
from pipeline.federation.json_wire import ARROW_MEDIA_TYPE, canonical_json, digest

__all__ = [
    "ARROW_MEDIA_TYPE",
    "digest",
    "canonical_json",
    "encode_table",
    "decode_table",
]


def encode_table(table: pa.Table) -> bytes:
    """A table as one Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_table(data: bytes, *, what: str = "table") -> pa.Table:
    """Reads an Arrow IPC stream written by :func:`encode_table`.

    Raises:
        ProtocolError: the bytes are not an Arrow IPC stream.
    """
    try:
        with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
            return reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ProtocolError(f"malformed {what}: not an Arrow IPC stream ({error})") from None
