"""Microbenchmark: pipeline.io.vcf.read_blocks against plink2, bcftools and pysam.

Generates a bgzipped, tabix-indexed VCF (default 2,000 samples x 50,000 biallelic
variants, FORMAT=GT, phased and unphased calls, 1% missing), then times in the same
process:

- read_blocks streaming the whole file (region=None), and through the index by regions;
- ``plink2 --vcf FILE --make-pgen --threads 1`` (if installed; ``dosage=DS`` with --ds);
- ``bcftools query -f '[%GT\\t]\\n'`` (if installed);
- the naive pysam loop ``[s['GT'] for s in rec.samples.values()]`` on a subset.

and prints genotypes/second and ratios. Run:
``python tests/benchmarks/vcf_reader.py [--samples 2000] [--variants 50000] [--ds [--imputed]]``
(``--imputed``: FORMAT GT:DS:HDS:GP, the layout imputation servers write).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pysam

from pipeline.io.vcf import open_vcf, read_blocks


def write_vcf(path: Path, samples: int, variants: int, *, with_ds: bool, seed: int = 0, imputed: bool = False) -> Path:
    """Writes a random VCF.gz (+ .tbi) with numpy-built text; returns the .vcf.gz path."""
    rng = np.random.default_rng(seed)
    header = [
        "##fileformat=VCFv4.2",
        "##contig=<ID=chr22,length=51000000>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    ]
    if with_ds:
        header.append('##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">')
    if imputed:
        header.append('##FORMAT=<ID=HDS,Number=.,Type=Float,Description="Haploid dosages">')
        header.append('##FORMAT=<ID=GP,Number=G,Type=Float,Description="Genotype probabilities">')
    header.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(f"S{i}" for i in range(samples)))
    positions = np.sort(rng.choice(np.arange(16_000_000, 50_000_000), size=variants, replace=False))
    bases = np.array(list("ACGT"))
    plain = path.with_suffix("")
    with open(plain, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode())
        for start in range(0, variants, 1000):
            stop = min(start + 1000, variants)
            freq = rng.uniform(0.01, 0.5, size=(stop - start, 1))
            alleles = (rng.random((stop - start, samples, 2)) < freq[:, :, None]).astype(np.uint8) + ord("0")
            missing = rng.random((stop - start, samples)) < 0.01
            alleles[missing] = ord(".")
            phased = rng.random((stop - start, 1)) < 0.5
            cells = np.empty((stop - start, samples, 4), dtype=np.uint8)
            cells[:, :, 0] = alleles[:, :, 0]
            cells[:, :, 1] = np.where(phased, ord("|"), ord("/"))
            cells[:, :, 2] = alleles[:, :, 1]
            cells[:, :, 3] = ord("\t")
            for k in range(stop - start):
                i = start + k
                ref, alt = rng.choice(4, size=2, replace=False)
                fmt = ("GT:DS:HDS:GP" if imputed else "GT:DS") if with_ds else "GT"
                prefix = f"chr22\t{positions[i]}\trs{i}\t{bases[ref]}\t{bases[alt]}\t.\tPASS\t.\t{fmt}\t".encode()
                if with_ds:
                    ds = np.char.mod("%.3f", np.clip((alleles[k] == ord("1")).sum(axis=1) + rng.uniform(-0.2, 0.2, samples), 0, 2))
                    extra = ":0.500,0.500:0.250,0.500,0.250" if imputed else ""  # as minimac4 writes them (values immaterial here)
                    row = "\t".join(f"{c[:3].tobytes().decode()}:{d}{extra}" for c, d in zip(cells[k], ds, strict=True)).encode()
                    handle.write(prefix + row + b"\n")
                else:
                    row = cells[k].tobytes()
                    handle.write(prefix + row[:-1] + b"\n")
    compressed = path
    pysam.tabix_compress(str(plain), str(compressed), force=True)
    pysam.tabix_index(str(compressed), preset="vcf", force=True)
    plain.unlink()
    return compressed


def time_call(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def consume_stream(path: Path) -> int:
    total = 0
    for block in read_blocks(path, max_records=2000):
        total += block.allele_index.shape[0] * block.allele_index.shape[1]
    return total


def consume_regions(path: Path) -> int:
    total = 0
    for region in open_vcf(path).regions(5_000_000):
        for block in read_blocks(path, region, max_records=2000):
            total += block.allele_index.shape[0] * block.allele_index.shape[1]
    return total


def naive_pysam(path: Path, records: int) -> int:
    total = 0
    with pysam.VariantFile(str(path)) as handle:
        for count, record in enumerate(handle):
            if count == records:
                break
            calls = [sample["GT"] for sample in record.samples.values()]
            total += len(calls)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--variants", type=int, default=50_000)
    parser.add_argument("--ds", action="store_true", help="add FORMAT/DS (GT:DS)")
    parser.add_argument("--imputed", action="store_true", help="with --ds: FORMAT GT:DS:HDS:GP, as imputation servers write it")
    parser.add_argument("--naive-records", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.vcf.gz"
        start = time.perf_counter()
        write_vcf(path, args.samples, args.variants, with_ds=args.ds, imputed=args.imputed)
        genotypes = args.samples * args.variants
        print(f"generated {args.variants} variants x {args.samples} samples ({os.path.getsize(path) / 1e6:.1f} MB bgzipped) in {time.perf_counter() - start:.1f} s")
        results: dict[str, float] = {}
        results["read_blocks (stream)"] = time_call(lambda: consume_stream(path))
        results["read_blocks (regions)"] = time_call(lambda: consume_regions(path))
        if shutil.which("plink2"):
            out = Path(folder) / "plink"
            vcf_argument = [str(path), "dosage=DS"] if args.ds else [str(path)]  # with --ds, plink2 imports the dosages too
            command = ["plink2", "--vcf", *vcf_argument, "--make-pgen", "--threads", "1", "--allow-extra-chr", "--out", str(out)]
            results["plink2 --make-pgen --threads 1"] = time_call(lambda: subprocess.run(command, check=True, capture_output=True))
        if shutil.which("bcftools"):
            command = ["bcftools", "query", "-f", "[%GT\\t]\\n", str(path)]
            results["bcftools query [%GT]"] = time_call(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
        naive_records = min(args.naive_records, args.variants)
        naive_seconds = time_call(lambda: naive_pysam(path, naive_records))
        results["naive pysam rec.samples GT (extrapolated)"] = naive_seconds * args.variants / naive_records
        reference = results["read_blocks (stream)"]
        print(f"{'method':45s} {'seconds':>9s} {'Mgenotypes/s':>13s} {'time / read_blocks':>19s}")
        for name, seconds in results.items():
            print(f"{name:45s} {seconds:9.2f} {genotypes / seconds / 1e6:13.1f} {seconds / reference:19.2f}")


if __name__ == "__main__":
    main()
