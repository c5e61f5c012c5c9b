"""Converting a dataset of an older format to the current one, in place, without re-ingesting.

Format 1 stored each variant's genotypes as Parquet lists (``list<int8>``, ``list<float32>``);
format 2 packs them into one binary value per variant (``schemas/genotypes.json``), which
writes about six times and reads about ten times faster. Only the genotype files change.

Each chunk is written to a temporary file and renamed over the old one, and
``dataset.json`` is rewritten last: a run that stops half-way leaves a folder that this
genofed still refuses (its ``dataset.json`` says format 1) and that the next run finishes,
skipping the chunks already packed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schemas
from pipeline.dataset import (
    FORMAT_MAJOR,
    FORMAT_VERSION,
    LIST_FORMAT_MAJOR,
    format_major,
    read_metadata,
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


def _upgrade_chunk(path: Path, n_samples: int) -> bool:
    """Packs one format-1 genotypes file in place; ``False`` when it is packed already (its schema says so)."""
    if pa.types.is_binary(pq.read_schema(path).field("call_dosage").type):
        return False
    with pq.ParquetFile(path) as handle:
        table = handle.read()
    calls = _list_matrix(table.column("call_dosage"), np.dtype(np.int8), n_samples, source=f"{path}, column call_dosage")
    if calls is None:
        raise InputError(f"{path}: column call_dosage has null rows; the dataset is damaged, re-run 'genofed ingest'")
    dosage = _list_matrix(table.column("dosage"), np.dtype(np.float32), n_samples, source=f"{path}, column dosage")
    staged = path.with_name(f".{path.name}.upgrading")
    write_genotypes(staged, table.column("variant_id").combine_chunks(), [calls], [dosage])
    os.replace(staged, path)
    return True


def upgrade_dataset(path: Path | str, *, progress: Callable[[int, int], None] | None = None) -> Upgrade:
    """Converts a format-1 dataset at ``path`` to the current format, in place.

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
    if format_major(meta) not in (LIST_FORMAT_MAJOR, FORMAT_MAJOR):
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
