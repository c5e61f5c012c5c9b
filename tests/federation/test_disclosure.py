"""What results reveal, tried as a curious analyst would: legitimate jobs only, a real federation on 127.0.0.1.

Each attack runs jobs through the real coordinator and real site agents over mutual
TLS and tries to learn one person's or one site's data from the difference of two
releases. Each must now be refused by the sites (a coarse code is all the analyst
sees), while legitimate repeats (a new phenotype on the same complete cases, the same
census again) still run. Every test provisions its own federation, so each starts with
empty site ledgers and the tests do not depend on their order.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import REFUSAL_CODES
from pipeline.federation.agent import SiteAgent
from pipeline.federation.config import load_site_config
from pipeline.federation.ledger import samples_digest
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

pytestmark = pytest.mark.network

SITES = gs.SITES
# The first round's deadline fixes a job's cohort, and agents started as processes on a loaded
# machine may take long to come up: a generous deadline (a stage closes as soon as every site answered).
GWAS = {"analysis": "gwas", "model": "linear", "covariates": [], "min_call_rate": 0.0, "hwe_p": 0.0,
        "min_allele_count": 5, "stage_timeout": 120, "threshold": 2}
CENSUS = {"analysis": "census", "stage_timeout": 120, "threshold": 2}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    """Three sites; trait_b is trait_a with one person of alpha missing; trait_c has trait_a's complete cases;
    rare_trait is known for three of gamma's people only."""
    root = tmp_path_factory.mktemp("disclosure")
    sites = gs.make_cohort(root / "data", seed=7, sizes=(40, 30, 30), num_variants=12)
    rng = np.random.default_rng(3)
    for name, site in sites.items():
        trait_a = np.where(np.isfinite(site.quant), site.quant, 0.0)
        trait_b = trait_a.copy()
        if name == "alpha":
            trait_b[5] = np.nan  # the one person the attack is after
        trait_c = rng.normal(0, 1, trait_a.size)
        rare_trait = np.ones(trait_a.size)
        if name == "gamma":
            rare_trait[3:] = np.nan  # only three of gamma's thirty people have it
        gs.write_phenotypes(site.path, {"age": site.age, "sex": site.sex, "trait_a": trait_a, "trait_b": trait_b,
                                        "trait_c": trait_c, "rare_trait": rare_trait})
    return root, sites


@pytest.fixture
def federation(cohort, tmp_path):
    _, sites = cohort
    manifest = rs.provision_federation(tmp_path / "fed", {name: site.path for name, site in sites.items()}, min_samples=5,
                                       analyses=("census", "gwas"))
    with rs.ThreadedCoordinator(manifest.coordinator.config) as server:
        yield manifest, server


def _run(manifest, spec: dict) -> dict:
    with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url) as analyst:
        job_id = analyst.post_json("/v1/jobs", {"spec": spec})["job_id"]
        with rs.agent_threads(manifest, max_idle=30):
            return rs.wait_for_job(analyst, job_id, timeout=120)


def _codes(status: dict) -> dict[str, str]:
    """Each declining site's code, after checking that the analyst learns nothing but the code's meaning."""
    codes = {}
    for site, reason in status["declined"].items():
        code, _, public = reason.partition(": ")
        assert code in REFUSAL_CODES and public == REFUSAL_CODES[code], reason
        codes[site] = code
    return codes


def _refusal_codes(manifest, site: str, job_id: str) -> set[str]:
    return {e.get("code") for e in rs.audit_events(manifest, site, job_id) if e["event"] in ("round.refused", "job.declined")}


def test_attack__two_gwas_one_person_apart_cannot_be_differenced(federation):
    manifest, server = federation
    first = _run(manifest, {**GWAS, "phenotype": "trait_a"})
    assert first["status"] == "done", first
    # trait_b is trait_a without one person at alpha: n and the allele frequencies would differ by exactly that person.
    second = _run(manifest, {**GWAS, "phenotype": "trait_b"})
    assert second["status"] == "failed", second
    # alpha declines; without alpha the release would differ by one site from the first, so beta and gamma
    # refuse to sign the survivor list, before revealing any share: the round aborts with nothing revealed.
    assert _codes(second) == {"alpha": "set-too-close", "beta": "one-site-difference", "gamma": "one-site-difference"}
    for site in ("beta", "gamma"):
        assert "one-site-difference" in _refusal_codes(manifest, site, second["job_id"])
    store = server.coordinator.store
    assert not any(store.messages(second["job_id"], r.round_index, "unmasking") for r in store.rounds(second["job_id"]))
    # A new phenotype on the same complete cases is a legitimate repeat: it runs.
    third = _run(manifest, {**GWAS, "phenotype": "trait_c"})
    assert third["status"] == "done", third


