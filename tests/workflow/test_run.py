"""Running workflows: plan, skip what is up to date, rerun only what an edit affects, resume after a failure."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, InputError
from pipeline.workflow import steps as step_kinds
from pipeline.workflow.plan import RECORD_NAME, content_digest, parse_param_overrides
from pipeline.workflow.run import run_workflow
from tests.workflow.conftest import make_site, site_params

REPO = Path(__file__).resolve().parents[2]
SITE_PREP = REPO / "workflows" / "site-prep.yaml"


def _actions(summary: dict) -> dict[str, str]:
    return {step["name"]: step["action"] for step in summary["steps"]}


@pytest.fixture()
def inputs(wf_cohort, tmp_path):
    """Copies of site-1's inputs that a test may edit."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("genotypes.vcf.gz", "genotypes.vcf.gz.tbi", "phenotypes.tsv"):
        shutil.copy(wf_cohort / "site-1" / name, folder / name)
    params = site_params(wf_cohort)
    params.update(vcf=str(folder / "genotypes.vcf.gz"), phenotypes=str(folder / "phenotypes.tsv"))
    return params


def test_run_workflow__dry_run_plans_and_writes_nothing(tmp_path, inputs):
    site = make_site(tmp_path / "site")
    lines: list[str] = []
    summary = run_workflow(SITE_PREP, site=site, params=inputs, dry_run=True, say=lines.append)
    assert _actions(summary) == {"ingest": "run", "qc": "run"}
    assert [s["reason"] for s in summary["steps"]] == ["no output yet", "after ingest"]
    assert not (tmp_path / "site" / "dataset").exists() and not (tmp_path / "site" / "runs").exists()
    assert "run   ingest" in lines[0] and "dataset.qc" in lines[0]


def test_run_workflow__second_run_does_nothing_and_edits_rerun_dependents(tmp_path, inputs):
    site = make_site(tmp_path / "site")
    first = run_workflow(SITE_PREP, site=site, params=inputs)
    assert _actions(first) == {"ingest": "ran", "qc": "ran"}
    dataset, qc = tmp_path / "site" / "dataset", tmp_path / "site" / "dataset.qc"
    assert open_dataset(dataset).num_samples == 40 and (qc / "qc-summary.json").is_file()
    record = json.loads((dataset / RECORD_NAME).read_text())
    assert record["input_digests"]["vcf"] == "file:" + hashlib.sha256(Path(inputs["vcf"]).read_bytes()).hexdigest()

    assert _actions(run_workflow(SITE_PREP, site=site, params=inputs)) == {"ingest": "skipped", "qc": "skipped"}
    os.utime(inputs["phenotypes"], (1, 1))  # touched, same bytes: nothing to do
    assert _actions(run_workflow(SITE_PREP, site=site, params=inputs)) == {"ingest": "skipped", "qc": "skipped"}

    changed = run_workflow(SITE_PREP, site=site, params={**inputs, "maf": 0.05})  # a QC parameter: QC only
    assert _actions(changed) == {"ingest": "skipped", "qc": "ran"}
    assert changed["steps"][1]["reason"] == "parameters changed: maf"
    assert json.loads((qc / "qc-summary.json").read_text())["thresholds"]["maf"] == 0.05

    lines = Path(inputs["phenotypes"]).read_text().splitlines()
    Path(inputs["phenotypes"]).write_text("\n".join(lines[:-1]) + "\n")  # one phenotype row fewer
    edited = run_workflow(SITE_PREP, site=site, params={**inputs, "maf": 0.05})
    assert _actions(edited) == {"ingest": "ran", "qc": "ran"}
    assert edited["steps"][0]["reason"] == "input changed: phenotypes"
    assert edited["steps"][1]["reason"] == "input changed: dataset"
    assert _actions(run_workflow(SITE_PREP, site=site, params={**inputs, "maf": 0.05})) == {"ingest": "skipped", "qc": "skipped"}


TWO_SITES = """\
kind: workflow
name: two
params: {a: null, b: null, pb: null, fasta: null}
steps:
  - {name: ingest-a, run: ingest, inputs: {vcf: "${params.a}", fasta: "${params.fasta}"}, params: {chunk_size: 200kb}, output: "${work}/a"}
  - {name: qc-a, run: qc, inputs: {dataset: "${steps.ingest-a.output}"}, output: "${work}/a.qc"}
  - {name: ingest-b, run: ingest, inputs: {vcf: "${params.b}", phenotypes: "${params.pb}", fasta: "${params.fasta}"}, params: {chunk_size: 200kb}, output: "${work}/b"}
  - {name: qc-b, run: qc, inputs: {dataset: "${steps.ingest-b.output}"}, output: "${work}/b.qc"}
"""


