"""A seeded fault matrix: the coordinator, or one site, killed at sampled points of census, GWAS and training jobs.

Each trial runs one job in process (:mod:`tests.federation.fault_support`) with one kill,
and compares its outcome with an undisturbed run of the same job: a coordinator restarted,
or a site restarted over its state folder, must change nothing; a site that never comes
back may only end the job in a documented way (see ``fault_support.classify``). The
points are drawn with a fixed seed over the calls each party made in the undisturbed run.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.federation.config import SitePolicy
from tests.analyses import gwas_support as gs
from tests.analyses.test_train_restart import SPEC as TRAIN_SPEC
from tests.federation import fault_support as fs
from tests.federation import runtime_support as rs
from tests.models.training_support import planted_cohort

SEED = 20240605
THRESHOLD = 2
"""Two of three sites: a site killed for good leaves enough to finish a secure sum."""
POLICY = SitePolicy(allowed_analyses=("census", "gwas", "train"), min_samples=3, min_allele_count=0, share_variant_keys=True,
                    threshold_rule="majority", min_set_difference=0)
COMMON = {"stage_timeout": 600, "threshold": THRESHOLD}
SPECS = {
    "census": {"analysis": "census", "min_allele_count": 0, **COMMON},
    "gwas": {"analysis": "gwas", "model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"],
             "min_call_rate": 0.0, "hwe_p": 0.0, "min_allele_count": 1, **COMMON},
    "train": {**TRAIN_SPEC, "server": {"optimizer": "fedavg", "learning_rate": 1.0}, **COMMON},
}


@pytest.fixture(scope="module")
def job_kinds(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[fs.JobKind, fs.Outcome]]:
    """Each job kind with its undisturbed reference run (datasets, certificates and JIT work shared by every trial)."""
    root = tmp_path_factory.mktemp("fault-matrix")
    datasets = {
        "census": rs.small_datasets(root / "census", gs.SITES, num_variants=12, num_samples=15, seed=60),
        "gwas": gs.dataset_paths(gs.make_cohort(root / "gwas", seed=6, sizes=(40, 35, 30), num_variants=12)),
        "train": planted_cohort(root / "train", sizes=(60, 90, 40), num_variants=14),
    }
    kinds = []
    for name, spec in SPECS.items():
        kind = fs.JobKind(name, spec, rs.in_process_site_configs(root / f"{name}-federation", datasets[name], POLICY))
        reference = fs.Federation(kind, root / f"{name}-reference", fault=None).run()
        assert reference.status == "done" and not reference.problems, (name, reference.status, reference.error, reference.problems)
        kinds.append((kind, reference))
    return kinds


def test_fault_matrix__classify_names_the_documented_outcomes():
    table = pa.table({"x": [1, 2]})
    reference = fs.Outcome("done", None, {"num_sites": 3, "job_id": "job-a"}, {"t": table}, [], {})
    restarted, lost = fs.Fault("alpha", 3, after=True), fs.Fault("alpha", 3, after=True, restart=False)

    def outcome(status="done", error=None, summary=None, tables=None, problems=()):
        return fs.Outcome(status, error, summary or {"num_sites": 3, "job_id": "job-b"}, tables or {"t": table}, list(problems), {})

    assert fs.classify(outcome(), reference, restarted)[0] == fs.IDENTICAL
    assert fs.classify(outcome("failed", "site alpha was lost in round 2: ..."), reference, lost)[0] == fs.DOCUMENTED
    assert fs.classify(outcome(summary={"num_sites": 2}), reference, lost)[0] == fs.DOCUMENTED
    assert fs.classify(outcome(summary={"num_sites": 2}), reference, restarted)[0] == fs.LOST
    assert fs.classify(outcome("failed", "site beta was lost"), reference, lost)[0] == fs.LOST
    assert fs.classify(outcome(tables={"t": pa.table({"x": [1, 3]})}), reference, lost)[0] == fs.LOST
    assert fs.classify(outcome(problems=["unaudited contribution"]), reference, restarted)[0] == fs.LOST


def _check(tally: fs.Tally) -> None:
    print(f"\nfault matrix: {tally}")
    assert tally.counts[fs.LOST] == 0 and not tally.unexpected, str(tally)


def test_fault_matrix__sampled_kills_end_identical_or_documented(job_kinds, tmp_path):
    _check(fs.run_matrix(job_kinds, tmp_path, seed=SEED, per_kind=4))


@pytest.mark.slow
def test_fault_matrix__many_sampled_kills_end_identical_or_documented(job_kinds, tmp_path):
    _check(fs.run_matrix(job_kinds, tmp_path, seed=SEED + 1, per_kind=25))
