"""A synthetic site at biobank size, written fast: GT-only VCF (bgzipped, tabix) and its FASTA.

msprime cannot simulate 20,000 x 50,000 in minutes; the ingest benchmark needs only
realistic-looking input, not population structure. Allele frequencies come from a folded
Beta(0.3, 0.3) (U-shaped, as in real panels) truncated to MAF >= 0.001, the ALT allele the
minor one half the time; calls are Hardy-Weinberg draws with a few missing and
half-missing. Text is encoded and compressed by the simulator's writers
(pipeline.sim.writers); REF bases are the FASTA's, so ingest's REF check runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy import special

from pipeline.sim import writers
from pipeline.sim.quirks import add_missing_calls

# Variants every SPACING bases on average (a 1 Mb chunk holds about 10,000), split over CONTIGS.
SYNTHETIC_CONTIGS = ("chr21", "chr22")
SYNTHETIC_SPACING = 100
MIN_MAF = 0.001
BETA_SHAPE = 0.3
MISSING_RATE = 0.005
HALF_MISSING_RATE = 0.0005
CELLS_PER_WRITE = 20_000_000  # genotypes generated per write (about 0.4 GB of numpy temporaries)
MAX_VARIANTS_PER_WRITE = 1000
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)
_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


@dataclass(frozen=True)
class SyntheticSite:
    """Paths and size of a generated site; ``seconds`` is its generation time (0 if cached)."""

    vcf: Path
    fasta: Path
    samples: int
    variants: int
    seconds: float


@dataclass(frozen=True)
class _Variants:
    """Per-variant columns of a synthetic site (small: a few bytes per variant)."""

    contig: np.ndarray  # int, index into SYNTHETIC_CONTIGS
    position: np.ndarray
    ref: np.ndarray  # uint8 ASCII base
    alt: np.ndarray
    alt_frequency: np.ndarray


def parse_size(value: str) -> tuple[int, int]:
    """``"20000x50000"`` -> (samples, variants)."""
    try:
        samples, variants = (int(x) for x in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SAMPLESxVARIANTS (e.g. 20000x50000), got {value!r}") from None
    if samples < 1 or variants < 1:
        raise argparse.ArgumentTypeError(f"samples and variants must be positive, got {value!r}")
    return samples, variants


@functools.lru_cache(maxsize=4)
def _variants(variants: int, seed: int) -> _Variants:
    rng = np.random.default_rng([seed, 0])
    contig = np.arange(variants) * len(SYNTHETIC_CONTIGS) // variants
    rank = np.arange(variants) - np.searchsorted(contig, contig)  # index within its contig
    # Strictly increasing within a contig: one position in each SPACING-base window.
    position = 1 + SYNTHETIC_SPACING * rank + rng.integers(0, SYNTHETIC_SPACING, variants)
    ref = rng.integers(0, 4, variants)
    alt = (ref + rng.integers(1, 4, variants)) % 4
    # Inverse CDF of the Beta truncated to [MIN_MAF, 0.5] (by symmetry, the folded one).
    low = special.betainc(BETA_SHAPE, BETA_SHAPE, MIN_MAF)
    maf = special.betaincinv(BETA_SHAPE, BETA_SHAPE, rng.uniform(low, 0.5, variants))
    alt_frequency = np.where(rng.random(variants) < 0.5, maf, 1 - maf)
    return _Variants(contig, position, _BASES[ref], _BASES[alt], alt_frequency)


def _batches(samples: int, variants: int, seed: int) -> list[tuple[int, int]]:
    """(start, stop) variant slices, within one contig, of at most CELLS_PER_WRITE genotypes."""
    per_write = max(1, min(MAX_VARIANTS_PER_WRITE, CELLS_PER_WRITE // samples))
    contig = _variants(variants, seed).contig
    bounds = np.flatnonzero(np.diff(contig)) + 1
    out = []
    for start, stop in zip([0, *bounds.tolist()], [*bounds.tolist(), variants]):
        out.extend((s, min(s + per_write, stop)) for s in range(start, stop, per_write))
    return out


def synthetic_alleles(samples: int, variants: int, seed: int, batch: int) -> np.ndarray:
    """int8 (batch variants, samples, 2) allele indexes (-1 missing) of write batch ``batch``.

    Each batch has its own random stream, so batches can be written in any order or process.
    """
    start, stop = _batches(samples, variants, seed)[batch]
    rng = np.random.default_rng([seed, 1, batch])
    # Hardy-Weinberg: two independent alleles per call; 16-bit uniforms against the
    # frequency are an order of magnitude faster than rng.binomial.
    uniform = np.frombuffer(rng.bytes((stop - start) * samples * 4), dtype=np.uint16).reshape(stop - start, samples, 2)
    threshold = np.round(_variants(variants, seed).alt_frequency[start:stop] * 65536).astype(np.uint16)
    allele = (uniform < threshold[:, None, None]).view(np.int8)
    return add_missing_calls(allele, missing_rate=MISSING_RATE, half_missing_rate=HALF_MISSING_RATE, rng=rng)


def synthetic_calls(samples: int, variants: int, seed: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(variant IDs ``contig:pos:REF:ALT``, int8 (variants, samples) ALT dosage, -1 missing) per batch: the truth."""
    site = _variants(variants, seed)
    for batch, (start, stop) in enumerate(_batches(samples, variants, seed)):
        allele = synthetic_alleles(samples, variants, seed, batch)
        dosage = np.where((allele < 0).any(axis=2), -1, allele.sum(axis=2)).astype(np.int8)
        ids = [
            f"{SYNTHETIC_CONTIGS[site.contig[i]]}:{site.position[i]}:{chr(site.ref[i])}:{chr(site.alt[i])}"
            for i in range(start, stop)
        ]
        yield ids, dosage


