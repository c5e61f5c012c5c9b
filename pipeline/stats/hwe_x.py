"""Hardy-Weinberg exact test for chrX outside the pseudo-autosomal regions, vectorized.

The test is the one of Graffelman & Weir (2016), "Testing for Hardy-Weinberg equilibrium
at biallelic genetic markers on the X chromosome", Heredity 116:558-568, which plink2
``--hardy`` reports in its ``.hardy.x`` file (column ``P``) and ``--hwe`` applies on
chrX. Males are haploid, females diploid. Conditional on the numbers of males ``nm`` and
females ``nf`` and on the allele totals ``A1 = 2 f11 + h + m1`` and ``A2 = N - A1``
(``N = nm + 2 nf`` allele copies), a table is fixed by (male allele-1 count ``m1``,
female het count ``h``) and, with ``f1 = A1 - m1`` and ``f2 = 2 nf - f1`` the female
allele counts and ``f11 = (f1 - h) / 2``, ``f22 = (f2 - h) / 2`` the female homozygotes,
has probability

    P(m1, h) = nm! nf! A1! A2! 2^h / (m1! m2! f11! h! f22! N!)

(``m2 = nm - m1``): the N alleles are dealt at random to the male and female copies,
that is a hypergeometric law of ``m1`` times, given ``f1``, the autosomal (Levene)
law of ``h`` among the females. The p-value is the sum of P over every table at most
as probable as the observed one (the observed one included): two-sided, no mid-p,
plink2's default. A variant with one possible table has p = 1; with no female it has
one table (``m1 = A1``), so p = 1; with no male the test is the autosomal one and
:func:`pipeline.stats.hwe.hwe_exact_p` is used, as plink2 does.

plink2 (2.00a3.5, checked on small VCFs) counts only the samples of known sex: samples
with SEX unknown appear in neither the female nor the male counts of ``.hardy.x``
(nor in its P), and ``--hwe`` on chrX removes exactly the variants whose ``.hardy.x``
P is below the threshold; both use founders only.

Instead of walking tables from the tails inward as plink2 does, each variant is cut into
rows (one per ``m1``), and only the tables whose log-probability lies within
:data:`WINDOW_LOG_DROP` below the observed one are evaluated: the others are either
more probable than the observed table (outside the tail) or, together, at most
(nm + 1)(nf + 1) e^-50 of it (below 1e-12 up to 100,000 samples). ``log P`` is
jointly concave in (m1, h) once the factorials are extended by the gamma function (a
sum of ``-lgamma`` of affine maps), so

* the rows that matter form one interval of ``m1``: those whose total mass, the
  hypergeometric ``log P(m1)``, concave too, reaches the observed ``log P`` minus the
  drop (a row lighter than that has no cell above it);
* within a row the cells with ``log P`` in [observed - drop, observed] form at most two
  bands, one on each side of the row's mode.

Both are found by vectorized bisection of the continuous extension (the lattice points
lie on it), widened by :data:`_SLACK` lattice steps so that rounding cannot drop a cell;
the widened cells are evaluated and classified like the others. Every band cell is then
computed directly in log space (``gammaln``), the tail cells are summed as
``exp(log P - log P(observed))``, at most 1 (no overflow, and underflow only of terms
that cannot matter), and the normalizing constant is the closed form above (the sum of
``2^h / (m1! m2! f11! h! f22!)`` over all tables is ``N! / (nm! nf! A1! A2!)``). The
work per variant is a few hundred rows of a few hundred cells at 10,000 samples, and
cells are processed in groups of at most ``max_cells`` (bounded memory).

Probabilities within a relative :data:`~pipeline.stats.hwe.TIE_TOLERANCE` (1e-9, on the
scale of ``|log P(observed)|``) of the observed one count as ties, as in
:mod:`pipeline.stats.hwe`; the ``gammaln`` rounding (about 1e-11 at 20,000 samples) is
well below it. As in plink2, a log p-value above -2^-35 (the observed table is, up to
that rounding, the most probable one) is reported as p = 1.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import gammaln, psi

from pipeline.stats.hwe import (
    DEFAULT_MAX_CELLS,
    TIE_TOLERANCE,
    WINDOW_LOG_DROP,
    _as_counts,
    hwe_exact_p,
)

_SLACK = 2
"""Lattice steps added on each side of every interval found by bisection."""

_BISECT_WIDTH = 1e-3
"""Bisection stops once every bracket is narrower than this (in allele or het counts)."""

_LOG2 = float(np.log(2.0))

Function = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""f(x, rows): a function of x for each of the selected rows (an index array)."""


