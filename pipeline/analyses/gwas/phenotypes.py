"""Several phenotypes in one GWAS job (``phenotypes: [a, b, ...]``), as plink2 --glm with several --pheno-name columns.

The census and the PCA run once; the regression phase then fits every phenotype with the
same model, covariates and tested variants. A one-phenotype job is the plain
:class:`~pipeline.analyses.gwas.regression.Regression`, untouched (:class:`Regressions`
hands it every call); a job with several holds a :class:`PhenotypesState`: one shared
:class:`~pipeline.analyses.gwas.state.RegressionState` (``base``: the variants, rs IDs,
ancestry-cluster HWE screen and PCA basis, which do not depend on the phenotype) and per
phenotype a :class:`PhenotypeFit` (its moments and, logistic, its Newton and Firth fit).
Each phenotype's fit is the one-phenotype job's state for it (:meth:`PhenotypesState.single`),
so every site and coordinator step is the one-phenotype step, run side by side:

* the rs ID and HWE rounds run once, on ``base``;
* one moments round holds every phenotype's moments (field names ``<i>.n_samples``..., ``i``
  the phenotype's position in the spec); each phenotype's complete cases (phenotype and
  every covariate present) are its own;
* linear: one statistics round. Phenotypes whose complete-case sets are the same at every
  site share one *pass*: one product of the genotype rows with ``[covariates, y_1..y_P]``
  (:func:`~pipeline.analyses.gwas.linear.split_phenotypes`), and the pass sends its
  ``X'X``, ``n`` and small-cell flags once (under its first phenotype's prefix) and each
  phenotype's ``X'y`` and ``y'y``: exactly what separate jobs would send, without the
  repeats. A phenotype whose missing values differ gets its own pass over the same
  genotype blocks (read once per job: :mod:`pipeline.analyses.site_cache`);
* logistic: every phenotype's Newton (then Firth) rounds run side by side in the same
  secure sums until the last one ends; phenotypes with the same complete samples read
  the same cached genotype rows (:func:`~pipeline.analyses.gwas.site_data.complete_calls`).

What the coordinator learns beyond separate jobs: for a linear job, in the moments round,
per pair of phenotypes the number of sites whose two complete-case sets are identical
(``same_samples``, a secure sum of 0/1 flags); a pair shares a pass where every summed
site says so. Separate jobs would also reveal each phenotype's pooled complete-case count
(as here); the flags add only whether a site's sets coincide, never a sample or a count
of one site. The site's ledger sees one release per phenotype (its complete cases over
the phenotype, the covariates and the genotypes: :meth:`pipeline.analyses.gwas.Gwas.contributions`),
so two phenotypes whose sets differ by fewer than ``min_set_difference`` samples are
refused as two jobs would be.

chrX: a job whose tested variants include chrX variants outside the PARs fits each
phenotype in two *parts* (:mod:`.chrx`), the chrX one with ``sex`` as a covariate over the
samples of known sex: a slot per phenotype and part, run side by side exactly as
phenotypes are (slots of different parts never share a pass: they fit different
variants), and each phenotype's parts are published as one result
(:func:`stitched_result`). A one-phenotype job with chrX holds a :class:`PhenotypesState`
too, and its result is the one-phenotype result.

Results: one-phenotype jobs keep the ``gwas`` and ``gwas_status`` tables and
``gwas.tsv.gz``...; with several, the tables are ``gwas.<phenotype>`` and
``gwas_status.<phenotype>`` (the same schemas) and every file carries the phenotype
(``gwas.<phenotype>.tsv.gz`` with its index and metadata, ``manhattan.<phenotype>.png``...);
the summary's ``by_phenotype`` holds each phenotype's one-phenotype summary (λGC, counts,
top hits), ``regression_passes`` the phenotypes that shared a pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses.gwas.chrx import (
    ALL,
    CHRX,
    PARTS,
    check_site_assembly,
    part_mask,
    part_state,
    parts,
    x_summary,
)
from pipeline.analyses.gwas.linear import (
    PASS_FIELDS,
    PHENOTYPE_FIELDS,
    linear_fits,
    linear_layout,
    linear_site_statistics,
)
from pipeline.analyses.gwas.logistic import logistic_fits, logistic_layout
from pipeline.analyses.gwas.outputs import (
    VariantFits,
    regression_result,
    stitch_fits,
    write_outputs,
)
from pipeline.analyses.gwas.regression import (
    REGRESSION,
    moments_layout,
    moments_round,
    published_moments,
)
from pipeline.analyses.gwas.site_data import design, site_data
from pipeline.analyses.gwas.spec import plan_regression_layout
from pipeline.analyses.gwas.state import (
    FirthState,
    Moments,
    NewtonState,
    RegressionState,
)
from pipeline.analyses.protocol import (
    Analysis,
    JsonState,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
)
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Layout
from pipeline.errors import ProtocolError
from pipeline.privacy import Spend

__all__ = ["REGRESSIONS", "SAME_SAMPLES", "PhenotypeFit", "PhenotypesState", "Regressions", "job_result", "multi_result",
           "shared_passes", "stitched_result"]

SAME_SAMPLES = "same_samples"
"""The moments round's field of 0/1 flags per pair of phenotypes (linear): the site's complete-case sets coincide."""
SHARED_FIELDS = PASS_FIELDS
"""The linear round's fields a pass sends once for all its phenotypes (those its layout has)."""


