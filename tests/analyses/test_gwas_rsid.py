"""The GWAS's rs ID round: the sites' VCF IDs become the GWAS-SSF ``rsid`` column, by the rule of
:mod:`pipeline.analyses.gwas.rsid` (one named rs ID: published; several: NA and counted; none: NA)."""

from __future__ import annotations

import gzip
import subprocess

import numpy as np
import pytest

from pipeline.analyses import SiteContext
from pipeline.analyses.gwas import GWAS, Gwas, write_outputs
from pipeline.analyses.gwas.outputs import DATA_FILE
from pipeline.analyses.gwas.rsid import RSID_KEYS, site_rsid_pairs
from pipeline.analyses.protocol import KeyUnion
from pipeline.dataset import open_dataset
from pipeline.errors import ProtocolError
from pipeline.federation.in_memory import run_in_memory
from tests.analyses import gwas_support as gs

SPEC = {"model": "linear", "phenotype": "quant_trait", "covariates": ["age", "sex"], "min_call_rate": 0.0, "hwe_p": 0.0,
        "min_allele_count": 1}
CONFLICT = "chr22:110:A:G"
"""alpha and beta name different rs IDs for it."""
LISTS_TWO = "chr22:123:A:G"
"""alpha's record lists two rs IDs for it."""
UNNAMED = ("chr22:120:A:G", "chr22:121:A:G")
"""No site names an rs ID: no ID, or IDs that are not well-formed rs IDs."""


def _original_ids(site: str, ids: list[str]) -> dict[str, str | None]:
    """Every variant's VCF ID at ``site``: ``rs<position>`` but for the cases the module constants name."""
    names: dict[str, str | None] = {v: f"rs{v.split(':')[1]}" for v in ids}
    names.update({UNNAMED[0]: None, UNNAMED[1]: {"alpha": "rs0121", "beta": "esv121"}.get(site)})
    if site == "alpha":
        names.update({CONFLICT: "rs110", LISTS_TWO: "rs123;rs9123", "chr22:122:A:G": "esv9;rs122"})
    if site == "beta":
        names[CONFLICT] = "rs999110"
    return names


def _row(result, variant_id):
    rows = [r for r in result.tables["gwas"].to_pylist() if r["variant_id"] == variant_id]
    assert len(rows) == 1, variant_id
    return rows[0]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return gs.make_cohort(tmp_path_factory.mktemp("gwas-rsid"), seed=4)


@pytest.fixture(scope="module")
def named(cohort):
    """A linear job over the cohort after each site's variants got their VCF IDs."""
    for name, site in cohort.items():
        gs.set_original_ids(site.path, _original_ids(name, site.ids))
    return run_in_memory(GWAS, SPEC, gs.dataset_paths(cohort)).result


