"""The phase combinator with toy analyses: round numbering, hand-over, skipping, kept tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import dataclasses
from dataclasses import dataclass

from pipeline.analyses import Analysis, Result
from pipeline.analyses.phases import Phase, Phased
from pipeline.encoding import Count, plan_layout
from pipeline.errors import ConfigurationError
from pipeline.federation.in_memory import run_in_memory
from pipeline.json_arrays import table_from_json, table_to_json
from tests.federation import runtime_support as rs


@dataclass(frozen=True)
class CountState:
    rounds: int
    offset: int
    seen: tuple[int, ...] = ()
    totals: tuple[int, ...] = ()

    def to_json(self):
        return {"rounds": self.rounds, "offset": self.offset, "seen": list(self.seen), "totals": list(self.totals)}


class CountRounds(Analysis[CountState]):
    """Sums each site's sample count ``rounds`` times, each round adding the previous total."""

    def __init__(self, name: str) -> None:
        self.name = name

    def init(self, spec, participants):
        return CountState(int(spec["rounds"]), int(spec.get("offset", 0)))

    def state_from_json(self, data):
        return CountState(data["rounds"], data["offset"], tuple(data["seen"]), tuple(data["totals"]))

    def layout(self, state, round_index):
        return plan_layout([Count("n", (1,), 1e6)], 2)

    def site_step(self, state, round_index, dataset, site):
        assert round_index == len(state.seen)  # the phase sees its own round numbers
        return {"n": np.array([dataset.num_samples + state.offset], np.int64)}

    def coordinator_step(self, state, round_index, total, num_sites):
        state = dataclasses.replace(state, seen=(*state.seen, round_index), totals=(*state.totals, int(total["n"][0])))
        if len(state.seen) < state.rounds:
            return state, False, None
        table = pa.table({"total": pa.array(state.totals, pa.int64())})
        return state, True, Result(summary={"analysis": self.name, "totals": list(state.totals)}, tables={f"{self.name}_table": table})


def _datasets(tmp_path):
    ids = rs.variant_ids(range(10, 13))
    return {name: rs.write_dataset(tmp_path / name, ids, rs.random_genotypes(i, 3, size))
            for i, (name, size) in enumerate((("a", 7), ("b", 5)))}


def _phased(skip_middle: bool) -> Phased:
    return Phased("toy", (
        Phase("first", CountRounds("first"), lambda job, carried: {"rounds": 2},
              lambda result, state: {"first_total": state.totals[-1]}, keep_tables=("first_table",)),
        Phase("middle", CountRounds("middle"), lambda job, carried: None if skip_middle else {"rounds": 1},
              lambda result, state: {"middle_total": state.totals[-1]}),
        Phase("last", CountRounds("last"), lambda job, carried: {"rounds": 3, "offset": carried["first_total"]},
              lambda result, state: {}),
    ))


@pytest.mark.parametrize("skip_middle", [False, True])
def test_phased__phases_run_in_order_and_hand_over(tmp_path, skip_middle):
    run = run_in_memory(_phased(skip_middle), {}, _datasets(tmp_path), secure=True, seed=1)
    phases = [state.phase for _, state in run.states]
    assert phases == [0, 0, 2, 2, 2] if skip_middle else [0, 0, 1, 2, 2, 2]
    summary = run.result.summary
    assert summary["analysis"] == "last" and summary["totals"] == [12 + 2 * 12] * 3  # 12 samples + first's total per site
    assert sorted(summary["phases"]) == (["first"] if skip_middle else ["first", "middle"])
    assert set(run.result.tables) == {"first_table", "last_table"}  # middle's table was not kept
    assert run.result.tables["first_table"].column("total").to_pylist() == [12, 12]
    assert run.states[-1][1].carried == {}  # dropped once the last phase runs


def test_phased__state_round_trips_through_json(tmp_path):
    phased = _phased(False)
    run = run_in_memory(phased, {}, _datasets(tmp_path))
    for _, state in run.states:
        assert phased.state_from_json(state.to_json()) == state


def test_phased__every_phase_skipped_is_refused():
    never = Phased("none", (Phase("only", CountRounds("only"), lambda job, carried: None, lambda result, state: {}),))
    with pytest.raises(ConfigurationError, match="every phase was skipped"):
        never.init({}, ("a", "b"))


def test_table_json__round_trips():
    table = pa.table({"x": pa.array([1.5, None]), "y": pa.array(["a", "b"])})
    assert table_from_json(table_to_json(table)).equals(table)
