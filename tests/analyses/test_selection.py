"""Sample and variant selection in GWAS jobs (keep/remove lists, a samples expression, regions, extract/exclude).

A selected job must equal the pooled fit on the selected individuals and variants: numpy
lstsq on the concatenated rows, and plink2 --glm with --keep/--remove/--keep-if/--chr/
--from-bp/--to-bp/--extract/--exclude on the pooled VCF. A site defines its own lists;
one it lacks is refused at the pre-flight; and two jobs whose selections differ by one
person at a site are refused by that site's ledger before anything is released.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.analyses import GENOTYPES, Contribution
from pipeline.analyses.gwas import GWAS
from pipeline.analyses.selection import (
    Region,
    SelectedDataset,
    Selection,
    read_sample_list,
    selected_dataset,
    variant_mask,
)
from pipeline.dataset import open_dataset
from pipeline.errors import REFUSAL_CODES, ConfigurationError, PolicyRefusal
from pipeline.federation.in_memory import default_context, run_in_memory
from pipeline.federation.ledger import ReleaseLedger
from tests.analyses import gwas_support as gs

SITES = gs.SITES
BASE = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0,
        "min_allele_count": 1}


# --------------------------------------------------------------------------- the spec


def test_spec__selection_keys_are_checked_at_submission():
    spec = {**BASE, "keep": "unrelated", "remove": "withdrawn", "samples": "sex == 2 and age >= 40",
            "regions": ["chr22:16000000-17000000", "21", "chrX:1-2,000"], "extract": ["22:100:A:G", "chr22:101:A:G"],
            "exclude": ["chr22:100:A:G"]}
    state = GWAS.init(spec, SITES)
    assert state.job_spec["samples"] == "sex == 2 and age >= 40"  # the sites read the job's own words
    selection = Selection.parse(spec)
    assert selection.regions == (Region("22", 16000000, 17000000), Region("21"), Region("X", 1, 2000))
    assert selection.extract == {"22:100:A:G", "22:101:A:G"} and selection.exclude == {"22:100:A:G"}
    assert Selection.parse(BASE) == Selection() and not Selection().selects_samples


@pytest.mark.parametrize("key, value, message", [
    ("samples", "sex == 2 and age >=", "samples must be an expression over the samples table (at position 19"),
    ("samples", "__import__('os')", "samples must be an expression"),
    ("keep", "/etc/passwd", "keep must be the name of a sample list the sites define"),
    ("remove", "lists/withdrawn.txt", "never a path"),
    ("regions", ["chr22:200-100"], "1 <= START <= END"),
    ("regions", "chr22", "a list of regions"),
    ("extract", ["rs123"], "CONTIG:POS:REF:ALT"),
    ("exclude", "chr22:1:A:G", "a list of variant IDs"),
])
def test_spec__a_bad_selection_is_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigurationError, match=f"gwas: {key}") as caught:
        GWAS.init({**BASE, key: value}, SITES)
    assert message in str(caught.value)


def test_sample_list__iid_lines_fid_iid_columns_headers_and_comments(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("#FID\tIID\n# a comment\nfam1\talpha-1\n\nalpha-2\n  fam3   alpha-3  extra\n")
    assert read_sample_list(path) == {"alpha-1", "alpha-2", "alpha-3"}


def test_variant_mask__regions_are_inclusive_in_either_contig_style_then_extract_and_exclude():
    variants = pa.table({"variant_id": ["chr22:99:A:G", "chr22:100:A:G", "chr22:150:C:T", "chr22:151:A:G", "chr21:120:A:C"],
                         "chromosome": ["chr22", "chr22", "chr22", "chr22", "chr21"],
                         "base_pair_location": [99, 100, 150, 151, 120]})
    def mask(**keys):
        return variant_mask(Selection.parse(keys), variants).tolist()

    assert mask(regions=["22:100-150"]) == [False, True, True, False, False]
    assert mask(regions=["chr22:100-150", "21"]) == [False, True, True, False, True]
    assert mask(extract=["22:150:C:T", "chr21:120:A:C", "chr1:5:A:G"]) == [False, False, True, False, True]
    assert mask(regions=["chr22"], exclude=["22:99:A:G"]) == [False, True, True, True, False]
    assert mask(regions=["chr22:100-200"], extract=["chr22:150:C:T", "chr21:120:A:C"]) == [False, False, True, False, False]
    assert mask() == [True] * 5


# --------------------------------------------------------------------------- the view


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.make_cohort(tmp_path_factory.mktemp("selection"), seed=3)


def _write_list(path: Path, ids) -> Path:
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def test_view__samples_variants_and_blocks_hold_the_selection_only(cohort, tmp_path, monkeypatch):
    site = cohort["alpha"]
    dataset = open_dataset(site.path)
    ids = dataset.samples().column("sample_id").to_pylist()
    context = dataclasses.replace(default_context("alpha"), sample_lists={"odd": _write_list(tmp_path / "odd", ids[1::2])})
    selection = Selection.parse({"keep": "odd", "samples": "sex == 2", "regions": ["chr22:103-110"]})
    view = selected_dataset(dataset, selection, context)
    assert isinstance(view, SelectedDataset) and selected_dataset(dataset, selection, context) is view  # one per job
    keep = (np.arange(len(ids)) % 2 == 1) & (site.sex == 2)
    assert view.num_samples == keep.sum() and view.samples().column("sample_id").to_pylist() == list(np.array(ids)[keep])
    assert view.samples().column("sample_index").to_pylist() == list(range(keep.sum()))
    assert view.num_variants == 8 and view.variants().column("base_pair_location").to_pylist() == list(range(103, 111))
    blocks = list(view.iter_blocks())
    calls = np.concatenate([block.call_dosage for block in blocks])
    np.testing.assert_array_equal(calls, site.calls[3:11][:, keep])
    read = []
    monkeypatch.setattr(type(dataset), "read_block", lambda self, chunk, **kw: read.append(chunk))
    assert view.read_block("chunk-00005").num_variants == 0 and not read  # no selected variant: the chunk is not read
    assert selected_dataset(dataset, Selection(), context) is dataset


# --------------------------------------------------------------------------- equal to plink2 on the selected individuals


def _lists(root: Path, cohort) -> dict[str, dict[str, Path]]:
    """Each site's own lists: 'study' keeps two samples in three, 'withdrawn' names four."""
    lists = {}
    for name, site in cohort.items():
        ids = open_dataset(site.path).samples().column("sample_id").to_pylist()
        folder = root / name
        folder.mkdir()
        lists[name] = {"study": _write_list(folder / "study.txt", [f"FAM {i}" for j, i in enumerate(ids) if j % 3]),
                       "withdrawn": _write_list(folder / "withdrawn.txt", ids[1:13:3])}
    return lists


