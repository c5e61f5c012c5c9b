"""Ingest against independent references: pysam's own GT parsing, the FASTA, bcftools."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.dataset import open_dataset
from pipeline.errors import ConfigurationError, InputError
from pipeline.harmonize.contigs import canonical_contig
from pipeline.ingest import ingest, parse_chunk_size
from pipeline.ingest_task import DROP_REASONS
from pipeline.sim.cohort import load_manifest
from tests.harmonize.records import vcf_text, write_vcf

SITES = ("site-1", "site-2", "site-3")


# --- naive references --------------------------------------------------------------


def naive_trim(ref: str, alt: str, pos: int) -> tuple[str, str, int]:
    while len(ref) > 1 and len(alt) > 1 and ref[-1] == alt[-1]:
        ref, alt = ref[:-1], alt[:-1]
    while len(ref) > 1 and len(alt) > 1 and ref[0] == alt[0]:
        ref, alt, pos = ref[1:], alt[1:], pos + 1
    return ref, alt, pos


def naive_call(gt: tuple, alt_number: int) -> int:
    """Dosage of one call for ALT ``alt_number`` from pysam's GT tuple."""
    if len(gt) == 0 or any(a is None for a in gt):
        return -1
    count = sum(1 for a in gt if a == alt_number)
    return 2 * count if len(gt) == 1 else count


def naive_dataset(records, *, contig_style: str, fasta: pysam.FastaFile | None) -> dict[str, tuple[list[int], bool]]:
    """variant_id -> (call dosages, swapped), one record and ALT at a time from pysam."""
    expected: dict[str, tuple[list[int], bool]] = {}
    for rec in records:
        gts = [s["GT"] if "GT" in s else () for s in rec.samples.values()]
        for k, alt in enumerate(rec.alts or (), start=1):
            ref, alt, pos = naive_trim(rec.ref.upper(), alt.upper(), rec.pos)
            if ref == alt:
                continue
            calls = [naive_call(gt, k) for gt in gts]
            swapped = False
            if fasta is not None:
                name = rec.chrom if rec.chrom in fasta.references else canonical_contig(rec.chrom, "chr")
                if fasta.fetch(name, pos - 1, pos - 1 + len(ref)).upper() != ref:
                    assert fasta.fetch(name, pos - 1, pos - 1 + len(alt)).upper() == alt
                    ref, alt, swapped = alt, ref, True
                    calls = [c if c < 0 else (2 if len(gt) <= 2 else len(gt)) - c for c, gt in zip(calls, gts)]
            key = f"{canonical_contig(rec.chrom, contig_style)}:{pos}:{ref}:{alt}"
            assert key not in expected
            expected[key] = (calls, swapped)
    return expected


def dataset_calls(path: Path) -> dict[str, tuple[list[int], bool]]:
    dataset = open_dataset(path)
    out: dict[str, tuple[list[int], bool]] = {}
    for name in dataset.chunk_names:
        block = dataset.read_block(name)
        keys = block.variants.column("variant_id").to_pylist()
        swapped = block.variants.column("swapped").to_pylist()
        for i, key in enumerate(keys):
            out[key] = (block.call_dosage[i].tolist(), swapped[i])
    return out


# --- the small simulated cohort ----------------------------------------------------


@pytest.fixture(scope="module")
def ingested(small_cohort, tmp_path_factory):
    """Every site of the small cohort ingested with its FASTA and phenotypes."""
    manifest = load_manifest(small_cohort)
    root = tmp_path_factory.mktemp("ingested")
    datasets = {}
    for name in SITES:
        site = manifest.site(name)
        datasets[name] = root / name
        ingest(
            manifest.resolve(site.vcf),
            out=datasets[name],
            fasta=small_cohort / "reference.fa.gz",
            phenotypes=manifest.resolve(site.phenotypes),
            chunk_size="250kb",
            workers=2,
        )
    return manifest, datasets


def test_ingest__cohort_ref_equals_fasta(ingested, small_cohort):
    _, datasets = ingested
    with pysam.FastaFile(str(small_cohort / "reference.fa.gz")) as fasta:
        for path in datasets.values():
            variants = open_dataset(path).variants().to_pandas()
            assert len(variants) > 1000
            assert set(variants["chromosome"]) == {"chr22"}
            for pos, ref in zip(variants["base_pair_location"], variants["ref"]):
                assert fasta.fetch("chr22", pos - 1, pos - 1 + len(ref)).upper() == ref


