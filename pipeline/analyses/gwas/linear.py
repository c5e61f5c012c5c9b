"""The linear model's round: per-variant sufficient statistics, and the pooled OLS fit.

In its one round (the regression phase's round 2, or 3 after the HWE round) every site
returns, per variant, the packed ``X'X``, ``X'y``, ``y'y`` and ``n`` over its complete
samples with a called genotype (:func:`pipeline.stats.glm.linear_statistics`, standardized covariates and phenotype,
hard calls or dosages: :mod:`~pipeline.analyses.gwas.site_data`),
plus 1 where its own minor allele count is non-zero and below its policy minimum: there
it sends zeros instead of its statistics, as for a variant it does not hold (a small
cell is left out of the variant's sums, not the variant out of the results; see
:mod:`~pipeline.analyses.gwas.outputs`). The coordinator solves every variant's normal
equations from the sums in float64 (:func:`pipeline.stats.glm.linear_fit`): the OLS
pooled over the sites that were not left out, then scales the genotype's effect back to
the phenotype's units.

Bytes linear in k: a variant without a missing call at any site, typed by every site and
left out by none (the census' ``n_missing``, ``n_not_typed`` and ``n_sites_left_out`` all 0:
public, over every sample of the sites, so also none among the complete cases) is a
*short-form candidate*. Its covariate block ``[C'C, C'y, y'y]`` over the called samples is
then the site's whole covariate block, the same for every such variant, so a site sends
that block once (``covariate_*``, computed as the statistics of an all-called monomorphic
variant: bit for bit the entries a full block carries) and per variant only ``C'g``,
``g'g`` (``genotype_xtx``), ``g'y`` (``genotype_xty``) and ``n`` (``genotype_n``): k + 3
values instead of (k+1)(k+2)/2 + k + 4. A site's own small cell is only known over its
complete cases, so the moments round carries per candidate a 0/1 flag, 1 where the site
would not contribute every complete sample (it lacks the variant, leaves it out, or has a
missing value): a candidate no site flagged is sent short, the others as full blocks
(:func:`published_short_form`). The coordinator assembles each short variant's packed
``X'X`` from the summed covariate block and its own entries (:func:`assembled_statistics`):
the same ring sums as the full block, so the fit is bit for bit today's. What the short
form releases is a subset of the full block's (its genotype entries, and the covariate
block the full block repeated per variant); the flags sum to the sites that do not
contribute a variant, published anyway (census ``n_sites_typed``, ``n_sites_left_out``).
With privacy, or without the census' counts, every variant gets the full block.

With privacy terms (:mod:`~pipeline.analyses.gwas.privacy`) a site sends only ``xtx``,
``xty`` and ``yty`` (``n`` is ``xtx``'s intercept entry, and no ``below_min`` flag: it
would depend on one person), rounded to the noise's scale bits, plus its noise. The
coordinator fits the noisy sums (:func:`noisy_linear_fit`): a variant whose noisy
``X'X`` is not positive definite or whose residual sum of squares is not positive is
``NOT_TESTED``, and the standard error adds the noise's first-order variance to the
sampling variance, so the tests account for the noise instead of mistaking it for signal.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipeline.analyses.census import below_minimum
from pipeline.analyses.gwas.outputs import (
    VariantFits,
    check_variant_sums,
    regression_result,
)
from pipeline.analyses.gwas.privacy import add_noise, noise_sd, noisy_real
from pipeline.analyses.gwas.site_data import SiteData, complete_calls
from pipeline.analyses.gwas.spec import (
    MAX_SCALE_BITS,
    MIN_SCALE_BITS,
    plan_regression_layout,
)
from pipeline.analyses.gwas.state import RegressionState
from pipeline.analyses.protocol import Result, SiteContext
from pipeline.dataset import Dataset
from pipeline.encoding import Count, Declaration, Layout, Real
from pipeline.errors import ProtocolError
from pipeline.privacy import secret_generator
from pipeline.stats import glm

__all__ = ["NOISY_FIELDS", "PASS_FIELDS", "PHENOTYPE_FIELDS", "SHORT_FORM_FLAGS", "assembled_statistics",
           "linear_fits", "linear_layout", "linear_result", "linear_site_statistics", "noisy_linear_fit", "published_short_form",
           "short_form_candidates", "short_form_declarations", "site_short_form_flags", "split_phenotypes"]

NOISY_FIELDS = ("xtx", "xty", "yty")
"""What a site sends in the statistics round with privacy."""
PASS_FIELDS = ("xtx", "n", "below_min", "genotype_xtx", "genotype_n", "covariate_xtx", "covariate_n")
"""The statistics round's fields that do not depend on the phenotype (several phenotypes' pass sends them once)."""
PHENOTYPE_FIELDS = ("xty", "yty", "genotype_xty", "covariate_xty", "covariate_yty")
"""The statistics round's fields of each phenotype (axis 1 of a pass's arrays)."""
SHORT_FORM_FLAGS = "short_form_flags"
"""The moments round's field: per short-form candidate, sites that would not contribute every complete sample."""
SHORT_FORM = True
"""Off: every variant gets the full block (the reference the short form is tested against)."""


