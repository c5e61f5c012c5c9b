"""Hardy-Weinberg exact test, vectorized over variants.

The test is the one of Wigginton, Cutler & Abecasis (2005), "A Note on Exact Tests of
Hardy-Weinberg Equilibrium", AJHG 76:887-893, which plink ``--hardy`` and plink2
``--hardy`` (column ``P``) report. Conditional on the number of samples ``n`` and the
number of copies ``n_rare`` of the rarer allele, the number of heterozygotes ``h``
(same parity as ``n_rare``, at most ``n_rare``) has probability

    P(h) = n! / (hom_rare! h! hom_common!) * 2^h * n_rare! n_common! / (2n)!

with ``hom_rare = (n_rare - h) / 2`` and ``hom_common = n - h - hom_rare``. The p-value
is the sum of P(h) over every h whose probability is at most that of the observed
table (the observed one included): the two-sided test without the mid-p correction,
plink's default. Variants with fewer than two copies of the rarer allele have a single
possible table and p = 1, as in plink.

Instead of a loop per variant, a block of variants is laid out as a (variants x
het-count steps) matrix: row i holds the log-probabilities (up to a constant) of
h = n_rare mod 2, +2, +4, ... reached by the Wigginton recurrence

    P(h + 2) / P(h) = 4 hom_rare(h) hom_common(h) / ((h + 1)(h + 2)),

accumulated as a cumulative sum of log-ratios and padded with -inf past each row's
last valid h. The p-value is then ``exp(logsumexp(tail) - logsumexp(all))``, which
neither overflows nor loses the tail to underflow. Variants are sorted by their number
of tables and processed in groups so that a group's matrix stays under a fixed number
of cells (bounded memory whatever the sample size).

A row does not span every h: the ratio above decreases with h, so log P is concave in
h and the tables that matter form one window around the mode, wide enough to reach
:data:`WINDOW_LOG_DROP` below the observed table's log-probability on both sides (a
normal approximation of the het count sizes it: about ten standard deviations, a few
hundred tables at n = 10,000 instead of up to n / 2). Every table outside the window
is then, by concavity, less probable than the window's ends, so at most
``e^-WINDOW_LOG_DROP`` of the observed one: together less than 1e-15 of the p-value.
A row whose window ends turn out to be above that bound is computed again over all of
its tables.

Probabilities within a relative 1e-9 of the observed one count as ties (part of the
tail), as plink compares with a small epsilon: exact ties occur (for instance in
symmetric tables) and floating-point rounding must not split them.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln

TIE_TOLERANCE = 1e-9
"""Log-probabilities within this of the observed one are treated as equal to it."""

WINDOW_LOG_DROP = 50.0
"""Tables less probable than e^-WINDOW_LOG_DROP times the observed one may be left out of the sums."""

_SAFE_GAP = 600.0
"""Largest log(top / observed) for which the tail is summed from the terms scaled to the top."""

DEFAULT_MAX_CELLS = 1 << 18
"""Largest (variants x tables) matrix built at once (float64: 2 MiB per temporary, so that the
ten or so temporaries of a group stay in the CPU caches; larger groups ran twice as slow)."""


def _as_counts(name: str, values: np.ndarray | list[int]) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one count per variant), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer counts, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be non-negative counts")
    return array


def _log_weight_from_first(n_rare: np.ndarray, n_samples: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log P(h) - log P(h0) for h = h0 + 2k, h0 = n_rare mod 2, in closed form (log-gamma).

    Only the scale of the tie tolerance comes from it (it is not exact enough for sums).
    """
    parity = n_rare % 2

    def log_weight(het: np.ndarray) -> np.ndarray:
        hom_rare = (n_rare - het) // 2
        return het * np.log(2.0) - gammaln(hom_rare + 1.0) - gammaln(het + 1.0) - gammaln(n_samples - het - hom_rare + 1.0)

    return log_weight(parity + 2 * k) - log_weight(parity)


