"""The typed public state of a PCA job: what every party holds between two rounds.

A PCA job advances through rounds of five kinds (:class:`PcaRound`), and each kind adds
a part to the state: the census sub-state drives the key and count rounds; the counts
round fixes the :class:`VariantSelection` and its :class:`Standardization`; the
iterations carry a :class:`Basis`; the last one replaces it by the :class:`Loadings`;
the scores round adds the :class:`ScoreMoments`. :class:`PcaState` checks that the
parts its ``round_kind`` needs are there, so a state missing one fails when it is read,
not three rounds later.

The state travels as JSON (:meth:`PcaState.to_json`), and every party must compute the
same JSON for the same state (the coordinator hashes it and the sites check the
digest): arrays are held decoded, read-only, and written bit for bit through
:func:`pipeline.json_arrays.encode_array`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analyses.census import CensusState
from pipeline.analyses.protocol import JsonState
from pipeline.errors import InputError
from pipeline.json_arrays import decode_array, encode_array, frozen_array
from pipeline.parameters import Param, boolean, choice, integer, number, parse_params

__all__ = [
    "PARAMS",
    "Basis",
    "Loadings",
    "PcaParameters",
    "PcaRound",
    "PcaState",
    "ScoreMoments",
    "Standardization",
    "VariantSelection",
    "selection_digest",
]


class PcaRound(enum.Enum):
    """What the next round of a PCA job does (see :mod:`pipeline.analyses.pca`)."""

    KEYS = "keys"
    """The census' variant-key union."""
    COUNTS = "counts"
    """The census' per-variant genotype counts."""
    ITERATE = "iterate"
    """One step of subspace iteration: the sum of ``G_s^T (G_s V)``."""
    SCORES = "scores"
    """Per-component sums and squares of the sites' scores."""
    DONE = "done"
    """No more rounds: the job's result is known."""


PARAMS = {
    "k": Param(4, integer(1, 1000)),
    "oversampling": Param(10, integer(0, 1000)),
    "iterations": Param(8, integer(1, 1000)),
    "seed": Param(0, integer(0, 2**63 - 1)),
    "window_bp": Param(5000, integer(1, 10**10)),
    "maf": Param(0.05, number(0.0, 0.5)),
    "min_call_rate": Param(0.95, number(0.0, 1.0)),
    "typed_at_all_sites": Param(True, boolean),
    "max_variants": Param(50_000, integer(1, 10**8)),
    "min_allele_count": Param(5, integer(0, 2**31)),
    "score_scaling": Param("eigenvector", choice("eigenvector", "raw")),
    "max_samples_per_site": Param(10_000_000, integer(1, 2**40)),
}
"""The PCA's spec keys, defaults and checks (see the spec in :mod:`pipeline.analyses.pca`)."""


@dataclass(frozen=True)
class PcaParameters:
    """The job's parameters, checked (see :data:`PARAMS` and the module docstring's spec)."""

    k: int
    oversampling: int
    iterations: int
    seed: int
    window_bp: int
    maf: float
    min_call_rate: float
    typed_at_all_sites: bool
    max_variants: int
    min_allele_count: int
    score_scaling: str
    max_samples_per_site: int

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> PcaParameters:
        """Checks a PCA spec and fills its defaults.

        Raises:
            ConfigurationError: naming the key, what was expected and what was given.
        """
        return cls(**parse_params(spec, PARAMS, where="pca"))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PcaParameters:
        return cls.parse(data)


def selection_digest(variant_ids: Sequence[str]) -> str:
    """SHA-256 of a variant selection (its IDs, one per line): names it in cache keys."""
    return hashlib.sha256("\n".join(variant_ids).encode()).hexdigest()


