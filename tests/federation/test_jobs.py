"""Job specs (the runtime keys the engine checks before anything is stored) and key-union rounds."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analyses import REGISTRY
from pipeline.errors import ConfigurationError
from pipeline.federation.jobs import decode_keys, encode_keys, parse_spec, union_keys

ENROLLED = ("alpha", "beta", "gamma")


def test_parse_spec__missing_analysis_lists_every_registered_name():
    with pytest.raises(ConfigurationError) as error:
        parse_spec({"threshold": 2}, ENROLLED)
    for name in REGISTRY:
        assert name in str(error.value)


def test_parse_spec__num_neighbours_must_be_a_positive_integer():
    analysis, sites, threshold = parse_spec({"analysis": "secure_sum", "num_neighbours": 2}, ENROLLED)
    assert (analysis.name, sites, threshold) == ("secure_sum", ENROLLED, None)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ConfigurationError, match="num_neighbours"):
            parse_spec({"analysis": "secure_sum", "num_neighbours": bad}, ENROLLED)


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
