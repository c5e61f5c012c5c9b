"""Job specs: the runtime keys the engine checks before anything is stored."""

from __future__ import annotations

import pytest

from pipeline.analyses import REGISTRY
from pipeline.errors import ConfigurationError
from pipeline.federation.jobs import parse_spec

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
