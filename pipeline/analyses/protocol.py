"""What an analysis is: two pure functions and a layout per round, over a typed state.

The runtime (:mod:`pipeline.federation`) runs a job as a sequence of rounds. In round
``r`` every site computes ``site_step(state, r, dataset, site)`` from the job's public
``state`` and its own data; the runtime encodes it with ``layout(state, r)``, masks it
and runs one secure sum; the coordinator then calls ``coordinator_step(state, r,
total, num_sites)`` with the decoded *sum* of the surviving sites' contributions and
gets the next state, or the result. An analysis knows nothing of keys, sockets or
databases: it *declares* its layout (:mod:`pipeline.encoding`) and never encodes,
masks or decodes anything itself.

One round kind is not a sum: a :class:`KeyUnion` round, where each site sends a set of
public keys (for example the variant IDs it holds) and the coordinator receives their
union, sorted and without duplicates (code point order, as Python sorts ``str``). It discloses which keys a site holds, never a count, and a site takes part
only when its policy says ``share_variant_keys``; otherwise it sends an empty set.

A job's public state is one frozen, typed object per analysis (a dataclass with
``to_json``), stored by the coordinator and sent to the sites as JSON; the analysis
reads it back with ``state_from_json``. Results are a JSON summary plus named Arrow
tables, and the files :meth:`Analysis.write_outputs` renders from them.

Every hook the runtime calls is declared here, with a default where an analysis may
leave it out (``site_finish``, ``write_outputs``, ``partial_rounds``...).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, Union

import numpy as np
import pyarrow as pa

from pipeline.analyses.site_cache import SiteCache
from pipeline.dataset import Dataset
from pipeline.encoding import Layout
from pipeline.privacy import Spend

__all__ = [
    "Analysis",
    "Contribution",
    "GENOTYPES",
    "JobState",
    "JsonState",
    "KeyUnion",
    "RoundLayout",
    "Result",
    "SiteContext",
    "StepResult",
    "dataset_sample_ids",
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
    """What a site step may know about the site besides its data: name, policy and cache.

    Attributes:
        name: the site's name (its certificate's subject).
        min_samples: the site's k; the runtime checks it before any step runs.
        min_allele_count: the least minor allele count of a variant whose key the
            site shares in a :class:`KeyUnion` round; a variant where the site's own
            count is non-zero and below it is flagged and left out of that variant's
            sums (census counts, GWAS regression; a PCA does not select the variant).
        share_variant_keys: whether the site sends keys in a :class:`KeyUnion` round.
        share_site_metrics: whether the site may reveal statistics of its own (for
            example a model's metrics on its held-out split) in a slot of a secure sum
            that only it fills; off unless the site's policy opts in.
        cache: what the site keeps between the rounds of one job (genotypes it read);
            owned by the runtime, which drops it when the job ends.
        sample_lists: the site's own sample lists by name (``[sample_lists]`` in its
            ``site.toml``): a job names a list, the site resolves it here
            (:mod:`pipeline.analyses.selection`), so no path or ID travels.
    """

    name: str
    min_samples: int
    min_allele_count: int
    share_variant_keys: bool
    share_site_metrics: bool = False
    cache: SiteCache = field(default_factory=SiteCache, compare=False, repr=False)
    sample_lists: Mapping[str, Path] = field(default_factory=dict, hash=False)


GENOTYPES = "genotypes"
"""The variable name of genotype data in a :class:`Contribution` (every genotype analysis uses it)."""


@dataclass(frozen=True)
class Contribution:
    """One release's contributing set at a site: which of its samples, over which variables.

    ``samples`` are the site's sample IDs that enter the release after missingness,
    selections and filters (complete cases of the phenotype and covariates, the
    training and held-out splits...); ``variables`` the sorted column names involved,
    with :data:`GENOTYPES` for genotype data. It never leaves the site: the site's
    ledger checks it against earlier releases.
    """

    samples: frozenset[str]
    variables: tuple[str, ...]


def dataset_sample_ids(dataset: Dataset) -> frozenset[str]:
    """Every sample ID of a dataset (its samples table; no genotype is read)."""
    return frozenset(str(s) for s in dataset.samples().column("sample_id").to_pylist())


@dataclass(frozen=True)
class Result:
    """A finished job's result: a JSON summary and named Arrow tables."""

    summary: Mapping[str, Any]
    tables: Mapping[str, pa.Table] = field(default_factory=dict)


