"""Per-site held-out metrics reach the coordinator only from sites whose policy allows it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.analyses import SiteContext
from pipeline.analyses.train import TRAIN, TrainingPlan, site_training_arrays
from pipeline.dataset import open_dataset
from pipeline.errors import ProtocolError
from pipeline.federation.baselines import site_metrics_section
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.json_arrays import decode_array
from pipeline.models import evaluation
from pipeline.models.features import Standardization, read_site_data
from pipeline.models.local_update import predict_fn
from tests.models.training_support import planted_cohort

SPEC = {"target": "binary_trait", "covariates": ["age", "sex"], "features": {"variants": ["chr22:1000:A:G", "chr22:1010:A:G", "chr22:1020:A:G"]},
        "rounds": 1, "bins": 200, "local": {"epochs": 1, "batch_size": None, "learning_rate": 0.5}}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return planted_cohort(tmp_path_factory.mktemp("site_metrics"), sizes=(90, 120, 60), num_variants=16)


@pytest.fixture(scope="module")
def opted_in_run(cohort):
    contexts = {name: default_context(name, share_site_metrics=name != "site-2") for name in cohort}
    return run_in_memory(TRAIN, SPEC, cohort, secure=True, threshold=2, seed=5, contexts=contexts)


def _local_metrics(summary, dataset):
    """What the site computes at home: the final model on its own held-out split."""
    plan = TrainingPlan.from_json(summary["parameters"])
    record = summary["model"]
    spec = plan.feature_spec(record["variant_ids"])
    arrays = site_training_arrays(read_site_data(open_dataset(dataset), spec), Standardization.from_json(record["standardization"]), plan.task)
    output = np.asarray(predict_fn(plan.model(spec.num_features))(decode_array(record["params"]), arrays["holdout_x"]), np.float64)
    return evaluation.metrics(plan.task, evaluation.statistics(plan.task, output, arrays["holdout_y"], bins=plan.bins))


def test_train_site_metrics__only_opted_in_sites_are_listed_with_their_local_metrics(cohort, opted_in_run):
    summary = json.loads(json.dumps(dict(opted_in_run.result.summary)))
    assert set(summary["site_metrics"]) == {"site-1", "site-3"}
    for name in ("site-1", "site-3"):
        expected = _local_metrics(summary, cohort[name])
        shared = summary["site_metrics"][name]
        assert set(shared) == set(expected)
        assert shared["n"] == expected["n"] and shared["auc"] == expected["auc"] and shared["accuracy"] == expected["accuracy"]
        # Brier and log loss pass the fixed-point secure sum: equal up to its resolution.
        assert shared["brier"] == pytest.approx(expected["brier"], abs=1e-3)
        assert shared["log_loss"] == pytest.approx(expected["log_loss"], abs=1e-3)
    assert sum(m["n"] for m in summary["site_metrics"].values()) < summary["metrics"]["n"]
    assert "site-1, site-3 shared" in summary["disclosure"]


def test_train_site_metrics__default_policy_shares_nothing(cohort):
    run = run_in_memory(TRAIN, SPEC, cohort, secure=True, threshold=2, seed=5)
    summary = run.result.summary
    assert summary["site_metrics"] == {}
    assert "share_site_metrics" not in summary["disclosure"]
    assert SiteContext("s", 1, 0, True).share_site_metrics is False


def test_train_site_metrics__a_site_fills_only_its_own_slot_and_flag(cohort, opted_in_run):
    _, state = opted_in_run.states[-1]
    assert TRAIN.phases[state.phase].name == "evaluate"
    layout = TRAIN.layout(state, len(opted_in_run.states) - 1)
    opted_in = TRAIN.site_step(state, 0, open_dataset(cohort["site-1"]), default_context("site-1", share_site_metrics=True))
    opted_out = TRAIN.site_step(state, 0, open_dataset(cohort["site-2"]), default_context("site-2"))
    assert sorted(opted_in) == sorted(opted_out) == sorted(f.name for f in layout.fields)
    for name, value in opted_out.items():
        if name.startswith("site:"):
            assert not np.any(value), name
    assert opted_in["site:site-1:shared"].tolist() == [1]
    np.testing.assert_array_equal(opted_in["site:site-1:hist_case"], opted_in["hist_case"])
    assert not any(np.any(v) for k, v in opted_in.items() if k.startswith(("site:site-2:", "site:site-3:")))


def test_train_site_metrics__coordinator_tells_opted_out_from_zeros_by_the_flag(cohort, opted_in_run):
    _, state = opted_in_run.states[-1]
    contributions = [TRAIN.site_step(state, 0, open_dataset(cohort[n]), default_context(n)) for n in sorted(cohort)]
    total = {k: np.sum([c[k] for c in contributions], axis=0) for k in contributions[0]}
    _, done, result = TRAIN.coordinator_step(state, 0, total, 3)
    assert done and result.summary["site_metrics"] == {}
    total["site:site-2:shared"] = np.array([1])  # a flag without statistics: an (empty) opted-in site, listed
    _, _, result = TRAIN.coordinator_step(state, 0, total, 3)
    assert list(result.summary["site_metrics"]) == ["site-2"] and result.summary["site_metrics"]["site-2"]["n"] == 0.0
    total["site:site-2:shared"] = np.array([2])
    with pytest.raises(ProtocolError, match="site-2"):
        TRAIN.coordinator_step(state, 0, total, 3)


def test_train_site_metrics__report_lists_shared_sites_only():
    lines = site_metrics_section({"site-1": {"auc": 0.75, "accuracy": 0.7, "brier": 0.2, "log_loss": 0.6, "n": 18.0}}, "binary")
    text = "\n".join(lines)
    assert "| site-1 | 0.7500 | 0.7000 | 0.2000 | 0.6000 | 18 |" in text and "site-2" not in text
    assert site_metrics_section({}, "binary") == []