def _contexts(lists):
    return {name: dataclasses.replace(default_context(name), sample_lists=lists[name]) for name in SITES}


def _selected_sites(cohort, lists, expression_mask, variants: set[str]) -> dict[str, gs.Site]:
    """The cohort cut down to the selected samples (list files and the expression evaluated here by numpy) and variants."""
    kept = {}
    for name, site in cohort.items():
        ids = open_dataset(site.path).samples().column("sample_id").to_pylist()
        study = read_sample_list(lists[name]["study"])
        withdrawn = read_sample_list(lists[name]["withdrawn"])
        mask = np.array([i in study and i not in withdrawn for i in ids]) & expression_mask(site)
        rows = [j for j, v in enumerate(site.ids) if v in variants]
        kept[name] = dataclasses.replace(site, ids=[site.ids[j] for j in rows], calls=site.calls[rows][:, mask],
                                         age=site.age[mask], sex=site.sex[mask], quant=site.quant[mask],
                                         binary=site.binary[mask])
    return kept


SELECTED = {**BASE, "keep": "study", "remove": "withdrawn", "samples": "age >= 52", "regions": ["22:104-132"],
            "extract": [f"chr22:{p}:A:G" for p in range(100, 140, 2)] + ["chr22:900:A:G"], "exclude": ["22:110:A:G"]}


