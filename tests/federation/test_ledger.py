"""The disclosure rules on a site's ledger, as pure functions and as a file that survives restarts."""

from __future__ import annotations

import pytest

from pipeline.analyses import GENOTYPES, Contribution
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.ledger import Release, ReleaseLedger, disclosure_refusal

PEOPLE = frozenset(f"P{i}" for i in range(40))
SITES = frozenset({"alpha", "beta", "gamma"})


def _release(job: str, samples=PEOPLE, sites=SITES, analysis: str = "gwas", variables=("trait", GENOTYPES)) -> Release:
    return Release(job, analysis, tuple(sorted(variables)), frozenset(samples), frozenset(sites))


def _refusal(candidate, earlier, *, min_samples: int = 5, min_set_difference: int = 5):
    refusal = disclosure_refusal(candidate, earlier, min_samples=min_samples, min_set_difference=min_set_difference, site="alpha")
    return None if refusal is None else refusal.code


@pytest.mark.parametrize("removed, code", [(0, None), (1, "set-too-close"), (4, "set-too-close"), (5, None), (12, None)])
def test_set_difference__one_to_four_people_apart_is_too_close(removed, code):
    earlier = [_release("job-1")]
    smaller = sorted(PEOPLE)[removed:]
    assert _refusal(_release("job-2", samples=smaller), earlier) == code


def test_set_difference__applies_across_analyses_and_a_grown_cohort_passes():
    earlier = [_release("job-1", analysis="census", variables=(GENOTYPES,))]
    one_more = PEOPLE | {"new"}
    assert _refusal(_release("job-2", samples=one_more), earlier) == "set-too-close"
    five_more = PEOPLE | {f"new{i}" for i in range(5)}
    assert _refusal(_release("job-2", samples=five_more), earlier) is None
    assert _refusal(_release("job-2", samples=one_more), earlier, min_set_difference=1) is None  # the rule switched off


def test_contributors__counted_on_the_contributing_set():
    assert _refusal(_release("job-1", samples=sorted(PEOPLE)[:4]), []) == "too-few-samples"
    assert _refusal(_release("job-1", samples=sorted(PEOPLE)[:5]), []) is None


def test_site_sets__one_site_apart_refused_only_for_comparable_releases():
    earlier = [_release("job-1")]
    assert _refusal(_release("job-2", sites=SITES - {"gamma"}), earlier) == "one-site-difference"
    assert _refusal(_release("job-2", sites=SITES | {"delta"}), earlier) == "one-site-difference"
    assert _refusal(_release("job-2", sites=SITES - {"beta", "gamma"}), earlier) is None  # two sites apart
    other_kind = _release("job-2", sites=SITES - {"gamma"}, analysis="census", variables=(GENOTYPES,))
    assert _refusal(other_kind, earlier) is None  # not comparable: another analysis
    other_variables = [_release("job-1", variables=("trait",))]
    assert _refusal(_release("job-2", sites=SITES - {"gamma"}, variables=("height",)), other_variables) is None


def test_rules__a_jobs_own_releases_are_not_compared():
    earlier = [_release("job-1")]
    assert _refusal(_release("job-1", sites=SITES - {"gamma"}, samples=sorted(PEOPLE)[1:]), earlier) is None


def test_ledger__records_once_survives_a_restart_and_refuses_a_damaged_file(tmp_path):
    ledger = ReleaseLedger(tmp_path / "ledger.jsonl")
    candidates = ledger.candidates("job-1", "gwas", [Contribution(PEOPLE, ("trait", GENOTYPES))], SITES)
    assert ledger.record(candidates) == candidates
    assert ledger.record(candidates) == []
    restarted = ReleaseLedger(tmp_path / "ledger.jsonl")
    assert restarted.releases == tuple(candidates)
    assert (tmp_path / "ledger.jsonl").stat().st_mode & 0o777 == 0o600
    with pytest.raises(PolicyRefusal) as refused:
        restarted.check(restarted.candidates("job-2", "gwas", [Contribution(PEOPLE - {"P0"}, ("trait", GENOTYPES))], SITES),
                        min_samples=5, min_set_difference=5, site="alpha")
    assert refused.value.code == "set-too-close"
    (tmp_path / "ledger.jsonl").write_text('{"job_id": "job-1"}\n')
    with pytest.raises(ConfigurationError, match="ledger.jsonl, line 1: not a release record"):
        ReleaseLedger(tmp_path / "ledger.jsonl")


def test_ledger__a_jobs_own_sets_a_few_people_apart_are_too_close(tmp_path):
    """A GWAS releases census counts over every sample and regression sums over the complete cases."""
    ledger = ReleaseLedger(tmp_path / "ledger.jsonl")
    everyone = Contribution(PEOPLE, (GENOTYPES,))
    for missing, refused in ((0, False), (2, True), (5, False)):
        complete = Contribution(frozenset(sorted(PEOPLE)[missing:]), ("trait", GENOTYPES))
        candidates = ledger.candidates("job-1", "gwas", [complete, everyone], SITES)
        if refused:
            with pytest.raises(PolicyRefusal, match="two contributing sets of job job-1") as error:
                ledger.check(candidates, min_samples=5, min_set_difference=5, site="alpha")
            assert error.value.code == "set-too-close"
        else:
            ledger.check(candidates, min_samples=5, min_set_difference=5, site="alpha")
