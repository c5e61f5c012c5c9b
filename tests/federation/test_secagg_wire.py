"""Secure-aggregation messages on the wire: a party of another protocol version is refused by name."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import ProtocolError
from pipeline.federation import secagg_wire, wire
from pipeline.secagg.messages import SERVER, MaskedInput


def _with_header(body: bytes, *, drop: tuple[str, ...] = (), **changes: object) -> bytes:
    """The same message with fields of its JSON header replaced or dropped (as another genofed would write it)."""
    table = pa.ipc.open_stream(body).read_all()
    metadata = dict(table.schema.metadata)
    header = {**json.loads(metadata[secagg_wire.HEADER_KEY]), **changes}
    metadata[secagg_wire.HEADER_KEY] = json.dumps({k: v for k, v in header.items() if k not in drop}).encode()
    return wire.encode_table(table.replace_schema_metadata(metadata))


def test_decode_message__round_trips_a_masked_input():
    message = MaskedInput(round_index=2, sender=3, receiver=SERVER, vector=np.arange(5, dtype=np.uint32))
    decoded = secagg_wire.decode_message(secagg_wire.encode_message(message))
    assert isinstance(decoded, MaskedInput) and (decoded.round_index, decoded.sender) == (2, 3)
    np.testing.assert_array_equal(decoded.vector, message.vector)


@pytest.mark.parametrize("older", [4, 5])
def test_decode_message__another_protocol_version_is_refused_naming_both(older):
    """Masks changed meaning at version 5 and consistency signatures at 6: an older party's messages are refused."""
    body = secagg_wire.encode_message(MaskedInput(round_index=0, sender=1, receiver=SERVER, vector=np.zeros(4, np.uint32)))
    assert isinstance(secagg_wire.decode_message(_with_header(body)), MaskedInput)  # the rewrite itself changes nothing
    with pytest.raises(ProtocolError, match=rf"wire version {older}, and this party speaks {secagg_wire.WIRE_VERSION}"):
        secagg_wire.decode_message(_with_header(body, wire_version=older))
    with pytest.raises(ProtocolError, match="must be an object with wire_version"):
        secagg_wire.decode_message(_with_header(body, drop=("wire_version",)))
