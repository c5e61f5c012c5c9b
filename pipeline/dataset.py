"""A harmonized site dataset on disk: the layout every genofed step reads and writes.

Layout (plain Parquet, readable by pyarrow/pandas/duckdb without genofed)::

    DATASET/
      dataset.json            format version, sample/variant counts, chunk list, genome assembly (when known)
      samples.parquet         schemas/samples.json
      variants/chunk-NNNNN.parquet   schemas/variants.json
      genotypes/chunk-NNNNN.parquet  schemas/genotypes.json (same rows as variants)
      ingest-report.json      what ingest read, fixed and dropped

Genotypes are variant-major: a chunk is a dense (variants x samples) int8 block of ALT
dosages (-1 missing), so a Dask task and a JAX kernel see the same array. On disk each
variant's row is one binary value: its hard calls 2 bits each, as a PLINK 2 .pgen stores
them (format 3; :func:`pack_calls`), or one byte each for a variant with a call above 2.
Format 2 stored every variant one byte a call; its chunks read as they are, and
``genofed dataset upgrade`` packs them. A ``list<int8>`` (format 1) spent a repetition
and definition level on every genotype; the upgrade converts that too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import outputs, schemas
from pipeline.assembly import check_assembly, non_par_x
from pipeline.errors import InputError, SpecMismatch

FORMAT_NAME = "genofed-dataset"
FORMAT_VERSION = "3.0.0"
FORMAT_MAJOR = FORMAT_VERSION.split(".")[0]  # what this genofed writes
BYTE_FORMAT_MAJOR = "2"  # one byte a call: read as it is, genofed dataset upgrade packs it
LIST_FORMAT_MAJOR = "1"  # genotypes as Parquet lists; genofed dataset upgrade converts it
GENOTYPES_PER_ROW_GROUP = 2**25  # ~32 M calls: large enough to compress, small enough to stay in cache


@dataclass(frozen=True)
class Block:
    """One chunk in memory: variant metadata and the dense genotype matrices."""

    variants: pa.Table
    call_dosage: np.ndarray  # (variants, samples) int8, -1 missing
    dosage: np.ndarray | None  # (variants, samples) float32 from FORMAT/DS, NaN missing

    @property
    def num_variants(self) -> int:
        return self.variants.num_rows


def locate(sorted_ids: np.ndarray, block_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a block's variant IDs sit in a sorted ID list (a job's variant list).

    Returns:
        ``(index, present)``: for each row of the block, its index in ``sorted_ids``
        (meaningful where ``present``) and whether it is in the list at all.
    """
    if sorted_ids.size == 0 or block_ids.size == 0:
        return np.zeros(block_ids.size, np.int64), np.zeros(block_ids.size, bool)
    index = np.minimum(np.searchsorted(sorted_ids, block_ids), sorted_ids.size - 1)
    return index, sorted_ids[index] == block_ids


def dosage_or_call(call_dosage: np.ndarray, dosage: np.ndarray | None) -> np.ndarray:
    """Each genotype's ALT dosage as plink2 reads ``--vcf dosage=DS``: the stored dosage where finite, else the hard call.

    A sample with DS but no GT gets its DS, one with GT but no DS its hard call, one with
    neither is missing (plink2 2.00a3.5 does the same). Dosages are clipped to [0, 2]:
    ingest keeps them there already, and analyses bound what one genotype can add by 2.

    Returns:
        ``call_dosage`` itself (int8, -1 missing) without dosages; else float32, -1 where missing.
    """
    if dosage is None:
        return call_dosage
    return np.where(np.isfinite(dosage), np.clip(dosage, 0.0, 2.0), call_dosage).astype(np.float32, copy=False)


def chunk_name(index: int) -> str:
    """File stem of chunk ``index`` (zero-padded so names sort in genome order)."""
    return f"chunk-{index:05d}"