@pytest.fixture(scope="module")
def selected_run(cohort, tmp_path_factory):
    lists = _lists(tmp_path_factory.mktemp("lists"), cohort)
    run = run_in_memory(GWAS, SELECTED, gs.dataset_paths(cohort), contexts=_contexts(lists), secure=True, seed=3)
    variants = {f"chr22:{p}:A:G" for p in range(104, 133, 2)} - {"chr22:110:A:G"}
    with np.errstate(invalid="ignore"):
        pooled = _selected_sites(cohort, lists, lambda site: site.age >= 52, variants)
    return run, pooled, variants, lists


def test_selected_gwas__equals_pooled_lstsq_on_the_selected_individuals_and_variants(selected_run):
    run, pooled, variants, _ = selected_run
    rows = [row for row in run.result.tables["gwas"].to_pylist() if row["beta"] is not None]
    tested = {row["variant_id"] for row in rows}
    assert tested <= variants and len(tested) >= len(variants) - 2  # regions, then extract, minus exclude (less monomorphic)
    gs.assert_equals_pooled_ols(rows, pooled)
    # the census phase counted the selected samples only: QC saw the selection too
    assert run.result.summary["phases"]["census"]["num_samples"] == sum(s.calls.shape[1] for s in pooled.values())
    # every selected variant some site holds polymorphic (the key round's rule) was counted; no other
    assert len(tested) <= run.result.summary["phases"]["census"]["variants"]["total"] <= len(variants)


PLINK2_VARIANTS = {  # plink2 takes one inclusion filter: a range, or an ID list
    "regions": ({"regions": ["chr22:104-132"]}, ("--chr", "22", "--from-bp", "104", "--to-bp", "132")),
    "extract": ({"extract": SELECTED["extract"]}, ("--extract", "{root}/extract.txt")),
}


@pytest.mark.parametrize("variant_filter", sorted(PLINK2_VARIANTS))
def test_selected_gwas__agrees_with_plink2_keep_remove_keep_if_and_variant_filters(cohort, selected_run, tmp_path,
                                                                                   variant_filter):
    if shutil.which("plink2") is None:
        pytest.skip("plink2 is not installed")
    _, _, _, lists = selected_run
    keys, arguments = PLINK2_VARIANTS[variant_filter]
    spec = {**{k: v for k, v in SELECTED.items() if k not in ("regions", "extract")}, **keys}
    run = run_in_memory(GWAS, spec, gs.dataset_paths(cohort), contexts=_contexts(lists))
    gs.write_pooled_plink_inputs(cohort, tmp_path)
    # the pooled VCF names sample i of site s "s_i"; a site's dataset "s-i"
    keep = [line.split()[1].replace("-", "_") for name in SITES for line in lists[name]["study"].read_text().splitlines()]
    remove = [i.replace("-", "_") for name in SITES for i in read_sample_list(lists[name]["withdrawn"])]
    _write_list(tmp_path / "keep.txt", keep)
    _write_list(tmp_path / "remove.txt", remove)
    _write_list(tmp_path / "extract.txt", SELECTED["extract"])
    _write_list(tmp_path / "exclude.txt", ["chr22:110:A:G"])
    reference = gs.plink2_glm(tmp_path, "quant_trait", extra=(
        "--keep", str(tmp_path / "keep.txt"), "--remove", str(tmp_path / "remove.txt"), "--keep-if", "age >= 52",
        *(a.format(root=tmp_path) for a in arguments), "--exclude", str(tmp_path / "exclude.txt")))
    assert "chr22:110:A:G" not in reference and len(reference) >= 14
    rows = {row["variant_id"]: row for row in run.result.tables["gwas"].to_pylist()}
    compared = 0
    for variant, theirs in reference.items():
        if theirs["ERRCODE"] != ".":  # e.g. monomorphic among the selected: not tested here either
            continue
        row = rows[variant]
        sign = 1.0 if theirs["A1"] == "G" else -1.0
        assert int(theirs["OBS_CT"]) == row["n"]
        assert sign * float(theirs["BETA"]) == pytest.approx(row["beta"], rel=1e-4)
        assert -np.log10(float(theirs["P"])) == pytest.approx(-np.log10(row["p_value"]), abs=1e-3)
        compared += 1
    assert compared >= 12 and {row["variant_id"] for row in rows.values() if row["beta"] is not None} <= set(reference)


