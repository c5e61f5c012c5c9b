"""The simulated cohort: layout, determinism, agreement with its own truth, CLI.

Files are checked with pysam (and bcftools where installed) directly, never with
genofed's own readers, so a bug shared by the writer and the reader cannot hide.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import ConfigurationError, InputError, OutputExistsError
from pipeline.sim import load_manifest, parse_region, simulate_cohort
from pipeline.sim.quirks import add_missing_calls
from pipeline.sim.writers import encode_genotype_cells

TINY = {"sites": 3, "samples": 50, "region": "chr22:16000000-16200000", "seed": 0}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "cohort"
    simulate_cohort(out, **TINY)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _truth(folder: Path) -> list[dict[str, str]]:
    with open(folder / "truth.tsv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _phenotype_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_simulate_cohort__same_seed_gives_identical_bytes(tiny_cohort: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    simulate_cohort(again, **TINY)
    first, second = _digests(tiny_cohort), _digests(again)
    assert set(first) == set(second)
    assert first == second


def test_simulate_cohort__different_seed_gives_different_genotypes(tiny_cohort: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    simulate_cohort(other, **{**TINY, "seed": 1})
    assert _digests(tiny_cohort)["site-1/genotypes.vcf.gz"] != _digests(other)["site-1/genotypes.vcf.gz"]


def test_simulate_cohort__layout_matches_manifest(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    assert manifest.region == TINY["region"] and manifest.seed == 0 and len(manifest.sites) == 3
    for name in ("cohort.json", "reference.fa.gz", "reference.fa.gz.fai", "reference.fa.gz.gzi", "truth.tsv"):
        assert (tiny_cohort / name).is_file(), name
    for site in manifest.sites:
        assert site.name in {"site-1", "site-2", "site-3"}
        for relative in (site.vcf, site.index, site.phenotypes):
            assert manifest.resolve(relative).is_file(), relative
        suffix = {"vcf.gz": (".vcf.gz", ".tbi"), "bcf": (".bcf", ".csi")}[site.file_format]
        assert site.vcf.endswith(suffix[0]) and site.index.endswith(suffix[1])
    # The quirks differ between sites.
    assert {s.contig_style for s in manifest.sites} == {"chr", "nochr"}
    assert {s.file_format for s in manifest.sites} == {"vcf.gz", "bcf"}
    assert {s.phased for s in manifest.sites} == {True, False}
    assert json.loads((tiny_cohort / "cohort.json").read_text())["genofed_version"]


def test_reference__bases_equal_ref_or_alt_where_swapped(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    fasta = pysam.FastaFile(str(tiny_cohort / "reference.fa.gz"))
    assert list(fasta.references) == ["chr22"]
    assert fasta.get_reference_length("chr22") == manifest.end
    assert set(fasta.fetch("chr22", 0, manifest.start - 1)) == {"N"}
    assert "N" not in fasta.fetch("chr22", manifest.start - 1, manifest.end)
    truth = _truth(tiny_cohort)
    for site in manifest.sites:
        swapped = {
            int(r["base_pair_location"]) for r in truth if r["kind"] == "ref_alt_swap" and r["site"] == site.name
        }
        assert len(swapped) == site.counts["ref_alt_swapped"] > 0
        seen_swapped = set()
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            for record in vcf:
                base = fasta.fetch("chr22", record.pos - 1, record.pos)
                if record.pos in swapped:
                    assert len(record.alts) == 1 and record.alts[0] == base != record.ref
                    seen_swapped.add(record.pos)
                else:
                    assert record.ref == base, f"{site.name} {record.chrom}:{record.pos}"
        assert seen_swapped == swapped


def test_genotypes__contig_style_phasing_and_index_per_site(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    for site in manifest.sites:
        expected_contig = "chr22" if site.contig_style == "chr" else "22"
        assert site.contig == expected_contig
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            assert list(vcf.header.contigs) == [expected_contig]
            assert vcf.header.contigs[expected_contig].length == manifest.end
            assert vcf.is_bcf == (site.file_format == "bcf")
            assert "GT" in vcf.header.formats
            # The index answers region queries.
            in_window = list(vcf.fetch(expected_contig, manifest.start - 1, manifest.start + 50_000))
            assert in_window and all(r.pos <= manifest.start + 50_000 for r in in_window)
            records = list(vcf.fetch())
        assert len(records) == site.counts["variants"]
        assert all(r.chrom == expected_contig for r in records)
        positions = [r.pos for r in records]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        complete_calls = [s for r in records[:50] for s in r.samples.values() if None not in s["GT"]]
        assert all(call.phased == site.phased for call in complete_calls)


def test_genotypes__missing_half_missing_and_multiallelic_calls(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    multiallelic = 0
    for site in manifest.sites:
        missing = half = 0
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            for record in vcf:
                multiallelic += len(record.alts) > 1
                for call in record.samples.values():
                    gt = call["GT"]
                    missing += gt == (None, None)
                    half += (gt[0] is None) != (gt[1] is None)
        assert missing > 0 and half > 0, site.name
    assert multiallelic == sum(s.counts["multiallelic"] for s in manifest.sites) > 0


def test_genotypes__sample_ids_unique_and_shuffled(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    everyone: list[str] = []
    for number, site in enumerate(manifest.sites, start=1):
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            samples = list(vcf.header.samples)
        assert len(samples) == TINY["samples"]
        assert all(s.startswith(f"S{number}_") for s in samples)
        assert samples != sorted(samples)
        everyone += samples
    assert len(everyone) == len(set(everyone))


def test_genotypes__sites_write_only_their_polymorphic_variants(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    per_site: dict[str, set[int]] = {}
    for site in manifest.sites:
        monomorphic = 0
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            positions = set()
            for record in vcf:
                positions.add(record.pos)
                alleles = {a for call in record.samples.values() for a in call["GT"] if a is not None}
                monomorphic += len(alleles) < 2
        # Only random missing calls can hide a rare allele.
        assert monomorphic <= 0.02 * len(positions), site.name
        per_site[site.name] = positions
        assert site.counts["dropped"] > 0 and site.counts["private"] > 0
    union = set.union(*per_site.values())
    assert all(per_site[name] != union for name in per_site)


def test_phenotypes__columns_na_and_sample_mismatches(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    na_total = 0
    for site in manifest.sites:
        path = manifest.resolve(site.phenotypes)
        assert path.read_text().splitlines()[0].split("\t") == ["IID", "age", "sex", "quant_trait", "binary_trait"]
        rows = _phenotype_rows(path)
        ids = [r["IID"] for r in rows]
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            vcf_ids = list(vcf.header.samples)
        assert set(ids) - set(vcf_ids) == set(site.phenotype_only_samples) and len(site.phenotype_only_samples) == 2
        assert set(vcf_ids) - set(ids) == set(site.genotype_only_samples) and len(site.genotype_only_samples) == 2
        shared_in_vcf_order = [i for i in vcf_ids if i in set(ids)]
        assert [i for i in ids if i in set(vcf_ids)] != shared_in_vcf_order
        for row in rows:
            na_total += sum(row[c] == "NA" for c in ("age", "sex", "quant_trait", "binary_trait"))
            if row["sex"] != "NA":
                assert row["sex"] in {"1", "2"}
            if row["binary_trait"] != "NA":
                assert row["binary_trait"] in {"0", "1"}
            if row["quant_trait"] != "NA":
                float(row["quant_trait"])
            if row["age"] != "NA":
                assert 20 <= int(row["age"]) <= 90
    assert na_total == sum(s.counts["phenotype_na_values"] for s in manifest.sites) > 0


def test_phenotypes__binary_prevalence_near_thirty_percent(small_cohort: Path) -> None:
    manifest = load_manifest(small_cohort)
    values = [
        int(r["binary_trait"])
        for site in manifest.sites
        for r in _phenotype_rows(manifest.resolve(site.phenotypes))
        if r["binary_trait"] != "NA"
    ]
    assert 0.2 < np.mean(values) < 0.4


def test_phenotypes__quant_trait_follows_causal_dosage(small_cohort: Path) -> None:
    """Regressing the trait on the true causal dosages recovers the effects' signs."""
    manifest = load_manifest(small_cohort)
    causal = [r for r in _truth(small_cohort) if r["kind"] == "causal" and r["trait"] == "quant_trait"]
    assert len(causal) == 10
    dosage_rows, trait = [], []
    for site in manifest.sites:
        pheno = {r["IID"]: r["quant_trait"] for r in _phenotype_rows(manifest.resolve(site.phenotypes))}
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            samples = list(vcf.header.samples)
            dosage = np.zeros((len(causal), len(samples)))
            for k, row in enumerate(causal):
                pos = int(row["base_pair_location"])
                (record,) = [r for r in vcf.fetch(site.contig, pos - 1, pos) if r.pos == pos]
                alt_index = record.alleles.index(row["alt"])
                for j, call in enumerate(record.samples.values()):
                    gt = call["GT"]
                    dosage[k, j] = np.nan if None in gt else sum(a == alt_index for a in gt)
        for j, sample in enumerate(samples):
            if pheno.get(sample, "NA") != "NA" and not np.isnan(dosage[:, j]).any():
                dosage_rows.append(dosage[:, j])
                trait.append(float(pheno[sample]))
    x = np.column_stack([np.ones(len(trait)), np.array(dosage_rows)])
    beta = np.linalg.lstsq(x, np.array(trait), rcond=None)[0][1:]
    effect = np.array([float(r["effect"]) for r in causal])
    assert np.mean(np.sign(beta) == np.sign(effect)) >= 0.8


