"""Shared fixtures: small simulated cohorts are made once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory):
    """A simulated 3-site cohort (120 samples per site, chr22:16000000-17000000, seed 0).

    Returns the cohort folder; its layout is described in ``pipeline.sim.cohort`` and
    ``cohort.json`` (read it with ``pipeline.sim.load_manifest``).
    """
    from pipeline.sim.cohort import simulate_cohort

    out = tmp_path_factory.mktemp("small-cohort") / "cohort"
    simulate_cohort(out, sites=3, samples=120, region="chr22:16000000-17000000", seed=0)
    return out