def _contig_lengths(site: _Variants) -> list[tuple[str, int]]:
    return [
        (name, int(site.position[site.contig == c].max(initial=0)) + SYNTHETIC_SPACING)
        for c, name in enumerate(SYNTHETIC_CONTIGS)
        if (site.contig == c).any()
    ]


def _write_part(path: Path, samples: int, variants: int, seed: int, phased: bool, batches: range, header: bool) -> None:
    site = _variants(variants, seed)
    with writers.open_bgzf(path) as handle:
        if header:
            sample_id = [f"SYN{k:07d}" for k in range(samples)]
            handle.write(writers.vcf_header(_contig_lengths(site), sample_id, source="synthetic site (tests/benchmarks/synthetic_site.py)").encode())
        spans = _batches(samples, variants, seed)
        for batch in batches:
            start, stop = spans[batch]
            cells = writers.encode_genotype_cells(synthetic_alleles(samples, variants, seed, batch), phased=phased)
            ref = site.ref[start:stop].tobytes().decode()
            alt = site.alt[start:stop].tobytes().decode()
            handle.write(writers.vcf_lines(SYNTHETIC_CONTIGS[site.contig[start]], site.position[start:stop], ref, alt, cells))


def _concatenate_bgzf(parts: list[Path], out: Path) -> None:
    """Joins BGZF files into one (BGZF blocks are independent), keeping only the last EOF block."""
    with open(out, "wb") as sink:
        for k, part in enumerate(parts):
            with open(part, "rb") as source:
                size = source.seek(0, os.SEEK_END)
                source.seek(max(0, size - len(_BGZF_EOF)))
                if k < len(parts) - 1 and source.read() == _BGZF_EOF:
                    size -= len(_BGZF_EOF)
                source.seek(0)
                while size > 0:  # in pieces: a part of a large site is gigabytes
                    piece = source.read(min(size, 1 << 24))
                    sink.write(piece)
                    size -= len(piece)
            part.unlink()


def write_synthetic_site(
    workdir: Path, samples: int, variants: int, *, seed: int = 1, phased: bool = False, jobs: int | None = None
) -> SyntheticSite:
    """Writes (or finds cached) a bgzipped, tabix-indexed GT-only VCF and its bgzipped FASTA.

    Cached in ``workdir`` by size, seed and phasing (``site.json`` is written last, so an
    interrupted run starts over). Generation is split into ``jobs`` processes (default: one
    per CPU), each writing a BGZF part of whole batches; the parts are concatenated (BGZF
    blocks are independent), so the text does not depend on ``jobs``. Memory is bounded by
    one batch per process.
    """
    folder = workdir / f"synthetic-{samples}x{variants}-seed{seed}-{'phased' if phased else 'unphased'}"
    vcf, fasta, done = folder / "site.vcf.gz", folder / "reference.fa.gz", folder / "site.json"
    if done.is_file():
        return SyntheticSite(vcf, fasta, samples, variants, 0.0)
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    site = _variants(variants, seed)
    n_batch = len(_batches(samples, variants, seed))
    jobs = max(1, min(jobs or os.cpu_count() or 1, n_batch))
    cuts = [n_batch * k // jobs for k in range(jobs + 1)]
    parts = [folder / f"part-{k}.vcf.gz" for k in range(jobs)]
    arguments = [(parts[k], samples, variants, seed, phased, range(cuts[k], cuts[k + 1]), k == 0) for k in range(jobs)]
    if jobs == 1:
        _write_part(*arguments[0])
    else:
        # spawn: the parent may already run threads (dask, BLAS); forking those is unsafe.
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_write_part, *each) for each in arguments]:
                future.result()
    _concatenate_bgzf(parts, vcf)
    writers.index_vcf_gz(vcf)
    rng = np.random.default_rng([seed, 2])
    contigs = []
    for c, (name, length) in enumerate(_contig_lengths(site)):
        sequence = _BASES[rng.integers(0, 4, length)]
        sequence[site.position[site.contig == c] - 1] = site.ref[site.contig == c]
        contigs.append((name, sequence))
    writers.write_fasta(fasta, contigs)
    seconds = time.perf_counter() - started
    done.write_text(json.dumps({"samples": samples, "variants": variants, "seed": seed, "phased": phased, "seconds": seconds}) + "\n")
    return SyntheticSite(vcf, fasta, samples, variants, seconds)
