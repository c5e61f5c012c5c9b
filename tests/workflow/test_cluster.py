"""--scheduler: dask's local schedulers, a dask.distributed address, dask-jobqueue; batch ingest parts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, InputError
from pipeline.ingest import ingest, ingest_part
from pipeline.cluster import ClusterOptions, dask_session, is_distributed, parse_scheduler
from pipeline.workflow.run import run_workflow
from tests.workflow.conftest import make_site, site_params

REPO = Path(__file__).resolve().parents[2]


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same samples, same variants, same calls, chunk by chunk."""
    left, right = open_dataset(a), open_dataset(b)
    assert left.samples().equals(right.samples())
    assert left.chunk_names == right.chunk_names and left.num_variants == right.num_variants > 0
    for x, y in zip(left.iter_blocks(), right.iter_blocks(), strict=True):
        assert x.variants.equals(y.variants)
        np.testing.assert_array_equal(x.call_dosage, y.call_dosage)


@pytest.fixture(scope="module")
def threaded(wf_cohort, tmp_path_factory):
    """site-1 ingested on the threaded scheduler: the reference for the other schedulers."""
    params = site_params(wf_cohort)
    out = tmp_path_factory.mktemp("threaded") / "dataset"
    report = ingest(params["vcf"], out=out, fasta=params["fasta"], phenotypes=params["phenotypes"], chunk_size="200kb", scheduler="threads", workers=2)
    assert report["tasks"] > 1
    return out


@pytest.mark.parametrize("value", ["threads", "processes", "synchronous", "tcp://127.0.0.1:8786", "10.0.0.5:8786", "inproc://10.0.0.5/1/1", "slurm", "pbs"])
def test_parse_scheduler__accepts(value):
    assert parse_scheduler(value) == value
    assert is_distributed(value) == (value not in ("threads", "processes", "synchronous"))


@pytest.mark.parametrize("value", ["thread", "sge", "host 8786", ""])
def test_parse_scheduler__refuses_with_the_choices(value):
    with pytest.raises(ConfigurationError, match="use threads, processes, synchronous, a dask.distributed address .*slurm or pbs"):
        parse_scheduler(value)


def test_dask_session__performance_report_needs_distributed():
    with pytest.raises(ConfigurationError, match="--performance-report needs a dask.distributed scheduler"):
        with dask_session("threads", performance_report="report.html"):
            pass


def test_dask_session__slurm_without_cores_and_memory_says_what_to_set():
    import dask

    pytest.importorskip("dask_jobqueue")  # loads its config defaults before the override below, not inside it

    with dask.config.set({"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}):
        with pytest.raises(ConfigurationError, match=r"give --cores and --memory .* jobqueue.slurm"):
            with dask_session("slurm", options=ClusterOptions()):
                pass


def test_ingest__local_cluster_address_equals_threads(wf_cohort, threaded, tmp_path):
    """The proof for dask.distributed: a LocalCluster reached through its address writes the same dataset."""
    distributed = pytest.importorskip("distributed")
    params = site_params(wf_cohort)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        report = ingest(params["vcf"], out=tmp_path / "d", fasta=params["fasta"], phenotypes=params["phenotypes"], chunk_size="200kb", scheduler=cluster.scheduler_address)
    assert report["settings"]["scheduler"].startswith("tcp://")
    assert_same_dataset(tmp_path / "d", threaded)


def test_workflow_run__address_and_performance_report(wf_cohort, threaded, tmp_path):
    distributed = pytest.importorskip("distributed")
    site = make_site(tmp_path / "site")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        summary = run_workflow(
            REPO / "workflows" / "site-prep.yaml", site=site, params=site_params(wf_cohort), scheduler=cluster.scheduler_address,
            performance_report=tmp_path / "report.html",
        )
    assert {s["name"]: s["action"] for s in summary["steps"]} == {"ingest": "ran", "qc": "ran"}
    assert "Dask Performance Report" in (tmp_path / "report.html").read_text()
    assert_same_dataset(tmp_path / "site" / "dataset", threaded)


def test_ingest_part__parts_assemble_into_the_same_dataset(wf_cohort, threaded, tmp_path):
    params = site_params(wf_cohort)
    common = dict(fasta=params["fasta"], chunk_size="200kb")
    parts = tmp_path / "parts"
    records = [ingest_part(params["vcf"], parts_dir=parts, part=i, parts=2, scheduler="synchronous", **common) for i in (1, 0)]
    assert records[0]["num_regions"] == records[1]["num_regions"] > 2
    assert sorted(r["chunk_index"] for rec in records for r in rec["results"]) == list(range(records[0]["num_regions"]))
    report = ingest(params["vcf"], out=tmp_path / "d", phenotypes=params["phenotypes"], parts_dir=parts, **common)
    assert report["tasks"] == records[0]["num_regions"]
    assert_same_dataset(tmp_path / "d", threaded)
    reference = json.loads((threaded / "ingest-report.json").read_text())
    assert {k: report[k] for k in ("records_read", "swapped", "dropped", "variants_written")} == {
        k: reference[k] for k in ("records_read", "swapped", "dropped", "variants_written")
    }


def test_ingest_part__a_missing_part_is_an_error(wf_cohort, tmp_path):
    params = site_params(wf_cohort)
    ingest_part(params["vcf"], parts_dir=tmp_path / "parts", part=0, parts=3, fasta=params["fasta"], chunk_size="200kb")
    with pytest.raises(InputError, match=r"cover \d+ of \d+ regions .* run the missing parts"):
        ingest(params["vcf"], out=tmp_path / "d", fasta=params["fasta"], chunk_size="200kb", parts_dir=tmp_path / "parts")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigurationError, match="expected 0 <= part < parts"):
        ingest_part(params["vcf"], parts_dir=tmp_path / "parts", part=3, parts=3)


def test_ingest__cli_performance_report_with_threads_is_refused(wf_cohort, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    params = site_params(wf_cohort)
    result = CliRunner().invoke(main, ["ingest", "--vcf", params["vcf"], "--out", str(tmp_path / "d"), "--performance-report", str(tmp_path / "r.html")])
    assert result.exit_code == 1 and "needs a dask.distributed scheduler" in result.output
    assert not (tmp_path / "d").exists()


def test_compute_graph__processes_report_each_task_as_it_ends():
    """The progress callbacks see a task end before the last one starts (no batch of tasks per process call)."""
    import operator

    import dask
    from dask.callbacks import Callback

    from pipeline.cluster import compute_graph

    events: list[str] = []

    class Record(Callback):
        def _pretask(self, key, dsk, state):
            events.append("start")

        def _posttask(self, key, result, dsk, state, worker_id):
            events.append("end")

    graph = [dask.delayed(operator.add, pure=True)(i, 1, dask_key_name=f"task-{i}") for i in range(6)]
    with Record():
        assert compute_graph(graph, scheduler="processes", workers=1, progress=False) == [1, 2, 3, 4, 5, 6]
    last_start = len(events) - 1 - events[::-1].index("start")
    assert events.index("end") < last_start, events


def test_available_cores__a_batch_jobs_allocation_not_the_nodes_count(monkeypatch):
    """A local scheduler's default workers: a Slurm job bound to 3 of a node's 64 cores gets 3 (memory grows per worker)."""
    import os

    from pipeline import cluster

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert cluster.available_cores() == 3
