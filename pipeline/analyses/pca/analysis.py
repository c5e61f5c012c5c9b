"""The ``pca`` analysis: its layouts, its site steps and its coordinator steps.

The round kinds, the state and the precision of the secure sums are described in
:mod:`pipeline.analyses.pca`; this module wires them into the
:class:`~pipeline.analyses.Analysis` hooks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.analyses.census import CENSUS, COUNTS_ROUND, KEYS_ROUND, CensusState
from pipeline.analyses.pca.scores import local_scores, site_calls, write_scores
from pipeline.analyses.pca.selection import select_variants
from pipeline.analyses.pca.state import (
    Basis,
    Loadings,
    PcaParameters,
    PcaRound,
    PcaState,
    ScoreMoments,
    Standardization,
    VariantSelection,
)
from pipeline.analyses.protocol import (
    GENOTYPES,
    Analysis,
    Contribution,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
    dataset_sample_ids,
)
from pipeline.dataset import Dataset
from pipeline.encoding import MAX_SCALE_BITS, Count, Declaration, Real, plan_layout
from pipeline.errors import InputError
from pipeline.analyses.bounds import check_sample_bound
from pipeline.stats import pca as linalg

__all__ = ["PCA", "RELATIVE_PRECISION", "Pca", "min_scale_bits"]

log = logging.getLogger(__name__)

RELATIVE_PRECISION = 1e-9
"""Largest fixed-point resolution of a secure-sum field, relative to its bound (at least 1)."""
_EIGEN_CHECK_RTOL = 1e-6
_BOUND_MARGIN = 1.001
"""Slack on the Cauchy-Schwarz bounds, for float rounding in the sites' products."""
_LAYOUT_HINT = "lower max_variants or split the job"


def min_scale_bits(bound: float) -> int:
    """Fewest fractional bits whose resolution ``2^-bits`` is at most ``RELATIVE_PRECISION * max(bound, 1)``.

    May exceed :data:`~pipeline.encoding.MAX_SCALE_BITS`, in which case no layout fits.
    """
    resolution = RELATIVE_PRECISION * max(float(bound), 1.0)
    bits = max(0, math.ceil(-math.log2(resolution)))
    while bits > 0 and 2.0 ** -(bits - 1) <= resolution:
        bits -= 1
    while 2.0**-bits > resolution:
        bits += 1
    return bits


def _real(name: str, shape: tuple[int, ...], bound: float) -> Real:
    """A real field at :data:`RELATIVE_PRECISION` of its bound, with every bit up to 62 that fits."""
    return Real(name, shape, bound, min_scale_bits=min_scale_bits(bound), max_scale_bits=MAX_SCALE_BITS)


_CENSUS_ROUNDS = {PcaRound.KEYS: KEYS_ROUND, PcaRound.COUNTS: COUNTS_ROUND}
"""The census round each of the PCA's first two round kinds runs."""


def _census(state: PcaState) -> CensusState:
    """The census sub-state of a state at the keys or counts round."""
    if state.census is None:
        raise InputError(f"pca: a state at round {state.round_kind.value!r} has no census sub-state")
    return state.census


def _fitted(state: PcaState) -> tuple[VariantSelection, Standardization]:
    """The selection and standardization of a state past the counts round."""
    if state.selection is None or state.standardization is None:
        raise InputError(f"pca: a state at round {state.round_kind.value!r} has no variant selection yet")
    return state.selection, state.standardization


def _basis(state: PcaState) -> Basis:
    """The basis of a state at an iteration."""
    if state.basis is None:
        raise InputError(f"pca: a state at round {state.round_kind.value!r} has no basis")
    return state.basis


def _loadings(state: PcaState) -> Loadings:
    """The loadings of a state at the scores round or done."""
    if state.loadings is None:
        raise InputError(f"pca: a state at round {state.round_kind.value!r} has no loadings yet")
    return state.loadings