def test_ingest__cohort_sites_agree_on_keys(ingested):
    _, datasets = ingested
    key_of: dict[tuple, set[str]] = {}
    for path in datasets.values():
        variants = open_dataset(path).variants().to_pandas()
        for key, pos, ref, alt in zip(variants["variant_id"], variants["base_pair_location"], variants["ref"], variants["alt"]):
            key_of.setdefault((pos, frozenset((ref, alt))), set()).add(key)
    assert all(len(keys) == 1 for keys in key_of.values())
    per_site = [set(open_dataset(p).variants().column("variant_id").to_pylist()) for p in datasets.values()]
    assert len(per_site[0] & per_site[1] & per_site[2]) > 500


def test_ingest__cohort_dosages_equal_naive_pysam_reference(ingested, small_cohort):
    manifest, datasets = ingested
    with pysam.FastaFile(str(small_cohort / "reference.fa.gz")) as fasta:
        for name, path in datasets.items():
            with pysam.VariantFile(str(manifest.resolve(manifest.site(name).vcf))) as vcf:
                expected = naive_dataset(vcf, contig_style="chr", fasta=fasta)
            got = dataset_calls(path)
            assert got.keys() == expected.keys()
            assert got == expected
            swaps = sum(1 for _, s in got.values() if s)
            assert swaps == json.loads((path / "ingest-report.json").read_text())["swapped"] > 0


def test_ingest__cohort_swaps_match_truth(ingested, small_cohort):
    manifest, datasets = ingested
    truth = pd.read_csv(small_cohort / "truth.tsv", sep="\t")
    for name, path in datasets.items():
        variants = open_dataset(path).variants().to_pandas()
        swapped = set(variants.loc[variants["swapped"], "base_pair_location"])
        site_truth = truth[(truth["kind"] == "ref_alt_swap") & (truth["site"] == name)]
        assert swapped == set(site_truth["base_pair_location"])
        assert len(swapped) == manifest.site(name).counts["ref_alt_swapped"]


def test_ingest__cohort_split_dosages_are_allele_counts(ingested):
    manifest, datasets = ingested
    for name, path in datasets.items():
        variants = open_dataset(path).variants().to_pandas()
        split = variants[variants["split_from_multiallelic"]]
        assert split["source_position"].nunique() == manifest.site(name).counts["multiallelic"]
        with pysam.VariantFile(str(manifest.resolve(manifest.site(name).vcf))) as vcf:
            contig = manifest.site(name).contig
            calls = dataset_calls(path)
            for pos, alt, key in zip(split["source_position"], split["alt"], split["variant_id"]):
                (rec,) = list(vcf.fetch(contig, pos - 1, pos))
                k = rec.alts.index(alt) + 1
                counts = [-1 if None in s["GT"] else sum(a == k for a in s["GT"]) for s in rec.samples.values()]
                assert calls[key][0] == counts


def test_ingest__cohort_samples_and_report(ingested):
    manifest, datasets = ingested
    for name, path in datasets.items():
        site = manifest.site(name)
        samples = pd.read_parquet(path / "samples.parquet")
        assert list(samples.columns[:3]) == ["sample_index", "sample_id", "has_phenotypes"]
        assert {"age", "sex", "quant_trait", "binary_trait"} <= set(samples.columns)
        assert samples["quant_trait"].dtype == np.float64
        assert set(samples.loc[~samples["has_phenotypes"], "sample_id"]) == set(site.genotype_only_samples)
        report = json.loads((path / "ingest-report.json").read_text())
        assert report["samples"]["without_phenotypes"] == len(site.genotype_only_samples)
        assert report["samples"]["phenotypes_without_genotypes"] == len(site.phenotype_only_samples)
        assert set(report["samples"]["examples_phenotypes_without_genotypes"]) == set(site.phenotype_only_samples)
        assert report["records_read"] == site.counts["variants"]
        assert report["variants_written"] == open_dataset(path).num_variants
        assert set(report["dropped"]) == set(DROP_REASONS)


def test_ingest__cohort_readable_by_pandas(ingested):
    _, datasets = ingested
    path = datasets["site-2"]
    meta = json.loads((path / "dataset.json").read_text())
    first = meta["chunks"][0]["name"]
    variants = pd.read_parquet(path / "variants" / f"{first}.parquet")
    genotypes = pd.read_parquet(path / "genotypes" / f"{first}.parquet")
    assert list(variants["variant_id"]) == list(genotypes["variant_id"])
    assert len(genotypes["call_dosage"].iloc[0]) == (meta["num_samples"] + 3) // 4  # 2 bits a call
    assert variants["base_pair_location"].is_monotonic_increasing


