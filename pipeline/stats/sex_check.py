"""Sex check from chrX: each sample's inbreeding coefficient F over chrX outside the PARs.

As PLINK 1.9's ``--check-sex``: a male carries one X outside the pseudo-autosomal regions,
so his calls there are all homozygous (haploid calls are stored 0/2) and F is near 1; a
female's F is near 0. Per sample, over the chrX variants it has a call for,

    F = (O - E) / (N - E),   E = sum over those variants of 1 - 2 p q,

with O its homozygous calls, N its calls, and p the ALT frequency over every sample where
a reported male counts one allele (hemizygous) and anyone else two. A sample with F above
:data:`MALE_MIN_F` is called male (1), below :data:`FEMALE_MAX_F` female (2), else 0;
``PROBLEM`` where that differs from the reported sex (PLINK's ``SNPSEX``, ``STATUS``). The
check agrees with plink1.9 to its printed digits (``tests/test_qc.py``).

Sites of mixed ancestry raise females' F (fewer heterozygotes than pooled frequencies
predict, the Wahlund effect), so a female between the thresholds is a hint, not proof.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FEMALE_MAX_F = 0.2
MALE_MIN_F = 0.8


class XHomozygosity(NamedTuple):
    """Per-sample sums over chrX variants (non-PAR): int64 ``observed`` homozygous calls, ``called``, float64 ``expected``."""

    observed: np.ndarray
    called: np.ndarray
    expected: np.ndarray

    def __add__(self, other: object) -> XHomozygosity:  # type: ignore[override]
        assert isinstance(other, XHomozygosity)
        return XHomozygosity(self.observed + other.observed, self.called + other.called, self.expected + other.expected)


def empty(num_samples: int) -> XHomozygosity:
    """Zero sums for ``num_samples`` samples."""
    return XHomozygosity(np.zeros(num_samples, np.int64), np.zeros(num_samples, np.int64), np.zeros(num_samples, np.float64))


def x_homozygosity(call_dosage: np.ndarray, male: np.ndarray) -> XHomozygosity:
    """The sums of one block of chrX (non-PAR) variants.

    Args:
        call_dosage: int8 (variants, samples), -1 missing; a male's haploid calls are 0 or 2.
        male: bool (samples,), reported male (sex 1).
    """
    called = call_dosage >= 0
    alt = np.where(called, call_dosage, 0).astype(np.float64)
    alleles_per_call = np.where(male, 1.0, 2.0)
    alt_alleles = (np.where(male[None, :], alt / 2, alt)).sum(axis=1)
    total_alleles = (called * alleles_per_call[None, :]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total_alleles > 0, alt_alleles / np.maximum(total_alleles, 1), 0.0)
    expected_homozygous = 1.0 - 2.0 * p * (1.0 - p)
    return XHomozygosity(
        observed=(called & (call_dosage != 1)).sum(axis=0).astype(np.int64),
        called=called.sum(axis=0).astype(np.int64),
        expected=(called * expected_homozygous[:, None]).sum(axis=0),
    )


def inbreeding_f(sums: XHomozygosity) -> np.ndarray:
    """F per sample; NaN without a chrX call or where every call is expected homozygous."""
    with np.errstate(invalid="ignore", divide="ignore"):
        denominator = sums.called - sums.expected
        return np.where((sums.called > 0) & (denominator > 0), (sums.observed - sums.expected) / denominator, np.nan)


def snp_sex(f: np.ndarray) -> np.ndarray:
    """int64 per sample: 1 (F > 0.8), 2 (F < 0.2) or 0 (between, or no F)."""
    return np.where(f > MALE_MIN_F, 1, np.where(f < FEMALE_MAX_F, 2, 0)).astype(np.int64)
