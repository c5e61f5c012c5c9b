"""The checks of decoded sums pass every honest sum, even at a coarse fixed-point resolution."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analyses.sum_checks import check_moments, refuse_impossible
from pipeline.encoding import Count, Real, plan_layout
from pipeline.errors import ProtocolError

SITES = 3


def _coarse_moments(seed: int) -> tuple[dict[str, np.ndarray], object]:
    """Moments of 3 sites at 2 fractional bits: columns constant 1.1, constant -0.7, random in [-3, 3], and never observed."""
    rng = np.random.default_rng(seed)
    layout = plan_layout([Real("s", (4,), 100.0, max_scale_bits=2), Real("q", (4,), 1000.0, max_scale_bits=2),
                          Count("n", (4,), 30)], SITES)
    assert layout.field("s").encoding.scale_bits == 2
    ring = np.zeros(layout.size, layout.ring.dtype)
    for _ in range(SITES):
        rows = int(rng.integers(1, 30))
        values = np.column_stack([np.full(rows, 1.1), np.full(rows, -0.7), rng.uniform(-3, 3, rows), np.zeros(rows)])
        observed = np.ones_like(values, bool)
        observed[:, 3] = False
        contribution = {"s": np.where(observed, values, 0).sum(axis=0), "q": np.where(observed, values**2, 0).sum(axis=0),
                        "n": observed.sum(axis=0)}
        ring += layout.encode(contribution, rounding="stochastic", rng=rng)
    return layout.decode(ring, SITES), layout


@pytest.mark.parametrize("seed", range(30))
def test_sum_checks__honest_moments_pass_at_a_coarse_resolution(seed):
    total, layout = _coarse_moments(seed)
    check_moments("test", layout, total, SITES, count="n", sums="s", squares="q", bound=3.0)


def test_sum_checks__moments_beyond_the_rounding_slack_are_refused():
    total, layout = _coarse_moments(0)
    lower = {**total, "q": total["q"] - np.array([0.0, 0.0, 0.0, 3.0 * 0.25 + 0.25])}  # q < 0 beyond 3 sites x 1/4
    with pytest.raises(ProtocolError, match=r"test: index 3: the summed q is -1, expected at least 0 \(1 of 4 impossible\)"):
        check_moments("test", layout, lower, SITES, count="n", sums="s", squares="q")
    shifted = {**total, "s": total["s"] + np.array([0.0, 0.0, 0.0, 1.0])}  # a sum over no values
    with pytest.raises(ProtocolError, match=r"index 3: the summed s\^2 is 1, expected at most n x q = 0, as a variance"):
        check_moments("test", layout, shifted, SITES, count="n", sums="s", squares="q")


def test_sum_checks__the_message_names_the_entry_the_value_and_the_limit():
    with pytest.raises(ProtocolError) as error:
        refuse_impossible("gwas", "alt_count", [3.0, 9.0], [False, True], "in [0, 2n = {limit}]", limit=[4, 8], labels=["v1", "v2"],
                          noun="variant")
    assert str(error.value) == ("gwas: variant v2: the summed alt_count is 9, expected in [0, 2n = 8] (1 of 2 impossible); "
                                "a site sent values beyond its own data, so nothing is published")
    refuse_impossible("gwas", "n", 5, False, "at most 6")  # nothing impossible: no error