def test_truth__causal_variants_present_in_every_site(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    causal = [r for r in _truth(tiny_cohort) if r["kind"] == "causal"]
    assert {r["trait"] for r in causal} == {"quant_trait", "binary_trait"}
    assert all(r["chromosome"] == "chr22" and r["site"] == "NA" for r in causal)
    for site in manifest.sites:
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            for row in causal:
                pos = int(row["base_pair_location"])
                found = [r for r in vcf.fetch(site.contig, pos - 1, pos) if r.pos == pos]
                assert len(found) == 1, f"{site.name} lacks {pos}"
                assert {found[0].ref, *found[0].alts} == {row["ref"], row["alt"]}


@pytest.mark.skipif(shutil.which("bcftools") is None, reason="bcftools not installed")
def test_genotypes__bcftools_reads_every_file(tiny_cohort: Path) -> None:
    manifest = load_manifest(tiny_cohort)
    for site in manifest.sites:
        path = str(manifest.resolve(site.vcf))
        body = subprocess.run(["bcftools", "view", "-H", path], check=True, capture_output=True, text=True).stdout
        assert len(body.splitlines()) == site.counts["variants"]
        region = f"{site.contig}:{manifest.start}-{manifest.start + 50_000}"
        subprocess.run(["bcftools", "view", "-H", "-r", region, path], check=True, capture_output=True)


def test_encode_genotype_cells__matches_naive_formatting() -> None:
    rng = np.random.default_rng(3)
    allele = rng.integers(-1, 4, size=(7, 5, 2)).astype(np.int8)
    for phased in (True, False):
        text = bytes(encode_genotype_cells(allele, phased=phased).reshape(-1)).decode()
        lines = []
        for row in allele:
            cells = []
            for a, b in row:
                if not phased:
                    a, b = min(a, b), max(a, b)
                sep = "|" if phased and a >= 0 and b >= 0 else "/"
                cells.append(f"{'.' if a < 0 else a}{sep}{'.' if b < 0 else b}")
            lines.append("\t".join(cells) + "\n")
        assert text == "".join(lines)


def test_add_missing_calls__rates_and_half_missing_first_allele() -> None:
    allele = np.ones((200, 500, 2), dtype=np.int8)
    out = add_missing_calls(allele, missing_rate=0.05, half_missing_rate=0.01, rng=np.random.default_rng(0))
    both = (out == -1).all(axis=2).mean()
    half = ((out[:, :, 0] == -1) & (out[:, :, 1] == 1)).mean()
    assert 0.04 < both < 0.06 and 0.007 < half < 0.013
    assert not ((out[:, :, 1] == -1) & (out[:, :, 0] == 1)).any()
    assert (allele == 1).all()


def test_parse_region__accepts_commas_and_either_contig_style() -> None:
    assert str(parse_region("chr22:16,000,000-17,000,000")) == "chr22:16000000-17000000"
    assert parse_region("22:1-100").chromosome_number == "22"


@pytest.mark.parametrize("text", ["chr22", "chr22:5-1", "chr22:0-10", "chrY:1-100", "chr22:1-999999999", "chr22:a-b"])
def test_parse_region__rejects_malformed(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_region(text)


def test_simulate_cohort__refuses_existing_output(tiny_cohort: Path) -> None:
    before = _digests(tiny_cohort)
    with pytest.raises(OutputExistsError):
        simulate_cohort(tiny_cohort, **TINY)
    assert _digests(tiny_cohort) == before


def test_load_manifest__missing_or_foreign_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="genofed cohort simulate"):
        load_manifest(tmp_path)
    (tmp_path / "cohort.json").write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="genofed-cohort/1"):
        load_manifest(tmp_path)


