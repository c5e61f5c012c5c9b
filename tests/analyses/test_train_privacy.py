"""Training with differential privacy: clipped per-example gradients, noise calibrated on the honest sites, one budget.

A DP job must run plainly and through the real SecAgg protocol; every round that releases
person-level sums reports its spend, and the rounds' ``rho`` add up to at most the job's
budget; one example moves a site's gradient sum by at most ``clip_norm``; the noise a
site adds follows the calibrated sigma; combinations the noise does not cover are
refused; and the pieces agree with slow, obvious references.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from pipeline.analyses import SiteCache, SiteContext
from pipeline.analyses.train import TRAIN, TrainingPlan
from pipeline.analyses.train.privacy import (
    REAL_SCALE_BITS,
    evaluation_release,
    gradient_release,
    job_rho,
    moments_release,
    phase_shares,
)
from pipeline.analyses.train.site_data import site_data, site_training_arrays
from pipeline.dataset import open_dataset
from pipeline.encoding import Layout
from pipeline.errors import ConfigurationError
from pipeline.federation.in_memory import run_in_memory
from pipeline.json_arrays import decode_array
from pipeline.models import ModelConfig, param_space
from pipeline.models.features import noisy_standardization, standardization
from pipeline.models.local_update import (
    CLIP_MARGIN,
    LocalConfig,
    clipped_gradient_sum_fn,
    gradient_step,
    local_update_fn,
    per_sample_loss,
)
from pipeline.privacy import (
    PrivacyTerms,
    distributed_discrete_gaussian_rho,
    sigma_for_rho,
    zcdp_to_approx_dp,
)
from tests.models.training_support import planted_cohort

VARIANTS = [f"chr22:{1000 + 10 * i}:A:G" for i in range(8)]
TERMS = {"epsilon": 3.0, "delta": 1e-6, "honest_sites": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return planted_cohort(tmp_path_factory.mktemp("train-dp"), sizes=(120, 260, 70), num_variants=14)


def _spec(**overrides):
    spec = {"target": "binary_trait", "covariates": ["age", "sex"], "features": {"variants": VARIANTS}, "rounds": 3,
            "clip_norm": 1.0, "max_abs_value": 100.0, "local": {"learning_rate": 1.0}, "privacy": TERMS}
    spec.update(overrides)
    return spec


def _context(name: str) -> SiteContext:
    return SiteContext(name=name, min_samples=5, min_allele_count=0, share_variant_keys=True, cache=SiteCache())


@pytest.fixture(scope="module")
def plain_run(cohort):
    return run_in_memory(TRAIN, _spec(), cohort)


def test_dp_train__runs_plainly_and_says_what_it_released(plain_run):
    run = plain_run
    phases = [TRAIN.phases[state.phase].name for _, state in run.states]
    assert phases == ["moments", "train", "train", "train", "evaluate"]
    summary = run.result.summary
    privacy = summary["privacy"]
    assert privacy["epsilon"] == TERMS["epsilon"] and privacy["delta"] == TERMS["delta"] and privacy["honest_sites"] == 2
    assert privacy["sites_adding_noise"] == 3
    assert privacy["epsilon_spent"] <= TERMS["epsilon"] and privacy["rho_spent"] <= privacy["rho_budget"]
    assert set(privacy["releases"]) == {"moments", "train", "evaluate"} and privacy["releases"]["train"]["rounds"] == 3
    assert "no amplification" in privacy["sampling"]
    assert "differentially private" in summary["disclosure"] and summary["site_metrics"] == {}
    assert set(summary["metrics"]) == {"auc", "accuracy", "n"} and 0.0 <= summary["metrics"]["auc"] <= 1.0
    json.dumps(summary, allow_nan=False)  # strict JSON, as the coordinator's API serves it
    # The learning curve is not released: the training rounds record only the sites summed.
    assert [set(record) for record in summary["history"][:-1]] == [{"round", "num_sites"}] * 3
    assert summary["parameters"]["privacy"] == {"epsilon": 3.0, "delta": 1e-6, "max_colluding": 0, "honest_sites": 2}
    assert summary["parameters"]["bins"] == 10 and summary["parameters"]["local"]["batch_size"] is None


def test_dp_train__every_noisy_round_reports_its_spend_and_the_rounds_stay_within_the_budget(plain_run):
    spends = [TRAIN.privacy_spend(state, round_index) for round_index, state in plain_run.states]
    assert all(spend is not None for spend in spends)  # moments, three training rounds, evaluation
    total = sum(spend.rho for spend in spends)
    budget = job_rho(PrivacyTerms(**TERMS))
    assert total <= budget and total > 0.99 * budget  # the split spends the budget, never more
    assert zcdp_to_approx_dp(total, TERMS["delta"]) <= TERMS["epsilon"]
    assert total == pytest.approx(plain_run.result.summary["privacy"]["rho_spent"], rel=1e-12)
    for (round_index, state), spend in zip(plain_run.states, spends):
        layout = TRAIN.layout(state, round_index)
        assert isinstance(layout, Layout) and all(field.is_integer for field in layout.fields)  # integers in ring units
        assert "sigma" not in json.dumps(state.to_json())  # derived from the public terms, never sent in the state
        assert spend.honest_sites == 2
        # One honest site's noise alone would not meet the round's share: the distributed bound is what makes it.
        alone = distributed_discrete_gaussian_rho(spend.l2, spend.l1, spend.sigma, 1)
        assert alone > 1.5 * spend.rho


def test_dp_train__runs_through_secure_aggregation(cohort):
    run = run_in_memory(TRAIN, _spec(rounds=2), cohort, secure=True, threshold=2, seed=5)
    summary = run.result.summary
    assert summary["privacy"]["epsilon_spent"] <= TERMS["epsilon"]
    theta = decode_array(summary["model"]["params"])
    assert np.all(np.isfinite(theta)) and not np.array_equal(theta, np.zeros_like(theta))
    assert 0.0 <= summary["metrics"]["auc"] <= 1.0


def test_dp_train__quantitative_target_runs_and_reports_noisy_error_statistics(tmp_path):
    datasets = planted_cohort(tmp_path, sizes=(150, 150), num_variants=14, quantitative=True)
    terms = {**TERMS, "epsilon": 50.0, "honest_sites": 1}  # ~50 held-out samples: the plumbing, not the noise, is tested
    spec = _spec(target="quant_trait", task="quantitative", rounds=2, features={"variants": VARIANTS[:6]}, max_abs_value=20.0,
                 privacy=terms)
    run = run_in_memory(TRAIN, spec, datasets)
    summary = run.result.summary
    assert summary["privacy"]["epsilon_spent"] <= terms["epsilon"]
    assert summary["privacy"]["releases"]["moments"]["fields"][-2:] == ["target_sum", "target_sumsq"]
    assert summary["privacy"]["releases"]["evaluate"]["fields"] == ["sse", "target_sum", "target_sumsq", "count"]
    metrics = summary["metrics"]
    assert math.isfinite(metrics["mse"]) and metrics["mse"] >= 0.0  # R² is left out when the noisy SST is not positive
    json.dumps(summary, allow_nan=False)
    releases = summary["privacy"]["releases"]
    sd = math.sqrt(2 * sum((releases[name]["sigma"] / 2**REAL_SCALE_BITS) ** 2 for name in ("moments", "evaluate")))
    assert abs(metrics["n"] - summary["n_holdout"]) < 6 * sd + 1  # two noisy counts of the same held-out samples
    scaling = summary["model"]["standardization"]
    assert scaling["target_scale"] > 0 and all(scale > 0 for scale in scaling["scale"])


def _naive_clipped_sum(model: ModelConfig, theta, features, target, clip_norm: float) -> np.ndarray:
    """One example at a time: its gradient, scaled down to the clip (with the margin), summed in float64."""
    space = param_space(model)

    def loss(t, x, y):
        return per_sample_loss(model.task, space.apply(t, x[None, :]), y[None])[0]

    total = np.zeros(space.size)
    for x, y in zip(features, target):
        gradient = np.asarray(jax.grad(loss)(theta, x, y), np.float64)
        norm = np.linalg.norm(gradient)
        limit = clip_norm * (1 - CLIP_MARGIN)
        total += gradient * (limit / norm if norm > limit else 1.0)
    return total


@pytest.mark.parametrize("kind, hidden", [("logistic", ()), ("mlp", (4,))])
def test_dp_train__per_example_clipping_bounds_one_persons_influence(kind, hidden):
    rng = np.random.default_rng(0)
    model = ModelConfig(kind, 5, "binary", hidden)
    theta = param_space(model).initial + rng.normal(0, 0.5, param_space(model).size).astype(np.float32)
    features = (rng.normal(size=(40, 5)) * 3).astype(np.float32)  # large values: most gradients are clipped
    target = (rng.random(40) < 0.5).astype(np.float32)
    clip_norm, unit = 0.7, 2**REAL_SCALE_BITS
    clipped_sum = clipped_gradient_sum_fn(model, clip_norm=clip_norm, scale_bits=REAL_SCALE_BITS)
    full, clipped, _ = clipped_sum(theta, features, target)
    assert full.dtype == np.int64 and clipped > 20
    as_float = full * clip_norm / unit
    # Against the obvious reference: truncation moves each example's coordinate by less than 2^-16 clip_norm.
    naive = _naive_clipped_sum(model, theta, features, target, clip_norm)
    np.testing.assert_allclose(as_float, naive, atol=40 * clip_norm / unit + 1e-5)
    for left_out in range(0, 40, 7):
        keep = np.arange(40) != left_out
        without, _, _ = clipped_sum(theta, features[keep], target[keep])
        difference = full - without
        assert np.linalg.norm(difference * clip_norm / unit) <= clip_norm  # in float, before any noise or encoding
        assert np.linalg.norm(difference) <= unit and np.abs(difference).sum() <= unit * math.sqrt(difference.size)


def test_dp_train__gradient_step_from_the_exact_mean_is_one_full_batch_local_update():
    """The coordinator's step from the exact mean gradient reproduces the site's one-epoch, full-batch update."""
    rng = np.random.default_rng(1)
    model = ModelConfig("logistic", 4, "binary")
    features = rng.normal(size=(30, 4)).astype(np.float32)
    target = (rng.random(30) < 0.4).astype(np.float32)
    theta = rng.normal(0, 0.3, param_space(model).size).astype(np.float32)
    space = param_space(model)
    for optimizer in ("sgd", "adam"):
        config = LocalConfig(model, epochs=1, batch_size=None, optimizer=optimizer, learning_rate=0.3, l1=0.05, l2=0.1, mu=0.5)
        mean_gradient = jax.grad(lambda t: per_sample_loss("binary", space.apply(t, features), target).mean())(theta)
        expected, _ = local_update_fn(config)(theta, features, target, np.ones(30, np.float32), jax.random.key(0))
        np.testing.assert_allclose(gradient_step(config, theta, np.asarray(mean_gradient)), np.asarray(expected), atol=1e-6)


def test_dp_train__the_noise_a_site_adds_follows_the_calibrated_sigma(cohort, plain_run):
    """Many contributions of one site to the same round, minus its exact clipped gradient sum: the site's noise."""
    round_index, state = next((r, s) for r, s in plain_run.states if TRAIN.phases[s.phase].name == "train")
    inner = state.inner
    sigma = TRAIN.privacy_spend(state, round_index).sigma
    dataset, context = open_dataset(cohort["site-2"]), _context("site-2")
    plan = inner.plan
    data = site_data(dataset, plan.feature_spec(inner.variant_ids), context.cache, max_abs_value=plan.max_abs_value)
    arrays = site_training_arrays(data, inner.scaling, plan.task)
    clipped_sum = clipped_gradient_sum_fn(plan.model(plan.num_features(inner.variant_ids)), clip_norm=plan.clip_norm,
                                          scale_bits=REAL_SCALE_BITS)
    exact, _, _ = clipped_sum(inner.params, arrays["train_x"], arrays["train_y"])
    residuals = [TRAIN.site_step(state, round_index, dataset, context)["gradient_sum"] - exact for _ in range(500)]
    values = np.concatenate(residuals).astype(np.float64) / sigma
    assert values.size >= 5000 and sigma > 1e5  # in ring units: clip_norm is 2^16
    standard_error = 1 / math.sqrt(values.size)
    assert abs(values.mean()) < 5 * standard_error
    assert abs(values.var() - 1) < 5 * math.sqrt(2 / values.size)
    assert abs(np.mean(np.abs(values) <= 1) - 0.6827) < 0.03 and abs(np.mean(np.abs(values) <= 2) - 0.9545) < 0.015
    # Each draw differs (fresh secret noise), and the sigma is the round's share of the budget, met on two honest sites.
    assert not np.array_equal(residuals[0], residuals[1])
    release = gradient_release(plan, int(inner.params.size))
    assert release.spend.sigma == sigma and release.spend.rho <= job_rho(plan.privacy) * 0.8 / 3