def test_run_workflow__an_edited_input_reruns_only_what_reads_it(tmp_path, wf_cohort):
    from pipeline.sim.cohort import load_manifest

    manifest = load_manifest(wf_cohort)
    shutil.copy(manifest.resolve(manifest.site("site-2").phenotypes), tmp_path / "b.tsv")
    spec = tmp_path / "two.yaml"
    spec.write_text(TWO_SITES)
    site = make_site(tmp_path / "site")
    params = {
        "a": str(manifest.resolve(manifest.site("site-1").vcf)), "b": str(manifest.resolve(manifest.site("site-2").vcf)),
        "pb": str(tmp_path / "b.tsv"), "fasta": str(wf_cohort / "reference.fa.gz"),
    }
    assert set(_actions(run_workflow(spec, site=site, params=params)).values()) == {"ran"}
    lines = (tmp_path / "b.tsv").read_text().splitlines()
    (tmp_path / "b.tsv").write_text("\n".join(lines[:-2]) + "\n")
    assert _actions(run_workflow(spec, site=site, params=params)) == {"ingest-a": "skipped", "qc-a": "skipped", "ingest-b": "ran", "qc-b": "ran"}


def test_run_workflow__resumes_from_the_failed_step(tmp_path, inputs, monkeypatch):
    site = make_site(tmp_path / "site")
    calls: list[str] = []
    real = dict(step_kinds.KINDS)

    def spy(name, fail=False):
        def execute(*args, **kwargs):
            calls.append(name)
            if fail:
                raise InputError("injected failure in qc")
            return real[name].execute(*args, **kwargs)

        return dataclasses.replace(real[name], execute=execute)

    monkeypatch.setattr(step_kinds, "KINDS", {**real, "ingest": spy("ingest"), "qc": spy("qc", fail=True)})
    monkeypatch.setattr("pipeline.workflow.run.KINDS", step_kinds.KINDS)
    lines: list[str] = []
    with pytest.raises(InputError, match="injected failure"):
        run_workflow(SITE_PREP, site=site, params=inputs, say=lines.append)
    assert calls == ["ingest", "qc"]
    assert "resume from qc" in lines[-1]
    last = json.loads((tmp_path / "site" / "runs" / "site-prep" / "last-run.json").read_text())
    assert last["failed_step"] == "qc" and _actions(last) == {"ingest": "ran", "qc": "failed"}
    assert (tmp_path / "site" / "dataset" / RECORD_NAME).is_file() and not (tmp_path / "site" / "dataset.qc").exists()

    monkeypatch.setattr(step_kinds, "KINDS", {**real, "ingest": spy("ingest"), "qc": spy("qc")})
    monkeypatch.setattr("pipeline.workflow.run.KINDS", step_kinds.KINDS)
    calls.clear()
    resumed = run_workflow(SITE_PREP, site=site, params=inputs)
    assert calls == ["qc"]
    assert _actions(resumed) == {"ingest": "skipped", "qc": "ran"} and resumed["failed_step"] is None


def test_run_workflow__only_needs_up_to_date_upstream(tmp_path, inputs):
    site = make_site(tmp_path / "site")
    with pytest.raises(ConfigurationError, match="reads the output of 'ingest', which is out of date or missing"):
        run_workflow(SITE_PREP, site=site, params=inputs, only=["qc"])
    assert _actions(run_workflow(SITE_PREP, site=site, params=inputs, only=["ingest"])) == {"ingest": "ran"}
    assert _actions(run_workflow(SITE_PREP, site=site, params=inputs, only=["qc"])) == {"qc": "ran"}
    assert _actions(run_workflow(SITE_PREP, site=site, params=inputs, rerun=["qc"])) == {"ingest": "skipped", "qc": "ran"}