def test_attack__census_over_one_site_fewer_is_refused_and_the_same_census_again_runs(federation):
    manifest, _ = federation
    everyone = _run(manifest, CENSUS)
    assert everyone["status"] == "done", everyone
    # {alpha, beta, gamma} then {alpha, beta}: gamma's exact counts would follow by subtraction.
    fewer = _run(manifest, {**CENSUS, "sites": ["alpha", "beta"]})
    assert fewer["status"] == "failed", fewer
    assert _codes(fewer) == {"alpha": "one-site-difference", "beta": "one-site-difference"}
    again = _run(manifest, CENSUS)
    assert again["status"] == "done", again


def test_attack__a_phenotype_few_people_have_is_declined_on_the_samples_that_contribute(federation):
    """min_samples counts the samples that contribute, not the dataset's size."""
    manifest, _ = federation
    status = _run(manifest, {**GWAS, "phenotype": "rare_trait"})
    assert _codes(status).get("gamma") == "too-few-samples"
    assert not any(ch.isdigit() for ch in status["declined"]["gamma"])


def test_ledger__survives_a_restart_and_is_recorded_hashed_in_the_audit_log(federation, cohort):
    manifest, _ = federation
    _, sites = cohort
    status = _run(manifest, {**GWAS, "phenotype": "trait_a"})
    assert status["status"] == "done", status
    folder = next(s for s in manifest.sites if s.name == "beta")
    restarted = SiteAgent(load_site_config(folder.config))
    try:
        releases = [r for r in restarted.ledger.releases if r.job_id == status["job_id"]]
    finally:
        restarted.connection.close()
    assert releases and all(r.analysis == "gwas" and r.sites == frozenset(SITES) for r in releases)
    beta = sites["beta"]
    complete = {f"{beta.path.name}-{i}" for i in range(beta.quant.size)}  # trait_a has no missing value
    assert any(r.samples == complete for r in releases)
    recorded = [e for e in rs.audit_events(manifest, "beta", status["job_id"]) if e["event"] == "ledger.recorded"]
    assert recorded and samples_digest(complete) in {e["samples"] for e in recorded}
    assert all("beta-" not in str(e) for e in recorded)  # sample IDs never enter the audit log, only their digest


def test_attack__through_the_commands_an_analyst_and_the_sites_run(cohort, tmp_path):
    """The site-set attack as deployed: ``coordinator serve``, ``site run`` and ``job submit|status`` processes.

    Each job gets fresh ``site run --once`` processes, so the sites' ledgers carry over restarts.
    """
    import json
    import subprocess
    import sys

    _, sites = cohort
    manifest = rs.provision_federation(tmp_path / "fed", {name: site.path for name, site in sites.items()}, min_samples=5,
                                       analyses=("census", "gwas"))
    analyst_config = manifest.analysts[0].config
    coordinator = rs.start_coordinator_process(manifest.coordinator.config, tmp_path / "coordinator.log")

    def genofed(*args: str, ok: tuple[int, ...] = (0,)) -> dict:
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--config", str(analyst_config), "--json"],
                              capture_output=True, text=True, cwd=rs.REPO, timeout=120)
        assert done.returncode in ok, done.stderr
        return json.loads(done.stdout)

    def run_job(spec: dict, name: str) -> dict:
        path = tmp_path / f"{name}.json"  # JSON is YAML
        path.write_text(json.dumps(spec))
        job_id = genofed("job", "submit", str(path))["job_id"]
        invited = spec.get("sites", SITES)  # --once: an agent that sees no job never exits, so only the invited run
        agents = [rs.start_site_process(site.config, tmp_path / f"{site.name}-{name}.log")
                  for site in manifest.sites if site.name in invited]
        try:
            for agent in agents:
                agent.wait(timeout=120)  # --once: each exits when the jobs it saw have ended
        finally:
            for agent in agents:
                rs.kill(agent)
        return genofed("job", "status", job_id, ok=(0, 1))  # job status exits 1 for a failed job (it still prints it)

    try:
        with rs.connection(manifest.analysts[0].folder, manifest.coordinator_url, max_attempts=30) as analyst:
            rs.wait_until_serving(analyst)
        assert run_job(CENSUS, "everyone")["status"] == "done"
        fewer = run_job({**CENSUS, "sites": ["alpha", "beta"]}, "fewer")
        assert fewer["status"] == "failed"
        assert _codes(fewer) == {"alpha": "one-site-difference", "beta": "one-site-difference"}
    finally:
        rs.stop(coordinator)
