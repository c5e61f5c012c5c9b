"""Benchmark: federated linear GWAS through the real runtime against plink2 --glm on pooled data.

Data: 3 sites, ``--samples`` in total (default 10,002), ``--variants`` (default 100,000)
random genotypes with per-variant allele frequencies and 1% missing calls, covariates age
and sex, a quantitative trait with 20 causal variants. Timed in this one run:

1. **federated**: ``genofed federate`` (coordinator and 3 site agents as processes, mutual
   TLS, secure aggregation in Z_2^64): census rounds (QC filter) + moments + the
   per-variant statistics round; wall time from job submission to results written.
   Then on **warm agents**: a running federation (coordinator and 3 ``genofed site run``
   processes) that has run a secure sum first; the GWAS submitted twice (a first job of
   its shapes, then the same again), each timed from submission to done.
2. **no secure aggregation**: the same analysis and JAX kernels in one process with plain
   sums (:func:`pipeline.federation.in_memory.run_in_memory`), sites one after another; and
   the same through the secure-aggregation protocol in memory: their ratio is the cost of
   privacy (the federated run also has its sites in parallel processes and TLS).
3. **plink2**: ``plink2 --bfile pooled --glm hide-covar`` on the pooled data (skipped when
   plink2 is not installed); writing its input is not timed.

With ``--phenotypes N`` only the cost of extra phenotypes is timed: the same data with
N - 1 more quantitative traits (``quant_trait_2``.., no missing values, so they share the
first one's regression pass) and ``quant_trait_gappy`` (10% missing: a pass of its own);
one job of ``quant_trait`` against one of all N, and one of ``[quant_trait,
quant_trait_gappy]``, each in memory through the secure-aggregation protocol, then one
against N through ``genofed federate``. It prints each extra phenotype's cost as a
fraction of the one-phenotype job (the whole job, and its regression phase alone: the
census is shared and would flatter the first); the goal is <= 0.3.

Run: ``python tests/benchmarks/gwas.py [--samples 10002] [--variants 100000] [--phenotypes N]``.
The three federated parties and plink2 share this machine's cores (and whoever else uses
them), so the federated time includes three sites computing on the same CPUs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.analyses.gwas import GWAS  # noqa: E402
from pipeline.federation.in_memory import run_in_memory  # noqa: E402
from pipeline.federation.localhost import federate, local_federation  # noqa: E402
from tests.analyses import gwas_support  # noqa: E402
from tests.analyses.gwas_support import write_phenotypes  # noqa: E402
from tests.benchmarks.audit_times import event_clock, stage_split  # noqa: E402
from tests.federation import runtime_support as rs  # noqa: E402

SPEC = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.9,
        "hwe_p": 0.0, "maf": 0.0, "min_allele_count": 5, "stage_timeout": 600}


def make_sites(root: Path, samples: int, variants: int, seed: int = 0,
               phenotypes: int = 1) -> tuple[dict[str, Path], np.ndarray, dict[str, np.ndarray]]:
    """Writes 3 site datasets; returns them, the pooled (variants x samples) calls and phenotypes.

    With ``phenotypes`` > 1 the sites also hold ``quant_trait_2``.. (complete) and ``quant_trait_gappy`` (10% missing).
    """
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.02, 0.5, size=(variants, 1)).astype(np.float32)
    calls = (rng.random((variants, samples), dtype=np.float32) < frequency).astype(np.int8)
    calls += (rng.random((variants, samples), dtype=np.float32) < frequency).astype(np.int8)
    calls[rng.random((variants, samples), dtype=np.float32) < 0.01] = -1
    age = rng.normal(55, 10, samples).round()
    sex = rng.integers(1, 3, samples).astype(np.float64)
    causal = rng.choice(variants, 20, replace=False)
    genetic = (np.where(calls[causal] >= 0, calls[causal], 0) * 0.15).sum(axis=0)
    quant = 0.02 * age - 0.3 * sex + genetic + rng.normal(0, 1, samples)
    traits = {"quant_trait": quant}
    if phenotypes > 1:
        traits.update((f"quant_trait_{i}", 0.5 * genetic + rng.normal(0, 1, samples)) for i in range(2, phenotypes + 1))
        traits["quant_trait_gappy"] = np.where(rng.random(samples) < 0.1, np.nan, genetic + rng.normal(0, 1, samples))
    ids = rs.variant_ids(range(1000, 1000 + 10 * variants, 10))
    sizes = [samples // 3, samples // 3, samples - 2 * (samples // 3)]
    sites, start = {}, 0
    for index, size in enumerate(sizes):
        part = slice(start, start + size)
        path = rs.write_dataset(root / f"site{index + 1}", ids, calls[:, part], sample_prefix=f"s{index + 1}-", chunk_size=10_000)
        write_phenotypes(path, {"age": age[part], "sex": sex[part], **{name: y[part] for name, y in traits.items()}})
        sites[f"site-{index + 1}"] = path
        start += size
    return sites, calls, {"age": age, "sex": sex, "quant_trait": quant}


def write_bed(root: Path, calls: np.ndarray, phenotypes: dict[str, np.ndarray]) -> Path:
    """PLINK 1 binary fileset of the pooled calls (bim: ALT as A1, REF as A2), and its phenotype file."""
    variants, samples = calls.shape
    ids = rs.variant_ids(range(1000, 1000 + 10 * variants, 10))
    prefix = gwas_support.write_bed(root / "pooled", calls, list(ids), [f"p{i}" for i in range(samples)])
    lines = ["#FID\tIID\tquant_trait\tage\tsex"] + [
        f"p{i}\tp{i}\t{phenotypes['quant_trait'][i]:.17g}\t{phenotypes['age'][i]:g}\t{phenotypes['sex'][i]:g}" for i in range(samples)
    ]
    (root / "pheno.tsv").write_text("\n".join(lines) + "\n")
    return prefix


def run_plink2(prefix: Path) -> tuple[float, dict[str, tuple[float, float]]]:
    arguments = ["plink2", "--bfile", str(prefix), "--pheno", f"{prefix.parent}/pheno.tsv", "--pheno-name", "quant_trait",
                 "--covar", f"{prefix.parent}/pheno.tsv", "--covar-name", "age,sex", "--glm", "hide-covar",
                 "--out", str(prefix.parent / "plink2")]
    started = time.perf_counter()
    done = subprocess.run(arguments, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"plink2 failed:\n{done.stdout}\n{done.stderr}")
    out = prefix.parent / "plink2.quant_trait.glm.linear"
    header, *body = out.read_text().splitlines()
    names = header.lstrip("#").split("\t")
    rows = {}
    for line in body:
        row = dict(zip(names, line.split("\t")))
        if row["BETA"] != "NA":
            sign = 1.0 if row["A1"] == "G" else -1.0
            rows[row["ID"]] = (sign * float(row["BETA"]), float(row["P"]))
    return seconds, rows


WARM_UP = {"analysis": "secure_sum", "vector": {"source": "test", "length": 1000}}
"""A job the agents run before the timed ones: they have started, imported and run secure aggregation, as
long-running deployed agents have; nothing about the GWAS (its data, shapes or kernels) is warm."""


def warm_jobs(sites: dict[str, Path], work: Path) -> list[tuple[float, str]]:
    """The GWAS twice on one running federation (coordinator and 3 ``genofed site run`` processes) after
    :data:`WARM_UP`: the first is a warm agent's first job of these shapes (JAX compiles included), the second
    the same job again (kernels compiled). Returns each job's wall time from submission to done, and the
    job's ID (its entries in ``work``'s audit log)."""
    spec = {"analysis": "gwas", **SPEC}
    timings = []
    with local_federation(work, list(sites.values()), analyses=("gwas", "secure_sum"), once=False) as running:
        running.run_job(WARM_UP, timeout=600)
        for _ in range(2):
            started = time.perf_counter()
            job_id, _ = running.run_job(spec, timeout=3600)
            timings.append((time.perf_counter() - started, job_id))
    return timings


def phase_split(run: Path, job_id: str | None = None) -> str:
    """Job time by phase from the coordinator's audit log (census = rounds 0-1, regression = the rest)."""
    when = event_clock(run, job_id)

    submitted, regression, done = when("job.submitted"), when("round.opened", round=2), when("job.done")
    return f"job: census phase {regression - submitted:.1f} s (with a cold run, the sites' start-up), regression phase {done - regression:.1f} s"