def short_form_candidates(state: RegressionState) -> np.ndarray:
    """(variants,) bool: the census says every site typed it with no missing call and left it out nowhere.

    Only for an exact linear job whose census handed its counts over; the census' mask is
    over its QC-passing variants, so the ancestry-cluster HWE round's withheld ones are dropped.
    """
    v = len(state.variant_ids)
    p = state.parameters
    mask = state.complete_mask
    if not SHORT_FORM or p.model != "linear" or p.privacy is not None or mask is None:
        return np.zeros(v, bool)
    if mask.shape != (v,):
        raise ProtocolError(f"gwas: the census' short-form mask covers {mask.size} variants, the job tests {v}")
    return mask


def short_form_declarations(state: RegressionState) -> list[Declaration]:
    """The moments round's flag per short-form candidate (none without candidates)."""
    count = int(short_form_candidates(state).sum())
    return [Count(SHORT_FORM_FLAGS, (count,), 1)] if count else []


def _contributes_every_sample(calls: np.ndarray, site: SiteContext) -> np.ndarray:
    """(rows,) bool: no missing value among the complete samples and no small cell (the short form's per-site rule).

    The one rule of both rounds (the flags, then which short rows a site sends), so they never disagree.
    """
    values = glm.genotype_rows(calls)
    complete = np.all(values >= 0, axis=1)
    called = np.full(values.shape[0], values.shape[1], np.int64)
    alt = np.where(values >= 0, values, 0).sum(axis=1, dtype=np.float64)
    return complete & (below_minimum(called, alt, site) == 0)


def site_short_form_flags(state: RegressionState, dataset: Dataset, site: SiteContext, data: SiteData
                          ) -> dict[str, np.ndarray]:
    """1 per short-form candidate the site lacks, leaves out, or has a missing value of among its complete samples."""
    candidates = short_form_candidates(state)
    if not candidates.any():
        return {}
    slot = np.cumsum(candidates) - 1
    flags = np.ones(int(candidates.sum()), np.int64)
    for rows, calls in complete_calls(state, dataset, data, site.cache):
        chosen = candidates[rows]
        if chosen.any():
            flags[slot[rows[chosen]]] = ~_contributes_every_sample(calls[chosen], site)
    return {SHORT_FORM_FLAGS: flags}


