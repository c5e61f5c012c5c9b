"""Realistic simulated multi-site cohorts (stdpopsim/msprime) for the demo, tests and benchmarks.

``simulate_cohort`` writes one folder per site with the quirks real consortia meet;
``load_manifest`` reads back what it wrote (``cohort.json``).
"""

from pipeline.sim.ancestry import GenomicInterval, parse_region
from pipeline.sim.cohort import CohortManifest, SiteManifest, load_manifest, simulate_cohort

__all__ = ["CohortManifest", "GenomicInterval", "SiteManifest", "load_manifest", "parse_region", "simulate_cohort"]
