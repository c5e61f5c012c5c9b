"""Categorical covariates and the site covariate: one-hot columns of public levels, as plink2 --glm codes them.

**Categorical covariates** (``categorical: [centre]``, each also listed under
``covariates``): a text column of the samples table, or a numeric one holding codes (a
batch number; a code is written as its integer, ``3``, or its shortest float text). A
text covariate not declared categorical is refused at the site's pre-flight
(``spec-mismatch``): whether a column is one-hot encoded must be the same at every site,
so it comes from the spec, never from one site's column type.

The levels are agreed in one :class:`~pipeline.analyses.KeyUnion` round of the
regression phase (:func:`site_levels`, :func:`resolve_levels`): each site sends
``"<i>\\t<level>"`` (``i`` the covariate's position in ``categorical``) for every level its
complete cases hold, over every phenotype of the job; the coordinator publishes each
covariate's levels in natural order (digit runs as numbers, letters case-insensitive,
then code points: plink2's order). In the moments round every site sends every level's
0/1 column, so the pooled count of each level is known; the coordinator then drops per
covariate its reference level (:func:`kept_columns`): ``reference: {centre: london}``
where the spec names one, else plink2's rule, the most common level, ties to the first in
natural order (plink2 v2.00a3.5 ``--glm`` checked on a text covariate). Levels without a
complete sample (one phenotype's complete cases may lack a level another's hold) are
dropped too. The design then has ``levels - 1`` columns ``centre=LEVEL`` per covariate,
standardized as any covariate; the genotype's fit equals plink2 ``--glm`` with the column
as a categorical covariate, and pooled OLS with the same dummy coding.

**Disclosure**: a level held by few people would single them out: the union reveals its
text, and its column's sums would be theirs. A site therefore treats a sample whose
level fewer than ``min_level_count`` (default 5) of its complete cases share as
incomplete (:func:`drop_rare_levels`, repeated until every kept level of every
categorical covariate reaches it): the level never leaves the site, and those samples
enter no sum of the job (nor its ledger's contributing set). A site refuses at the
pre-flight a job whose ``min_level_count`` is below its policy's ``min_allele_count``
(its small-cell minimum; :func:`check_site_policy`), so an analyst cannot lower it. The
coordinator refuses a union over :data:`MAX_LEVELS` levels per covariate, or a level over
:data:`MAX_LEVEL_CHARS` characters. Levels are not variant keys: ``share_variant_keys``
does not govern them.

**The site covariate** (``site_covariate: true``): one 0/1 column ``site=NAME`` per site
of the job, bar the reference (the site with the most complete samples, ties to the first
in natural order, as a pooled ``site`` factor would be in plink2), so site (batch)
effects are adjusted as a pooled fit with a site factor. A site knows its column from its
name in the job's site list; sites that contribute nothing (declined) get no column. Such
a column is filled by one site only, so its entries in every sum (``X'X``, ``X'y``, the
moments) are that site's own sums: its complete-sample count, its phenotype and covariate
sums and per variant its allele sums. Each site therefore takes part only where its
policy says ``share_site_metrics`` (declined at the pre-flight otherwise, code
``policy``). A variant some contributing site does not hold has an empty site column and
is not tested (``VIF_TOO_HIGH``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.analyses.gwas.spec import GwasParameters
from pipeline.analyses.protocol import KeyUnion, SiteContext
from pipeline.dataset import Dataset
from pipeline.errors import (
    ConfigurationError,
    PolicyRefusal,
    ProtocolError,
    SpecMismatch,
)

__all__ = ["LEVEL_KEYS", "MAX_LEVELS", "MAX_LEVEL_CHARS", "Factors", "categorical_values", "check_covariate_types",
           "check_site_policy", "covariate_matrix", "drop_rare_levels", "expanded_columns", "kept_columns", "levels_layout",
           "natural_key", "resolve_levels", "site_levels"]

LEVEL_KEYS = "covariate_level"
"""The levels round's key field."""
MAX_LEVELS = 100
"""Most levels one categorical covariate may have across the sites."""
MAX_LEVEL_CHARS = 200
"""Longest level text a site may send."""
SITE = "site"
"""The site covariate's name: its columns are ``site=NAME``."""

