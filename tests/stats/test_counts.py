"""The genotype-count kernels (JAX and NumPy engines) against plain Python loops."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.stats.counts import (
    SampleCounts,
    VariantCounts,
    count_block,
    count_variants,
    default_engine,
    tile_rows,
)
from pipeline.stats.counts_jax import sample_genotype_counts, variant_genotype_counts


def naive_counts(call_dosage: np.ndarray) -> tuple[VariantCounts, SampleCounts]:
    """Counts by looping over every call (obviously correct, slow)."""
    n_variants, n_samples = call_dosage.shape
    per_variant = np.zeros((4, n_variants), np.int64)
    per_sample = np.zeros((3, n_samples), np.int64)
    for v in range(n_variants):
        for s in range(n_samples):
            value = int(call_dosage[v, s])
            if value in (0, 1, 2):
                per_variant[value, v] += 1
                per_sample[0, s] += 1
                per_sample[2, s] += value == 1
            elif value == -1:
                per_variant[3, v] += 1
                per_sample[1, s] += 1
    return VariantCounts(*per_variant), SampleCounts(*per_sample)


def random_block(rng: np.random.Generator, n_variants: int, n_samples: int) -> np.ndarray:
    return rng.choice(np.array([-1, 0, 1, 2], np.int8), size=(n_variants, n_samples), p=[0.1, 0.5, 0.3, 0.1])


def assert_counts_equal(got: tuple[VariantCounts, SampleCounts], want: tuple[VariantCounts, SampleCounts]) -> None:
    for got_part, want_part in zip(got, want):
        for name, g, w in zip(got_part._fields, got_part, want_part):
            np.testing.assert_array_equal(np.asarray(g), w, err_msg=name)


def test_variant_genotype_counts__matches_naive() -> None:
    block = random_block(np.random.default_rng(0), 13, 7)
    got = variant_genotype_counts(block)
    want, _ = naive_counts(block)
    assert all(np.asarray(a).dtype == np.int32 for a in got)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_sample_genotype_counts__ignores_masked_rows() -> None:
    block = random_block(np.random.default_rng(1), 8, 5)
    mask = np.array([True] * 5 + [False] * 3)
    got = sample_genotype_counts(block, mask)
    _, want = naive_counts(block[:5])
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w)


def test_count_kernels__do_not_recompile_on_second_call_with_same_shape() -> None:
    rng = np.random.default_rng(2)
    first, second = random_block(rng, 16, 6), random_block(rng, 16, 6)
    mask = np.ones(16, bool)
    variant_genotype_counts(first)
    sample_genotype_counts(first, mask)
    variant_size, sample_size = variant_genotype_counts._cache_size(), sample_genotype_counts._cache_size()
    variant_genotype_counts(second)
    sample_genotype_counts(second, mask)
    assert variant_genotype_counts._cache_size() == variant_size
    assert sample_genotype_counts._cache_size() == sample_size


def test_count_block__chunks_of_different_sizes_share_compilations() -> None:
    rng = np.random.default_rng(3)
    count_block(random_block(rng, 40, 6), tile_variants=16, engine="jax")
    size = variant_genotype_counts._cache_size()
    for n_variants in (33, 48, 17, 64):  # all cut into tiles of 16 rows
        count_block(random_block(rng, n_variants, 6), tile_variants=16, engine="jax")
    assert variant_genotype_counts._cache_size() == size


def test_count_kernels__zero_variants() -> None:
    empty = np.zeros((0, 4), np.int8)
    per_variant = variant_genotype_counts(empty)
    per_sample = sample_genotype_counts(empty, np.zeros(0, bool))
    assert all(np.asarray(a).shape == (0,) for a in per_variant)
    for a in per_sample:
        np.testing.assert_array_equal(np.asarray(a), np.zeros(4))
    for engine in ("numpy", "jax"):
        variants, samples = count_block(empty, engine=engine)
        assert all(a.shape == (0,) for a in variants)
        assert all(a.shape == (4,) and not a.any() for a in samples)
        assert all(a.shape == (0,) for a in count_variants(empty, engine=engine))


@pytest.mark.parametrize("engine", ["numpy", "jax"])
@pytest.mark.parametrize("n_variants", [1, 5, 16, 37])
def test_count_block__matches_naive_across_tiles(n_variants: int, engine: str) -> None:
    block = random_block(np.random.default_rng(n_variants), n_variants, 9)
    got = count_block(block, tile_variants=16, engine=engine)
    assert_counts_equal(got, naive_counts(block))
    assert all(a.dtype == np.int64 for part in got for a in part)


def test_count_block__numpy_engine_matches_naive_across_its_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.stats.counts as counts

    monkeypatch.setattr(counts, "_NUMPY_TILE_BYTES", 40)  # 3 rows of 11 samples per tile: 23 rows = 8 tiles
    block = random_block(np.random.default_rng(4), 23, 11)
    block[3, :4] = [3, -5, 127, -128]
    got = count_block(block, engine="numpy")
    assert_counts_equal(got, naive_counts(block))
    assert_counts_equal((count_variants(block, engine="numpy"),), (naive_counts(block)[0],))


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_count_variants__equals_the_per_variant_half_of_count_block(engine: str) -> None:
    block = random_block(np.random.default_rng(5), 37, 9)
    got = count_variants(block, tile_variants=16, engine=engine)
    assert all(a.dtype == np.int64 for a in got)
    assert_counts_equal((got,), (naive_counts(block)[0],))


def test_default_engine__numpy_on_cpu_and_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import jax

    from pipeline.errors import ConfigurationError

    monkeypatch.delenv("GENOFED_COUNT_ENGINE", raising=False)
    assert default_engine() == ("numpy" if jax.default_backend() == "cpu" else "jax")
    monkeypatch.setenv("GENOFED_COUNT_ENGINE", "jax")
    assert default_engine() == "jax"
    monkeypatch.setenv("GENOFED_COUNT_ENGINE", "cuda")
    with pytest.raises(ConfigurationError, match="GENOFED_COUNT_ENGINE"):
        default_engine()
    with pytest.raises(ConfigurationError, match="unknown count engine"):
        count_block(np.zeros((1, 1), np.int8), engine="cuda")


@pytest.mark.parametrize("engine", ["numpy", "jax"])
def test_count_block__invalid_values_are_counted_nowhere(engine: str) -> None:
    block = np.array([[0, 1, 2, -1, 3, -5]], np.int8)
    variants, samples = count_block(block, engine=engine)
    assert [int(a[0]) for a in variants] == [1, 1, 1, 1]
    np.testing.assert_array_equal(samples.n_called, [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(samples.n_missing, [0, 0, 0, 1, 0, 0])


def test_count_block__rejects_wrong_dtype() -> None:
    with pytest.raises(ValueError, match="int8"):
        count_block(np.zeros((2, 2), np.int64))


def test_tile_rows__powers_of_two_up_to_the_tile() -> None:
    assert [tile_rows(n, 16) for n in (0, 1, 3, 8, 9, 16, 100)] == [1, 1, 4, 8, 16, 16, 16]
