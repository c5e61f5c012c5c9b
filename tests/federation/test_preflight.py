"""The pre-flight: every job's first stage, where sites check the job against their data before computing anything.

A spec that does not fit the sites' data (a missing, non-numeric or miscoded column)
must fail the job at once, with each site's refusal code and the analyst's own column
name, and before any census or PCA runs; a site that does not fit is left out and the
others go on. The refusal names the spec's column, never the site's columns, values or
paths. The answer itself carries nothing: one fixed body, anything else refused. A
coordinator restarted mid-pre-flight keeps the answers it had. Sites are in-process
agents over the real engine and store.
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.errors import REFUSAL_CODES, ProtocolError
from pipeline.federation.agent import SiteAgent
from pipeline.federation.audit import AuditLog, read_entries
from pipeline.federation.config import SitePolicy
from pipeline.federation.coordinator import Coordinator
from pipeline.federation.rounds import PREFLIGHT_READY, PREFLIGHT_STAGE
from pipeline.federation.store import Store
from tests.analyses import gwas_support as gs
from tests.federation import runtime_support as rs

GWAS = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0,
        "min_allele_count": 5}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.dataset_paths(gs.make_cohort(tmp_path_factory.mktemp("preflight-cohort"), seed=3, num_variants=20))


def _sent_stages(tmp_path, site: str, job_id: str) -> list[str]:
    return [e["fields"]["stage"] for e in read_entries(tmp_path / f"{site}.audit.log", event="contribution.sent")
            if e["fields"]["job_id"] == job_id]


def test_preflight__a_phenotype_no_site_holds_fails_the_job_before_any_round_naming_each_site_and_the_column(cohort, tmp_path):
    engine, job_id = rs.run_job_in_process(tmp_path, cohort, "gwas", {**GWAS, "phenotype": "bmi_typo"})
    status = engine.status(job_id)
    assert status["status"] == "failed"
    assert status["error"].startswith("pre-flight: no site can take part in this job: "), status["error"]
    for site in sorted(cohort):
        assert f"{site} declined it (spec-mismatch: the phenotype column 'bmi_typo' is missing)" in status["error"]
        assert _sent_stages(tmp_path, site, job_id) == []  # nothing computed, nothing sent
    # Only the analyst's column name leaves a site: not its own columns, nor its dataset's path.
    assert "quant_trait" not in status["error"] and "samples.parquet" not in status["error"]
    stages = [stage for stored in engine.store.rounds(job_id) for stage in engine.store.stages(job_id, stored.round_index)]
    assert [s.stage for s in stages] == [PREFLIGHT_STAGE] and stages[0].included == ()


def test_preflight__a_site_without_a_covariate_is_left_out_and_the_others_finish(cohort, tmp_path):
    sites = sorted(cohort)
    data = _altered(cohort, sites[0], tmp_path, lambda table: table.drop_columns(["sex"]))
    engine, job_id = rs.run_job_in_process(tmp_path, data, "gwas", GWAS)
    status = engine.status(job_id)
    assert status["status"] == "done", status
    assert status["declined"] == {sites[0]: "spec-mismatch: the covariate column 'sex' is missing"}
    assert engine.results(job_id)["summary"]["sites"] == sites[1:]
    assert _sent_stages(tmp_path, sites[0], job_id) == []
    assert _sent_stages(tmp_path, sites[1], job_id)[0] == PREFLIGHT_STAGE


def test_preflight__a_text_column_and_a_miscoded_case_column_are_named_as_such(cohort, tmp_path):
    sites = sorted(cohort)

    def age_as_text(table: pa.Table) -> pa.Table:
        years = pa.array([None if v is None else f"{v:g} years" for v in table.column("age").to_pylist()], pa.string())
        return table.set_column(table.column_names.index("age"), "age", years)

    data = _altered(cohort, sites[1], tmp_path, age_as_text)
    engine, job_id = rs.run_job_in_process(tmp_path / "text", data, "gwas", GWAS)
    declined = engine.status(job_id)["declined"]
    assert declined == {sites[1]: "spec-mismatch: the covariate column 'age' is not numeric but text; "
                                   "list it under categorical to one-hot encode it"}, declined
    assert engine.status(job_id)["status"] == "done"
    # A logistic GWAS of a trait coded 1/2: every site refuses, and the job says which column and why.
    engine, job_id = rs.run_job_in_process(tmp_path / "coding", cohort, "gwas",
                                           {**GWAS, "model": "logistic", "phenotype": "sex", "covariates": ["age"]})
    status = engine.status(job_id)
    assert status["status"] == "failed"
    assert "spec-mismatch: the binary phenotype column 'sex' is not coded 0/1" in status["error"], status["error"]


def test_preflight__a_site_with_too_few_complete_samples_declines_before_computing(cohort, tmp_path):
    sites = sorted(cohort)

    def two_phenotypes(table: pa.Table) -> pa.Table:
        values = table.column("quant_trait").to_pylist()
        kept = [v if i < 2 else None for i, v in enumerate(values)]
        return table.set_column(table.column_names.index("quant_trait"), "quant_trait", pa.array(kept, pa.float64()))

    data = _altered(cohort, sites[2], tmp_path, two_phenotypes)
    engine, job_id = rs.run_job_in_process(tmp_path, data, "gwas", GWAS)
    status = engine.status(job_id)
    assert status["declined"] == {sites[2]: f"too-few-samples: {REFUSAL_CODES['too-few-samples']}"}, status
    assert _sent_stages(tmp_path, sites[2], job_id) == []


def test_preflight__a_restarted_coordinator_keeps_the_answers_and_opens_round_zero_for_the_ready_sites(cohort, tmp_path):
    sites = sorted(cohort)
    clock = rs.ManualClock()

    def engine() -> Coordinator:
        return Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=tuple(sites),
                           audit=AuditLog(tmp_path / "audit.log"), clock=clock)

    holder = {"coordinator": engine()}
    policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True,
                        threshold_rule="majority")
    configs = rs.in_process_site_configs(tmp_path, cohort, policy)
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in sites}
    job_id = holder["coordinator"].submit({"analysis": "census", "threshold": 2, "min_allele_count": 0}, "analyst")
    agents[sites[0]].handle(holder["coordinator"].next_task(sites[0]))

    holder["coordinator"] = engine()
    holder["coordinator"].recover()
    status = holder["coordinator"].status(job_id)
    assert (status["stage"], status["waiting_for"]) == (PREFLIGHT_STAGE, sites[1:])
    agents[sites[1]].handle(holder["coordinator"].next_task(sites[1]))
    clock.now += 10_000  # the third site stays silent past the deadline
    assert holder["coordinator"].tick()
    assert holder["coordinator"].status(job_id)["waiting_for"] == sites[:2]  # round 0 proper, ready sites only

    holder["coordinator"] = engine()
    holder["coordinator"].recover()
    status = holder["coordinator"].status(job_id)
    assert (status["round"], status["stage"], status["waiting_for"]) == (0, "keys", sites[:2])
    assert holder["coordinator"].next_task(sites[2]) is None


def test_preflight__an_answer_with_anything_but_the_fixed_body_is_refused(cohort, tmp_path):
    """A site cannot pass data (or a covert channel) through its pre-flight answer."""
    sites = sorted(cohort)
    coordinator = Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=tuple(sites),
                              audit=AuditLog(tmp_path / "audit.log"))
    job_id = coordinator.submit({"analysis": "census", "threshold": 2, "min_allele_count": 0}, "analyst")
    smuggled = json.dumps({"ready": True, "n": 150}).encode()
    with pytest.raises(ProtocolError, match="pre-flight answer"):
        coordinator.receive(sites[0], job_id, 0, PREFLIGHT_STAGE, "message-0001", smuggled)
    assert coordinator.receive(sites[0], job_id, 0, PREFLIGHT_STAGE, "message-0002", PREFLIGHT_READY)["status"] == "accepted"


def _altered(cohort: dict, site: str, tmp_path, edit) -> dict:
    """The cohort with ``site``'s dataset copied under ``tmp_path`` and its samples table passed through ``edit``."""
    copy = tmp_path / "altered" / cohort[site].name
    shutil.copytree(cohort[site], copy)
    pq.write_table(edit(pq.read_table(copy / "samples.parquet")), copy / "samples.parquet")
    return {**cohort, site: copy}


