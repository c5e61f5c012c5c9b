"""Benchmark: `genofed ingest` genotypes per second against plink2 and bcftools, and peak memory.

The site is synthetic by default (``--synthetic 20000x50000``, 1e9 genotypes: written from
per-variant allele frequencies by tests/benchmarks/synthetic_site.py, at a size msprime
cannot simulate in minutes), or simulated with ``--msprime`` (pipeline.sim, 2,000 samples
over chr22:16-20 Mb, about 60,000 variants). Sites are cached in ``--workdir`` (by size,
seed and phasing); generation time is printed apart from every figure. The run times:

- the reader alone (pipeline.io.vcf.read_blocks over the whole file), to attribute time;
- ingest (library call with the FASTA: threads scheduler with 1 and 2 workers, processes with 2);
- ``plink2 --vcf FILE --vcf-half-call m --make-pgen --threads 1`` (if installed);
- ``bcftools query -f '[%GT\\t]\\n' FILE`` (if installed);

and prints wall and CPU seconds (user+sys of this process and its reaped children: CPU is
the steadier figure on a shared machine), genotypes per second, and ratios to plink2; then
where one worker's time goes (decompression, decoding, harmonization, dosages, Parquet
write: a cProfile of one more ingest, skipped with ``--skip breakdown``). Peak
RSS of ingest (1 worker) is measured in a fresh subprocess for two chunk sizes, on the site
and on one half as long (same samples), with the RSS above an import-only process per
sample x variant of the largest chunk: memory should follow the chunk, not the file.

    python tests/benchmarks/ingest.py [--synthetic SAMPLESxVARIANTS | --large | --msprime]
        [--phased] [--seed 1] [--samples 2000] [--region chr22:16000000-20000000]
        [--chunk-size 1Mb] [--small-chunk-size 250kb] [--skip reader,processes,bcftools,breakdown] [--workdir DIR]

On 2 quiet cores the default run from an empty ``--workdir`` took 4 minutes (1.7 of them
generating the two sites; cached reruns skip that).

``--large`` (``--synthetic 50000x200000``, 1e10 genotypes) is long-running: with ``--skip
processes,bcftools,reader,breakdown`` on 2 quiet cores it took 28 minutes from an empty
``--workdir`` (17 generating the two sites, 3.0 GB of VCF.gz; 4.3 GB with plink2's files, plus
one ingest output at a time), and each ingest worker peaked at 0.4 GB (250 kb chunks) to
0.8 GB (1 Mb); the figures are in the README.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.ingest import ingest
from pipeline.io.vcf import read_blocks
from pipeline.sim.cohort import load_manifest, simulate_cohort
from tests.benchmarks.synthetic_site import parse_size, write_synthetic_site

DEFAULT = "20000x50000"
LARGE = "50000x200000"
SKIPPABLE = ("reader", "processes", "bcftools", "breakdown")

# Where one worker's time goes: each stage is the cumulative time of the function that
# does it, under cProfile (which slows Python-level work more than C; the shares are
# the point). A stage's children are counted in it, so the stages do not overlap.
STAGES = (
    ("decompress + split lines", "pipeline/io/vcf.py", "_lines"),
    ("decode genotypes (text -> int8 alleles)", "pipeline/io/vcf.py", "_make_block"),
    ("harmonize (split, trim, REF check)", "pipeline/harmonize/chain.py", "chained"),
    ("alleles -> dosages + variant table", "pipeline/ingest_task.py", "dense_block"),
    ("write Parquet (variants + genotypes)", "pipeline/dataset.py", "write_chunk"),
)

# VmHWM (this process image's high-water RSS) rather than ru_maxrss, which Linux carries
# across exec and would include the benchmark process's own memory at fork time.
_PEAK = """
import json, re, resource, sys
from pathlib import Path
def peak_mb():
    try:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
PEAK_RSS_SCRIPT = _PEAK + """
from pipeline.ingest import ingest
report = ingest(sys.argv[1], out=sys.argv[2], fasta=sys.argv[3], chunk_size=sys.argv[4], scheduler="threads", workers=1)
largest = max(chunk["num_variants"] for chunk in json.loads((Path(sys.argv[2]) / "dataset.json").read_text())["chunks"])
print(json.dumps({"peak_rss_mb": peak_mb(), "largest_chunk": largest}))
"""
BASELINE_RSS_SCRIPT = _PEAK + """
import pipeline.ingest
print(json.dumps({"peak_rss_mb": peak_mb()}))
"""


