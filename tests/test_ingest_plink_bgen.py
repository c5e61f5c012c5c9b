"""PLINK 2, PLINK 1 and BGEN inputs give the dataset their source VCF gives (plink2 converts it here)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.dataset import open_dataset, unpacked_calls
from pipeline.errors import InputError
from pipeline.ingest import ingest

pytestmark = pytest.mark.skipif(shutil.which("plink2") is None, reason="plink2 converts the test VCFs")

SAMPLES = ["s1", "s2", "s3", "s4", "s5"]
SEQUENCE = "ACGTTGCAAGGCTTACGATCCAGTGACCTAGGATCCATTGCAGTCAAGCTGATCGGATTACAGGCATCGATTCAGCTAGCATGCAAGTCGATGCATGCCATG"
# (pos, id, ref, alt, GT cells): REF matches SEQUENCE; the third variant has the ALT as its major allele
GT_RECORDS = [
    (10, "rs1", "G", "A", ["0/0", "0/1", "1/1", "./.", "0/1"]),
    (20, "rs2", "C", "T", ["0|1", "1|0", "0|0", "0/0", "1/1"]),
    (30, ".", "A", "G", ["1/1", "1/1", "0/1", "1/1", "0/0"]),
    (41, "rs4", "CA", "C", ["0/1", "0/0", "0/0", "1/1", "./."]),
]
MULTI_RECORD = (55, "rs5", "G", "T,C", ["0/1", "1/2", "2/2", "0/0", "./."])
# DS in quarters (exact in plink2's 1/16384 steps); GT as plink2 derives it from DS (within 0.1 of an integer, else missing)
DS_RECORDS = [
    (10, "rs1", "G", "A", [0.0, 0.75, 2.0, None, 1.0]),
    (20, "rs2", "C", "T", [0.5, 2.0, 0.25, 1.25, 0.0]),
    (30, "rs3", "A", "G", [1.0, 1.5, 2.0, 0.0, 1.75]),
]


def _vcf(path: Path, records: list[tuple], *, dosage: bool = False) -> Path:
    header = (
        "##fileformat=VCFv4.2\n##contig=<ID=1,length=102>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(SAMPLES) + "\n"
    )
    lines = []
    for pos, rid, ref, alt, cells in records:
        if dosage:
            cells = [_ds_cell(value) for value in cells]
        lines.append("\t".join(["1", str(pos), rid, ref, alt, ".", ".", ".", "GT:DS" if dosage else "GT", *cells]))
    path.write_text(header + "\n".join(lines) + "\n")
    return path


def _ds_cell(value: float | None) -> str:
    if value is None:
        return "./.:."
    call = round(value)
    gt = {0: "0/0", 1: "0/1", 2: "1/1"}[call] if abs(value - call) <= 0.1 else "./."
    return f"{gt}:{value:g}"


def _plink2(*args: str) -> None:
    subprocess.run(["plink2", "--silent", *args], check=True, capture_output=True)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """The test VCFs, the FASTA, and plink2's conversions of them."""
    (tmp_path / "ref.fa").write_text(">1\n" + SEQUENCE + "\n")
    gt = _vcf(tmp_path / "gt.vcf", GT_RECORDS)
    multi = _vcf(tmp_path / "multi.vcf", [*GT_RECORDS, MULTI_RECORD])
    ds = _vcf(tmp_path / "ds.vcf", DS_RECORDS, dosage=True)
    _plink2("--vcf", str(multi), "--make-pgen", "--out", str(tmp_path / "multi"))
    _plink2("--vcf", str(gt), "--maj-ref", "force", "--make-bed", "--out", str(tmp_path / "gt"))  # PLINK 1 style: major allele as A2
    _plink2("--vcf", str(ds), "dosage=DS", "--make-pgen", "--out", str(tmp_path / "ds"))
    _plink2("--vcf", str(ds), "dosage=DS", "--export", "bgen-1.2", "bits=8", "ref-first", "--out", str(tmp_path / "ds"))
    return {"fasta": tmp_path / "ref.fa", "gt": gt, "multi": multi, "ds": ds, "root": tmp_path}


def _dataset(path: Path) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    """Variants, call dosages and dosages (None when the dataset has none) of a dataset."""
    names = open_dataset(path).chunk_names
    variants = pa.concat_tables([pq.read_table(path / "variants" / f"{name}.parquet") for name in names])
    genotypes = pa.concat_tables([pq.read_table(path / "genotypes" / f"{name}.parquet") for name in names])
    calls = unpacked_calls(genotypes.column("call_dosage"), len(SAMPLES), source=str(path))
    doses = genotypes.column("dosage").to_pylist()
    dosage = None if all(d is None for d in doses) else np.array(
        [np.frombuffer(d, "<f4") if d is not None else [np.nan] * len(SAMPLES) for d in doses], np.float32)
    return variants, calls, dosage


def _ingest(files: dict[str, Path], name: str, source: str | Path, input_format: str = "vcf", **options: object) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
    out = files["root"] / f"{name}.dataset"
    ingest(str(source), out=out, fasta=files["fasta"], input_format=input_format, **options)
    return _dataset(out)


