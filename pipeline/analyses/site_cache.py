"""What a site keeps in memory between the rounds of one job.

Reading genotypes is most of a site step's time, and consecutive rounds of a job read
the same rows (the census' two rounds, a PCA's iterations, a logistic GWAS's Newton
rounds). A :class:`SiteCache` holds those arrays for one job. It is an explicit object,
owned by whoever owns the job's lifetime at the site (the site agent, or the in-memory
runner) and handed to the analysis in its :class:`~pipeline.analyses.protocol.SiteContext`;
the owner drops it when the job ends. Analyses never keep module-level caches.

Entries are bounded in number and in bytes (least recently used first out); an entry
larger than the byte budget is computed and returned but not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np

__all__ = ["SiteCache", "nbytes"]

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 16
DEFAULT_MAX_BYTES = 1 << 30


def nbytes(value: Any) -> int:
    """Bytes held by ``value``: numpy arrays and Arrow arrays, also inside tuples, lists and dicts."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
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