@dataclass(frozen=True, eq=False)
class PhenotypeFit(JsonState):
    """One phenotype's part of the regression: its moments, and for the logistic model its fit and whether it ended."""

    moments: Moments | None = None
    newton: NewtonState | None = None
    firth: FirthState | None = None
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"moments": None if self.moments is None else self.moments.to_json(),
                "newton": None if self.newton is None else self.newton.to_json(),
                "firth": None if self.firth is None else self.firth.to_json(), "done": self.done}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhenotypeFit:
        def part(name: str, parse: Any) -> Any:
            return None if data[name] is None else parse(data[name])

        return cls(part("moments", Moments.from_json), part("newton", NewtonState.from_json),
                   part("firth", FirthState.from_json), bool(data["done"]))


@dataclass(frozen=True, eq=False)
class PhenotypesState(JsonState):
    """The regression phase of a job with several phenotypes, or parts (see the module docstring).

    A *slot* is one phenotype fitted over one part of the variants (:mod:`.chrx`): slot
    ``i`` is phenotype ``i // len(parts)`` over part ``parts[i % len(parts)]``.

    Attributes:
        base: what the slots share (parameters with every phenotype, variants, rs IDs, HWE screen, PCA).
        fits: one per slot.
        passes: (linear, from the moments round on) the slots, grouped by shared pass.
        parts: the parts every phenotype is fitted in (:data:`.chrx.PARTS`): ``(all,)``, or the autosomal and chrX ones.
    """

    base: RegressionState
    fits: tuple[PhenotypeFit, ...]
    passes: tuple[tuple[int, ...], ...] = ()
    parts: tuple[str, ...] = (ALL,)

    @property
    def phenotypes(self) -> tuple[str, ...]:
        return self.base.parameters.all_phenotypes

    def part(self, index: int) -> str:
        """Slot ``index``'s part."""
        return self.parts[index % len(self.parts)]

    def slot_name(self, index: int) -> str:
        """Slot ``index`` as the summary names it: its phenotype, with its part where the job has several."""
        name = self.phenotypes[index // len(self.parts)]
        return name if len(self.parts) == 1 else f"{name} ({self.part(index)})"

    def single(self, index: int) -> RegressionState:
        """The one-phenotype, one-part job's state of slot ``index``."""
        fit = self.fits[index]
        base = dataclasses.replace(self.base, parameters=self.base.parameters.single(self.phenotypes[index // len(self.parts)]))
        return dataclasses.replace(part_state(base, self.part(index)), moments=fit.moments, newton=fit.newton, firth=fit.firth)

    def to_json(self) -> dict[str, Any]:
        data = {"base": self.base.to_json(), "fits": [fit.to_json() for fit in self.fits],
                "passes": [list(group) for group in self.passes]}
        return data if self.parts == (ALL,) else {**data, "parts": list(self.parts)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhenotypesState:
        parts = tuple(str(part) for part in data.get("parts", [ALL]))
        if not parts or any(part not in PARTS for part in parts):
            raise ProtocolError(f"gwas: a stored state names regression parts {list(parts)}; expected some of {list(PARTS)}")
        return cls(RegressionState.from_json(data["base"]), tuple(PhenotypeFit.from_json(f) for f in data["fits"]),
                   tuple(tuple(int(i) for i in group) for group in data["passes"]), parts)


def _prefixed(layout: Layout, prefix: str, names: Sequence[str] | None = None) -> tuple[Any, ...]:
    """The layout's fields (those named, or all) renamed ``<prefix><name>``."""
    return tuple(dataclasses.replace(f, name=prefix + f.name) for f in layout.fields if names is None or f.name in names)


def _phenotype_step(state: Any, i: int, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
    """Phenotype ``i``'s one-phenotype site step, its fields prefixed ``<i>.`` (the inverse of :func:`_part`)."""
    return {f"{i}.{name}": value for name, value in REGRESSION.site_step(state.single(i), round_index, dataset, site).items()}


def _part(total: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The fields of ``total`` under ``prefix``, without it."""
    return {name[len(prefix):]: value for name, value in total.items() if name.startswith(prefix)}


def _pairs(count: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(count) for j in range(i + 1, count)]


def shared_passes(same: np.ndarray, num_sites: int, count: int) -> tuple[tuple[int, ...], ...]:
    """Phenotypes grouped by pass: a pair shares one where every summed site said its complete-case sets coincide.

    Args:
        same: (pairs,) the summed 0/1 flags, pairs ``(i, j)``, ``i < j``, in row order.
        num_sites: the sites summed.
        count: the phenotypes.
    """
    together = {pair for pair, sites in zip(_pairs(count), np.asarray(same).reshape(-1).tolist()) if sites == num_sites}
    passes: list[tuple[int, ...]] = []
    placed: set[int] = set()
    for i in range(count):
        if i in placed:
            continue
        group = (i, *(j for j in range(i + 1, count) if j not in placed and (i, j) in together))
        placed.update(group)
        passes.append(group)
    return tuple(passes)


def stitched_result(state: PhenotypesState, phenotype: int, fits: Sequence[VariantFits], num_sites: int) -> Result:
    """One phenotype's one-phenotype result over every tested variant, from its parts' fits (in ``state.parts`` order).

    The summary is the first part's (the autosomal one where the job has one: its covariates and complete samples),
    with the chrX part's under ``chrx`` (:func:`.chrx.x_summary`).
    """
    slots = [phenotype * len(state.parts) + j for j in range(len(state.parts))]
    first = state.single(slots[0])
    ids = state.base.variant_ids
    positions = [np.flatnonzero(part_mask(ids, part, state.base.parameters.assembly)) for part in state.parts]
    whole = dataclasses.replace(first, variant_ids=ids, rsids=state.base.rsids, hwe=state.base.hwe,
                                census_complete=state.base.census_complete)
    layout = linear_layout(first) if first.parameters.model == "linear" else logistic_layout(first)
    result = regression_result(whole, stitch_fits(list(zip(positions, fits)), len(ids)), num_sites, layout=layout)
    if CHRX in state.parts:
        j = state.parts.index(CHRX)
        result = Result({**result.summary, "chrx": x_summary(state.single(slots[j]), len(positions[j]))}, result.tables)
    return result


def job_result(state: PhenotypesState, fits: Sequence[VariantFits], num_sites: int) -> Result:
    """The job's result from every slot's fits: one phenotype's result, or each one's under :func:`multi_result`."""
    size = len(state.parts)
    results = [stitched_result(state, j, fits[j * size:(j + 1) * size], num_sites) for j in range(len(state.phenotypes))]
    return results[0] if not state.base.parameters.phenotypes else multi_result(state, results)


def multi_result(state: PhenotypesState, results: Sequence[Result]) -> Result:
    """The job's result: each phenotype's tables under ``<table>.<phenotype>``, its summary under ``by_phenotype``."""
    first = results[0].summary
    names = state.phenotypes
    summary: dict[str, Any] = {key: first[key] for key in ("analysis", "model", "covariates", "pcs", "num_sites", "test")}
    summary.update(
        phenotypes=list(names),
        parameters={key: value for key, value in state.base.parameters.to_json().items() if key != "pca"},
        regression_passes=[[state.slot_name(i) for i in group] for group in state.passes],
        by_phenotype={name: dict(result.summary) for name, result in zip(names, results)},
        disclosure=first["disclosure"] + (
            "; with several phenotypes each is fitted as its own job would be, and a linear job's moments round also "
            "revealed per pair of phenotypes how many sites' complete-case sets coincide" if state.base.parameters.model
            == "linear" else "; with several phenotypes each is fitted as its own job would be"),
        schemas=first["schemas"],
    )
    tables = {f"{table}.{name}": result.tables[table] for name, result in zip(names, results)
              for table in ("gwas", "gwas_status")}
    return Result(summary=summary, tables=tables)


class Regressions(Analysis[Any]):
    """The GWAS's regression phase for one phenotype (:data:`REGRESSION`) or several (see the module docstring)."""

    name = "gwas_regression"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> Any:
        """A one-phenotype, one-part job's state, else the slots' (see :class:`PhenotypesState`).

        Raises:
            ConfigurationError: chrX variants in a differentially private job (:func:`.chrx.parts`).
        """
        state = REGRESSION.init(spec, participants)
        p = state.parameters
        fitted = parts(p, state.variant_ids)
        if not p.phenotypes and fitted == (ALL,):
            return state
        return PhenotypesState(state, (PhenotypeFit(),) * (len(p.all_phenotypes) * len(fitted)), parts=fitted)

    def state_from_json(self, data: Mapping[str, Any]) -> Any:
        return PhenotypesState.from_json(data) if "fits" in data else REGRESSION.state_from_json(data)

    def layout(self, state: Any, round_index: int) -> RoundLayout:
        """The shared rounds' layouts, then every phenotype's (or pass's) fields side by side, prefixed ``<i>.``."""
        if isinstance(state, RegressionState):
            return REGRESSION.layout(state, round_index)
        p = state.base.parameters
        moments = moments_round(p)
        if round_index < moments:
            return REGRESSION.layout(state.base, round_index)
        count = len(state.fits)
        fields: list[Any] = []
        if round_index == moments:
            for i in range(count):
                fields += _prefixed(moments_layout(state.single(i)), f"{i}.")
            if p.model == "linear":
                fields += plan_regression_layout([Count(SAME_SAMPLES, (len(_pairs(count)),), 1)], state.base.num_participants,
                                                 hint="fewer phenotypes").fields
        elif p.model == "linear":
            for group in state.passes:
                fields += _prefixed(linear_layout(state.single(group[0])), f"{group[0]}.")
                for i in group[1:]:
                    fields += _prefixed(linear_layout(state.single(i)), f"{i}.", PHENOTYPE_FIELDS)
        else:
            for i, fit in enumerate(state.fits):
                if not fit.done:
                    layout = REGRESSION.layout(state.single(i), round_index)
                    assert isinstance(layout, Layout)  # the logistic rounds are secure sums
                    fields += _prefixed(layout, f"{i}.")
        return Layout(tuple(fields))

    def site_step(self, state: Any, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """Each phenotype's one-phenotype step, prefixed; a linear pass's statistics in one product (module docstring).

        Raises:
            ProtocolError: a pass joins phenotypes whose complete samples differ at this site
                (no honest coordinator groups them).
        """
        if isinstance(state, RegressionState):
            return REGRESSION.site_step(state, round_index, dataset, site)
        p = state.base.parameters
        moments = moments_round(p)
        if round_index < moments:
            return REGRESSION.site_step(state.base, round_index, dataset, site)
        count = len(state.fits)
        out: dict[str, np.ndarray] = {}
        if round_index == moments:
            if state.parts != (ALL,):
                check_site_assembly(p, dataset)
            for i in range(count):
                out.update(_phenotype_step(state, i, round_index, dataset, site))
            if p.model == "linear":
                keeps = [site_data(state.single(i), dataset, site.cache, site=site.name).keep for i in range(count)]
                out[SAME_SAMPLES] = np.array([int(state.part(i) == state.part(j) and np.array_equal(keeps[i], keeps[j]))
                                              for i, j in _pairs(count)], np.int64)
            return out
        if p.model == "linear":
            for group in state.passes:
                out.update(_pass_statistics(state, group, dataset, site))
            return out
        for i, fit in enumerate(state.fits):
            if not fit.done:
                out.update(_phenotype_step(state, i, round_index, dataset, site))
        return out

    def coordinator_step(self, state: Any, round_index: int, total: Mapping[str, np.ndarray],
                         num_sites: int) -> StepResult[Any]:
        """The shared rounds on ``base``; each phenotype's moments and fit; the job's result once every fit ended."""
        if isinstance(state, RegressionState):
            return REGRESSION.coordinator_step(state, round_index, total, num_sites)
        p = state.base.parameters
        moments = moments_round(p)
        if round_index < moments:
            base, _, _ = REGRESSION.coordinator_step(state.base, round_index, total, num_sites)
            return dataclasses.replace(state, base=base), False, None
        count = len(state.fits)
        if round_index == moments:
            fits = []
            for i in range(count):
                fitted = published_moments(state.single(i), _part(total, f"{i}."))
                fits.append(PhenotypeFit(fitted.moments, fitted.newton))
            passes = (shared_passes(total[SAME_SAMPLES], num_sites, count) if p.model == "linear"
                      else tuple((i,) for i in range(count)))
            return dataclasses.replace(state, fits=tuple(fits), passes=passes), False, None
        if p.model == "linear":
            slot_fits: list[VariantFits | None] = [None] * count
            for group in state.passes:
                shared = {name: total[f"{group[0]}.{name}"] for name in SHARED_FIELDS if f"{group[0]}.{name}" in total}
                for i in group:
                    slot_fits[i] = linear_fits(state.single(i), {**shared, **_part(total, f"{i}.")}, num_sites)
            return state, True, job_result(state, [f for f in slot_fits if f is not None], num_sites)
        slots = list(state.fits)
        for i, fit in enumerate(state.fits):
            if not fit.done:
                single, done, _ = REGRESSION.coordinator_step(state.single(i), round_index, _part(total, f"{i}."), num_sites)
                slots[i] = dataclasses.replace(fit, newton=single.newton, firth=single.firth, done=done)
        state = dataclasses.replace(state, fits=tuple(slots))
        if not all(fit.done for fit in slots):
            return state, False, None
        return state, True, job_result(state, [logistic_fits(state.single(i), num_sites) for i in range(count)], num_sites)

    def privacy_spend(self, state: Any, round_index: int) -> Spend | None:
        """A one-phenotype job's noise (a job with several phenotypes has no privacy block)."""
        return REGRESSION.privacy_spend(state, round_index) if isinstance(state, RegressionState) else None

    def site_finish(self, state: Any, dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Keeps this site's PC scores at the site, as a one-phenotype job does."""
        return REGRESSION.site_finish(state if isinstance(state, RegressionState) else state.base, dataset, site, out_dir)

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """One phenotype's files as :func:`~.outputs.write_outputs`; with several, each phenotype's named after it."""
        by_phenotype = result.summary.get("by_phenotype")
        if by_phenotype is None:
            return write_outputs(result, out_dir)
        files: list[str] = []
        for name, summary in by_phenotype.items():
            single = Result({**summary, "genome_assembly": result.summary.get("genome_assembly")},
                            {"gwas": result.tables[f"gwas.{name}"]})
            files += write_outputs(single, out_dir, phenotype=name)
        return files


def _pass_statistics(state: PhenotypesState, group: Sequence[int], dataset: Dataset,
                     site: SiteContext) -> dict[str, np.ndarray]:
    """One linear pass: its phenotypes' statistics from one product with the genotype rows, prefixed as the layout."""
    singles = [state.single(i) for i in group]
    data = [site_data(single, dataset, site.cache, site=site.name) for single in singles]
    if any(state.part(i) != state.part(group[0]) for i in group):
        raise ProtocolError(f"gwas: the coordinator put {[state.slot_name(i) for i in group]} in one pass, but they fit "
                            "different variants")
    if any(not np.array_equal(d.keep, data[0].keep) for d in data[1:]):
        raise ProtocolError(f"gwas: the coordinator put phenotypes {[state.slot_name(i) for i in group]} in one pass, but "
                            "their complete samples differ at this site")
    covariates, first = design(data[0], singles[0])
    if len(group) == 1:
        stats = linear_site_statistics(singles[0], dataset, site, data[0], covariates, first)
        return {f"{group[0]}.{name}": value for name, value in stats.items()}
    phenotypes = np.column_stack([first, *(design(d, s)[1] for d, s in zip(data[1:], singles[1:]))])
    stats = linear_site_statistics(singles[0], dataset, site, data[0], covariates, phenotypes)
    out = {f"{group[0]}.{name}": stats[name] for name in SHARED_FIELDS if name in stats}
    for j, i in enumerate(group):
        out.update({f"{i}.{name}": stats[name][:, j] for name in PHENOTYPE_FIELDS if name in stats})
    return out


REGRESSIONS = Regressions()