@pytest.mark.parametrize("features, local, message", [
    ({"variants": "all"}, {}, r"features: \{variants: all\} is not supported: its key round reveals"),
    ({"variants": VARIANTS, "screen_top": 3}, {}, r"features.screen_top is not supported: the screening round"),
    ({"variants": VARIANTS}, {"epochs": 2}, r"one full-batch gradient step .* set local: \{epochs: 1\}"),
    ({"variants": VARIANTS}, {"batch_size": 32}, r"drop local.batch_size \(got epochs 1, batch_size 32\)"),
])
def test_dp_train__unsupported_combinations_are_refused_with_what_to_do(features, local, message):
    with pytest.raises(ConfigurationError, match=message):
        TRAIN.init(_spec(features=features, local=local), ("a", "b", "c"))


def test_dp_train__malformed_privacy_terms_are_refused_naming_the_key():
    with pytest.raises(ConfigurationError, match=r"train: privacy must be .*epsilon and delta"):
        TRAIN.init(_spec(privacy={"epsilon": 1.0}), ("a", "b"))
    with pytest.raises(ConfigurationError, match=r"privacy.epsilon in"):
        TRAIN.init(_spec(privacy={"epsilon": -1.0, "delta": 1e-6}), ("a", "b"))


def test_dp_train__the_budget_split_is_explicit_and_never_exceeded():
    plan = TrainingPlan.parse(_spec(rounds=7))
    assert phase_shares(plan) == pytest.approx({"moments": 0.1, "train": 0.8, "evaluate": 0.1})
    assert phase_shares(dataclasses.replace(plan, rounds=0)) == pytest.approx({"moments": 0.5, "evaluate": 0.5})
    for rounds in (1, 7, 50):
        for epsilon in (0.5, 3.0, 8.0):
            terms = PrivacyTerms(epsilon, 1e-6, 0, 2)
            plan = dataclasses.replace(TrainingPlan.parse(_spec(rounds=rounds)), privacy=terms)
            releases = [moments_release(plan, 10), *[gradient_release(plan, 11)] * rounds, evaluation_release(plan)]
            total = sum(release.spend.rho for release in releases)
            assert total <= job_rho(terms) and zcdp_to_approx_dp(total, 1e-6) <= epsilon
    # More parameters, more rounds, a smaller epsilon: more noise per round.
    base = gradient_release(TrainingPlan.parse(_spec(rounds=5)), 11).spend.sigma
    assert gradient_release(TrainingPlan.parse(_spec(rounds=20)), 11).spend.sigma > base
    smaller = TrainingPlan.parse(_spec(rounds=5, privacy={**TERMS, "epsilon": 1.0}))
    assert gradient_release(smaller, 11).spend.sigma > base