class Pca(Analysis[PcaState]):
    """Federated PCA (see :mod:`pipeline.analyses.pca`)."""

    name = "pca"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> PcaState:
        """Parses the spec; the census sub-state drives the first two rounds.

        Raises:
            ConfigurationError: a spec key is unknown or a value is wrong.
        """
        parameters = PcaParameters.parse(spec)
        census = CENSUS.init(
            {"min_allele_count": parameters.min_allele_count, "max_samples_per_site": parameters.max_samples_per_site},
            participants,
        )
        return PcaState(PcaRound.KEYS, parameters, len(participants), census=census)

    def state_from_json(self, data: Mapping[str, Any]) -> PcaState:
        return PcaState.from_json(data)

    # ------------------------------------------------------------------ layouts

    def layout(self, state: PcaState, round_index: int) -> RoundLayout:
        """keys/counts: the census' layouts; iterate: ``gram``; scores: sums, squares, n.

        Real fields are 64-bit fixed point bounded by Cauchy-Schwarz from the public
        global counts (see the package docstring).

        Raises:
            ConfigurationError: a field cannot keep :data:`RELATIVE_PRECISION` for the
                invited sites in a 64-bit sum.
            InputError: the job is done.
        """
        kind = state.round_kind
        if kind in _CENSUS_ROUNDS:
            return CENSUS.layout(_census(state), _CENSUS_ROUNDS[kind])
        selection, standardization = _fitted(state)
        trace = standardization.trace
        if kind is PcaRound.ITERATE:
            # |g_j^T G_s v| <= ||g_j|| * ||G||_F for an orthonormal V, both norms from public counts.
            gram_bound = math.sqrt(standardization.max_column_square) * math.sqrt(trace) * _BOUND_MARGIN + 1.0
            declarations: list[Declaration] = [_real("gram", (selection.selected, state.width), gram_bound)]
        elif kind is PcaRound.SCORES:
            k = state.parameters.k
            declarations = [
                _real("score_sum", (k,), math.sqrt(float(selection.num_samples) * trace) * _BOUND_MARGIN + 1.0),
                _real("score_sum_squares", (k,), trace * _BOUND_MARGIN + 1.0),
                Count("n_samples", (1,), float(state.parameters.max_samples_per_site)),
            ]
        else:
            raise InputError(f"pca: no round at round kind {kind.value!r} (the job is finished)")
        return plan_layout(declarations, state.num_participants, hint=f"pca: {_LAYOUT_HINT}")

    # ------------------------------------------------------------------ site side

    def contributions(self, state: PcaState, dataset: Dataset, site: SiteContext) -> tuple[Contribution, ...]:
        """Every sample of the site, over the genotypes.

        The census rounds count every sample; the iterations and the scores round use
        every sample's calls of the selected variants (a missing call is imputed with the
        global mean, so no sample drops out); ``n_samples`` is the dataset's count.
        """
        return (Contribution(dataset_sample_ids(dataset), (GENOTYPES,)),)

    def site_step(self, state: PcaState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """A site's contribution in the state's round kind (see the package docstring).

        In the counts round the site also flags the variants where its own minor allele
        count is below its minimum; the coordinator leaves them out of the selection.

        Raises:
            PolicyRefusal: (code ``policy``) more samples than the job's
                ``max_samples_per_site`` (the encoding's bound).
            InputError: the job is done.
        """
        kind = state.round_kind
        if kind in _CENSUS_ROUNDS:
            return CENSUS.site_step(_census(state), _CENSUS_ROUNDS[kind], dataset, site)
        limit = state.parameters.max_samples_per_site
        check_sample_bound(dataset.num_samples, limit, site=site.name,
                           public="the site has more samples than the job's max_samples_per_site allows")
        selection, standardization = _fitted(state)
        if kind is PcaRound.ITERATE:
            calls = site_calls(selection, dataset, site.cache)
            return {"gram": linalg.gram_product(calls, standardization.mean, standardization.inv_scale, _basis(state).vectors)}
        if kind is PcaRound.SCORES:
            calls = site_calls(selection, dataset, site.cache)
            raw = linalg.project(calls, standardization.mean, standardization.inv_scale, _loadings(state).vectors)
            return {
                "score_sum": raw.sum(axis=0),
                "score_sum_squares": (raw**2).sum(axis=0),
                "n_samples": np.array([dataset.num_samples], np.int64),
            }
        raise InputError(f"pca: no site step at round kind {kind.value!r}")

    def site_finish(self, state: PcaState, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Writes this site's scores to ``out_dir/pca_scores.parquet`` once the loadings are known.

        Called by the site agent after a job it took part in has ended, with the last
        state it saw; returns ``None`` (writes nothing) when that state has no loadings
        (the job failed before the scores round).
        """
        if not state.has_loadings:
            return None
        table = local_scores(state, dataset, site.cache)
        path = write_scores(table, out_dir)
        log.info("site %s: wrote %d samples' PCA scores to %s", site.name, table.num_rows, path)
        return {"pca_scores": str(path), "num_samples": table.num_rows, "components": table.num_columns - 1}

    # ------------------------------------------------------------------ coordinator side

    def coordinator_step(
        self, state: PcaState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[PcaState]:
        """Advances the round kind; the scores round ends the job with loadings and eigenvalues.

        Raises:
            InputError: no usable variants, a site dropped out after the counts round, or
                the sites' score sums contradict the eigenvalues.
        """
        kind = state.round_kind
        if kind is PcaRound.KEYS:
            census, _, _ = CENSUS.coordinator_step(_census(state), KEYS_ROUND, total, num_sites)
            return dataclasses.replace(state, round_kind=PcaRound.COUNTS, census=census), False, None
        if kind is PcaRound.COUNTS:
            return self._select(state, _census(state).union, total, num_sites), False, None
        selection, _ = _fitted(state)
        if num_sites != selection.num_sites:
            raise InputError(
                f"pca: {num_sites} sites contributed to the {kind.value} round, {selection.num_sites} to the counts round; "
                "a PCA over a changing set of samples is not defined — resubmit the job"
            )
        if kind is PcaRound.ITERATE:
            return self._iterate(state, np.asarray(total["gram"], np.float64)), False, None
        if kind is PcaRound.SCORES:
            return self._finish(state, total)
        raise InputError(f"pca: the job is already done (round {kind.value!r})")

    def _select(self, state: PcaState, union: tuple[str, ...], total: Mapping[str, np.ndarray], num_sites: int) -> PcaState:
        """The first iteration's state: the selected variants and the seeded basis."""
        selection, standardization = select_variants(state.parameters, union, total, num_sites)
        width = min(state.parameters.k + state.parameters.oversampling, selection.selected)
        basis = Basis(0, linalg.initial_basis(selection.selected, width, state.parameters.seed))
        return PcaState(PcaRound.ITERATE, state.parameters, state.num_participants, selection=selection,
                        standardization=standardization, basis=basis)

    def _iterate(self, state: PcaState, product: np.ndarray) -> PcaState:
        """Orthonormalizes the summed product; after the last iteration, Rayleigh-Ritz gives the loadings."""
        basis = _basis(state)
        iteration = basis.iteration + 1
        if iteration < state.parameters.iterations:
            return dataclasses.replace(state, basis=Basis(iteration, linalg.orthonormalize(product)))
        eigenvalues, loadings = linalg.rayleigh_ritz(basis.vectors, product, state.parameters.k)
        return dataclasses.replace(state, round_kind=PcaRound.SCORES, basis=None, loadings=Loadings(tuple(eigenvalues.tolist()), loadings))

    def _finish(self, state: PcaState, total: Mapping[str, np.ndarray]) -> StepResult[PcaState]:
        """Checks the score sums against the eigenvalues; publishes the tables and the score moments."""
        selection, standardization = _fitted(state)
        loadings = _loadings(state)
        p = state.parameters
        eigenvalues = loadings.eigenvalue_array()
        trace = standardization.trace
        n = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        sums = np.asarray(total["score_sum"], np.float64)
        squares = np.asarray(total["score_sum_squares"], np.float64)
        if n != selection.num_samples or not np.allclose(squares, eigenvalues, rtol=_EIGEN_CHECK_RTOL, atol=1e-9 * trace):
            raise InputError(
                f"pca: the sites' scores ({n} samples, sums of squares {squares.tolist()}) do not match the counts round "
                f"({selection.num_samples} samples) and the eigenvalues {eigenvalues.tolist()}; a site's data changed during the job"
            )
        scale = np.sqrt(np.where(eigenvalues > 0, eigenvalues, 1.0)) if p.score_scaling == "eigenvector" else np.ones_like(eigenvalues)
        mean = sums / n / scale
        variance = np.maximum(squares / n / scale**2 - mean**2, 0.0)
        moments = ScoreMoments(p.score_scaling, tuple(mean.tolist()), tuple(np.sqrt(variance).tolist()))
        final = dataclasses.replace(state, round_kind=PcaRound.DONE, score_moments=moments)
        summary = {
            "analysis": self.name,
            "num_sites": selection.num_sites,
            "num_samples": n,
            "parameters": p.to_json(),
            "variant_set": selection.counts(),
            "iterations": p.iterations,
            "width": state.width,
            "eigenvalues": eigenvalues.tolist(),
            "variance_explained": (eigenvalues / trace).tolist() if trace > 0 else [0.0] * p.k,
            "total_variance": trace,
            "scores": moments.to_json(),
            "disclosure": (
                "round 0 revealed which variant IDs each site holds above its minimum minor allele count; round 1 the summed "
                "genotype counts and per variant the number of sites below their own minimum (such variants are not selected); "
                "later rounds only sums over the sites of G_s^T G_s V for a public basis V and of the "
                "per-component score sums and squares; sample scores stay at the sites"
            ),
            "schemas": {name: schemas.load(name).version for name in ("pca_loadings", "pca_eigenvalues", "pca_scores")},
        }
        return final, True, Result(summary=summary, tables=_result_tables(selection, loadings, trace))


def _result_tables(selection: VariantSelection, loadings: Loadings, trace: float) -> dict[str, pa.Table]:
    """The ``pca_loadings`` and ``pca_eigenvalues`` tables."""
    eigenvalues = loadings.eigenvalue_array()
    k = eigenvalues.size
    names = [f"PC{c + 1}" for c in range(k)]
    loadings_table = schemas.conform(
        pa.table({"variant_id": pa.array(list(selection.variant_ids), pa.string()),
                  **{name: pa.array(loadings.vectors[:, c], pa.float64()) for c, name in enumerate(names)}}),
        "pca_loadings", source="pca loadings",
    )
    eigen_table = schemas.conform(
        pa.table({
            "component": pa.array(names, pa.string()),
            "eigenvalue": pa.array(eigenvalues, pa.float64()),
            "grm_eigenvalue": pa.array(eigenvalues / selection.selected, pa.float64()),
            "variance_explained": pa.array(eigenvalues / trace if trace > 0 else np.zeros(k), pa.float64()),
        }),
        "pca_eigenvalues", source="pca eigenvalues",
    )
    return {"pca_loadings": loadings_table, "pca_eigenvalues": eigen_table}


PCA = Pca()
"""The ``pca`` analysis."""