def rows_per_group(n_samples: int) -> int:
    """Variants per Parquet row group (and per Arrow chunk) of a genotypes file: about ``GENOTYPES_PER_ROW_GROUP`` calls."""
    return max(1, GENOTYPES_PER_ROW_GROUP // max(1, n_samples))


def packed_rows(matrices: Sequence[np.ndarray], rows_per_piece: int) -> pa.ChunkedArray:
    """Each row of ``matrices`` (in turn) as one binary value, its bytes in order, without copying a row.

    At most ``rows_per_piece`` rows per Arrow chunk keeps every chunk's 32-bit offsets
    in range however many samples a dataset has.
    """
    pieces = []
    for matrix in matrices:
        n_rows = matrix.shape[0]
        width = matrix.shape[1] * matrix.itemsize
        data = np.ascontiguousarray(matrix).reshape(-1).view(np.uint8)
        for start in range(0, n_rows, max(1, rows_per_piece)):
            stop = min(start + rows_per_piece, n_rows)
            offsets = np.arange(0, (stop - start + 1) * width, width, dtype=np.int32) if width else np.zeros(stop - start + 1, np.int32)
            buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data[start * width:stop * width])]
            pieces.append(pa.Array.from_buffers(pa.binary(), stop - start, buffers))
    return pa.chunked_array(pieces, pa.binary())


_CALL_CELLS = 1 << 18
"""Calls packed or unpacked at a time: the temporaries stay in cache."""


def packed_width(num_samples: int) -> int:
    """Bytes of one variant's 2-bit calls (four samples a byte)."""
    return (num_samples + 3) // 4


def _unpack_table() -> np.ndarray:
    """The four int8 calls of every byte of 2-bit codes, as one little-endian uint32 per byte value."""
    codes = np.arange(256, dtype=np.uint32)
    calls = np.stack([(codes >> shift) & 3 for shift in (0, 2, 4, 6)], axis=1).astype(np.int8)
    calls[calls == 3] = -1
    return calls.view(np.uint32)[:, 0].copy()


_UNPACK = _unpack_table()