def _group_log_p(
    n_rare: np.ndarray, n_het: np.ndarray, n_samples: np.ndarray, first_k: np.ndarray, last_k: np.ndarray,
    tie_scale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Log p-values of one group of variants over their windows of tables [first_k, last_k].

    Returns:
        (log p-values, whether each row's window holds every table that matters).
    """
    parity = n_rare % 2
    n_steps = n_rare // 2  # index k = 0..n_steps stands for h = parity + 2k
    span = last_k - first_k  # columns 0..span of a row are its window
    width = int(span.max()) + 1
    column = np.arange(width, dtype=np.float64)[None, :]
    het = (parity + 2.0 * first_k)[:, None] + 2.0 * column
    # log P(h+2)/P(h) = log(4 hom_rare hom_common / ((h+1)(h+2))); 2 hom_rare = n_rare - h and
    # 2 hom_common = 2n - n_rare - h. Columns past a row's span hold garbage, masked below.
    log_ratio = n_rare[:, None] - het
    log_ratio *= (2.0 * n_samples - n_rare)[:, None] - het
    log_ratio /= (het + 1.0) * (het + 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(log_ratio, out=log_ratio)
    log_weight = np.empty_like(log_ratio)
    log_weight[:, 0] = 0.0
    with np.errstate(invalid="ignore"):
        np.cumsum(log_ratio[:, :-1], axis=1, out=log_weight[:, 1:])
    log_weight[column > span[:, None]] = -np.inf
    del log_ratio, het
    observed = np.take_along_axis(log_weight, ((n_het - parity) // 2 - first_k)[:, None], axis=1)
    in_tail = log_weight <= observed + TIE_TOLERANCE * tie_scale[:, None]
    top = np.max(log_weight, axis=1, keepdims=True)
    scaled = np.exp(log_weight - top)
    total = np.sum(scaled, axis=1)
    # The tail relative to the observed term (its largest): exp(top - observed) times the
    # scaled terms where that factor is representable and no tail term that matters
    # (within WINDOW_LOG_DROP of the observed) underflows in ``scaled``; directly elsewhere.
    gap = (top - observed)[:, 0]
    tail = np.exp(np.minimum(gap, _SAFE_GAP)) * np.sum(scaled, axis=1, where=in_tail)
    far = np.flatnonzero(gap >= _SAFE_GAP)
    if far.size:
        tail[far] = np.sum(np.exp(np.where(in_tail[far], log_weight[far] - observed[far], -np.inf)), axis=1)
    log_p = -gap + np.log(tail) - np.log(total)
    bound = observed[:, 0] - WINDOW_LOG_DROP
    last = np.take_along_axis(log_weight, span[:, None], axis=1)[:, 0]
    complete = ((first_k == 0) | (log_weight[:, 0] <= bound)) & ((last_k == n_steps) | (last <= bound))
    return log_p, complete


def _windows(n_rare: np.ndarray, n_het: np.ndarray, n_samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tables [first_k, last_k] expected to hold every one within WINDOW_LOG_DROP of the observed.

    Normal approximation of the het count: mean n_rare n_common / (2n - 1), curvature
    of log P at the mode from the ratio's derivative; the window reaches the observed
    table's distance from the mode plus the distance over which log P drops by
    WINDOW_LOG_DROP, with 40% of slack; all tables where that is half of them.
    """
    parity = n_rare % 2
    n_steps = n_rare // 2
    mean_het = n_rare * (2.0 * n_samples - n_rare) / np.maximum(2.0 * n_samples - 1.0, 1.0)
    mode_k = np.clip((mean_het - parity) / 2.0, 0.0, n_steps)
    het = parity + 2.0 * mode_k
    hom_rare = np.maximum((n_rare - het) / 2.0, 1.0)
    hom_common = np.maximum(n_samples - het - (n_rare - het) / 2.0, 1.0)
    curvature = 1.0 / hom_rare + 1.0 / hom_common + 2.0 / (het + 1.0) + 2.0 / (het + 2.0)
    distance = np.abs((n_het - parity) // 2 - mode_k)
    half = np.ceil(1.4 * np.sqrt(2.0 * WINDOW_LOG_DROP / curvature + distance**2)) + 4.0
    first_k = np.clip(np.floor(mode_k - half), 0, n_steps).astype(np.int64)
    last_k = np.clip(np.ceil(mode_k + half), 0, n_steps).astype(np.int64)
    # Where the window would cover half of the tables, cover them all (nothing to verify).
    whole = 2 * (last_k - first_k + 1) > n_steps + 1
    first_k[whole] = 0
    last_k[whole] = n_steps[whole]
    return first_k, last_k


def _log_p_in_groups(
    n_rare: np.ndarray, het: np.ndarray, n_samples: np.ndarray, first_k: np.ndarray, last_k: np.ndarray,
    tie_scale: np.ndarray, max_cells: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_group_log_p` over groups of rows of similar window width, each under ``max_cells``."""
    log_p = np.empty(n_rare.shape)
    complete = np.empty(n_rare.shape, bool)
    width = last_k - first_k + 1
    order = np.argsort(width, kind="stable")
    sorted_width = width[order]
    start = 0
    while start < order.size:
        # Largest group [start, stop) whose padded matrix fits in max_cells (at least one row).
        # Widths only grow along ``order``, so no group is longer than the first row allows.
        window = sorted_width[start : start + max(1, max_cells // int(sorted_width[start]))]
        fits = np.arange(1, window.size + 1) * window <= max_cells
        stop = start + max(1, int(np.count_nonzero(fits)))
        group = order[start:stop]
        log_p[group], complete[group] = _group_log_p(
            n_rare[group], het[group], n_samples[group], first_k[group], last_k[group], tie_scale[group]
        )
        start = stop
    return log_p, complete


def hwe_exact_p(
    n_hom_ref: np.ndarray | list[int],
    n_het: np.ndarray | list[int],
    n_hom_alt: np.ndarray | list[int],
    *,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> np.ndarray:
    """Hardy-Weinberg exact test p-values of many variants at once.

    Wigginton, Cutler & Abecasis (2005), two-sided, no mid-p: the p-value plink and
    plink2 ``--hardy`` report in column ``P``.

    Args:
        n_hom_ref: hom-ref sample counts, shape (variants,).
        n_het: het sample counts, shape (variants,).
        n_hom_alt: hom-alt sample counts, shape (variants,).
        max_cells: bound on the size of the working matrix (memory), in float64 cells.

    Returns:
        float64 (variants,) p-values in [0, 1]; NaN for a variant with no called sample.
    """
    hom_ref = _as_counts("n_hom_ref", n_hom_ref)
    het = _as_counts("n_het", n_het)
    hom_alt = _as_counts("n_hom_alt", n_hom_alt)
    if not hom_ref.shape == het.shape == hom_alt.shape:
        raise ValueError(f"count arrays differ in length: {hom_ref.shape}, {het.shape}, {hom_alt.shape}")
    n_samples = hom_ref + het + hom_alt
    hom_rare = np.minimum(hom_ref, hom_alt)
    n_rare = 2 * hom_rare + het
    p_value = np.full(hom_ref.shape, np.nan)
    # A single possible table (fewer than two rare alleles): p = 1, as plink.
    single = (n_samples > 0) & (n_rare < 2)
    p_value[single] = 1.0
    todo = np.flatnonzero((n_samples > 0) & (n_rare >= 2))
    if todo.size == 0:
        return p_value
    rare, het_todo, samples = n_rare[todo], het[todo], n_samples[todo]
    first_k, last_k = _windows(rare, het_todo, samples)
    # Ties are judged on the scale of log P(observed) / P(fewest hets), whatever the window.
    observed_k = (het_todo - rare % 2) // 2
    tie_scale = np.maximum(1.0, np.abs(_log_weight_from_first(rare, samples, observed_k)))
    log_p, complete = _log_p_in_groups(rare, het_todo, samples, first_k, last_k, tie_scale, max_cells)
    redo = np.flatnonzero(~complete)
    if redo.size:
        log_p[redo], _ = _log_p_in_groups(
            rare[redo], het_todo[redo], samples[redo], np.zeros(redo.size, np.int64), rare[redo] // 2,
            tie_scale[redo], max_cells,
        )
    p_value[todo] = np.minimum(np.exp(log_p), 1.0)
    return p_value