def test_dp_train__sigma_for_rho_is_the_smallest_sigma_meeting_the_target():
    for l2, l1, honest, rho in [(1.0, 1.0, 1, 0.01), (65536.0, 65536.0 * 4, 2, 0.001), (1.41, 2.0, 3, 0.5), (3.0, 9.0, 2, 1e-4)]:
        sigma = sigma_for_rho(rho, l2, l1, honest)
        assert sigma >= 0.5 and distributed_discrete_gaussian_rho(l2, l1, sigma, honest) <= rho
        if sigma > 0.51:
            assert distributed_discrete_gaussian_rho(l2, l1, sigma * 0.99, honest) > rho


def test_dp_train__noisy_standardization_is_the_exact_one_without_noise_and_sane_with_it():
    rng = np.random.default_rng(2)
    values = np.column_stack([rng.integers(0, 3, 500).astype(np.float64), rng.normal(50, 10, 500)])
    totals = {"feature_sum": values.sum(0), "feature_sumsq": np.square(values).sum(0), "feature_count": np.full(2, 500.0),
              "n_train": np.array([500.0])}
    bound = np.array([2.0, 100.0])
    exact = standardization(totals, task="binary")
    quiet = noisy_standardization(totals, task="binary", bound=bound, target_bound=1.0,
                                  noise_sd={"feature_sum": np.zeros(2), "feature_sumsq": np.zeros(2)})
    np.testing.assert_allclose(quiet.mean, exact.mean)
    np.testing.assert_allclose(quiet.scale, exact.scale)
    # Noise that swamps the variance: the scale is of the noise's order, never 0, NaN or the exact path's 1.
    swamped = dict(totals, feature_sumsq=totals["feature_sumsq"] - np.array([0.0, 400_000.0]))
    loud = noisy_standardization(swamped, task="binary", bound=bound, target_bound=1.0,
                                 noise_sd={"feature_sum": np.array([1.0, 50.0]), "feature_sumsq": np.array([2.0, 500_000.0])})
    assert np.all(np.isfinite(loud.scale)) and 10.0 < loud.scale[1] <= 100.0
