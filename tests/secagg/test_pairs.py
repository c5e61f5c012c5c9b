"""R64 ring elements as uint32 pairs on the JAX side, against Python integers."""

from __future__ import annotations

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.secagg import pairs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=6), st.integers(0, 2**64 - 1))
def test_pairs__uint64_arithmetic_on_uint32_pairs(values: list[int], other: int) -> None:
    array = np.array(values, dtype=np.uint64)
    lo, hi = pairs.to_pairs(array)
    np.testing.assert_array_equal(pairs.from_pairs(lo, hi), array)
    total = pairs.from_pairs(*pairs.pairs_sum(jax.numpy.asarray(lo), jax.numpy.asarray(hi)))
    assert int(total) == sum(values) % 2**64
    negated = pairs.from_pairs(*pairs.pairs_neg(jax.numpy.asarray(lo), jax.numpy.asarray(hi)))
    assert negated.tolist() == [(-v) % 2**64 for v in values]
    o_lo, o_hi = pairs.to_pairs(np.full(len(values), other, dtype=np.uint64))
    added = pairs.from_pairs(*pairs.pairs_add(*(jax.numpy.asarray(a) for a in (lo, hi, o_lo, o_hi))))
    assert added.tolist() == [(v + other) % 2**64 for v in values]