class JobState(Protocol):
    """A job's public state: frozen, typed, and JSON for storage and transport."""

    def to_json(self) -> dict[str, Any]:
        """The state as JSON (``state_from_json`` of the analysis reads it back)."""
        ...


class JsonState(abc.ABC):
    """Base of frozen state dataclasses that hold numpy arrays (declared with ``eq=False``).

    A dataclass's generated ``==`` cannot compare numpy fields. What every party agrees
    on is the state's canonical JSON (the coordinator hashes it, the sites check the
    digest), so that is what equality compares: ``state_from_json(state.to_json()) ==
    state`` says the state survives storage and transport bit for bit.
    """

    @abc.abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The state as JSON: what every party stores, hashes and compares."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, JsonState)
        return _canonical(self.to_json()) == _canonical(other.to_json())

    __hash__ = None  # type: ignore[assignment]


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


S = TypeVar("S", bound=JobState)

StepResult = tuple[S, bool, Union[Result, None]]
"""What ``coordinator_step`` returns: ``(next state, done, result when done)``."""


class Analysis(Protocol, Generic[S]):
    """The interface of one federated analysis (pure functions, no I/O but the dataset).

    Analyses subclass it explicitly, which gives them the defaults of the optional hooks.
    """

    name: str

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> S:
        """The coordinator's initial public state from the job's parameters.

        Raises:
            ConfigurationError: a parameter is missing or wrong (the job is refused).
        """
        ...

    def state_from_json(self, data: Mapping[str, Any]) -> S:
        """The state that ``state.to_json()`` wrote (identical at every party)."""
        ...

    def layout(self, state: S, round_index: int) -> RoundLayout:
        """What every site contributes in round ``round_index`` (identical at every party)."""
        ...

    def site_step(self, state: S, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """A site's local contribution: arrays named and shaped as the layout's fields."""
        ...

    def coordinator_step(
        self, state: S, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[S]:
        """Next state from the round's total (sum of ``num_sites`` sites, or a key union).

        Returns:
            ``(state, done, result)``; ``result`` is set when ``done``.
        """
        ...

    def contributions(self, state: S, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """At a site, before it sends anything of the job: the contributing sets the job would release.

        One per phenotype or selection the job releases separately. Called with the
        job's first round state. Default: every sample of the dataset, over the
        genotypes. An analysis whose release involves no sample (a test vector)
        returns ``()``.
        """
        return (Contribution(dataset_sample_ids(dataset), (GENOTYPES,)),)

    def privacy_spend(self, state: S, round_index: int) -> Spend | None:
        """The noise the sites add in this round and what it costs, or ``None`` for an exact round.

        An analysis that supports differential privacy adds the noise in its own site
        step (integers, before the runtime encodes and masks them) and reports it here;
        the site agent checks it against the site's budget before sending anything of the
        round, and records it (:mod:`pipeline.federation.budget`). Default: exact.
        """
        return None

    def partial_rounds(self, state: S, round_index: int) -> bool:
        """Whether this round may sum fewer sites than the job's cohort. Default: no.

        A job's cohort is the sites its first round included. A cohort site missing from
        a later round's sum fails the job: the earlier rounds (QC, PCA, standardisation)
        described sites this round no longer covers. A round that may go on without it
        says so here (a federated training step averages whoever reported, and the site
        is invited again to the next round).
        """
        return False

    def round_name(self, state: S, round_index: int) -> str:
        """The round as messages to the analyst name it (a phased analysis adds its phase)."""
        return f"round {round_index}"

    def site_finish(self, state: S, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """At a site, once a job it contributed to has ended: write what stays at the site.

        Called with the last round state the site fetched; returns what was written
        (for the site's audit log) or ``None``. Default: nothing stays.
        """
        return None

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """At the coordinator, once the job is done: files rendered from the result.

        Returns the names of the files written into ``out_dir`` (reports, plots,
        community formats); they are stored and served with the result's tables.
        Default: none.
        """
        return []
