"""Helpers for the reader tests: write VCF text, compress/index it, and a naive reference.

The reference decoder goes through pysam's own record objects (``rec.samples[j]``),
independent of genofed's text parser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam

HEADER_FORMATS = [
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
    '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">',
    '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allele depths">',
    '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">',
]


def vcf_text(samples: list[str], records: list[str], contigs: dict[str, int | None] | None = None) -> str:
    """A VCF file's text: header (contigs, FORMAT lines, #CHROM) then the record lines."""
    contigs = {"chr1": 1000, "chr2": 1000} if contigs is None else contigs
    lines = ["##fileformat=VCFv4.2"]
    for name, length in contigs.items():
        lines.append(f"##contig=<ID={name},length={length}>" if length else f"##contig=<ID={name}>")
    lines += HEADER_FORMATS
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"] + (["FORMAT", *samples] if samples else [])
    lines.append("\t".join(columns))
    return "\n".join(lines + records) + "\n"


def record(contig: str, pos: int, alts: str = "G", fmt: str = "GT", calls: list[str] | None = None, ref: str = "A", record_id: str = ".") -> str:
    """One record line."""
    fields = [contig, str(pos), record_id, ref, alts, ".", "PASS", "."]
    if calls is not None:
        fields += [fmt, *calls]
    return "\t".join(fields)


def write(folder: Path, name: str, text: str, *, kind: str = "vcf") -> Path:
    """Writes ``text`` as .vcf, .vcf.gz (+ .tbi) or .bcf (+ .csi); returns the path."""
    plain = folder / f"{name}.vcf"
    plain.write_text(text)
    if kind == "vcf":
        return plain
    compressed = folder / f"{name}.vcf.gz"
    pysam.tabix_compress(str(plain), str(compressed), force=True)
    if kind == "vcf.gz":
        pysam.tabix_index(str(compressed), preset="vcf", force=True)
        return compressed
    if kind == "vcf.gz-noindex":
        return compressed
    bcf = folder / f"{name}.bcf"
    with pysam.VariantFile(str(plain)) as source, pysam.VariantFile(str(bcf), "wb", header=source.header) as sink:
        for rec in source:
            sink.write(rec)
    if kind == "bcf":
        pysam.tabix_index(str(bcf), preset="bcf", csi=True, force=True)
    return bcf


def naive_genotypes(path: Path) -> list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]]:
    """(contig, pos, allele_index (samples, ploidy), phased (samples,), DS) per record, via pysam objects."""
    result = []
    with pysam.VariantFile(str(path)) as handle:
        for rec in handle:
            calls = [rec.samples[j].allele_indices for j in range(len(rec.samples))]
            ploidy = max([len(c) for c in calls] + [1])
            alleles = np.full((len(calls), ploidy), -2, dtype=np.int8)
            for j, call in enumerate(calls):
                alleles[j, : len(call)] = [-1 if a is None else a for a in call]
            phased = np.array([rec.samples[j].phased for j in range(len(rec.samples))], dtype=bool)
            ds = None
            if "DS" in rec.format:
                width = max(1, len(rec.alts or ()))
                ds = np.full((len(calls), width), np.nan, dtype=np.float32)
                for j in range(len(calls)):
                    value = rec.samples[j].get("DS")
                    if value is None:
                        continue
                    for k, v in enumerate(value if isinstance(value, tuple) else (value,)):
                        if v is not None:
                            ds[j, k] = v
            result.append((rec.contig, rec.pos, alleles, phased, ds))
    return result
