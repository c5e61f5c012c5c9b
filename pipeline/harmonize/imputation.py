"""The imputation-quality filter: drop imputed variants whose INFO score is below a threshold.

As ``plink2 --extract-if-info "R2 >= 0.3"`` on an imputation server's VCF, with the key
the reader chose (:data:`pipeline.io.vcf.IMPUTATION_KEYS`). A variant whose record names
no score is kept: imputation servers score every imputed variant, so an unscored one
was typed, not imputed. Applied right after the multi-allelic split, so each ALT is
judged by its own score where the file gives one per ALT (Beagle's DR2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.harmonize.batch import VariantBatch

DROP_REASON = "low_imputation_quality"


def drop_low_imputation_quality(min_info: float) -> Callable[[VariantBatch], VariantBatch]:
    """A harmonization step dropping the variants whose ``info_score`` is below ``min_info`` (counted)."""

    def step(batch: VariantBatch) -> VariantBatch:
        if batch.info_score is None:
            return batch.counted(dropped={DROP_REASON: 0})
        with np.errstate(invalid="ignore"):
            low = batch.info_score < min_info  # NaN (no score) compares False: kept
        return batch.select(~low).counted(dropped={DROP_REASON: int(low.sum())})

    return step
