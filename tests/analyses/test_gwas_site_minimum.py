"""A site below its own minimum allele count for a variant is left out of that variant, not the variant out of the job.

Three sites; site ``b``'s policy has ``min_allele_count: 5``. At several variants ``b``
holds 6 minor alleles over all its samples (so the census and its key round count it as
any site) but only 1 or 2 among its complete samples, the ones the regression fits on:
there ``b`` is below its own minimum and must send zeros. The references are pooled fits
computed directly on the other sites' individuals (numpy lstsq, a textbook IRLS loop, a
logistf-style Firth loop: :mod:`tests.analyses.gwas_support`), never the federated sums.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyses import SiteContext
from pipeline.analyses.gwas import GWAS, GwasParameters
from pipeline.analyses.gwas.outputs import (
    check_variant_sums,
    withheld_below_site_minimum,
)
from pipeline.analyses.gwas.privacy import noise_sd
from pipeline.analyses.gwas.regression import moments_round
from pipeline.dataset import open_dataset
from pipeline.errors import ProtocolError
from pipeline.federation.in_memory import default_context, run_in_memory
from tests.analyses import gwas_support as gs

IDS = gs.rs.variant_ids([100, 200, 300, 400, 500, 600, 700])
COMMON, LOW_ALT, ONE_ALT, LOW_REF, ONLY_B, THIN_REST, SEPARATED = IDS
"""COMMON: no small cell. LOW_ALT, ONE_ALT, LOW_REF: b's complete samples hold 2, 1 and 2 (REF) minor alleles.
ONLY_B: held by b alone (so nothing remains). THIN_REST: b left out, and a and c hold 2 minor alleles together
(below the job's min_allele_count of 3). SEPARATED: the ALT allele is among a's and c's cases only; b's two
complete carriers are controls (had b entered, there would be no separation)."""
FLAGGED = (LOW_ALT, ONE_ALT, LOW_REF, SEPARATED)
"""Left out at b and published from a and c."""
WITHHELD = (ONLY_B, THIN_REST)
"""Left out at b, and too little remains."""
HIDDEN = np.arange(4)
"""b's samples 0..3 lack ``age``: carriers there count in the census, not in the regression."""
B_CARRIERS = {LOW_ALT: [10, 11], ONE_ALT: [10], LOW_REF: [10, 11], ONLY_B: [10, 11], THIN_REST: [10, 11],
              SEPARATED: [10, 11]}
"""b's complete carriers of the minor allele per small-cell variant (samples 10 and 11 are controls)."""

SPEC = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 3}
LINEAR = {**SPEC, "model": "linear", "phenotype": "quant_trait"}
LOGISTIC = {**SPEC, "model": "logistic", "phenotype": "binary_trait"}


def _b_calls(n: int, carriers: dict[str, list[int]], rng: np.random.Generator) -> np.ndarray:
    calls = np.zeros((len(IDS), n), np.int8)
    for j, variant in enumerate(IDS):
        if variant == COMMON:
            calls[j] = rng.binomial(2, 0.3, n)
            continue
        cell = [*HIDDEN, *carriers[variant]]  # minor count 4 + len(carriers) >= 5 over all samples
        if variant == LOW_REF:
            calls[j] = 2
            calls[j, cell] = 1
        else:
            calls[j, cell] = 1
    return calls


def _write_site(root: Path, name: str, ids: list[str], calls: np.ndarray, columns: dict[str, np.ndarray]) -> Path:
    path = gs.rs.write_dataset(root / name, ids, calls, sample_prefix=name)
    gs.write_phenotypes(path, columns)
    return path


def make_sites(root: Path, *, b_carriers: dict[str, list[int]] | None = None) -> dict[str, gs.Site]:
    """Sites a, b, c (see the module docstring); ``b_carriers`` moves b's complete small-cell carriers."""
    rng = np.random.default_rng(11)
    sites = {}
    for name, n in (("a", 120), ("b", 100), ("c", 90)):
        age = rng.normal(50, 10, n).round()
        sex = rng.integers(1, 3, n).astype(np.float64)
        binary = (rng.random(n) < 0.2 + 0.012 * (age - 40)).astype(np.float64)
        if name == "b":
            binary[[10, 11]] = 0.0
            ids = list(IDS)
            calls = _b_calls(n, {**B_CARRIERS, **(b_carriers or {})}, rng)
            age[HIDDEN] = np.nan
        else:
            ids = [v for v in IDS if v != ONLY_B]
            calls = np.zeros((len(ids), n), np.int8)
            for j, variant in enumerate(ids):
                if variant == THIN_REST:
                    calls[j, :2] = 1 if name == "a" else 0
                elif variant == SEPARATED:
                    calls[j] = np.where(binary == 1, rng.binomial(1, 0.4, n), 0)
                else:
                    calls[j] = rng.binomial(2, 0.3, n)
            calls[rng.random(calls.shape) < 0.03] = -1
        dosage = calls[ids.index(COMMON)].clip(0)
        quant = 0.02 * age - 0.3 * sex + 0.4 * dosage + rng.normal(0, 1, n)
        path = _write_site(root, name, ids, calls, {"age": age, "sex": sex, "quant_trait": quant, "binary_trait": binary})
        sites[name] = gs.Site(ids, calls, age, sex, quant, binary, path)
    return sites


