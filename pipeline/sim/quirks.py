"""The ways real sites' files differ, as explicit per-site parameters.

Consortia meet these in practice: ``chr22`` vs ``22``; bgzipped VCF + tabix vs BCF +
CSI; phased vs unphased calls; missing and half-missing calls; REF/ALT swapped as after
``plink --recode vcf`` without a reference; different variant subsets; sample orders
and phenotype tables that do not line up with the VCF. Every site gets a profile from
a fixed table (cycled past four sites) so a cohort exercises all combinations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SiteQuirks:
    """What makes one site's files different from the others'.

    Attributes:
        contig_style: ``"chr"`` (``chr22``) or ``"nochr"`` (``22``).
        file_format: ``"vcf.gz"`` (bgzipped VCF + ``.tbi``) or ``"bcf"`` (BCF + ``.csi``).
        phased: GT written with ``|`` (calls with a missing allele always use ``/``).
        missing_rate: fraction of calls written ``./.``.
        half_missing_rate: fraction of calls written with one missing allele (``./1``).
        ref_alt_swap_fraction: fraction of biallelic SNPs written with REF and ALT
            exchanged (genotypes recoded), so REF disagrees with the reference FASTA.
        drop_fraction: fraction of the site's polymorphic variants left out of its file.
        phenotype_na_rate: fraction of values written ``NA`` in each phenotype column.
        genotype_only_samples: VCF samples absent from the phenotype table.
        phenotype_only_samples: phenotype rows whose ID is absent from the VCF.
    """

    contig_style: str
    file_format: str
    phased: bool
    missing_rate: float
    half_missing_rate: float
    ref_alt_swap_fraction: float
    drop_fraction: float
    phenotype_na_rate: float
    genotype_only_samples: int = 2
    phenotype_only_samples: int = 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters, as recorded in ``cohort.json``."""
        return asdict(self)


_PROFILES: tuple[SiteQuirks, ...] = (
    SiteQuirks("chr", "vcf.gz", True, 0.005, 0.0005, 0.02, 0.05, 0.02),
    SiteQuirks("nochr", "bcf", False, 0.02, 0.001, 0.02, 0.04, 0.03),
    SiteQuirks("nochr", "vcf.gz", False, 0.01, 0.001, 0.03, 0.06, 0.04),
    SiteQuirks("chr", "bcf", True, 0.01, 0.0005, 0.01, 0.05, 0.02),
)


def site_quirks(site_index: int) -> SiteQuirks:
    """The quirk profile of site ``site_index`` (0-based)."""
    return _PROFILES[site_index % len(_PROFILES)]


def contig_name(chromosome_number: str, style: str) -> str:
    """``("22", "chr") -> "chr22"``; ``("22", "nochr") -> "22"``."""
    return f"chr{chromosome_number}" if style == "chr" else chromosome_number


def add_missing_calls(
    allele_index: np.ndarray, *, missing_rate: float, half_missing_rate: float, rng: np.random.Generator
) -> np.ndarray:
    """Blanks whole calls (``./.``) and single alleles (``./1``) at random.

    Args:
        allele_index: int8 (variants, samples, 2); modified copy is returned.

    Returns:
        int8 (variants, samples, 2) with -1 for missing alleles. A half-missing call
        has its first allele missing.
    """
    out = allele_index.copy()
    calls = out.shape[0] * out.shape[1]
    if calls == 0:
        return out
    flat = out.reshape(calls, 2)
    n_missing = int(rng.binomial(calls, missing_rate)) if missing_rate > 0 else 0
    n_half = int(rng.binomial(calls, half_missing_rate)) if half_missing_rate > 0 else 0
    half = rng.integers(0, calls, size=n_half)
    flat[half, 0] = -1
    missing = rng.integers(0, calls, size=n_missing)
    flat[missing, :] = -1
    return out


def swap_ref_alt(allele_index: np.ndarray) -> np.ndarray:
    """Recodes biallelic calls after exchanging REF and ALT (0 <-> 1; missing stays -1)."""
    return np.where(allele_index >= 0, 1 - allele_index, allele_index).astype(np.int8)
