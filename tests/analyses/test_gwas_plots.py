"""The GWAS plots: what a reviewer checks (ticks, labelled loci, the QQ band and range, regional plots)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.analyses.gwas import plots
from pipeline.analyses.gwas.outputs import gwas_table


def _table(rows: list[tuple[str, int, float]], *, rsid: dict[int, str] | None = None) -> pa.Table:
    ids = [f"chr{chrom}:{pos}:A:G" for chrom, pos, _ in rows]
    p = np.array([row[2] for row in rows])
    ones = np.ones(len(rows))
    names = [(rsid or {}).get(pos) for _, pos, _ in rows]
    return gwas_table(ids, ones, ones, ones * 0.3, p, np.full(len(rows), 100), names)


def _null_rows(rng: np.random.Generator, chromosome: str, count: int) -> list[tuple[str, int, float]]:
    positions = rng.choice(np.arange(1, 40_000_000), size=count, replace=False)
    return [(chromosome, int(pos), float(p)) for pos, p in zip(positions, rng.uniform(1e-4, 1, count))]


def test_top_loci__clumped_by_distance_strongest_first():
    rows = [("1", 1_000_000, 1e-20), ("1", 1_300_000, 1e-15), ("1", 1_600_000, 1e-10), ("2", 1_000_000, 1e-9),
            ("1", 5_000_000, 1e-3), ("2", 1_400_000, 1e-12)]
    loci = plots.top_loci(_table(rows))
    # 1:1.3M lies within 500 kb of the lead 1:1.0M; 1:1.6M does not; on chromosome 2 the stronger 1.4M leads and
    # 1.0M (400 kb away) joins it; 1:5.0M is not genome-wide significant.
    assert [(locus.chromosome, locus.position) for locus in loci] == [("1", 1_000_000), ("2", 1_400_000), ("1", 1_600_000)]
    assert [locus.label for locus in loci] == ["1:1000000", "2:1400000", "1:1600000"]
    assert len(plots.top_loci(_table([("1", 10_000_000 * (i + 1), 1e-9) for i in range(15)]))) == plots.MAX_LOCI


def test_top_loci__without_a_significant_variant_the_strongest_still_gets_its_region():
    loci = plots.top_loci(_table([("3", 100, 0.2), ("3", 200, 1e-4), ("3", 300, 0.5)]))
    assert [(locus.position, locus.p_value) for locus in loci] == [(200, 1e-4)]


def test_top_loci__named_by_rsid_when_the_table_has_one():
    loci = plots.top_loci(_table([("1", 100, 1e-10), ("1", 9_000_000, 1e-9)], rsid={100: "rs123"}))
    assert [locus.label for locus in loci] == ["rs123", "1:9000000"]


def test_qq_band__matches_simulated_order_statistics_of_uniform_p_values():
    count, draws = 40, 20_000
    rng = np.random.default_rng(7)
    simulated = -np.log10(np.sort(rng.uniform(size=(draws, count)), axis=1))  # column k-1: the k-th smallest p
    expected, lower, upper = plots.qq_band(count, points=count)
    ranks = np.rint(count * 10.0 ** -expected + 0.5).astype(int)
    assert ranks[0] == 1 and ranks[-1] == count and np.all(np.diff(ranks) > 0)
    assert np.allclose(expected, -np.log10((ranks - 0.5) / count))
    low, high = np.quantile(simulated[:, ranks - 1], [0.025, 0.975], axis=0)
    assert np.allclose(lower, low, atol=0.03, rtol=0.03)
    assert np.allclose(upper, high, atol=0.03, rtol=0.03)
    assert np.all(lower < expected) and np.all(expected < upper)


def test_manhattan__genome_wide_has_a_tick_per_chromosome_and_names_the_top_loci():
    rng = np.random.default_rng(1)
    rows = [row for chrom in ("1", "2", "10") for row in _null_rows(rng, chrom, 300)]
    rows += [("2", 20_000_000, 1e-30), ("10", 5_000_000, 1e-12)]
    table = _table(rows)
    figure = plots.manhattan(table, {"phenotype": "ldl", "model": "linear", "num_samples": 900}, plots.top_loci(table))
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["1", "2", "10"]
    assert axis.get_xlabel() == "chromosome"
    assert sorted(text.get_text() for text in axis.texts) == ["10:5000000", "2:20000000"]
    assert axis.get_ylim()[1] > 30


def test_manhattan__one_chromosome_is_drawn_by_position_in_mb():
    rng = np.random.default_rng(2)
    table = _table(_null_rows(rng, "22", 500))
    axis = plots.manhattan(table, {"phenotype": "ldl"}, plots.top_loci(table)).axes[0]
    assert axis.get_xlabel() == "chromosome 22 position (Mb)"
    drawn = np.concatenate([line.get_xdata() for line in axis.lines if line.get_linestyle() == "None"])
    positions = table.column("base_pair_location").to_numpy() / 1e6
    assert drawn.min() >= positions.min() and drawn.max() <= positions.max() and drawn.max() > 1.0


def test_qq__title_range_and_band():
    rng = np.random.default_rng(3)
    rows = _null_rows(rng, "1", 2000) + [("1", 39_000_001, 1e-40)]
    figure = plots.qq(_table(rows), {"phenotype": "ldl", "lambda_gc": 1.0234567})
    axis = figure.axes[0]
    assert "ldl" in axis.get_title() and "1.023" in axis.get_title() and "1.0235" not in axis.get_title()
    diagonal = next(line for line in axis.lines if line.get_linestyle() == "-")
    expected_top = -np.log10(0.5 / 2001)
    # The diagonal spans the expected range, not the strongest observed value (40): the null's points are not squeezed.
    assert expected_top <= max(diagonal.get_xdata()) < 1.1 * expected_top
    assert axis.get_xlim()[1] < 1.1 * expected_top and axis.get_ylim()[1] >= 40
    assert len(axis.collections) == 1  # the 95% band


def test_thin__keeps_every_point_above_the_bulk_and_one_per_pixel_below():
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 100, 50_000)
    y = rng.exponential(0.5, 50_000)
    kept = plots._thin(x, y, (0.0, 100.0), float(y.max()), (200, 100))
    assert set(np.flatnonzero(y >= plots.THIN_BELOW)) <= set(kept.tolist())
    low = np.flatnonzero(y < plots.THIN_BELOW)
    pixel = lambda rows: set(zip((x[rows] / 100 * 200).astype(int).tolist(), (y[rows] / y.max() * 100).astype(int).tolist()))  # noqa: E731
    assert pixel(low) == pixel(np.intersect1d(kept, low))
    assert kept.size < 0.3 * x.size


def test_write_plots__a_regional_plot_per_locus(tmp_path):
    rng = np.random.default_rng(5)
    rows = _null_rows(rng, "4", 400) + [("4", 10_000_000, 1e-20), ("4", 30_000_000, 1e-9)]
    table = _table(rows)
    names = plots.write_plots(table, {"phenotype": "ldl", "lambda_gc": 1.0}, tmp_path)
    assert names == ["manhattan.png", "qq.png", "regional_4_10000000.png", "regional_4_30000000.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axis = plots.regional(table, {"phenotype": "ldl"}, plots.top_loci(table)[0]).axes[0]
    assert axis.get_xlim() == (9.5, 10.5) and [t.get_text() for t in axis.texts] == ["4:10000000"]
