"""Training through the real round engine and store, with coordinator restarts mid-job.

Site agents talk to the :class:`~pipeline.federation.coordinator.Coordinator` in process (no
sockets); "restarting" builds a fresh engine over the same SQLite database, as a
coordinator process killed and started again would. The global model is part of every
stored round state, so training continues where it stopped and ends with the model of
an uninterrupted run, which is also the in-memory secure run's model.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.federation.in_memory import run_in_memory
from pipeline.analyses.train import TRAIN
from pipeline.json_arrays import decode_array
from tests.models.training_support import planted_cohort
from tests.federation.runtime_support import DirectConnection, in_process_site_configs

SPEC = {
    "analysis": "train", "target": "binary_trait", "covariates": ["age", "sex"], "features": {"variants": "all"},
    "rounds": 2, "clip_norm": 10.0, "local": {"epochs": 1, "batch_size": 32, "learning_rate": 0.2},
    "server": {"optimizer": "fedadam", "learning_rate": 0.05}, "stage_timeout": 600,
}


def _run(tmp_path, datasets, *, restart_at: tuple[int, ...] = ()) -> dict:
    from pipeline.federation.agent import SiteAgent
    from pipeline.federation.config import SitePolicy
    from pipeline.federation.coordinator import Coordinator
    from pipeline.federation.store import Store

    names = sorted(datasets)

    def start():
        return Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=names)

    holder = {"coordinator": start()}
    policy = SitePolicy(allowed_analyses=("train",), min_samples=3, min_allele_count=0, share_variant_keys=True)
    configs = in_process_site_configs(tmp_path, datasets, policy)
    agents = {name: SiteAgent(configs[name], connection=DirectConnection(holder, name)) for name in names}
    job_id = holder["coordinator"].submit(SPEC, "analyst")
    steps = 0
    rounds_seen = set()
    while holder["coordinator"].status(job_id)["status"] == "running":
        progressed = False
        for name in names:
            task = holder["coordinator"].next_task(name)
            if task is None:
                continue
            rounds_seen.add(task["round_index"])
            agents[name].handle(task)
            steps += 1
            progressed = True
            if steps in restart_at:
                holder["coordinator"] = start()
        assert progressed, holder["coordinator"].status(job_id)
    status = holder["coordinator"].status(job_id)
    assert status["status"] == "done", status
    summary = holder["coordinator"].results(job_id)["summary"]
    summary["_rounds_seen"] = sorted(rounds_seen)
    return summary


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    return planted_cohort(tmp_path_factory.mktemp("train-restart"), sizes=(60, 90, 40), num_variants=14)


def test_train_restart__coordinator_restarted_mid_training_ends_with_the_uninterrupted_model(datasets, tmp_path):
    reference = _run(tmp_path / "reference", datasets)
    assert reference["_rounds_seen"] == [0, 1, 2, 3, 4]  # keys, moments, 2 training rounds, evaluation
    # Steps: 3 key uploads, then 12 per secure sum (3 sites x 4 stages): 20 and 27 fall in
    # training round 1 (masked input, unmasking), 33 in training round 2.
    restarted = _run(tmp_path / "restarted", datasets, restart_at=(20, 27, 33))
    np.testing.assert_array_equal(decode_array(restarted["model"]["params"]), decode_array(reference["model"]["params"]))
    assert restarted["history"] == reference["history"]
    spec = {k: v for k, v in SPEC.items() if k not in ("analysis", "stage_timeout")}
    in_memory = run_in_memory(TRAIN, spec, datasets, secure=True, threshold=2, seed=1)
    np.testing.assert_allclose(decode_array(reference["model"]["params"]), decode_array(in_memory.result.summary["model"]["params"]), atol=1e-6)
