"""genofed demo end to end on a tiny cohort: every stage runs and the summary is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.network
def test_demo__tiny_cohort_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    arguments = [sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out), "--samples", "150",
                 "--region", "chr22:16000000-16600000", "--background-region", "chr21:16000000-16400000", "--json"]
    completed = subprocess.run(arguments, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["sites"].keys() == summary["sites"].keys() == {"site-1", "site-2", "site-3"}
    for site in summary["sites"].values():
        assert site["ingest"]["variants_written"] > 0
        assert site["qc"]["variants"]["passing"] > 0
    assert summary["census"]["variants"]["total"] > 0
    assert (out / "gwas" / "results" / "gwas.tsv.gz").is_file()
    assert (out / "gwas" / "results" / "manhattan.png").is_file()
    null = summary["gwas"]["null"]  # lambda_GC over the background chromosome, which has no causal variant
    assert null["chromosomes"] == ["21"] and null["variants"] > 100 and 0.5 < null["lambda_gc"] < 2
    assert set(summary["training"]) >= {"federated", "pooled", "local_mean", "local_best"}
    assert not list(tmp_path.glob(".demo.tmp-*")), "the demo left its temporary folder behind"


def test_demo__existing_output_is_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    completed = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--out", str(out)], capture_output=True, text=True)
    assert completed.returncode == 1
    assert "--force" in completed.stderr
