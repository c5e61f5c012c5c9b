"""Analyses run one after another as one job: each stage's result feeds the next stage.

A GWAS is a census (variant union, counts, QC filter), then optionally a PCA, then the
regression rounds. Each is an ordinary :class:`~pipeline.analyses.Analysis`;
:class:`Staged` runs them in sequence inside one job, so the runtime still sees one
analysis with one round counter:

* the job state is ``{"stage": i, "offset": r0, "inner": ..., "carried": ..., ...}``; job
  round ``r`` is round ``r - r0`` of stage ``i``;
* when stage ``i`` finishes, ``stage.carry(result, state)`` (JSON, e.g. the QC-passing variant
  IDs or the PCA basis) is merged into ``carried`` and stage ``i + 1`` starts from
  ``init(spec(job_spec, carried), participants)``, in the same coordinator step (no
  round is spent on the hand-over);
* the final result is the last stage's, with every earlier summary under
  ``summary["stages"][name]`` and the earlier tables a stage declares in ``keep_tables``
  (they travel in the state as compressed Arrow IPC, because the state must be JSON;
  the sites receive the state, so keep only tables the sites may see, e.g. PCA loadings
  they hold anyway);
* ``carried`` is dropped from the state once the last stage starts (it has been turned
  into that stage's spec), so the state sent to the sites stays small.

A stage whose ``spec`` returns ``None`` is skipped (``pcs: 0`` skips the PCA).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.analyses import Analysis, Result, RoundLayout, SiteContext
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError

__all__ = ["Stage", "Staged", "table_to_json", "table_from_json"]


@dataclass(frozen=True)
class Stage:
    """One analysis of a :class:`Staged` job.

    Attributes:
        name: the stage's name in the summary (``census``, ``pca``, ``gwas``).
        analysis: the analysis run by the stage.
        spec: ``(job spec, carried) -> stage spec``, or ``None`` to skip the stage.
        carry: ``(result, final stage state) -> JSON`` handed to the later stages (merged
            into ``carried``), e.g. the QC-passing variant IDs or a PCA's loadings.
        keep_tables: names of the stage's result tables that go into the job's result.
    """

    name: str
    analysis: Analysis
    spec: Callable[[Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any] | None]
    carry: Callable[[Result, Mapping[str, Any]], Mapping[str, Any]]
    keep_tables: tuple[str, ...] = ()


def table_to_json(table: pa.Table) -> str:
    """An Arrow table as base64 of a zstd-compressed IPC stream (compact JSON)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")


def table_from_json(text: str) -> pa.Table:
    """Inverse of :func:`table_to_json`."""
    return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text))).read_all()


class Staged:
    """An analysis made of stages run in sequence (see the module docstring)."""

    def __init__(self, name: str, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ConfigurationError(f"{name}: a staged analysis needs at least one stage")
        self.name = name
        self.stages = tuple(stages)

    def _start(self, index: int, job_spec: Mapping[str, Any], carried: Mapping[str, Any],
               participants: tuple[str, ...]) -> tuple[int, dict[str, Any] | None]:
        """The first stage at or after ``index`` that is not skipped, and its initial state."""
        while index < len(self.stages):
            stage_spec = self.stages[index].spec(job_spec, carried)
            if stage_spec is not None:
                return index, self.stages[index].analysis.init(stage_spec, participants)
            index += 1
        raise ConfigurationError(f"{self.name}: every stage was skipped; nothing to run")

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """Checks the whole spec early (every stage's spec that can be built now) and starts stage 0."""
        index, inner = self._start(0, spec, {}, participants)
        return {
            "job_spec": dict(spec), "participants": list(participants), "stage": index, "offset": 0,
            "inner": inner, "carried": {}, "summaries": {}, "tables": {},
        }

    def _current(self, state: Mapping[str, Any], round_index: int) -> tuple[Stage, int]:
        stage = self.stages[int(state["stage"])]
        return stage, round_index - int(state["offset"])

    def layout(self, state: Mapping[str, Any], round_index: int) -> RoundLayout:
        """The current stage's layout for its own round number."""
        stage, local_round = self._current(state, round_index)
        return stage.analysis.layout(state["inner"], local_round)

    def site_step(self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The current stage's site step."""
        stage, local_round = self._current(state, round_index)
        return stage.analysis.site_step(state["inner"], local_round, dataset, site)

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Advances the current stage; on its result, carries it forward and starts the next stage."""
        stage, local_round = self._current(state, round_index)
        inner, done, result = stage.analysis.coordinator_step(state["inner"], local_round, total, num_sites)
        if not done:
            return {**state, "inner": inner}, False, None
        assert result is not None
        summaries = {**state["summaries"], stage.name: dict(result.summary)}
        index = int(state["stage"]) + 1
        carried = {**state["carried"], **dict(stage.carry(result, inner))}
        remaining = [i for i in range(index, len(self.stages)) if self.stages[i].spec(state["job_spec"], carried) is not None]
        if not remaining:
            earlier = {name: table_from_json(text) for name, text in state["tables"].items()}
            summary = {**dict(result.summary), "stages": {n: s for n, s in summaries.items() if n != stage.name}}
            return {**state, "inner": inner}, True, Result(summary=summary, tables={**earlier, **dict(result.tables)})
        kept = {name: table_to_json(table) for name, table in result.tables.items() if name in stage.keep_tables}
        tables = {**state["tables"], **kept}
        next_index, next_inner = self._start(remaining[0], state["job_spec"], carried, tuple(state["participants"]))
        next_state = {
            **state, "stage": next_index, "offset": round_index + 1, "inner": next_inner,
            "carried": {} if next_index == len(self.stages) - 1 else carried, "summaries": summaries, "tables": tables,
        }
        return next_state, False, None
