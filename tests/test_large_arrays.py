"""Large arrays on transparent huge pages: the right array, the kernel asked, the memory given back."""

from __future__ import annotations

import gc
import pickle
import sys

import numpy as np
import pytest

from pipeline import large_arrays
from pipeline.encoding import FixedPoint, Ring, encode
from pipeline.secagg import masks

needs_huge_pages = pytest.mark.skipif(not large_arrays.huge_pages_offered(),
                                      reason="this kernel offers no transparent huge pages")

LARGE = large_arrays.MIN_HUGE_ARRAY_BYTES // 4 + 3  # uint32 elements: just above the threshold, not page-sized


def _mapping_of(address: int) -> dict[str, str] | None:
    """The /proc/self/smaps entry (header and fields) of the map holding ``address``, or None."""
    entry: dict[str, str] | None = None
    found = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                if found is not None:
                    return found
                low, high = (int(part, 16) for part in head.split("-"))
                entry = {"range": head}
                found = entry if low <= address < high else None
            elif entry is not None and ":" in head:
                entry[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return found


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64, np.int64, np.float32])
@pytest.mark.parametrize("length", [0, 5, LARGE])
def test_empty__a_writeable_contiguous_array_of_the_shape_and_dtype(length, dtype):
    array = large_arrays.empty(length, dtype)
    assert array.shape == (length,) and array.dtype == np.dtype(dtype)
    assert array.flags.c_contiguous and array.flags.writeable and array.flags.aligned
    array[:] = np.arange(length, dtype=dtype)
    assert np.array_equal(array, np.arange(length, dtype=dtype))
    assert np.array_equal(pickle.loads(pickle.dumps(array)), array)


def test_empty__small_arrays_are_plain_numpy():
    array = large_arrays.empty(1000, np.uint32)
    assert array.base is None


@needs_huge_pages
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")
def test_empty__a_large_array_starts_on_a_huge_page_in_a_map_that_asked_for_them():
    array = large_arrays.empty(LARGE, np.uint32)
    assert array.ctypes.data % large_arrays.HUGE_PAGE_BYTES == 0
    mapping = _mapping_of(array.ctypes.data)
    assert mapping is not None and mapping.get("THPeligible") == "1", mapping


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/smaps")
def test_empty__freeing_the_array_unmaps_its_memory():
    array = large_arrays.empty(LARGE, np.uint32)
    array[:] = 7
    address = array.ctypes.data
    mapping = _mapping_of(address)
    assert mapping is not None
    del array
    gc.collect()
    after = _mapping_of(address)
    assert after is None or after["range"] != mapping["range"], "the array's map outlived it"


@pytest.mark.parametrize("ring", [Ring.R32, Ring.R64])
def test_large_encoded_and_masked_vectors_equal_the_plain_computation(ring):
    """The secure sum's large arrays (encoded vector, masked copy) hold what numpy's own would."""
    values = np.random.default_rng(3).normal(size=LARGE).astype(np.float32)
    encoding = FixedPoint(clip=8.0, scale_bits=16, ring=ring)
    encoded = encode(values, encoding)
    reference = np.rint(np.clip(values.astype(np.float64), -8, 8) * 2.0**16).astype(np.int64).astype(ring.dtype)
    assert np.array_equal(encoded, reference)
    seeds, signs = [bytes(range(32)), bytes(range(1, 33))], [1, -1]
    masked = masks.masked_copy(encoded, seeds, signs)
    assert np.array_equal(masked - masks.mask_sum(seeds, signs, LARGE, ring), reference)
