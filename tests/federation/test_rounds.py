"""Key-union rounds: the key set's wire form and the coordinator's sorted union."""

from __future__ import annotations

import numpy as np

from pipeline.federation.rounds import decode_keys, encode_keys, union_keys


def test_union_keys__sorted_union_as_python_sorts_it__through_the_wire():
    sites = [
        np.array(["chr2:10:A:G", "chr1:5:C:T", "chr10:1:G:A"]),
        np.array([], dtype=str),
        np.array(["chr1:5:C:T", "chrX:9:A:\u00e9", "chrX:9:A:Z", "chr1:5:C:T"]),
    ]
    received = [decode_keys(encode_keys(keys, "variant_id"), "variant_id") for keys in sites]
    union = union_keys(received)
    assert union.tolist() == sorted({key for keys in sites for key in keys.tolist()})
    assert union_keys([]).tolist() == [] and union_keys([np.array([], dtype=str)]).tolist() == []