def test_cli_simulate__writes_layout_and_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["cohort", "simulate", "--out", str(out), "--sites", "2", "--samples", "20"]
    args += ["--region", "chr22:16000000-16100000", "--seed", "5", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [s["name"] for s in summary["sites"]] == ["site-1", "site-2"]
    assert (out / "site-1" / "genotypes.vcf.gz.tbi").is_file()
    assert (out / "site-2" / "genotypes.bcf.csi").is_file()
    assert load_manifest(out).seed == 5
    assert load_manifest(out).background_regions == ("chr21:15000000-25000000",)  # the default null background

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert "already exists" in again.stderr and "--force" in again.stderr

    forced = CliRunner().invoke(main, [*args, "--force", "--progress", "--background-region", "none"])
    assert forced.exit_code == 0, forced.output
    assert "simulating" in forced.stderr and "done:" in forced.stderr
    assert load_manifest(out).background_regions == ()


def test_cli_simulate__malformed_region_is_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["cohort", "simulate", "--out", str(tmp_path / "x"), "--region", "chr22:10"])
    assert result.exit_code == 2
    assert "CONTIG:START-END" in result.output
    assert not (tmp_path / "x").exists()


BACKGROUND = {**TINY, "background_regions": ["chr21:20000000-20150000"]}