def test_selected_gwas__with_pcs_every_phase_sees_the_selection(cohort, tmp_path):
    lists = _lists(tmp_path, cohort)
    spec = {**BASE, "covariates": ["age"], "keep": "study", "samples": "sex == 1", "pcs": 2, "pca": {"window_bp": 1, "maf": 0.0, "min_call_rate": 0.0}}
    run = run_in_memory(GWAS, spec, gs.dataset_paths(cohort), contexts=_contexts(lists))
    selected = sum(len(read_sample_list(lists[n]["study"]) & set(np.array(
        open_dataset(s.path).samples().column("sample_id").to_pylist())[s.sex == 1])) for n, s in cohort.items())
    assert run.result.summary["phases"]["census"]["num_samples"] == selected
    assert run.result.tables["gwas"].num_rows > 0 and run.result.tables["pca_eigenvalues"].num_rows == 2
    state = run.states[-1][1]
    scores = GWAS.site_finish(state, open_dataset(cohort["beta"].path), _contexts(lists)["beta"], tmp_path / "out")
    assert scores is not None
    written = pa.parquet.read_table(next((tmp_path / "out").glob("*.parquet")))
    beta_ids = open_dataset(cohort["beta"].path).samples().column("sample_id").to_pylist()
    expected = [i for i, sex in zip(beta_ids, cohort["beta"].sex) if sex == 1 and i in read_sample_list(lists["beta"]["study"])]
    assert written.column("sample_id").to_pylist() == expected  # the site's own PC scores: its selected samples


# --------------------------------------------------------------------------- pre-flight and disclosure


def test_preflight__a_site_without_the_list_declines_with_its_own_code_and_no_path(cohort, tmp_path):
    lists = _lists(tmp_path, cohort)
    contexts = _contexts(lists)
    contexts["gamma"] = default_context("gamma")  # gamma defines no lists
    state = GWAS.init({**BASE, "keep": "study"}, SITES)
    for name in ("alpha", "beta"):
        regression, census = GWAS.contributions(state, open_dataset(cohort[name].path), contexts[name])
        study = read_sample_list(lists[name]["study"])
        assert census == Contribution(frozenset(study), (GENOTYPES,)) and regression.samples < study
    with pytest.raises(PolicyRefusal) as caught:
        GWAS.contributions(state, open_dataset(cohort["gamma"].path), contexts["gamma"])
    refusal = caught.value
    assert refusal.code == "unknown-sample-list" and refusal.code in REFUSAL_CODES
    assert refusal.for_analyst() == "unknown-sample-list: the sample list 'study' is not defined at the site"
    assert str(tmp_path) not in refusal.for_analyst()


def test_preflight__an_unknown_column_in_the_expression_is_a_spec_mismatch_naming_it(cohort):
    state = GWAS.init({**BASE, "samples": "age >= 40 and bmi < 30"}, SITES)
    from pipeline.errors import SpecMismatch
    with pytest.raises(SpecMismatch) as caught:
        GWAS.contributions(state, open_dataset(cohort["alpha"].path), default_context("alpha"))
    assert caught.value.public == "the samples expression's column 'bmi' is missing"


