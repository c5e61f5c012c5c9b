"""Differential privacy through the real federation: each site's budget, its ledger of spends, its refusals.

Three site agents and a coordinator over mutual TLS on 127.0.0.1 run noisy census
jobs. The sites' policy sets a budget of epsilon 4 at delta 1e-6: a first job at
epsilon 3 is released (and says so), a second would take every site beyond its budget
(two epsilon-3 releases compose to about 4.3), so every site declines it with
``budget-exhausted`` before sending anything of its counts; a site that requires
differential privacy declines an exact census.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.federation.budget import SPEND_FILE, PrivacyBudget, terms_refusal
from pipeline.federation.config import PrivacyPolicy, load_site_config
from pipeline.privacy import PrivacyTerms, zcdp_to_approx_dp
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = ("alpha", "beta", "gamma")
PRIVACY = {"epsilon": 3.0, "delta": 1e-6}


def _census(analyst: Any, **spec: Any) -> str:
    body = {"analysis": "census", "min_allele_count": 0, "threshold": 2, "stage_timeout": 60, **spec}
    return str(analyst.post_json("/v1/jobs", {"spec": body})["job_id"])


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("budget")
    datasets = rs.small_datasets(tmp, SITES, num_variants=30, num_samples=20, seed=21)
    manifest = rs.provision_federation(tmp / "fed", datasets, min_samples=5, analyses=("census",))
    for site in manifest.sites:
        required = "true" if site.name == "gamma" else "false"
        site.config.write_text(site.config.read_text() + f"\n[policy.privacy]\nepsilon_budget = 4.0\ndelta = 1e-6\nrequired = {required}\n")
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        analyst = rs.connection(manifest.analysts[0].folder, manifest.coordinator_url)
        try:
            yield manifest, server, analyst
        finally:
            analyst.close()


def _run(manifest: Any, analyst: Any, job_id: str) -> dict[str, Any]:
    with rs.agent_threads(manifest, max_idle=30):
        return rs.wait_for_job(analyst, job_id, timeout=120)


def test_budget__a_noisy_release_within_budget_then_one_beyond_it_is_declined(fed):
    manifest, _server, analyst = fed
    first = _census(analyst, privacy=PRIVACY)
    status = _run(manifest, analyst, first)
    assert status["status"] == "done", status
    summary = analyst.get_json(f"/v1/jobs/{first}/results")["summary"]
    privacy = summary["privacy"]
    assert privacy["epsilon"] <= 3.0 and privacy["delta"] == 1e-6 and privacy["honest_sites"] == 2
    for site in manifest.sites:
        config = load_site_config(site.config)
        budget = PrivacyBudget(config.state_dir / SPEND_FILE)
        (entry,) = budget.entries
        assert (entry.job_id, entry.analysis, entry.analyst) == (first, "census", "analyst")
        assert entry.sigma == pytest.approx(privacy["sigma"]) and entry.rho == pytest.approx(privacy["rho"])
        spent = [e for e in rs.audit_events(manifest, site.name, first) if e["event"] == "privacy.spent"]
        assert len(spent) == 1 and spent[0]["epsilon"] == pytest.approx(entry.epsilon)

    second = _census(analyst, privacy=PRIVACY)
    status = _run(manifest, analyst, second)
    assert status["status"] == "failed", status
    assert set(status["declined"]) == set(SITES)
    for site, reason in status["declined"].items():
        assert reason.startswith("budget-exhausted: "), (site, reason)
    # Nothing of the second job's counts was sent, and nothing more was spent.
    for site in manifest.sites:
        config = load_site_config(site.config)
        assert len(PrivacyBudget(config.state_dir / SPEND_FILE).entries) == 1
        events = [e["event"] for e in rs.audit_events(manifest, site.name, second)]
        assert "privacy.spent" not in events and "job.declined" in events
    assert zcdp_to_approx_dp(2 * privacy["rho"], 1e-6) > 4.0  # why: two releases compose beyond the budget

    report = CliRunner().invoke(main, ["site", "budget", "--config", str(manifest.sites[0].config)])
    assert report.exit_code == 0, report.output
    assert first in report.output and "of a budget of 4" in report.output and "analyst" in report.output
    as_json = CliRunner().invoke(main, ["site", "budget", "--config", str(manifest.sites[0].config), "--json"])
    assert '"remaining_epsilon"' in as_json.output


def test_budget__a_site_that_requires_privacy_declines_an_exact_release(fed):
    manifest, _server, analyst = fed
    job_id = _census(analyst, sites=["alpha", "gamma"])
    status = _run(manifest, analyst, job_id)
    assert status["declined"].get("gamma", "").startswith("policy: the site releases only with differential privacy")


def test_terms__the_site_checks_the_jobs_assumptions_against_its_own():
    policy = PrivacyPolicy(epsilon_budget=None, max_colluding=1)
    assert terms_refusal(PrivacyTerms(3.0, 1e-6, 0, 2), policy, threshold=3, releases_samples=True, site="a").public.startswith(
        "the job's privacy.max_colluding")
    assert "honest sites" in terms_refusal(PrivacyTerms(3.0, 1e-6, 1, 3), policy, threshold=3, releases_samples=True, site="a").public
    assert terms_refusal(PrivacyTerms(3.0, 1e-6, 1, 2), policy, threshold=3, releases_samples=True, site="a") is None
    assert terms_refusal(None, PrivacyPolicy(required=True), threshold=3, releases_samples=False, site="a") is None


def test_attack__a_coordinator_that_weakens_the_privacy_terms_gets_no_noisy_contribution(tmp_path, monkeypatch):
    """The coordinator rewrites the analyst's terms before the job starts: more honest sites than the
    threshold guarantees, or an epsilon far above what was asked. The sites judge the terms the rounds
    actually run under, so the first is declined by policy and the second by the budget, nothing spent."""
    from pipeline.federation import coordinator as engine

    datasets = rs.small_datasets(tmp_path, SITES, num_variants=20, num_samples=20, seed=31)
    manifest = rs.provision_federation(tmp_path / "fed", datasets, min_samples=5, analyses=("census",))
    for site in manifest.sites:
        site.config.write_text(site.config.read_text() + "\n[policy.privacy]\nepsilon_budget = 4.0\n")
    honest = engine.complete_privacy
    rewrite: dict[str, Any] = {}
    monkeypatch.setattr(engine, "complete_privacy",
                        lambda spec, threshold: {**honest(spec, threshold), "privacy": {**honest(spec, threshold)["privacy"], **rewrite}})
    with rs.ThreadedCoordinator(manifest.coordinator.config):
        analyst = rs.connection(manifest.analysts[0].folder, manifest.coordinator_url)
        try:
            declined = {}
            for name, change in (("honest_sites", {"honest_sites": 3}), ("epsilon", {"epsilon": 100.0})):
                rewrite.clear()
                rewrite.update(change)
                job_id = _census(analyst, privacy=PRIVACY)
                declined[name] = _run(manifest, analyst, job_id)["declined"]
        finally:
            analyst.close()
    assert set(declined["honest_sites"]) == set(SITES)
    assert all(reason.startswith("policy: the job's privacy terms count on more honest sites") for reason in declined["honest_sites"].values())
    assert set(declined["epsilon"]) == set(SITES)
    assert all(reason.startswith("budget-exhausted: ") for reason in declined["epsilon"].values())
    for site in manifest.sites:
        assert PrivacyBudget(load_site_config(site.config).state_dir / SPEND_FILE).entries == ()
