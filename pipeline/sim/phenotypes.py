"""Traits with known causes: causal variants, covariates and an ancestry effect.

The quantitative trait has ``QUANT_CAUSAL`` common causal variants, each adding
2 p (1 - p) b^2 = ``QUANT_VARIANCE_PER_VARIANT`` to a trait variance of about 1.1, so each
reaches genome-wide significance (p < 5e-8) at about 3000 samples once ancestry is
accounted for. The binary trait follows a liability-threshold model with
``BINARY_CAUSAL`` variants and a prevalence of ``PREVALENCE``. Both traits depend on
age and sex and shift with ancestry (a population-specific mean), so an analysis that
ignores ancestry (no principal components) finds spurious associations.

Coding (written in ``cohort.json``): sex 1 = male, 2 = female (plink); binary_trait
0 = control, 1 = case; age in whole years; missing values ``NA``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sim.ancestry import POPULATIONS

QUANT_CAUSAL = 10
BINARY_CAUSAL = 4
QUANT_VARIANCE_PER_VARIANT = 0.025
BINARY_VARIANCE_PER_VARIANT = 0.04
PREVALENCE = 0.30
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 55.0, 12.0, 20, 90
QUANT_POPULATION_SHIFT = {"YRI": 0.40, "CEU": 0.0, "CHB": -0.30}
BINARY_POPULATION_SHIFT = {"YRI": 0.25, "CEU": 0.0, "CHB": 0.35}
QUANT_AGE_EFFECT, QUANT_FEMALE_EFFECT = 0.02, 0.20  # per year, female vs male
BINARY_AGE_EFFECT, BINARY_MALE_EFFECT = 0.02, 0.30
NOISE_VARIANCE = 0.70

PHENOTYPE_COLUMNS: tuple[str, ...] = ("IID", "age", "sex", "quant_trait", "binary_trait")


def trait_model() -> dict[str, Any]:
    """The generating model, as recorded in ``cohort.json``."""
    return {
        "columns": list(PHENOTYPE_COLUMNS),
        "coding": {"sex": "1=male, 2=female", "binary_trait": "0=control, 1=case", "age": "years", "missing": "NA"},
        "quant_trait": {
            "causal_variants": QUANT_CAUSAL,
            "variance_per_variant": QUANT_VARIANCE_PER_VARIANT,
            "population_shift": QUANT_POPULATION_SHIFT,
            "age_effect_per_year": QUANT_AGE_EFFECT,
            "female_effect": QUANT_FEMALE_EFFECT,
            "noise_variance": NOISE_VARIANCE,
        },
        "binary_trait": {
            "model": "liability threshold",
            "causal_variants": BINARY_CAUSAL,
            "variance_per_variant": BINARY_VARIANCE_PER_VARIANT,
            "prevalence": PREVALENCE,
            "population_shift": BINARY_POPULATION_SHIFT,
            "age_effect_per_year": BINARY_AGE_EFFECT,
            "male_effect": BINARY_MALE_EFFECT,
            "noise_variance": NOISE_VARIANCE,
        },
        "effect": (
            "per copy of the ALT (derived) allele, in the reference orientation; liability scale for binary_trait"
        ),
    }


def choose_spaced(
    candidate: np.ndarray, position: np.ndarray, count: int, *, min_spacing: int, rng: np.random.Generator
) -> np.ndarray:
    """Picks up to ``count`` candidates at random, at least ``min_spacing`` bp apart.

    Spacing keeps causal variants in separate association peaks. Returns the chosen
    indexes sorted by position.
    """
    chosen: list[int] = []
    for index in rng.permutation(candidate):
        if all(abs(int(position[index]) - int(position[c])) >= min_spacing for c in chosen):
            chosen.append(int(index))
            if len(chosen) == count:
                break
    return np.array(sorted(chosen, key=lambda i: position[i]), dtype=np.int64)


def effect_sizes(alt_frequency: np.ndarray, variance_per_variant: float, rng: np.random.Generator) -> np.ndarray:
    """Per-allele effects with random sign giving each variant the same explained variance.

    A variant with allele frequency p and effect b explains 2 p (1 - p) b^2.
    """
    p = np.asarray(alt_frequency, dtype=np.float64)
    sign = rng.choice(np.array([-1.0, 1.0]), size=p.shape[0])
    return sign * np.sqrt(variance_per_variant / (2.0 * p * (1.0 - p)))


@dataclass(frozen=True)
class Traits:
    """Per-individual covariates and traits (rows as given to :func:`simulate_traits`)."""

    age: np.ndarray  # int64
    sex: np.ndarray  # int64, 1 male, 2 female
    quant_trait: np.ndarray  # float64
    binary_trait: np.ndarray  # int64, 0/1
    liability: np.ndarray  # float64


def simulate_traits(
    *,
    population: np.ndarray,
    quant_dosage: np.ndarray,
    quant_effect: np.ndarray,
    binary_dosage: np.ndarray,
    binary_effect: np.ndarray,
    rng: np.random.Generator,
) -> Traits:
    """Draws covariates and both traits for every row.

    Args:
        population: int (n,), index into :data:`POPULATIONS`.
        quant_dosage, binary_dosage: (n, k) ALT allele counts of the causal variants.
        quant_effect, binary_effect: (k,) per-allele effects.
        rng: the phenotype stream.
    """
    n = population.shape[0]
    age = np.clip(np.rint(rng.normal(AGE_MEAN, AGE_SD, size=n)), AGE_MIN, AGE_MAX).astype(np.int64)
    sex = rng.integers(1, 3, size=n).astype(np.int64)
    female = (sex == 2).astype(np.float64)
    quant_shift = np.array([QUANT_POPULATION_SHIFT[name] for name in POPULATIONS])[population]
    binary_shift = np.array([BINARY_POPULATION_SHIFT[name] for name in POPULATIONS])[population]
    quant_genetic = quant_dosage.astype(np.float64) @ quant_effect
    quant_genetic -= quant_genetic.mean() if n else 0.0
    quant = (
        quant_genetic
        + quant_shift
        + QUANT_AGE_EFFECT * (age - AGE_MEAN)
        + QUANT_FEMALE_EFFECT * female
        + rng.normal(0.0, np.sqrt(NOISE_VARIANCE), size=n)
    )
    liability = (
        binary_dosage.astype(np.float64) @ binary_effect
        + binary_shift
        + BINARY_AGE_EFFECT * (age - AGE_MEAN)
        + BINARY_MALE_EFFECT * (1.0 - female)
        + rng.normal(0.0, np.sqrt(NOISE_VARIANCE), size=n)
    )
    threshold = np.quantile(liability, 1.0 - PREVALENCE) if n else 0.0
    case = (liability > threshold).astype(np.int64)
    return Traits(age=age, sex=sex, quant_trait=quant, binary_trait=case, liability=liability)


def write_phenotype_table(
    path: Path,
    sample_id: Sequence[str],
    traits: Traits,
    rows: np.ndarray,
    *,
    na_rate: float,
    rng: np.random.Generator,
) -> int:
    """Writes ``phenotypes.tsv`` for the given rows of ``traits``, with ``NA`` at random.

    Args:
        sample_id: (len(rows),) IDs, in the order written.
        rows: indexes into ``traits``, aligned with ``sample_id``.
        na_rate: fraction of values blanked independently in each column.

    Returns:
        The number of values written as ``NA``.
    """
    columns = {
        "age": [str(v) for v in traits.age[rows]],
        "sex": [str(v) for v in traits.sex[rows]],
        "quant_trait": [f"{v:.4f}" for v in traits.quant_trait[rows]],
        "binary_trait": [str(v) for v in traits.binary_trait[rows]],
    }
    n_na = 0
    for name in PHENOTYPE_COLUMNS[1:]:
        blank = rng.random(len(rows)) < na_rate
        n_na += int(blank.sum())
        columns[name] = ["NA" if b else v for b, v in zip(blank, columns[name])]
    lines = ["\t".join(PHENOTYPE_COLUMNS)]
    for i, iid in enumerate(sample_id):
        lines.append("\t".join([iid, *(columns[name][i] for name in PHENOTYPE_COLUMNS[1:])]))
    path.write_text("\n".join(lines) + "\n")
    return n_na
