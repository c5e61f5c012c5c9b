"""Large 1-D arrays on transparent huge pages, where the kernel offers them.

A fresh 4 MB array costs about a thousand 4 KiB page faults on its first write (about
2 µs each on a 2-core server): in a secure-sum round the sites' encoded and masked
vectors and the coordinator's sum spend more time faulting in than being added. Asking
the kernel for 2 MiB pages (``madvise(MADV_HUGEPAGE)`` on a private anonymous map) makes
that two faults. It is per array, not process-wide: the map is unmapped when the array
is freed, so a long-running site agent does not keep its largest job's memory (as
raising malloc's thresholds would). Elsewhere (small arrays, no huge pages, not Linux)
:func:`empty` is ``numpy.empty``.
"""

from __future__ import annotations

import functools
import mmap
from pathlib import Path
from typing import Any

import numpy as np

HUGE_PAGE_BYTES = 2 << 20
"""The x86-64 and arm64 (4 KiB granule) transparent huge page."""

MIN_HUGE_ARRAY_BYTES = HUGE_PAGE_BYTES
"""Smaller arrays stay on ``numpy.empty``: one huge page would hold more than the array.

An array's last huge page may be partly unused, so an array on huge pages takes up to
2 MiB more memory than its bytes (5% of a 10^6-value uint32 vector)."""

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@functools.cache
def huge_pages_offered() -> bool:
    """Whether this kernel gives transparent huge pages to a map that asks (``always`` or ``madvise``)."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_ANONYMOUS"):
        return False
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def empty(length: int, dtype: Any) -> np.ndarray:
    """An uninitialised, writeable, C-contiguous ``(length,)`` array, on huge pages when large.

    The array owns its map through its base: freeing the array unmaps the memory.
    """
    dtype = np.dtype(dtype)
    nbytes = int(length) * dtype.itemsize
    if nbytes < MIN_HUGE_ARRAY_BYTES or not huge_pages_offered():
        return np.empty(length, dtype=dtype)
    # One spare huge page, so the array can start on a huge-page boundary wherever the
    # map lands; the untouched spare is never faulted in.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    whole = np.frombuffer(region, dtype=np.uint8)
    start = -whole.ctypes.data % HUGE_PAGE_BYTES
    return whole[start : start + nbytes].view(dtype)