def _bisect(func: Callable[[np.ndarray], np.ndarray], inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Where ``func`` changes sign between ``inside`` (>= 0) and ``outside`` (< 0), element-wise."""
    inside, outside = inside.astype(np.float64), outside.astype(np.float64)
    for _ in range(128):
        if not inside.size or np.max(np.abs(outside - inside)) <= _BISECT_WIDTH:
            break
        middle = 0.5 * (inside + outside)
        holds = func(middle) >= 0
        inside = np.where(holds, middle, inside)
        outside = np.where(holds, outside, middle)
    return 0.5 * (inside + outside)


def _mode(slope: Function, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Argmax over [low, high] of concave functions, from their (decreasing) derivatives."""
    rows = np.arange(low.size)
    rising_at_low, falling_at_high = slope(low, rows) > 0, slope(high, rows) < 0
    mode = np.where(rising_at_low, high, low).astype(np.float64)
    inner = np.flatnonzero(rising_at_low & falling_at_high)
    if inner.size:
        mode[inner] = _bisect(lambda x: slope(x, inner), low[inner], high[inner])
    return mode


def _falls_to(value: Function, mode: np.ndarray, end: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Where concave functions fall to ``level`` between their ``mode`` and ``end`` (either side).

    ``end`` where the function is still >= level there, ``mode`` where it is <= level there.
    """
    rows = np.arange(mode.size)
    reaches_end = value(end, rows) >= level
    above_at_mode = value(mode, rows) > level
    result = np.where(reaches_end, end, mode).astype(np.float64)
    inner = np.flatnonzero(~reaches_end & above_at_mode)
    if inner.size:
        result[inner] = _bisect(lambda x: value(x, inner) - level[inner], mode[inner], end[inner])
    return result


def _group_tail(
    n_males: np.ndarray, n_females: np.ndarray, a1: np.ndarray, log_observed: np.ndarray, tie: np.ndarray,
    first_m1: np.ndarray, last_m1: np.ndarray, max_cells: int,
) -> np.ndarray:
    """Sum of P(table) / P(observed) over the tail tables of a group of variants.

    Rows ``m1`` = first_m1..last_m1 of each variant are scanned; within each row only the
    bands of cells with log P in [observed - WINDOW_LOG_DROP, observed] (plus slack).
    """
    n_rows = last_m1 - first_m1 + 1
    variant = np.repeat(np.arange(n_males.size), n_rows)
    m1 = (np.arange(variant.size) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows) + first_m1[variant]).astype(np.float64)
    m2 = n_males[variant] - m1
    f1 = a1[variant] - m1
    f2 = 2.0 * n_females[variant] - f1
    parity = f1 % 2
    h_low, h_high = parity, np.minimum(f1, f2)
    row_const = -gammaln(m1 + 1.0) - gammaln(m2 + 1.0)

    def log_weight(het: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return (
            row_const[rows] + _LOG2 * het - gammaln(het + 1.0)
            - gammaln(0.5 * (f1[rows] - het) + 1.0) - gammaln(0.5 * (f2[rows] - het) + 1.0)
        )

    def slope(het: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _LOG2 - psi(het + 1.0) + 0.5 * (psi(0.5 * (f1[rows] - het) + 1.0) + psi(0.5 * (f2[rows] - het) + 1.0))

    low_level = log_observed[variant] - WINDOW_LOG_DROP
    high_level = log_observed[variant] + tie[variant]
    mode = _mode(slope, h_low, h_high)
    outer_left = _falls_to(log_weight, mode, h_low, low_level)
    inner_left = _falls_to(log_weight, mode, h_low, high_level)
    inner_right = _falls_to(log_weight, mode, h_high, high_level)
    outer_right = _falls_to(log_weight, mode, h_high, low_level)
    # Lattice index k of h = parity + 2k, k = 0..last_k; two bands per row.
    last_k = ((h_high - parity) // 2).astype(np.int64)

    def to_k(het: np.ndarray, rounding: Callable[[np.ndarray], np.ndarray], shift: int) -> np.ndarray:
        return np.clip(rounding((het - parity) / 2.0).astype(np.int64) + shift, 0, last_k)

    left_start, left_stop = to_k(outer_left, np.floor, -_SLACK), to_k(inner_left, np.ceil, _SLACK)
    right_start, right_stop = to_k(inner_right, np.floor, -_SLACK), to_k(outer_right, np.ceil, _SLACK)
    merged = left_stop + 1 >= right_start
    left_stop = np.where(merged, right_stop, left_stop)
    right_stop = np.where(merged, right_start - 1, right_stop)  # empty band
    # A row whose best cell is far below the window holds nothing that matters.
    empty = log_weight(mode, np.arange(mode.size)) < low_level - 1.0
    band_row = np.concatenate([np.arange(m1.size), np.arange(m1.size)])
    band_start = np.concatenate([left_start, right_start])
    band_size = np.concatenate([left_stop - left_start + 1, right_stop - right_start + 1])
    band_size[np.concatenate([empty, empty])] = 0
    band_size = np.maximum(band_size, 0)
    keep = np.flatnonzero(band_size)
    band_row, band_start, band_size = band_row[keep], band_start[keep], band_size[keep]

    tail = np.zeros(n_males.size)
    cumulative = np.cumsum(band_size)
    start = 0
    while start < band_size.size:
        before = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, before + max_cells, side="right")))
        size = band_size[start:stop]
        rows = np.repeat(band_row[start:stop], size)
        offset = np.arange(rows.size) - np.repeat(np.cumsum(size) - size, size)
        het = parity[rows] + 2.0 * (np.repeat(band_start[start:stop], size) + offset)
        relative = log_weight(het, rows) - log_observed[variant[rows]]
        in_tail = relative <= tie[variant[rows]]
        tail += np.bincount(variant[rows][in_tail], weights=np.exp(relative[in_tail]), minlength=tail.size)
        start = stop
    return tail


def hwe_x_exact_p(
    female_hom_ref: np.ndarray | list[int],
    female_het: np.ndarray | list[int],
    female_hom_alt: np.ndarray | list[int],
    male_ref: np.ndarray | list[int],
    male_alt: np.ndarray | list[int],
    *,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> np.ndarray:
    """chrX (non-PAR) Hardy-Weinberg exact test p-values of many variants at once.

    Graffelman & Weir (2016), males haploid and females diploid, two-sided, no mid-p:
    the ``P`` of plink2's ``.hardy.x``. Samples of unknown sex must be left out of the
    counts (as plink2 does).

    Args:
        female_hom_ref: female hom-ref counts, shape (variants,).
        female_het: female het counts, shape (variants,).
        female_hom_alt: female hom-alt counts, shape (variants,).
        male_ref: male ref (hemizygous) counts, shape (variants,).
        male_alt: male alt counts, shape (variants,).
        max_cells: bound on the number of tables evaluated at once (memory).

    Returns:
        float64 (variants,) p-values in [0, 1]; NaN for a variant with no called sample.
    """
    f_ref = _as_counts("female_hom_ref", female_hom_ref)
    f_het = _as_counts("female_het", female_het)
    f_alt = _as_counts("female_hom_alt", female_hom_alt)
    m_ref = _as_counts("male_ref", male_ref)
    m_alt = _as_counts("male_alt", male_alt)
    shapes = [f_ref.shape, f_het.shape, f_alt.shape, m_ref.shape, m_alt.shape]
    if len(set(shapes)) != 1:
        raise ValueError(f"count arrays differ in length: {', '.join(map(str, shapes))}")
    if max_cells < 1:
        raise ValueError(f"max_cells must be positive, got {max_cells}")
    n_females = f_ref + f_het + f_alt
    n_males = m_ref + m_alt
    p_value = np.full(f_ref.shape, np.nan)
    # No male: the autosomal test (as plink2). No female: m1 = A1 is the only table.
    females_only = np.flatnonzero((n_males == 0) & (n_females > 0))
    if females_only.size:
        p_value[females_only] = hwe_exact_p(f_ref[females_only], f_het[females_only], f_alt[females_only])
    p_value[(n_females == 0) & (n_males > 0)] = 1.0
    both = (n_males > 0) & (n_females > 0)
    a1 = 2 * f_ref + f_het + m_ref
    a2 = 2 * f_alt + f_het + m_alt
    first_m1 = np.maximum(0, n_males - a2)
    last_m1 = np.minimum(n_males, a1)
    f1_observed = 2 * f_ref + f_het
    single = both & (first_m1 == last_m1) & (np.minimum(f1_observed, 2 * n_females - f1_observed) < 2)
    p_value[single] = 1.0
    todo = np.flatnonzero(both & ~single)
    if todo.size == 0:
        return p_value
    nm, nf, a1, a2 = (x[todo].astype(np.float64) for x in (n_males, n_females, a1, a2))
    m1_obs, het_obs = m_ref[todo].astype(np.float64), f_het[todo].astype(np.float64)
    first_m1, last_m1 = first_m1[todo], last_m1[todo]
    log_total = gammaln(nm + 2.0 * nf + 1.0) - gammaln(nm + 1.0) - gammaln(nf + 1.0) - gammaln(a1 + 1.0) - gammaln(a2 + 1.0)
    log_observed = (
        _LOG2 * het_obs - gammaln(m1_obs + 1.0) - gammaln(nm - m1_obs + 1.0) - gammaln(het_obs + 1.0)
        - gammaln(f_ref[todo] + 1.0) - gammaln(f_alt[todo] + 1.0)
    )
    tie = TIE_TOLERANCE * np.maximum(1.0, np.abs(log_observed - log_total))

    # Rows m1 whose mass (in the same unnormalized units) reaches the window's floor.
    def row_log_mass(m1: np.ndarray, rows: np.ndarray) -> np.ndarray:
        f1 = a1[rows] - m1
        return (
            gammaln(2.0 * nf[rows] + 1.0) - gammaln(nf[rows] + 1.0) - gammaln(m1 + 1.0) - gammaln(nm[rows] - m1 + 1.0)
            - gammaln(f1 + 1.0) - gammaln(2.0 * nf[rows] - f1 + 1.0)
        )

    def row_slope(m1: np.ndarray, rows: np.ndarray) -> np.ndarray:
        f1 = a1[rows] - m1
        return -psi(m1 + 1.0) + psi(nm[rows] - m1 + 1.0) + psi(f1 + 1.0) - psi(2.0 * nf[rows] - f1 + 1.0)

    floor_level = log_observed - WINDOW_LOG_DROP
    mode = _mode(row_slope, first_m1, last_m1)
    low = _falls_to(row_log_mass, mode, first_m1, floor_level)
    high = _falls_to(row_log_mass, mode, last_m1, floor_level)
    row_start = np.clip(np.floor(low).astype(np.int64) - _SLACK, first_m1, last_m1)
    row_stop = np.clip(np.ceil(high).astype(np.int64) + _SLACK, first_m1, last_m1)

    # Groups of variants with at most max_cells rows in all (at least one variant).
    tail = np.empty(todo.size)
    cumulative = np.cumsum(row_stop - row_start + 1)
    start = 0
    while start < todo.size:
        before = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, before + max_cells, side="right")))
        group = slice(start, stop)
        tail[group] = _group_tail(
            nm[group], nf[group], a1[group], log_observed[group], tie[group], row_start[group], row_stop[group], max_cells
        )
        start = stop
    log_p = np.log(tail) + log_observed - log_total
    # Rounding of the closed-form normalizer: as plink2, log p above -2^-35 is p = 1.
    p_value[todo] = np.where(log_p > -(2.0**-35), 1.0, np.exp(log_p))
    return p_value
