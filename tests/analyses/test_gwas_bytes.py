"""The linear round's short form: bytes linear in k, results bit for bit those of the full blocks.

Each cohort runs twice through the real secure sum: as the job runs (complete variants
short), and with :data:`pipeline.analyses.gwas.linear.SHORT_FORM` off (every variant a full
block, the previous layout); the tables must be equal, not close.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.analyses import SiteContext
from pipeline.analyses.gwas import GWAS, linear
from pipeline.errors import ProtocolError
from pipeline.federation.in_memory import run_in_memory
from pipeline.stats import glm
from tests.analyses import gwas_support as gs
from tests.benchmarks.gwas_bytes import per_variant
from tests.federation import runtime_support as rs

BASE = {"covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1, "model": "linear"}
NUM_VARIANTS = 10
LEFT_OUT = 2
"""At alpha: 3 ALT alleles over every sample (alpha's minimum), 2 over its complete cases: alpha leaves it out."""


def _cohort(root: Path, *, missing: dict[str, list[int]], dosage_sites: tuple[str, ...] = (), seed: int = 5
            ) -> dict[str, gs.Site]:
    """Three sites typing the same variants; ``missing``: per site, variants with one missing call."""
    rng = np.random.default_rng(seed)
    ids = rs.variant_ids(range(100, 100 + NUM_VARIANTS))
    sites = {}
    for index, (name, n) in enumerate(zip(gs.SITES, (60, 50, 40))):
        frequency = rng.uniform(0.1, 0.5, (NUM_VARIANTS, 1))
        calls = rng.binomial(2, frequency, (NUM_VARIANTS, n)).astype(np.int8)
        age = rng.normal(55 + 3 * index, 10, n).round()
        sex = rng.integers(1, 3, n).astype(np.float64)
        quant = 0.02 * age - 0.3 * sex + 0.4 * calls[0] + rng.normal(0, 1, n)
        quant[[5, 9]] = np.nan
        if name == "alpha":
            calls[LEFT_OUT] = 0
            calls[LEFT_OUT, [1, 2, 5]] = 1  # sample 5 lacks the phenotype
        for j in missing.get(name, []):
            calls[j, 3 + j] = -1
        dosage = None
        if name in dosage_sites:
            dosage = np.clip(np.where(calls >= 0, calls, 1) + rng.normal(0, 0.2, calls.shape), 0, 2)
            dosage = np.where(calls >= 0, np.round(dosage * 64) / 64, np.nan)
            dosage[LEFT_OUT] = calls[LEFT_OUT]
        stored = None if dosage is None else dosage.astype(np.float32)
        path = rs.write_dataset(root / name, ids, calls, sample_prefix=name, chunk_size=4, dosage=stored)
        quant_b = np.where(np.isfinite(quant), 0.5 * quant + rng.normal(0, 1, n), np.nan)
        gs.write_phenotypes(path, {"age": age, "sex": sex, "quant_trait": quant, "quant_b": quant_b,
                                   "binary_trait": (quant > 0).astype(np.float64)})
        sites[name] = gs.Site(ids, calls, age, sex, quant, quant, path, dosage=dosage)
    return sites


def _contexts() -> dict[str, SiteContext]:
    return {name: SiteContext(name=name, min_samples=1, min_allele_count=3 if name == "alpha" else 1,
                              share_variant_keys=True) for name in gs.SITES}


def _run(sites, spec, monkeypatch, *, short: bool):
    monkeypatch.setattr(linear, "SHORT_FORM", short)
    return run_in_memory(GWAS, {**BASE, **spec}, gs.dataset_paths(sites), secure=True, seed=3, contexts=_contexts())


def _statistics_round(run):
    """The linear round's state and layout (the job's last round)."""
    round_index, state = run.states[-1]
    return state, GWAS.layout(state, round_index)


def _short_form(run, phenotype: int | None = None) -> np.ndarray:
    state, _ = _statistics_round(run)
    regression = state.inner if phenotype is None else state.inner.single(phenotype)
    return np.asarray(regression.moments.short_form, bool)


COHORTS = {
    "no_missing": ({}, ()),
    "missing_at_some_variants": ({"beta": [4, 7], "gamma": [7]}, ()),
    "dosages_and_hard_calls": ({"gamma": [6]}, ("alpha", "beta")),
}
SHORT = {  # the variants sent short: every one but those with a missing call or alpha's small cell
    "no_missing": set(range(NUM_VARIANTS)) - {LEFT_OUT},
    "missing_at_some_variants": set(range(NUM_VARIANTS)) - {LEFT_OUT, 4, 7},
    "dosages_and_hard_calls": set(range(NUM_VARIANTS)) - {LEFT_OUT, 6},
}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    return {name: _cohort(tmp_path_factory.mktemp(name), missing=missing, dosage_sites=dosage)
            for name, (missing, dosage) in COHORTS.items()}


@pytest.mark.parametrize("cohort", list(COHORTS))
def test_short_form__tables_equal_the_full_blocks_bit_for_bit(cohorts, cohort):
    with pytest.MonkeyPatch.context() as patch:
        short = _run(cohorts[cohort], {"phenotype": "quant_trait"}, patch, short=True)
        full = _run(cohorts[cohort], {"phenotype": "quant_trait"}, patch, short=False)
    for table in ("gwas", "gwas_status"):
        assert short.result.tables[table].equals(full.result.tables[table]), table
    assert set(np.flatnonzero(_short_form(short)).tolist()) == SHORT[cohort]
    assert _statistics_round(short)[1].size < _statistics_round(full)[1].size
    status = full.result.tables["gwas_status"].to_pylist()
    assert status[LEFT_OUT]["n_sites_left_out"] == 1  # the small cell known only over the complete cases
    beta = full.result.tables["gwas"].column("beta").to_numpy(zero_copy_only=False)
    assert np.isfinite(beta).sum() >= NUM_VARIANTS - 1


def test_short_form__several_phenotypes_in_one_pass_equal_the_full_blocks(cohorts):
    spec = {"phenotypes": ["quant_trait", "quant_b"]}
    with pytest.MonkeyPatch.context() as patch:
        short = _run(cohorts["missing_at_some_variants"], spec, patch, short=True)
        full = _run(cohorts["missing_at_some_variants"], spec, patch, short=False)
    assert short.result.summary["regression_passes"] == [["quant_trait", "quant_b"]]
    for table in ("gwas.quant_trait", "gwas.quant_b", "gwas_status.quant_trait", "gwas_status.quant_b"):
        assert short.result.tables[table].equals(full.result.tables[table]), table
    assert set(np.flatnonzero(_short_form(short, 0)).tolist()) == SHORT["missing_at_some_variants"]


@pytest.mark.parametrize("k", [2, 10, 25])
def test_layout__a_short_variant_costs_k_plus_3_values_a_full_one_the_packed_block(k):
    short, once = per_variant(k, short=True)
    full, _ = per_variant(k, short=False)
    assert short == 8 * (k + 3)
    assert full == 8 * (glm.packed_size(k) + k + 4)
    assert once == 8 * (k * (k + 1) // 2 + k + 2)  # the covariate block, once per job


def test_state__the_masks_survive_the_json_round_trip(cohorts):
    with pytest.MonkeyPatch.context() as patch:
        run = _run(cohorts["no_missing"], {"phenotype": "quant_trait"}, patch, short=True)
    state, _ = _statistics_round(run)
    again = GWAS.state_from_json(json.loads(json.dumps(state.to_json())))
    assert np.array_equal(again.inner.moments.short_form, state.inner.moments.short_form)
    assert np.array_equal(again.inner.census_complete, state.inner.census_complete)


def test_attack__a_short_variants_n_that_disagrees_with_the_covariate_block_stops_the_fit(cohorts):
    """A site that sums a short variant's genotype block over other samples than its covariate block (or a coordinator
    that mixes sums) cannot make the fit use a covariate block of other samples: the assembly refuses."""
    with pytest.MonkeyPatch.context() as patch:
        run = _run(cohorts["no_missing"], {"phenotype": "quant_trait"}, patch, short=True)
    state, layout = _statistics_round(run)
    regression = state.inner
    total = {field.name: np.zeros(field.shape, np.float64 if field.name.endswith(("xtx", "xty", "yty")) else np.int64)
             for field in layout.fields}
    total["covariate_n"] = np.array([100])
    total["genotype_n"] = np.full(total["genotype_n"].shape, 100)
    linear.assembled_statistics(regression, total)  # consistent: assembles
    total["genotype_n"][0] = 99
    with pytest.raises(ProtocolError, match="covariate block"):
        linear.assembled_statistics(regression, total)
