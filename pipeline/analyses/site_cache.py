"""What a site keeps in memory between the rounds of one job.

Reading genotypes is most of a site step's time, and consecutive rounds of a job read
the same rows (the census' two rounds, a PCA's iterations, a logistic GWAS's Newton
rounds). A :class:`SiteCache` holds those arrays for one job. It is an explicit object,
owned by whoever owns the job's lifetime at the site (the site agent, or the in-memory
runner) and handed to the analysis in its :class:`~pipeline.analyses.protocol.SiteContext`;
the owner drops it when the job ends. Analyses never keep module-level caches.

Entries are bounded in number and in bytes (least recently used first out); an entry
larger than the byte budget is computed and returned but not kept.

:func:`dataset_blocks` is the one way an analysis reads a dataset's genotypes during a
job: when the whole hard-call matrix fits the job's budget it is read once and kept, so
a GWAS's census, and its regression three rounds later, read the files once (reading
and decompressing a chunk costs about three times the census' counting of it); otherwise it is
streamed, a few chunks ahead, in bounded memory. A GWAS on a dataset with dosages reads
them once more for its regression (the census counts hard calls only).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from pipeline.dataset import Block, Dataset

__all__ = ["SiteCache", "dataset_blocks", "dataset_fingerprint", "nbytes"]

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 16
DEFAULT_MAX_BYTES = 1 << 30

READ_THREADS = max(1, min(4, (os.cpu_count() or 1) // 2))
"""Chunks a site reads at once: up to 4, half the cores (one on a 2-core machine, where three
site processes sharing the cores ran ~15% slower with two threads each). Parquet decoding
releases the GIL."""


def nbytes(value: Any) -> int:
    """Bytes held by ``value``: numpy arrays and Arrow arrays, also inside tuples, lists, dicts and dataclasses."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, field.name)) for field in dataclasses.fields(value))
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes"), int):
        return int(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class SiteCache:
    """A bounded, least-recently-used cache of one job's site-side arrays (thread-safe)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """Bytes held by the kept entries."""
        return sum(size for _, size in self._entries.values())

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value kept under ``key``, or ``compute()`` (kept if it fits the budget).

        Keys should name what the value depends on (the dataset's path, the variant
        selection's digest...), so two uses of one cache never collide.
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]  # type: ignore[no-any-return]
        value = compute()
        size = nbytes(value)
        if size > self.max_bytes:
            return value
        with self._lock:
            self._entries[key] = (value, size)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries or self.size_bytes > self.max_bytes:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drops every entry (the runtime calls it when the job ends)."""
        with self._lock:
            self._entries.clear()


def dataset_fingerprint(dataset: Dataset) -> tuple[Any, ...]:
    """What identifies a dataset's content: its path, the part of it read (:attr:`~pipeline.dataset.Dataset.view`)
    and every file's inode, size and mtime."""
    files = [dataset.path / "dataset.json"]
    for chunk in dataset.chunk_names:
        files += [dataset.path / "genotypes" / f"{chunk}.parquet", dataset.path / "variants" / f"{chunk}.parquet"]
    stats = [os.stat(path) for path in files]
    return (str(dataset.path.resolve()), dataset.view, *((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats))


def _read_ahead(dataset: Dataset, names: Sequence[str], threads: int, with_dosage: bool) -> Iterator[Block]:
    """The chunks in order, read on ``threads`` threads with at most ``threads`` blocks read ahead."""
    if threads <= 1:
        yield from (dataset.read_block(name, with_dosage=with_dosage) for name in names)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[Block]] = deque()
        for name in names:
            pending.append(pool.submit(dataset.read_block, name, with_dosage=with_dosage))
            if len(pending) > threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def dataset_blocks(dataset: Dataset, cache: SiteCache | None, *, with_dosage: bool = False,
                   threads: int = READ_THREADS) -> Sequence[Block] | Iterator[Block]:
    """Every chunk of ``dataset`` as a :class:`~pipeline.dataset.Block` (hard calls; with ``with_dosage`` also the
    dosages where the chunk stores them), in genome order.

    Kept in ``cache`` for the job's later rounds when all of it fits its byte budget
    (keyed by the files' identity: a dataset rewritten in between is read again);
    otherwise streamed with :func:`_read_ahead`. Hard calls and hard calls with dosages
    are kept apart: a dataset without dosages is read with them as without.
    """
    with_dosage = with_dosage and dataset.has_dosage
    genotype_bytes = dataset.num_variants * dataset.num_samples * (1 + 4 * with_dosage)  # int8 calls, float32 dosages
    if cache is None or genotype_bytes > cache.max_bytes:
        return _read_ahead(dataset, dataset.chunk_names, threads, with_dosage)
    return cache.get(("dataset.blocks", with_dosage, dataset_fingerprint(dataset)),
                     lambda: list(_read_ahead(dataset, dataset.chunk_names, threads, with_dosage)))
