"""Benchmark: utility of the differentially private linear GWAS against the exact one, at epsilon 1, 3 and 8.

Data: the cohort of ``tests/benchmarks/gwas.py`` (:func:`make_sites`): 3 sites,
``--samples`` in total, ``--variants`` random genotypes (allele frequencies uniform in
0.02..0.5, 1% missing calls), covariates age and sex, a quantitative trait with 20
causal variants of effect 0.15 per allele. By default two cohorts, one table each: a
scan (30,000 samples, 2,000 variants) and a candidate panel (150,000 samples, 100
variants): the noise one person's privacy needs grows like ``sqrt(variants)``, the
standard error shrinks like ``1 / sqrt(samples)``. The job runs in memory with plain sums
(:func:`pipeline.federation.in_memory.run_in_memory`; the noise is the sites' own, the
secure sum would only add time): once exact, then once per epsilon with
``privacy: {epsilon, delta: 1e-6, honest_sites: 2}`` (3 sites, threshold 2, no colluder).
Both use the same spec: ``max_abs_value: 100`` (age is the widest column) and
``max_abs_z: 5``, chosen from the data's description before any run, not tuned.

Each DP job runs ``--repeats`` times (fresh noise each time); per epsilon the table shows
the median over the repeats, with the range in brackets where it matters:

* the per-site sigma of each noisy round (census counts in counts; moments in units of
  ``max_abs_value``; statistics in standardized units), from the job's ``summary["privacy"]``;
* ``median |dbeta|/se``: the median over variants testable in both runs of
  ``|beta_dp - beta_exact| / se_exact``;
* ``se_dp/se``: the median ratio of the DP run's standard error (which includes the
  noise) to the exact one;
* ``hits``: of the exact run's genome-wide hits (p < 5e-8), how many the DP run also calls
  genome-wide; ``false``: DP genome-wide hits that are not exact ones (the most in any repeat);
* ``top20``: overlap of the two runs' 20 smallest p-values;
* ``testable``: variants with an estimate (status OK) in the DP run / in the exact run.

The noise is drawn from each site's secret generator: figures change from run to run.
Run: ``python tests/benchmarks/gwas_privacy.py [--samples N --variants V] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.analyses.gwas import GWAS
from pipeline.federation.in_memory import run_in_memory
from tests.benchmarks.gwas import make_sites

SPEC = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.9,
        "hwe_p": 0.0, "maf": 0.0, "min_allele_count": 5, "max_abs_value": 100.0, "max_abs_z": 5.0}
GENOME_WIDE = 5e-8


def estimates(run) -> dict[str, tuple[float, float, float]]:
    """variant_id -> (beta, se, p) of the variants with status OK."""
    status = run.result.tables["gwas_status"]
    ok = {v for v, s in zip(status.column("variant_id").to_pylist(), status.column("status").to_pylist()) if s == "OK"}
    table = run.result.tables["gwas"]
    rows = zip(table.column("variant_id").to_pylist(), table.column("beta").to_pylist(),
               table.column("standard_error").to_pylist(), table.column("p_value").to_pylist())
    return {v: (b, s, p) for v, b, s, p in rows if v in ok}


def top(values: dict[str, tuple[float, float, float]], count: int) -> set[str]:
    return set(sorted(values, key=lambda v: values[v][2])[:count])


def compare(exact: dict[str, tuple[float, float, float]], noisy: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    common = [v for v in exact if v in noisy]
    shift = np.array([abs(noisy[v][0] - exact[v][0]) / exact[v][1] for v in common])
    widening = np.array([noisy[v][1] / exact[v][1] for v in common])
    hits = {v for v, (_, _, p) in exact.items() if p < GENOME_WIDE}
    called = {v for v, (_, _, p) in noisy.items() if p < GENOME_WIDE}
    return {
        "shift": float(np.median(shift)) if common else float("nan"),
        "widening": float(np.median(widening)) if common else float("nan"),
        "hits": len(hits & called), "exact_hits": len(hits), "false": len(called - hits),
        "top20": len(top(exact, 20) & top(noisy, 20)),
        "testable": len(noisy), "exact_testable": len(exact),
    }


COHORTS = ((30_000, 2_000), (150_000, 100))
"""The default (samples, variants): a scan and a candidate panel."""


def _range(values: list[float], digits: str) -> str:
    """Median [min-max] of the finite values (a repeat with no variant testable in both runs has none)."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return "n/a"
    missing = f", {len(values) - len(finite)} n/a" if len(finite) < len(values) else ""
    return f"{np.median(finite):{digits}} [{min(finite):{digits}}-{max(finite):{digits}}{missing}]"