@pytest.fixture
def complete_cohort(tmp_path):
    """Three sites whose phenotype and covariates are known for everyone (the job's own sets then all agree)."""
    sites = gs.make_cohort(tmp_path / "data", seed=7, sizes=(40, 30, 30), num_variants=12)
    for site in sites.values():
        gs.write_phenotypes(site.path, {"age": np.nan_to_num(site.age, nan=50.0), "sex": site.sex,
                                        "quant_trait": np.nan_to_num(site.quant)})
    return sites


def _job(spec, cohort, contexts, ledgers, job_id: str) -> tuple[object | None, dict[str, str]]:
    """What a site agent does: check the job's contributing sets against its ledger, run, record; refusals otherwise."""
    state = GWAS.init(spec, SITES)
    candidates, refused = {}, {}
    for name in SITES:
        contributions = GWAS.contributions(state, open_dataset(cohort[name].path), contexts[name])
        contexts[name].cache.clear()
        candidates[name] = ledgers[name].candidates(job_id, "gwas", contributions, SITES)
        try:
            ledgers[name].check(candidates[name], min_samples=5, min_set_difference=5, site=name)
        except PolicyRefusal as refusal:
            refused[name] = refusal.code
    if refused:
        return None, refused
    run = run_in_memory(GWAS, spec, gs.dataset_paths(cohort), contexts=contexts)
    for name in SITES:
        ledgers[name].record(candidates[name])
    return run, {}


def test_attack__two_expressions_one_person_apart_are_refused_by_that_sites_ledger(complete_cohort, tmp_path):
    contexts = {name: default_context(name) for name in SITES}
    ledgers = {name: ReleaseLedger(tmp_path / f"{name}.jsonl") for name in SITES}
    first, refused = _job({**BASE, "samples": "age >= 45"}, complete_cohort, contexts, ledgers, "job-1")
    assert first is not None and not refused
    target = next(i for i, age in enumerate(complete_cohort["alpha"].age) if age >= 45)
    # the same GWAS without one of alpha's people: its statistics minus the first job's would be that person's
    second, refused = _job({**BASE, "samples": f"age >= 45 and sample_id != 'alpha-{target}'"}, complete_cohort,
                           contexts, ledgers, "job-2")
    assert second is None and refused == {"alpha": "set-too-close"}  # nothing ran, nothing was released
    assert all(release.job_id == "job-1" for ledger in ledgers.values() for release in ledger.releases)
    # a selection that differs by many people is a legitimate new job
    third, refused = _job({**BASE, "samples": "age >= 60"}, complete_cohort, contexts, ledgers, "job-3")
    assert third is not None and not refused


def test_attack__keep_lists_one_line_apart_are_refused_too(complete_cohort, tmp_path):
    ids = {name: open_dataset(site.path).samples().column("sample_id").to_pylist() for name, site in complete_cohort.items()}
    lists = {name: {"all": _write_list(tmp_path / f"{name}-all.txt", ids[name]),
                    "all_but_one": _write_list(tmp_path / f"{name}-but-one.txt", ids[name][1:]),
                    "one": _write_list(tmp_path / f"{name}-one.txt", ids[name][:1])} for name in SITES}
    contexts = _contexts(lists)
    ledgers = {name: ReleaseLedger(tmp_path / f"{name}.jsonl") for name in SITES}
    first, refused = _job({**BASE, "keep": "all"}, complete_cohort, contexts, ledgers, "job-1")
    assert first is not None and not refused
    for n, spec in enumerate(({**BASE, "keep": "all_but_one"}, {**BASE, "remove": "one"})):
        again, refused = _job(spec, complete_cohort, contexts, ledgers, f"job-{n + 2}")
        assert again is None and refused == {name: "set-too-close" for name in SITES}