def test_pfile__same_dataset_as_the_vcf_multiallelic_record_split_alike(files):
    variants, calls, dosage = _ingest(files, "vcf", files["multi"])
    from_pgen = _ingest(files, "pgen", files["root"] / "multi", "pfile")
    assert from_pgen[0].equals(variants)
    assert variants.column("split_from_multiallelic").to_pylist().count(True) == 2
    np.testing.assert_array_equal(from_pgen[1], calls)
    assert dosage is None and from_pgen[2] is None


def test_pfile__dosages_equal_the_vcf_ds(files):
    variants, calls, dosage = _ingest(files, "vcf", files["ds"])
    from_pgen = _ingest(files, "pgen", files["root"] / "ds", "pfile")
    assert from_pgen[0].equals(variants)
    np.testing.assert_array_equal(from_pgen[1], calls)
    assert dosage is not None and from_pgen[2] is not None
    np.testing.assert_array_equal(from_pgen[2], dosage)


def test_pfile__zstd_compressed_pvar_as_plink2_vzs_writes_it(files):
    _plink2("--vcf", str(files["multi"]), "--make-pgen", "vzs", "--out", str(files["root"] / "multi_vzs"))
    assert (files["root"] / "multi_vzs.pvar.zst").is_file() and not (files["root"] / "multi_vzs.pvar").exists()
    plain = _ingest(files, "pgen", files["root"] / "multi", "pfile")
    compressed = _ingest(files, "pgen_vzs", files["root"] / "multi_vzs", "pfile")
    assert compressed[0].equals(plain[0])
    np.testing.assert_array_equal(compressed[1], plain[1])


def _indexed(path: Path) -> Path:
    """``path`` bgzipped and tabix-indexed (the VCF read by region, as the PLINK/BGEN inputs are)."""
    import pysam

    return Path(pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True))


def _chunks(path: Path) -> list[tuple[list, list]]:
    dataset = open_dataset(path)
    return [(pq.read_table(path / "variants" / f"{name}.parquet").to_pylist(),
             pq.read_table(path / "genotypes" / f"{name}.parquet").to_pylist()) for name in dataset.chunk_names]


@pytest.mark.parametrize(("name", "input_format", "workers"), [("multi", "pfile", 1), ("ds", "pfile", 2), ("gt", "bfile", 1),
                                                               ("ds", "bgen", 2)])
def test_regions__plink_and_bgen_are_cut_into_the_indexed_vcfs_tasks_and_chunks(files, name, input_format, workers):
    """One Dask task per region, as for the tabix-indexed VCF: the same chunks, whatever the scheduler (processes:
    each task carries its region's rows, pickled)."""
    root = files["root"]
    vcf = _indexed(files[name])
    source = root / f"{name}.bgen" if input_format == "bgen" else root / name
    options = {"chunk_size": 20, "workers": workers, "scheduler": "processes" if workers > 1 else "threads"}
    by_region = ingest(str(source), out=root / f"{name}-{input_format}.dataset", fasta=files["fasta"],
                       input_format=input_format, **options)
    from_vcf = ingest(str(vcf), out=root / f"{name}-{input_format}-vcf.dataset", fasta=files["fasta"], **options)
    assert by_region["inputs"]["indexed"] and by_region["tasks"] == from_vcf["tasks"] >= 2
    ours, theirs = _chunks(root / f"{name}-{input_format}.dataset"), _chunks(root / f"{name}-{input_format}-vcf.dataset")
    assert len(ours) == len(theirs) == by_region["tasks"]
    for (variants, genotypes), (vcf_variants, vcf_genotypes) in zip(ours, theirs):
        assert [v["variant_id"] for v in variants] == [v["variant_id"] for v in vcf_variants]
        assert [g["call_dosage"] for g in genotypes] == [g["call_dosage"] for g in vcf_genotypes]
        if input_format != "bgen":  # BGEN's 8-bit dosages: compared to the VCF's within their precision above
            np.testing.assert_array_equal(np.array([np.frombuffer(g["dosage"] or b"", "<f4") for g in genotypes], dtype=float),
                                          np.array([np.frombuffer(g["dosage"] or b"", "<f4") for g in vcf_genotypes], dtype=float))


def test_regions__an_unsorted_pvar_is_refused_before_any_work_naming_the_line(files):
    root = files["root"]
    for suffix in (".pgen", ".psam"):
        shutil.copy(root / f"multi{suffix}", root / f"unsorted{suffix}")
    lines = (root / "multi.pvar").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    body = [line for line in lines if not line.startswith("#")]
    (root / "unsorted.pvar").write_text("\n".join([*header, body[1], body[0], *body[2:]]) + "\n")
    with pytest.raises(InputError, match=r"unsorted\.pvar: 1:10 \(line \d+\): positions decrease"):
        ingest(str(root / "unsorted"), out=root / "unsorted.dataset", input_format="pfile", chunk_size=20)
    assert not (root / "unsorted.dataset").exists()