def _contexts() -> dict[str, SiteContext]:
    return {"a": default_context("a"), "c": default_context("c"),
            "b": SiteContext(name="b", min_samples=1, min_allele_count=5, share_variant_keys=True)}


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    return make_sites(tmp_path_factory.mktemp("site-minimum"))


@pytest.fixture(scope="module")
def linear_run(sites):
    return run_in_memory(GWAS, LINEAR, gs.dataset_paths(sites), secure=True, seed=4, contexts=_contexts())


@pytest.fixture(scope="module")
def logistic_run(sites):
    return run_in_memory(GWAS, LOGISTIC, gs.dataset_paths(sites), secure=True, seed=4, contexts=_contexts())


def _published(run) -> dict[str, dict]:
    return {row["variant_id"]: row for row in run.result.tables["gwas"].to_pylist()}


def _status(run) -> dict[str, dict]:
    return {row["variant_id"]: row for row in run.result.tables["gwas_status"].to_pylist()}


def _without_b(sites: dict[str, gs.Site]) -> dict[str, gs.Site]:
    return {name: site for name, site in sites.items() if name != "b"}


def test_site_minimum__the_cohort_has_small_cells_only_among_b_complete_samples(sites):
    b = sites["b"]
    complete = np.isfinite(b.age)
    for variant in (*FLAGGED, *WITHHELD):
        g = b.calls[b.ids.index(variant)].astype(int)
        minor = min(g.sum(), 2 * g.size - g.sum())
        minor_complete = min(g[complete].sum(), 2 * complete.sum() - g[complete].sum())
        assert minor >= 5 and 0 < minor_complete < 5, variant


def test_site_minimum__linear_flagged_variants_equal_pooled_ols_of_the_other_sites(sites, linear_run):
    published, status = _published(linear_run), _status(linear_run)
    assert set(status) == set(IDS)  # every variant passed the census: b's cells are not small over all its samples
    for variant in FLAGGED:
        row = published[variant]
        assert status[variant]["status"] == "OK" and status[variant]["n_sites_left_out"] == 1
        x, y = gs.pooled_design(_without_b(sites), variant, "quant_trait")
        beta, se = gs.pooled_ols(x, y)
        assert row["n"] == len(y)
        assert row["beta"] == pytest.approx(beta, rel=1e-6)
        assert row["standard_error"] == pytest.approx(se, rel=1e-6)
        assert row["effect_allele_frequency"] == pytest.approx(x[:, -1].sum() / (2 * len(y)), rel=1e-9)
    x, y = gs.pooled_design(sites, COMMON, "quant_trait")  # no small cell: every site's samples
    assert status[COMMON]["n_sites_left_out"] == 0 and published[COMMON]["n"] == len(y)
    assert published[COMMON]["beta"] == pytest.approx(gs.pooled_ols(x, y)[0], rel=1e-6)


def test_site_minimum__too_little_left_is_withheld_and_says_so(sites, linear_run):
    published, status = _published(linear_run), _status(linear_run)
    for variant in WITHHELD:
        assert variant not in published
        assert status[variant]["status"] == "BELOW_SITE_MIN_ALLELE_COUNT" and status[variant]["n_sites_left_out"] == 1
        assert status[variant]["statistic"] is None
    variants = linear_run.result.summary["variants"]
    assert variants["with_sites_left_out"] == len(FLAGGED) + len(WITHHELD)
    assert variants["published"] == len(IDS) - len(WITHHELD)
    assert variants["status"]["BELOW_SITE_MIN_ALLELE_COUNT"] == len(WITHHELD)


def test_site_minimum__b_sends_zeros_for_its_small_cells_in_every_round(sites, logistic_run, linear_run):
    """The attack-minded check at the source: b's contribution at a small cell is a not-held variant's, plus the flag."""
    dataset = open_dataset(sites["b"].path)
    b = _contexts()["b"]
    for run in (linear_run, logistic_run):
        rounds = [(r, s) for r, s in run.states if s.phase == GWAS.phase_named("gwas") and r > s.offset + moments_round(s.inner.parameters)]
        assert rounds
        for round_index, state in rounds:
            inner = state.inner
            out = GWAS.site_step(state, round_index, dataset, b)
            if inner.firth is not None:
                active = inner.firth.index[inner.firth.active]
            elif inner.newton is not None:
                active = inner.newton.active
            else:
                active = np.arange(len(inner.variant_ids))
            position = {inner.variant_ids[v]: i for i, v in enumerate(active)}
            for variant in (*FLAGGED, *WITHHELD):
                if variant not in position:
                    continue
                i = position[variant]
                for name, value in out.items():
                    expected = 1 if name == "below_min" else 0
                    assert np.all(np.asarray(value)[i] == expected), (round_index, variant, name)
            if COMMON in position:
                assert "below_min" not in out or out["below_min"][position[COMMON]] == 0


