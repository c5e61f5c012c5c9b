"""Converting a dataset of an older format to the current one, in place, without re-ingesting.

Format 1 stored each variant's genotypes as Parquet lists (``list<int8>``, ``list<float32>``);
format 2 packed them into one binary value per variant, one byte a call, which writes
about six times and reads about ten times faster; format 3 stores the calls 2 bits each
(``schemas/genotypes.json``), a quarter of the bytes to compress. Only the genotype files
change.

Each chunk is written to a temporary file and renamed over the old one, and
``dataset.json`` is rewritten last: a run that stops half-way leaves a folder that this
genofed still refuses (format 1) or reads as it is (format 2), and that the next run
finishes, skipping the chunks already in the current form.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schemas
from pipeline.dataset import (
    BYTE_FORMAT_MAJOR,
    FORMAT_MAJOR,
    FORMAT_VERSION,
    LIST_FORMAT_MAJOR,
    fits_two_bits,
    format_major,
    packed_width,
    read_metadata,
    unpacked_calls,
    unpacked_rows,
    write_genotypes,
)
from pipeline.errors import InputError


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: chunks converted, chunks already in the current format, the format now."""

    converted: int
    already_packed: int
    format_version: str


def _list_matrix(column: pa.ChunkedArray, dtype: np.dtype, n_samples: int, *, source: str) -> np.ndarray | None:
    """A format-1 list column as a (variants, samples) matrix; ``None`` when a row is null (no dosages)."""
    values = column.combine_chunks()
    if values.null_count:
        return None
    lengths = np.diff(values.offsets.to_numpy())
    if lengths.size and not np.all(lengths == n_samples):
        row = int(np.flatnonzero(lengths != n_samples)[0])
        raise InputError(f"{source}: row {row} holds {int(lengths[row])} genotypes, dataset.json says {n_samples} samples; "
                         "the dataset is damaged, re-run 'genofed ingest'")
    flat = values.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype).reshape(len(values), n_samples)


def _byte_rows_to_pack(column: pa.ChunkedArray, calls: np.ndarray, n_samples: int) -> bool:
    """Whether a binary call column holds a row stored one byte a call that 2 bits a call would hold (format 2)."""
    if n_samples < 2 or packed_width(n_samples) == n_samples:
        return False
    lengths = np.asarray(pc.binary_length(column.combine_chunks()))
    return bool(((lengths == n_samples) & fits_two_bits(calls)).any())


def _upgrade_chunk(path: Path, n_samples: int) -> bool:
    """Rewrites one genotypes file in the current form, in place; ``False`` when it is in it already."""
    with pq.ParquetFile(path) as handle:
        table = handle.read()
    call_column, dose_column = table.column("call_dosage"), table.column("dosage")
    if pa.types.is_binary(call_column.type):
        calls = unpacked_calls(call_column, n_samples, source=f"{path}, column call_dosage")
        if not _byte_rows_to_pack(call_column, calls, n_samples):
            return False
        dosage = None if dose_column.null_count else unpacked_rows(dose_column, np.dtype("<f4"), n_samples, source=f"{path}, column dosage")
    else:
        listed = _list_matrix(call_column, np.dtype(np.int8), n_samples, source=f"{path}, column call_dosage")
        if listed is None:
            raise InputError(f"{path}: column call_dosage has null rows; the dataset is damaged, re-run 'genofed ingest'")
        calls = listed
        dosage = _list_matrix(dose_column, np.dtype(np.float32), n_samples, source=f"{path}, column dosage")
    staged = path.with_name(f".{path.name}.upgrading")
    write_genotypes(staged, table.column("variant_id").combine_chunks(), [calls], [dosage])
    os.replace(staged, path)
    return True


def upgrade_dataset(path: Path | str, *, progress: Callable[[int, int], None] | None = None) -> Upgrade:
    """Converts a format-1 or format-2 dataset at ``path`` to the current format, in place.

    Every chunk is checked, so a current dataset holding chunks of an older genofed
    (ingest parts joined across versions) is mended too; one with none is left as it is.

    Raises:
        InputError: not a genofed dataset, a format this genofed cannot convert, or a
            damaged chunk (naming the file and row).
    """
    root = Path(path)
    meta_path = root / "dataset.json"
    meta = read_metadata(root)
    version = str(meta.get("format_version", "0"))
    if format_major(meta) not in (LIST_FORMAT_MAJOR, BYTE_FORMAT_MAJOR, FORMAT_MAJOR):
        raise InputError(f"{meta_path}: dataset format {version} cannot be converted to {FORMAT_VERSION} by this genofed; re-run 'genofed ingest'")
    converted = 0
    chunks = [chunk["name"] for chunk in meta["chunks"]]
    for done, name in enumerate(chunks, start=1):
        chunk_path = root / "genotypes" / f"{name}.parquet"
        if not chunk_path.is_file():
            raise InputError(f"{chunk_path}: missing (dataset.json lists chunk {name}); the dataset is incomplete, re-run 'genofed ingest'")
        converted += _upgrade_chunk(chunk_path, int(meta["num_samples"]))
        if progress is not None:
            progress(done, len(chunks))
    upgraded = {**meta, "format_version": FORMAT_VERSION, "schemas": {**meta.get("schemas", {}), "genotypes": schemas.load("genotypes").version}}
    if upgraded != meta:
        staged = meta_path.with_name(".dataset.json.upgrading")
        staged.write_text(json.dumps(upgraded, indent=2) + "\n")
        os.replace(staged, meta_path)
    return Upgrade(converted=converted, already_packed=len(chunks) - converted, format_version=FORMAT_VERSION)
