"""Federated training: equal to local and pooled training where theory says so, and secure."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pipeline.analyses import SiteContext
from pipeline.analyses.registry import get_analysis
from pipeline.analyses.train import (
    TRAIN,
    TrainingPlan,
    TrainingRoundsState,
    site_training_arrays,
)
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.baselines import train_sequential, training_baselines
from pipeline.federation.in_memory import run_in_memory
from pipeline.json_arrays import decode_array
from pipeline.models import evaluation, param_space
from pipeline.models.features import Standardization, read_site_data
from pipeline.models.local_update import predict_fn
from tests.models.training_support import CAUSAL, planted_cohort

COVARIATES = ["age", "sex"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return planted_cohort(tmp_path_factory.mktemp("train"), sizes=(120, 260, 70), num_variants=16)


def _spec(**overrides):
    spec = {
        "target": "binary_trait", "covariates": COVARIATES, "features": {"variants": "all"}, "rounds": 4, "clip_norm": 1000.0,
        "local": {"epochs": 2, "batch_size": 32, "learning_rate": 0.2, "l2": 0.001},
    }
    spec.update(overrides)
    return spec


def _arrays(result, datasets):
    summary = json.loads(json.dumps(dict(result.summary)))
    plan = TrainingPlan.from_json(summary["parameters"])
    record = summary["model"]
    scaling = Standardization.from_json(record["standardization"])
    spec = plan.feature_spec(record["variant_ids"])
    arrays = {n: site_training_arrays(read_site_data(open_dataset(p), spec), scaling, plan.task) for n, p in datasets.items()}
    return summary, plan, plan.local(spec.num_features), arrays


def test_train__registered_and_spec_errors_name_the_key():
    assert get_analysis("train") is TRAIN
    with pytest.raises(ConfigurationError, match="target"):
        TRAIN.init({}, ("a", "b"))
    with pytest.raises(ConfigurationError, match=r"train\.local: unknown spec key\(s\) \['epoch'\]"):
        TRAIN.init({"target": "t", "local": {"epoch": 2}}, ("a", "b"))
    with pytest.raises(ConfigurationError, match=r"train\.server: optimizer must be one of 'fedavg'"):
        TRAIN.init({"target": "t", "server": {"optimizer": "fedsgd"}}, ("a", "b"))


def test_train__one_site_federation_equals_local_training_of_the_same_schedule(cohort):
    datasets = {"site-2": cohort["site-2"]}
    run = run_in_memory(TRAIN, _spec(), datasets)
    summary, plan, config, arrays = _arrays(run.result, datasets)
    a = arrays["site-2"]
    theta, curve = train_sequential(plan, config, "site-2", a["train_x"], a["train_y"], param_space(config.model).initial, a["holdout_x"], a["holdout_y"])
    np.testing.assert_allclose(decode_array(summary["model"]["params"]), theta, atol=1e-6)
    assert summary["metrics"]["auc"] == pytest.approx(curve[-1]["auc"], abs=1e-9)


def test_train__fedavg_one_full_batch_step_equals_pooled_gradient_descent(cohort):
    spec = _spec(rounds=6, local={"epochs": 1, "batch_size": None, "learning_rate": 0.5, "l2": 0.01})
    run = run_in_memory(TRAIN, spec, cohort)
    summary, plan, config, arrays = _arrays(run.result, cohort)
    pooled_x = np.concatenate([a["train_x"] for a in arrays.values()])
    pooled_y = np.concatenate([a["train_y"] for a in arrays.values()])
    holdout_x = np.concatenate([a["holdout_x"] for a in arrays.values()])
    holdout_y = np.concatenate([a["holdout_y"] for a in arrays.values()])
    theta, _ = train_sequential(plan, config, "pooled", pooled_x, pooled_y, param_space(config.model).initial, holdout_x, holdout_y)
    np.testing.assert_allclose(decode_array(summary["model"]["params"]), theta, atol=2e-6)


def test_train__secure_and_plain_aggregation_give_the_same_model(cohort):
    spec = _spec(rounds=3, clip_norm=10.0, model={"kind": "mlp", "hidden": [8]})
    plain = run_in_memory(TRAIN, spec, cohort)
    secure = run_in_memory(TRAIN, spec, cohort, secure=True, threshold=2, seed=7)
    plain_theta = decode_array(plain.result.summary["model"]["params"])
    secure_theta = decode_array(secure.result.summary["model"]["params"])
    # Z_2^32 with >= 10 fractional bits on n_s * delta: each round errs by < 2^-11 * sites / N per coordinate.
    np.testing.assert_allclose(secure_theta, plain_theta, atol=1e-4)
    assert not np.array_equal(plain_theta, param_space(TrainingPlan.from_json(plain.result.summary["parameters"]).model(plain.result.summary["num_features"])).initial)
    for a, b in zip(plain.result.summary["history"], secure.result.summary["history"]):
        assert a["n"] == b["n"]
        assert a["auc"] == pytest.approx(b["auc"], abs=0.01)


def test_train__restart_from_a_stored_round_state_finishes_with_the_same_model(cohort):
    spec = _spec(rounds=4, server={"optimizer": "fedadam", "learning_rate": 0.05})
    full = run_in_memory(TRAIN, spec, cohort)
    round_index, state = full.states[3]  # keys, moments, train 1, [train 2 ...]
    assert TRAIN.phases[state.phase].name == "train" and state.inner.train_round == 1
    stored = TRAIN.state_from_json(json.loads(json.dumps(state.to_json())))
    resumed = run_in_memory(TRAIN, spec, cohort, start=(round_index, stored))
    np.testing.assert_array_equal(decode_array(resumed.result.summary["model"]["params"]), decode_array(full.result.summary["model"]["params"]))
    assert [h["auc"] for h in resumed.result.summary["history"]] == [h["auc"] for h in full.result.summary["history"]]


def test_train__screening_keeps_the_top_variants_and_the_model_uses_only_those(cohort):
    run = run_in_memory(TRAIN, _spec(rounds=2, features={"variants": "all", "screen_top": 5}), cohort)
    summary = run.result.summary
    phases = [TRAIN.phases[state.phase].name for _, state in run.states]
    assert phases[:3] == ["keys", "screen", "moments"]
    assert summary["screening"]["candidates"] == 16 and summary["screening"]["selected"] == 5
    assert summary["num_features"] == 5 + len(COVARIATES)
    causal = {f"chr22:{1000 + 10 * i}:A:G" for i in CAUSAL}
    assert len(causal & set(summary["model"]["variant_ids"])) >= 3


def test_train__site_with_fewer_samples_than_its_k_refuses(cohort):
    state = TRAIN.init(_spec(features={"variants": ["chr22:1000:A:G"]}), ("site-1", "site-3"))
    strict = SiteContext("site-3", min_samples=500, min_allele_count=0, share_variant_keys=False)
    with pytest.raises(PolicyRefusal, match="min_samples 500"):
        TRAIN.site_step(state, 0, open_dataset(cohort["site-3"]), strict)


def test_train__quantitative_linear_model_learns_and_reports_biomarkers(tmp_path):
    datasets = planted_cohort(tmp_path, sizes=(150, 150), num_variants=14, quantitative=True)
    spec = {"target": "quant_trait", "task": "quantitative", "covariates": COVARIATES, "rounds": 10,
            "local": {"epochs": 2, "batch_size": 32, "learning_rate": 0.1, "l1": 0.1}}
    run = run_in_memory(TRAIN, spec, datasets)
    assert run.result.summary["metrics"]["r2"] > 0.15
    markers = run.result.tables["biomarkers"].to_pylist()
    variants = [m["feature"] for m in markers if m["kind"] == "variant"]
    causal = {f"chr22:{1000 + 10 * i}:A:G" for i in CAUSAL}
    assert set(variants[:4]) == causal
    assert len(markers) < 16  # the L1 step zeroed some coefficients


def test_train__non_iid_three_sites_federated_auc_near_pooled_and_above_local_mean(tmp_path):
    datasets = planted_cohort(tmp_path, sizes=(300, 1200, 200), num_variants=16, seed=3)
    spec = _spec(rounds=15, clip_norm=10.0, holdout_fraction=0.3, local={"epochs": 1, "batch_size": 64, "learning_rate": 0.1})
    run = run_in_memory(TRAIN, spec, datasets, secure=True, threshold=2, seed=3)
    out = tmp_path / "results"
    report = training_baselines(spec, [datasets[n] for n in sorted(datasets)], out, json.loads(json.dumps(dict(run.result.summary))))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"local_mean", "local_best", "federated", "pooled"}
    assert metrics == report["metrics"]
    assert abs(metrics["federated"]["auc"] - metrics["pooled"]["auc"]) <= 0.02
    assert metrics["federated"]["auc"] > metrics["local_mean"]["auc"]
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.network
def test_train__genofed_federate_writes_the_report_and_the_model_scores_a_site_locally(cohort, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.federation.localhost import federate, summary_text

    spec = _spec(analysis="train", rounds=3, clip_norm=10.0, stage_timeout=30, model={"kind": "logistic"}, local={"epochs": 1, "batch_size": 32, "l1": 0.01})
    summary = federate([cohort[n] for n in sorted(cohort)], spec, tmp_path / "run", timeout=300)
    results = tmp_path / "run" / "results"
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics) == {"local_mean", "local_best", "federated", "pooled"}
    assert metrics["federated"]["auc"] == pytest.approx(summary["summary"]["metrics"]["auc"])
    assert len(summary["summary"]["history"]) == 4
    assert "| Federated |" in summary_text(summary)
    for name in ("learning_curve.png", "training_report.md", "model.json", "biomarkers.parquet", "history.parquet"):
        assert (results / name).is_file(), name
    site_reports = sorted((tmp_path / "run" / "federation" / "sites").glob("*/state/results/*/site_metrics.json"))
    assert len(site_reports) == 3  # each site's own held-out metrics, kept at the site
    out = tmp_path / "scores.parquet"
    answer = CliRunner().invoke(main, ["predict", "--model", str(results), "--dataset", str(cohort["site-1"]), "--out", str(out), "--json"])
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output)["samples_scored"] == 120


@pytest.mark.parametrize("n_train, sites, ring_bits", [(1_000, 3, 32), (20_000, 3, 32), (50_000, 10, 64), (5_000_000, 10, 64)])
def test_train__round_layout_fits_the_ring_and_widens_when_needed(n_train, sites, ring_bits):
    state = TRAIN.init(_spec(clip_norm=10.0, features={"variants": ["chr22:1000:A:G"]}), tuple(f"s{i}" for i in range(sites)))
    moments = state.inner
    scaling = Standardization(np.zeros(3), np.ones(3))
    rounds = TrainingRoundsState(moments.plan, sites, moments.variant_ids, scaling, n_train, n_train // 4, np.zeros(10, np.float32), ())
    state = dataclasses.replace(state, phase=TRAIN.phase_named("train"), offset=1, inner=rounds)
    layout = TRAIN.layout(state, 2)
    assert layout.ring.modulus_bits == ring_bits
    layout.check_bit_budget(sites)
    delta = next(f for f in layout.fields if f.name == "weighted_delta")
    assert delta.encoding.clip >= n_train * 10.0 and delta.encoding.scale_bits >= 10


def test_train__site_finish_writes_the_final_model_and_this_sites_metrics_locally(cohort, tmp_path):
    run = run_in_memory(TRAIN, _spec(rounds=2), cohort)
    final_round, final_state = run.states[-1]
    assert TRAIN.phases[final_state.phase].name == "evaluate"
    assert TRAIN.site_finish(run.states[-2][1], open_dataset(cohort["site-1"]), SiteContext("site-1", 1, 0, True), tmp_path / "early") is None
    written = TRAIN.site_finish(final_state, open_dataset(cohort["site-1"]), SiteContext("site-1", 1, 0, True), tmp_path / "out")
    report = json.loads(open(written["site_metrics"]).read())
    summary, plan, config, arrays = _arrays(run.result, {"site-1": cohort["site-1"]})
    a = arrays["site-1"]
    output = np.asarray(predict_fn(config.model)(decode_array(summary["model"]["params"]), a["holdout_x"]))
    expected = evaluation.metrics("binary", evaluation.statistics("binary", output, a["holdout_y"]))
    assert report["held_out_metrics"] == pytest.approx(expected)
    assert report["n_holdout"] == a["holdout_y"].shape[0] and report["n_holdout"] < summary["n_holdout"]
    assert json.loads(open(written["model"]).read())["params"] == summary["model"]["params"]


def test_train__state_survives_its_json_at_every_round(cohort):
    spec = _spec(rounds=2, features={"variants": "all", "screen_top": 6})
    run = run_in_memory(TRAIN, spec, cohort)
    assert [TRAIN.phases[state.phase].name for _, state in run.states] == ["keys", "screen", "moments", "train", "train", "evaluate"]
    assert run.result.summary["phases"] == {}  # the earlier phases publish nothing of their own
    site = open_dataset(cohort["site-3"])
    for round_index, state in run.states:
        again = TRAIN.state_from_json(json.loads(json.dumps(state.to_json())))
        assert again == state and again.to_json() == state.to_json()
        assert TRAIN.layout(again, round_index) == TRAIN.layout(state, round_index)
        before = TRAIN.site_step(state, round_index, site, SiteContext("site-3", 1, 1, True))
        after = TRAIN.site_step(again, round_index, site, SiteContext("site-3", 1, 1, True))
        assert sorted(before) == sorted(after)
        for name in before:
            np.testing.assert_array_equal(after[name], before[name])


def test_train__rounds_zero_evaluates_the_initial_model(cohort):
    run = run_in_memory(TRAIN, _spec(rounds=0, features={"variants": ["chr22:1000:A:G", "chr22:1030:A:G"]}), cohort)
    assert [TRAIN.phases[state.phase].name for _, state in run.states] == ["moments", "evaluate"]
    summary = run.result.summary
    config = TrainingPlan.from_json(summary["parameters"]).model(summary["num_features"])
    np.testing.assert_array_equal(decode_array(summary["model"]["params"]), param_space(config).initial)
    assert [h["round"] for h in summary["history"]] == [0]


def test_train__plan_json_is_the_published_parameters():
    spec = _spec(features={"variants": "all", "screen_top": 5}, server={"optimizer": "fedadam"})
    plan = TrainingPlan.parse(spec)
    assert plan.to_json() == {
        "target": "binary_trait", "task": "binary", "covariates": ["age", "sex"], "rounds": 4, "clip_norm": 1000.0, "seed": 0,
        "bins": 1000, "max_samples_per_site": 1_000_000, "max_abs_value": 1000.0, "holdout_fraction": 0.2,
        "features": {"variants": "all", "max_variants": 20_000, "screen_top": 5, "source": "union"},
        "model": {"kind": "logistic", "hidden": [], "seed": 0},
        "local": {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.0, "mu": 0.0, "l1": 0.0, "l2": 0.001},
        "server": {"optimizer": "fedadam", "learning_rate": None, "beta1": 0.9, "beta2": 0.99, "eps": 1e-3, "momentum": 0.0},
    }
    assert TrainingPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    listed = TrainingPlan.parse(_spec(features={"variants": ["chr22:1000:A:G"]}, model={"kind": "mlp", "hidden": [4, 2]}))
    assert listed.to_json()["features"] == {"variants": ["chr22:1000:A:G"], "screen_top": None, "source": "list"}
    assert listed.to_json()["model"] == {"kind": "mlp", "hidden": [4, 2], "seed": 0}
    assert TrainingPlan.from_json(listed.to_json()) == listed


@pytest.mark.parametrize("spec, message", [
    ({"target": "t", "rounds": -1}, r"train: rounds must be an integer in \[0, 100000\], got -1"),
    ({"target": "t", "task": "binary", "model": {"kind": "linear"}}, "quantitative trait"),
    ({"target": "t", "features": {"variants": "some"}}, r"train\.features: variants must be 'all' or a list"),
    ({"target": "t", "features": {"gwas": "x.parquet", "screen_top": 5}}, r"gwas selects the variants; drop \['screen_top'\]"),
    ({"target": "t", "features": {"top": 5}}, r"\['top'\] go with gwas"),
    ({"target": "t", "features": {"variants": []}}, "no features"),
    ({"target": "t", "model": {"kind": "mlp", "hidden": []}}, r"train\.model: hidden must be a non-empty list"),
])
def test_train__spec_mistakes_are_refused_at_init(spec, message):
    with pytest.raises(ConfigurationError, match=message):
        TRAIN.init(spec, ("a", "b"))
