"""Benchmark: membership inference from the census's released allele frequencies, exact vs differentially private.

Data (simulated in numpy, one population, no msprime): ancestral allele frequencies
``p0 ~ Uniform(0.05, 0.95)`` per variant; the population's frequencies drawn from them by
Balding-Nichols with ``--fst`` (default 0.01), ``p ~ Beta(p0 (1 - F) / F, (1 - p0) (1 - F) / F)``;
genotypes ``Binomial(2, p)`` with 1% missing calls (``--missing``), counted as missing
by the census and skipped by the attack. Drawn from ``p``:

- the **pool**: ``--samples`` (default 3,000) people split evenly over ``--sites`` sites,
  whose census is released;
- the attacker's **reference panel**: as many fresh people from the same population
  (the attacker's best case: a panel matched to the pool's ancestry);
- **members**: ``--test`` (default 200) people picked from the pool;
- **non-members**: ``--test`` fresh people to set the decision threshold, and ``--test``
  more to measure its false-positive rate (the two sets are disjoint).

Attack: the likelihood-ratio test of Sankararaman et al. (2009), the optimal form of
Homer et al.'s (2008) test, per test person ``LR = sum_j x_j log(p_hat_j / q_j) +
(2 - x_j) log((1 - p_hat_j) / (1 - q_j))`` over their called genotypes ``x_j``, with
``p_hat`` the released and ``q`` the panel's alt allele frequencies, both clipped to
``[1e-3, 1 - 1e-3]``. A person is called a member when their LR exceeds the 95th
percentile of the calibration non-members' LR; power is the fraction of members called.
Homer's ``D = sum_j |y_j - q_j| - |y_j - p_hat_j|`` (``y = x / 2``) is reported beside it.

Noise (as the DP census): one person moves one of hom-ref, het, hom-alt, missing by 1 at
each of the ``V`` variants and ``n_samples`` by 1
(:func:`pipeline.analyses.census.census_sensitivity`); each site's discrete Gaussian
sigma is :func:`pipeline.privacy.release_noise` for ``(epsilon, --delta)`` with
``honest_sites = --threshold - --max-colluding``, and every one of the ``--sites``
sites adds its own draw (:func:`pipeline.privacy.sample_discrete_gaussian`) to its four
count vectors and its ``n_samples``; only the sums are released. The counts are clipped
at 0 and the frequency is ``(het + 2 hom_alt) / (2 (hom_ref + het + hom_alt))``, skipped
where that denominator is not positive. Frequency error is ``|p_hat - p_exact|`` against
the exact pooled frequency. Each setting is repeated ``--repeats`` times with fresh
populations and noise (mean +- sd over repeats).

Run: ``python tests/benchmarks/membership.py [--samples 3000] [--variants 200 1000 5000]
[--sites 3] [--threshold 2] [--delta 1e-6] [--repeats 5] [--seed 0] [--json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.analyses.census import (  # noqa: E402
    CENSUS,
    COUNT_FIELDS,
    FLAG_FIELD,
    CensusParameters,
    CensusState,
    census_sensitivity,
)
from pipeline.privacy import PrivacyTerms, Spend, release_noise, sample_discrete_gaussian  # noqa: E402

EPSILONS = (math.inf, 8.0, 3.0, 1.0)
"""The releases compared: exact (``inf``), then DP at each epsilon."""

FALSE_POSITIVE_RATE = 0.05
"""The attack's target false-positive rate (its threshold is this upper quantile of non-members)."""

CLIP = 1e-3
"""Frequencies are clipped to ``[CLIP, 1 - CLIP]`` in the attack's log ratios."""

GOAL_EPSILON = 3.0
GOAL_MAX_POWER = FALSE_POSITIVE_RATE + 0.05
GOAL_MAX_MEDIAN_ERROR = 0.01
MISSING = -1


class Cohort(NamedTuple):
    """One simulated draw: genotypes are int8 (people, variants), ``-1`` for a missing call."""

    site_genotypes: list[np.ndarray]
    reference_genotypes: np.ndarray
    member_genotypes: np.ndarray
    calibration_genotypes: np.ndarray
    holdout_genotypes: np.ndarray


def draw_genotypes(rng: np.random.Generator, frequency: np.ndarray, num_people: int, missing: float) -> np.ndarray:
    """``Binomial(2, frequency)`` calls as int8 (people, variants), a ``missing`` fraction set to -1."""
    shape = (num_people, frequency.size)
    calls = (rng.random(shape, dtype=np.float32) < frequency).astype(np.int8)
    calls += (rng.random(shape, dtype=np.float32) < frequency).astype(np.int8)
    if missing > 0:
        calls[rng.random(shape, dtype=np.float32) < missing] = MISSING
    return calls