def test_preflight__secure_sum_terms_the_site_refuses_are_declined_before_any_round(cohort, tmp_path):
    """A threshold below a site's threshold_rule is refused at the pre-flight, not after the census' key round."""
    sites = sorted(cohort)
    coordinator = Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=tuple(sites),
                              audit=AuditLog(tmp_path / "audit.log"))
    holder = {"coordinator": coordinator}
    policy = SitePolicy(allowed_analyses=("census",), min_samples=3, min_allele_count=0, share_variant_keys=True)
    configs = rs.in_process_site_configs(tmp_path, cohort, policy)  # the default rule: two thirds plus one
    agents = {name: SiteAgent(configs[name], connection=rs.DirectConnection(holder, name)) for name in sites}
    job_id = coordinator.submit({"analysis": "census", "threshold": 2, "min_allele_count": 0}, "analyst")
    for name in sites:
        agents[name].handle(coordinator.next_task(name))
    status = coordinator.status(job_id)
    assert status["status"] == "failed" and status["error"].startswith("pre-flight: no site can take part"), status
    assert set(status["declined"].values()) == {f"policy: {REFUSAL_CODES['policy']}"}
    assert all(_sent_stages(tmp_path, name, job_id) == [] for name in sites)


def _on_assembly(cohort: dict, assemblies: dict[str, str], tmp_path) -> dict:
    """The cohort with each site in ``assemblies`` copied under ``tmp_path``, its dataset.json naming that assembly."""
    data = dict(cohort)
    for site, assembly in assemblies.items():
        copy = tmp_path / "assembly" / cohort[site].name
        shutil.copytree(cohort[site], copy)
        meta = json.loads((copy / "dataset.json").read_text())
        (copy / "dataset.json").write_text(json.dumps({**meta, "genome_assembly": assembly}))
        data[site] = copy
    return data