_CHUNKS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """plink2's natural order: digit runs compared as numbers, letters case-insensitively, then code points."""
    parts = tuple((0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in _CHUNKS.split(text) if part)
    return parts, text


@dataclass(frozen=True)
class Factors:
    """The public structure of a job's factor columns.

    Attributes:
        levels: per categorical covariate (spec order), its levels in natural order; ``()`` before the levels round.
        sites: with ``site_covariate`` the job's sites (sorted), else ``()``.
    """

    levels: tuple[tuple[str, ...], ...] = ()
    sites: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"levels": [list(levels) for levels in self.levels], "sites": list(self.sites)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Factors:
        return cls(tuple(tuple(str(v) for v in levels) for levels in data["levels"]), tuple(str(s) for s in data["sites"]))


def _factor_columns(parameters: GwasParameters, factors: Factors | None) -> list[tuple[str, list[str]]]:
    """(factor, its columns) per categorical covariate, then the site factor; the one-hot columns before any is dropped."""
    if factors is None:
        return []
    if parameters.categorical and len(factors.levels) != len(parameters.categorical):
        raise ProtocolError("gwas: the categorical covariates' levels are not known before the levels round ends")
    out = [(name, [f"{name}={level}" for level in levels]) for name, levels in zip(parameters.categorical, factors.levels)]
    if factors.sites:
        out.append((SITE, [f"{SITE}={site}" for site in factors.sites]))
    return out


def expanded_columns(parameters: GwasParameters, factors: Factors | None) -> tuple[str, ...]:
    """Every covariate column a site computes: numeric covariates, each level's 0/1 column in place, site columns, PCs."""
    columns = dict(_factor_columns(parameters, factors))
    out: list[str] = []
    for name in parameters.covariates:
        out += columns.get(name, [name]) if name in parameters.categorical else [name]
    out += columns.get(SITE, [])
    return (*out, *(f"PC{i + 1}" for i in range(parameters.pcs)))


def kept_columns(parameters: GwasParameters, factors: Factors | None, sums: np.ndarray) -> tuple[str, ...] | None:
    """The design's columns once each factor's reference level and empty levels are dropped (module docstring).

    Args:
        sums: the moments round's summed raw values, in :func:`expanded_columns` order (a 0/1 column's sum is its count).

    Returns:
        ``None`` for a job without factors (its columns are the spec's).

    Raises:
        ConfigurationError: a categorical covariate with one level among the complete samples, or a ``reference``
            level no complete sample holds.
    """
    factor_columns = _factor_columns(parameters, factors)
    if not factor_columns:
        return None
    columns = expanded_columns(parameters, factors)
    count = dict(zip(columns, np.rint(np.asarray(sums, np.float64)[: len(columns)]).astype(np.int64).tolist()))
    dropped: set[str] = set()
    for name, names in factor_columns:
        present = [c for c in names if count[c] > 0]
        dropped.update(c for c in names if count[c] <= 0)
        if name in parameters.reference:
            reference = f"{name}={parameters.reference[name]}"
            if reference not in present:
                raise ConfigurationError(f"gwas: the reference level {parameters.reference[name]!r} of {name!r} is held by "
                                         "no complete sample of the sites' (at least min_level_count at a site)")
        elif present:
            most = max(count[c] for c in present)
            reference = min((c for c in present if count[c] == most), key=lambda c: natural_key(c.partition("=")[2]))
        if name != SITE and len(present) < 2:
            raise ConfigurationError(f"gwas: the categorical covariate {name!r} has {len(present)} level(s) among the "
                                     "complete samples; drop it from the spec")
        if present:
            dropped.add(reference)
    return tuple(c for c in columns if c not in dropped)


def check_site_policy(parameters: GwasParameters, site: SiteContext) -> None:
    """Refuses a job whose factor columns the site's policy does not allow (module docstring).

    Raises:
        PolicyRefusal: (code ``policy``) ``site_covariate`` without the site's ``share_site_metrics``, or a
            ``min_level_count`` below its ``min_allele_count``.
    """
    if parameters.site_covariate and not site.share_site_metrics:
        raise PolicyRefusal(f"site {site.name}: site_covariate reveals the site's own sums in its column, and its policy "
                            "does not share site metrics (share_site_metrics)",
                            public="site_covariate reveals each site's own sums; the site's policy does not share site metrics")
    if parameters.categorical and parameters.min_level_count < site.min_allele_count:
        raise PolicyRefusal(f"site {site.name}: the job's min_level_count {parameters.min_level_count} is below the site's "
                            f"min_allele_count {site.min_allele_count}",
                            public="the job's min_level_count is below the site's smallest cell")


def check_covariate_types(parameters: GwasParameters, dataset: Dataset, samples: pa.Table) -> None:
    """Refuses a text column as a covariate not declared categorical (a missing or text phenotype is refused where read).

    Raises:
        SpecMismatch: naming the spec's column and that it is text.
    """
    for name in parameters.covariates:
        if name in parameters.categorical or name not in samples.column_names:
            continue
        kind = samples.schema.field(name).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            raise SpecMismatch(f"{dataset.path}/samples.parquet: covariate {name!r} is text ({kind}); the job treats it as "
                               "a number", public=f"the covariate column {name!r} is not numeric but text; list it "
                                                  "under categorical to one-hot encode it")


def categorical_values(dataset: Dataset, samples: pa.Table, name: str) -> np.ndarray:
    """A categorical covariate's level per sample (text; ``None`` where missing).

    Raises:
        SpecMismatch: no such column, or neither text nor numbers.
    """
    if name not in samples.column_names:
        raise SpecMismatch(f"{dataset.path}/samples.parquet: no column {name!r} (the job's categorical covariate)",
                           public=f"the categorical covariate column {name!r} is missing")
    column = samples.column(name)
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_pylist(), dtype=object)
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
        raise SpecMismatch(f"{dataset.path}/samples.parquet: column {name!r} (the job's categorical covariate) is {kind}",
                           public=f"the categorical covariate column {name!r} is neither text nor numbers")
    values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    return np.asarray([None if not np.isfinite(v) else str(int(v)) if v == int(v) else repr(float(v)) for v in values],
                      dtype=object)


