"""A site that lies in the census' per-variant flags, through the real engine and in-process site agents.

A site's flags enter the secure sum, so the coordinator sees only their totals; what it
can refuse is a total no honest sites give (``check_counts``): a site that both typed a
variant and left it out, or a Hardy-Weinberg failure where nobody typed the variant.
Such a job fails naming the variant and the invariant, and nothing is published. (A
site can still lie within what honest sites could send, e.g. claim a failure at a
variant it does type: the sums cannot tell, as with any site's own data.)
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analyses import census
from pipeline.errors import MessageConflict
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

IDS = rs.variant_ids([100, 200, 300])


def _typed_and_left_out(out: dict[str, np.ndarray]) -> None:
    out[census.FLAG_FIELD][1] = 1  # keeps its counts and typed flag at variant 200, and claims to have left it out


def _failing_where_untyped(out: dict[str, np.ndarray]) -> None:
    for name in (*census.COUNT_FIELDS, census.TYPED_FIELD):
        out[name][2] = 0  # hides that it holds variant 300 (nobody else does) ...
    out[census.HWE_FIELD][2] = 1  # ... and fails it in HWE


@pytest.mark.parametrize(("lie", "refusal"), [
    (_typed_and_left_out, f"variant {IDS[1]}: the summed typed is 3, expected in [0, the 3 sites minus those that left it out]"),
    (_failing_where_untyped, f"variant {IDS[2]}: the summed hwe_fail is 1, expected in [0, the sites that typed it = 0]"),
])
def test_attack__a_site_sending_flags_no_honest_site_sends_fails_the_job_and_publishes_nothing(
        tmp_path, monkeypatch, lie, refusal):
    calls = rs.random_genotypes(4, 3, 12, missing_rate=0.0)
    datasets = {name: rs.write_dataset(tmp_path / name, IDS[:2], calls[:2], sample_prefix=f"{name}-")
                for name in ("alpha", "gamma")}
    datasets["beta"] = rs.write_dataset(tmp_path / "beta", IDS, calls, sample_prefix="beta-")  # the only one with 300
    honest = census.Census.site_step

    def site_step(self, state, round_index, dataset, site):  # type: ignore[no-untyped-def]
        out = honest(self, state, round_index, dataset, site)
        if round_index == census.COUNTS_ROUND and site.name == "beta":
            out = {name: np.array(values, copy=True) for name, values in out.items()}
            lie(out)
        return out

    monkeypatch.setattr(census.Census, "site_step", site_step)
    engine, job_id = rs.run_job_in_process(tmp_path / "run", datasets, "census", {"min_allele_count": 0})
    status = engine.status(job_id)
    assert status["status"] == "failed", status
    assert refusal in status["error"], status["error"]
    with pytest.raises(MessageConflict, match="has no results"):
        engine.results(job_id)
