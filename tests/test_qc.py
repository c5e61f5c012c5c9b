"""genofed qc: metrics, thresholds and outputs, checked against plink2 and plain NumPy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import dataset, schemas
from pipeline.cli import main
from pipeline.errors import ConfigurationError, InputError, OutputExistsError
from pipeline.qc import default_output, run_qc

CONTIG = "22"
FIRST_POSITION = 16_000_000


def genotype_matrix(seed: int, n_variants: int, n_samples: int) -> np.ndarray:
    """Dosages with a spread of frequencies, missingness and HWE departures, plus edge rows."""
    rng = np.random.default_rng(seed)
    alt_frequency = rng.beta(0.4, 0.8, size=n_variants)
    inbreeding = np.where(rng.random(n_variants) < 0.2, rng.uniform(-0.5, 0.9, n_variants), 0.0)
    p, f = alt_frequency[:, None], inbreeding[:, None]
    p_hom_alt = np.clip(p * p + f * p * (1 - p), 0, 1)
    p_het = np.clip(2 * p * (1 - p) * (1 - f), 0, 1 - p_hom_alt)
    u = rng.random((n_variants, n_samples))
    calls = np.where(u < p_hom_alt, 2, np.where(u < p_hom_alt + p_het, 1, 0)).astype(np.int8)
    missing_rate = np.where(rng.random(n_variants) < 0.3, rng.uniform(0, 0.2, n_variants), 0.0)
    sample_missing = np.where(rng.random(n_samples) < 0.1, 0.3, 0.0)
    missing = rng.random((n_variants, n_samples)) < (missing_rate[:, None] + sample_missing[None, :])
    calls[missing] = -1
    calls[0] = 0  # monomorphic hom-ref
    calls[1] = 2  # monomorphic hom-alt
    calls[2] = 1  # every sample het: extreme HWE departure
    calls[3] = 0
    calls[3, 0] = 1  # a singleton
    calls[4] = np.where(np.arange(n_samples) % 2, 2, 0)  # no hets at all
    return calls


def variants_table(n_variants: int) -> pa.Table:
    position = np.arange(n_variants, dtype=np.int64) * 10 + FIRST_POSITION
    ids = [f"{CONTIG}:{pos}:A:G" for pos in position]
    false = pa.array(np.zeros(n_variants, bool))
    return pa.table(
        {
            "variant_id": pa.array(ids, pa.string()),
            "chromosome": pa.array([CONTIG] * n_variants, pa.string()),
            "base_pair_location": pa.array(position),
            "ref": pa.array(["A"] * n_variants, pa.string()),
            "alt": pa.array(["G"] * n_variants, pa.string()),
            "original_id": pa.nulls(n_variants, pa.string()),
            "info_score": pa.nulls(n_variants, pa.float32()),
            "source_position": pa.array(position),
            "split_from_multiallelic": false,
            "swapped": false,
            "strand_flipped": false,
            "strand_ambiguous": false,
            "ref_checked": false,
        }
    )


def sample_ids(n_samples: int) -> list[str]:
    return [f"S{i:04d}" for i in range(n_samples)]


def build_dataset(root: Path, calls: np.ndarray, *, chunk_sizes: list[int]) -> Path:
    """Writes a dataset straight from a dosage matrix (no VCF, no ingest)."""
    assert sum(chunk_sizes) == calls.shape[0]
    root.mkdir(parents=True)
    variants = variants_table(calls.shape[0])
    chunks, start = [], 0
    for index, size in enumerate(chunk_sizes):
        block = dataset.Block(variants=variants.slice(start, size), call_dosage=calls[start : start + size], dosage=None)
        chunks.append(dataset.write_chunk(root, index, block))
        start += size
    n_samples = calls.shape[1]
    samples = pa.table(
        {
            "sample_index": pa.array(np.arange(n_samples, dtype=np.int32)),
            "sample_id": pa.array(sample_ids(n_samples), pa.string()),
            "has_phenotypes": pa.array(np.zeros(n_samples, bool)),
        }
    )
    dataset.write_metadata(root, samples=samples, chunks=chunks)
    return root


def write_vcf(path: Path, calls: np.ndarray) -> None:
    genotype = {-1: "./.", 0: "0/0", 1: "0/1", 2: "1/1"}
    variants = variants_table(calls.shape[0])
    lines = [
        "##fileformat=VCFv4.2",
        f"##contig=<ID={CONTIG},length=50000000>",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *sample_ids(calls.shape[1])]),
    ]
    for row, variant_id, position in zip(calls, variants.column("variant_id").to_pylist(), variants.column("base_pair_location").to_pylist()):
        lines.append("\t".join([CONTIG, str(position), variant_id, "A", "G", ".", ".", ".", "GT", *(genotype[int(c)] for c in row)]))
    path.write_text("\n".join(lines) + "\n")


def read_plink_table(path: Path) -> dict[str, dict[str, str]]:
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    return {row[1] if header[0] == "#CHROM" else row[0]: dict(zip(header, row)) for row in rows}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    calls = genotype_matrix(seed=7, n_variants=150, n_samples=240)
    root = build_dataset(tmp_path_factory.mktemp("qc") / "site.dataset", calls, chunk_sizes=[60, 1, 0, 89])
    return calls, root


@pytest.fixture(scope="module")
def cohort_qc(cohort: tuple[np.ndarray, Path]) -> tuple[pa.Table, pa.Table, dict]:
    _, root = cohort
    out = root.parent / "site.qc"
    summary = run_qc(root, out=out, hwe_p=1e-6, maf=0.01)
    return pq.read_table(out / "variants.parquet"), pq.read_table(out / "samples.parquet"), summary


def test_run_qc__matches_numpy_counts(cohort: tuple[np.ndarray, Path], cohort_qc: tuple[pa.Table, pa.Table, dict]) -> None:
    calls, _ = cohort
    variants, samples, _ = cohort_qc
    v = variants.to_pydict()
    n_samples = calls.shape[1]
    np.testing.assert_array_equal(v["n_hom_ref"], (calls == 0).sum(1))
    np.testing.assert_array_equal(v["n_het"], (calls == 1).sum(1))
    np.testing.assert_array_equal(v["n_hom_alt"], (calls == 2).sum(1))
    np.testing.assert_array_equal(v["n_missing"], (calls == -1).sum(1))
    np.testing.assert_allclose(v["call_rate"], (calls >= 0).sum(1) / n_samples, rtol=0)
    np.testing.assert_array_equal(v["allele_count"], np.where(calls > 0, calls, 0).sum(1))
    np.testing.assert_array_equal(v["allele_number"], 2 * (calls >= 0).sum(1))
    assert v["variant_id"] == variants_table(calls.shape[0]).column("variant_id").to_pylist()
    s = samples.to_pydict()
    assert s["sample_id"] == sample_ids(n_samples)
    np.testing.assert_array_equal(s["n_called"], (calls >= 0).sum(0))
    np.testing.assert_array_equal(s["n_missing"], (calls == -1).sum(0))
    np.testing.assert_array_equal(s["n_het"], (calls == 1).sum(0))
    np.testing.assert_allclose(s["call_rate"], (calls >= 0).sum(0) / calls.shape[0], rtol=0)
    np.testing.assert_allclose(s["heterozygosity"], (calls == 1).sum(0) / (calls >= 0).sum(0), rtol=1e-15)


def test_run_qc__outputs_follow_the_contract(cohort_qc: tuple[pa.Table, pa.Table, dict]) -> None:
    variants, samples, _ = cohort_qc
    schemas.validate(variants, "qc_variants")
    schemas.validate(samples, "qc_samples")
    assert variants.schema.names == schemas.schema("qc_variants").names


def test_run_qc__pass_flags_and_summary(cohort: tuple[np.ndarray, Path], cohort_qc: tuple[pa.Table, pa.Table, dict]) -> None:
    _, root = cohort
    variants, samples, summary = cohort_qc
    v = variants.to_pandas()
    maf = np.minimum(v.alt_allele_frequency, 1 - v.alt_allele_frequency)
    fails = {"call_rate": v.call_rate < 0.95, "hwe": v.hwe_p_value < 1e-6, "maf": maf < 0.01}
    expected_pass = ~(fails["call_rate"] | fails["hwe"] | fails["maf"])
    np.testing.assert_array_equal(v.pass_qc, expected_pass)
    assert summary["variants"]["failing_by_reason"] == {k: int(m.sum()) for k, m in fails.items()}
    assert summary["variants"]["passing"] == int(expected_pass.sum())
    assert all(count > 0 for count in summary["variants"]["failing_by_reason"].values())
    s = samples.to_pandas()
    np.testing.assert_array_equal(s.pass_qc, s.call_rate >= 0.95)
    assert 0 < summary["samples"]["failing"] < len(s)
    on_disk = json.loads((root.parent / "site.qc" / "qc-summary.json").read_text())
    assert on_disk == summary
    # Edge rows: monomorphic (p = 1), every sample het and no hets (tiny p).
    assert v.hwe_p_value[0] == 1.0 and v.hwe_p_value[1] == 1.0 and v.hwe_p_value[3] == 1.0
    assert v.hwe_p_value[2] < 1e-50 and v.hwe_p_value[4] < 1e-50


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 is not installed")
def test_run_qc__agrees_with_plink2(cohort: tuple[np.ndarray, Path], cohort_qc: tuple[pa.Table, pa.Table, dict], tmp_path: Path) -> None:
    calls, _ = cohort
    variants, samples, _ = cohort_qc
    write_vcf(tmp_path / "cohort.vcf", calls)
    subprocess.run(
        ["plink2", "--vcf", str(tmp_path / "cohort.vcf"), "--hardy", "--missing", "--freq", "counts", "--het",
         "--threads", "1", "--memory", "700", "--out", str(tmp_path / "ref")],
        check=True, capture_output=True,
    )
    hardy = read_plink_table(tmp_path / "ref.hardy")
    vmiss = read_plink_table(tmp_path / "ref.vmiss")
    acount = read_plink_table(tmp_path / "ref.acount")
    checked_p = 0
    for row in variants.to_pylist():
        vid = row["variant_id"]
        h = hardy[vid]
        assert h["A1"] == "A"  # plink2 --hardy counts A1 = REF here
        assert (int(h["HOM_A1_CT"]), int(h["HET_A1_CT"]), int(h["TWO_AX_CT"])) == (row["n_hom_ref"], row["n_het"], row["n_hom_alt"])
        plink_p = float(h["P"])
        # plink2 prints 6 significant digits.
        assert row["hwe_p_value"] == pytest.approx(plink_p, rel=5e-6, abs=1e-300), vid
        checked_p += plink_p < 1e-3
        assert int(vmiss[vid]["MISSING_CT"]) == row["n_missing"]
        assert int(vmiss[vid]["OBS_CT"]) == row["n_missing"] + row["n_hom_ref"] + row["n_het"] + row["n_hom_alt"]
        assert row["call_rate"] == pytest.approx(1 - float(vmiss[vid]["F_MISS"]), rel=5e-6)
        assert int(acount[vid]["ALT_CTS"]) == row["allele_count"]
        assert int(acount[vid]["OBS_CT"]) == row["allele_number"]
    assert checked_p >= 5  # the comparison covered small p-values too
    smiss = read_plink_table(tmp_path / "ref.smiss")
    het = read_plink_table(tmp_path / "ref.het")
    for row in samples.to_pylist():
        sid = row["sample_id"]
        assert int(smiss[sid]["MISSING_CT"]) == row["n_missing"]
        assert row["call_rate"] == pytest.approx(1 - float(smiss[sid]["F_MISS"]), rel=5e-6)
        assert int(het[sid]["OBS_CT"]) - int(het[sid]["O(HOM)"]) == row["n_het"]


def test_run_qc__refuses_existing_output_without_force(cohort: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    _, root = cohort
    out = tmp_path / "qc"
    out.mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        run_qc(root, out=out)
    run_qc(root, out=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["qc-summary.json", "samples.parquet", "variants.parquet"]


def test_run_qc__rejects_out_of_range_threshold(cohort: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    _, root = cohort
    with pytest.raises(ConfigurationError, match="--maf"):
        run_qc(root, out=tmp_path / "qc", maf=0.7)
    assert not (tmp_path / "qc").exists()


def test_run_qc__rejects_calls_outside_the_contract(tmp_path: Path) -> None:
    calls = genotype_matrix(seed=1, n_variants=6, n_samples=5)
    calls[5, 2] = 3
    root = build_dataset(tmp_path / "bad.dataset", calls, chunk_sizes=[6])
    with pytest.raises(InputError, match=r"22:16000050:A:G .*outside -1/0/1/2"):
        run_qc(root, out=tmp_path / "qc")
    assert not (tmp_path / "qc").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.dataset"]  # no temporary folder left behind


def test_run_qc__rejects_dataset_without_variants(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "empty.dataset", np.zeros((0, 3), np.int8), chunk_sizes=[])
    with pytest.raises(InputError, match="no variants"):
        run_qc(root, out=tmp_path / "qc")


def test_default_output__sibling_of_the_dataset() -> None:
    assert default_output(Path("/data/site-1.dataset")) == Path("/data/site-1.dataset.qc")


def test_cli_qc__writes_outputs_and_prints_summary(cohort: tuple[np.ndarray, Path], tmp_path: Path) -> None:
    _, root = cohort
    out = tmp_path / "cli.qc"
    runner = CliRunner()
    result = runner.invoke(main, ["qc", str(root), "--out", str(out), "--maf", "0.01", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "variants: 150 total" in result.output and "samples:  240 total" in result.output
    again = runner.invoke(main, ["qc", str(root), "--out", str(out), "--json", "--force", "--hwe-p", "0"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["variants"]["failing_by_reason"]["hwe"] == 0
    assert summary["thresholds"]["hwe_p"] == 0.0
    exists = runner.invoke(main, ["qc", str(root), "--out", str(out)])
    assert exists.exit_code == 1 and "already exists" in exists.output
    usage = runner.invoke(main, ["qc", str(root), "--out", str(out), "--min-call-rate", "2"])
    assert usage.exit_code == 2


def test_run_qc__same_result_after_ingest_of_the_same_genotypes(cohort: tuple[np.ndarray, Path], cohort_qc: tuple[pa.Table, pa.Table, dict], tmp_path: Path) -> None:
    ingest = pytest.importorskip("pipeline.ingest").ingest
    calls, _ = cohort
    variants, samples, _ = cohort_qc
    write_vcf(tmp_path / "cohort.vcf", calls)
    ingest(str(tmp_path / "cohort.vcf"), out=str(tmp_path / "ingested"), contig_style="keep", scheduler="synchronous")
    run_qc(tmp_path / "ingested", out=tmp_path / "qc", hwe_p=1e-6, maf=0.01)
    assert pq.read_table(tmp_path / "qc" / "variants.parquet").equals(variants)
    assert pq.read_table(tmp_path / "qc" / "samples.parquet").equals(samples)


@pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 is not installed")
def test_hwe_p_value__agrees_with_plink2_on_large_samples(tmp_path: Path) -> None:
    # 3000 samples: tables from balanced to extreme, each written as a VCF row.
    rng = np.random.default_rng(11)
    n_samples = 3000
    rows = []
    for _ in range(40):
        hom_alt = int(rng.integers(0, 400))
        het = int(rng.integers(0, n_samples - hom_alt + 1)) if rng.random() < 0.5 else int(rng.integers(0, 1200))
        het = min(het, n_samples - hom_alt)
        row = np.zeros(n_samples, np.int8)
        row[:het] = 1
        row[het : het + hom_alt] = 2
        rows.append(rng.permutation(row))
    calls = np.array(rows)
    root = build_dataset(tmp_path / "big.dataset", calls, chunk_sizes=[len(rows)])
    run_qc(root, out=tmp_path / "qc")
    write_vcf(tmp_path / "big.vcf", calls)
    subprocess.run(
        ["plink2", "--vcf", str(tmp_path / "big.vcf"), "--hardy", "--threads", "1", "--memory", "700", "--out", str(tmp_path / "ref")],
        check=True, capture_output=True,
    )
    hardy = read_plink_table(tmp_path / "ref.hardy")
    for row in pq.read_table(tmp_path / "qc" / "variants.parquet").to_pylist():
        plink_p = float(hardy[row["variant_id"]]["P"])
        assert row["hwe_p_value"] == pytest.approx(plink_p, rel=5e-6, abs=1e-300), row["variant_id"]


@pytest.fixture(scope="module")
def chrx_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated site of 300 samples of three ancestries with 2 Mb of chrX (males haploid), ingested with its sex column."""
    from pipeline.ingest import ingest
    from pipeline.sim import load_manifest, simulate_cohort

    root = tmp_path_factory.mktemp("chrx")
    simulate_cohort(root / "cohort", sites=1, samples=300, region="chr22:16000000-16100000",
                    background_regions=["chrX:3000000-5000000"], seed=0)
    manifest = load_manifest(root / "cohort")
    site = manifest.sites[0]
    ingest(manifest.resolve(site.vcf), out=root / "site.dataset", fasta=manifest.resolve(manifest.reference),
           phenotypes=manifest.resolve(site.phenotypes), workers=1)
    return root / "site.dataset"


