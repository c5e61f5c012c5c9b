"""``pca``: federated principal components by randomized subspace iteration.

The coordinator learns only variant-space quantities (a basis, the loadings and the
eigenvalues); every site computes its own samples' scores locally. Phases (the state's
``phase``; one secure-sum round each, except the first):

0. **keys** — the census' variant-key union (:mod:`pipeline.analyses.census`, a
   :class:`~pipeline.analyses.KeyUnion`).
1. **counts** — the census' per-variant genotype counts summed over the sites. From the
   global counts the coordinator derives the standardization ``(g - 2p) /
   sqrt(2p(1-p))`` (global ``p``; missing calls become 0, mean imputation) and picks
   the variant set: publishable (global minor allele count at least
   ``min_allele_count``), typed at every site (``typed_at_all_sites``), call rate at
   least ``min_call_rate``, MAF at least ``maf``, then thinned to at most one variant
   per ``window_bp`` window (highest MAF first, :func:`pipeline.stats.pca.thin_by_position`)
   and at most ``max_variants`` evenly spaced ones. This thinning is a deterministic
   stand-in for LD pruning: true pruning needs cross-site correlations between nearby
   variants, i.e. extra secure-sum rounds of per-window covariance matrices.
2. **iterate** x ``iterations`` — the state holds an orthonormal basis ``V`` (variants x
   ``k + oversampling``), first drawn from the public ``seed``. Each site contributes
   ``G_s^T (G_s V)`` (:func:`pipeline.stats.pca.gram_product`, float64); the
   coordinator orthonormalizes the sum (QR) into the next ``V``. After the last one a
   Rayleigh-Ritz step gives the top-``k`` eigenvalues of ``G^T G`` and the loadings.
3. **scores** — the state holds the loadings and eigenvalues: every site computes its
   scores ``G_s v_c`` locally and contributes only their per-component sums, sums of
   squares and its sample count. The coordinator checks that the sums of squares add up
   to the eigenvalues (``||G v_c||^2 = lambda_c``: every site used the same data and
   basis) and publishes the global mean and standard deviation of each component's
   scores (what a GWAS needs to standardize PC covariates identically at every site).

Sites keep their scores: :func:`local_scores` (the GWAS uses it) and the agent hook
:meth:`Pca.site_finish` (writes ``pca_scores.parquet`` at the site). Default scaling
``eigenvector`` divides by ``sqrt(eigenvalue)``, as plink2 --pca's ``.eigenvec``
(unit norm over all sites' samples, the pooled SVD's left singular vectors); ``raw``
keeps ``G_s v_c``.

Secure sums: ``G_s^T G_s V`` is encoded in Z_2^64 in fixed point. Its entries obey
``|g_sj^T G_s v| <= ||g_j|| * ||G||_F`` (Cauchy-Schwarz, ``V`` orthonormal), and both
norms follow from the public global counts, so the clip is exact for honest data and
the scale takes every remaining bit (about 2^-45 absolute for 3 sites, 10^3 samples and
10^3 variants: far below float64's own rounding). A site that drops out after the counts
round would change the matrix being decomposed; the job then fails instead of
returning the PCA of a different sample set.

Spec (see ``workflows/pca.yaml``)::

    analysis: pca
    k: 4                      # components
    oversampling: 10          # extra basis columns (width k + oversampling)
    iterations: 8             # subspace iteration rounds
    seed: 0                   # public seed of the starting basis
    window_bp: 5000           # thinning window
    maf: 0.05
    min_call_rate: 0.95
    typed_at_all_sites: true
    max_variants: 50000
    min_allele_count: 5
    score_scaling: eigenvector  # or raw
    max_samples_per_site: 10000000
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import outputs, schemas
from pipeline.analyses import Result, RoundLayout, SiteContext
from pipeline.analyses.census import CENSUS, COUNT_FIELDS
from pipeline.dataset import Dataset, locate
from pipeline.errors import ConfigurationError, InputError, PolicyRefusal
from pipeline.models.server import decode_array, encode_array
from pipeline.secagg.encoding import Field, FixedPoint, Layout, Ring
from pipeline.stats import pca as linalg

log = logging.getLogger(__name__)

__all__ = ["PCA", "Pca", "parse_parameters", "local_scores", "pca_state_done", "pooled_standardized", "SCORES_FILE", "RELATIVE_PRECISION"]

SCORES_FILE = "pca_scores.parquet"
RELATIVE_PRECISION = 1e-9
"""Largest fixed-point resolution of a secure-sum field, relative to its clip."""
_EIGEN_CHECK_RTOL = 1e-6
_MAX_SCALE_BITS = 62
_DEFAULTS: dict[str, Any] = {
    "k": 4, "oversampling": 10, "iterations": 8, "seed": 0, "window_bp": 5000, "maf": 0.05, "min_call_rate": 0.95,
    "typed_at_all_sites": True, "max_variants": 50_000, "min_allele_count": 5, "score_scaling": "eigenvector",
    "max_samples_per_site": 10_000_000,
}
_INTEGERS = {
    "k": (1, 1000), "oversampling": (0, 1000), "iterations": (1, 1000), "seed": (0, 2**63 - 1), "window_bp": (1, 10**10),
    "max_variants": (1, 10**8), "min_allele_count": (0, 2**31), "max_samples_per_site": (1, 2**40),
}
_FLOATS = {"maf": (0.0, 0.5), "min_call_rate": (0.0, 1.0)}


def parse_parameters(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a PCA spec and fills its defaults (the JSON parameters of the state).

    Raises:
        ConfigurationError: naming the key, what was expected and what was given.
    """
    unknown = sorted(set(spec) - set(_DEFAULTS))
    if unknown:
        raise ConfigurationError(f"pca: unknown spec key(s) {unknown}; expected some of {sorted(_DEFAULTS)}")
    p = {**_DEFAULTS, **dict(spec)}
    for name, (low, high) in _INTEGERS.items():
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(f"pca: {name} must be an integer in [{low}, {high}], got {value!r}")
    for name, (low_f, high_f) in _FLOATS.items():
        value = p[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low_f <= value <= high_f:
            raise ConfigurationError(f"pca: {name} must be a number in [{low_f}, {high_f}], got {value!r}")
        p[name] = float(value)
    if not isinstance(p["typed_at_all_sites"], bool):
        raise ConfigurationError(f"pca: typed_at_all_sites must be true or false, got {p['typed_at_all_sites']!r}")
    if p["score_scaling"] not in ("eigenvector", "raw"):
        raise ConfigurationError(f"pca: score_scaling must be 'eigenvector' or 'raw', got {p['score_scaling']!r}")
    return p


def pca_state_done(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` holds final loadings (phase ``scores`` or ``done``): scores can be computed."""
    return state.get("phase") in ("scores", "done")


def _selection_digest(variant_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(variant_ids).encode()).hexdigest()


_CALLS_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _selected_calls(dataset: Dataset, variant_ids: Sequence[str], digest: str) -> np.ndarray:
    """The site's int8 calls of the selected variants (rows in ``variant_ids`` order, -1 where absent).

    Cached per dataset and selection: every iteration reads the same rows, and int8 is
    the smallest form of them (8x less than the standardized float64 matrix).
    """
    key = (str(Path(dataset.path).resolve()), digest)
    if key in _CALLS_CACHE:
        return _CALLS_CACHE[key]
    selected = np.asarray(variant_ids, dtype=str)
    calls = np.full((selected.size, dataset.num_samples), -1, np.int8)
    for block in dataset.iter_blocks():
        ids = np.asarray(block.variants.column("variant_id").to_pylist(), dtype=str)
        row, present = locate(selected, ids)
        calls[row[present]] = block.call_dosage[present]
    if len(_CALLS_CACHE) >= 4:
        _CALLS_CACHE.pop(next(iter(_CALLS_CACHE)))
    _CALLS_CACHE[key] = calls
    return calls


def _sample_ids(dataset: Dataset) -> list[str]:
    samples = dataset.samples()
    ids = samples.column("sample_id").to_pylist()
    if "sample_index" in samples.column_names:
        order = np.argsort(np.asarray(samples.column("sample_index").to_numpy(zero_copy_only=False)), kind="stable")
        ids = [ids[i] for i in order]
    return [str(i) for i in ids]


def _raw_scores(state: Mapping[str, Any], dataset: Dataset) -> np.ndarray:
    calls = _selected_calls(dataset, state["variant_ids"], state["selection_digest"])
    return linalg.project(calls, decode_array(state["mean"]), decode_array(state["inv_scale"]), decode_array(state["loadings"]))


def local_scores(state: Mapping[str, Any], dataset: Dataset, *, scaling: str | None = None) -> pa.Table:
    """This site's PC scores from a finished PCA state (phase ``scores`` or ``done``).

    Args:
        state: the PCA job's state after the iterations (holds loadings and eigenvalues).
        dataset: the site's dataset (the same one it contributed from).
        scaling: ``eigenvector`` (divide by sqrt(eigenvalue), plink2 --pca style) or
            ``raw``; default: the job's ``score_scaling``.

    Returns:
        A ``pca_scores`` table: sample_id, PC1..PCk (float64), with the scaling in its
        schema metadata (``genofed.pca.scaling``).

    Raises:
        InputError: the state has no loadings yet.
    """
    if not pca_state_done(state):
        raise InputError(f"pca: the job's state is at phase {state.get('phase')!r}; scores need the final loadings (phase 'scores' or 'done')")
    scaling = scaling or state["parameters"]["score_scaling"]
    raw = _raw_scores(state, dataset)
    eigenvalues = np.asarray(state["eigenvalues"], np.float64)
    if scaling == "eigenvector":
        raw = raw / np.sqrt(np.where(eigenvalues > 0, eigenvalues, 1.0))[None, :]
    elif scaling != "raw":
        raise ConfigurationError(f"pca: scaling must be 'eigenvector' or 'raw', got {scaling!r}")
    columns: dict[str, pa.Array] = {"sample_id": pa.array(_sample_ids(dataset), pa.string())}
    for c in range(raw.shape[1]):
        columns[f"PC{c + 1}"] = pa.array(raw[:, c], pa.float64())
    table = schemas.conform(pa.table(columns), "pca_scores", source="pca scores")
    metadata = {**(table.schema.metadata or {}), b"genofed.pca.scaling": scaling.encode()}
    return table.replace_schema_metadata(metadata)


def pooled_standardized(state: Mapping[str, Any], datasets: Sequence[Dataset]) -> np.ndarray:
    """The pooled standardized matrix (all sites' samples x selected variants), for baselines.

    Only possible where every dataset is at hand (simulations, tests); a federation never
    forms it. Uses the state's variant set and global standardization.
    """
    mean, inv_scale = decode_array(state["mean"]), decode_array(state["inv_scale"])
    blocks = [linalg.standardize(_selected_calls(d, state["variant_ids"], state["selection_digest"]), mean, inv_scale) for d in datasets]
    return np.concatenate(blocks, axis=1).T


def _fit_scale_bits(clip: float, num_sites: int) -> int:
    room = Ring.R64.max_signed / (num_sites * (clip + 1.0))
    bits = min(_MAX_SCALE_BITS, int(math.floor(math.log2(room)))) if room >= 1 else -1
    if bits < 0 or 2.0**-bits > RELATIVE_PRECISION * max(clip, 1.0):
        raise ConfigurationError(
            f"pca: {num_sites} sites' contributions up to {clip:.3g} leave no room for a precision of {RELATIVE_PRECISION:g} "
            "in a 64-bit secure sum; lower max_variants or split the job"
        )
    return bits


def _float_field(name: str, shape: tuple[int, ...], clip: float, num_sites: int) -> Field:
    return Field(name, shape, FixedPoint(Ring.R64, _fit_scale_bits(clip, num_sites), float(clip)))


def _parse_variant_id(variant_id: str) -> tuple[str, int]:
    parts = variant_id.split(":")
    try:
        return parts[0], int(parts[1])
    except (IndexError, ValueError):
        raise InputError(f"pca: variant key {variant_id!r} is not chrom:pos:ref:alt; re-ingest the dataset with 'genofed ingest'") from None


class Pca:
    """Federated PCA (see the module docstring)."""

    name = "pca"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> dict[str, Any]:
        """Parses the spec; the census sub-state drives the first two rounds."""
        parameters = parse_parameters(spec)
        census = CENSUS.init(
            {"min_allele_count": parameters["min_allele_count"], "max_samples_per_site": parameters["max_samples_per_site"]},
            participants,
        )
        return {"phase": "keys", "parameters": parameters, "num_participants": len(participants), "census": census}

    # ------------------------------------------------------------------ layouts

    def layout(self, state: Mapping[str, Any], round_index: int) -> RoundLayout:
        """keys/counts: the census' layouts; iterate: ``gram``; scores: sums, squares, n."""
        phase = state["phase"]
        if phase == "keys":
            return CENSUS.layout(state["census"], 0)
        if phase == "counts":
            return CENSUS.layout(state["census"], 1)
        sites = int(state["num_participants"])
        num_variants, width, k = len(state["variant_ids"]), int(state["width"]), int(state["parameters"]["k"])
        trace = float(state["trace"])
        if phase == "iterate":
            return Layout((_float_field("gram", (num_variants, width), float(state["gram_clip"]), sites),))
        if phase == "scores":
            clip_n = float(state["parameters"]["max_samples_per_site"])
            return Layout((
                _float_field("score_sum", (k,), math.sqrt(float(state["num_samples"]) * trace) * 1.001 + 1.0, sites),
                _float_field("score_sum_squares", (k,), trace * 1.001 + 1.0, sites),
                Field("n_samples", (1,), FixedPoint(Ring.R64, 0, clip_n)),
            ))
        raise InputError(f"pca: no round in phase {phase!r} (the job is finished)")

    # ------------------------------------------------------------------ site side

    def site_step(self, state: Mapping[str, Any], round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """A site's contribution in the state's phase (see the module docstring).

        Raises:
            PolicyRefusal: the census' checks (publish threshold below the site's own
                minimum allele count, too many samples for the encoding).
        """
        phase = state["phase"]
        if phase == "keys":
            return CENSUS.site_step(state["census"], 0, dataset, site)
        if phase == "counts":
            return CENSUS.site_step(state["census"], 1, dataset, site)
        if dataset.num_samples > int(state["parameters"]["max_samples_per_site"]):
            raise PolicyRefusal(
                f"site {site.name}: {dataset.num_samples} samples exceed the job's max_samples_per_site "
                f"{state['parameters']['max_samples_per_site']}"
            )
        calls = _selected_calls(dataset, state["variant_ids"], state["selection_digest"])
        mean, inv_scale = decode_array(state["mean"]), decode_array(state["inv_scale"])
        if phase == "iterate":
            return {"gram": linalg.gram_product(calls, mean, inv_scale, decode_array(state["basis"]))}
        if phase == "scores":
            raw = linalg.project(calls, mean, inv_scale, decode_array(state["loadings"]))
            return {
                "score_sum": raw.sum(axis=0),
                "score_sum_squares": (raw**2).sum(axis=0),
                "n_samples": np.array([dataset.num_samples], np.int64),
            }
        raise InputError(f"pca: no site step in phase {phase!r}")

    def site_finish(self, state: Mapping[str, Any], dataset: Dataset, site: SiteContext, out_dir: Path) -> dict[str, Any] | None:
        """Writes this site's scores to ``out_dir/pca_scores.parquet`` once the loadings are known.

        Called by the site agent after a job it took part in has ended, with the last
        state it saw; returns ``None`` (writes nothing) when that state has no loadings
        (the job failed before the scores round).
        """
        if not pca_state_done(state):
            return None
        table = local_scores(state, dataset)
        path = Path(out_dir) / SCORES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with outputs.atomic_file(path, force=True) as tmp:
            outputs.write_table(table, tmp, "pca_scores", source=str(path))
        log.info("site %s: wrote %d samples' PCA scores to %s", site.name, table.num_rows, path)
        return {"pca_scores": str(path), "num_samples": table.num_rows, "components": table.num_columns - 1}

    def simulation_baselines(self, spec: Mapping[str, Any], datasets: Sequence[Path], out_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
        """``genofed federate`` only (every dataset at hand): the pooled SVD of the same matrix.

        Builds the pooled standardized matrix over the federated job's variant set
        (``out_dir/pca_loadings.parquet``), takes its SVD and writes the agreement to
        ``out_dir/pca_pooled_comparison.json``: per component, |correlation| of the
        loadings and the relative error of the eigenvalue. A federation never does this.
        """
        import json

        import pyarrow.parquet as pq

        from pipeline.dataset import open_dataset

        loadings_table = pq.read_table(Path(out_dir) / "pca_loadings.parquet")
        variant_ids = [str(v) for v in loadings_table.column("variant_id").to_pylist()]
        digest = _selection_digest(variant_ids)
        calls = np.concatenate([_selected_calls(open_dataset(d), variant_ids, digest) for d in datasets], axis=1)
        mean, inv_scale = linalg.standardization((calls == 0).sum(1), (calls == 1).sum(1), (calls == 2).sum(1))
        _, singular, vt = np.linalg.svd(linalg.standardize(calls, mean, inv_scale).T, full_matrices=False)
        names = [c for c in loadings_table.column_names if c != "variant_id"]
        eigenvalues = np.asarray(summary["eigenvalues"], np.float64)
        rows = []
        for c, name in enumerate(names):
            loading = loadings_table.column(name).to_numpy()
            rows.append({
                "component": name,
                "loading_abs_correlation": float(abs(np.corrcoef(loading, vt[c])[0, 1])),
                "eigenvalue": float(eigenvalues[c]),
                "pooled_eigenvalue": float(singular[c] ** 2),
                "eigenvalue_relative_error": float(abs(eigenvalues[c] - singular[c] ** 2) / singular[c] ** 2),
            })
        path = Path(out_dir) / "pca_pooled_comparison.json"
        path.write_text(json.dumps({"components": rows}, indent=2) + "\n")
        lines = ["  component  |corr(loadings, pooled SVD)|  eigenvalue rel. error"]
        lines += [f"  {r['component']:<9}  {r['loading_abs_correlation']:.9f}                  {r['eigenvalue_relative_error']:.2e}" for r in rows]
        return {"components": rows, "table": "\n".join(lines), "files": [str(path)]}

    # ------------------------------------------------------------------ coordinator side

    def coordinator_step(
        self, state: Mapping[str, Any], round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> tuple[dict[str, Any], bool, Result | None]:
        """Advances the phase; the scores round ends the job with loadings and eigenvalues.

        Raises:
            InputError: no usable variants, a site dropped out after the counts round, or
                the sites' score sums contradict the eigenvalues.
        """
        phase = state["phase"]
        if phase == "keys":
            census, _, _ = CENSUS.coordinator_step(state["census"], 0, total, num_sites)
            return {**state, "phase": "counts", "census": census}, False, None
        if phase == "counts":
            return self._select(state, total, num_sites), False, None
        if num_sites != int(state["num_sites"]):
            raise InputError(
                f"pca: {num_sites} sites contributed to the {phase} round, {state['num_sites']} to the counts round; "
                "a PCA over a changing set of samples is not defined — resubmit the job"
            )
        if phase == "iterate":
            return self._iterate(state, np.asarray(total["gram"], np.float64)), False, None
        if phase == "scores":
            return self._finish(state, total)
        raise InputError(f"pca: the job is already done (phase {phase!r})")

    def _select(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray], num_sites: int) -> dict[str, Any]:
        p = state["parameters"]
        union = np.asarray(state["census"]["variant_ids"], dtype=str)
        counts = {name: np.asarray(total[name], np.int64) for name in COUNT_FIELDS}
        num_samples = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        hom_ref, het, hom_alt, missing = (counts[name] for name in COUNT_FIELDS)
        called = hom_ref + het + hom_alt
        allele_count = het + 2 * hom_alt
        allele_number = 2 * called
        minor_count = np.minimum(allele_count, allele_number - allele_count)
        with np.errstate(invalid="ignore", divide="ignore"):
            frequency = np.where(allele_number > 0, allele_count / np.maximum(allele_number, 1), np.nan)
        maf = np.minimum(frequency, 1.0 - frequency)
        eligible = (minor_count >= int(p["min_allele_count"])) & (called >= p["min_call_rate"] * num_samples) & (minor_count > 0)
        if p["typed_at_all_sites"]:
            eligible &= called + missing == num_samples
        location = [_parse_variant_id(v) for v in union.tolist()]
        chromosome = np.array([c for c, _ in location], dtype=str)
        position = np.array([pos for _, pos in location], np.int64)
        keep = linalg.thin_by_position(chromosome, position, maf, window_bp=int(p["window_bp"]), min_maf=p["maf"], eligible=eligible)
        index = np.flatnonzero(keep)
        if index.size > int(p["max_variants"]):
            by_position = index[np.lexsort((position[index], chromosome[index]))]
            chosen = by_position[np.unique(np.linspace(0, index.size - 1, int(p["max_variants"])).round().astype(np.int64))]
            index = np.sort(chosen)
        k = int(p["k"])
        if index.size < k:
            raise InputError(
                f"pca: only {index.size} variants pass the filters (of {union.size} shared: {int(eligible.sum())} eligible, "
                f"then thinned by window_bp={p['window_bp']}, maf={p['maf']}); need at least k={k}: lower window_bp or maf"
            )
        mean, inv_scale = linalg.standardization(hom_ref[index], het[index], hom_alt[index])
        squares = linalg.standardized_sum_of_squares(hom_ref[index], het[index], hom_alt[index], mean, inv_scale)
        trace = float(squares.sum())
        width = min(k + int(p["oversampling"]), index.size)
        variant_ids = union[index].tolist()
        basis = linalg.initial_basis(index.size, width, int(p["seed"]))
        return {
            "phase": "iterate",
            "parameters": dict(p),
            "num_participants": int(state["num_participants"]),
            "num_sites": int(num_sites),
            "num_samples": num_samples,
            "variant_ids": variant_ids,
            "selection_digest": _selection_digest(variant_ids),
            "selection": {"shared": int(union.size), "eligible": int(eligible.sum()), "selected": int(index.size)},
            "mean": encode_array(mean),
            "inv_scale": encode_array(inv_scale),
            "trace": trace,
            "gram_clip": float(math.sqrt(float(squares.max())) * math.sqrt(trace) * 1.001 + 1.0),
            "width": int(width),
            "iteration": 0,
            "basis": encode_array(basis),
        }

    def _iterate(self, state: Mapping[str, Any], product: np.ndarray) -> dict[str, Any]:
        p = state["parameters"]
        iteration = int(state["iteration"]) + 1
        if iteration < int(p["iterations"]):
            return {**state, "iteration": iteration, "basis": encode_array(linalg.orthonormalize(product))}
        eigenvalues, loadings = linalg.rayleigh_ritz(decode_array(state["basis"]), product, int(p["k"]))
        out = {key: value for key, value in state.items() if key != "basis"}
        return {**out, "phase": "scores", "iteration": iteration, "eigenvalues": [float(v) for v in eigenvalues],
                "loadings": encode_array(loadings)}

    def _finish(self, state: Mapping[str, Any], total: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], bool, Result]:
        p = state["parameters"]
        eigenvalues = np.asarray(state["eigenvalues"], np.float64)
        n = int(np.asarray(total["n_samples"]).reshape(-1)[0])
        sums = np.asarray(total["score_sum"], np.float64)
        squares = np.asarray(total["score_sum_squares"], np.float64)
        if n != int(state["num_samples"]) or not np.allclose(squares, eigenvalues, rtol=_EIGEN_CHECK_RTOL, atol=1e-9 * float(state["trace"])):
            raise InputError(
                f"pca: the sites' scores ({n} samples, sums of squares {squares.tolist()}) do not match the counts round "
                f"({state['num_samples']} samples) and the eigenvalues {eigenvalues.tolist()}; a site's data changed during the job"
            )
        scale = np.sqrt(np.where(eigenvalues > 0, eigenvalues, 1.0)) if p["score_scaling"] == "eigenvector" else np.ones_like(eigenvalues)
        mean = sums / n / scale
        variance = np.maximum(squares / n / scale**2 - mean**2, 0.0)
        k = int(p["k"])
        names = [f"PC{c + 1}" for c in range(k)]
        loadings = decode_array(state["loadings"])
        loadings_table = schemas.conform(
            pa.table({"variant_id": pa.array(state["variant_ids"], pa.string()),
                      **{name: pa.array(loadings[:, c], pa.float64()) for c, name in enumerate(names)}}),
            "pca_loadings", source="pca loadings",
        )
        num_variants = len(state["variant_ids"])
        trace = float(state["trace"])
        eigen_table = schemas.conform(
            pa.table({
                "component": pa.array(names, pa.string()),
                "eigenvalue": pa.array(eigenvalues, pa.float64()),
                "grm_eigenvalue": pa.array(eigenvalues / num_variants, pa.float64()),
                "variance_explained": pa.array(eigenvalues / trace if trace > 0 else np.zeros(k), pa.float64()),
            }),
            "pca_eigenvalues", source="pca eigenvalues",
        )
        score_moments = {"scaling": p["score_scaling"], "mean": mean.tolist(), "sd": np.sqrt(variance).tolist()}
        final = {**state, "phase": "done", "score_moments": score_moments}
        summary = {
            "analysis": self.name,
            "num_sites": int(state["num_sites"]),
            "num_samples": n,
            "parameters": dict(p),
            "variant_set": dict(state["selection"]),
            "iterations": int(state["iteration"]),
            "width": int(state["width"]),
            "eigenvalues": eigenvalues.tolist(),
            "variance_explained": (eigenvalues / trace).tolist() if trace > 0 else [0.0] * k,
            "total_variance": trace,
            "scores": score_moments,
            "disclosure": (
                "round 0 revealed which variant IDs each site holds above its minimum minor allele count; round 1 the summed "
                "genotype counts; later rounds only sums over the sites of G_s^T G_s V for a public basis V and of the "
                "per-component score sums and squares; sample scores stay at the sites"
            ),
            "schemas": {name: schemas.load(name).version for name in ("pca_loadings", "pca_eigenvalues", "pca_scores")},
        }
        return final, True, Result(summary=summary, tables={"pca_loadings": loadings_table, "pca_eigenvalues": eigen_table})


PCA = Pca()
