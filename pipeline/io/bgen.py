"""BGEN (v1.1, v1.2: layouts 1 and 2, any bit depth) as record blocks, through cbgen.

cbgen was chosen over bgen-reader by measurement (see README: faster, and without
bgen-reader's dask<2025 and pandas<3 pins). Each block is a
:class:`~pipeline.io.vcf.RecordBlock`, the block the VCF reader gives, so
harmonization is the same code for every input format.

- Alleles: the first allele is REF, the second ALT (as plink2 reads BGEN with
  'ref-first'); the FASTA check swaps the others. Multi-allelic variants are refused.
- Dosage: the expected ALT count, ``P(het) + 2 P(hom ALT)`` (the sum of the ALT
  haplotype probabilities when phased), as plink2 and qctool compute it; stored as DS.
- Calls: plink2's rule (``--hard-call-threshold 0.1``): the dosage rounded to the
  nearest integer when it lies within 0.1 of it, else missing. A sample marked missing
  has a missing call and dosage. Haploid samples (ploidy 1) are haploid calls.
- Samples: the IDs in the file, or those of an Oxford ``.sample`` file (ID_2, or the
  ID column of a QCTOOL v2 file) given with ``sample=``; one of the two is required.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbgen
import numpy as np

from pipeline.errors import InputError
from pipeline.io.variant_table import VariantTable, contig_blocks, table_regions
from pipeline.io.vcf import RecordBlock, Region

HARD_CALL_THRESHOLD = 0.1  # plink2's --hard-call-threshold default
_SORT_HINT = "sort the variants by position within each chromosome (for example 'plink2 --bgen FILE ref-first --sort-vars --export bgen-1.2')"
_CALLS = {  # (ploidy, ALT count) -> allele indexes of the call
    2: np.array([[0, 0], [0, 1], [1, 1], [-1, -1]], dtype=np.int8),  # row -1 (missing) is the last
    1: np.array([[0, -2], [1, -2], [-1, -2], [-1, -2]], dtype=np.int8),
}


@dataclass(frozen=True)
class BgenSource:
    """An opened BGEN file with its sample IDs; read with :func:`read_blocks`."""

    path: Path
    samples: list[str]
    has_index: bool = True  # cbgen reads any variant by its offset: the ingest cuts the file by region (:func:`regions`)
    header_assembly: str | None = None
    imputation_key: str | None = None  # no INFO scores read from BGEN
    variants: VariantTable | None = field(default=None, compare=False)
    """The variants to read (a region's: :func:`regions`); ``None``: the whole file's, read from its headers."""
    offsets: np.ndarray | None = field(default=None, compare=False)
    """Each of ``variants``' byte offset in the file."""


def read_sample_file(path: Path) -> list[str]:
    """Sample IDs of an Oxford .sample file: the ID_2 column (or ID, QCTOOL v2); the second line (column types) skipped.

    Raises:
        InputError: unreadable, no ID column, or no sample.
    """
    try:
        lines = [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the sample file ({getattr(error, 'strerror', None) or error})") from None
    header = lines[0] if lines else []
    column = header.index("ID_2") if "ID_2" in header else (0 if header[:1] == ["ID"] else None)
    if column is None:
        raise InputError(f"{path}: not an Oxford .sample file (the first line names no ID_2 or ID column)")
    rows = lines[2:]
    if not rows or any(len(row) <= column for row in rows):
        raise InputError(f"{path}: no sample lines, or a line without column {column + 1}; expected a header, a types line and one line per sample")
    return [row[column] for row in rows]


def _open(path: Path) -> cbgen.bgen_file:
    if not path.is_file():
        raise InputError(f"{path}: no such file; check the path (expected a .bgen file)")
    try:
        return cbgen.bgen_file(path)
    except (RuntimeError, ValueError) as error:
        raise InputError(f"{path}: not a readable BGEN file ({error})") from None


def open_bgen(path: str | Path, sample: str | Path | None = None) -> BgenSource:
    """Opens a BGEN file and takes its sample IDs from the file or from ``sample``.

    Raises:
        InputError: the file is missing or not BGEN, it holds no sample IDs and no
            ``sample`` file is given, or the sample file's count differs.
    """
    path = Path(path)
    with contextlib.closing(_open(path)) as bgen:
        count = int(bgen.nsamples)
        in_file = [name.decode() for name in bgen.read_samples()] if bgen.contain_samples else None
    if sample is not None:
        samples = read_sample_file(Path(sample))
        if len(samples) != count:
            raise InputError(f"{sample}: {len(samples)} samples, but {path} holds {count}; give the .sample file written with it")
    elif in_file is None:
        raise InputError(f"{path}: the file holds no sample IDs; give them with --sample FILE (the Oxford .sample file written with it)")
    else:
        samples = in_file
    return BgenSource(path, samples)


def hard_calls(dosage: np.ndarray, threshold: float = HARD_CALL_THRESHOLD) -> np.ndarray:
    """ALT counts (int8) of the calls plink2 derives from dosages: the nearest integer within ``threshold``, else -1."""
    nearest = np.rint(dosage)
    called = np.abs(dosage - nearest) <= threshold  # False for NaN
    return np.where(called, nearest, -1).astype(np.int8)


def alt_dosage(probability: np.ndarray, ploidy: np.ndarray, phased: bool) -> np.ndarray:
    """Expected ALT count per sample from a biallelic variant's probabilities (NaN where missing).

    Unphased: columns are the genotypes in BGEN order (REF/REF, REF/ALT, ALT/ALT for
    diploids; REF, ALT for haploids). Phased: two columns (REF, ALT) per haplotype.
    """
    if phased:
        return np.nansum(probability[:, 1::2], axis=1) + np.where(np.isnan(probability[:, 1]), np.nan, 0.0)
    diploid = probability[:, 1] + 2 * probability[:, 2] if probability.shape[1] > 2 else probability[:, 1]
    return np.where(ploidy == 1, probability[:, 1], diploid)


def _variant_table(bgen: cbgen.bgen_file, metafile: Path, path: Path) -> tuple[VariantTable, np.ndarray]:
    """The variants (REF the first allele) and each one's offset in the file; multi-allelic variants refused."""
    bgen.create_metafile(metafile, verbose=False)
    with contextlib.closing(cbgen.bgen_metafile(metafile)) as meta:
        parts = [meta.read_partition(p).variants for p in range(meta.npartitions)]
    text = lambda name: [value.decode() for part in parts for value in getattr(part, name).tolist()]
    alleles = [a.split(",") for a in text("allele_ids")]
    table = VariantTable(
        contig=text("chromosome"),
        position=np.fromiter((v for part in parts for v in part.position.tolist()), dtype=np.int64),
        record_id=[r if r not in ("", ".") else (v if v not in ("", ".") else None) for r, v in zip(text("rsid"), text("id"))],
        ref=[a[0] for a in alleles],
        alts=[tuple(a[1:]) for a in alleles],
        line_number=None,
    )
    multi = next((i for i, a in enumerate(alleles) if len(a) != 2), None)
    if multi is not None:
        raise InputError(
            f"{table.where(str(path), multi)}: {len(alleles[multi])} alleles; only biallelic BGEN variants are read: split them first "
            "(for example 'qctool -g FILE -og SPLIT.bgen -filetype bgen' after 'bcftools norm -m-' on a VCF export)"
        )
    offsets = np.fromiter((v for part in parts for v in part.offset.tolist()), dtype=np.uint64)
    return table, offsets


def _with_variants(source: BgenSource) -> BgenSource:
    """The source with the whole file's variant table and offsets (read once from its headers through a metafile)."""
    if source.variants is not None:
        return source
    with tempfile.TemporaryDirectory(prefix="genofed-bgen-") as folder, contextlib.closing(_open(source.path)) as bgen:
        table, offsets = _variant_table(bgen, Path(folder) / "variants.metafile", source.path)
    return dataclasses.replace(source, variants=table, offsets=offsets)


def regions(source: BgenSource, chunk_size: int) -> list[tuple[Region, BgenSource]]:
    """The file cut on the region grid: each region's variants and offsets as a source of their own (one Dask task).

    Raises:
        InputError: a multi-allelic variant, or variants not sorted.
    """
    source = _with_variants(source)
    table, offsets = source.variants, source.offsets
    assert table is not None and offsets is not None
    return [(region, dataclasses.replace(source, variants=table.rows(first, end), offsets=offsets[first:end]))
            for region, first, end in table_regions(table, str(source.path), chunk_size, sort_hint=_SORT_HINT)]


def read_blocks(source: BgenSource, *, max_records: int = 2000) -> Iterator[RecordBlock]:
    """The file's variants (or a region's: :func:`regions`) in file order, as blocks of consecutive variants of one contig.

    Raises:
        InputError: a multi-allelic variant, a ploidy above 2, or variants not sorted.
    """
    name = str(source.path)
    num_samples = len(source.samples)
    source = _with_variants(source)
    table, offsets = source.variants, source.offsets
    assert table is not None and offsets is not None
    with contextlib.closing(_open(source.path)) as bgen:
        for contig, first, end in contig_blocks(table, name, max_records, sort_hint=_SORT_HINT):
            allele_index = np.empty((end - first, num_samples, 2), dtype=np.int8)
            ds = np.empty((end - first, num_samples, 1), dtype=np.float32)
            for i in range(first, end):
                genotype = bgen.read_genotype(int(offsets[i]), precision=64)
                ploidy = np.asarray(genotype.ploidy)
                if (ploidy > 2).any():
                    raise InputError(f"{table.where(name, i)}: ploidy {int(ploidy.max())}; only haploid and diploid samples are read")
                dosage = alt_dosage(np.asarray(genotype.probability, dtype=np.float64), ploidy, bool(genotype.phased))
                dosage[np.asarray(genotype.missing, dtype=bool)] = np.nan
                calls = hard_calls(dosage)
                allele_index[i - first] = np.where((ploidy == 1)[:, None], _CALLS[1][calls], _CALLS[2][calls])
                ds[i - first, :, 0] = dosage
            yield RecordBlock(
                source=name,
                contig=contig,
                position=table.position[first:end],
                line_number=None,
                record_id=table.record_id[first:end],
                ref=table.ref[first:end],
                alts=table.alts[first:end],
                allele_index=allele_index,
                phased=None,
                ds=ds,
            )
