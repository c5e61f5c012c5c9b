"""``gwas``: exact federated GWAS (linear or logistic), equal to the pooled fit.

A GWAS job is three stages run as one job (:mod:`pipeline.analyses.stages`):

1. **census** (:mod:`pipeline.analyses.census`): variant-key union, summed genotype
   counts and the QC filter (call rate, HWE, MAF, minimum allele count); only variants
   that pass are tested.
2. **pca** (only with ``pcs: K``, :mod:`pipeline.analyses.pca`): the public basis.
   Every site then computes its own samples' PC scores locally; scores never leave it.
3. **regression** (:class:`Regression`, this module):

   * round 0, *moments*: per site the sample count and the sums and sums of squares of
     every covariate (PCs included) and of the phenotype over the complete samples. The
     coordinator publishes their means and SDs; every site standardizes with them, so
     each value of the fixed-point encoding is bounded by ``max_abs_z`` (the fit of the
     genotype is invariant to this reparametrization: the intercept absorbs the shift).
   * linear, round 1: per variant the packed ``X'X``, ``X'y``, ``y'y`` and ``n`` over the
     samples with a called genotype (:func:`pipeline.stats.glm.linear_statistics`); the
     coordinator solves every variant's normal equations in float64: the pooled OLS.
   * logistic, rounds 1..: federated Newton-Raphson over all variants at once. Each round
     every site returns, for the variants still iterating, the score and the packed Fisher
     information at the public coefficients; the coordinator updates every coefficient
     vector in one batched solve. Wald tests at convergence; separation (an allele absent
     from the cases or the controls, or diverging coefficients) and non-convergence are
     reported per variant (``SEPARATION``, ``UNFINISHED``), as plink2 does.

All sums are in Z_2^64; each float field gets the most fractional bits its bound allows
for the job's number of sites (at least 20 bits up to 100 sites with the defaults).

Disclosure: with the first per-variant round each site also contributes, per variant, 1
if its own minor allele count (called samples) is non-zero and below its policy's
``min_allele_count``, else 0. The coordinator only learns the secure sum, and
publishes a variant only where it is 0. Samples with a missing phenotype or covariate
are dropped at the site; missing genotypes are dropped per variant.

Spec (see ``workflows/gwas.yaml``)::

    analysis: gwas
    model: linear                 # or logistic (phenotype coded 0/1)
    phenotype: quant_trait
    covariates: [age, sex]
    pcs: 4                        # 0 = no PCA stage
    pca: {}                       # passed to the PCA stage unchanged
    min_allele_count: 5           # census QC (see census): publish threshold
    min_call_rate: 0.95
    hwe_p: 1.0e-6
    maf: 0.01
    max_samples_per_site: 1000000
    max_abs_value: 10000          # bound of a raw covariate or phenotype value (moments round)
    max_abs_z: 100                # bound of a standardized covariate or phenotype value
    max_iterations: 25            # logistic Newton rounds (and Firth iterations)
    tolerance: 1.0e-8             # logistic: largest coefficient change at convergence
    firth: true                   # Firth-penalized refit of separated / unfinished variants
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import schemas
from pipeline.analyses import Result, SiteContext
from pipeline.analyses.census import CENSUS
from pipeline.analyses.pca import PCA, local_scores, pca_state_done
from pipeline.analyses.stages import Stage, Staged
from pipeline.dataset import Dataset, locate
from pipeline.errors import ConfigurationError, InputError, PolicyRefusal
from pipeline.models.server import decode_array, encode_array
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring
from pipeline.stats import glm

log = logging.getLogger(__name__)

__all__ = [
    "GWAS",
    "REGRESSION",
    "Regression",
    "parse_gwas_spec",
    "gwas_stages",
    "gwas_table",
    "write_outputs",
    "causal_hits",
    "demo_spec",
    "run_federated_gwas",
]

MOMENTS_ROUND = 0
MAX_SCALE_BITS = 40
MIN_SCALE_BITS = 20
MAX_COEFFICIENT = 30.0
"""A logistic coefficient beyond this (log-odds per unit) means the fit diverges: separation."""

_CENSUS_KEYS = ("min_allele_count", "min_call_rate", "hwe_p", "maf", "max_samples_per_site")
_DEFAULTS: dict[str, Any] = {
    "model": "linear", "covariates": [], "pcs": 0, "pca": {}, "min_allele_count": 5, "min_call_rate": 0.95,
    "hwe_p": 1e-6, "maf": 0.0, "max_samples_per_site": 1_000_000, "max_abs_value": 1e4, "max_abs_z": 100.0, "max_iterations": 25,
    "tolerance": 1e-8, "firth": True,
}


def _number(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        raise ConfigurationError(f"gwas: {name} must be {'an integer' if integer else 'a number'} in [{low}, {high}], got {value!r}")
    return int(value) if integer else float(value)


def parse_gwas_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a GWAS spec and fills its defaults; returns the JSON parameters.

    Raises:
        ConfigurationError: naming the key, what was expected and what was given.
    """
    unknown = sorted(set(spec) - {"phenotype", *_DEFAULTS})
    if unknown:
        raise ConfigurationError(f"gwas: unknown spec key(s) {unknown}; expected some of {sorted({'phenotype', *_DEFAULTS})}")
    p = {**_DEFAULTS, **dict(spec)}
    if p["model"] not in ("linear", "logistic"):
        raise ConfigurationError(f"gwas: model must be 'linear' or 'logistic', got {p['model']!r}")
    if not isinstance(p.get("phenotype"), str) or not p["phenotype"]:
        raise ConfigurationError("gwas: the spec needs 'phenotype: COLUMN' (a column of the sites' phenotype tables, e.g. quant_trait)")
    covariates = p["covariates"]
    if not isinstance(covariates, list) or not all(isinstance(c, str) and c for c in covariates) or len(set(covariates)) != len(covariates):
        raise ConfigurationError(f"gwas: covariates must be a list of distinct column names, got {covariates!r}")
    if p["phenotype"] in covariates:
        raise ConfigurationError(f"gwas: the phenotype {p['phenotype']!r} is also listed as a covariate")
    p["pcs"] = _number(p["pcs"], "pcs", 0, 50, integer=True)
    if not isinstance(p["pca"], Mapping):
        raise ConfigurationError(f"gwas: pca must be a mapping of PCA options, got {p['pca']!r}")
    p["max_abs_z"] = _number(p["max_abs_z"], "max_abs_z", 2.0, 1e4)
    p["max_abs_value"] = _number(p["max_abs_value"], "max_abs_value", 1.0, 1e6)
    p["max_samples_per_site"] = _number(p["max_samples_per_site"], "max_samples_per_site", 1, 2**31 - 1, integer=True)
    p["max_iterations"] = _number(p["max_iterations"], "max_iterations", 1, 1000, integer=True)
    p["tolerance"] = _number(p["tolerance"], "tolerance", 1e-14, 1e-2)
    if not isinstance(p["firth"], bool):
        raise ConfigurationError(f"gwas: firth must be true or false, got {p['firth']!r}")
    p["pca"] = dict(p["pca"])
    p["covariates"] = list(covariates)
    return p