def test_ingest__cohort_matches_bcftools_norm(ingested, small_cohort, tmp_path):
    if shutil.which("bcftools") is None:
        pytest.skip("bcftools not installed")
    manifest, datasets = ingested
    with pysam.FastaFile(str(small_cohort / "reference.fa.gz")) as fasta:
        for name, path in datasets.items():
            split = tmp_path / f"{name}.vcf"
            source = manifest.resolve(manifest.site(name).vcf)
            subprocess.run(["bcftools", "norm", "-m-", "-Ov", "-o", str(split), str(source)], check=True, capture_output=True)
            with pysam.VariantFile(str(split)) as vcf:
                expected = naive_dataset(vcf, contig_style="chr", fasta=fasta)
            assert dataset_calls(path) == expected


@pytest.mark.parametrize("scheduler", ["synchronous", "processes", "distributed"])
def test_ingest__schedulers_and_streaming_give_the_same_dataset(small_cohort, ingested, tmp_path, scheduler):
    manifest, datasets = ingested
    site = manifest.site("site-3")
    source = manifest.resolve(site.vcf)
    kwargs = dict(fasta=small_cohort / "reference.fa.gz", phenotypes=manifest.resolve(site.phenotypes), chunk_size="250kb")
    if scheduler == "distributed":
        distributed = pytest.importorskip("distributed")
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
            report = ingest(source, out=tmp_path / "d", scheduler=cluster.scheduler_address, **kwargs)
    else:
        report = ingest(source, out=tmp_path / "d", scheduler=scheduler, workers=2, **kwargs)
    assert report["tasks"] == 4
    assert dataset_calls(tmp_path / "d") == dataset_calls(datasets["site-3"])
    if scheduler == "synchronous":
        plain = tmp_path / "plain.vcf.gz"
        shutil.copy(source, plain)  # same bytes, no index: streamed
        streamed = ingest(plain, out=tmp_path / "s", **kwargs)
        assert streamed["tasks"] == 0 and not streamed["inputs"]["indexed"]
        assert streamed["chunks"] == report["chunks"]
        assert dataset_calls(tmp_path / "s") == dataset_calls(datasets["site-3"])
        for a, b in zip(open_dataset(tmp_path / "s").iter_blocks(), open_dataset(datasets["site-3"]).iter_blocks()):
            assert a.variants.equals(b.variants)


def test_ingest__cli_json_summary(small_cohort, tmp_path):
    manifest = load_manifest(small_cohort)
    site = manifest.site("site-2")
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        ["ingest", "--vcf", str(manifest.resolve(site.vcf)), "--out", str(out), "--contig-style", "nochr", "--chunk-size", "1Mb", "--json", "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads((out / "ingest-report.json").read_text())
    assert report["ref_checked"] == 0 and report["swapped"] == 0
    assert set(open_dataset(out).variants().column("chromosome").to_pylist()) == {"22"}


# --- small hand-written and generated files -----------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("5Mb", 5_000_000), ("500kb", 500_000), ("1000000", 1_000_000), ("2.5mb", 2_500_000), (123, 123)])
def test_parse_chunk_size__units(text, expected):
    assert parse_chunk_size(text) == expected


def test_ingest__ds_split_and_swap(tmp_path):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">chr1\n" + "ACGTACGTAC" * 10 + "\n")  # position 5 is A, 6 is C
    records = [
        # A matches ALT 1: swapped; G>T is C>A on the other strand: flipped and swapped to A>C
        ("chr1", 5, "G", "A,T", "GT:DS", ["0/1:1,0", "1/2:1,1", "2:0,1"]),
        ("chr1", 6, "C", "T", "GT:DS", ["0/0:0.1", "./1:1.5", "1|1:1.9"]),
    ]
    path = write_vcf(tmp_path / "ds.vcf", vcf_text(records, ["a", "b", "c"], contigs={"chr1": 100}))
    report = ingest(path, out=tmp_path / "d", fasta=fasta)
    block = next(open_dataset(tmp_path / "d").iter_blocks(with_dosage=True))
    assert block.variants.column("variant_id").to_pylist() == ["chr1:5:A:G", "chr1:5:A:C", "chr1:6:C:T"]
    assert block.variants.column("swapped").to_pylist() == [True, True, False]
    assert block.variants.column("strand_flipped").to_pylist() == [False, True, False]
    assert block.call_dosage.tolist() == [[1, 1, 2], [2, 1, 0], [0, -1, 2]]
    np.testing.assert_allclose(block.dosage, [[1, 1, 2], [2, 1, 0], [0.1, 1.5, 1.9]], rtol=1e-6)
    assert report["swapped"] == 2 and report["strand_flipped"] == 1 and report["multiallelic_records_split"] == 1