def test_gwas_rsid__agreeing_sites_publish_the_rsid_and_the_validator_accepts_the_file(named, tmp_path):
    table = named.tables["gwas"]
    assert table.column_names[-2:] == ["variant_id", "rsid"]
    published = set(table.column("variant_id").to_pylist())
    assert {"chr22:900:A:G", "chr22:122:A:G", "chr22:105:A:G"} <= published  # only gamma; "esv9;rs122"; every site
    for row in table.to_pylist():
        expected = None if row["variant_id"] in (CONFLICT, LISTS_TWO, *UNNAMED) else f"rs{row['base_pair_location']}"
        assert row["rsid"] == expected, row["variant_id"]
    assert named.summary["variants"]["with_rsid"] == len(published) - 4
    write_outputs(named, tmp_path / "named")
    lines = gzip.decompress((tmp_path / "named" / DATA_FILE).read_bytes()).decode().splitlines()
    header = lines[0].split("\t")
    assert header[-2:] == ["variant_id", "rsid"]
    by_id = {line.split("\t")[header.index("variant_id")]: line.split("\t")[-1] for line in lines[1:]}
    assert by_id["22_105_A_G"] == "rs105" and by_id["22_110_A_G"] == "NA"
    validator = gs.ssf_validator()
    if validator is None:
        pytest.skip("gwas-ssf (gwas-sumstats-tools 1.0.25) not found: set GENOFED_GWAS_SSF or put it on PATH (see .ci/run)")
    write_outputs(gs.genome_wide(named, assembly="GRCh38"), tmp_path / "spread")
    done = subprocess.run([validator, "validate", "--min-rows", "1", str(tmp_path / "spread" / DATA_FILE)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and "Validation status: True" in done.stdout, done.stdout + done.stderr


def test_gwas_rsid__disagreeing_sites_leave_it_na_and_are_counted(named):
    assert _row(named, CONFLICT)["rsid"] is None  # alpha rs110, beta rs999110
    assert _row(named, LISTS_TWO)["rsid"] is None  # one record naming two: the union cannot tell it from two sites
    assert named.summary["variants"]["rsid_conflicts"] == 2


def test_gwas_rsid__no_rs_id_anywhere_writes_no_rsid_column(tmp_path):
    cohort = gs.make_cohort(tmp_path / "data", seed=4, sizes=(60, 50, 40), num_variants=12)  # original_id all null
    result = run_in_memory(GWAS, SPEC, gs.dataset_paths(cohort)).result
    assert result.tables["gwas"].column("rsid").null_count == result.tables["gwas"].num_rows > 0
    assert (result.summary["variants"]["with_rsid"], result.summary["variants"]["rsid_conflicts"]) == (0, 0)
    write_outputs(result, tmp_path / "out")
    header = gzip.decompress((tmp_path / "out" / DATA_FILE).read_bytes()).decode().splitlines()[0].split("\t")
    assert "rsid" not in header and header[-1] == "variant_id"


class _Smuggler(Gwas):
    """A GWAS whose site ``gamma`` adds free text to its rs ID pairs (a dishonest site)."""

    def site_step(self, state, round_index, dataset, site):
        values = super().site_step(state, round_index, dataset, site)
        if isinstance(self.layout(state, round_index), KeyUnion) and RSID_KEYS in values and site.name == "gamma":
            values = {RSID_KEYS: np.append(values[RSID_KEYS], "chr22:105:A:G rs105 gamma-17 carries 2 copies")}
        return values


def test_gwas_rsid__a_site_smuggling_text_through_the_union_fails_the_job_and_nothing_is_published(cohort):
    published = []
    with pytest.raises(ProtocolError, match="not 'VARIANT_ID RSID'.*nothing is published") as caught:
        run_in_memory(_Smuggler(), SPEC, gs.dataset_paths(cohort), on_round=lambda r, s: published.append(s.phase))
    assert "gamma-17" not in str(caught.value)  # the message does not carry the text either
    assert published[-1] == len(GWAS.phases) - 1  # it failed in the regression phase, before any sum of it


def test_gwas_rsid__a_site_names_only_variants_it_shared_in_the_census_key_union(cohort):
    site = cohort["alpha"]
    dataset = open_dataset(site.path)

    def pairs(**policy):
        context = {"name": "alpha", "min_samples": 1, "min_allele_count": 1, "share_variant_keys": True, **policy}
        return site_rsid_pairs(site.ids, dataset, SiteContext(**context))

    everything = pairs()
    assert "chr22:105:A:G rs105" in everything and "chr22:122:A:G rs122" in everything
    assert {"chr22:123:A:G rs123", "chr22:123:A:G rs9123"} <= set(everything)
    assert not any(p.startswith(f"{UNNAMED[1]} ") for p in everything)  # rs0121 is not a well-formed rs ID
    assert pairs(share_variant_keys=False).size == 0
    rare = [v for v in site.ids if int(v.split(":")[1]) % 11 == 3]  # 1 to 3 ALT alleles at this site
    below = {p.split(" ")[0] for p in pairs(min_allele_count=4)}
    assert rare and not below & set(rare) and below  # a variant the union hid stays hidden
    assert site_rsid_pairs((), dataset, SiteContext("alpha", 1, 1, True)).size == 0  # no tested variant