# --------------------------------------------------------------------------- encoding


def _fit_scale_bits(clip: float, num_sites: int) -> int:
    room = Ring.R64.max_signed / (num_sites * (clip + 1.0))
    return min(MAX_SCALE_BITS, int(math.floor(math.log2(room)))) if room >= 1 else -1


def _float_field(name: str, shape: tuple[int, ...], clip: float, num_sites: int, *, min_bits: int = MIN_SCALE_BITS) -> Field:
    """A fixed-point field with the most fractional bits ``num_sites`` sums up to ``clip`` allow."""
    bits = _fit_scale_bits(clip, num_sites)
    if bits < min_bits:
        raise ConfigurationError(
            f"gwas: {num_sites} sites with max_samples_per_site and max_abs_z this large leave {bits} fractional bits "
            f"for {name!r} in a 64-bit sum (at least {min_bits} needed); lower max_samples_per_site or max_abs_z"
        )
    return Field(name, shape, FixedPoint(Ring.R64, bits, float(clip)))


def _int_field(name: str, shape: tuple[int, ...], clip: int) -> Field:
    return Field(name, shape, FixedPoint(Ring.R64, 0, float(clip)))


# --------------------------------------------------------------------------- site data


class _SiteData:
    """A site's complete samples: raw covariates (PC scores appended) and the phenotype."""

    def __init__(self, raw: np.ndarray, phenotype: np.ndarray, keep: np.ndarray) -> None:
        self.raw = raw  # (n, m) covariates then PCs, float64
        self.phenotype = phenotype  # (n,)
        self.keep = keep  # (dataset samples,) bool: complete samples


_CACHE: dict[str, _SiteData] = {}


def _site_data(state: Mapping[str, Any], dataset: Dataset) -> _SiteData:
    p = state["parameters"]
    basis = state.get("pca_state")
    digest = hashlib.sha256(json.dumps([p["phenotype"], p["covariates"], p["model"], basis], sort_keys=True).encode()).hexdigest()
    key = f"{Path(dataset.path).resolve()}:{digest}"
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _read_site_data(p, basis, dataset)
    return _CACHE[key]


def _column(samples: pa.Table, name: str, dataset: Dataset) -> np.ndarray:
    if name not in samples.column_names:
        known = [c for c in samples.column_names if c not in ("sample_index", "sample_id", "has_phenotypes")]
        raise InputError(f"{dataset.path}: the samples table has no column {name!r}; phenotype columns here: {known}")
    column = samples.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_boolean(column.type)):
        raise InputError(f"{dataset.path}: column {name!r} is {column.type}, a GWAS needs numeric values")
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)