def benchmark(root: Path, samples: int, variants: int, epsilons: list[float], delta: float, seed: int,
              repeats: int) -> None:
    """Writes one cohort, runs the exact job and one DP job per epsilon, prints the table."""
    started = time.perf_counter()
    sites, _, _ = make_sites(root, samples, variants, seed=seed)
    print(f"\ndata: 3 sites, {samples} samples, {variants} variants, 20 causal (written in "
          f"{time.perf_counter() - started:.1f} s); spec max_abs_value {SPEC['max_abs_value']:g}, max_abs_z "
          f"{SPEC['max_abs_z']:g}, delta {delta:g}, honest_sites 2 of 3", flush=True)
    exact_run = run_in_memory(GWAS, SPEC, sites)
    exact = estimates(exact_run)
    exact_sd = float(exact_run.states[-1][1].inner.moments.sd[-1])
    header = (f"{'epsilon':>7} | {'sigma census':>12} | {'sigma moments':>13} | {'sigma stats':>11} | "
              f"{'median |dbeta|/se':>26} | {'se_dp/se':>8} | {'hits':>13} | {'false':>5} | {'top20':>5} | {'testable':>11}")
    lines = [header, "-" * len(header)]
    notes = []
    for epsilon in epsilons:
        privacy = {"epsilon": epsilon, "delta": delta, "honest_sites": 2}
        figures, sds = [], []
        for _ in range(repeats):
            run = run_in_memory(GWAS, {**SPEC, "privacy": privacy}, sites)
            figures.append(compare(exact, estimates(run)))
            sds.append(float(run.states[-1][1].inner.moments.sd[-1]))
        summary = run.result.summary["privacy"]
        sigma = {r["round"]: r["sigma_real"] for r in summary["rounds"]}

        column = {name: [f[name] for f in figures] for name in figures[0]}
        hits = f"{_range(column['hits'], '.0f')}/{figures[0]['exact_hits']}"
        lines.append(
            f"{epsilon:>7g} | {sigma['counts']:>12.4g} | {sigma['moments']:>13.4g} | {sigma['statistics']:>11.4g} | "
            f"{_range(column['shift'], '.3g'):>26} | {np.nanmedian(column['widening']):>8.3g} | {hits:>13} | "
            f"{max(column['false']):>5} | {np.median(column['top20']):>2.0f}/20 | "
            f"{np.median(column['testable']):>5.0f}/{figures[0]['exact_testable']:<5}")
        notes.append(f"epsilon {epsilon:g}: spent epsilon {summary['epsilon']:.4f} (rho {summary['rho']:.4g} of "
                     f"{summary['rho_budget']:.4g}); phenotype SD used to standardize {_range(sds, '.3g')} "
                     f"(exact {exact_sd:.3g})")
    print("\n".join(lines))
    print("\n".join(notes))
    print(f"cohort wall time {time.perf_counter() - started:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--variants", type=int, default=None)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0, help="the cohort's seed (the noise is secret, never seeded)")
    parser.add_argument("--repeats", type=int, default=5, help="DP jobs per epsilon (fresh noise each)")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    if (args.samples is None) != (args.variants is None):
        parser.error("give both --samples and --variants, or neither (the default cohorts)")
    cohorts = COHORTS if args.samples is None else ((args.samples, args.variants),)
    started = time.perf_counter()
    for index, (samples, variants) in enumerate(cohorts):
        root = (args.keep or Path(tempfile.mkdtemp(prefix="gwas-privacy-bench-"))) / f"cohort{index}"
        root.mkdir(parents=True, exist_ok=True)
        benchmark(root, samples, variants, args.epsilons, args.delta, args.seed, args.repeats)
        if args.keep is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    print(f"\nwall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
