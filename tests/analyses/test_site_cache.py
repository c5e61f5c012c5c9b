"""A job's site cache: the dataset's genotypes read once per job where they fit, streamed in order where not."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analyses.census import site_variant_counts
from pipeline.analyses.site_cache import SiteCache, dataset_blocks, nbytes
from pipeline.dataset import Dataset, open_dataset
from tests.federation import runtime_support as rs


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    calls = rs.random_genotypes(0, 30, 12)
    return open_dataset(rs.write_dataset(tmp_path / "site", rs.variant_ids(range(100, 400, 10)), calls, chunk_size=7))


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The chunks read from disk, in order (the real reader, observed)."""
    seen: list[str] = []
    original = Dataset.read_block

    def read_block(self: Dataset, chunk: str, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(chunk)
        return original(self, chunk, **kwargs)

    monkeypatch.setattr(Dataset, "read_block", read_block)
    return seen


def _calls(blocks) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.concatenate([block.call_dosage for block in blocks])


def test_dataset_blocks__read_once_per_job_when_they_fit(dataset, reads):
    cache = SiteCache()
    site_variant_counts(dataset, cache)  # the census' read
    again = _calls(dataset_blocks(dataset, cache))  # the regression's, rounds later
    assert reads == dataset.chunk_names
    np.testing.assert_array_equal(again, _calls(dataset.iter_blocks()))
    assert cache.size_bytes >= again.nbytes


def test_dataset_blocks__streamed_in_order_when_the_dataset_exceeds_the_budget(dataset, reads):
    cache = SiteCache(max_bytes=dataset.num_samples * 10)  # fewer bytes than the 30 x 12 calls
    first = _calls(dataset_blocks(dataset, cache, threads=3))
    second = _calls(dataset_blocks(dataset, cache, threads=1))
    assert sorted(reads) == sorted(dataset.chunk_names * 2) and cache.size_bytes == 0  # read twice, nothing kept
    np.testing.assert_array_equal(first, second)  # read ahead on threads, still in genome order
    np.testing.assert_array_equal(first, _calls(dataset.iter_blocks()))


def test_dataset_blocks__a_rewritten_dataset_is_read_again(tmp_path, reads):
    path = rs.write_dataset(tmp_path / "site", rs.variant_ids(range(100, 200, 10)), rs.random_genotypes(1, 10, 5))
    cache = SiteCache()
    before = _calls(dataset_blocks(open_dataset(path), cache))
    rs.write_dataset(tmp_path / "site", rs.variant_ids(range(100, 200, 10)), rs.random_genotypes(2, 10, 5))
    after = _calls(dataset_blocks(open_dataset(path), cache))
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, _calls(open_dataset(path).iter_blocks()))


def test_nbytes__counts_the_arrays_inside_a_block(dataset):
    block = next(iter(dataset.iter_blocks()))
    assert nbytes([block]) == block.call_dosage.nbytes + block.variants.nbytes