def simulate(rng: np.random.Generator, *, samples: int, variants: int, sites: int, test: int, fst: float,
             missing: float) -> Cohort:
    """A pool split over ``sites``, a same-size reference panel, members from the pool, and fresh non-members."""
    ancestral = rng.uniform(0.05, 0.95, size=variants)
    scale = (1.0 - fst) / fst
    population = rng.beta(ancestral * scale, (1.0 - ancestral) * scale).astype(np.float32)
    pool = draw_genotypes(rng, population, samples, missing)
    reference = draw_genotypes(rng, population, samples, missing)
    outsiders = draw_genotypes(rng, population, 2 * test, missing)
    members = pool[rng.choice(samples, size=test, replace=False)]
    return Cohort(site_genotypes=np.array_split(pool, sites), reference_genotypes=reference, member_genotypes=members,
                  calibration_genotypes=outsiders[:test], holdout_genotypes=outsiders[test:])


def site_counts(genotypes: np.ndarray) -> np.ndarray:
    """(5, variants) int64: hom-ref, het, hom-alt, missing per variant, and ``n_samples`` in row 4 (column 0)."""
    counts = np.zeros((5, genotypes.shape[1]), np.int64)
    for row, value in enumerate((0, 1, 2, MISSING)):
        counts[row] = np.count_nonzero(genotypes == value, axis=0)
    counts[4, 0] = genotypes.shape[0]
    return counts


def released_frequency(site_count_list: list[np.ndarray], terms: PrivacyTerms | None, rng: np.random.Generator) -> np.ndarray:
    """The published alt allele frequency, through the census's own coordinator step.

    Each site adds discrete Gaussian noise of the census's sigma (``CensusState.noise``,
    from the terms and the number of variants) to its four counts and its sample count;
    the sums go through :meth:`Census.coordinator_step`, which clips and publishes them
    as a real noisy census does; nan where nothing was called.
    """
    variants = site_count_list[0].shape[1]
    parameters = dataclasses.replace(CensusParameters.parse({"min_allele_count": 0}), privacy=terms)
    state = CensusState(parameters, len(site_count_list), tuple(f"1:{i + 1}:A:G" for i in range(variants)))
    noise = state.noise
    total = np.zeros_like(site_count_list[0])
    for counts in site_count_list:
        noisy = counts.copy()
        if noise is not None:
            noisy[:4] += sample_discrete_gaussian(noise.sigma, noisy[:4].shape, rng=rng)
            noisy[4, 0] += int(sample_discrete_gaussian(noise.sigma, 1, rng=rng)[0])
        total += noisy
    sums = {name: total[index] for index, name in enumerate(COUNT_FIELDS)}
    sums["n_samples"] = total[4, :1]
    if noise is None:
        sums[FLAG_FIELD] = np.zeros(variants, np.int64)
    _, _, result = CENSUS.coordinator_step(state, 1, sums, len(site_count_list))
    column = result.tables["census_variants"].column("alt_allele_frequency")
    return column.to_numpy(zero_copy_only=False).astype(np.float64)


def called_frequency(genotypes: np.ndarray) -> np.ndarray:
    """Alt allele frequency over the called genotypes of each variant (nan where none)."""
    called = genotypes != MISSING
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(called, genotypes, 0).sum(axis=0, dtype=np.int64) / (2.0 * called.sum(axis=0))