def drop_rare_levels(keep: np.ndarray, categories: np.ndarray, minimum: int) -> np.ndarray:
    """``keep`` without the samples whose level of some categorical covariate fewer than ``minimum`` kept samples share.

    Repeated until every kept level reaches ``minimum``: dropping one covariate's rare level can make another's rare.
    """
    keep = np.asarray(keep, bool).copy()
    while True:
        rare = np.zeros_like(keep)
        for j in range(categories.shape[1]):
            levels, counts = np.unique(categories[keep, j].astype(str), return_counts=True)
            few = levels[counts < minimum]
            if few.size:
                rare |= keep & np.isin(categories[:, j].astype(str), few)
        if not rare.any():
            return keep
        keep &= ~rare


def levels_layout() -> KeyUnion:
    """The levels round's key union (identical at every party)."""
    return KeyUnion(LEVEL_KEYS, "levels of the job's categorical covariates held by at least min_level_count of a site's "
                                "complete samples")


def site_levels(keeps: Sequence[np.ndarray], categories: np.ndarray) -> np.ndarray:
    """The site's ``"<i>\\t<level>"`` keys: the levels its complete cases (of any phenotype: ``keeps``) hold, sorted."""
    keys = {f"{j}\t{level}" for keep in keeps for j in range(categories.shape[1]) for level in categories[keep, j]}
    return np.asarray(sorted(keys), dtype=str)


def resolve_levels(keys: Sequence[str] | np.ndarray, parameters: GwasParameters) -> tuple[tuple[str, ...], ...]:
    """Each categorical covariate's levels, in natural order, from the union of the sites' keys.

    Raises:
        ProtocolError: a key that is not ``"<i>\\t<level>"`` for a covariate of the job, or a level too long
            (the message never repeats the text).
        ConfigurationError: a covariate with more than :data:`MAX_LEVELS` levels.
    """
    count = len(parameters.categorical)
    levels: list[set[str]] = [set() for _ in range(count)]
    for key in (str(k) for k in keys):
        index, tab, level = key.partition("\t")
        if not tab or not index.isdigit() or int(index) >= count or not level or len(level) > MAX_LEVEL_CHARS:
            raise ProtocolError(f"gwas: the levels round's union holds a key ({len(key)} characters, not repeated here) "
                                f"that is not a covariate position, a tab and a level of at most {MAX_LEVEL_CHARS} characters")
        levels[int(index)].add(level)
    for name, found in zip(parameters.categorical, levels):
        if len(found) > MAX_LEVELS:
            raise ConfigurationError(f"gwas: the categorical covariate {name!r} has {len(found)} levels across the sites, "
                                     f"more than {MAX_LEVELS}; group its levels or drop it")
    return tuple(tuple(sorted(found, key=natural_key)) for found in levels)


def covariate_matrix(parameters: GwasParameters, factors: Factors | None, numeric: np.ndarray, categories: np.ndarray,
                     keep: np.ndarray, site: str) -> np.ndarray:
    """(samples, covariate columns without PCs) in :func:`expanded_columns` order: numbers, 0/1 level and site columns.

    Raises:
        ProtocolError: a kept sample's level is not among the published ones (every level the site sent is), or the
            site is not among the job's sites.
    """
    n = len(keep)
    if factors is None:
        return numeric
    parts, numbers, codes = [], iter(range(numeric.shape[1])), iter(range(categories.shape[1]))
    for name in parameters.covariates:
        if name not in parameters.categorical:
            parts.append(numeric[:, [next(numbers)]])
            continue
        j = next(codes)
        levels = np.asarray(factors.levels[j], dtype=object)
        hot = categories[:, [j]] == levels[None, :]
        if np.any(keep & ~hot.any(axis=1)):
            raise ProtocolError(f"gwas: the published levels of {name!r} lack a level this site sent")
        parts.append(hot.astype(np.float64))
    if factors.sites:
        if site not in factors.sites:
            raise ProtocolError(f"gwas: site {site!r} is not among the job's sites {list(factors.sites)}")
        parts.append(np.tile((np.asarray(factors.sites) == site).astype(np.float64), (n, 1)))
    return np.column_stack(parts) if parts else np.zeros((n, 0))
