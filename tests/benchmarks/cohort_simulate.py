"""Benchmark: `simulate_cohort` wall time against the simulation alone and tskit's VCF writer.

Times in one process, for the same sizes and seed:

- the stdpopsim/msprime simulation alone (the floor: any generator pays it);
- the simulation plus ``tskit.TreeSequence.write_vcf`` of every individual into one
  plain VCF (the obvious way to get a VCF from a simulation, with none of the quirks,
  no phenotypes, no FASTA, no index);
- ``simulate_cohort`` (all sites, quirks, BGZF/BCF + indexes, FASTA, phenotypes, truth);

and prints seconds, genotypes per second and ratios. Also checks that two runs with the
same seed give identical bytes.

    python tests/benchmarks/cohort_simulate.py [--sites 3] [--samples 1000]
        [--region chr22:16000000-21000000] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

from pipeline.sim.ancestry import ancestry_mix, parse_region, simulate_genotypes, split_counts
from pipeline.sim.cohort import load_manifest, simulate_cohort


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--region", default="chr22:16000000-21000000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="genofed-bench-sim-", dir=args.workdir))
    try:
        interval = parse_region(args.region)
        counts = [split_counts(args.samples, ancestry_mix(i)) for i in range(args.sites)]
        totals = {p: sum(c[p] for c in counts) for p in counts[0]}

        started = time.perf_counter()
        simulation = simulate_genotypes(interval, totals, seed=12345)
        t_simulation = time.perf_counter() - started

        started = time.perf_counter()
        with open(workdir / "tskit.vcf", "w") as handle:
            simulation.tree_sequence.write_vcf(handle, position_transform=lambda x: [int(p) + 1 for p in x])
        t_tskit_vcf = time.perf_counter() - started

        started = time.perf_counter()
        simulate_cohort(
            workdir / "cohort", sites=args.sites, samples=args.samples, region=args.region, seed=args.seed
        )
        t_cohort = time.perf_counter() - started
        manifest = load_manifest(workdir / "cohort")
        simulate_cohort(
            workdir / "again", sites=args.sites, samples=args.samples, region=args.region, seed=args.seed
        )
        identical = _digest(workdir / "cohort") == _digest(workdir / "again")

        genotypes = sum(s.counts["variants"] * s.counts["vcf_samples"] for s in manifest.sites)
        print(f"cohort: {args.sites} sites x {args.samples} samples over {interval}, seed {args.seed}")
        print(f"  variant sites simulated: {simulation.tree_sequence.num_sites}; genotypes written: {genotypes:,}")
        print(f"  simulation alone                 {t_simulation:7.2f} s")
        print(f"  simulation + tskit write_vcf     {t_simulation + t_tskit_vcf:7.2f} s (one plain VCF, no quirks)")
        print(f"  simulate_cohort                  {t_cohort:7.2f} s ({genotypes / t_cohort / 1e6:.1f} M genotypes/s)")
        print(f"  ratio cohort / simulation alone        {t_cohort / t_simulation:5.2f}")
        print(f"  ratio cohort / (simulation + tskit VCF) {t_cohort / (t_simulation + t_tskit_vcf):5.2f}")
        print(f"  same seed, identical bytes: {identical}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
