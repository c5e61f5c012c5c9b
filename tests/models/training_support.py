"""Datasets with a planted signal for the training tests, built from numpy arrays.

Each site's genotypes are drawn with site-specific allele frequencies (non-IID), the
binary trait follows a logistic model of a few causal variants plus age and sex, and
the sites differ in size and case fraction, so local models are worse than pooled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import dataset as dataset_io
from tests.federation.runtime_support import variant_ids

CAUSAL = (0, 3, 7, 12)
EFFECT = np.array([0.9, -0.7, 0.6, 0.8])


def planted_cohort(root: Path, sizes: tuple[int, ...] = (150, 400, 80), *, num_variants: int = 20, seed: int = 0,
                   quantitative: bool = False, missing_rate: float = 0.02) -> dict[str, Path]:
    """Writes one dataset per site (``site-1``...) with a planted signal; returns {site: path}."""
    rng = np.random.default_rng(seed)
    ids = variant_ids(range(1000, 1000 + 10 * num_variants, 10))
    out = {}
    for index, n in enumerate(sizes):
        frequency = np.clip(rng.uniform(0.1, 0.5, num_variants) + 0.1 * (index - 1), 0.05, 0.8)
        calls = rng.binomial(2, frequency[:, None], size=(num_variants, n)).astype(np.int8)
        age = rng.normal(50 + 5 * index, 10, n).round()
        sex = rng.integers(1, 3, n).astype(np.float64)
        score = EFFECT @ (calls[list(CAUSAL)].astype(np.float64) - 2 * frequency[list(CAUSAL), None])
        score = score + 0.03 * (age - 50) + 0.3 * (sex - 1.5) + (index - 1) * 0.3
        if quantitative:
            trait = score + rng.normal(0, 1.0, n)
        else:
            trait = (rng.random(n) < 1 / (1 + np.exp(-score))).astype(np.float64)
        calls[rng.random(calls.shape) < missing_rate] = -1
        out[f"site-{index + 1}"] = write_dataset(root / f"site-{index + 1}", ids, calls, {"age": age, "sex": sex, ("quant_trait" if quantitative else "binary_trait"): trait}, prefix=f"s{index}_")
    return out


def write_dataset(root: Path, ids: list[str], call_dosage: np.ndarray, phenotypes: dict[str, Any], *, prefix: str, chunk_size: int = 8) -> Path:
    """A dataset with phenotype columns in samples.parquet."""
    from tests.federation.runtime_support import write_dataset as write_genotypes

    write_genotypes(root, ids, call_dosage, sample_prefix=prefix, chunk_size=chunk_size)
    n = call_dosage.shape[1]
    samples = pa.table({
        "sample_index": pa.array(np.arange(n, dtype=np.int32)),
        "sample_id": pa.array([f"{prefix}{i}" for i in range(n)], pa.string()),
        "has_phenotypes": pa.array([True] * n),
        **{name: pa.array(np.asarray(values, np.float64), pa.float64()) for name, values in phenotypes.items()},
    })
    meta = dataset_io.open_dataset(root).metadata
    dataset_io.write_metadata(root, samples=samples, chunks=meta["chunks"])
    return root
