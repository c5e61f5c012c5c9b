"""Atomic outputs: work goes to a temporary path beside the target, renamed at the end.

A failed or interrupted command therefore never leaves a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schemas
from pipeline.errors import OutputExistsError


def fsync_directory(folder: Path) -> None:
    """Makes a rename or a new file in ``folder`` durable (fsync of the directory entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replaces ``path`` atomically with ``data``, readable by its owner only (0600), synced to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_private_lines(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Appends ``records`` as JSON lines to a file only its owner reads (created 0600), synced before returning.

    For a site's append-only records (its release ledger, its privacy spends): a crash
    leaves every line it returned from on disk.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_output_path(path: Path, *, force: bool) -> None:
    """Refuses to overwrite ``path`` unless ``force``."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; choose another --out or pass --force to replace it")


def _temporary_sibling(target: Path, create: Callable[[str], None]) -> Path:
    """A new, uniquely named file or folder next to ``target``, made by ``create(name)``.

    Outputs are for others to read (an analyst's results, a dataset a cluster job opens):
    ``create`` asks for 0666/0777 and the kernel applies the umask, as for any file a tool
    writes, where ``tempfile.mkstemp``/``mkdtemp`` would leave them 0600/0700 for good.
    Secrets are written with :func:`write_private` (0600), never through here.
    """
    for _ in range(100):
        name = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"
        try:
            create(str(name))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"could not create a temporary path next to {target}")


@contextlib.contextmanager
def atomic_directory(path: Path | str, *, force: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to ``path``; on success it replaces ``path``.

    On any exception the temporary folder is removed and ``path`` is left untouched.
    """
    target = Path(path)
    check_output_path(target, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(target, lambda name: os.mkdir(name, 0o777))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        tmp.rename(target)


@contextlib.contextmanager
def atomic_file(path: Path | str, *, force: bool = False) -> Iterator[Path]:
    """Yields a temporary file path next to ``path``; renamed onto ``path`` on success."""
    target = Path(path)
    check_output_path(target, force=force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(target, lambda name: os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)))
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_table(
    table: pa.Table, path: Path, schema_name: str, *, source: str | None = None, row_group_size: int | None = None,
    plain_columns: Sequence[str] = (),
) -> None:
    """Validates ``table`` against ``schemas/<schema_name>.json`` and writes it as Parquet.

    ``row_group_size`` (rows) keeps each column chunk cache-friendly for wide columns:
    one giant row group of genotypes writes several times slower. ``plain_columns`` hold
    one large distinct value per row (packed genotypes): a dictionary of them, or their
    min/max in every page header, would cost time and bytes and tell nobody anything.
    """
    conformed = schemas.conform(table, schema_name, source=source or str(path))
    described = [name for name in conformed.column_names if name not in plain_columns]
    pq.write_table(conformed, path, compression="zstd", row_group_size=row_group_size,
                   use_dictionary=described, write_statistics=described)