def test_run_workflow__federated_step_checks_policy_and_analysis(tmp_path, inputs):
    site = make_site(tmp_path / "site")
    run_workflow(SITE_PREP, site=site, params=inputs)
    pca = REPO / "workflows" / "site-pca.yaml"
    with pytest.raises(ConfigurationError, match=r"policy does not allow 'pca'"):
        run_workflow(pca, site=site, params=inputs)
    plan = run_workflow(REPO / "workflows" / "site-gwas.yaml", site=site, params=inputs, dry_run=True)
    assert _actions(plan) == {"ingest": "skip", "qc": "skip", "gwas": "run"}


def test_content_digest__folders_ignore_records_and_see_content(tmp_path):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.bin").write_bytes(b"abc")
    before = content_digest(folder)
    (folder / RECORD_NAME).write_text("{}")
    assert content_digest(folder) == before
    (folder / "sub" / "x.bin").write_bytes(b"abd")
    assert content_digest(folder) != before
    (folder / "sub" / "x.bin").write_bytes(b"abc")
    (folder / "sub" / "x.bin").rename(folder / "x.bin")  # same bytes, another path
    assert content_digest(folder) != before
    assert content_digest(folder / "x.bin") == "file:" + hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ConfigurationError, match="does not exist"):
        content_digest(tmp_path / "missing")


def test_parse_param_overrides__yaml_scalars():
    assert parse_param_overrides(["maf=0.01", "vcf=a.vcf.gz", "fasta=null", "flag=true", "s=5Mb"]) == {
        "maf": 0.01, "vcf": "a.vcf.gz", "fasta": None, "flag": True, "s": "5Mb",
    }
    with pytest.raises(ConfigurationError, match="expected NAME=VALUE"):
        parse_param_overrides(["maf"])


def test_workflow_run__cli_plan_and_json(tmp_path, inputs):
    from click.testing import CliRunner

    from pipeline.cli import main

    site = make_site(tmp_path / "site")
    args = ["workflow", "run", str(SITE_PREP), "--site", str(site)] + [x for k, v in inputs.items() for x in ("--param", f"{k}={v}")]
    dry = CliRunner().invoke(main, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "workflow site-prep for site site-1 (dry run)" in dry.output
    done = CliRunner().invoke(main, args + ["--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert _actions(summary) == {"ingest": "ran", "qc": "ran"}
    missing = CliRunner().invoke(main, ["workflow", "run", str(SITE_PREP), "--site", str(site)])
    assert missing.exit_code == 1 and "parameter 'vcf'" in missing.output and "is required" in missing.output


def test_workflow_status__after_a_local_run(tmp_path, inputs):
    from pipeline.workflow.slurm import workflow_status

    site = make_site(tmp_path / "site")
    run_workflow(SITE_PREP, site=site, params=inputs)
    status = workflow_status(SITE_PREP, site=site)  # parameters of the last run
    assert [(row["name"], row["up_to_date"], row["last_local_run"]) for row in status["steps"]] == [("ingest", True, "ran"), ("qc", True, "ran")]
    changed = workflow_status(SITE_PREP, site=site, params={**inputs, "hwe_p": 0.001})
    assert [row["up_to_date"] for row in changed["steps"]] == [True, False]
    assert changed["steps"][1]["reason"] == "parameters changed: hwe_p"


def test_run_workflow__federated_step_runs_the_agent_once(tmp_path, inputs, monkeypatch):
    site = make_site(tmp_path / "site")
    calls: list[tuple] = []
    answers = [{"site": "site-1", "tasks": 0, "jobs": []}, {"site": "site-1", "tasks": 7, "jobs": ["job-1"]}]

    def fake_run_site(config_path, *, once, max_idle):
        calls.append((Path(config_path), once, max_idle))
        return answers.pop(0)

    monkeypatch.setattr("pipeline.workflow.steps.run_site", fake_run_site)
    gwas = REPO / "workflows" / "site-gwas.yaml"
    with pytest.raises(ConfigurationError, match=r"no federated job reached the agent within max_idle = 5 s"):
        run_workflow(gwas, site=site, params={**inputs, "max_idle": 5})
    assert calls == [(site.resolve(), True, 5.0)]
    done = run_workflow(gwas, site=site, params={**inputs, "max_idle": 5})
    assert _actions(done) == {"ingest": "skipped", "qc": "skipped", "gwas": "ran"}
    out = tmp_path / "site" / "runs" / "site-gwas" / "gwas"
    assert json.loads((out / "summary.json").read_text()) == {"site": "site-1", "tasks": 7, "jobs": ["job-1"], "analysis": "gwas"}
    assert (out / RECORD_NAME).is_file()