@pytest.mark.parametrize("body", [
    b'{"ready":true,"assembly":"GRCh38"}',  # the allowed keys in another order: answers are compared byte for byte
    b'{"assembly": "GRCh38", "ready": true}',  # spacing
    b'{"assembly":"hg19","ready":true}',  # a value outside the closed set
    b'{"assembly":"GRCh38 (1,204 cases)","ready":true}',  # free text
    b'{"assembly":null,"ready":true}',
    b'{"assembly":"GRCh38","n":150,"ready":true}',  # any other key
    b'{"assembly":"GRCh38","ready":false}',
])
def test_preflight__an_answer_with_another_key_or_assembly_is_refused(cohort, tmp_path, body):
    """The one key a pre-flight answer may add is ``assembly``, with one of a closed set of values, nothing else."""
    sites = sorted(cohort)
    coordinator = Coordinator(Store(tmp_path / "coordinator.db"), federation="testfed", sites=tuple(sites),
                              audit=AuditLog(tmp_path / "audit.log"))
    job_id = coordinator.submit({"analysis": "census", "threshold": 2, "min_allele_count": 0}, "analyst")
    with pytest.raises(ProtocolError, match="pre-flight answer"):
        coordinator.receive(sites[0], job_id, 0, PREFLIGHT_STAGE, "message-0001", body)
    for site, answer in zip(sites, (b'{"assembly":"GRCh37","ready":true}', b'{"assembly":"GRCh38","ready":true}', PREFLIGHT_READY)):
        assert coordinator.receive(site, job_id, 0, PREFLIGHT_STAGE, f"message-{site}", answer)["status"] == "accepted"


def test_preflight__sites_on_different_assemblies_fail_the_job_naming_each_site_and_assembly(cohort, tmp_path):
    sites = sorted(cohort)
    data = _on_assembly(cohort, {sites[0]: "GRCh37", sites[1]: "GRCh38"}, tmp_path)
    engine, job_id = rs.run_job_in_process(tmp_path, data, "gwas", GWAS)
    status = engine.status(job_id)
    assert status["status"] == "failed"
    assert status["error"].startswith(f"pre-flight: the sites' datasets record different genome assemblies ({sites[0]} GRCh37, "
                                      f"{sites[1]} GRCh38)"), status["error"]
    assert all(_sent_stages(tmp_path, site, job_id) == [PREFLIGHT_STAGE] for site in sites)  # nothing computed


def test_preflight__the_assembly_every_site_records_reaches_the_gwas_metadata(cohort, tmp_path):
    sites = sorted(cohort)
    data = _on_assembly(cohort, {site: "GRCh38" for site in sites}, tmp_path)
    engine, job_id = rs.run_job_in_process(tmp_path / "all", data, "gwas", GWAS)
    assert engine.status(job_id)["status"] == "done", engine.status(job_id)
    assert engine.results(job_id)["summary"]["genome_assembly"] == "GRCh38"
    meta = yaml.safe_load(engine.result_item(job_id, "gwas.tsv.gz-meta.yaml", "file"))
    assert meta["genome_assembly"] == "GRCh38"
    # One site that records none: the result claims no assembly (GWAS-SSF's NR), the job still runs.
    data = _on_assembly(cohort, {site: "GRCh38" for site in sites[1:]}, tmp_path / "some")
    engine, job_id = rs.run_job_in_process(tmp_path / "some", data, "gwas", GWAS)
    assert engine.results(job_id)["summary"]["genome_assembly"] is None
    assert yaml.safe_load(engine.result_item(job_id, "gwas.tsv.gz-meta.yaml", "file"))["genome_assembly"] == "NR"