def published_short_form(state: RegressionState, total: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """(variants,) bool: the candidates no site flagged, sent short in the statistics round; ``None`` without candidates."""
    candidates = short_form_candidates(state)
    if not candidates.any():
        return None
    short = candidates.copy()
    short[candidates] = np.asarray(total[SHORT_FORM_FLAGS], np.int64) == 0
    return short


def _short_form(state: RegressionState) -> np.ndarray:
    """(variants,) bool: the variants the statistics round sends short (published with the moments)."""
    short = None if state.moments is None else state.moments.short_form
    return np.zeros(len(state.variant_ids), bool) if short is None else np.asarray(short, bool)


def linear_layout(state: RegressionState) -> Layout:
    """``xtx``, ``xty``, ``yty`` (fixed point, bounded by n_max * max_abs_z^2), ``n`` and ``below_min`` per full variant;
    per short variant ``genotype_xtx``, ``genotype_xty``, ``genotype_n``, and once the ``covariate_*`` block.

    The genotype's entries (``C'g``, ``g'g``, ``g'y``) are reals already (products with
    standardized values), so dosages change no field: only the ``n`` fields and ``below_min`` are counts.
    Every real field has the same bound, hence the same encoding: a short variant's sums are
    the ring sums its full block would carry.

    With privacy only ``xtx``, ``xty``, ``yty`` of every variant, at the noise's scale bits, with room for the site's noise.
    """
    p = state.parameters
    v, k = len(state.variant_ids), state.num_coefficients
    bound = p.statistic_bound
    noise = state.statistics_noise
    hint = "lower max_samples_per_site or max_abs_z"
    if noise is not None:
        shapes = {"xtx": (v, glm.packed_size(k)), "xty": (v, k + 1), "yty": (v,)}
        values = sum(int(np.prod(shape)) for shape in shapes.values())
        return plan_regression_layout([noisy_real(name, shape, bound, noise, values) for name, shape in shapes.items()],
                                      state.num_participants, hint=hint)

    def real(name: str, shape: tuple[int, ...]) -> Real:
        return Real(name, shape, bound, min_scale_bits=MIN_SCALE_BITS, max_scale_bits=MAX_SCALE_BITS)

    short = int(_short_form(state).sum())
    full = v - short
    declarations: list[Declaration] = [
        real("xtx", (full, glm.packed_size(k))), real("xty", (full, k + 1)), real("yty", (full,)),
        Count("n", (full,), p.max_samples_per_site), Count("below_min", (full,), 1)]
    if short:
        declarations += [real("genotype_xtx", (short, k + 1)), real("genotype_xty", (short,)),
                         Count("genotype_n", (short,), p.max_samples_per_site),
                         real("covariate_xtx", (1, k * (k + 1) // 2)), real("covariate_xty", (1, k)),
                         real("covariate_yty", (1,)), Count("covariate_n", (1,), p.max_samples_per_site)]
    return plan_regression_layout(declarations, state.num_participants, hint=hint)


def _statistics(calls: np.ndarray, covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`pipeline.stats.glm.linear_statistics`; with several phenotypes, the others ride along as covariate
    columns: one product with the genotypes (:func:`split_phenotypes`)."""
    if phenotype.ndim == 1:
        return glm.linear_statistics(calls, covariates, phenotype)
    return split_phenotypes(glm.linear_statistics(calls, np.column_stack([covariates, phenotype[:, 1:]]), phenotype[:, 0]),
                            covariates.shape[1], phenotype.shape[1])


def linear_site_statistics(state: RegressionState, dataset: Dataset, site: SiteContext, data: SiteData,
                           covariates: np.ndarray, phenotype: np.ndarray) -> dict[str, np.ndarray]:
    """The site's contribution to the statistics round (zeros for the variants it does not hold); with privacy, noisy sums.

    ``phenotype`` may be (samples, P): several phenotypes of the same complete samples in
    one pass over the genotype rows (their ``X'X``, ``n`` and flags are the same), giving
    the :data:`PHENOTYPE_FIELDS` a phenotype axis 1, e.g. ``xty`` (variants, P, k + 1) and
    ``yty`` (variants, P) (:func:`split_phenotypes`).

    Exact sums: a variant where the site's own minor allele count is a small cell
    (:func:`~pipeline.analyses.census.below_minimum`) is left out, zeros as for a variant it
    does not hold, and only its flag is sent, so the cell never enters a sum. With privacy
    nothing is left out and no flag is sent: the noise protects small cells, and a flag
    would depend on one person. A short variant (module docstring) carries only its
    genotype's entries, the site's covariate block once; the rows are computed as for a full block.
    """
    v, k = len(state.variant_ids), covariates.shape[1]
    per = phenotype.shape[1:]
    short = _short_form(state)
    slot = np.where(short, np.cumsum(short) - 1, np.cumsum(~short) - 1)
    full_count, short_count = v - int(short.sum()), int(short.sum())
    out = {"xtx": np.zeros((full_count, glm.packed_size(k))), "xty": np.zeros((full_count, *per, k + 1)),
           "yty": np.zeros((full_count, *per)), "n": np.zeros(full_count, np.int64),
           "below_min": np.zeros(full_count, np.int64)}
    if short_count:
        out.update(genotype_xtx=np.zeros((short_count, k + 1)), genotype_xty=np.zeros((short_count, *per)),
                   genotype_n=np.zeros(short_count, np.int64))
        block = _statistics(np.zeros((1, covariates.shape[0]), np.int8), covariates, phenotype)  # all called, g = 0
        cc = k * (k + 1) // 2
        out.update(covariate_xtx=block["xtx"][:, :cc], covariate_xty=block["xty"][..., :k], covariate_yty=block["yty"],
                   covariate_n=np.rint(block["n"]).astype(np.int64))
    noise = state.statistics_noise
    for rows, calls in complete_calls(state, dataset, data, site.cache):
        stats = _statistics(calls, covariates, phenotype)
        called = np.rint(stats["n"]).astype(np.int64)
        left_out = np.zeros(len(rows), bool) if noise is not None else below_minimum(called, stats["alt_count"], site) == 1
        full = ~short[rows]
        kept = full & ~left_out
        out["below_min"][slot[rows[full]]] = left_out[full]
        for name in ("xtx", "xty", "yty"):
            out[name][slot[rows[kept]]] = stats[name][kept]
        out["n"][slot[rows[kept]]] = called[kept]
        if short_count:  # a short row the site cannot send whole stays zero: the coordinator refuses its sum
            sent = ~full
            sent[sent] = _contributes_every_sample(calls[sent], site)
            where = slot[rows[sent]]
            out["genotype_xtx"][where] = stats["xtx"][sent][:, -(k + 1):]
            out["genotype_xty"][where] = stats["xty"][sent][..., k]
            out["genotype_n"][where] = called[sent]
    if noise is not None:
        return add_noise({name: out[name] for name in NOISY_FIELDS}, noise, rng=secret_generator())
    return out


def split_phenotypes(stats: Mapping[str, np.ndarray], k: int, count: int) -> dict[str, np.ndarray]:
    """Each phenotype's statistics from one fit whose covariates were ``[C, y_2..y_P]`` and phenotype ``y_1``.

    The packed ``X'X`` of ``[C, y_2..y_P, g]`` and its ``X'y_1``, ``y_1'y_1`` hold every
    phenotype's ``[C, g]'y_j`` and ``y_j'y_j``; ``[C, g]'[C, g]`` is the same for all.

    Args:
        stats: :func:`pipeline.stats.glm.linear_statistics` over ``k + count - 1`` covariate columns.
        k: the columns of ``C`` (intercept first).
        count: P, the phenotypes.

    Returns:
        ``xtx`` (variants, packed(k)), ``xty`` (variants, P, k + 1), ``yty`` (variants, P), and ``n``, ``alt_count``.
    """
    wide = k + count - 1
    full = glm.unpack_symmetric(stats["xtx"], wide)  # over [C, y_2..y_P, g]
    chosen = [*range(k), wide]  # C and g
    extra = np.arange(k, wide)
    xty = np.concatenate([np.asarray(stats["xty"])[:, None, chosen],
                          np.moveaxis(full[:, chosen][:, :, extra], 2, 1)], axis=1)
    yty = np.column_stack([stats["yty"], full[:, extra, extra]])
    return {"xtx": glm.pack_symmetric(full[:, chosen][:, :, chosen], k), "xty": xty, "yty": yty,
            "n": stats["n"], "alt_count": stats["alt_count"]}


def noisy_linear_fit(xtx: np.ndarray, xty: np.ndarray, yty: np.ndarray, noise_variance: float) -> glm.LinearFit:
    """OLS of every variant from noisy sums, each entry carrying independent noise of ``noise_variance``.

    ``n`` is ``xtx``'s intercept entry. A variant whose ``X'X`` is not positive definite
    (or not finite), or whose residual sum of squares is not positive, gets
    ``NOT_TESTED``: its estimate would be an artefact of the noise. The genotype's
    ``beta = e_g' A^-1 b`` moves by ``w' (db - dA beta)`` (``w = A^-1 e_g``) under noise
    ``dA``, ``db``: with iid noise per packed entry its variance is
    ``tau^2 (|w|^2 + sum_(i<=j) (w_i b_j + w_j b_i)^2)`` (halved terms on the diagonal),
    added to the sampling variance. First order in the noise: where the noise is not small
    beside ``X'X``, the standard error is too small.
    """
    xtx, xty, yty = (np.asarray(a, np.float64) for a in (xtx, xty, yty))
    k = xty.shape[1] - 1
    matrix = glm.unpack_symmetric(xtx, k)
    finite = np.all(np.isfinite(xtx), axis=1) & np.all(np.isfinite(xty), axis=1) & np.isfinite(yty)
    eye = np.eye(k + 1)
    matrix[~finite] = eye
    positive = finite & (np.linalg.eigvalsh(matrix)[:, 0] > 0)
    # Identity systems where the noisy one is not positive definite: the batched solves never fail.
    xtx = np.where(positive[:, None], xtx, glm.pack_symmetric(eye, k))
    xty = np.where(positive[:, None], xty, 0.0)
    yty = np.where(positive, yty, 1.0)
    matrix[~positive] = eye
    n = xtx[:, 0]
    fit = glm.linear_fit(xtx, xty, yty, n)
    inverse = np.linalg.inv(matrix)
    coefficients = np.einsum("vij,vj->vi", inverse, xty)
    rss = yty - np.einsum("vi,vi->v", coefficients, xty)
    testable = positive & (rss > 0)
    w = inverse[:, :, -1]
    rows, cols = glm.packed_index(k)
    slope = w[:, rows] * coefficients[:, cols] + w[:, cols] * coefficients[:, rows]
    slope = np.where(rows == cols, 0.5 * slope, slope)
    noise = noise_variance * (np.sum(w**2, axis=1) + np.sum(slope**2, axis=1))
    status = np.where(testable, fit.status, glm.STATUS.index("NOT_TESTED")).astype(np.int8)
    ok = status == 0
    with np.errstate(invalid="ignore"):
        se = np.sqrt(fit.standard_error**2 + noise)
        t = fit.beta / se
    p = glm.t_test_p(t, fit.df)
    nan = np.where(ok, 1.0, np.nan)
    return glm.LinearFit(fit.beta * nan, se * nan, t * nan, p * nan, fit.df, status)


def linear_result(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> Result:
    """The pooled OLS of every variant from the round's sums, in the phenotype's units (noisy ones with privacy)."""
    return regression_result(state, linear_fits(state, total, num_sites), num_sites, layout=linear_layout(state))


def linear_fits(state: RegressionState, total: Mapping[str, np.ndarray], num_sites: int) -> VariantFits:
    """Every variant's OLS fit from the round's sums (checked against what honest sites can send; noisy with privacy).

    Raises:
        ProtocolError: sums no honest sites can give (:func:`~.outputs.check_variant_sums`, exact sums only).
    """
    noise = state.statistics_noise
    if noise is not None:
        return _noisy_fits(state, total, noise_sd(noise, num_sites) ** 2)
    total = assembled_statistics(state, total)
    n = total["n"]
    fit = glm.linear_fit(total["xtx"], total["xty"], total["yty"], n)
    scale = float(state.standardization.sd[-1])
    k = state.num_coefficients
    alt = total["xtx"][:, k * (k + 1) // 2]
    check_variant_sums(state, n, alt, total["below_min"], num_sites)
    return VariantFits(fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value, fit.status, n, alt,
                       total["below_min"])


def assembled_statistics(state: RegressionState, total: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every variant's summed ``xtx``, ``xty``, ``yty``, ``n`` and ``below_min``, short variants' from the covariate block.

    A short variant's covariate entries are the summed ``covariate_*`` block, its genotype's
    its own: the values its full block would have summed to, bit for bit (no site left it
    out or misses a call, as the moments round's flags said).

    Raises:
        ProtocolError: a short variant's ``n`` is not the covariate block's (a site summed one but not the other).
    """
    short = _short_form(state)
    v, k = len(state.variant_ids), state.num_coefficients
    full = ~short
    xtx = np.zeros((v, glm.packed_size(k)))
    xty = np.zeros((v, k + 1))
    yty = np.zeros(v)
    n = np.zeros(v, np.int64)
    below_min = np.zeros(v, np.int64)
    xtx[full], xty[full], yty[full] = total["xtx"], total["xty"], total["yty"]
    n[full], below_min[full] = total["n"], total["below_min"]
    if short.any():
        count = np.asarray(total["genotype_n"], np.int64)
        expected = int(np.asarray(total["covariate_n"]).reshape(-1)[0])
        wrong = np.flatnonzero(count != expected)
        if wrong.size:
            variant = state.variant_ids[int(np.flatnonzero(short)[wrong[0]])]
            raise ProtocolError(f"gwas: variant {variant} was summed over {count[wrong[0]]} samples, the covariate block "
                                f"over {expected}: the sites that sent one did not send the other, so the round is refused")
        cc = k * (k + 1) // 2
        xtx[short, :cc] = np.asarray(total["covariate_xtx"]).reshape(-1)
        xtx[short, cc:] = total["genotype_xtx"]
        xty[short, :k] = np.asarray(total["covariate_xty"]).reshape(-1)
        xty[short, k] = total["genotype_xty"]
        yty[short] = np.asarray(total["covariate_yty"]).reshape(-1)[0]
        n[short] = count
    return {"xtx": xtx, "xty": xty, "yty": yty, "n": n, "below_min": below_min}


def _noisy_fits(state: RegressionState, total: Mapping[str, np.ndarray], noise_variance: float) -> VariantFits:
    """:func:`linear_fits` from noisy sums: ``n`` and the ALT count read off ``xtx``, clipped to what they can be."""
    fit = noisy_linear_fit(total["xtx"], total["xty"], total["yty"], noise_variance)
    scale = float(state.standardization.sd[-1])
    k = state.num_coefficients
    xtx = np.asarray(total["xtx"], np.float64)
    n = np.rint(np.clip(xtx[:, 0], 0.0, None)).astype(np.int64)
    alt = np.clip(xtx[:, k * (k + 1) // 2], 0.0, 2.0 * n)
    return VariantFits(fit.beta * scale, fit.standard_error * scale, fit.t_statistic, fit.p_value, fit.status, n, alt,
                       np.zeros(len(n), np.int64))
