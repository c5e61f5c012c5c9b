"""The analyses a federation can run, by name.

Adding an analysis means writing its module and adding it here; the coordinator, the
site agent and the workflow runner find it by the name a job spec gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pipeline.analyses.census import CENSUS
from pipeline.analyses.gwas import GWAS
from pipeline.analyses.pca import PCA
from pipeline.analyses.protocol import Analysis
from pipeline.analyses.secure_sum import SECURE_SUM
from pipeline.analyses.train import TRAIN
from pipeline.errors import ConfigurationError

__all__ = ["REGISTRY", "get_analysis"]

REGISTRY: Mapping[str, Analysis[Any]] = MappingProxyType(
    {analysis.name: analysis for analysis in (SECURE_SUM, CENSUS, TRAIN, PCA, GWAS)}
)
"""Every analysis by name."""


def get_analysis(name: str) -> Analysis[Any]:
    """The analysis called ``name``.

    Raises:
        ConfigurationError: no such analysis (the message lists the known ones).
    """
    if name not in REGISTRY:
        raise ConfigurationError(f"unknown analysis {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]