def test_run_qc__sex_check_from_chrx(chrx_site: Path, tmp_path: Path) -> None:
    summary = run_qc(chrx_site, out=tmp_path / "qc")
    table = pq.read_table(tmp_path / "qc" / "samples.parquet").to_pydict()
    check = summary["samples"]["sex_check"]
    assert check["x_variants"] > 1000 and check["ok"] + check["problem"] == 300
    assert check["pseudoautosomal_regions"].startswith("GRCh38")
    for reported, called, status in zip(table["reported_sex"], table["snp_sex"], table["sex_check"]):
        assert status == ("OK" if reported == called != 0 else "PROBLEM")
    males = [f for f, sex in zip(table["x_f"], table["reported_sex"]) if sex == 1]
    assert males and min(males) > 0.99  # haploid: every call homozygous
    assert sum(called == reported for called, reported in zip(table["snp_sex"], table["reported_sex"]) if reported) > 200


@pytest.mark.skipif(shutil.which("plink1.9") is None, reason="plink1.9 is not installed")
def test_run_qc__sex_check_equals_plink19_check_sex(chrx_site: Path, tmp_path: Path) -> None:
    from tests.analyses.gwas_support import write_bed

    run_qc(chrx_site, out=tmp_path / "qc")
    ours = pq.read_table(tmp_path / "qc" / "samples.parquet").to_pydict()
    data = dataset.open_dataset(chrx_site)
    blocks = [b for b in data.iter_blocks() if b.variants.column("chromosome")[0].as_py() == "chrX"]
    ids = [v for b in blocks for v in b.variants.column("variant_id").to_pylist()]
    samples = data.samples().column("sample_id").to_pylist()
    prefix = write_bed(tmp_path / "x", np.concatenate([b.call_dosage for b in blocks]), ids, samples)
    Path(f"{prefix}.bim").write_text(Path(f"{prefix}.bim").read_text().replace("X\t", "23\t"))
    fam = [f"{s}\t{s}\t0\t0\t{sex}\t-9" for s, sex in zip(samples, ours["reported_sex"])]
    Path(f"{prefix}.fam").write_text("\n".join(fam) + "\n")
    done = subprocess.run(["plink1.9", "--bfile", str(prefix), "--check-sex", "--out", str(tmp_path / "cs")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    header, *rows = (tmp_path / "cs.sexcheck").read_text().splitlines()
    theirs = {fields[1]: fields for fields in (row.split() for row in rows)}
    for sample, f, snp_sex, status in zip(samples, ours["x_f"], ours["snp_sex"], ours["sex_check"]):
        _, _, _, plink_snp_sex, plink_status, plink_f = theirs[sample]
        assert (snp_sex, status) == (int(plink_snp_sex), plink_status), sample
        assert f == pytest.approx(float(plink_f), abs=6e-4), sample  # plink prints 4 significant digits