def test_site_minimum__published_values_do_not_move_with_b_small_cell(tmp_path, linear_run):
    """Moving or shrinking b's complete carriers (still a small cell) leaves every published value as it was."""
    moved = make_sites(tmp_path, b_carriers={LOW_ALT: [20], ONE_ALT: [12], LOW_REF: [30, 40], SEPARATED: [12, 13]})
    assert not np.array_equal(moved["b"].calls, make_sites(tmp_path / "again")["b"].calls)
    run = run_in_memory(GWAS, LINEAR, gs.dataset_paths(moved), secure=True, seed=4, contexts=_contexts())
    before, after = _published(linear_run), _published(run)
    for variant in FLAGGED:
        assert after[variant] == before[variant]
    assert _status(run) == _status(linear_run)


def test_site_minimum__logistic_and_firth_equal_pooled_fits_of_the_other_sites(sites, logistic_run):
    published, status = _published(logistic_run), _status(logistic_run)
    for variant in (LOW_ALT, ONE_ALT, LOW_REF):
        assert status[variant]["status"] == "OK" and status[variant]["n_sites_left_out"] == 1
        x, y = gs.pooled_design(_without_b(sites), variant, "binary_trait")
        beta, se = gs.pooled_irls(x, y)
        assert published[variant]["n"] == len(y)
        assert published[variant]["beta"] == pytest.approx(beta, rel=1e-5)
        assert published[variant]["standard_error"] == pytest.approx(se, rel=1e-5)
    # Separated without b (the ALT allele among a's and c's cases only): Firth's refit of a and c alone.
    assert status[SEPARATED]["firth"] and status[SEPARATED]["status"] == "OK"
    assert status[SEPARATED]["n_sites_left_out"] == 1
    x, y = gs.pooled_design(_without_b(sites), SEPARATED, "binary_trait")
    beta, se = gs.pooled_firth(x, y)
    assert published[SEPARATED]["beta"] == pytest.approx(beta, rel=1e-5)
    assert published[SEPARATED]["standard_error"] == pytest.approx(se, rel=1e-5)
    for variant in WITHHELD:
        assert status[variant]["status"] == "BELOW_SITE_MIN_ALLELE_COUNT" and variant not in published


def test_site_minimum__sums_no_honest_sites_give_are_refused(linear_run):
    state = linear_run.states[-1][1].inner
    v = len(state.variant_ids)
    n = np.zeros(v, np.int64)
    check_variant_sums(state, n, n.astype(float), np.full(v, 3, np.int64), 3)  # every site left out: nothing summed
    with pytest.raises(ProtocolError, match=f"variant {state.variant_ids[0]}: the summed n is 1, expected 0 where all 3"):
        check_variant_sums(state, n + 1, n.astype(float), np.full(v, 3, np.int64), 3)
    with pytest.raises(ProtocolError, match="below_min is 4"):
        check_variant_sums(state, n, n.astype(float), np.full(v, 4, np.int64), 3)


def test_site_minimum__withholding_rule():
    n = np.array([0, 50, 50, 50, 50, 50])
    alt = np.array([0, 2, 98, 3, 2, 0])
    below = np.array([1, 1, 1, 1, 0, 1])
    # empty; 2 ALT; 2 REF; enough; no site left out (the census' threshold applied); CONST_ALLELE is the fit's to say
    expected = [True, True, True, False, False, True]
    assert withheld_below_site_minimum(n, alt, below, 3).tolist() == expected
    assert withheld_below_site_minimum(n, alt, below, 0).tolist() == [True, False, False, False, False, False]


def test_site_minimum__privacy_leaves_nothing_out(sites, linear_run):
    """With differential privacy no flag is sent and nothing is left out: b's statistics enter the sums (the noise
    protects small cells, and a flag would depend on one person)."""
    spec = {**LINEAR, "privacy": {"epsilon": 100.0, "delta": 1e-6}, "max_abs_z": 4}
    round_index, exact = linear_run.states[-1]
    noisy = dataclasses.replace(exact, inner=dataclasses.replace(exact.inner, parameters=GwasParameters.parse(spec),
                                                                 census_variants=len(IDS)))
    out = GWAS.site_step(noisy, round_index, open_dataset(sites["b"].path), _contexts()["b"])
    assert set(out) == {"xtx", "xty", "yty"}
    complete = int(np.isfinite(sites["b"].age).sum())
    rows = [exact.inner.variant_ids.index(v) for v in (*FLAGGED, *WITHHELD)]
    # n (xtx's intercept entry) at the small cells: b's 96 complete samples plus noise, where an exact job sends 0
    sd = noise_sd(noisy.inner.statistics_noise, 1) / np.sqrt(len(rows))
    assert 4 * sd < complete / 2
    assert np.mean(out["xtx"][rows, 0]) == pytest.approx(complete, abs=4 * sd)
