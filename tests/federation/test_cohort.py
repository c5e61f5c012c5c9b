"""The cohort rule: a site lost mid-job fails a job whose rounds need the same sites, and shows in every result.

A job's cohort is the sites its first round included. A census (key union, then counts)
that loses a cohort site in its second round stops with an error naming the site and the
round; a site silent in the first round is simply not in the cohort (the result lists the
sites it covers and the missed round); a training job's step goes on without a site and
invites it again. Sites are in-process agents; time is a clock the test moves.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.federation.coordinator import Coordinator
from tests.federation import runtime_support as rs

SITES = ("alpha", "beta", "gamma")
TIMEOUT = 600.0


def _run(tmp_path, datasets, analysis: str, spec: dict, absent: Callable[[str, dict], bool]) -> tuple[Coordinator, str]:
    return rs.run_job_in_process(tmp_path, datasets, analysis, spec, absent=absent, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def census_data(tmp_path_factory):
    return rs.small_datasets(tmp_path_factory.mktemp("cohort-census"), SITES, num_variants=8, num_samples=10, seed=11)


CENSUS = {"min_allele_count": 0}


def test_cohort__a_census_that_loses_a_site_after_its_first_round_fails_naming_it(census_data, tmp_path):
    engine, job_id = _run(tmp_path, census_data, "census", CENSUS, absent=lambda site, task: site == "gamma" and task["round_index"] == 1)
    status = engine.status(job_id)
    assert status["status"] == "failed", status
    assert "site gamma was lost in round 1: gamma did not answer before a stage deadline" in status["error"]
    assert "sites: ['alpha', 'beta']" in status["error"]


def test_cohort__a_site_silent_in_the_first_round_is_left_out_and_named_in_the_result(census_data, tmp_path):
    engine, job_id = _run(tmp_path, census_data, "census", CENSUS, absent=lambda site, task: site == "gamma")
    assert engine.status(job_id)["status"] == "done"
    summary = engine.results(job_id)["summary"]
    assert summary["num_sites"] == 2
    assert (summary["sites"], summary["missed_rounds"]) == (["alpha", "beta"], {"gamma": [0]})
    assert engine.active_jobs("gamma") == []


def test_cohort__an_undisturbed_job_lists_every_site_and_no_missed_round(census_data, tmp_path):
    engine, job_id = _run(tmp_path, census_data, "census", CENSUS, absent=lambda site, task: False)
    summary = engine.results(job_id)["summary"]
    assert (summary["sites"], summary["missed_rounds"]) == (list(SITES), {})


def test_cohort__a_training_step_goes_on_without_a_site_and_invites_it_again(tmp_path):
    from tests.analyses.test_train_restart import SPEC
    from tests.models.training_support import planted_cohort

    datasets = planted_cohort(tmp_path / "data", sizes=(60, 90, 40), num_variants=14)
    datasets = dict(zip(SITES, datasets.values()))
    spec = {k: v for k, v in SPEC.items() if k not in ("analysis", "stage_timeout")}
    # Rounds: 0 keys, 1 moments, 2 and 3 training steps, 4 evaluation; gamma misses round 2.
    engine, job_id = _run(tmp_path / "run", datasets, "train", spec,
                          absent=lambda site, task: site == "gamma" and task["round_index"] == 2)
    assert engine.status(job_id)["status"] == "done", engine.status(job_id)
    summary = engine.results(job_id)["summary"]
    assert (summary["sites"], summary["missed_rounds"]) == (list(SITES), {"gamma": [2]})
    sites_per_record = [record["num_sites"] for record in summary["history"]]
    assert sites_per_record[0] == 2 and set(sites_per_record[1:]) == {3}, summary["history"]


def test_cohort__a_gwas_that_loses_a_site_after_its_qc_fails_instead_of_reusing_three_site_qc(tmp_path):
    from tests.analyses import gwas_support as gs

    datasets = gs.dataset_paths(gs.make_cohort(tmp_path / "data", seed=6))
    spec = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.0,
            "hwe_p": 0.0, "min_allele_count": 5}
    engine, job_id = _run(tmp_path / "run", datasets, "gwas", spec,
                          absent=lambda site, task: site == "gamma" and task["round_index"] >= 2)
    status = engine.status(job_id)
    assert status["status"] == "failed", status
    assert status["error"].startswith("site gamma was lost in round 2 (")
    assert "must sum the sites of its first round" in status["error"]
