"""Statistics kernels shared by local QC and the federated analyses.

Pure functions over arrays, independent of files: genotype counts (:mod:`.counts`,
NumPy or JAX by backend) and the Hardy-Weinberg exact test (:mod:`.hwe`).
"""

from pipeline.stats.counts import (
    SampleCounts,
    VariantCounts,
    count_block,
    count_variants,
)
from pipeline.stats.hwe import hwe_exact_p

__all__ = [
    "SampleCounts",
    "VariantCounts",
    "count_block",
    "count_variants",
    "hwe_exact_p",
]