def likelihood_ratio(genotypes: np.ndarray, released: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Sankararaman's LR per person (rows), over called genotypes and variants with both frequencies known."""
    usable = ~(np.isnan(released) | np.isnan(reference))
    p = np.clip(np.where(usable, released, 0.5), CLIP, 1 - CLIP)
    q = np.clip(np.where(usable, reference, 0.5), CLIP, 1 - CLIP)
    alt_weight = np.where(usable, np.log(p / q), 0.0).astype(np.float32)
    ref_weight = np.where(usable, np.log((1 - p) / (1 - q)), 0.0).astype(np.float32)
    called = genotypes != MISSING
    alt = np.where(called, genotypes, 0).astype(np.float32)
    ref = np.where(called, 2 - genotypes, 0).astype(np.float32)
    return alt @ alt_weight + ref @ ref_weight


def homer_distance(genotypes: np.ndarray, released: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Homer's D per person: sum over called genotypes of ``|y - q| - |y - p_hat|``, ``y = x / 2``."""
    usable = ~(np.isnan(released) | np.isnan(reference))
    p = np.where(usable, released, 0.0).astype(np.float32)
    q = np.where(usable, reference, 0.0).astype(np.float32)
    y = genotypes.astype(np.float32) / 2
    terms = np.abs(y - q) - np.abs(y - p)
    terms[(genotypes == MISSING) | ~usable] = 0.0
    return terms.sum(axis=1)


def attack(statistic: Any, cohort: Cohort, released: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(power, held-out false-positive rate) at the calibration non-members' upper ``FALSE_POSITIVE_RATE`` quantile."""
    threshold = np.quantile(statistic(cohort.calibration_genotypes, released, reference), 1 - FALSE_POSITIVE_RATE)
    power = float(np.mean(statistic(cohort.member_genotypes, released, reference) > threshold))
    false_positive = float(np.mean(statistic(cohort.holdout_genotypes, released, reference) > threshold))
    return power, false_positive


def spend_for(epsilon: float, *, variants: int, delta: float, max_colluding: int, honest_sites: int) -> Spend | None:
    """The DP census's per-site noise and spend for one release of ``variants`` variants (None: exact)."""
    if math.isinf(epsilon):
        return None
    return release_noise(PrivacyTerms(epsilon, delta, max_colluding, honest_sites), census_sensitivity(variants))


def mean_sd(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, float)
    return {"mean": float(np.mean(array)), "sd": float(np.std(array, ddof=1)) if array.size > 1 else 0.0}


def run_variants(args: argparse.Namespace, variants: int) -> dict[str, Any]:
    """Every epsilon for one variant count, over ``args.repeats`` fresh populations."""
    honest_sites = args.threshold - args.max_colluding
    spends = {epsilon: spend_for(epsilon, variants=variants, delta=args.delta, max_colluding=args.max_colluding,
                                 honest_sites=honest_sites) for epsilon in EPSILONS}
    measured: dict[float, dict[str, list[float]]] = {
        epsilon: {"power_lr": [], "fpr_lr": [], "power_homer": [], "fpr_homer": [], "median_error": [], "p90_error": [],
                  "dropped_variants": []} for epsilon in EPSILONS}
    for repeat in range(args.repeats):
        data_rng, noise_rng = (np.random.default_rng(seed) for seed in np.random.SeedSequence([args.seed, variants, repeat]).spawn(2))
        cohort = simulate(data_rng, samples=args.samples, variants=variants, sites=args.sites, test=args.test,
                          fst=args.fst, missing=args.missing)
        counts = [site_counts(genotypes) for genotypes in cohort.site_genotypes]
        reference = called_frequency(cohort.reference_genotypes)
        exact = released_frequency(counts, None, noise_rng)
        for epsilon, spend in spends.items():
            terms = None if spend is None else PrivacyTerms(epsilon, args.delta, args.max_colluding, honest_sites)
            released = exact if spend is None else released_frequency(counts, terms, noise_rng)
            row = measured[epsilon]
            for name, statistic in (("lr", likelihood_ratio), ("homer", homer_distance)):
                power, false_positive = attack(statistic, cohort, released, reference)
                row[f"power_{name}"].append(power)
                row[f"fpr_{name}"].append(false_positive)
            error = np.abs(released - exact)
            error = error[~np.isnan(error)]
            row["median_error"].append(float(np.median(error)))
            row["p90_error"].append(float(np.quantile(error, 0.9)))
            row["dropped_variants"].append(float(variants - error.size))
    rows: list[dict[str, Any]] = []
    for epsilon, spend in spends.items():
        rows.append({
            "epsilon": None if spend is None else epsilon,
            "exact": spend is None,
            "sigma_per_site": None if spend is None else spend.sigma,
            "spend": None if spend is None else {"epsilon": spend.epsilon, "delta": spend.delta, "rho": spend.rho,
                                                 "l2": spend.l2, "l1": spend.l1, "honest_sites": spend.honest_sites},
            **{name: mean_sd(values) for name, values in measured[epsilon].items()},
        })
    goal = next(row for row in rows if row["epsilon"] == GOAL_EPSILON)
    passed_power = goal["power_lr"]["mean"] <= GOAL_MAX_POWER
    passed_error = goal["median_error"]["mean"] < GOAL_MAX_MEDIAN_ERROR
    return {"variants": variants, "rows": rows,
            "goal": {"epsilon": GOAL_EPSILON, "power_lr": goal["power_lr"]["mean"], "max_power": GOAL_MAX_POWER,
                     "median_error": goal["median_error"]["mean"], "max_median_error": GOAL_MAX_MEDIAN_ERROR,
                     "power_ok": passed_power, "error_ok": passed_error, "passed": passed_power and passed_error}}


def print_table(result: dict[str, Any]) -> None:
    print(f"\nV = {result['variants']} variants")
    header = (f"  {'epsilon':>7} | {'sigma/site':>10} | {'spend eps':>9} | {'power LR @5% FPR':>16} | {'FPR held-out':>12} | "
              f"{'power Homer D':>13} | {'median |AF err|':>15} | {'p90 |AF err|':>12}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for row in result["rows"]:
        epsilon = "exact" if row["exact"] else f"{row['epsilon']:g}"
        sigma = "-" if row["exact"] else f"{row['sigma_per_site']:.2f}"
        spend = "inf" if row["exact"] else f"{row['spend']['epsilon']:.3f}"
        power = f"{row['power_lr']['mean']:.3f} +- {row['power_lr']['sd']:.3f}"
        homer = f"{row['power_homer']['mean']:.3f} +- {row['power_homer']['sd']:.3f}"
        print(f"  {epsilon:>7} | {sigma:>10} | {spend:>9} | {power:>16} | {row['fpr_lr']['mean']:>12.3f} | {homer:>13} | "
              f"{row['median_error']['mean']:>15.4f} | {row['p90_error']['mean']:>12.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3000, help="people in the federation's pool (default 3000)")
    parser.add_argument("--variants", type=int, nargs="+", default=[200, 1000, 5000], help="variant counts, one table each")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--threshold", type=int, default=2, help="secure aggregation threshold t")
    parser.add_argument("--max-colluding", type=int, default=0, help="honest_sites = threshold - max_colluding")
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--test", type=int, default=200, help="members, and each of the two non-member sets")
    parser.add_argument("--fst", type=float, default=0.01, help="Balding-Nichols F of the population from the ancestral frequencies")
    parser.add_argument("--missing", type=float, default=0.01, help="fraction of missing calls")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if not 1 <= args.threshold <= args.sites:
        parser.error(f"--threshold must be in [1, --sites = {args.sites}], got {args.threshold}")
    if not 1 <= args.threshold - args.max_colluding:
        parser.error("--threshold - --max-colluding (the honest sites) must be at least 1")
    if args.test > args.samples or args.sites > args.samples:
        parser.error("--samples must be at least --test and --sites")
    if not 0 < args.fst < 1 or not 0 <= args.missing < 1 or args.repeats < 1:
        parser.error("--fst must be in (0, 1), --missing in [0, 1), --repeats at least 1")

    started = time.perf_counter()
    results = [run_variants(args, variants) for variants in args.variants]
    elapsed = time.perf_counter() - started
    parameters = {key: value for key, value in vars(args).items() if key != "json"}
    if args.json:
        print(json.dumps({"parameters": parameters, "honest_sites": args.threshold - args.max_colluding,
                          "false_positive_rate": FALSE_POSITIVE_RATE, "results": results, "seconds": elapsed}, indent=2))
        return
    print(f"membership inference (Sankararaman LR, Homer D) on the census's alt allele frequencies: {args.samples} samples "
          f"over {args.sites} sites, threshold {args.threshold}, honest sites {args.threshold - args.max_colluding}, "
          f"delta {args.delta:g}, Fst {args.fst:g}, {args.missing:.0%} missing; {args.test} members, {args.test} + {args.test} "
          f"non-members; mean +- sd over {args.repeats} repeats")
    for result in results:
        print_table(result)
    print(f"\ngoal at epsilon = {GOAL_EPSILON:g}: power within 5 points of the {FALSE_POSITIVE_RATE:.0%} floor "
          f"(<= {GOAL_MAX_POWER:.2f}) and median |AF error| < {GOAL_MAX_MEDIAN_ERROR} at {args.samples} samples")
    for result in results:
        goal = result["goal"]
        print(f"  V = {result['variants']:>6}: {'PASS' if goal['passed'] else 'FAIL'}  "
              f"(power {goal['power_lr']:.3f} {'ok' if goal['power_ok'] else 'too high'}, "
              f"median |AF error| {goal['median_error']:.4f} {'ok' if goal['error_ok'] else 'too high'})")
    print(f"\n{elapsed:.1f} s")


if __name__ == "__main__":
    main()