def _synthetic(workdir: Path, samples: int, variants: int, seed: int, phased: bool) -> tuple[Path, Path, int, int]:
    site = write_synthetic_site(workdir, samples, variants, seed=seed, phased=phased)
    made = f"generated in {site.seconds:.1f} s (not part of any figure below)" if site.seconds else "cached"
    print(f"synthetic site {samples}x{variants} ({'phased' if phased else 'unphased'}, seed {seed}): {made}")
    return site.vcf, site.fasta, variants, samples


def _cohort(workdir: Path, samples: int, region: str) -> tuple[Path, Path, int, int]:
    folder = workdir / f"cohort-{samples}-{region.replace(':', '_')}"
    if not (folder / "cohort.json").is_file():
        simulate_cohort(folder, sites=1, samples=samples, region=region, seed=1, force=True)
    manifest = load_manifest(folder)
    site = manifest.sites[0]
    return manifest.resolve(site.vcf), folder / "reference.fa.gz", site.counts["variants"], samples


def _cpu_seconds() -> float:
    """User + system seconds of this process (all threads) and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _measured(function: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result)."""
    cpu, started = _cpu_seconds(), time.perf_counter()
    result = function()
    return time.perf_counter() - started, _cpu_seconds() - cpu, result


def _shorter(region: str) -> str:
    contig, span = region.split(":")
    start, end = (int(x) for x in span.split("-"))
    return f"{contig}:{start}-{start + (end - start) // 2}"


def _python(script: str, *arguments: str) -> tuple[float, float, dict]:
    wall, cpu, result = _measured(
        lambda: subprocess.run([sys.executable, "-c", script, *arguments], check=True, capture_output=True, text=True)
    )
    return wall, cpu, json.loads(result.stdout.strip().splitlines()[-1])