@dataclass(frozen=True)
class VariantSelection:
    """The variants the components are computed on, chosen from the counts round.

    Attributes:
        variant_ids: the selected variants' keys, in the census union's (sorted) order.
        shared: variants in the census union.
        eligible: union variants passing the count filters, before thinning.
        num_sites: sites that contributed to the counts round; every later round needs
            all of them (a PCA over a changing set of samples is not defined).
        num_samples: their samples, N.
    """

    variant_ids: tuple[str, ...]
    shared: int
    eligible: int
    num_sites: int
    num_samples: int

    @property
    def selected(self) -> int:
        """Number of selected variants."""
        return len(self.variant_ids)

    @functools.cached_property
    def digest(self) -> str:
        """:func:`selection_digest` of the variant IDs (computed once per state object)."""
        return selection_digest(self.variant_ids)

    def counts(self) -> dict[str, int]:
        """``shared``, ``eligible`` and ``selected`` (the result summary's ``variant_set``)."""
        return {"shared": self.shared, "eligible": self.eligible, "selected": self.selected}

    def to_json(self) -> dict[str, Any]:
        return {"variant_ids": list(self.variant_ids), "shared": self.shared, "eligible": self.eligible,
                "num_sites": self.num_sites, "num_samples": self.num_samples}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VariantSelection:
        return cls(tuple(str(v) for v in data["variant_ids"]), int(data["shared"]), int(data["eligible"]),
                   int(data["num_sites"]), int(data["num_samples"]))


@dataclass(frozen=True, eq=False)
class Standardization(JsonState):
    """How a genotype of a selected variant is standardized, and the totals bounding the sums.

    Attributes:
        mean: (variants,) the centre ``2p`` (global alternate allele frequency ``p``).
        inv_scale: (variants,) ``1/sqrt(2p(1-p))``, 0 for a monomorphic variant.
        trace: ``trace(G^T G)``, the sum of every standardized genotype squared (the
            total variance the eigenvalues are a share of).
        max_column_square: the largest ``||g_j||^2`` of one variant over all samples
            (with ``trace``, it bounds every entry of a site's ``G_s^T G_s V``).
    """

    mean: np.ndarray
    inv_scale: np.ndarray
    trace: float
    max_column_square: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", frozen_array(self.mean))
        object.__setattr__(self, "inv_scale", frozen_array(self.inv_scale))


    def to_json(self) -> dict[str, Any]:
        return {"mean": encode_array(self.mean), "inv_scale": encode_array(self.inv_scale), "trace": self.trace,
                "max_column_square": self.max_column_square}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Standardization:
        return cls(decode_array(data["mean"]), decode_array(data["inv_scale"]), float(data["trace"]),
                   float(data["max_column_square"]))


@dataclass(frozen=True, eq=False)
class Basis(JsonState):
    """The subspace iteration's current orthonormal basis ``V``.

    Attributes:
        iteration: products ``G^T G V`` summed so far (0 for the seeded basis).
        vectors: (variants, width) the basis.
    """

    iteration: int
    vectors: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", frozen_array(self.vectors))


    def to_json(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "vectors": encode_array(self.vectors)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Basis:
        return cls(int(data["iteration"]), decode_array(data["vectors"]))


@dataclass(frozen=True, eq=False)
class Loadings(JsonState):
    """The top-``k`` eigenpairs of ``G^T G`` after the last iteration (Rayleigh-Ritz).

    Attributes:
        eigenvalues: the ``k`` eigenvalues, largest first.
        vectors: (variants, k) the loadings, one unit column per component.
    """

    eigenvalues: tuple[float, ...]
    vectors: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "eigenvalues", tuple(float(v) for v in self.eigenvalues))
        object.__setattr__(self, "vectors", frozen_array(self.vectors))


    def eigenvalue_array(self) -> np.ndarray:
        """The eigenvalues as a float64 array."""
        return np.asarray(self.eigenvalues, np.float64)

    def to_json(self) -> dict[str, Any]:
        return {"eigenvalues": list(self.eigenvalues), "vectors": encode_array(self.vectors)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Loadings:
        return cls(tuple(float(v) for v in data["eigenvalues"]), decode_array(data["vectors"]))


@dataclass(frozen=True)
class ScoreMoments:
    """Global mean and standard deviation of each component's scores, in the job's scaling.

    What a GWAS needs to standardize PC covariates identically at every site.
    """

    scaling: str
    mean: tuple[float, ...]
    sd: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"scaling": self.scaling, "mean": list(self.mean), "sd": list(self.sd)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScoreMoments:
        return cls(str(data["scaling"]), tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["sd"]))


