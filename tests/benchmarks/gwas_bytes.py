"""Benchmark: bytes a site sends in the linear GWAS's statistics round, per variant, from the actual layouts.

A variant every site typed with no missing call and left out nowhere goes *short*
(:mod:`pipeline.analyses.gwas.linear`): ``C'g``, ``g'g``, ``g'y`` and ``n``, k + 3 ring
elements, the covariate block once per job; any other variant, and every variant before,
the *full* block: the packed ``X'X`` of ``[C, g]``, ``X'y``, ``y'y``, ``n`` and the
small-cell flag. k counts the design's covariate columns, intercept included (``[C, g]``
has k + 1 columns). Figures are ``Layout.size`` x 8 bytes (Z_2^64) for one phenotype;
the per-variant figure is the difference between layouts of 2,000 and 1,000 variants.

Run: ``python tests/benchmarks/gwas_bytes.py [--variants 1e7]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.analyses.gwas import GwasParameters, Moments, RegressionState
from pipeline.analyses.gwas.linear import linear_layout


def layout_bytes(k: int, variants: int, *, short: bool) -> int:
    """Bytes of one site's statistics round: ``variants`` variants, all short or all full, k columns of C."""
    parameters = GwasParameters.parse({"phenotype": "y", "covariates": [f"c{i}" for i in range(k - 1)]})
    moments = Moments(1000, np.zeros(k), np.ones(k), short_form=np.full(variants, short))
    state = RegressionState(parameters, 3, tuple(f"chr1:{i}:A:G" for i in range(variants)), moments=moments)
    layout = linear_layout(state)
    return layout.size * layout.ring.modulus_bits // 8


def per_variant(k: int, *, short: bool) -> tuple[int, int]:
    """(bytes per variant, bytes once per job) of the layout."""
    step = (layout_bytes(k, 2000, short=short) - layout_bytes(k, 1000, short=short)) // 1000
    return step, layout_bytes(k, 1000, short=short) - 1000 * step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=float, default=1e7)
    args = parser.parse_args()
    print("bytes per variant per site, statistics round, Z_2^64, one phenotype (k: columns of C, intercept included)")
    print(f"{'k':>3} {'before (full block)':>20} {'after (short form)':>19} {'ratio':>6} {'once per job':>13}")
    for k in (2, 10, 25):
        full, _ = per_variant(k, short=False)
        short, once = per_variant(k, short=True)
        print(f"{k:>3} {full:>20,} {short:>19,} {short / full:>6.3f} {once:>13,}")
    v = int(args.variants)
    for k, what in ((25, "k = 25"), (26, "20 PCs + 5 covariates + intercept, k = 26")):
        full, _ = per_variant(k, short=False)
        short, once = per_variant(k, short=True)
        print(f"{v:.0e} variants, {what}: before {full * v / 1e9:.2f} GB per site per round, "
              f"after {(short * v + once) / 1e9:.2f} GB when every variant is complete (dosages), "
              f"{short / full:.3f}x")


if __name__ == "__main__":
    main()