def test_bfile__a2_read_as_ref_and_swaps_fixed_by_the_fasta(files):
    variants, calls, _ = _ingest(files, "vcf", files["gt"])
    bim = (files["root"] / "gt.bim").read_text().split("\n")
    assert bim[2].split("\t")[4:6] == ["A", "G"]  # plink2 --maj-ref made ALT G the A2 of the third variant
    bed_variants, bed_calls, bed_dosage = _ingest(files, "bed", files["root"] / "gt", "bfile")
    same = [name for name in variants.column_names if name != "swapped"]
    assert bed_variants.select(same).equals(variants.select(same))
    assert bed_variants.column("swapped").to_pylist() == [False, False, True, False]
    np.testing.assert_array_equal(bed_calls, calls)
    assert bed_dosage is None


def test_bgen__calls_and_dosages_equal_the_vcf_within_8_bit_precision(files):
    variants, calls, dosage = _ingest(files, "vcf", files["ds"])
    bgen_variants, bgen_calls, bgen_dosage = _ingest(files, "bgen", files["root"] / "ds.bgen", "bgen")
    assert bgen_variants.equals(variants)
    np.testing.assert_array_equal(bgen_calls, calls)
    assert dosage is not None and bgen_dosage is not None
    np.testing.assert_array_equal(np.isnan(bgen_dosage), np.isnan(dosage))
    np.testing.assert_allclose(bgen_dosage, dosage, atol=2 / 255, equal_nan=True)  # 8-bit probabilities: k/255 steps


def _strip_bgen_samples(path: Path, target: Path) -> Path:
    """A copy of a BGEN file without its sample identifier block (flag bit 31 cleared)."""
    data = path.read_bytes()
    offset, header_length = struct.unpack_from("<II", data, 0)
    (flags,) = struct.unpack_from("<I", data, 4 + header_length - 4)
    (block_length,) = struct.unpack_from("<I", data, 4 + header_length)
    header = bytearray(data[4 : 4 + header_length])
    struct.pack_into("<I", header, header_length - 4, flags & ~(1 << 31))
    target.write_bytes(struct.pack("<I", offset - block_length) + bytes(header) + data[4 + header_length + block_length :])
    return target


def _cli(*args: str) -> object:
    return CliRunner().invoke(main, ["ingest", *args])


def test_bgen_without_sample_ids__needs_sample_file(files):
    root = files["root"]
    bare = _strip_bgen_samples(root / "ds.bgen", root / "bare.bgen")
    result = _cli("--bgen", str(bare), "--out", str(root / "bare.dataset"))
    assert result.exit_code == 1
    assert str(bare) in result.output and "--sample" in result.output and result.output.count("\n") == 1
    assert not (root / "bare.dataset").exists()
    with_sample = _ingest(files, "bare", bare, "bgen", sample=root / "ds.sample")
    from_bgen = _ingest(files, "bgen", root / "ds.bgen", "bgen")
    assert with_sample[0].equals(from_bgen[0])
    np.testing.assert_array_equal(with_sample[2], from_bgen[2])


def test_pfile_errors__missing_file_and_sample_count_mismatch(files):
    root = files["root"]
    for suffix in (".pvar", ".psam"):
        shutil.copy(root / "ds.pgen", root / f"no{suffix[1:]}.pgen")
        for other in {".pvar", ".psam"} - {suffix}:
            shutil.copy(root / f"ds{other}", root / f"no{suffix[1:]}{other}")
        result = _cli("--pfile", str(root / f"no{suffix[1:]}"), "--out", str(root / "x.dataset"))
        assert result.exit_code == 1, result.output
        assert f"no{suffix[1:]}{suffix}" in result.output and result.output.count("\n") == 1
    for suffix in (".pgen", ".pvar"):
        shutil.copy(root / f"ds{suffix}", root / f"more{suffix}")
    (root / "more.psam").write_text((root / "ds.psam").read_text() + "s6\tNA\n")
    result = _cli("--pfile", str(root / "more"), "--out", str(root / "x.dataset"))
    assert result.exit_code == 1
    assert "more.pgen" in result.output and "5 samples" in result.output and "6 samples" in result.output
    assert not (root / "x.dataset").exists()


def test_cli__one_kind_of_input(files):
    root = files["root"]
    result = _cli("--vcf", str(files["gt"]), "--pfile", str(root / "ds"), "--out", str(root / "x.dataset"))
    assert result.exit_code == 2 and "one kind of input" in result.output
    result = _cli("--pfile", str(root / "ds"), "--sample", str(root / "ds.sample"), "--out", str(root / "x.dataset"))
    assert result.exit_code == 2 and "--sample goes with --bgen" in result.output
    result = _cli("--pfile", str(root / "ds"), "--fasta", str(files["fasta"]), "--out", str(root / "cli.dataset"))
    assert result.exit_code == 0, result.output
    assert _dataset(root / "cli.dataset")[0].num_rows == len(DS_RECORDS)