def _breakdown(vcf: Path, fasta: Path, chunk_size: str, out: Path) -> None:
    """Prints where one worker's time goes (cProfile of a synchronous ingest), by :data:`STAGES`."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    ingest(vcf, out=out, fasta=fasta, chunk_size=chunk_size, scheduler="synchronous", workers=1, force=True)
    profile.disable()
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = max(cumulative for (_, _, name), (_, _, _, cumulative, _) in stats.items() if name == "ingest")
    print(f"\nwhere the time goes (1 worker, synchronous, under cProfile: {total:.2f} s in all)")
    counted = 0.0
    for label, path, function in STAGES:
        seconds = sum(cumulative for (file, _, name), (_, _, _, cumulative, _) in stats.items() if name == function and file.endswith(path))
        counted += seconds
        print(f"  {label:<42} {seconds:6.2f} s {100 * seconds / total:5.1f}%")
    print(f"  {'other (planning, Dask, imports, metadata)':<42} {total - counted:6.2f} s {100 * (total - counted) / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000, help="msprime site only")
    parser.add_argument("--region", default="chr22:16000000-20000000", help="msprime site only")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--synthetic", type=parse_size, default=parse_size(DEFAULT), metavar="SAMPLESxVARIANTS",
                      help=f"synthetic site size (default {DEFAULT})")
    size.add_argument("--large", action="store_const", dest="synthetic", const=parse_size(LARGE), help=f"--synthetic {LARGE} (long)")
    size.add_argument("--msprime", action="store_const", dest="synthetic", const=None, help="simulate the site with msprime")
    parser.add_argument("--phased", action="store_true", help="synthetic site: phased GT (default unphased)")
    parser.add_argument("--seed", type=int, default=1, help="synthetic site seed")
    parser.add_argument("--chunk-size", default="1Mb")
    parser.add_argument("--small-chunk-size", default="250kb", help="second chunk size for the memory figures")
    parser.add_argument("--skip", default="", help=f"comma-separated rows to leave out: {', '.join(SKIPPABLE)}")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    skip = {x for x in args.skip.split(",") if x}
    if skip - set(SKIPPABLE):
        parser.error(f"--skip: unknown {sorted(skip - set(SKIPPABLE))}; choose from {', '.join(SKIPPABLE)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genofed-bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)

    # The half-size site shows that peak memory does not follow the file size.
    if args.synthetic:
        vcf, fasta, records, samples = _synthetic(workdir, *args.synthetic, args.seed, args.phased)
        half = _synthetic(workdir, samples, records // 2, args.seed, args.phased)
    else:
        vcf, fasta, records, samples = _cohort(workdir, args.samples, args.region)
        half = _cohort(workdir, args.samples, _shorter(args.region))
    genotypes = records * samples
    size_mb = vcf.stat().st_size / 1e6
    print(f"input: {vcf} ({records} records x {samples} samples = {genotypes / 1e6:.1f} M genotypes, {size_mb:.1f} MB)")
    rows: list[tuple[str, float, float]] = []

    def add(name: str, function: Callable[[], object]) -> None:
        wall, cpu, _ = _measured(function)
        rows.append((name, wall, cpu))

    if "reader" not in skip:
        add("reader only (read_blocks, 1 thread)", lambda: sum(b.position.shape[0] for b in read_blocks(vcf)))
    for scheduler, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
        if scheduler in skip:
            continue
        out = workdir / f"ingest-{scheduler}-{workers}"
        add(
            f"genofed ingest ({scheduler}, {workers} worker{'s' if workers > 1 else ''})",
            lambda s=scheduler, w=workers, o=out: ingest(vcf, out=o, fasta=fasta, chunk_size=args.chunk_size, scheduler=s, workers=w, force=True),
        )
        shutil.rmtree(out, ignore_errors=True)
    plink2 = "plink2 --make-pgen --threads 1"
    if shutil.which("plink2"):
        prefix = workdir / "plink2"
        command = ["plink2", "--vcf", str(vcf), "--vcf-half-call", "m", "--make-pgen", "--threads", "1", "--out", str(prefix)]
        add(plink2, lambda: subprocess.run(command, check=True, capture_output=True))
    else:
        print("plink2 not installed: skipped")
    if "bcftools" in skip:
        pass
    elif shutil.which("bcftools"):
        command = ["bcftools", "query", "-f", "[%GT\\t]\\n", str(vcf)]
        add("bcftools query GT", lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
    else:
        print("bcftools not installed: skipped")

    baseline = {name: (wall, cpu) for name, wall, cpu in rows}.get(plink2)
    print(f"\n{'tool':<42} {'wall s':>7} {'CPU s':>7} {'Mgeno/s':>8} {'wall vs plink2':>15} {'CPU vs plink2':>14}")
    for name, wall, cpu in rows:
        ratios = f"{baseline[0] / wall:14.2f}x {baseline[1] / cpu:13.2f}x" if baseline else f"{'n/a':>15} {'n/a':>14}"
        print(f"{name:<42} {wall:7.2f} {cpu:7.2f} {genotypes / wall / 1e6:8.1f} {ratios}")

    if "breakdown" not in skip:
        _breakdown(vcf, fasta, args.chunk_size, workdir / "ingest-breakdown")

    _, _, imported = _python(BASELINE_RSS_SCRIPT)
    floor = imported["peak_rss_mb"]
    print(f"\npeak RSS of ingest (1 worker, threads), fresh process each; an import-only process peaks at {floor:.1f} MB")
    print("  B/cell: RSS above the import-only process per sample x variant of the largest chunk")
    print("  CPU/geno vs plink2: plink2's CPU seconds per genotype (full file) over this run's")
    print(f"  {'file':<9} {'records':>8} {'file MB':>8} {'int8 MB':>8} {'chunk':>6} {'largest':>8} {'peak MB':>8} {'B/cell':>7}"
          f" {'wall s':>7} {'CPU s':>7} {'Mgeno/s':>8} {'CPU/geno vs plink2':>19}")
    for label, path, ref, n in (("half", *half[:3]), ("full", vcf, fasta, records)):
        for chunk_size in (args.chunk_size, args.small_chunk_size):
            out = workdir / f"rss-{label}"
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu, peak = _python(PEAK_RSS_SCRIPT, str(path), str(out), str(ref), chunk_size)
            shutil.rmtree(out, ignore_errors=True)
            largest = peak["largest_chunk"]
            per_cell = (peak["peak_rss_mb"] - floor) * 2**20 / (samples * largest)
            dense_mb = n * samples / 2**20  # the whole file's calls as int8
            ratio = f"{baseline[1] / genotypes / (cpu / (n * samples)):18.2f}x" if baseline else f"{'n/a':>19}"
            print(f"  {label:<9} {n:>8} {Path(path).stat().st_size / 1e6:8.1f} {dense_mb:8.0f} {chunk_size:>6} {largest:>8}"
                  f" {peak['peak_rss_mb']:8.1f} {per_cell:7.1f} {wall:7.1f} {cpu:7.1f} {n * samples / wall / 1e6:8.1f} {ratio}")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
