"""Analyses run one after another as one job: each phase's result feeds the next phase.

A GWAS is a census (variant union, counts, QC filter), then optionally a PCA, then the
regression rounds; a training job is a feature-key union, a screening round, feature
moments, the training rounds and a final evaluation. Each *phase* is an ordinary
:class:`~pipeline.analyses.protocol.Analysis`; :class:`Phased` runs them in sequence
inside one job, so the runtime still sees one analysis with one round counter:

* the job state is a :class:`PhasedState`: the phase in progress, the job round it
  started at (``offset``) and that phase's own typed state (``inner``); job round ``r``
  is round ``r - offset`` of the phase;
* when phase ``i`` finishes, ``phase.carry(result, state)`` (JSON, e.g. the QC-passing
  variant IDs or the PCA basis) is merged into ``carried`` and phase ``i + 1`` starts
  from ``init(spec(job_spec, carried), participants)``, in the same coordinator step
  (no round is spent on the hand-over);
* the final result is the last phase's, with every earlier non-empty summary under
  ``summary["phases"][name]`` and the earlier tables a phase declares in
  ``keep_tables`` (they travel in the state as compressed Arrow IPC, because the state
  must be JSON; the sites receive the state, so keep only tables the sites may see,
  e.g. PCA loadings they hold anyway);
* ``carried`` is dropped from the state once the last phase starts (it has been turned
  into that phase's spec), so the state sent to the sites stays small.

A phase whose ``spec`` returns ``None`` is skipped (``pcs: 0`` skips the PCA).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses.protocol import Analysis, Contribution, JobState, Result, RoundLayout, SiteContext, StepResult
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError
from pipeline.json_arrays import table_from_json, table_to_json
from pipeline.privacy import Spend

__all__ = ["Phase", "Phased", "PhasedState"]


@dataclass(frozen=True)
class Phase:
    """One analysis of a :class:`Phased` job.

    Attributes:
        name: the phase's name in the summary (``census``, ``pca``, ``gwas``).
        analysis: the analysis run by the phase.
        spec: ``(job spec, carried) -> phase spec``, or ``None`` to skip the phase.
        carry: ``(result, final phase state) -> JSON`` handed to the later phases
            (merged into ``carried``), e.g. the QC-passing variant IDs or a PCA's basis.
        keep_tables: names of the phase's result tables that go into the job's result.
    """

    name: str
    analysis: Analysis[Any]
    spec: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any] | None]
    carry: Callable[[Result, Any], Mapping[str, Any]]
    keep_tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhasedState:
    """The state of a :class:`Phased` job (see the module docstring).

    Attributes:
        job_spec: the job's parameters, from which each phase's spec is built.
        participants: the job's sites (sorted).
        phase: index of the phase in progress.
        offset: the job round at which that phase started.
        inner: that phase's own state.
        carried: JSON handed from finished phases to later ones.
        summaries: the finished phases' non-empty result summaries, by phase name.
        tables: the kept tables of finished phases (compressed Arrow IPC, base64).
    """

    job_spec: dict[str, Any]
    participants: tuple[str, ...]
    phase: int
    offset: int
    inner: JobState
    carried: dict[str, Any] = field(default_factory=dict)
    summaries: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_spec": dict(self.job_spec), "participants": list(self.participants), "phase": self.phase,
            "offset": self.offset, "inner": self.inner.to_json(), "carried": dict(self.carried),
            "summaries": dict(self.summaries), "tables": dict(self.tables),
        }


class Phased(Analysis[PhasedState]):
    """An analysis made of phases run in sequence (see the module docstring)."""

    def __init__(self, name: str, phases: Sequence[Phase]) -> None:
        if not phases:
            raise ConfigurationError(f"{name}: a phased analysis needs at least one phase")
        self.name = name
        self.phases = tuple(phases)

    def phase_named(self, name: str) -> int:
        """The index of the phase called ``name``."""
        for index, phase in enumerate(self.phases):
            if phase.name == name:
                return index
        raise ConfigurationError(f"{self.name}: no phase {name!r}; phases are {[p.name for p in self.phases]}")

    def _start(self, index: int, job_spec: Mapping[str, Any], carried: Mapping[str, Any],
               participants: tuple[str, ...]) -> tuple[int, JobState]:
        """The first phase at or after ``index`` that is not skipped, and its initial state."""
        while index < len(self.phases):
            phase_spec = self.phases[index].spec(job_spec, carried)
            if phase_spec is not None:
                return index, self.phases[index].analysis.init(phase_spec, participants)
            index += 1
        raise ConfigurationError(f"{self.name}: every phase was skipped; nothing to run")

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> PhasedState:
        """Checks the spec (every phase's spec that can be built now) and starts the first phase."""
        index, inner = self._start(0, spec, {}, participants)
        return PhasedState(job_spec=dict(spec), participants=tuple(participants), phase=index, offset=0, inner=inner)

    def state_from_json(self, data: Mapping[str, Any]) -> PhasedState:
        index = int(data["phase"])
        if not 0 <= index < len(self.phases):
            raise ConfigurationError(f"{self.name}: a stored state names phase {index}; this analysis has {len(self.phases)}")
        return PhasedState(
            job_spec=dict(data["job_spec"]), participants=tuple(data["participants"]), phase=index,
            offset=int(data["offset"]), inner=self.phases[index].analysis.state_from_json(data["inner"]),
            carried=dict(data["carried"]), summaries=dict(data["summaries"]), tables=dict(data["tables"]),
        )

    def current(self, state: PhasedState, round_index: int) -> tuple[Phase, int]:
        """The phase in progress and the job round's number within it."""
        return self.phases[state.phase], round_index - state.offset

    def layout(self, state: PhasedState, round_index: int) -> RoundLayout:
        """The current phase's layout for its own round number."""
        phase, local_round = self.current(state, round_index)
        return phase.analysis.layout(state.inner, local_round)

    def site_step(self, state: PhasedState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The current phase's site step."""
        phase, local_round = self.current(state, round_index)
        return phase.analysis.site_step(state.inner, local_round, dataset, site)

    def coordinator_step(
        self, state: PhasedState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[PhasedState]:
        """Advances the current phase; on its result, carries it forward and starts the next phase."""
        phase, local_round = self.current(state, round_index)
        inner, done, result = phase.analysis.coordinator_step(state.inner, local_round, total, num_sites)
        if not done:
            return dataclasses.replace(state, inner=inner), False, None
        assert result is not None
        summaries = {**state.summaries, **({phase.name: dict(result.summary)} if result.summary else {})}
        carried = {**state.carried, **dict(phase.carry(result, inner))}
        following = range(state.phase + 1, len(self.phases))
        remaining = [i for i in following if self.phases[i].spec(state.job_spec, carried) is not None]
        if not remaining:
            earlier = {name: table_from_json(text) for name, text in state.tables.items()}
            summary = {**dict(result.summary), "phases": {n: s for n, s in summaries.items() if n != phase.name}}
            final = dataclasses.replace(state, inner=inner)
            return final, True, Result(summary=summary, tables={**earlier, **dict(result.tables)})
        kept = {name: table_to_json(table) for name, table in result.tables.items() if name in phase.keep_tables}
        next_index, next_inner = self._start(remaining[0], state.job_spec, carried, state.participants)
        next_state = PhasedState(
            job_spec=state.job_spec, participants=state.participants, phase=next_index, offset=round_index + 1,
            inner=next_inner, carried={} if next_index == len(self.phases) - 1 else carried, summaries=summaries,
            tables={**state.tables, **kept},
        )
        return next_state, False, None

    def contributions(self, state: PhasedState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """The contributing sets of the phase in progress (the first phase, in a job's first round).

        Later phases may release other sets, and their states do not exist yet: a phased
        analysis whose later phases involve other samples or variables overrides this
        (as the GWAS and training jobs do) from the job spec or the phase's state.
        """
        return self.phases[state.phase].analysis.contributions(state.inner, dataset, site)

    def privacy_spend(self, state: PhasedState, round_index: int) -> Spend | None:
        """The noise and privacy of the current phase's round (each phase accounts its own releases)."""
        phase, local_round = self.current(state, round_index)
        return phase.analysis.privacy_spend(state.inner, local_round)

    def partial_rounds(self, state: PhasedState, round_index: int) -> bool:
        """Whether the current phase's round may go on without a cohort site."""
        phase, local_round = self.current(state, round_index)
        return phase.analysis.partial_rounds(state.inner, local_round)

    def round_name(self, state: PhasedState, round_index: int) -> str:
        """The job's round number and its phase."""
        return f"round {round_index} ({self.phases[state.phase].name} phase)"

    def site_finish(self, state: PhasedState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """The site hook of the phase the job ended in."""
        return self.phases[state.phase].analysis.site_finish(state.inner, dataset, site, out_dir)

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """The last phase's files."""
        return self.phases[-1].analysis.write_outputs(result, out_dir)
