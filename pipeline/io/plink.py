"""PLINK 2 (.pgen/.pvar/.psam) and PLINK 1 (.bed/.bim/.fam) filesets as record blocks.

pgenlib reads the genotypes; the variant and sample tables are text read here (a
zstd-compressed .pvar.zst, plink2's ``--make-pgen vzs``, through Arrow's zstd codec: no
other dependency). Each block is a :class:`~pipeline.io.vcf.RecordBlock`, the block the VCF reader
gives, so harmonization (multi-allelic split, trimming, the REF check with swaps and
strand flips, contig names) is the same code for every input format.

- Alleles: a .pvar has REF and ALT (multi-allelic 'T,G' records are split like VCF
  records). A .bim has no REF: A2 (column 6) is read as REF and A1 as ALT, as plink2
  reads a .bed; the FASTA check then swaps the variants whose A2 is not the reference
  base. Without a FASTA, REF of a .bed input is unchecked.
- Calls: the stored hard calls (missing stays missing; phase is not kept).
- Dosages (.pgen only; plink2 stores them in steps of 1/16384): a variant has DS when
  some dosage differs from its hard call. plink2 stores no dosage equal to the hard
  call, so such a variant reads like a VCF record without DS.
- Samples: the IIDs (the phenotype table is keyed by IID); FIDs are not used.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pgenlib
import pyarrow as pa

from pipeline.errors import InputError
from pipeline.io.variant_table import VariantTable, contig_blocks, table_regions
from pipeline.io.vcf import MAX_ALT_ALLELES, RecordBlock, Region

_PGEN_MISSING = -9  # pgenlib's code for a missing allele or dosage
_SORT_HINT = "sort the fileset with 'plink2 --pfile PREFIX --sort-vars --make-pgen --out SORTED' (--bfile and --make-bed for PLINK 1)"


@dataclass(frozen=True)
class PlinkSource:
    """An opened PLINK fileset (identity: its genotype file); read with :func:`read_blocks`."""

    path: Path
    genotypes: Path
    variant_file: Path
    samples: list[str]
    variants: VariantTable
    is_bed: bool  # PLINK 1: hard calls only, and the sample count comes from the .fam
    has_index: bool = True  # pgenlib reads any variant: the ingest cuts the fileset by region (:func:`regions`)
    header_assembly: str | None = None
    imputation_key: str | None = None  # no INFO scores in a fileset
    first_row: int = 0
    """The file row of ``variants``' first: 0 for an opened fileset, a region's first row for one of :func:`regions`."""
    allele_offsets: np.ndarray | None = field(default=None, compare=False)
    """pgenlib's allele index offsets of the whole file where it has multi-allelic variants (a region's, to seek)."""


def _fileset_file(prefix: str, suffix: str, kind: str) -> Path:
    path = Path(prefix + suffix)
    if path.is_file():
        return path
    if suffix == ".pvar" and Path(prefix + ".pvar.zst").is_file():
        return Path(prefix + ".pvar.zst")  # plink2 --make-pgen vzs: read through Arrow's zstd codec
    raise InputError(f"{path}: no such file; a {kind} fileset PREFIX is PREFIX{' PREFIX'.join(_SUFFIXES[kind])} (give --{_OPTION[kind]} PREFIX)")


_SUFFIXES = {"PLINK 2": (".pgen", ".pvar", ".psam"), "PLINK 1": (".bed", ".bim", ".fam")}
_OPTION = {"PLINK 2": "pfile", "PLINK 1": "bfile"}


def _open_text(path: Path) -> IO[str]:
    """A text file, or a zstd-compressed one (``.zst``, as plink2's ``vzs`` writes a .pvar) decompressed as it is read."""
    if path.suffix == ".zst":
        return io.TextIOWrapper(pa.input_stream(str(path), compression="zstd"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _text_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line."""
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                fields = line.split()
                if fields:
                    yield number, fields
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot be read as text ({getattr(error, 'strerror', None) or error})") from None


def read_sample_ids(path: Path) -> list[str]:
    """The IIDs of a .psam (header '#FID IID ...' or '#IID ...') or of a headerless .psam/.fam (FID IID ...).

    Raises:
        InputError: no IID column, no sample, or an IID given twice.
    """
    samples: list[str] = []
    column = 1
    for number, fields in _text_lines(path):
        if fields[0].startswith("##"):
            continue
        if fields[0].startswith("#") and not samples:
            header = [fields[0][1:], *fields[1:]]
            if "IID" not in header:
                raise InputError(f"{path}: line {number}: the header has no IID column; expected '#FID IID ...' or '#IID ...'")
            column = header.index("IID")
            continue
        if len(fields) <= column:
            raise InputError(f"{path}: line {number}: {len(fields)} column(s), no IID (column {column + 1})")
        samples.append(fields[column])
    if not samples:
        raise InputError(f"{path}: no samples; a fileset needs one line per sample")
    seen: dict[str, int] = {}
    for i, iid in enumerate(samples):
        if iid in seen:
            raise InputError(f"{path}: IID {iid!r} is given twice (samples {seen[iid] + 1} and {i + 1}); genofed keys samples by IID: make them unique")
        seen[iid] = i
    return samples


def read_variant_table(path: Path) -> VariantTable:
    """The variants of a .pvar (header '#CHROM POS ID REF ALT ...') or a .bim / headerless .pvar.

    A .bim's A2 (column 6) is REF and A1 (column 5) ALT, as plink2 reads it; '.' (and
    .bim's '0') ALT means no ALT allele.

    Raises:
        InputError: a line with too few columns or a POS that is not a whole number.
    """
    contig: list[str] = []
    position: list[int] = []
    record_id: list[str | None] = []
    ref: list[str] = []
    alts: list[tuple[str, ...]] = []
    lines: list[int] = []
    columns = {"CHROM": 0, "ID": 1, "POS": 3, "ALT": 4, "REF": 5}  # .bim order
    missing_alt = {".", "0"}
    for number, fields in _text_lines(path):
        if fields[0].startswith("##"):
            continue
        if fields[0] == "#CHROM":
            names = ["CHROM", *fields[1:]]
            absent = [name for name in ("POS", "ID", "REF", "ALT") if name not in names]
            if absent:
                raise InputError(f"{path}: line {number}: the header has no {', '.join(absent)} column")
            columns = {name: names.index(name) for name in columns}
            missing_alt = {"."}
            continue
        if len(fields) <= max(columns.values()):
            raise InputError(f"{path}: line {number}: {len(fields)} columns, expected at least {max(columns.values()) + 1}")
        raw = fields[columns["POS"]]
        if not raw.isdigit():
            raise InputError(f"{path}: line {number}: POS {raw[:20]!r} is not a position; expected a whole number from 1")
        contig.append(fields[columns["CHROM"]])
        position.append(int(raw))
        name = fields[columns["ID"]]
        record_id.append(None if name == "." else name)
        ref.append(fields[columns["REF"]])
        alt = fields[columns["ALT"]]
        alts.append(() if alt in missing_alt else tuple(alt.split(",")))
        lines.append(number)
    return VariantTable(contig, np.asarray(position, dtype=np.int64), record_id, ref, alts, np.asarray(lines, dtype=np.int64))


def _allele_offsets(alts: list[tuple[str, ...]]) -> np.ndarray | None:
    """pgenlib's allele index offsets (needed when any variant has several ALTs); None when all are biallelic."""
    counts = np.fromiter((1 + max(1, len(a)) for a in alts), dtype=np.uintp, count=len(alts))
    if not (counts > 2).any():
        return None
    return np.concatenate([np.zeros(1, np.uintp), np.cumsum(counts, dtype=np.uintp)])


def _pgen_reader(source: PlinkSource) -> pgenlib.PgenReader:
    offsets = source.allele_offsets if source.allele_offsets is not None else _allele_offsets(source.variants.alts)
    raw_sample_ct = len(source.samples) if source.is_bed else None  # a .bed does not store its sample count
    try:
        return pgenlib.PgenReader(bytes(source.genotypes), raw_sample_ct=raw_sample_ct, allele_idx_offsets=offsets)
    except RuntimeError as error:
        message = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else str(error)
        raise InputError(f"{source.genotypes}: pgenlib cannot read it ({message.strip()})") from None


def open_pfile(prefix: str | Path) -> PlinkSource:
    """Opens a PLINK 2 fileset ``PREFIX.pgen/.pvar/.psam`` and checks that its three files agree.

    Raises:
        InputError: a file is missing or unreadable, or the .pgen's sample or variant
            count differs from the .psam's or .pvar's.
    """
    prefix = str(prefix)
    pgen = _fileset_file(prefix, ".pgen", "PLINK 2")
    pvar = _fileset_file(prefix, ".pvar", "PLINK 2")
    psam = _fileset_file(prefix, ".psam", "PLINK 2")
    source = PlinkSource(Path(prefix), pgen, pvar, read_sample_ids(psam), read_variant_table(pvar), is_bed=False)
    with _pgen_reader(source) as reader:
        stored = (int(reader.get_raw_sample_ct()), int(reader.get_variant_ct()))
    expected = (len(source.samples), source.variants.num_variants)
    if stored != expected:
        raise InputError(
            f"{pgen}: holds {stored[0]} samples x {stored[1]} variants but {psam.name} lists {expected[0]} samples and "
            f"{pvar.name} {expected[1]} variants; the files are not one fileset: write them again together (plink2 --make-pgen)"
        )
    return source


def open_bfile(prefix: str | Path) -> PlinkSource:
    """Opens a PLINK 1 fileset ``PREFIX.bed/.bim/.fam`` (variant-major .bed) and checks its size against the .bim and .fam.

    Raises:
        InputError: a file is missing or unreadable, not a variant-major .bed, or its
            size does not match the .bim's variants and the .fam's samples.
    """
    prefix = str(prefix)
    bed = _fileset_file(prefix, ".bed", "PLINK 1")
    bim = _fileset_file(prefix, ".bim", "PLINK 1")
    fam = _fileset_file(prefix, ".fam", "PLINK 1")
    source = PlinkSource(Path(prefix), bed, bim, read_sample_ids(fam), read_variant_table(bim), is_bed=True)
    with open(bed, "rb") as handle:
        magic = handle.read(3)
    if magic != b"\x6c\x1b\x01":
        raise InputError(f"{bed}: not a variant-major PLINK 1 .bed (its first bytes are not 6c 1b 01); rewrite it with 'plink2 --bfile {prefix} --make-bed'")
    expected = 3 + source.variants.num_variants * ((len(source.samples) + 3) // 4)
    size = bed.stat().st_size
    if size != expected:
        raise InputError(
            f"{bed}: {size} bytes, but {source.variants.num_variants} variants ({bim.name}) x {len(source.samples)} samples ({fam.name}) "
            f"take {expected}; the files are not one fileset: write them again together (plink2 --make-bed)"
        )
    return source


def _has_dosage(allele_index: np.ndarray, ds: np.ndarray, num_alts: np.ndarray) -> np.ndarray:
    """Per record: whether any dosage of its ALTs differs from the ALT count of the hard call (missing counts as a value)."""
    called = (allele_index >= 0).all(axis=2)
    differs = np.zeros(allele_index.shape[0], dtype=bool)
    for k in range(ds.shape[2]):
        count = np.where(called, (allele_index == k + 1).sum(axis=2), -1).astype(np.float32)
        dose = np.where(np.isnan(ds[:, :, k]), np.float32(-1), ds[:, :, k])
        differs |= (dose != count).any(axis=1) & (num_alts > k)
    return differs


def _dosages(reader: pgenlib.PgenReader, first: int, end: int, alts: list[tuple[str, ...]], num_samples: int) -> np.ndarray:
    """ALT dosages (records, samples, max ALTs) float32, NaN missing: ALT 1 by range, further ALTs per record."""
    width = max([1, *(len(a) for a in alts)])
    ds = np.full((end - first, num_samples, width), np.nan, dtype=np.float32)
    plane = np.empty((end - first, num_samples), dtype=np.float32)
    reader.read_dosages_range(first, end, plane)
    ds[:, :, 0] = plane
    row = np.empty(num_samples, dtype=np.float32)
    for i, record_alts in enumerate(alts):
        for k in range(2, len(record_alts) + 1):
            reader.read_dosages(first + i, row, allele_idx=k)
            ds[i, :, k - 1] = row
    ds[ds == _PGEN_MISSING] = np.nan
    return ds


def regions(source: PlinkSource, chunk_size: int) -> list[tuple[Region, PlinkSource]]:
    """The fileset cut on the region grid: each region's rows as a source of their own (read by one Dask task).

    Raises:
        InputError: records not sorted (see :func:`~pipeline.io.variant_table.contig_blocks`).
    """
    table = source.variants
    offsets = _allele_offsets(table.alts)
    return [(region, dataclasses.replace(source, variants=table.rows(first, end), first_row=first, allele_offsets=offsets))
            for region, first, end in table_regions(table, str(source.variant_file), chunk_size, sort_hint=_SORT_HINT)]


def read_blocks(source: PlinkSource, *, max_records: int = 2000) -> Iterator[RecordBlock]:
    """The fileset's records (or a region's: :func:`regions`) in file order, as blocks of consecutive records of one contig.

    Raises:
        InputError: records not sorted (see :func:`~pipeline.io.variant_table.contig_blocks`)
            or a record with more than 126 ALT alleles.
    """
    table = source.variants
    name = str(source.variant_file)
    num_samples = len(source.samples)
    too_many = next((i for i, a in enumerate(table.alts) if len(a) > MAX_ALT_ALLELES), None)
    if too_many is not None:
        raise InputError(f"{table.where(name, too_many)}: {len(table.alts[too_many])} ALT alleles, more than {MAX_ALT_ALLELES}; remove the record")
    with _pgen_reader(source) as reader:
        row = source.first_row  # where the table's rows are in the file
        for contig, first, end in contig_blocks(table, name, max_records, sort_hint=_SORT_HINT):
            alts = table.alts[first:end]
            calls = np.empty((end - first, 2 * num_samples), dtype=np.int32)
            reader.read_alleles_range(row + first, row + end, calls)
            allele_index = np.where(calls < 0, -1, calls).astype(np.int8).reshape(end - first, num_samples, 2)
            no_alt = np.fromiter((not a for a in alts), dtype=bool, count=len(alts))
            if no_alt.any():  # ALT '.': the record is dropped, its calls only must not name an ALT it lacks
                allele_index[no_alt] = np.minimum(allele_index[no_alt], 0)
            ds = None
            if not source.is_bed:
                values = _dosages(reader, row + first, row + end, alts, num_samples)
                keep = _has_dosage(allele_index, values, np.fromiter((len(a) for a in alts), dtype=np.int64, count=len(alts)))
                if keep.any():
                    values[~keep] = np.nan
                    ds = values
            yield RecordBlock(
                source=name,
                contig=contig,
                position=table.position[first:end],
                line_number=None if table.line_number is None else table.line_number[first:end],
                record_id=table.record_id[first:end],
                ref=table.ref[first:end],
                alts=alts,
                allele_index=allele_index,
                phased=None,
                ds=ds,
            )
