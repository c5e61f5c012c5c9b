"""The analyses a federation can run, by name.

Adding an analysis means writing its module and adding it here; the coordinator, the
site agent and the workflow runner find it by the name a job spec gives.

An analysis module is imported when a job first asks for it, not when the coordinator or
an agent starts: training imports Flax and Optax, the association plots Matplotlib, and
a process that runs a census or a linear GWAS should not pay a second of imports each
start for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pipeline.analyses.protocol import Analysis
from pipeline.errors import ConfigurationError

__all__ = ["ANALYSIS_NAMES", "check_analysis_name", "get_analysis"]

_MODULES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "secure_sum": ("pipeline.analyses.secure_sum", "SECURE_SUM"),
    "census": ("pipeline.analyses.census", "CENSUS"),
    "train": ("pipeline.analyses.train", "TRAIN"),
    "pca": ("pipeline.analyses.pca", "PCA"),
    "gwas": ("pipeline.analyses.gwas", "GWAS"),
})
"""Every analysis by name: the module that defines it and the name of its instance there."""

ANALYSIS_NAMES: tuple[str, ...] = tuple(_MODULES)
"""The names a job spec may give as its ``analysis``."""


def check_analysis_name(name: str) -> None:
    """Refuses a name that is not an analysis, without importing any.

    Raises:
        ConfigurationError: no such analysis (the message lists the known ones).
    """
    if name not in _MODULES:
        raise ConfigurationError(f"unknown analysis {name!r}; expected one of {sorted(_MODULES)}")


def get_analysis(name: str) -> Analysis[Any]:
    """The analysis called ``name``, its module imported on first use.

    Raises:
        ConfigurationError: no such analysis (the message lists the known ones).
    """
    check_analysis_name(name)
    module, attribute = _MODULES[name]
    analysis: Analysis[Any] = getattr(importlib.import_module(module), attribute)
    return analysis
