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
of possible tables and processed in groups so that a group's matrix stays under a
fixed number of cells (bounded memory whatever the sample size).

Probabilities within a relative 1e-9 of the observed one count as ties (part of the
tail), as plink compares with a small epsilon: exact ties occur (for instance in
symmetric tables) and floating-point rounding must not split them.
"""

from __future__ import annotations

import numpy as np

TIE_TOLERANCE = 1e-9
"""Log-probabilities within this of the observed one are treated as equal to it."""

DEFAULT_MAX_CELLS = 1 << 21
"""Largest (variants x tables) matrix built at once (float64: 16 MiB per temporary)."""


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


def _group_log_p(n_rare: np.ndarray, n_het: np.ndarray, n_samples: np.ndarray) -> np.ndarray:
    """Log p-values of one group of variants (all with at least one sample)."""
    parity = n_rare % 2
    n_steps = n_rare // 2  # index k = 0..n_steps stands for h = parity + 2k
    width = int(n_steps.max()) + 1
    k = np.arange(width, dtype=np.float64)[None, :]
    het = parity[:, None] + 2.0 * k
    hom_rare = (n_rare[:, None] - het) / 2.0
    hom_common = n_samples[:, None] - het - hom_rare
    valid = k <= n_steps[:, None]
    # log P(h+2)/P(h) at step k (meaningful where k < n_steps; masked elsewhere).
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.log(4.0 * hom_rare * hom_common) - np.log((het + 1.0) * (het + 2.0))
    step_valid = k < n_steps[:, None]
    log_ratio = np.where(step_valid, log_ratio, 0.0)
    log_weight = np.zeros_like(log_ratio)
    np.cumsum(log_ratio[:, :-1], axis=1, out=log_weight[:, 1:])
    log_weight = np.where(valid, log_weight, -np.inf)
    observed_k = (n_het - parity) // 2
    observed = np.take_along_axis(log_weight, observed_k[:, None], axis=1)
    in_tail = log_weight <= observed + TIE_TOLERANCE * np.maximum(1.0, np.abs(observed))
    top = np.max(log_weight, axis=1, keepdims=True)
    scaled = np.exp(log_weight - top)
    total = np.sum(scaled, axis=1)
    tail_top = observed  # the tail's largest term is the observed one
    tail = np.sum(np.exp(np.where(in_tail, log_weight - tail_top, -np.inf)), axis=1)
    return (tail_top[:, 0] - top[:, 0]) + np.log(tail) - np.log(total)


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
    width = n_rare[todo] // 2 + 1
    order = todo[np.argsort(width, kind="stable")]
    sorted_width = n_rare[order] // 2 + 1
    start = 0
    while start < order.size:
        # Largest group [start, stop) whose padded matrix fits in max_cells (at least one row).
        # Widths only grow along ``order``, so no group is longer than the first row allows.
        window = sorted_width[start : start + max(1, max_cells // int(sorted_width[start]))]
        fits = np.arange(1, window.size + 1) * window <= max_cells
        stop = start + max(1, int(np.count_nonzero(fits)))
        group = order[start:stop]
        log_p = _group_log_p(n_rare[group], het[group], n_samples[group])
        p_value[group] = np.minimum(np.exp(log_p), 1.0)
        start = stop
    return p_value