@pytest.fixture(scope="session")
def background_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("background") / "cohort"
    simulate_cohort(out, **BACKGROUND)
    return out


def test_background_region__every_file_carries_both_chromosomes_causal_variants_only_in_the_trait_region(
    background_cohort: Path,
) -> None:
    manifest = load_manifest(background_cohort)
    assert manifest.region == TINY["region"] and manifest.background_regions == ("chr21:20000000-20150000",)
    fasta = pysam.FastaFile(str(background_cohort / "reference.fa.gz"))
    assert list(fasta.references) == ["chr22", "chr21"]
    assert fasta.get_reference_length("chr21") == 20_150_000
    assert set(fasta.fetch("chr21", 0, 20_000_000 - 1)) == {"N"} and "N" not in fasta.fetch("chr21", 20_000_000 - 1, 20_150_000)
    truth = _truth(background_cohort)
    assert {r["chromosome"] for r in truth if r["kind"] == "causal"} == {"chr22"}
    swapped = {(r["chromosome"], int(r["base_pair_location"]), r["site"]) for r in truth if r["kind"] == "ref_alt_swap"}
    assert any(chromosome == "chr21" for chromosome, _, _ in swapped)
    for site in manifest.sites:
        style = "chr" if site.contig_style == "chr" else ""
        assert (site.contig, site.background_contigs) == (f"{style}22", (f"{style}21",))
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            assert {name: vcf.header.contigs[name].length for name in vcf.header.contigs} == {
                f"{style}22": 16_200_000, f"{style}21": 20_150_000}
            background = list(vcf.fetch(f"{style}21"))
            assert len(background) + len(list(vcf.fetch(f"{style}22"))) == site.counts["variants"]
        assert background and all(20_000_000 <= r.pos <= 20_150_000 for r in background)
        for record in background:  # REF is the FASTA base, or ALT is where the site swapped them
            base = fasta.fetch("chr21", record.pos - 1, record.pos)
            if ("chr21", record.pos, site.name) in swapped:
                assert record.alts == (base,)
            else:
                assert record.ref == base


def test_background_region__same_arguments_same_bytes_and_the_trait_region_is_not_copied(
    background_cohort: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    simulate_cohort(again, **BACKGROUND)
    assert _digests(again) == _digests(background_cohort)
    with pysam.VariantFile(str(background_cohort / "site-1" / "genotypes.vcf.gz")) as vcf:
        trait = [r.samples.values()[0]["GT"] for r in vcf.fetch("chr22")][:200]
        null = [r.samples.values()[0]["GT"] for r in vcf.fetch("chr21")][:200]
    assert trait != null


def test_background_region__on_the_trait_chromosome_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="same chromosome"):
        simulate_cohort(tmp_path / "x", **{**TINY, "background_regions": ["22:30000000-30100000"]})
    with pytest.raises(ConfigurationError, match="same chromosome"):
        simulate_cohort(tmp_path / "x", **{**TINY, "background_regions": ["chr21:1-100000", "chr21:200000-300000"]})
    assert not (tmp_path / "x").exists()