_PARTS = {
    PcaRound.KEYS: ("census",),
    PcaRound.COUNTS: ("census",),
    PcaRound.ITERATE: ("selection", "standardization", "basis"),
    PcaRound.SCORES: ("selection", "standardization", "loadings"),
    PcaRound.DONE: ("selection", "standardization", "loadings", "score_moments"),
}
"""The parts a state of each round kind holds (the others are ``None``)."""


@dataclass(frozen=True)
class PcaState:
    """The public state of a PCA job (see the module docstring).

    Attributes:
        round_kind: what the next round does.
        parameters: the job's parameters.
        num_participants: sites invited (the bit budgets are sized for all of them).
        census: the census sub-state (key and count rounds only).
        selection: the selected variants and the sites and samples behind them (from
            the iterations on).
        standardization: their global standardization (from the iterations on).
        basis: the current basis (iterations only).
        loadings: the eigenvalues and loadings (scores round and after).
        score_moments: the global moments of the scores (once done).

    Raises:
        InputError: a part that ``round_kind`` needs is missing, or one it does not
            hold is present (a corrupt or foreign state).
    """

    round_kind: PcaRound
    parameters: PcaParameters
    num_participants: int
    census: CensusState | None = None
    selection: VariantSelection | None = None
    standardization: Standardization | None = None
    basis: Basis | None = None
    loadings: Loadings | None = None
    score_moments: ScoreMoments | None = None

    def __post_init__(self) -> None:
        parts = {"census": self.census, "selection": self.selection, "standardization": self.standardization,
                 "basis": self.basis, "loadings": self.loadings, "score_moments": self.score_moments}
        held = {name for name, value in parts.items() if value is not None}
        needed = set(_PARTS[self.round_kind])
        if held != needed:
            raise InputError(
                f"pca: a state at round {self.round_kind.value!r} holds {sorted(held)}, expected {sorted(needed)}; "
                "the stored state is not a PCA state of this version"
            )

    @property
    def has_loadings(self) -> bool:
        """Whether the state holds the final loadings (round ``scores`` or ``done``): scores can be computed."""
        return self.loadings is not None

    @property
    def width(self) -> int:
        """Columns of the basis: ``k + oversampling``, at most the number of selected variants."""
        selected = self.selection.selected if self.selection is not None else 0
        return min(self.parameters.k + self.parameters.oversampling, selected)

    def to_json(self) -> dict[str, Any]:
        def part(value: Any) -> Any:
            return None if value is None else value.to_json()

        return {
            "round_kind": self.round_kind.value,
            "parameters": self.parameters.to_json(),
            "num_participants": self.num_participants,
            "census": part(self.census),
            "selection": part(self.selection),
            "standardization": part(self.standardization),
            "basis": part(self.basis),
            "loadings": part(self.loadings),
            "score_moments": part(self.score_moments),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PcaState:
        """The state that :meth:`to_json` wrote.

        Raises:
            InputError: an unknown round kind, or parts that do not match it.
        """
        try:
            round_kind = PcaRound(data["round_kind"])
        except ValueError:
            raise InputError(f"pca: unknown round kind {data['round_kind']!r} in a stored state; "
                             f"expected one of {[r.value for r in PcaRound]}") from None

        def part(name: str, read: Any) -> Any:
            value = data[name]
            return None if value is None else read(value)

        return cls(
            round_kind=round_kind,
            parameters=PcaParameters.from_json(data["parameters"]),
            num_participants=int(data["num_participants"]),
            census=part("census", CensusState.from_json),
            selection=part("selection", VariantSelection.from_json),
            standardization=part("standardization", Standardization.from_json),
            basis=part("basis", Basis.from_json),
            loadings=part("loadings", Loadings.from_json),
            score_moments=part("score_moments", ScoreMoments.from_json),
        )
