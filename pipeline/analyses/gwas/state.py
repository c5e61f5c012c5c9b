"""The regression phase's public state: typed, frozen, and JSON for the coordinator's store.

What the coordinator publishes between rounds, one frozen dataclass per part:

* :class:`RegressionState`: the parameters, the variants to test (QC-passing), the PCA
  phase's final state (the basis every site scores its samples with), and then the
  parts below as the rounds produce them;
* :class:`~pipeline.analyses.gwas.rsid.Rsids`: the tested variants' rs IDs (the rs ID round);
* :class:`Moments`: the covariates' and phenotype's pooled means and SDs (the moments round);
* :class:`NewtonState`: a logistic fit in progress: every variant's coefficients,
  variance, status, and the variants still iterating; after the first Newton round
  also the summed allele counts (:class:`VariantCounts`);
* :class:`FirthState`: the Firth-penalized refit of the variants the plain fit could
  not handle, alternating ``information`` and ``score`` rounds (:class:`FirthRound`).

Arrays are held as read-only numpy arrays, decoded once in ``from_json``;
``to_json`` writes them with :func:`pipeline.json_arrays.encode_array` (bit-exact,
index arrays as int32 where they fit: half the base64). Because numpy arrays have no
single truth value, these classes compare by their JSON form.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from pipeline.analyses.gwas.covariates import Factors, expanded_columns
from pipeline.analyses.gwas.privacy import moments_noise, statistics_noise
from pipeline.analyses.gwas.rsid import Rsids
from pipeline.analyses.gwas.spec import GwasParameters
from pipeline.analyses.pca import PCA, PcaState
from pipeline.analyses.protocol import JsonState
from pipeline.errors import InputError
from pipeline.json_arrays import decode_array, encode_array, frozen_array
from pipeline.privacy import Spend
from pipeline.stats import glm

__all__ = ["ALLELE_SUMS", "COUNT_NAMES", "FirthRound", "FirthState", "HweScreen", "Moments", "NewtonState", "RegressionState",
           "VariantCounts"]


def _compact(values: np.ndarray) -> np.ndarray:
    """int32 where the values fit (half the base64 in the stored JSON state)."""
    values = np.asarray(values, np.int64)
    return values.astype(np.int32) if values.size == 0 or np.abs(values).max() < 2**31 else values


@dataclass(frozen=True, eq=False)
class Moments(JsonState):
    """Pooled means and SDs of the covariates (PCs included), then the phenotype.

    Attributes:
        n: complete samples over the included sites.
        mean: (columns + 1,) means.
        sd: (columns + 1,) standard deviations (population form, as they standardize).
        columns: the design's covariate columns where the job has factors (each one's reference level dropped:
            :func:`~.covariates.kept_columns`), else ``None`` (the spec's).
        short_form: (variants,) bool, the variants the linear round sends short
            (:func:`~pipeline.analyses.gwas.linear.published_short_form`); ``None``: none.
    """

    n: int
    mean: np.ndarray
    sd: np.ndarray
    columns: tuple[str, ...] | None = None
    short_form: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", frozen_array(self.mean, np.float64))
        object.__setattr__(self, "sd", frozen_array(self.sd, np.float64))
        if self.short_form is not None:
            object.__setattr__(self, "short_form", frozen_array(self.short_form, bool))

    def to_json(self) -> dict[str, Any]:
        data = {"n": self.n, "mean": self.mean.tolist(), "sd": self.sd.tolist()}
        if self.short_form is not None:
            data["short_form"] = encode_array(self.short_form)
        return data if self.columns is None else {**data, "columns": list(self.columns)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Moments:
        columns = data.get("columns")
        short_form = data.get("short_form")
        return cls(int(data["n"]), np.asarray(data["mean"], np.float64), np.asarray(data["sd"], np.float64),
                   None if columns is None else tuple(str(c) for c in columns),
                   None if short_form is None else decode_array(short_form))


@dataclass(frozen=True, eq=False)
class HweScreen(JsonState):
    """The variants the ancestry-cluster Hardy-Weinberg round withheld (:mod:`.hwe_clusters`).

    Attributes:
        withheld: their IDs, in the census' order.
        positions: (withheld,) their positions in the census' list of QC-passing variants,
            so the status table can list them where they were.
        n_sites_fail: (withheld,) how many sites flagged each (the secure sum of the flags).
    """

    withheld: tuple[str, ...]
    positions: np.ndarray
    n_sites_fail: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", frozen_array(self.positions, np.int64))
        object.__setattr__(self, "n_sites_fail", frozen_array(self.n_sites_fail, np.int64))

    def to_json(self) -> dict[str, Any]:
        return {"withheld": list(self.withheld), "positions": encode_array(_compact(self.positions)),
                "n_sites_fail": encode_array(_compact(self.n_sites_fail))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HweScreen:
        return cls(tuple(str(v) for v in data["withheld"]), decode_array(data["positions"]),
                   decode_array(data["n_sites_fail"]))


COUNT_NAMES = ("n", "n_case", "alt_count", "alt_case", "below_min")
"""The per-variant counts of the first Newton round, in layout order."""
ALLELE_SUMS = ("alt_count", "alt_case")
"""Of them, the ALT allele sums: integers of hard calls, reals where sites sum dosages."""


def _count_dtype(name: str) -> type[np.generic]:
    return np.float64 if name in ALLELE_SUMS else np.int64


@dataclass(frozen=True, eq=False)
class VariantCounts(JsonState):
    """Per variant sums of the first Newton round (one entry per tested variant; int64, the ALT sums float64).

    Attributes:
        n: samples with a called genotype (or a dosage).
        n_case: of them, cases.
        alt_count: ALT alleles (the sum of hard calls or dosages).
        alt_case: ALT alleles among cases.
        below_min: sites whose own minor allele count is non-zero and below their minimum
            (each left out of the variant: the other counts are the other sites' sums).
    """

    n: np.ndarray
    n_case: np.ndarray
    alt_count: np.ndarray
    alt_case: np.ndarray
    below_min: np.ndarray

    def __post_init__(self) -> None:
        for name in COUNT_NAMES:
            object.__setattr__(self, name, frozen_array(getattr(self, name), _count_dtype(name)))

    @classmethod
    def from_total(cls, total: Mapping[str, np.ndarray]) -> VariantCounts:
        """The counts of a round's decoded total."""
        return cls(**{name: np.asarray(total[name], _count_dtype(name)) for name in COUNT_NAMES})

    def to_json(self) -> dict[str, Any]:
        return {name: encode_array(getattr(self, name) if name in ALLELE_SUMS else _compact(getattr(self, name)))
                for name in COUNT_NAMES}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariantCounts:
        return cls(**{name: decode_array(data[name]) for name in COUNT_NAMES})


@dataclass(frozen=True, eq=False)
class NewtonState(JsonState):
    """A logistic fit of every variant by Newton-Raphson rounds.

    Attributes:
        iteration: Newton rounds done.
        theta: (variants, k + 1) coefficients, intercept first, genotype last.
        active: indices of the variants still iterating.
        status: (variants,) int8 :data:`pipeline.stats.glm.STATUS` codes.
        variance: (variants,) the genotype coefficient's variance at the last step.
        counts: the summed counts, from the first Newton round on.
    """

    iteration: int
    theta: np.ndarray
    active: np.ndarray
    status: np.ndarray
    variance: np.ndarray
    counts: VariantCounts | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "theta", frozen_array(self.theta, np.float64))
        object.__setattr__(self, "active", frozen_array(self.active, np.int64))
        object.__setattr__(self, "status", frozen_array(self.status, np.int8))
        object.__setattr__(self, "variance", frozen_array(self.variance, np.float64))

    @property
    def summed_counts(self) -> VariantCounts:
        """The counts of the first Newton round.

        Raises:
            InputError: that round has not ended yet.
        """
        if self.counts is None:
            raise InputError("gwas: the allele counts are not known before the first Newton round ends")
        return self.counts

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "theta": encode_array(self.theta), "active": encode_array(_compact(self.active)),
            "status": encode_array(self.status), "variance": encode_array(self.variance),
            "counts": None if self.counts is None else self.counts.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewtonState:
        counts = data["counts"]
        return cls(int(data["iteration"]), decode_array(data["theta"]), decode_array(data["active"]),
                   decode_array(data["status"]), decode_array(data["variance"]),
                   None if counts is None else VariantCounts.from_json(counts))


class FirthRound(enum.Enum):
    """The two rounds of one Firth iteration, at the same coefficients."""

    INFORMATION = "information"
    """Sites send the Fisher information; its inverse becomes public."""
    SCORE = "score"
    """Sites send the modified score, whose hat diagonal needs that inverse."""


@dataclass(frozen=True, eq=False)
class FirthState(JsonState):
    """The Firth-penalized refit of the variants the plain Newton fit could not handle.

    Attributes:
        index: (refitted,) the refitted variants' indices in the job's variant list.
        active: positions (into ``index``) of the variants still iterating.
        theta: (refitted, k + 1) coefficients.
        inverse: (refitted, packed) inverse Fisher information, once published.
        iteration: Firth iterations done (one per ``score`` round).
        next_round: which round comes next.
        variance: (refitted,) the genotype coefficient's variance.
        status: (refitted,) int8 status codes (``FIRTH_CONVERGE_FAIL`` until converged).
    """

    index: np.ndarray
    active: np.ndarray
    theta: np.ndarray
    inverse: np.ndarray | None
    iteration: int
    next_round: FirthRound
    variance: np.ndarray
    status: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", frozen_array(self.index, np.int64))
        object.__setattr__(self, "active", frozen_array(self.active, np.int64))
        object.__setattr__(self, "theta", frozen_array(self.theta, np.float64))
        if self.inverse is not None:
            object.__setattr__(self, "inverse", frozen_array(self.inverse, np.float64))
        object.__setattr__(self, "variance", frozen_array(self.variance, np.float64))
        object.__setattr__(self, "status", frozen_array(self.status, np.int8))

    @classmethod
    def start(cls, failed: np.ndarray, num_coefficients: int, intercept: float) -> FirthState:
        """The refit of ``failed`` variants from the null model's intercept (no round done)."""
        count = len(failed)
        theta = np.zeros((count, num_coefficients + 1))
        theta[:, 0] = intercept
        return cls(index=failed, active=np.arange(count), theta=theta, inverse=None, iteration=0,
                   next_round=FirthRound.INFORMATION, variance=np.full(count, np.nan),
                   status=np.full(count, glm.STATUS.index("FIRTH_CONVERGE_FAIL"), np.int8))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": encode_array(_compact(self.index)), "active": encode_array(_compact(self.active)),
            "theta": encode_array(self.theta), "inverse": None if self.inverse is None else encode_array(self.inverse),
            "iteration": self.iteration, "next_round": self.next_round.value, "variance": encode_array(self.variance),
            "status": encode_array(self.status),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FirthState:
        inverse = data["inverse"]
        return cls(decode_array(data["index"]), decode_array(data["active"]), decode_array(data["theta"]),
                   None if inverse is None else decode_array(inverse), int(data["iteration"]),
                   FirthRound(data["next_round"]), decode_array(data["variance"]), decode_array(data["status"]))


@dataclass(frozen=True, eq=False)
class RegressionState(JsonState):
    """The regression phase's public state (see the module docstring).

    Attributes:
        parameters: the job's checked spec.
        num_participants: sites invited (the bit budget is sized for all of them).
        variant_ids: the variants to test, in the census' order.
        pca: the PCA phase's final state (``pcs > 0``), else ``None``.
        rsids: the tested variants' rs IDs, from the rs ID round on.
        moments: the pooled means and SDs, from the moments round on.
        newton: the logistic fit, from the moments round on (logistic model only).
        firth: the Firth refit, once the plain fit has ended with failures.
        census_variants: the census phase's variant union size (its counts round's noise,
            for the job's privacy summary); ``None`` when the job has no privacy terms.
        hwe: what the ancestry-cluster HWE round withheld (``hwe_within: ancestry_clusters``,
            from that round on; ``variant_ids`` are then the variants it kept), else ``None``.
        factors: the categorical covariates' levels (from the levels round on) and the site covariate's sites
            (:mod:`.covariates`); ``None`` for a job with neither.
        census_complete: (the census' QC-passing variants,) bool: typed by every site with no
            missing call, left out by none (the linear round's short-form candidates); ``None``: unknown.
    """

    parameters: GwasParameters
    num_participants: int
    variant_ids: tuple[str, ...]
    pca: PcaState | None = None
    moments: Moments | None = None
    newton: NewtonState | None = None
    firth: FirthState | None = None
    census_variants: int | None = None
    rsids: Rsids | None = None
    hwe: HweScreen | None = None
    factors: Factors | None = None
    census_complete: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.census_complete is not None:
            object.__setattr__(self, "census_complete", frozen_array(self.census_complete, bool))

    def to_json(self) -> dict[str, Any]:
        factors = {} if self.factors is None else {"factors": self.factors.to_json()}
        if self.census_complete is not None:
            factors["census_complete"] = encode_array(self.census_complete)
        return {**factors,
            "parameters": self.parameters.to_json(), "num_participants": self.num_participants,
            "variant_ids": list(self.variant_ids), "pca": None if self.pca is None else self.pca.to_json(),
            "moments": None if self.moments is None else self.moments.to_json(),
            "newton": None if self.newton is None else self.newton.to_json(),
            "firth": None if self.firth is None else self.firth.to_json(),
            "census_variants": self.census_variants,
            "rsids": None if self.rsids is None else self.rsids.to_json(),
            "hwe": None if self.hwe is None else self.hwe.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegressionState:
        def part(name: str, parse: Any) -> Any:
            return None if data[name] is None else parse(data[name])

        return cls(
            parameters=GwasParameters.from_json(data["parameters"]), num_participants=int(data["num_participants"]),
            variant_ids=tuple(str(v) for v in data["variant_ids"]), pca=part("pca", PCA.state_from_json),
            moments=part("moments", Moments.from_json), newton=part("newton", NewtonState.from_json),
            firth=part("firth", FirthState.from_json),
            census_variants=None if data.get("census_variants") is None else int(data["census_variants"]),
            rsids=None if data.get("rsids") is None else Rsids.from_json(data["rsids"]),
            hwe=None if data.get("hwe") is None else HweScreen.from_json(data["hwe"]),
            factors=None if data.get("factors") is None else Factors.from_json(data["factors"]),
            census_complete=None if data.get("census_complete") is None else decode_array(data["census_complete"]),
        )

    @property
    def moments_noise(self) -> Spend | None:
        """The moments round's per-site noise under the job's privacy terms (``None``: exact).

        Derived, never stored (as every round's noise): every site computes it from the
        public terms and the columns, so no state the coordinator sends can shrink it.
        """
        privacy = self.parameters.privacy
        return None if privacy is None else moments_noise(privacy, len(self.columns) + 1)

    @property
    def statistics_noise(self) -> Spend | None:
        """The per-variant statistics round's per-site noise (``None``: exact); derived from the terms, V, k and max_abs_z."""
        p = self.parameters
        if p.privacy is None:
            return None
        return statistics_noise(p.privacy, len(self.variant_ids), self.num_coefficients, p.max_abs_z)

    @property
    def columns(self) -> tuple[str, ...]:
        """The fit's covariates, principal components last: with factors, once the moments are known, without each
        factor's reference level."""
        if self.moments is not None and self.moments.columns is not None:
            return self.moments.columns
        return self.all_columns

    @property
    def all_columns(self) -> tuple[str, ...]:
        """Every covariate column a site computes (each factor's every level: :func:`~.covariates.expanded_columns`)."""
        return self.parameters.columns if self.factors is None else expanded_columns(self.parameters, self.factors)

    @property
    def num_coefficients(self) -> int:
        """k: the intercept and the covariates (the genotype's coefficient comes on top)."""
        return len(self.columns) + 1

    @property
    def standardization(self) -> Moments:
        """The pooled moments every site standardizes with.

        Raises:
            InputError: the moments round has not ended yet.
        """
        if self.moments is None:
            raise InputError("gwas: the covariate moments are not known before the moments round ends")
        return self.moments

    @property
    def logistic_fit(self) -> NewtonState:
        """The logistic fit in progress.

        Raises:
            InputError: the model is linear, or the moments round has not ended yet.
        """
        if self.newton is None:
            raise InputError("gwas: no logistic fit in progress (a linear model, or before the moments round ends)")
        return self.newton

    @property
    def complete_mask(self) -> np.ndarray | None:
        """(variants,) bool: the census' ``census_complete`` of the tested variants (the HWE round's withheld dropped)."""
        if self.census_complete is None:
            return None
        mask = np.asarray(self.census_complete, bool)
        return mask if self.hwe is None else np.delete(mask, self.hwe.positions)

    @cached_property
    def variant_order(self) -> np.ndarray:
        """Indices that sort :attr:`variant_ids` (code point order, stable)."""
        order = np.argsort(np.asarray(self.variant_ids, dtype=str), kind="stable").astype(np.int64)
        order.setflags(write=False)
        return order

    @cached_property
    def sorted_variant_ids(self) -> np.ndarray:
        """:attr:`variant_ids` sorted, for :func:`pipeline.dataset.locate`."""
        return np.asarray(self.variant_ids, dtype=str)[self.variant_order]

    @cached_property
    def variants_digest(self) -> str:
        """SHA-256 of the tested variant list (names the site's cached genotype rows)."""
        return hashlib.sha256(json.dumps(list(self.variant_ids)).encode()).hexdigest()

    @cached_property
    def samples_digest(self) -> str:
        """SHA-256 of what decides a site's complete samples and their covariate values:
        phenotype, covariates, model, the PCA basis and the clip bound ``max_abs_value``."""
        p = self.parameters
        basis = None if self.pca is None else self.pca.to_json()
        factors = [] if self.factors is None else [self.factors.to_json(), list(p.categorical), p.min_level_count]
        text = json.dumps([p.phenotype, list(p.covariates), p.model, basis, p.max_abs_value, *factors], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