def test_background_chrx__males_are_haploid_outside_the_pars_and_diploid_inside(tmp_path: Path) -> None:
    """chrX:2.7-2.9 Mb spans the end of PAR1 (GRCh38: 10,001-2,781,479); sex comes from the phenotype table."""
    out = tmp_path / "x"
    simulate_cohort(out, **{**TINY, "samples": 60, "background_regions": ["chrX:2700000-2900000"]})
    manifest = load_manifest(out)
    checked = 0
    for site in manifest.sites:
        sex = {row["IID"]: row["sex"] for row in _phenotype_rows(manifest.resolve(site.phenotypes)) if row["sex"] != "NA"}
        (x_contig,) = site.background_contigs
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            for record in vcf.fetch(x_contig):
                for sample, call in record.samples.items():
                    if sample not in sex:
                        continue
                    haploid = sex[sample] == "1" and record.pos > 2_781_479
                    assert len(call["GT"]) == (1 if haploid else 2), (site.name, record.pos, sample, call["GT"])
                    checked += 1
        assert {"1", "2"} <= set(sex.values())
    assert checked > 1000


def test_trait_region_on_chrx_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="must lie on an autosome"):
        simulate_cohort(tmp_path / "x", **{**TINY, "region": "chrX:2700000-2900000"})


def _ols_p_value(design: np.ndarray, target: np.ndarray) -> float:
    """Two-sided p-value of the coefficient of column 1 (ordinary least squares)."""
    from scipy import stats

    beta, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ beta
    dof = design.shape[0] - design.shape[1]
    se = np.sqrt(residual @ residual / dof * np.linalg.inv(design.T @ design)[1, 1])
    return float(2 * stats.t.sf(abs(beta[1] / se), dof))


@pytest.mark.slow
def test_phenotypes__quant_causal_variants_genome_wide_significant_at_3000(tmp_path: Path) -> None:
    """At 3 x 1000 samples each causal variant reaches p < 5e-8 adjusted for ancestry, age, sex."""
    out = tmp_path / "large"
    simulate_cohort(out, sites=3, samples=1000, region="chr22:16000000-18000000", seed=0)
    manifest = load_manifest(out)
    causal = [r for r in _truth(out) if r["kind"] == "causal" and r["trait"] == "quant_trait"]
    with open(out / "ancestry.tsv", newline="") as handle:
        population = {r["IID"]: r["population"] for r in csv.DictReader(handle, delimiter="\t")}
    dosage_columns, covariates, trait = [], [], []
    for site in manifest.sites:
        pheno = {r["IID"]: r for r in _phenotype_rows(manifest.resolve(site.phenotypes))}
        with pysam.VariantFile(str(manifest.resolve(site.vcf))) as vcf:
            samples = list(vcf.header.samples)
            dosage = np.full((len(causal), len(samples)), np.nan)
            for k, row in enumerate(causal):
                pos = int(row["base_pair_location"])
                (record,) = [r for r in vcf.fetch(site.contig, pos - 1, pos) if r.pos == pos]
                alt_index = record.alleles.index(row["alt"])
                for j, call in enumerate(record.samples.values()):
                    if None not in call["GT"]:
                        dosage[k, j] = sum(a == alt_index for a in call["GT"])
        for j, sample in enumerate(samples):
            row = pheno.get(sample)
            if row is None or "NA" in (row["quant_trait"], row["age"], row["sex"]):
                continue
            dosage_columns.append(dosage[:, j])
            ancestry = population[sample]
            covariates.append([float(row["age"]), float(row["sex"]), ancestry == "YRI", ancestry == "CHB"])
            trait.append(float(row["quant_trait"]))
    dosage_matrix, covariate_matrix, y = np.array(dosage_columns), np.array(covariates, dtype=float), np.array(trait)
    assert len(y) > 2500  # 3000 minus the NA values in trait, age or sex
    for k, row in enumerate(causal):
        ok = ~np.isnan(dosage_matrix[:, k])
        design = np.column_stack([np.ones(ok.sum()), dosage_matrix[ok, k], covariate_matrix[ok]])
        assert _ols_p_value(design, y[ok]) < 5e-8, row["base_pair_location"]
