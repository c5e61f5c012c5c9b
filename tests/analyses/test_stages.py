"""The stage combinator with two toy analyses: round numbering, hand-over, skipping, kept tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.analyses import Result
from pipeline.analyses.in_memory import run_in_memory
from pipeline.analyses.stages import Stage, Staged, table_from_json, table_to_json
from pipeline.errors import ConfigurationError
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring
from tests.federation import runtime_support as rs


class CountRounds:
    """Sums each site's sample count ``rounds`` times, each round adding the previous total."""

    def __init__(self, name: str) -> None:
        self.name = name

    def init(self, spec, participants):
        return {"rounds": int(spec["rounds"]), "offset": int(spec.get("offset", 0)), "seen": [], "totals": []}

    def layout(self, state, round_index):
        return Layout((Field("n", (1,), FixedPoint(Ring.R64, 0, 1e6)),))

    def site_step(self, state, round_index, dataset, site):
        assert round_index == len(state["seen"])  # the stage sees its own round numbers
        return {"n": np.array([dataset.num_samples + state["offset"]], np.int64)}

    def coordinator_step(self, state, round_index, total, num_sites):
        state = {**state, "seen": state["seen"] + [round_index], "totals": state["totals"] + [int(total["n"][0])]}
        if len(state["seen"]) < state["rounds"]:
            return state, False, None
        table = pa.table({"total": pa.array(state["totals"], pa.int64())})
        return state, True, Result(summary={"analysis": self.name, "totals": state["totals"]}, tables={f"{self.name}_table": table})


def _datasets(tmp_path):
    ids = rs.variant_ids(range(10, 13))
    return {name: rs.write_dataset(tmp_path / name, ids, rs.random_genotypes(i, 3, size))
            for i, (name, size) in enumerate((("a", 7), ("b", 5)))}


def _staged(skip_middle: bool) -> Staged:
    return Staged("toy", (
        Stage("first", CountRounds("first"), lambda job, carried: {"rounds": 2},
              lambda result, state: {"first_total": state["totals"][-1]}, keep_tables=("first_table",)),
        Stage("middle", CountRounds("middle"), lambda job, carried: None if skip_middle else {"rounds": 1},
              lambda result, state: {"middle_total": state["totals"][-1]}),
        Stage("last", CountRounds("last"), lambda job, carried: {"rounds": 3, "offset": carried["first_total"]},
              lambda result, state: {}),
    ))


@pytest.mark.parametrize("skip_middle", [False, True])
def test_staged__stages_run_in_order_and_hand_over(tmp_path, skip_middle):
    run = run_in_memory(_staged(skip_middle), {}, _datasets(tmp_path), secure=True, seed=1)
    stages = [state["stage"] for _, state in run.states]
    assert stages == [0, 0, 2, 2, 2] if skip_middle else [0, 0, 1, 2, 2, 2]
    summary = run.result.summary
    assert summary["analysis"] == "last" and summary["totals"] == [12 + 2 * 12] * 3  # 12 samples + first's total per site
    assert sorted(summary["stages"]) == (["first"] if skip_middle else ["first", "middle"])
    assert set(run.result.tables) == {"first_table", "last_table"}  # middle's table was not kept
    assert run.result.tables["first_table"].column("total").to_pylist() == [12, 12]
    assert run.states[-1][1]["carried"] == {}  # dropped once the last stage runs


def test_staged__every_stage_skipped_is_refused():
    never = Staged("none", (Stage("only", CountRounds("only"), lambda job, carried: None, lambda result, state: {}),))
    with pytest.raises(ConfigurationError, match="every stage was skipped"):
        never.init({}, ("a", "b"))


def test_table_json__round_trips():
    table = pa.table({"x": pa.array([1.5, None]), "y": pa.array(["a", "b"])})
    assert table_from_json(table_to_json(table)).equals(table)
