"""Bounding a site's values before they enter a sum: clip them, say so in the site's own log, never refuse.

A job's spec bounds the raw values one sample may bring to a sum (``max_abs_value`` of a
covariate, phenotype or target; ``max_abs_z`` of a standardized one), and every
layout's fixed-point bound is derived from it. A site holding a value beyond the bound
clips it to ``±bound`` instead of declining the job: a refusal would tell the analyst
that some value lies beyond the bound, and bisecting the bound over many jobs would
read off the site's most extreme value. How many values were clipped, and in which
column, goes to the site's own log (:mod:`logging`, level INFO) and nowhere else.

Clipping keeps a value's sign and leaves missing values (NaN) missing, so the samples
that contribute are the same with or without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from pipeline.errors import PolicyRefusal

__all__ = ["clip_columns", "check_sample_bound"]

log = logging.getLogger(__name__)


def clip_columns(values: np.ndarray, names: Sequence[str], bound: float, *, where: str, spec_key: str) -> np.ndarray:
    """``values`` with every entry beyond ``±bound`` set to ``±bound``; logs the count per column.

    Args:
        values: (samples,) or (samples, columns) float values; NaN stays NaN.
        names: the columns' names (one for a 1-d array), for the log.
        bound: the job's bound (positive).
        where: the analysis or phase (``gwas``, ``train``), for the log.
        spec_key: the spec key the bound comes from (``max_abs_value``), for the log.

    Returns:
        A clipped float64 copy of the same shape (``values`` itself is not changed).
    """
    array = np.array(values, dtype=np.float64, copy=True)
    if array.ndim not in (1, 2):
        raise ValueError(f"clip_columns: expected a 1-d or 2-d array, got shape {array.shape}")
    columns = array[:, None] if array.ndim == 1 else array
    if columns.shape[1] != len(names):
        raise ValueError(f"clip_columns: {columns.shape[1]} columns, {len(names)} names")
    with np.errstate(invalid="ignore"):
        beyond = np.abs(columns) > bound
    for column, name in enumerate(names):
        count = int(np.count_nonzero(beyond[:, column]))
        if count:
            log.info("%s: clipped %d value(s) of %r to +-%s (%g); nothing of this is sent", where, count, name, spec_key,
                     bound)
    np.clip(columns, -bound, bound, out=columns)
    return array


def check_sample_bound(count: int, bound: int, *, site: str, public: str) -> None:
    """Refuses (code ``policy``) a site whose sample count may exceed a job's ``max_samples_per_site``.

    Samples cannot be clipped, and the bound protects the ring from overflowing, so a
    site above it must decline. It compares the bound with its count rounded up to a
    power of two: bisecting ``max_samples_per_site`` over many jobs then tells an analyst
    at most the power of two above the site's count, never the count. A site with
    ``count <= bound`` may so decline a job it could have joined; raising the bound to
    the next power of two lets it in.

    Raises:
        PolicyRefusal: ``public`` names only the job's spec keys and columns.
    """
    coarse = 1 << max(0, int(count) - 1).bit_length()
    if coarse > bound:
        raise PolicyRefusal(
            f"site {site}: {count} samples (rounded up to {coarse}) exceed the job's max_samples_per_site {bound}",
            code="policy", public=public)
