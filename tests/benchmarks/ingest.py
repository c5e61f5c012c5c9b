"""Benchmark: `genofed ingest` genotypes per second against plink2 and bcftools, and peak memory.

Simulates one site (pipeline.sim, default 2,000 samples over chr22:16-20 Mb, about 60,000
variants), then times in the same run:

- ingest (library call with the FASTA: threads scheduler with 1 and 2 workers, processes with 2);
- the reader alone (pipeline.io.vcf.read_blocks over the whole file), to attribute time;
- ``plink2 --vcf FILE --vcf-half-call m --make-pgen --threads 1`` (if installed);
- ``bcftools query -f '[%GT\\t]\\n' FILE`` (if installed);

and prints genotypes/second and ratios. Peak RSS of ingest (1 worker) is measured in a
fresh subprocess for the full region and for a region half as long, with the same chunk
size, to show that memory follows the chunk size and not the file size.

    python tests/benchmarks/ingest.py [--samples 2000] [--region chr22:16000000-20000000]
        [--chunk-size 1Mb] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.ingest import ingest
from pipeline.io.vcf import read_blocks
from pipeline.sim.cohort import load_manifest, simulate_cohort

# VmHWM (this process image's high-water RSS) rather than ru_maxrss, which Linux carries
# across exec and would include the benchmark process's own memory at fork time.
PEAK_RSS_SCRIPT = """
import json, re, resource, sys
from pipeline.ingest import ingest
report = ingest(sys.argv[1], out=sys.argv[2], fasta=sys.argv[3], chunk_size=sys.argv[4], scheduler="threads", workers=1)
try:
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
except (OSError, AttributeError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_rss_mb": peak, "variants": report["variants_written"]}))
"""


def _cohort(workdir: Path, samples: int, region: str) -> tuple[Path, Path, int, int]:
    folder = workdir / f"cohort-{samples}-{region.replace(':', '_')}"
    if not (folder / "cohort.json").is_file():
        simulate_cohort(folder, sites=1, samples=samples, region=region, seed=1, force=True)
    manifest = load_manifest(folder)
    site = manifest.sites[0]
    return manifest.resolve(site.vcf), folder / "reference.fa.gz", site.counts["variants"], samples


def _timed(function) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def _shorter(region: str) -> str:
    contig, span = region.split(":")
    start, end = (int(x) for x in span.split("-"))
    return f"{contig}:{start}-{start + (end - start) // 2}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--region", default="chr22:16000000-20000000")
    parser.add_argument("--chunk-size", default="1Mb")
    parser.add_argument("--small-chunk-size", default="250kb", help="second chunk size for the memory figures")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genofed-bench-ingest-"))
    workdir.mkdir(parents=True, exist_ok=True)

    vcf, fasta, records, samples = _cohort(workdir, args.samples, args.region)
    genotypes = records * samples
    print(f"input: {vcf} ({records} records x {samples} samples = {genotypes / 1e6:.1f} M genotypes)")
    rows: list[tuple[str, float]] = []

    seconds, _ = _timed(lambda: sum(b.position.shape[0] for b in read_blocks(vcf)))
    rows.append(("reader only (read_blocks, 1 thread)", seconds))
    for scheduler, workers in (("threads", 1), ("threads", 2), ("processes", 2)):
        out = workdir / f"ingest-{scheduler}-{workers}"
        seconds, _ = _timed(
            lambda s=scheduler, w=workers, o=out: ingest(vcf, out=o, fasta=fasta, chunk_size=args.chunk_size, scheduler=s, workers=w, force=True)
        )
        rows.append((f"genofed ingest ({scheduler}, {workers} worker{'s' if workers > 1 else ''})", seconds))
    if shutil.which("plink2"):
        prefix = workdir / "plink2"
        command = ["plink2", "--vcf", str(vcf), "--vcf-half-call", "m", "--make-pgen", "--threads", "1", "--out", str(prefix)]
        seconds, _ = _timed(lambda: subprocess.run(command, check=True, capture_output=True))
        rows.append(("plink2 --make-pgen --threads 1", seconds))
    else:
        print("plink2 not installed: skipped")
    if shutil.which("bcftools"):
        command = ["bcftools", "query", "-f", "[%GT\\t]\\n", str(vcf)]
        seconds, _ = _timed(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
        rows.append(("bcftools query GT", seconds))
    else:
        print("bcftools not installed: skipped")

    baseline = dict(rows).get("plink2 --make-pgen --threads 1")
    print(f"\n{'tool':<42} {'seconds':>8} {'Mgeno/s':>8} {'vs plink2':>10}")
    for name, seconds in rows:
        rate = genotypes / seconds / 1e6
        ratio = f"{baseline / seconds:.2f}x" if baseline else "n/a"
        print(f"{name:<42} {seconds:8.2f} {rate:8.1f} {ratio:>10}")

    print("\npeak RSS of ingest (1 worker), fresh process each:")
    small_vcf, small_fasta, small_records, _ = _cohort(workdir, args.samples, _shorter(args.region))
    for label, path, ref, n in (("half region", small_vcf, small_fasta, small_records), ("full region", vcf, fasta, records)):
        for chunk_size in (args.chunk_size, args.small_chunk_size):
            out = workdir / f"rss-{label.replace(' ', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            result = subprocess.run(
                [sys.executable, "-c", PEAK_RSS_SCRIPT, str(path), str(out), str(ref), chunk_size], check=True, capture_output=True, text=True
            )
            peak = json.loads(result.stdout.strip().splitlines()[-1])
            size_mb = Path(path).stat().st_size / 1e6
            print(f"  {label:<12} {n:>7} records, file {size_mb:6.1f} MB, chunk {chunk_size:>6}: peak RSS {peak['peak_rss_mb']:7.1f} MB")
    print(f"\nworkdir: {workdir}")


if __name__ == "__main__":
    main()