def _read_site_data(p: Mapping[str, Any], basis: Mapping[str, Any] | None, dataset: Dataset) -> _SiteData:
    samples = dataset.samples()
    phenotype = _column(samples, p["phenotype"], dataset)
    columns = [_column(samples, name, dataset) for name in p["covariates"]]
    if basis is not None:
        if not pca_state_done(basis):
            raise InputError("gwas: the PCA stage ended without loadings; cannot compute PC covariates")
        scores = local_scores(basis, dataset)
        columns += [np.asarray(scores.column(f"PC{j + 1}").to_numpy(zero_copy_only=False), np.float64) for j in range(scores.num_columns - 1)]
    raw = np.column_stack(columns) if columns else np.zeros((dataset.num_samples, 0))
    keep = np.isfinite(phenotype) & np.all(np.isfinite(raw), axis=1)
    if "has_phenotypes" in samples.column_names:
        keep &= np.asarray(samples.column("has_phenotypes").to_numpy(zero_copy_only=False), bool)
    if p["model"] == "logistic":
        bad = keep & ~np.isin(phenotype, (0.0, 1.0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{dataset.path}: sample {first} has {p['phenotype']}={phenotype[first]:g}; a logistic GWAS needs 0 (control) "
                "or 1 (case), missing as NA"
            )
    return _SiteData(raw[keep], phenotype[keep], keep)


def _design(data: _SiteData, state: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Standardized covariates (intercept first) and phenotype, checked against max_abs_z."""
    mean = np.asarray(state["moments"]["mean"], np.float64)
    sd = np.asarray(state["moments"]["sd"], np.float64)
    m = data.raw.shape[1]
    z = (data.raw - mean[:m]) / sd[:m]
    covariates = np.column_stack([np.ones(len(z)), z])
    if state["parameters"]["model"] == "linear":
        phenotype = (data.phenotype - mean[m]) / sd[m]
        values = np.column_stack([z, phenotype])
    else:
        phenotype = data.phenotype
        values = z
    limit = float(state["parameters"]["max_abs_z"])
    if values.size and np.max(np.abs(values)) > limit:
        column = int(np.argmax(np.max(np.abs(values), axis=0)))
        names = state["columns"] + ([state["parameters"]["phenotype"]] if state["parameters"]["model"] == "linear" else [])
        raise InputError(
            f"a value of {names[column]!r} lies more than max_abs_z={limit:g} standard deviations from the federation's "
            "mean; check that column for unit or coding errors, or raise max_abs_z in the job spec"
        )
    return covariates, phenotype


def _variant_rows(state: Mapping[str, Any], dataset: Dataset):
    """Yields (positions in the job's variant list, the site's genotype rows) per dataset block."""
    order = np.asarray(state["variant_order"], np.int64)
    ids = np.asarray(state["variant_ids"], dtype=str)
    sorted_ids = ids[order]
    for block in dataset.iter_blocks():
        block_ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=str)
        where, present = locate(sorted_ids, block_ids)
        if present.any():
            yield order[where[present]], block.call_dosage[present]


_CALLS_CACHE: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
CALLS_CACHE_BYTES = 1 << 30
"""Largest site genotype matrix kept in memory between Newton rounds (else re-read each round)."""


def _complete_calls(state: Mapping[str, Any], dataset: Dataset, data: _SiteData, *, keep_in_memory: bool):
    """(positions in the job's variant list, calls of the complete samples) per block.

    With ``keep_in_memory`` (the Newton rounds) the blocks are kept for the next round
    when they fit :data:`CALLS_CACHE_BYTES`: every round reads the same rows.
    """
    key = f"{Path(dataset.path).resolve()}:{hashlib.sha256(json.dumps(state['variant_ids']).encode()).hexdigest()}:{data.keep.sum()}"
    if key in _CALLS_CACHE:
        yield from _CALLS_CACHE[key]
        return
    kept: list[tuple[np.ndarray, np.ndarray]] | None = [] if keep_in_memory else None
    size = 0
    for rows, calls in _variant_rows(state, dataset):
        calls = np.ascontiguousarray(calls[:, data.keep])
        if kept is not None:
            size += calls.nbytes
            kept = kept if size <= CALLS_CACHE_BYTES else None
            if kept is not None:
                kept.append((rows, calls))
        yield rows, calls
    if kept is not None:
        _CALLS_CACHE.clear()
        _CALLS_CACHE[key] = kept


# --------------------------------------------------------------------------- the regression stage


class Regression:
    """The regression rounds of a GWAS (stage 3; see the module docstring)."""

    name = "gwas_regression"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """Parameters, the variants to test (QC-passing) and the PCA basis, from the earlier stages."""
        p = parse_gwas_spec({k: v for k, v in spec.items() if k not in ("variant_ids", "pca_state")})
        variant_ids = [str(v) for v in spec.get("variant_ids", [])]
        if not variant_ids:
            raise InputError("gwas: no variant passed the census QC filter; relax min_call_rate, hwe_p or maf")
        columns = list(p["covariates"]) + [f"PC{i + 1}" for i in range(p["pcs"])]
        return {
            "parameters": p, "num_participants": len(participants), "variant_ids": variant_ids,
            "variant_order": np.argsort(np.asarray(variant_ids, dtype=str), kind="stable").tolist(),
            "pca_state": spec.get("pca_state"), "columns": columns, "moments": None, "iteration": 0,
        }

    def _clip(self, state: Mapping[str, Any]) -> tuple[float, int, int]:
        n_max = int(state["parameters"]["max_samples_per_site"])
        z = max(float(state["parameters"]["max_abs_z"]), 2.0)
        return n_max * z * z, n_max, int(state["num_participants"])

    def layout(self, state: Mapping[str, Any], round_index: int) -> Layout:
        """Round 0: moments; then per-variant statistics (linear) or Newton rounds (logistic)."""
        bound, n_max, sites = self._clip(state)
        if round_index == MOMENTS_ROUND:
            m = len(state["columns"]) + 1
            # Sums of raw values up to max_abs_value and of their squares; only used to standardize, so a
            # few fractional bits suffice (the genotype's fit does not depend on the exact shift and scale).
            raw_bound = n_max * float(state["parameters"]["max_abs_value"]) ** 2
            return Layout((_int_field("n_samples", (1,), n_max), _float_field("sum", (m,), raw_bound, sites, min_bits=2),
                           _float_field("sum_squares", (m,), raw_bound, sites, min_bits=2)))
        k = len(state["columns"]) + 1
        packed = glm.packed_size(k)
        if state["parameters"]["model"] == "linear":
            v = len(state["variant_ids"])
            return Layout((
                _float_field("xtx", (v, packed), bound, sites), _float_field("xty", (v, k + 1), bound, sites),
                _float_field("yty", (v,), bound, sites), _int_field("n", (v,), n_max), _int_field("below_min", (v,), 1),
            ))
        firth = state.get("firth")
        active = len(decode_array((firth or state)["active"]))
        fields = [_float_field("score", (active, k + 1), bound, sites), _float_field("information", (active, packed), bound, sites)]
        if firth is None and state["iteration"] == 0:
            fields += [_int_field(name, (active,), 2 * n_max) for name in ("n", "n_case", "alt_count", "alt_case")]
            fields.append(_int_field("below_min", (active,), 1))
        return Layout(tuple(fields))

    def site_step(self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's moments, linear statistics or Newton contributions (see the module docstring).

        Raises:
            PolicyRefusal: more complete samples than the job's max_samples_per_site.
            InputError: a missing column, a non-0/1 binary phenotype, or an outlying value.
        """
        data = _site_data(state, dataset)
        n_max = int(state["parameters"]["max_samples_per_site"])
        if len(data.phenotype) > n_max:
            raise PolicyRefusal(f"site {site.name}: {len(data.phenotype)} samples exceed the job's max_samples_per_site {n_max}")
        if round_index == MOMENTS_ROUND:
            values = np.column_stack([data.raw, data.phenotype])
            limit = float(state["parameters"]["max_abs_value"])
            if values.size and np.max(np.abs(values)) > limit:
                raise InputError(f"site {site.name}: a covariate or phenotype value exceeds max_abs_value={limit:g} in absolute "
                                 "value; rescale that column or raise max_abs_value in the job spec")
            return {"n_samples": np.array([len(data.phenotype)], np.int64), "sum": values.sum(axis=0), "sum_squares": (values**2).sum(axis=0)}
        covariates, phenotype = _design(data, state)
        if state["parameters"]["model"] == "linear":
            return self._linear_site(state, dataset, site, data, covariates, phenotype)
        return self._logistic_site(state, dataset, site, data, covariates, phenotype)

    def _linear_site(self, state, dataset, site, data, covariates, phenotype) -> dict[str, np.ndarray]:
        v, k = len(state["variant_ids"]), covariates.shape[1]
        out = {"xtx": np.zeros((v, glm.packed_size(k))), "xty": np.zeros((v, k + 1)), "yty": np.zeros(v),
               "n": np.zeros(v, np.int64), "below_min": np.zeros(v, np.int64)}
        for rows, calls in _complete_calls(state, dataset, data, keep_in_memory=False):
            stats = glm.linear_statistics(calls, covariates, phenotype)
            for name in ("xtx", "xty", "yty"):
                out[name][rows] = stats[name]
            called = np.rint(stats["n"]).astype(np.int64)
            out["n"][rows] = called
            out["below_min"][rows] = _below_minimum(called, np.rint(stats["alt_count"]).astype(np.int64), site)
        return out

    def _logistic_site(self, state, dataset, site, data, covariates, phenotype) -> dict[str, np.ndarray]:
        k = covariates.shape[1]
        firth = state.get("firth")
        if firth is None:
            active = decode_array(state["active"])
            theta_active = decode_array(state["theta"])[active]
            inverse = None
        else:
            firth_active = decode_array(firth["active"])
            active = decode_array(firth["index"])[firth_active]
            theta_active = decode_array(firth["theta"])[firth_active]
            inverse = (glm.unpack_symmetric(decode_array(firth["inverse"])[firth_active], k) if firth["stage"] == "score"
                       else np.zeros((len(active), k + 1, k + 1)))
        slot = np.full(len(state["variant_ids"]), -1, np.int64)
        slot[active] = np.arange(len(active))
        a = len(active)
        out = {"score": np.zeros((a, k + 1)), "information": np.zeros((a, glm.packed_size(k)))}
        first = firth is None and state["iteration"] == 0
        if first:
            out.update({name: np.zeros(a, np.int64) for name in ("n", "n_case", "alt_count", "alt_case", "below_min")})
        case = phenotype == 1.0
        for rows, calls in _complete_calls(state, dataset, data, keep_in_memory=True):
            where = slot[rows]
            use = where >= 0
            if not use.any():
                continue
            calls = calls[use]
            if inverse is None:
                stats = glm.logistic_statistics(calls, theta_active[where[use]], covariates, phenotype)
            else:
                stats = glm.firth_statistics(calls, theta_active[where[use]], inverse[where[use]], covariates, phenotype)
            out["score"][where[use]] = stats["score"]
            out["information"][where[use]] = stats["information"]
            if first:
                called = calls >= 0
                dosage = np.where(called, calls, 0).astype(np.int64)
                out["n"][where[use]] = called.sum(axis=1)
                out["n_case"][where[use]] = (called & case).sum(axis=1)
                out["alt_count"][where[use]] = dosage.sum(axis=1)
                out["alt_case"][where[use]] = dosage[:, case].sum(axis=1)
                out["below_min"][where[use]] = _below_minimum(called.sum(axis=1), dosage.sum(axis=1), site)
        return out

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Round 0: publish means/SDs; then the linear fit, or one Newton update of every variant."""
        if round_index == MOMENTS_ROUND:
            return self._moments(state, total), False, None
        if state["parameters"]["model"] == "linear":
            return dict(state), True, self._linear_result(state, total, num_sites)
        if state.get("firth") is not None:
            return self._firth(state, total, num_sites)
        return self._newton(state, total, num_sites)

    def _moments(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray]) -> dict[str, Any]:
        n = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        names = state["columns"] + [state["parameters"]["phenotype"]]
        if n < 2:
            raise InputError(f"gwas: {n} complete samples across the sites (phenotype and every covariate present); nothing to test")
        mean = np.asarray(total["sum"], np.float64) / n
        variance = np.maximum(np.asarray(total["sum_squares"], np.float64) / n - mean**2, 0.0)
        sd = np.sqrt(variance)
        constant = [name for name, s, mu in zip(names, sd, mean) if not s > 1e-9 * max(1.0, abs(mu))]
        if constant:
            raise ConfigurationError(f"gwas: {constant} are constant across the complete samples; drop them from the spec")
        state = {**state, "moments": {"n": n, "mean": mean.tolist(), "sd": sd.tolist()}}
        if state["parameters"]["model"] == "logistic":
            v, k = len(state["variant_ids"]), len(state["columns"]) + 1
            cases = mean[-1]
            if not 0.0 < cases < 1.0:
                raise InputError(f"gwas: the binary phenotype {names[-1]!r} has no {'cases' if cases == 0 else 'controls'} among complete samples")
            theta = np.zeros((v, k + 1))
            theta[:, 0] = math.log(cases / (1.0 - cases))
            state.update(theta=encode_array(theta), active=encode_array(_compact(np.arange(v))),
                         status=encode_array(np.full(v, glm.STATUS.index("UNFINISHED"), np.int8)),
                         variance=encode_array(np.full(v, np.nan)), counts=None)
        return state

    def _linear_result(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray], num_sites: int) -> Result:
        n = np.asarray(total["n"], np.int64)
        fit = glm.linear_fit(total["xtx"], total["xty"], total["yty"], n)
        scale = float(state["moments"]["sd"][-1])
        k = len(state["columns"]) + 1
        alt = np.asarray(total["xtx"], np.float64)[:, k * (k + 1) // 2]
        return _result(state, fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value, fit.status,
                       n, alt, np.asarray(total["below_min"], np.int64), num_sites)

    def _newton(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray], num_sites: int) -> tuple[dict[str, Any], bool, Result | None]:
        p = state["parameters"]
        active = decode_array(state["active"])
        theta = decode_array(state["theta"])
        status = decode_array(state["status"])
        variance = decode_array(state["variance"])
        if state["iteration"] == 0:
            counts = {name: np.asarray(total[name], np.int64) for name in ("n", "n_case", "alt_count", "alt_case", "below_min")}
            n, n_case = counts["n"], counts["n_case"]
            alt_control = counts["alt_count"] - counts["alt_case"]
            ref_case = 2 * n_case - counts["alt_case"]
            ref_control = 2 * (n - n_case) - alt_control
            separated = (counts["alt_case"] == 0) | (alt_control == 0) | (ref_case == 0) | (ref_control == 0)
            counts_json = {name: encode_array(_compact(values)) for name, values in counts.items()}
        else:
            separated = np.zeros(len(active), bool)
            counts_json = state["counts"]
        step = glm.newton_step(theta[active], np.asarray(total["score"]), np.asarray(total["information"]))
        theta[active] = step.theta
        variance[active] = step.variance
        diverged = ~np.isfinite(step.step) | (np.max(np.abs(step.theta[:, 1:]), axis=1) > MAX_COEFFICIENT)
        converged = step.step <= float(p["tolerance"])
        status[active[separated | diverged]] = glm.STATUS.index("SEPARATION")
        status[active[converged & ~separated & ~diverged]] = glm.STATUS.index("OK")
        still = active[~(separated | diverged | converged)]
        iteration = int(state["iteration"]) + 1
        state = {**state, "theta": encode_array(theta), "status": encode_array(status), "variance": encode_array(variance),
                 "active": encode_array(_compact(still)), "iteration": iteration, "counts": counts_json}
        if still.size and iteration < int(p["max_iterations"]):
            return state, False, None
        counts = {name: decode_array(values) for name, values in counts_json.items()}
        design = _design_status(counts["n"], counts["alt_count"], len(state["columns"]) + 2)
        status = np.where(design != 0, design, status)
        failed = np.flatnonzero(np.isin(status, (glm.STATUS.index("SEPARATION"), glm.STATUS.index("UNFINISHED"))))
        state = {**state, "status": encode_array(status)}
        if p["firth"] and failed.size:
            # plink2's firth-fallback: these variants are refitted with Firth's penalized likelihood.
            k = len(state["columns"]) + 1
            start = np.zeros((failed.size, k + 1))
            cases = float(state["moments"]["mean"][-1])
            start[:, 0] = math.log(cases / (1.0 - cases))
            state["firth"] = {"index": encode_array(_compact(failed)), "active": encode_array(_compact(np.arange(failed.size))),
                              "theta": encode_array(start), "inverse": None, "iteration": 0, "stage": "information",
                              "variance": encode_array(np.full(failed.size, np.nan)),
                              "status": encode_array(np.full(failed.size, glm.STATUS.index("FIRTH_CONVERGE_FAIL"), np.int8))}
            return state, False, None
        return state, True, self._logistic_result(state, num_sites)

    def _firth(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray], num_sites: int) -> tuple[dict[str, Any], bool, Result | None]:
        """One round of Firth-penalized Newton-Raphson for the variants the plain fit could not handle.

        An iteration is two rounds at the same coefficients: ``information`` (the sum of
        the sites' Fisher information, whose inverse becomes public) and ``score`` (each
        site's modified score, whose hat diagonal needs that inverse), then the step
        ``I^-1 U*``, at most 5 per coefficient as logistf's ``maxstep``.
        """
        p = state["parameters"]
        firth = dict(state["firth"])
        k = len(state["columns"]) + 1
        active = decode_array(firth["active"])
        theta = decode_array(firth["theta"])
        variance = decode_array(firth["variance"])
        status = decode_array(firth["status"])
        count = len(decode_array(firth["index"]))
        inverse = decode_array(firth["inverse"]) if firth["inverse"] is not None else np.zeros((count, glm.packed_size(k)))
        step = glm.newton_step(theta[active], np.asarray(total["score"]), np.asarray(total["information"]))
        inverse[active] = glm.pack_symmetric(step.inverse, k)
        variance[active] = step.variance
        if firth["stage"] == "information":
            still = active
        else:
            theta[active] = step.theta
            diverged = ~np.isfinite(step.step) | (np.max(np.abs(step.theta[:, 1:]), axis=1) > MAX_COEFFICIENT)
            converged = (step.step <= float(p["tolerance"])) & ~diverged
            status[active[converged]] = glm.STATUS.index("OK")
            still = active[~(diverged | converged)]
        iteration = int(firth["iteration"]) + (firth["stage"] == "score")
        firth.update(active=encode_array(_compact(still)), theta=encode_array(theta), inverse=encode_array(inverse),
                     variance=encode_array(variance), status=encode_array(status), iteration=iteration,
                     stage="score" if firth["stage"] == "information" else "information")
        state = {**state, "firth": firth}
        if still.size and iteration < int(p["max_iterations"]):
            return state, False, None
        return state, True, self._logistic_result(state, num_sites)

    def _logistic_result(self, state: Mapping[str, Any], num_sites: int) -> Result:
        counts = {name: decode_array(values) for name, values in state["counts"].items()}
        theta = decode_array(state["theta"])
        variance = decode_array(state["variance"])
        status = decode_array(state["status"])
        firth_used = np.zeros(len(status), bool)
        if state.get("firth") is not None:
            index = decode_array(state["firth"]["index"])
            theta[index] = decode_array(state["firth"]["theta"])
            variance[index] = decode_array(state["firth"]["variance"])
            status[index] = decode_array(state["firth"]["status"])
            firth_used[index] = True
        beta = theta[:, -1]
        se, z, p_value = glm.wald_test(beta, variance)
        nan = np.where(status == 0, 1.0, np.nan)
        return _result(state, beta * nan, se * nan, z * nan, p_value * nan, status, counts["n"],
                       counts["alt_count"].astype(np.float64), counts["below_min"], num_sites, firth=firth_used)


def _compact(values: np.ndarray) -> np.ndarray:
    """int32 where the values fit (half the base64 in the stored JSON state)."""
    values = np.asarray(values, np.int64)
    return values.astype(np.int32) if values.size == 0 or np.abs(values).max() < 2**31 else values


def _design_status(n: np.ndarray, alt_count: np.ndarray, num_parameters: int) -> np.ndarray:
    """TOO_FEW_SAMPLES or CONST_ALLELE from the summed counts (0 where the design is fine)."""
    status = np.where((alt_count == 0) | (alt_count == 2 * n), glm.STATUS.index("CONST_ALLELE"), 0)
    return np.where(n <= num_parameters, glm.STATUS.index("TOO_FEW_SAMPLES"), status).astype(np.int8)


def _below_minimum(called: np.ndarray, alt_count: np.ndarray, site: SiteContext) -> np.ndarray:
    """1 where the site's own minor allele count of a variant is non-zero and below its policy minimum.

    As DataSHIELD's ``nfilter.tab``, a count of 0 is not a small cell: no carrier to identify.
    """
    minor = np.minimum(alt_count, 2 * called - alt_count)
    return ((minor > 0) & (minor < site.min_allele_count)).astype(np.int64)


# --------------------------------------------------------------------------- results


def _split_variant_id(variant_ids: Sequence[str]) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    parts = [v.split(":") for v in variant_ids]
    chromosome = [c[3:] if c.lower().startswith("chr") else c for c, *_ in parts]
    return chromosome, np.array([int(x[1]) for x in parts], np.int64), [x[3] for x in parts], [x[2] for x in parts]


def _chromosome_rank(chromosome: str) -> tuple[int, str]:
    return (int(chromosome), "") if chromosome.isdigit() else (1000, chromosome)


def gwas_table(variant_ids: Sequence[str], beta: np.ndarray, se: np.ndarray, eaf: np.ndarray, p_value: np.ndarray,
               n: np.ndarray) -> pa.Table:
    """The ``gwas`` table (GWAS-SSF columns + n, variant_id), in genome order."""
    chromosome, position, effect, other = _split_variant_id(variant_ids)
    order = sorted(range(len(variant_ids)), key=lambda i: (_chromosome_rank(chromosome[i]), int(position[i]), variant_ids[i]))
    index = np.asarray(order, np.int64)

    def floats(values: np.ndarray) -> pa.Array:
        values = np.asarray(values, np.float64)[index]
        return pa.array(values, pa.float64(), mask=~np.isfinite(values))

    table = pa.table({
        "chromosome": pa.array([chromosome[i] for i in order], pa.string()),
        "base_pair_location": pa.array(position[index], pa.int64()),
        "effect_allele": pa.array([effect[i] for i in order], pa.string()),
        "other_allele": pa.array([other[i] for i in order], pa.string()),
        "beta": floats(beta), "standard_error": floats(se), "effect_allele_frequency": floats(eaf),
        "p_value": floats(p_value), "n": pa.array(np.asarray(n, np.int64)[index], pa.int64()),
        "variant_id": pa.array([variant_ids[i] for i in order], pa.string()),
    })
    return schemas.conform(table, "gwas", source="gwas result")


def _result(state: Mapping[str, Any], beta: np.ndarray, se: np.ndarray, statistic: np.ndarray, p_value: np.ndarray,
            status: np.ndarray, n: np.ndarray, alt_count: np.ndarray, below_min: np.ndarray, num_sites: int,
            *, firth: np.ndarray | None = None) -> Result:
    p = state["parameters"]
    ids = np.asarray(state["variant_ids"], dtype=object)
    status = np.asarray(status, np.int8).copy()
    publishable = np.asarray(below_min) == 0
    status[~publishable] = glm.STATUS.index("BELOW_SITE_MIN_ALLELE_COUNT")
    with np.errstate(invalid="ignore", divide="ignore"):
        eaf = np.where(n > 0, alt_count / (2.0 * np.maximum(n, 1)), np.nan)
    table = gwas_table([str(v) for v in ids[publishable]], beta[publishable], se[publishable], eaf[publishable],
                       p_value[publishable], np.asarray(n)[publishable])
    ok_mask = (status == 0)
    status_table = pa.table({
        "variant_id": pa.array([str(v) for v in ids], pa.string()),
        "status": pa.array([glm.STATUS[s] for s in status], pa.string()),
        "statistic": pa.array(np.where(ok_mask, statistic, np.nan), pa.float64(), mask=~ok_mask),
        "firth": pa.array(np.zeros(len(ids), bool) if firth is None else firth, pa.bool_()),
    })
    status_table = schemas.conform(status_table, "gwas_status", source="gwas result")
    tested = p_value[ok_mask]
    lam = glm.genomic_inflation(tested)
    order = np.argsort(np.where(ok_mask, p_value, np.inf))[: min(10, int(ok_mask.sum()))]
    counts = {name: int(np.count_nonzero(status == code)) for code, name in enumerate(glm.STATUS) if np.any(status == code)}
    layout = REGRESSION.layout(state, 1)
    summary = {
        "analysis": "gwas",
        "model": p["model"],
        "phenotype": p["phenotype"],
        "covariates": list(p["covariates"]),
        "pcs": int(p["pcs"]),
        "num_sites": int(num_sites),
        "num_samples": int(state["moments"]["n"]),
        "variants": {"tested": int(len(ids)), "published": int(publishable.sum()), "ok": int(ok_mask.sum()),
                     "genome_wide_significant": int(np.count_nonzero(tested < 5e-8)), "status": counts},
        "lambda_gc": None if not math.isfinite(lam) else round(lam, 6),
        "top_hits": [{"variant_id": str(ids[i]), "beta": float(beta[i]), "p_value": float(p_value[i])} for i in order],
        "test": "t (Student, n - k - 1 df), as plink2 --glm" if p["model"] == "linear" else "Wald z at the maximum-likelihood fit (Firth-penalized where gwas_status.firth)",
        "encoding": {"ring": "R64", "scale_bits": {f.name: f.encoding.scale_bits for f in layout.fields}},
        "parameters": {k: v for k, v in p.items() if k != "pca"},
        "disclosure": (
            "the regression rounds revealed only sums over the included sites: covariate moments, per-variant sufficient "
            "statistics (or Newton scores and information), and per variant the number of sites below their own minimum "
            "allele count; variants where that number is not 0 are withheld"
        ),
        "schemas": {name: schemas.load(name).version for name in ("gwas", "gwas_status")},
    }
    if p["model"] == "logistic":
        summary["newton_rounds"] = int(state["iteration"])
        summary["firth"] = {"enabled": bool(p["firth"]), "variants": int(0 if firth is None else firth.sum()),
                            "rounds": int(state["firth"]["iteration"]) if state.get("firth") else 0}
    return Result(summary=summary, tables={"gwas": table, "gwas_status": status_table})


REGRESSION = Regression()


# --------------------------------------------------------------------------- the staged GWAS


def _census_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any]:
    parse_gwas_spec(job)  # the whole spec is checked at submission
    p = {**_DEFAULTS, **dict(job)}
    return {key: p[key] for key in _CENSUS_KEYS}


def _census_carry(result: Result, state: Mapping[str, Any]) -> dict[str, Any]:
    table = result.tables["census_variants"]
    passing = np.asarray(table.column("pass_qc").to_numpy(zero_copy_only=False), bool)
    ids = np.asarray(table.column("variant_id").to_pylist(), dtype=object)
    return {"variant_ids": [str(v) for v in ids[passing]]}


def _pca_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any] | None:
    p = parse_gwas_spec(job)
    if p["pcs"] == 0:
        return None
    return {**p["pca"], "k": p["pcs"]}


def _pca_carry(result: Result, state: Mapping[str, Any]) -> dict[str, Any]:
    return {"pca_state": dict(state)}


def _regression_spec(job: Mapping[str, Any], carried: Mapping[str, Any]) -> dict[str, Any]:
    return {**dict(job), "variant_ids": list(carried.get("variant_ids", [])), "pca_state": carried.get("pca_state")}


def gwas_stages() -> tuple[Stage, ...]:
    """census -> pca (when ``pcs > 0``) -> regression."""
    return (
        Stage("census", CENSUS, _census_spec, _census_carry),
        Stage("pca", PCA, _pca_spec, _pca_carry, keep_tables=("pca_loadings", "pca_eigenvalues")),
        Stage("gwas", REGRESSION, _regression_spec, lambda result, state: {}),
    )


class Gwas(Staged):
    """The ``gwas`` analysis: census, optional PCA, then the regression rounds."""

    def __init__(self) -> None:
        super().__init__("gwas", gwas_stages())

    def write_outputs(self, result: Result, out_dir: Path) -> list[str]:
        """gwas.tsv (+ its GWAS-SSF metadata YAML), manhattan.png and qq.png in ``out_dir``."""
        return write_outputs(result, out_dir)

    def site_finish(self, state: Mapping[str, Any], dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Keeps this site's PC scores at the site (``pca_scores.parquet``) once the PCA stage is done.

        Called by the site agent when the job has ended: it also frees the genotypes kept
        in memory for the Newton rounds.
        """
        _CALLS_CACHE.clear()
        _CACHE.clear()
        inner = state.get("inner")
        pca_state = inner.get("pca_state") if isinstance(inner, Mapping) and int(state.get("stage", -1)) == len(self.stages) - 1 else None
        if pca_state is None:
            return None
        return PCA.site_finish(pca_state, dataset, site, out_dir)


GWAS = Gwas()


# --------------------------------------------------------------------------- files


def _format_float(values: np.ndarray, digits: int = 6) -> list[str]:
    return ["NA" if not math.isfinite(x) else f"{x:.{digits}g}" for x in values.tolist()]


def write_outputs(result: Result, out_dir: Path | str) -> list[str]:
    """Writes gwas.tsv, gwas.tsv-meta.yaml, manhattan.png and qq.png; returns the file names.

    ``gwas.tsv`` is tab-separated GWAS-SSF v1.1 (NA for missing values, p-values floored
    at the smallest positive double), in genome order.
    """
    import yaml

    from pipeline import outputs

    out = Path(out_dir)
    table = result.tables["gwas"]
    columns = table.column_names
    data = {name: table.column(name).to_numpy(zero_copy_only=False) for name in columns}
    p = np.asarray(data["p_value"], np.float64)
    p = np.where(np.isfinite(p), np.maximum(p, np.finfo(np.float64).tiny), np.nan)
    rendered = {
        "chromosome": [str(x) for x in data["chromosome"]],
        "base_pair_location": [str(int(x)) for x in data["base_pair_location"]],
        "effect_allele": [str(x) for x in data["effect_allele"]],
        "other_allele": [str(x) for x in data["other_allele"]],
        "beta": _format_float(np.asarray(data["beta"], np.float64), 8),
        "standard_error": _format_float(np.asarray(data["standard_error"], np.float64), 8),
        "effect_allele_frequency": _format_float(np.asarray(data["effect_allele_frequency"], np.float64)),
        "p_value": _format_float(p, 6),
        "n": [str(int(x)) for x in data["n"]],
        "variant_id": [str(x) for x in data["variant_id"]],
    }
    lines = ["\t".join(columns)] + ["\t".join(row) for row in zip(*(rendered[c] for c in columns))]
    text = "\n".join(lines) + "\n"
    with outputs.atomic_file(out / "gwas.tsv", force=True) as tmp:
        Path(tmp).write_text(text)
    summary = result.summary
    meta = {
        "file_type": "GWAS-SSF v1.1",
        "data_file_name": "gwas.tsv",
        "data_file_md5sum": hashlib.md5(text.encode()).hexdigest(),
        "is_harmonised": False,
        "is_sorted": True,
        "genome_assembly": "GRCh38",
        "coordinate_system": "1-based",
        "trait_description": [str(summary.get("phenotype"))],
        "samples": [{"sample_size": int(summary.get("num_samples", 0)), "sample_ancestry": ["NR"]}],
        "analysis_software": "genofed (federated, exact pooled fit over secure aggregation)",
        "test_statistic": summary.get("test"),
        "covariates": list(summary.get("covariates", [])) + [f"PC{i + 1}" for i in range(int(summary.get("pcs", 0)))],
        "model": summary.get("model"),
        "lambda_gc": summary.get("lambda_gc"),
        "effect_statistic": "beta",
    }
    with outputs.atomic_file(out / "gwas.tsv-meta.yaml", force=True) as tmp:
        Path(tmp).write_text(yaml.safe_dump(meta, sort_keys=False))
    _plots(table, out, summary)
    return ["gwas.tsv", "gwas.tsv-meta.yaml", "manhattan.png", "qq.png"]


def _plots(table: pa.Table, out: Path, summary: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = np.asarray(table.column("p_value").to_numpy(zero_copy_only=False), np.float64)
    chromosome = [str(c) for c in table.column("chromosome").to_pylist()]
    position = np.asarray(table.column("base_pair_location").to_numpy(), np.float64)
    ok = np.isfinite(p)
    score = -np.log10(np.maximum(p[ok], 1e-300))
    # Manhattan: chromosomes side by side in genome order.
    x = np.zeros(len(p))
    offset, ticks, labels, colours = 0.0, [], [], np.zeros(len(p), int)
    for index, name in enumerate(dict.fromkeys(chromosome)):
        rows = np.array([c == name for c in chromosome])
        start, stop = position[rows].min(), position[rows].max()
        x[rows] = position[rows] - start + offset
        ticks.append(offset + (stop - start) / 2)
        labels.append(name)
        colours[rows] = index % 2
        offset += stop - start + max(1.0, 0.02 * (stop - start))
    figure, axis = plt.subplots(figsize=(10, 4))
    axis.scatter(x[ok], score, c=np.where(colours[ok] == 0, "#1f4e79", "#7fa7d0"), s=4)
    axis.axhline(-np.log10(5e-8), color="#c0392b", lw=0.8, ls="--")
    axis.set_xticks(ticks, labels)
    axis.set_xlabel("chromosome" if len(labels) > 1 else f"chromosome {labels[0] if labels else ''} position")
    axis.set_ylabel("-log10 p")
    axis.set_title(f"GWAS of {summary.get('phenotype')} ({summary.get('model')}, {summary.get('num_samples')} samples)")
    figure.tight_layout()
    figure.savefig(out / "manhattan.png", dpi=120)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    observed = np.sort(score)[::-1]
    expected = -np.log10((np.arange(1, observed.size + 1) - 0.5) / max(observed.size, 1))
    axis.scatter(expected, observed, s=4, color="#1f4e79")
    top = max(float(expected.max(initial=1.0)), float(observed.max(initial=1.0)))
    axis.plot([0, top], [0, top], color="#c0392b", lw=0.8)
    axis.set_xlabel("expected -log10 p")
    axis.set_ylabel("observed -log10 p")
    axis.set_title(f"QQ, lambda_GC = {summary.get('lambda_gc')}")
    figure.tight_layout()
    figure.savefig(out / "qq.png", dpi=120)
    plt.close(figure)


def causal_hits(gwas_tsv: Path | str, truth_tsv: Path | str, *, trait: str = "quant_trait", threshold: float = 5e-8) -> list[dict[str, Any]]:
    """The simulated causal variants of ``trait`` with their GWAS p-values (for the demo).

    Returns one record per causal variant: variant position, alleles, true effect,
    estimated beta and p-value (None when not tested) and whether p < ``threshold``.
    """
    import csv

    with open(gwas_tsv, newline="") as handle:
        rows = {(r["chromosome"], int(r["base_pair_location"])): r for r in csv.DictReader(handle, delimiter="\t")}
    hits = []
    with open(truth_tsv, newline="") as handle:
        for record in csv.DictReader(handle, delimiter="\t"):
            if record.get("kind") != "causal" or record.get("trait") != trait:
                continue
            contig = record[next(iter(record))]
            chromosome = contig[3:] if contig.lower().startswith("chr") else contig
            position = int(record["pos"] if "pos" in record else list(record.values())[1])
            row = rows.get((chromosome, position))
            p_value = None if row is None or row["p_value"] == "NA" else float(row["p_value"])
            hits.append({
                "chromosome": chromosome, "position": position, "effect": record.get("effect"),
                "beta": None if row is None or row["beta"] == "NA" else float(row["beta"]),
                "p_value": p_value, "significant": p_value is not None and p_value < threshold,
            })
    return hits


def demo_spec(*, pcs: int = 4, phenotype: str = "quant_trait") -> dict[str, Any]:
    """The demo's job: linear GWAS of the simulated trait on age, sex and ``pcs`` PCs."""
    return {
        "analysis": "gwas", "model": "linear", "phenotype": phenotype, "covariates": ["age", "sex"], "pcs": pcs,
        "pca": {"window_bp": 2000, "maf": 0.05}, "maf": 0.01, "min_allele_count": 5, "stage_timeout": 300,
    }


def run_federated_gwas(datasets: Sequence[Path | str], out: Path | str, *, truth: Path | str | None = None, pcs: int = 4,
                       force: bool = False) -> dict[str, Any]:
    """``genofed federate`` of :func:`demo_spec` over local datasets, with the causal hits when ``truth`` is given.

    Returns the federate summary plus ``causal_hits`` (see :func:`causal_hits`) and
    ``text``: a few lines for a terminal (lambda_GC, hits, where the files are).
    """
    from pipeline.federation.local import federate

    result = federate(list(datasets), demo_spec(pcs=pcs), out, force=force)
    summary = result["summary"]
    results = Path(result["results"])
    lines = [
        f"GWAS of quant_trait on age, sex and {pcs} PCs: {summary['num_samples']} samples, "
        f"{summary['variants']['published']} variants published, {summary['variants']['genome_wide_significant']} "
        f"with p < 5e-8, lambda_GC {summary['lambda_gc']}",
    ]
    if truth is not None:
        hits = causal_hits(results / "gwas.tsv", truth)
        result["causal_hits"] = hits
        found = sum(hit["significant"] for hit in hits)
        lines.append(f"  simulated causal variants at genome-wide significance: {found} of {len(hits)}")
        for hit in hits:
            p_text = "not tested" if hit["p_value"] is None else f"p = {hit['p_value']:.2e}"
            lines.append(f"    {hit['chromosome']}:{hit['position']}  true effect {hit['effect']}  {p_text}")
    lines.append(f"  results: {results / 'gwas.tsv'}, manhattan.png, qq.png")
    result["text"] = "\n".join(lines)
    return result