def pack_calls(calls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(variants, samples) int8 calls as 2-bit codes, and which variants can be stored so.

    A call of 0, 1 or 2 ALT alleles is its own code and a missing one (-1) is 3, as a
    PLINK 2 .pgen stores hard calls; sample ``j`` is bits ``2 (j mod 4)`` of byte ``j div 4``
    (the last byte's unused bits are 0). A variant with a call outside -1..2 (a polyploid
    call above 2) cannot be stored so and keeps one byte a call.
    """
    rows, num_samples = calls.shape
    width = packed_width(num_samples)
    packed = np.empty((rows, width), dtype=np.uint8)
    step = max(1, _CALL_CELLS // max(1, 4 * width))
    codes = np.zeros((min(step, rows), 4 * width), dtype=np.int8)
    for start in range(0, rows, step):
        part = calls[start:start + step]
        np.bitwise_and(part, 3, out=codes[: part.shape[0], :num_samples])
        words = codes[: part.shape[0]].view(np.uint32)  # four codes a word, one a byte
        gathered = words | (words >> 6)
        gathered |= gathered >> 12
        packed[start:start + step] = gathered  # its low byte holds the four codes, 2 bits each
    return packed, fits_two_bits(calls)


def fits_two_bits(calls: np.ndarray) -> np.ndarray:
    """Which variants' (rows') calls are all -1..2, so that :func:`pack_calls` can store them 2 bits each."""
    return (calls.max(axis=1, initial=-1) <= 2) & (calls.min(axis=1, initial=-1) >= -1)


def unpack_calls(packed: np.ndarray, num_samples: int) -> np.ndarray:
    """(variants, samples) int8 calls from :func:`pack_calls`'s codes."""
    rows, width = packed.shape
    calls = np.empty((rows, 4 * width), dtype=np.int8)
    step = max(1, _CALL_CELLS // max(1, 4 * width))
    for start in range(0, rows, step):
        np.take(_UNPACK, packed[start:start + step], out=calls[start:start + step].view(np.uint32), mode="clip")
    return calls if num_samples == 4 * width else np.ascontiguousarray(calls[:, :num_samples])


def call_rows(calls: Sequence[np.ndarray], rows_per_piece: int) -> pa.ChunkedArray:
    """The ``call_dosage`` column of consecutive (variants, samples) pieces: 2 bits a call where it can be.

    A variant with a call above 2, or a dataset of one sample (whose packed and byte
    rows would be the same length), keeps one byte a call: a row's length says which.
    """
    pieces = []
    for matrix in calls:
        matrix = matrix.astype(np.int8, copy=False)
        num_samples = matrix.shape[1]
        for start in range(0, matrix.shape[0], max(1, rows_per_piece)):
            part = matrix[start:start + rows_per_piece]
            if num_samples < 2:
                pieces.extend(packed_rows([part], rows_per_piece).chunks)
                continue
            packed, packable = pack_calls(part)
            if packable.all():
                pieces.extend(packed_rows([packed], rows_per_piece).chunks)
            else:
                pieces.append(pa.array([(packed[i] if packable[i] else part[i]).tobytes() for i in range(part.shape[0])], pa.binary()))
    return pa.chunked_array(pieces, pa.binary())


def unpacked_calls(column: pa.ChunkedArray, n_samples: int, *, source: str) -> np.ndarray:
    """A ``call_dosage`` column as a (variants, samples) int8 matrix, each row read in the form its length says.

    Raises:
        InputError: a row is neither ``packed_width(n_samples)`` nor ``n_samples`` bytes
            long (another dataset's chunk copied in, or a damaged file), naming the file and the row.
    """
    if n_samples < 2:
        return unpacked_rows(column, np.dtype(np.int8), n_samples, source=source)
    width = packed_width(n_samples)
    parts = []
    for row, lengths, data in _binary_pieces(column, source):
        packed = lengths == width
        wrong = np.flatnonzero(~packed & (lengths != n_samples))
        if wrong.size:
            raise InputError(f"{source}: row {row + int(wrong[0])} holds {int(lengths[wrong[0]])} bytes, expected {width} "
                             f"({n_samples} samples, 2 bits each) or {n_samples} (one byte each); the file is not this "
                             "dataset's, re-run 'genofed ingest'")
        if packed.all():
            parts.append(unpack_calls(data.reshape(lengths.size, width), n_samples))
        elif not packed.any():
            parts.append(data.view(np.int8).reshape(lengths.size, n_samples))
        else:
            parts.append(_mixed_rows(data, lengths, width, n_samples))
    return _read_only(parts, n_samples, np.dtype(np.int8))


def _mixed_rows(data: np.ndarray, lengths: np.ndarray, width: int, n_samples: int) -> np.ndarray:
    """Rows of both forms in one piece (a chunk holding a polyploid call), each decoded by its length."""
    matrix = np.empty((lengths.size, n_samples), np.int8)
    start = 0
    for i, length in enumerate(lengths.tolist()):
        value = data[start:start + length]
        matrix[i] = unpack_calls(value.reshape(1, width), n_samples)[0] if length == width else value.view(np.int8)
        start += length
    return matrix


def unpacked_rows(column: pa.ChunkedArray, dtype: np.dtype, n_samples: int, *, source: str) -> np.ndarray:
    """A packed genotype column as a (variants, samples) matrix: a read-only view of Arrow's memory when it is one chunk.

    Raises:
        InputError: a value's length is not ``n_samples`` values (another dataset's
            chunk copied in, or a damaged file), naming the file and the row.
    """
    width = n_samples * dtype.itemsize
    parts = []
    for row, lengths, data in _binary_pieces(column, source):
        wrong = np.flatnonzero(lengths != width)
        if wrong.size:
            raise InputError(f"{source}: row {row + int(wrong[0])} holds {int(lengths[wrong[0]])} bytes, expected {width} "
                             f"({n_samples} samples x {dtype.itemsize}); the file is not this dataset's, re-run 'genofed ingest'")
        parts.append(data.view(dtype).reshape(lengths.size, n_samples))
    return _read_only(parts, n_samples, dtype)


def _binary_pieces(column: pa.ChunkedArray, source: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, value lengths, the values' bytes) of each non-empty Arrow chunk of a binary genotype column.

    Raises:
        InputError: the column is not binary (a format-1 chunk of lists).
    """
    if not pa.types.is_binary(column.type):
        raise InputError(f"{source}: genotypes stored as {column.type}, expected packed binary values (dataset format {FORMAT_VERSION}); "
                         "a chunk written by an older genofed: convert the dataset with 'genofed dataset upgrade', or re-run 'genofed ingest'")
    row = 0
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
        yield row, np.diff(offsets), np.frombuffer(chunk.buffers()[2], np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0]))
        row += len(chunk)


def _read_only(parts: list[np.ndarray], n_samples: int, dtype: np.dtype) -> np.ndarray:
    """The pieces as one matrix that nobody writes through (Arrow's memory, or a copy that stands for it)."""
    if not parts:
        return np.zeros((0, n_samples), dtype)
    matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
    matrix.setflags(write=False)
    return matrix


def genotype_table(variant_id: pa.Array, calls: Sequence[np.ndarray], doses: Sequence[np.ndarray | None]) -> pa.Table:
    """The genotypes table of consecutive (variants, samples) pieces, one binary value per variant (``schemas/genotypes.json``).

    Each piece is packed where it lies: a chunk of many reader blocks is never joined
    into one matrix first. ``doses[i]`` is piece ``i``'s dosages or ``None``; where only
    some pieces have them, the others' rows are NaN (missing), as a call without DS is.
    """
    rows = rows_per_group(calls[0].shape[1] if calls else 0)
    packed_calls = call_rows(calls, rows)
    if all(dose is None for dose in doses):
        packed_doses = pa.chunked_array([pa.nulls(len(variant_id), type=pa.binary())])
    else:
        packed_doses = packed_rows([np.full(call.shape, np.nan, "<f4") if dose is None else dose.astype("<f4", copy=False)
                                    for call, dose in zip(calls, doses)], rows)
    return pa.table({"variant_id": variant_id, "call_dosage": packed_calls, "dosage": packed_doses})


def write_genotypes(path: Path, variant_id: pa.Array, calls: Sequence[np.ndarray], doses: Sequence[np.ndarray | None]) -> None:
    """Writes one chunk's genotypes file (:func:`genotype_table`; row groups of about ``GENOTYPES_PER_ROW_GROUP`` calls)."""
    outputs.write_table(genotype_table(variant_id, calls, doses), path, "genotypes",
                        row_group_size=rows_per_group(calls[0].shape[1] if calls else 0), plain_columns=("call_dosage", "dosage"))


def write_chunk(root: Path, index: int, *blocks: Block) -> dict[str, Any]:
    """Writes ``blocks``, in turn and in position order, as chunk ``index``; returns its entry for ``dataset.json``."""
    name = chunk_name(index)
    (root / "variants").mkdir(exist_ok=True)
    (root / "genotypes").mkdir(exist_ok=True)
    variants = pa.concat_tables([block.variants for block in blocks]).combine_chunks() if len(blocks) > 1 else blocks[0].variants
    outputs.write_table(variants, root / "variants" / f"{name}.parquet", "variants")
    write_genotypes(root / "genotypes" / f"{name}.parquet", variants.column("variant_id").combine_chunks(),
                    [block.call_dosage for block in blocks], [block.dosage for block in blocks])
    return {"name": name, "num_variants": variants.num_rows, "has_dosage": any(block.dosage is not None for block in blocks)}


def write_metadata(root: Path, *, samples: pa.Table, chunks: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """Writes ``samples.parquet`` and ``dataset.json`` (the last step of a dataset)."""
    outputs.write_table(samples, root / "samples.parquet", "samples")
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "schemas": {name: schemas.load(name).version for name in ("variants", "genotypes", "samples")},
        "num_samples": samples.num_rows,
        "num_variants": sum(c["num_variants"] for c in chunks),
        "chunks": chunks,
        **(extra or {}),
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def _read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file of the dataset as a table.

    ``pq.ParquetFile`` reads the file itself; ``pq.read_table`` goes through
    ``pyarrow.dataset``, whose first use imports pandas when it is installed (0.3-1 s in
    every site agent's first job) and is no faster on one file.
    """
    with pq.ParquetFile(path) as handle:
        return handle.read(columns=list(columns) if columns is not None else None)


def read_metadata(root: Path) -> dict[str, Any]:
    """A dataset folder's ``dataset.json``, checked to be genofed's (any format version).

    Raises:
        InputError: no ``dataset.json``, not JSON, or another format's.
    """
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{root} is not a genofed dataset (no dataset.json); create one with 'genofed ingest'")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{meta_path}: not valid JSON ({error}); re-run 'genofed ingest'") from error
    if meta.get("format") != FORMAT_NAME:
        raise InputError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    return meta


def format_major(meta: dict[str, Any]) -> str:
    """The major part of a ``dataset.json``'s format version (what decides whether it can be read)."""
    return str(meta.get("format_version", "0")).split(".")[0]


class Dataset:
    """A harmonized dataset opened for reading (identity: a folder on disk)."""

    view = ""
    """Which part of the folder this object reads: ``""`` all of it; a job's selection
    (:class:`~pipeline.analyses.selection.SelectedDataset`) its digest, so caches keep the two apart."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.metadata: dict[str, Any] = read_metadata(self.path)
        meta_path = self.path / "dataset.json"
        major = format_major(self.metadata)
        if major == LIST_FORMAT_MAJOR:
            raise InputError(f"{meta_path}: dataset format {self.metadata.get('format_version')} stores genotypes as lists, which this genofed "
                             f"no longer reads (format {FORMAT_VERSION} packs each variant's genotypes); convert it in place with "
                             f"'genofed dataset upgrade {self.path}' (no re-ingest), or re-run 'genofed ingest'")
        if major not in (FORMAT_MAJOR, BYTE_FORMAT_MAJOR):
            raise InputError(f"{meta_path}: dataset format {self.metadata.get('format_version')} is not readable by this genofed (format {FORMAT_VERSION}); re-run 'genofed ingest'")

    @property
    def num_samples(self) -> int:
        return int(self.metadata["num_samples"])

    @property
    def num_variants(self) -> int:
        return int(self.metadata["num_variants"])

    @property
    def genome_assembly(self) -> str | None:
        """The assembly the positions are on (``GRCh37``/``GRCh38``), ``None`` when ingest recorded none.

        Datasets written before genofed recorded it have no ``genome_assembly`` key and read as ``None``.

        Raises:
            ConfigurationError: ``dataset.json`` names an assembly genofed does not know (edited by hand).
        """
        return check_assembly(self.metadata.get("genome_assembly"), source=str(self.path / "dataset.json"))

    @property
    def has_dosage(self) -> bool:
        """Whether some chunk stores dosages (FORMAT/DS or GP in the source VCF)."""
        return any(bool(chunk.get("has_dosage", False)) for chunk in self.metadata["chunks"])

    @property
    def chunk_names(self) -> list[str]:
        return [c["name"] for c in self.metadata["chunks"]]

    def samples(self) -> pa.Table:
        """The samples table (IDs and phenotypes, in genotype column order)."""
        return _read_parquet(self.path / "samples.parquet")

    def variants(self, chunk: str | None = None) -> pa.Table:
        """Variant metadata of one chunk, or of the whole dataset in genome order."""
        if chunk is not None:
            return _read_parquet(self.path / "variants" / f"{chunk}.parquet")
        tables = [self.variants(name) for name in self.chunk_names]
        return pa.concat_tables(tables) if tables else schemas.schema("variants").empty_table()

    def read_block(self, chunk: str, *, with_dosage: bool = False) -> Block:
        """Loads one chunk as dense arrays (memory ~ variants x samples bytes)."""
        columns = ["call_dosage", "dosage"] if with_dosage else ["call_dosage"]
        path = self.path / "genotypes" / f"{chunk}.parquet"
        table = _read_parquet(path, columns=columns)
        call_dosage = unpacked_calls(table.column("call_dosage"), self.num_samples, source=f"{path}, column call_dosage")
        dosage = None
        if with_dosage:
            doses = table.column("dosage")
            if len(doses) and doses.null_count == 0:
                dosage = unpacked_rows(doses, np.dtype("<f4"), self.num_samples, source=f"{path}, column dosage")
        return Block(variants=self.variants(chunk), call_dosage=call_dosage, dosage=dosage)

    def iter_blocks(self, *, with_dosage: bool = False) -> Iterator[Block]:
        """Yields the chunks in genome order, one at a time (bounded memory)."""
        for name in self.chunk_names:
            yield self.read_block(name, with_dosage=with_dosage)


_SAMPLE_KEYS = ("sample_index", "sample_id", "has_phenotypes")


def numeric_column(dataset: Dataset, samples: pa.Table, name: str, *, role: str) -> np.ndarray:
    """A job's phenotype or covariate column of the samples table, as float64 (NaN where missing).

    Every analysis reads its spec's columns here, so a job meets one rule at every site
    and its pre-flight refuses what its rounds would.

    Args:
        samples: the dataset's samples table.
        name: the column the job's spec names.
        role: what the spec calls it (``phenotype``, ``covariate``, ``target``), for messages.

    Raises:
        SpecMismatch: no such column, or not numeric (integers and booleans are numbers).
    """
    if name not in samples.column_names:
        known = [c for c in samples.column_names if c not in _SAMPLE_KEYS]
        raise SpecMismatch(
            f"{dataset.path}/samples.parquet: no column {name!r} (the job's {role}); the phenotype columns are {known} "
            "(ingest the dataset with --phenotypes, or fix the job's spec)",
            public=f"the {role} column {name!r} is missing",
        )
    column = samples.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
        raise SpecMismatch(f"{dataset.path}/samples.parquet: column {name!r} (the job's {role}) is {column.type}, "
                           "the job needs numbers", public=f"the {role} column {name!r} is not numeric")
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def variants_non_par_x(variants: pa.Table, assembly: str) -> np.ndarray:
    """bool per row of a variants table: on chrX outside the pseudo-autosomal regions of ``assembly`` (males haploid)."""
    return non_par_x(np.asarray(variants.column("chromosome").to_pylist(), dtype=object),
                     variants.column("base_pair_location").to_numpy(), assembly)


def reported_sex(samples: pa.Table) -> np.ndarray:
    """int64 per sample: the samples table's ``sex`` as PLINK codes it (1 male, 2 female), 0 where missing, other or absent."""
    if "sex" not in samples.column_names:
        return np.zeros(samples.num_rows, np.int64)
    values = np.array([str(v).removesuffix(".0") if v is not None else "" for v in samples.column("sex").to_pylist()])
    return np.where(values == "1", 1, np.where(values == "2", 2, 0)).astype(np.int64)


def check_binary(dataset: Dataset, name: str, values: np.ndarray, *, role: str) -> None:
    """Refuses a case/control column with present values other than 0 and 1.

    Raises:
        SpecMismatch: naming the first offending value (in the site's log only).
    """
    present = values[np.isfinite(values)]
    bad = present[~np.isin(present, (0.0, 1.0))]
    if bad.size:
        raise SpecMismatch(
            f"{dataset.path}/samples.parquet: binary {role} {name!r} has values other than 0/1 (e.g. {bad[0]:g}); "
            "recode cases as 1 and controls as 0, missing as NA",
            public=f"the binary {role} column {name!r} is not coded 0/1",
        )


def selected_calls(dataset: Dataset, variant_ids: Sequence[str]) -> np.ndarray:
    """The dataset's int8 calls of ``variant_ids`` (sorted), one row per ID in that order.

    Rows of variants the dataset does not hold are -1, as missing calls are: an analysis
    that mean-imputes treats "not typed here" and "missing" alike.
    """
    selected = np.asarray(variant_ids, dtype=str)
    calls = np.full((selected.size, dataset.num_samples), -1, np.int8)
    for block in dataset.iter_blocks():
        ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=str)
        row, present = locate(selected, ids)
        calls[row[present]] = block.call_dosage[present]
    return calls


def open_dataset(path: Path | str) -> Dataset:
    """Opens a dataset written by ``genofed ingest``."""
    return Dataset(path)
