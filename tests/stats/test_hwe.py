"""The vectorized HWE exact test against a slow exact enumeration (and known values)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stats import hwe as hwe_module
from pipeline.stats.hwe import hwe_exact_p


def naive_hwe_exact(n_hom_ref: int, n_het: int, n_hom_alt: int) -> float:
    """Exact HWE p-value by enumerating every table with exact integer weights.

    Given n samples and n_rare copies of the rarer allele, the probability of h hets is
    proportional to the integer n! / (a! h! b!) * 2^h = C(n, h) C(n - h, a) 2^h
    (a = rare homozygotes, b = common ones); the p-value sums the tables that are no
    more probable than the observed one (Wigginton et al. 2005, plink's definition).
    """
    n_hom_ref, n_het, n_hom_alt = int(n_hom_ref), int(n_het), int(n_hom_alt)
    n = n_hom_ref + n_het + n_hom_alt
    if n == 0:
        return math.nan
    n_rare = 2 * min(n_hom_ref, n_hom_alt) + n_het

    def weight(h: int) -> int:
        a = (n_rare - h) // 2
        return math.comb(n, h) * math.comb(n - h, a) * 2**h

    weights = [weight(h) for h in range(n_rare % 2, n_rare + 1, 2)]
    observed = weight(n_het)
    return float(Fraction(sum(w for w in weights if w <= observed), sum(weights)))


def _check(hom_ref: list[int], het: list[int], hom_alt: list[int], **kwargs: int) -> None:
    got = hwe_exact_p(np.array(hom_ref), np.array(het), np.array(hom_alt), **kwargs)
    want = np.array([naive_hwe_exact(*t) for t in zip(hom_ref, het, hom_alt)])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)


def test_naive_hwe_exact__hand_computed_table() -> None:
    # n = 6, 6 rare alleles: weights 20, 360, 480, 64 for h = 0, 2, 4, 6.
    assert naive_hwe_exact(3, 0, 3) == pytest.approx(20 / 924, rel=1e-15)
    assert naive_hwe_exact(3, 2, 1) == pytest.approx(1.0)  # h = 2 of 4 rare alleles, the mode


def test_hwe_exact_p__hand_enumerated_values() -> None:
    # Tables small enough to enumerate on paper with P(h) ~ C(n,h) C(n-h,a) 2^h:
    # n=2, 2 rare alleles: weights 2 (h=0), 4 (h=2); n=4, 4 rare: 6, 48, 16 (h=0, 2, 4);
    # n=6, 6 rare: 20, 360, 480, 64 (h=0, 2, 4, 6).
    cases = {(1, 0, 1): 1 / 3, (0, 2, 0): 1.0, (2, 0, 2): 6 / 70, (0, 4, 0): 22 / 70, (1, 2, 1): 1.0, (3, 0, 3): 20 / 924, (0, 6, 0): 84 / 924}
    got = hwe_exact_p(*(np.array(c) for c in zip(*cases)))
    np.testing.assert_allclose(got, list(cases.values()), rtol=1e-12)
    assert [naive_hwe_exact(*c) for c in cases] == pytest.approx(list(cases.values()), rel=1e-15)


def test_hwe_exact_p__matches_naive__every_table_up_to_30_samples() -> None:
    # Exhaustive: covers exact ties between tables, which the tail must include.
    tables = [(r, h, n - r - h) for n in range(31) for r in range(n + 1) for h in range(n - r + 1)]
    _check(*(list(c) for c in zip(*tables)))


def test_hwe_exact_p__edge_cases() -> None:
    got = hwe_exact_p([0, 5, 0, 0, 4, 0], [0, 0, 1, 0, 1, 2], [0, 0, 0, 7, 0, 0])
    assert np.isnan(got[0])  # no calls
    np.testing.assert_array_equal(got[1:4], [1.0, 1.0, 1.0])  # monomorphic, single het, all hom-alt
    assert got[4] == 1.0
    assert got[5] == pytest.approx(naive_hwe_exact(0, 2, 0))


def test_hwe_exact_p__empty_input() -> None:
    assert hwe_exact_p([], [], []).shape == (0,)


def test_hwe_exact_p__rejects_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        hwe_exact_p([1], [-1], [0])


def test_hwe_exact_p__grouping_does_not_change_results() -> None:
    rng = np.random.default_rng(1)
    hom_ref, het, hom_alt = (rng.integers(0, 60, size=200) for _ in range(3))
    whole = hwe_exact_p(hom_ref, het, hom_alt)
    tiny_groups = hwe_exact_p(hom_ref, het, hom_alt, max_cells=7)
    np.testing.assert_allclose(whole, tiny_groups, rtol=1e-13)  # only summation order differs
    _check(list(hom_ref[:40]), list(het[:40]), list(hom_alt[:40]), max_cells=50)


def test_hwe_exact_p__tiny_p_values_do_not_underflow_to_nan() -> None:
    # 2500 and 2000 samples with all rare alleles in homozygotes: p far below 1e-300.
    p = hwe_exact_p([1250, 1000], [0, 0], [1250, 1000])
    assert np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(p < 1e-300)
    # Extreme but representable: matches the exact value.
    _check([400, 3000], [10, 20], [90, 500])


counts = st.integers(min_value=0, max_value=60)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(counts, counts, counts), min_size=1, max_size=20))
def test_hwe_exact_p__matches_naive__small_counts(tables: list[tuple[int, int, int]]) -> None:
    hom_ref, het, hom_alt = (list(c) for c in zip(*tables))
    _check(hom_ref, het, hom_alt)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=5000),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_hwe_exact_p__matches_naive__large_counts(n_samples: int, rare_seed: int, het_fraction: float) -> None:
    # Draw a table of up to 5000 samples, from extreme to balanced het fractions.
    n_rare = rare_seed % (n_samples + 1)
    het = int(round(het_fraction * n_rare))
    het -= (n_rare - het) % 2
    het = max(het, n_rare % 2)
    hom_rare = (n_rare - het) // 2
    hom_common = n_samples - het - hom_rare
    if hom_common < 0:
        return
    want = naive_hwe_exact(hom_common, het, hom_rare)
    got = hwe_exact_p([hom_common, hom_rare], [het, het], [hom_rare, hom_common])
    np.testing.assert_allclose(got, [want, want], rtol=1e-9, atol=1e-300)


def _tables_near_equilibrium(n_samples: int, frequencies: list[float], het_shifts: list[int]) -> list[tuple[int, int, int]]:
    """Tables of n_samples with the HWE-expected het count moved by each shift (parity kept)."""
    tables = []
    for frequency in frequencies:
        n_rare = int(2 * n_samples * frequency)
        expected = n_rare * (2 * n_samples - n_rare) / (2 * n_samples - 1)
        for shift in het_shifts:
            het = int(expected) + shift
            het -= (n_rare - het) % 2
            het = min(max(het, n_rare % 2), n_rare)
            hom_rare = (n_rare - het) // 2
            tables.append((n_samples - het - hom_rare, het, hom_rare))
    return tables


def test_hwe_exact_p__windowed_rows_match_naive__large_samples() -> None:
    # n = 5000: the windows cover a few hundred of up to 1500 tables; p from 1 down to ~1e-30.
    tables = _tables_near_equilibrium(5000, [0.15, 0.3], [0, 3, -40, 150])
    hom_ref, het, hom_alt = (np.array(c) for c in zip(*tables))
    n_rare = 2 * np.minimum(hom_ref, hom_alt) + het
    first_k, last_k = hwe_module._windows(n_rare, het, hom_ref + het + hom_alt)
    assert np.all(2 * (last_k - first_k + 1) <= n_rare // 2 + 1)  # the fast path, not whole rows
    _check(*(list(c) for c in zip(*tables)))


def test_hwe_exact_p__too_narrow_windows_are_detected_and_redone(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _tables_near_equilibrium(3000, [0.1, 0.3], [0, 25, -60])

    def narrow(n_rare: np.ndarray, n_het: np.ndarray, n_samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        observed_k = (n_het - n_rare % 2) // 2
        return np.maximum(observed_k - 2, 0), np.minimum(observed_k + 2, n_rare // 2)

    monkeypatch.setattr(hwe_module, "_windows", narrow)
    _check(*(list(c) for c in zip(*tables)))