REPEATS = 3
"""In-memory runs per configuration in the phenotype comparison; the fastest counts."""


def timed_in_memory(sites: dict[str, Path], spec: dict) -> tuple[float, float]:
    """(whole job, regression phase) seconds of one secure in-memory run."""
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    run_in_memory(GWAS, spec, sites, secure=True, seed=0, on_round=lambda index, state: marks.append((time.perf_counter(), state.phase)))
    done = time.perf_counter()
    regression = next(t for t, phase in marks if GWAS.phases[phase].name == "gwas")
    return done - started, done - regression


def phenotype_costs(sites: dict[str, Path], count: int, root: Path) -> None:
    """Times one phenotype against ``count`` (shared pass) and against two with different missingness (module docstring)."""
    plain = {k: v for k, v in SPEC.items() if k not in ("stage_timeout", "phenotype")}
    many = ["quant_trait", *(f"quant_trait_{i}" for i in range(2, count + 1))]
    specs = {"one": {**plain, "phenotype": "quant_trait"}, f"{count} (shared pass)": {**plain, "phenotypes": many},
             "2 (own passes)": {**plain, "phenotypes": ["quant_trait", "quant_trait_gappy"]}}
    run_in_memory(GWAS, specs["one"], sites)  # warm-up: JAX compiles the kernels' shapes once, untimed
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in specs}
    for _ in range(REPEATS):  # interleaved, so a busy moment of the machine does not fall on one configuration only
        for label, spec in specs.items():
            runs[label].append(timed_in_memory(sites, spec))
    times = {label: min(values) for label, values in runs.items()}
    (whole, regression), extra = times["one"], {f"{count} (shared pass)": count - 1, "2 (own passes)": 1}
    print(f"in memory, secure sums, best of {REPEATS}: one phenotype {whole:.2f} s (regression phase {regression:.2f} s)", flush=True)
    for label, (seconds, phase) in list(times.items())[1:]:
        print(f"  {label}: {seconds:.2f} s (regression {phase:.2f} s); each extra phenotype costs "
              f"{(seconds - whole) / extra[label] / whole:.3f}x the one-phenotype job, "
              f"{(phase - regression) / extra[label] / regression:.3f}x its regression phase", flush=True)
    federated = {}
    for label, spec in list(specs.items())[:2]:
        started = time.perf_counter()
        federate(list(sites.values()), {"analysis": "gwas", **spec, "stage_timeout": 600}, root / f"run-{len(federated)}",
                 timeout=3600, force=True)
        federated[label] = time.perf_counter() - started
    one, several = federated.values()
    print(f"genofed federate: one phenotype {one:.1f} s, {count} phenotypes {several:.1f} s; each extra phenotype costs "
          f"{(several - one) / (count - 1) / one:.3f}x the one-phenotype job", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_002)
    parser.add_argument("--variants", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    parser.add_argument("--phenotypes", type=int, default=1, help="N > 1: time N phenotypes against one, nothing else")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gwas-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sites, calls, phenotypes = make_sites(root, args.samples, args.variants, phenotypes=args.phenotypes)
    print(f"data: 3 sites, {args.samples} samples, {args.variants} variants, 2 covariates "
          f"(written in {time.perf_counter() - started:.1f} s)", flush=True)
    if args.phenotypes > 1:
        phenotype_costs(sites, args.phenotypes, root)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
        return

    started = time.perf_counter()
    summary = federate(list(sites.values()), {"analysis": "gwas", **SPEC}, root / "run", timeout=3600, force=True)
    federated = time.perf_counter() - started
    job_seconds = float(summary["seconds"])
    print(f"federated (genofed federate, secure aggregation, Z_2^64): {federated:.1f} s total, {job_seconds:.1f} s "
          f"from process start to results; {phase_split(root / 'run')}", flush=True)
    print("per stage (coordinator's audit log):", *stage_split(root / "run"), sep="\n", flush=True)
    warm = warm_jobs(sites, root / "warm")
    for (seconds, job_id), label in zip(warm, ("warm agents, first job of these shapes", "warm agents, the same job again")):
        print(f"federated, {label}: {seconds:.1f} s from submission to done; {phase_split(root / 'warm', job_id)}", flush=True)
        print("per stage:", *stage_split(root / "warm", job_id), sep="\n", flush=True)

    plain_spec = {k: v for k, v in SPEC.items() if k != "stage_timeout"}
    run_in_memory(GWAS, plain_spec, sites)  # warm-up: JAX compiles the kernels' shapes once, untimed
    marks: list[tuple[float, int]] = []
    started = time.perf_counter()
    plain = run_in_memory(GWAS, plain_spec, sites, on_round=lambda index, state: marks.append((time.perf_counter(), state.phase)))
    in_memory = time.perf_counter() - started
    ends = [t for t, _ in marks[1:]] + [started + in_memory]
    per_phase: dict[str, float] = {}
    for (begin, phase), end in zip(marks, ends):
        name = GWAS.phases[phase].name
        per_phase[name] = per_phase.get(name, 0.0) + end - begin
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in per_phase.items())
    print(f"same JAX kernels, plain sums, one process (sites one after another): {in_memory:.1f} s ({split})", flush=True)
    started = time.perf_counter()
    run_in_memory(GWAS, plain_spec, sites, secure=True, seed=0)
    secure_in_memory = time.perf_counter() - started
    print(f"same, through the secure-aggregation protocol in memory (encoding, ChaCha20 masks, Shamir shares, "
          f"unmasking): {secure_in_memory:.1f} s", flush=True)
    print(f"cost of privacy: secure / plain sums {secure_in_memory / in_memory:.2f}x; the whole federated runtime "
          f"(parallel site processes, TLS) / plain sums, sites one after another {federated / in_memory:.2f}x", flush=True)

    table = plain.result.tables["gwas"]
    ours = dict(zip(table.column("variant_id").to_pylist(), zip(table.column("beta").to_pylist(), table.column("p_value").to_pylist())))
    if shutil.which("plink2") is None:
        print("plink2: not installed, no comparison")
        return
    prefix = write_bed(root, calls, phenotypes)
    plink_seconds, reference = run_plink2(prefix)
    print(f"plink2 --glm on the pooled data: {plink_seconds:.1f} s", flush=True)
    print(f"ratio federated / plink2: cold {federated / plink_seconds:.2f}x, warm agents {warm[0][0] / plink_seconds:.2f}x "
          f"(again {warm[1][0] / plink_seconds:.2f}x); plain kernels / plink2: {in_memory / plink_seconds:.2f}x")
    common = [v for v in ours if v in reference and ours[v][0] is not None]
    beta_error = max(abs(ours[v][0] - reference[v][0]) / max(abs(reference[v][0]), 1e-12) for v in common)
    p_error = max(abs(np.log10(ours[v][1]) - np.log10(reference[v][1])) for v in common)
    print(f"agreement with plink2 over {len(common)} variants: beta max relative difference {beta_error:.2e}, "
          f"-log10 p max absolute difference {p_error:.2e}")
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