def test_ingest__reference_in_a_read_only_folder_indexed_once_and_removed(tmp_path, monkeypatch):
    """A shared reference folder the site cannot write to: one index for every task, gone after the ingest."""
    from pipeline.io import fasta as fasta_module

    fasta = tmp_path / "ref.fa"
    sequence = "ACGTACGTAC" * 10
    fasta.write_text(">chr1\n" + sequence + "\n")
    transition = {"A": "G", "C": "T", "G": "A", "T": "C"}
    records = [("chr1", position, sequence[position - 1], transition[sequence[position - 1]], "GT", ["0/1", "1/1"])
               for position in range(5, 100, 9)]
    path = write_vcf(tmp_path / "r.vcf", vcf_text(records, ["a", "b"], contigs={"chr1": 100}), indexed=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(fasta_module.tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(fasta_module.os, "access", lambda *args: False)  # as if the folder were read-only
    builds = []
    build = pysam.faidx
    monkeypatch.setattr(fasta_module.pysam, "faidx", lambda *args: builds.append(args) or build(*args))
    report = ingest(path, out=tmp_path / "d", fasta=fasta, chunk_size=20, scheduler="threads", workers=2)
    assert report["tasks"] == 5 and report["ref_checked"] == len(records)
    assert len(builds) == 1 and list(scratch.iterdir()) == [] and not Path(f"{fasta}.fai").exists()


def test_ingest__empty_vcf(tmp_path):
    path = write_vcf(tmp_path / "e.vcf", vcf_text([], ["a", "b"]))
    report = ingest(path, out=tmp_path / "d")
    dataset = open_dataset(tmp_path / "d")
    assert report["records_read"] == 0 and dataset.num_variants == 0 and dataset.num_samples == 2


def _gt(rng_alleles: list[int | None], phased: bool) -> str:
    sep = "|" if phased else "/"
    return sep.join("." if a is None else str(a) for a in rng_alleles)


@st.composite
def vcf_records(draw):
    n_samples = draw(st.integers(1, 5))
    n_records = draw(st.integers(1, 8))
    records = []
    position = 0
    for _ in range(n_records):
        position += draw(st.integers(5, 40))
        ref = draw(st.text("ACGT", min_size=1, max_size=3))
        alts = draw(st.lists(st.text("ACGT", min_size=1, max_size=3).filter(lambda a, r=ref: a != r), min_size=1, max_size=3, unique=True))
        cells = []
        for _ in range(n_samples):
            ploidy = draw(st.sampled_from([1, 2, 2, 2, 3]))
            alleles = draw(st.lists(st.one_of(st.none(), st.integers(0, len(alts))), min_size=ploidy, max_size=ploidy))
            cells.append("." if ploidy == 1 and alleles[0] is None and draw(st.booleans()) else _gt(alleles, draw(st.booleans())))
        records.append(("chr1", position, ref, ",".join(alts), "GT", cells))
    return [f"s{i}" for i in range(n_samples)], records


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=vcf_records(), indexed=st.booleans())
def test_ingest__generated_vcfs_round_trip(tmp_path_factory, data, indexed):
    samples, records = data
    folder = tmp_path_factory.mktemp("gen")
    path = write_vcf(folder / "g.vcf", vcf_text(records, samples, contigs={"chr1": 10_000}), indexed=indexed)
    ingest(path, out=folder / "d", chunk_size=60, contig_style="keep", scheduler="synchronous")
    with pysam.VariantFile(str(path)) as vcf:
        expected = naive_dataset(vcf, contig_style="keep", fasta=None)
    assert dataset_calls(folder / "d") == expected


def test_ingest__multi_contig_indexed_equals_streamed(tmp_path):
    records = [
        ("1", 10, "A", "G", "GT", ["0/1", "1/1"]),
        ("1", 160, "CA", "C,CAA", "GT", ["1/2", "0/0"]),
        ("1", 420, "T", "C", "GT", ["./1", "1"]),
        ("2", 15, "G", "T", "GT", ["0|1", "1|1"]),
        ("2", 390, "A", "C", "GT", ["0/0", "0/1"]),
    ]
    text = vcf_text(records, ["a", "b"], contigs={"1": 1000, "2": 1000})
    indexed = write_vcf(tmp_path / "m.vcf", text, indexed=True)
    plain = write_vcf(tmp_path / "plain.vcf", text)
    a = ingest(indexed, out=tmp_path / "a", chunk_size=200, scheduler="synchronous")
    b = ingest(plain, out=tmp_path / "b", chunk_size=200)
    assert a["chunks"] == b["chunks"] == 4 and a["tasks"] == 4 and b["tasks"] == 0
    assert dataset_calls(tmp_path / "a") == dataset_calls(tmp_path / "b")
    variants = open_dataset(tmp_path / "b").variants().to_pandas()
    assert list(variants["chromosome"]) == ["chr1", "chr1", "chr1", "chr1", "chr2", "chr2"]
    assert list(variants["variant_id"][1:3]) == ["chr1:160:CA:C", "chr1:160:C:CA"]


def test_ingest__builds_one_graph_and_computes_once(tmp_path, monkeypatch):
    import dask

    calls = []
    real_compute = dask.compute

    def counting_compute(*args, **kwargs):
        calls.append(len(args))
        return real_compute(*args, **kwargs)

    monkeypatch.setattr(dask, "compute", counting_compute)
    records = [("chr1", p, "A", "G", "GT", ["0/1"]) for p in (10, 120, 230, 340)]
    path = write_vcf(tmp_path / "g.vcf", vcf_text(records, ["a"]), indexed=True)
    report = ingest(path, out=tmp_path / "d", chunk_size=100, scheduler="threads", workers=2)
    assert calls == [report["tasks"]] == [4]


def _assembly_vcf(tmp_path: Path, name: str, meta: str = "") -> Path:
    """A two-sample VCF whose header carries ``meta`` lines (``##reference=...``) before its records."""
    text = vcf_text([("chr1", 5, "A", "G", "GT", ["0/1", "1/1"])], ["a", "b"])
    return write_vcf(tmp_path / name, text.replace("##fileformat=VCFv4.2\n", "##fileformat=VCFv4.2\n" + meta, 1))


def test_ingest__assembly_from_the_option_or_the_header_is_recorded(tmp_path):
    plain = _assembly_vcf(tmp_path, "plain.vcf")
    ingest(plain, out=tmp_path / "none")
    assert open_dataset(tmp_path / "none").genome_assembly is None  # not recorded unless known
    assert "genome_assembly" not in json.loads((tmp_path / "none" / "dataset.json").read_text())
    report = ingest(plain, out=tmp_path / "given", assembly="GRCh38")
    assert open_dataset(tmp_path / "given").genome_assembly == "GRCh38" == report["settings"]["genome_assembly"]
    header = _assembly_vcf(tmp_path, "h.vcf", "##reference=file:///refs/hs37d5.fa.gz\n")
    ingest(header, out=tmp_path / "header")
    assert open_dataset(tmp_path / "header").genome_assembly == "GRCh37"
    vague = _assembly_vcf(tmp_path, "v.vcf", "##reference=file:///refs/genome.fa\n")
    ingest(vague, out=tmp_path / "vague")
    assert open_dataset(tmp_path / "vague").genome_assembly is None  # no known name: nothing guessed


def test_ingest__assembly_that_contradicts_the_header_or_is_unknown_is_refused(tmp_path):
    header = _assembly_vcf(tmp_path, "h.vcf", "##reference=GRCh37\n")
    with pytest.raises(ConfigurationError, match="--assembly GRCh38 but the header's ##reference/##contig lines name GRCh37"):
        ingest(header, out=tmp_path / "d", assembly="GRCh38")
    two = _assembly_vcf(tmp_path, "two.vcf", "##reference=hg38\n##source=x\n")
    two.write_text(two.read_text().replace("##contig=<ID=chr1,length=1000>", "##contig=<ID=chr1,length=1000,assembly=b37>"))
    with pytest.raises(InputError, match="the header names two genome assemblies"):
        ingest(two, out=tmp_path / "d")
    result = CliRunner().invoke(main, ["ingest", "--vcf", str(header), "--out", str(tmp_path / "d"), "--assembly", "hg19"])
    assert result.exit_code == 2 and "'hg19' is not one of 'GRCh37', 'GRCh38'" in result.output
    assert not (tmp_path / "d").exists()


def test_dataset__one_written_before_assemblies_opens_and_a_hand_edited_one_is_refused(tmp_path):
    ingest(_assembly_vcf(tmp_path, "p.vcf"), out=tmp_path / "d", assembly="GRCh37")
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    del meta["genome_assembly"]
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(meta))
    assert open_dataset(tmp_path / "d").genome_assembly is None
    (tmp_path / "d" / "dataset.json").write_text(json.dumps({**meta, "genome_assembly": "hg19"}))
    with pytest.raises(ConfigurationError, match="genome assembly 'hg19' is not one genofed knows"):
        open_dataset(tmp_path / "d").genome_assembly
