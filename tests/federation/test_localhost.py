"""``genofed federate`` pieces that need no federation: its summary text and its output folder."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.federation import localhost
from tests.federation import runtime_support as rs


def _summary(result: dict) -> dict:
    return {"job_id": "job-20250101-120000-0a1b2c3d", "analysis": result.get("analysis", "census"), "status": "done",
            "seconds": 1.5, "sites": {"a": "a.dataset", "b": "b.dataset"}, "results": "out/results",
            "federation": "out/federation", "summary": result}


def test_summary_text__a_gwas_summary_has_no_total_and_is_shown():
    """A GWAS run ended with KeyError: 'total' (its variant counts are tested/published/ok, not a census's)."""
    gwas = {"analysis": "gwas", "num_samples": 120,
            "variants": {"tested": 30, "published": 28, "ok": 27, "genome_wide_significant": 1, "status": {"ok": 27, "firth": 1}}}
    text = localhost.summary_text(_summary(gwas))
    assert "120 samples; variants: 30 tested, 28 published, 27 ok, 1 genome wide significant" in text


def test_summary_text__a_census_summary_is_unchanged_in_substance():
    census = {"analysis": "census", "num_samples": 95,
              "variants": {"total": 30, "publishable": 25, "with_sites_left_out": 5, "passing": 20, "failing": 10}}
    text = localhost.summary_text(_summary(census))
    assert "95 samples; variants: 30 total, 25 publishable, 5 with sites left out, 20 passing, 10 failing" in text


def test_federate__a_run_that_fails_leaves_no_out_folder_and_keeps_its_logs(tmp_path, monkeypatch):
    datasets = rs.small_datasets(tmp_path, ("a", "b"), num_variants=4, num_samples=6, seed=1)
    spec = {"analysis": "secure_sum", "vector": {"source": "test", "length": 4}}
    out = tmp_path / "run"

    def spawn(arguments, log_path):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("the coordinator could not start\n")
        raise ConfigurationError(f"could not start {arguments[0]}")

    monkeypatch.setattr(localhost, "_spawn", spawn)
    for _ in range(2):  # the second run needs no --force: nothing was left at OUT
        with pytest.raises(ConfigurationError, match="could not start coordinator"):
            localhost.federate(list(datasets.values()), spec, out)
        assert not out.exists()
        assert (tmp_path / "run.failed" / "logs" / "coordinator.log").is_file()
        assert (tmp_path / "run.failed" / "federation").is_dir()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]
