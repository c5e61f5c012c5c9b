"""Federated analyses: each one is two pure functions and a layout per round.

The runtime (:mod:`pipeline.federation.jobs`) runs a job as a sequence of rounds. In
round ``r`` every site computes ``site_step(state, r, dataset, policy)`` from the job's
public ``state`` and its own data; the runtime encodes it with ``layout(state, r)``,
masks it and runs one secure sum; the coordinator then calls
``coordinator_step(state, r, total)`` with the decoded *sum* of the surviving sites'
contributions and gets the next state, or the result. An analysis knows nothing of
keys, sockets or databases, so adding GWAS, PCA or training means adding one module
here and one line to :data:`REGISTRY`.

One round kind is not a sum: a :class:`KeyUnion` round, where each site sends a set of
public keys (for example the variant IDs it holds) and the coordinator receives their
sorted union. It discloses which keys a site holds, never a count, and a site takes part
only when its policy says ``share_variant_keys``; otherwise it sends an empty set.

A job's public state is a JSON-serializable ``dict`` (it is stored by the coordinator
and sent to the sites); results are a JSON summary plus named Arrow tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import numpy as np
import pyarrow as pa

from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError
from pipeline.secagg.encoding import Layout

__all__ = [
    "Analysis",
    "KeyUnion",
    "RoundLayout",
    "Result",
    "SiteContext",
    "REGISTRY",
    "get_analysis",
]


@dataclass(frozen=True)
class KeyUnion:
    """A round whose contributions are key sets and whose "sum" is their sorted union.

    Attributes:
        name: the contribution's field name (``variant_id``).
        purpose: one line saying what the keys are for (shown in the audit log).
    """

    name: str
    purpose: str


RoundLayout = Union[Layout, KeyUnion]
"""What a site contributes in one round: a secure-sum :class:`Layout` or a :class:`KeyUnion`."""


@dataclass(frozen=True)
class SiteContext:
    """What a site step may know about the site besides its data: name and policy.

    Attributes:
        name: the site's name (its certificate's subject).
        min_samples: the site's k; the runtime checks it before any step runs.
        min_allele_count: the least minor allele count of a variant whose key the
            site shares in a :class:`KeyUnion` round.
        share_variant_keys: whether the site sends keys in a :class:`KeyUnion` round.
        share_site_metrics: whether the site may reveal statistics of its own (for
            example a model's metrics on its held-out split) in a slot of a secure sum
            that only it fills; off unless the site's policy opts in.
    """

    name: str
    min_samples: int
    min_allele_count: int
    share_variant_keys: bool
    share_site_metrics: bool = False


@dataclass(frozen=True)
class Result:
    """A finished job's result: a JSON summary and named Arrow tables."""

    summary: Mapping[str, Any]
    tables: Mapping[str, pa.Table] = field(default_factory=dict)


class Analysis(Protocol):
    """The interface of one federated analysis (pure functions, no I/O but the dataset)."""

    name: str

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """The coordinator's initial public state from the job's parameters.

        Raises:
            ConfigurationError: a parameter is missing or wrong (the job is refused).
        """
        ...

    def layout(self, state: Mapping[str, Any], round_index: int) -> RoundLayout:
        """What every site contributes in round ``round_index`` (identical at every party)."""
        ...

    def site_step(
        self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext
    ) -> dict[str, np.ndarray]:
        """A site's local contribution: arrays named and shaped as the layout's fields."""
        ...

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Next state from the round's total (sum of ``num_sites`` sites, or a key union).

        Returns:
            ``(state, done, result)``; ``result`` is set when ``done``.
        """
        ...


def _registry() -> dict[str, Analysis]:
    from pipeline.analyses.census import CENSUS
    from pipeline.analyses.gwas import GWAS
    from pipeline.analyses.pca import PCA
    from pipeline.analyses.secure_sum import SECURE_SUM
    from pipeline.analyses.train import TRAIN

    return {analysis.name: analysis for analysis in (SECURE_SUM, CENSUS, TRAIN, PCA, GWAS)}


REGISTRY: Mapping[str, Analysis]


def get_analysis(name: str) -> Analysis:
    """The analysis called ``name``.

    Raises:
        ConfigurationError: no such analysis (the message lists the known ones).
    """
    registry = _registry()
    if name not in registry:
        raise ConfigurationError(f"unknown analysis {name!r}; expected one of {sorted(registry)}")
    return registry[name]


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":
        return _registry()
    raise AttributeError(name)
