"""Batch submission: sbatch scripts, afterok chains, array ingest; end to end on a real one-node Slurm."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ingest import ingest
from pipeline.cluster import ClusterOptions, dask_session
from pipeline.workflow.slurm import BatchOptions, render_script, submit_workflow, workflow_status
from tests.workflow.conftest import make_site, site_params, wait_for_jobs
from tests.workflow.test_cluster import assert_same_dataset

REPO = Path(__file__).resolve().parents[2]
SITE_PREP = REPO / "workflows" / "site-prep.yaml"


def test_render_script__directives_and_command():
    text = render_script(
        job_name="genofed-x-ingest", log_path="/w/logs/ingest-%j.out", command=["python", "-m", "pipeline.cli", "a b"],
        options=BatchOptions(partition="short", account="lab", walltime="01:00:00", cpus=4, memory="8G", extra=("--qos=low",)), array="0-3",
    )
    lines = text.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for line in ("#SBATCH --job-name=genofed-x-ingest", "#SBATCH --output=/w/logs/ingest-%j.out", "#SBATCH --array=0-3",
                 "#SBATCH --partition=short", "#SBATCH --account=lab", "#SBATCH --time=01:00:00", "#SBATCH --cpus-per-task=4",
                 "#SBATCH --mem=8G", "#SBATCH --qos=low", "set -euo pipefail"):
        assert line in lines
    assert lines[-1] == "exec python -m pipeline.cli 'a b'"
    assert max(i for i, l in enumerate(lines) if l.startswith("#SBATCH")) < lines.index("set -euo pipefail")


@pytest.fixture()
def fake_sbatch(tmp_path):
    """An sbatch stand-in that records its arguments and answers job IDs 101, 102, ..."""
    script = tmp_path / "bin" / "sbatch"
    script.parent.mkdir()
    calls = tmp_path / "sbatch-calls.jsonl"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"calls = open({str(calls)!r}, 'a+'); calls.seek(0); n = len(calls.readlines())\n"
        "calls.write(json.dumps(sys.argv[1:]) + '\\n'); print(101 + n)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, calls


def test_submit_workflow__array_ingest_and_afterok_chain(tmp_path, wf_cohort, fake_sbatch):
    sbatch, calls = fake_sbatch
    site = make_site(tmp_path / "site")
    summary = submit_workflow(SITE_PREP, site=site, params=site_params(wf_cohort), options=BatchOptions(max_array=2, cpus=2), sbatch=str(sbatch))
    submitted = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(submitted) == 3  # ingest array, ingest assembly, qc
    array_script, assemble_script, qc_script = (Path(args[-1]) for args in submitted)
    assert submitted[0] == ["--parsable", str(array_script)]
    assert submitted[1] == ["--parsable", "--dependency=afterok:101", "--kill-on-invalid-dep=yes", str(assemble_script)]
    assert submitted[2] == ["--parsable", "--dependency=afterok:102", "--kill-on-invalid-dep=yes", str(qc_script)]
    work = tmp_path / "site" / "runs" / "site-prep"
    array_text = array_script.read_text()
    assert "#SBATCH --array=0-1" in array_text and f"#SBATCH --output={work}/logs/ingest-part-%A_%a.out" in array_text
    assert '--parts 2 --part "${SLURM_ARRAY_TASK_ID}"' in array_text
    assert "--only ingest --no-progress" in assemble_script.read_text() and "--parts 2" in assemble_script.read_text()
    assert f"#SBATCH --output={work}/logs/qc-%j.out" in qc_script.read_text()
    assert "--workers 2" in assemble_script.read_text() and "--workers" not in qc_script.read_text()  # Dask steps use the job's cores
    assert "#SBATCH --cpus-per-task=2" in qc_script.read_text()
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["ingest"]["array_job_id"] == "101" and steps["ingest"]["job_id"] == "102" and steps["qc"]["job_id"] == "103"
    assert json.loads((work / "submission.json").read_text())["steps"] == summary["steps"]


def test_submit_workflow__federated_steps_left_to_the_login_node(tmp_path, wf_cohort, fake_sbatch):
    sbatch, calls = fake_sbatch
    site = make_site(tmp_path / "site")
    summary = submit_workflow(
        REPO / "workflows" / "site-gwas.yaml", site=site, params=site_params(wf_cohort), options=BatchOptions(max_array=1),
        federated_on="login", sbatch=str(sbatch),
    )
    assert [s["action"] for s in summary["steps"]] == ["submitted", "submitted", "left-for-login-node"]
    assert len(calls.read_text().splitlines()) == 2
    assert summary["login_node_command"].startswith("genofed workflow run ") and "site-gwas.yaml" in summary["login_node_command"]


def test_submit_workflow__sbatch_refusal_is_reported(tmp_path, wf_cohort):
    refuse = tmp_path / "sbatch"
    refuse.write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    refuse.chmod(0o755)
    site = make_site(tmp_path / "site")
    from pipeline.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="sbatch refused .*invalid partition specified: nope"):
        submit_workflow(SITE_PREP, site=site, params=site_params(wf_cohort), sbatch=str(refuse))


@pytest.mark.slurm
def test_workflow_submit__site_prep_runs_to_completion_on_slurm(slurm, tmp_path, wf_cohort, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    site = make_site(tmp_path / "site")
    params = site_params(wf_cohort)
    args = [sys.executable, "-m", "pipeline.cli", "workflow", "submit", str(SITE_PREP), "--site", str(site), "--scheduler", "slurm",
            "--max-array", "3", "--cpus", "1", "--memory", "1000M", "--json"] + [x for k, v in params.items() for x in ("--param", f"{k}={v}")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    steps = {s["name"]: s for s in summary["steps"]}
    jobs = [steps["ingest"]["array_job_id"], steps["ingest"]["job_id"], steps["qc"]["job_id"]]
    wait_for_jobs(slurm, jobs)
    status = workflow_status(SITE_PREP, site=site)
    rows = {row["name"]: row for row in status["steps"]}
    logs = sorted(p.name for p in (tmp_path / "site" / "runs" / "site-prep" / "logs").iterdir())
    assert rows["ingest"]["job_state"] == rows["ingest"]["array_job_state"] == rows["qc"]["job_state"] == "COMPLETED", (rows, logs)
    assert rows["ingest"]["up_to_date"] and rows["qc"]["up_to_date"]
    assert f"ingest-{jobs[1]}.out" in logs and f"qc-{jobs[2]}.out" in logs
    assert sum(name.startswith(f"ingest-part-{jobs[0]}_") for name in logs) == 3
    assert not (tmp_path / "site" / "runs" / "site-prep" / "parts").exists()

    local = make_site(tmp_path / "local")
    from pipeline.workflow.run import run_workflow

    run_workflow(SITE_PREP, site=local, params=params)
    assert_same_dataset(tmp_path / "site" / "dataset", tmp_path / "local" / "dataset")
    assert (tmp_path / "site" / "dataset.qc" / "variants.parquet").read_bytes() == (tmp_path / "local" / "dataset.qc" / "variants.parquet").read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert [s["action"] for s in json.loads(again.stdout)["steps"]] == ["skip", "skip"]  # nothing left to submit


@pytest.mark.slurm
def test_ingest__on_a_slurm_cluster_equals_threads(slurm, tmp_path, wf_cohort, monkeypatch):
    import dask

    pytest.importorskip("dask_jobqueue")  # loads its config defaults before the override below
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    params = site_params(wf_cohort)
    kwargs = dict(fasta=params["fasta"], phenotypes=params["phenotypes"], chunk_size="200kb")
    ingest(params["vcf"], out=tmp_path / "threads", scheduler="threads", **kwargs)
    options = ClusterOptions(cores=1, memory="1GB", walltime="00:10:00", jobs=1, worker_timeout=120)
    config = {"jobqueue.slurm.scheduler-options": {"host": "127.0.0.1"}, "jobqueue.slurm.interface": None,
              "jobqueue.slurm.log-directory": str(tmp_path / "worker-logs"), "jobqueue.slurm.local-directory": str(tmp_path / "dask-tmp")}
    with dask.config.set(config), dask_session("slurm", options=options, performance_report=tmp_path / "report.html") as client:
        assert client.scheduler_info()["workers"]
        report = ingest(params["vcf"], out=tmp_path / "slurm", scheduler="slurm", **kwargs)
    assert report["settings"]["scheduler"] == "slurm"
    assert_same_dataset(tmp_path / "slurm", tmp_path / "threads")
    assert (tmp_path / "report.html").stat().st_size > 0
