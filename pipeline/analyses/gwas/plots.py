"""The plots of a GWAS result: Manhattan, QQ and one regional plot per top locus.

What a reviewer looks for: on the Manhattan plot, chromosome ticks when the result spans
several chromosomes (positions in Mb when it spans one) and the lead variant of each top
locus named; on the QQ plot, the expected range of the null (the diagonal over the
expected values only, a 95% band from the order statistics of uniform p-values) and
λGC with three digits in the title; a regional plot around each top locus.

Top loci are clumped by distance, not LD (the coordinator holds no genotypes): the
strongest variant at p < 5e-8 leads a locus, every variant within
:data:`LOCUS_HALF_WIDTH` of it on its chromosome belongs to that locus, and so on over
the rest (at most :data:`MAX_LOCI`). With no variant at p < 5e-8, the strongest one
still gets its regional plot, so the analyst sees the top signal's neighbourhood.

Most tested variants are null and pile up at the bottom of a Manhattan and QQ plot; a
point there that falls on a pixel already drawn changes nothing in the image but costs
drawing time, so points under :data:`THIN_BELOW` (-log10 p) are drawn once per pixel.
Everything above is drawn as is. matplotlib's object API is used: no pyplot, no global
backend state. Matplotlib is imported with the first figure, at the coordinator: a site
imports this module with the GWAS but never draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from scipy import special

from pipeline.outputs import atomic_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["GENOME_WIDE", "LOCUS_HALF_WIDTH", "MAX_LOCI", "THIN_BELOW", "Locus", "top_loci", "write_plots"]

GENOME_WIDE = 5e-8
"""The conventional genome-wide significance threshold (summary counts, the plots' dashed line)."""

LOCUS_HALF_WIDTH = 500_000
"""Base pairs either side of a lead variant that belong to its locus (and its regional plot)."""

MAX_LOCI = 10
"""The most loci labelled on the Manhattan plot and given a regional plot."""

THIN_BELOW = 2.0
"""-log10 p under which points are drawn once per pixel (p > 0.01: the null's bulk)."""

_DPI = 120
_DARK, _LIGHT, _LINE = "#1f4e79", "#7fa7d0", "#c0392b"


@dataclass(frozen=True)
class Locus:
    """A top locus: its lead variant (row of the table) and where it lies."""

    row: int
    chromosome: str
    position: int
    p_value: float
    label: str


def _columns(table: pa.Table) -> tuple[list[str], np.ndarray, np.ndarray]:
    chromosome = [str(c) for c in table.column("chromosome").to_pylist()]
    position = np.asarray(table.column("base_pair_location").to_numpy(zero_copy_only=False), np.int64)
    p = np.asarray(table.column("p_value").to_numpy(zero_copy_only=False), np.float64)
    return chromosome, position, p


def _score(p: np.ndarray) -> np.ndarray:
    """-log10 p, NaN where p is missing, floored at 1e-300 so an underflowed p stays on the plot."""
    return np.where(np.isfinite(p), -np.log10(np.maximum(np.where(np.isfinite(p), p, 1.0), 1e-300)), np.nan)


def _label(table: pa.Table, row: int, chromosome: str, position: int) -> str:
    if "rsid" in table.column_names:
        rsid = table.column("rsid")[row].as_py()
        if rsid:
            return str(rsid)
    return f"{chromosome}:{position}"


def top_loci(table: pa.Table, *, threshold: float = GENOME_WIDE, half_width: int = LOCUS_HALF_WIDTH,
             limit: int = MAX_LOCI) -> list[Locus]:
    """The top loci of a ``gwas`` table, strongest first (see the module docstring for the rule)."""
    chromosome, position, p = _columns(table)
    loci: list[Locus] = []
    for row in np.argsort(np.where(np.isfinite(p), p, np.inf), kind="stable").tolist():
        if not np.isfinite(p[row]) or len(loci) >= limit or (loci and p[row] >= threshold):
            break  # strongest first: the missing p-values sort last
        if any(chromosome[row] == locus.chromosome and abs(int(position[row]) - locus.position) <= half_width for locus in loci):
            continue
        loci.append(Locus(row, chromosome[row], int(position[row]), float(p[row]),
                          _label(table, row, chromosome[row], int(position[row]))))
        if p[row] >= threshold:
            break  # no significant locus: only the strongest variant gets a locus
    return loci


def _thin(x: np.ndarray, y: np.ndarray, x_range: tuple[float, float], y_top: float, pixels: tuple[int, int]) -> np.ndarray:
    """Indices of the points to draw: every point at or above :data:`THIN_BELOW`, one per pixel below it."""
    low = np.flatnonzero(y < THIN_BELOW)
    high = np.flatnonzero(y >= THIN_BELOW)
    span = max(x_range[1] - x_range[0], 1e-12)
    column = np.floor((x[low] - x_range[0]) / span * pixels[0]).astype(np.int64)
    line = np.floor(y[low] / max(y_top, 1e-12) * pixels[1]).astype(np.int64)
    _, first = np.unique(column * (pixels[1] + 1) + line, return_index=True)
    return np.sort(np.concatenate([low[first], high]))


def _figure(width: float, height: float) -> Figure:
    """A new figure of ``width`` x ``height`` inches; the first one imports Matplotlib (half a second)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(figure: Figure, path: Path) -> None:
    with atomic_file(path, force=True) as tmp:
        figure.savefig(tmp, dpi=_DPI, format="png")


def _genome_x(chromosome: Sequence[str], position: np.ndarray) -> tuple[np.ndarray, list[float], list[str], np.ndarray]:
    """x of every variant with chromosomes side by side in table order; tick positions, tick labels, colour index."""
    x = np.zeros(len(position))
    colour = np.zeros(len(position), np.int64)
    names = np.asarray(chromosome, dtype=object)
    offset, ticks, labels = 0.0, [], []
    for index, name in enumerate(dict.fromkeys(chromosome)):
        rows = names == name
        start, stop = float(position[rows].min()), float(position[rows].max())
        x[rows] = position[rows] - start + offset
        ticks.append(offset + (stop - start) / 2)
        labels.append(name)
        colour[rows] = index % 2
        offset += stop - start + max(1.0, 0.02 * (stop - start))
    return x, ticks, labels, colour


def manhattan(table: pa.Table, summary: Mapping[str, Any], loci: Sequence[Locus]) -> Figure:
    """The Manhattan plot: chromosome ticks (several chromosomes) or Mb positions (one); the top loci named."""
    chromosome, position, p = _columns(table)
    score = _score(p)
    one_chromosome = len(set(chromosome)) == 1
    if one_chromosome:
        x, colour = position / 1e6, np.zeros(len(position), np.int64)
    else:
        x, ticks, labels, colour = _genome_x(chromosome, position)
    ok = np.flatnonzero(np.isfinite(score))
    top = max(float(score[ok].max(initial=0.0)), -np.log10(GENOME_WIDE)) * 1.08
    figure = _figure(10, 4)
    axis = figure.subplots()
    x_range = (float(x[ok].min(initial=0.0)), float(x[ok].max(initial=1.0)))
    drawn = ok[_thin(x[ok], score[ok], x_range, top, (10 * _DPI, 4 * _DPI))]
    for index, shade in enumerate((_DARK, _LIGHT)):
        rows = drawn[colour[drawn] == index]
        axis.plot(x[rows], score[rows], linestyle="none", marker="o", markersize=2.2, markeredgewidth=0, color=shade)
    axis.axhline(-np.log10(GENOME_WIDE), color=_LINE, lw=0.8, ls="--")
    for locus in loci:
        if locus.p_value < GENOME_WIDE:
            axis.annotate(locus.label, (x[locus.row], score[locus.row]), xytext=(0, 4), textcoords="offset points",
                          ha="center", va="bottom", fontsize=7)
    axis.set_ylim(0, top)
    if one_chromosome:
        axis.set_xlabel(f"chromosome {chromosome[0] if chromosome else ''} position (Mb)")
    else:
        axis.set_xticks(ticks, labels, fontsize=7 if len(labels) > 12 else None)
        axis.set_xlabel("chromosome")
    axis.set_ylabel("-log10 p")
    axis.set_title(f"GWAS of {summary.get('phenotype')} ({summary.get('model')}, {summary.get('num_samples')} samples)")
    figure.tight_layout()
    return figure


def qq_band(count: int, *, points: int = 200, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected -log10 p and the ``level`` band of the k-th smallest of ``count`` uniform p-values (Beta(k, n-k+1)).

    Returns (expected, lower, upper) at up to ``points`` ranks spaced evenly on the log scale.
    """
    if count < 1:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    rank = np.unique(np.geomspace(1, count, num=min(points, count)).round().astype(np.int64))
    tail = (1 - level) / 2
    expected = -np.log10((rank - 0.5) / count)
    upper = -np.log10(special.betaincinv(rank, count - rank + 1, tail))
    lower = -np.log10(special.betaincinv(rank, count - rank + 1, 1 - tail))
    return expected, lower, upper


def qq(table: pa.Table, summary: Mapping[str, Any]) -> Figure:
    """The QQ plot: observed against expected -log10 p, the null's 95% band, λGC (three digits) and the trait in the title."""
    _, _, p = _columns(table)
    observed = np.sort(_score(p)[np.isfinite(p)])[::-1]
    count = observed.size
    expected = -np.log10((np.arange(1, count + 1) - 0.5) / max(count, 1))
    band_x, band_low, band_high = qq_band(count)
    figure = _figure(4.8, 4.8)
    axis = figure.subplots()
    x_top = float(expected.max(initial=1.0)) * 1.05
    y_top = max(float(observed.max(initial=1.0)), float(band_high.max(initial=1.0))) * 1.05
    axis.fill_between(band_x, band_low, band_high, color="#d5dbe3", lw=0, label="95% band under the null")
    axis.plot([0, x_top], [0, x_top], color=_LINE, lw=0.8)
    drawn = _thin(expected, observed, (0.0, x_top), y_top, (int(4.8 * _DPI), int(4.8 * _DPI)))
    axis.plot(expected[drawn], observed[drawn], linestyle="none", marker="o", markersize=2.2, markeredgewidth=0,
              color=_DARK)
    axis.set_xlim(0, x_top)
    axis.set_ylim(0, y_top)
    axis.set_xlabel("expected -log10 p")
    axis.set_ylabel("observed -log10 p")
    lam = summary.get("lambda_gc")
    lam_text = f"{float(lam):.3f}" if isinstance(lam, (int, float)) and np.isfinite(lam) else "NA"
    axis.set_title(f"QQ: {summary.get('phenotype')}, $\\lambda_{{GC}}$ = {lam_text}")
    axis.legend(loc="upper left", fontsize=7, frameon=False)
    figure.tight_layout()
    return figure


def regional_name(locus: Locus) -> str:
    """The file name of a locus's regional plot."""
    return f"regional_{locus.chromosome}_{locus.position}.png"


def regional(table: pa.Table, summary: Mapping[str, Any], locus: Locus) -> Figure:
    """A regional plot: -log10 p of the variants within :data:`LOCUS_HALF_WIDTH` of a lead variant, by position in Mb."""
    chromosome, position, p = _columns(table)
    score = _score(p)
    rows = np.flatnonzero((np.asarray(chromosome, dtype=object) == locus.chromosome)
                          & (np.abs(position - locus.position) <= LOCUS_HALF_WIDTH) & np.isfinite(score))
    figure = _figure(7, 3.6)
    axis = figure.subplots()
    axis.plot(position[rows] / 1e6, score[rows], linestyle="none", marker="o", markersize=3, markeredgewidth=0,
              color=_LIGHT)
    axis.plot([locus.position / 1e6], [score[locus.row]], linestyle="none", marker="D", markersize=6, color=_LINE)
    axis.annotate(locus.label, (locus.position / 1e6, score[locus.row]), xytext=(5, 3), textcoords="offset points",
                  fontsize=8)
    axis.axhline(-np.log10(GENOME_WIDE), color=_LINE, lw=0.8, ls="--")
    axis.set_xlim((locus.position - LOCUS_HALF_WIDTH) / 1e6, (locus.position + LOCUS_HALF_WIDTH) / 1e6)
    axis.set_ylim(0, max(float(score[rows].max(initial=0.0)), -np.log10(GENOME_WIDE)) * 1.1)
    axis.set_xlabel(f"chromosome {locus.chromosome} position (Mb)")
    axis.set_ylabel("-log10 p")
    axis.set_title(f"{summary.get('phenotype')}: {locus.label} (p = {locus.p_value:.2g}), ±{LOCUS_HALF_WIDTH // 1000} kb")
    figure.tight_layout()
    return figure


def write_plots(table: pa.Table, summary: Mapping[str, Any], out: Path,
                name: Callable[[str], str] = lambda file: file) -> list[str]:
    """manhattan.png, qq.png and one regional plot per top locus in ``out``; returns the file names.

    ``name`` renames each file (one phenotype's of several: ``manhattan.<phenotype>.png``).
    """
    loci = top_loci(table)
    figures = {name("manhattan.png"): manhattan(table, summary, loci), name("qq.png"): qq(table, summary)}
    figures.update((name(regional_name(locus)), regional(table, summary, locus)) for locus in loci)
    for file, figure in figures.items():
        _save(figure, out / file)
    return list(figures)
