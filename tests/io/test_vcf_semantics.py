"""One reading path, one semantics: plain, bgzip+TBI, bgzip+CSI and BCF+CSI inputs give the
same dataset, or the same one-line error (exit 1, no output folder).

Each regression test writes a minimal VCF and ingests it through every kind of input;
bcftools decides what is right where it is installed.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pysam
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.dataset import unpacked_calls
from pipeline.errors import InputError
from pipeline.ingest import ingest
from pipeline.io.vcf import decode_ds, index_record_counts, open_vcf, parse_gt, parse_position, read_blocks

HAS_BCFTOOLS = shutil.which("bcftools") is not None
KINDS = ["vcf", "tbi", "csi", "bcf"]
HTSLIB_TESTS = Path("/usr/share/htslib-test/test")


def header(samples: list[str], *, version: str = "4.3", contigs: tuple[str, ...] = ("chr1",)) -> str:
    lines = [f"##fileformat=VCFv{version}"]
    lines += [f"##contig=<ID={name},length=100000>" for name in contigs]
    lines += [
        '##INFO=<ID=NOTE,Number=1,Type=String,Description="free text">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="Dosage">',
        '##FORMAT=<ID=PL,Number=G,Type=Integer,Description="Phred likelihoods">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", *(["FORMAT", *samples] if samples else [])]),
    ]
    return "\n".join(lines) + "\n"


def line(pos: object, calls: tuple[str, ...] = ("0/1", "1/1"), *, fmt: str = "GT", info: str = ".", chrom: str = "chr1", ref: str = "A", alt: str = "G") -> str:
    return "\t".join([chrom, str(pos), ".", ref, alt, ".", "PASS", info, fmt, *calls])


def write_kind(folder: Path, text: bytes | str, kind: str, name: str = "in") -> Path:
    """``text`` as a plain VCF, bgzip + .tbi, bgzip + .csi, or BCF + .csi."""
    data = text.encode() if isinstance(text, str) else text
    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / f"{name}-{kind}.vcf"
    plain.write_bytes(data)
    if kind == "vcf":
        return plain
    if kind == "bcf":
        bcf = folder / f"{name}.bcf"
        with pysam.VariantFile(str(plain)) as source, pysam.VariantFile(str(bcf), "wb", header=source.header) as sink:
            for rec in source:
                sink.write(rec)
        pysam.tabix_index(str(bcf), preset="bcf", csi=True, force=True)
        return bcf
    compressed = folder / f"{name}-{kind}.vcf.gz"
    pysam.tabix_compress(str(plain), str(compressed), force=True)
    pysam.tabix_index(str(compressed), preset="vcf", csi=kind == "csi", force=True)
    assert compressed.with_name(compressed.name + (".csi" if kind == "csi" else ".tbi")).exists()
    return compressed


def tables(out: Path) -> tuple[pa.Table, pa.Table]:
    """The dataset's variants and genotypes tables, chunk files concatenated in order."""
    return tuple(  # type: ignore[return-value]
        pa.concat_tables([pq.read_table(f) for f in sorted((out / folder).glob("*.parquet"))]) if (out / folder).exists() else None
        for folder in ("variants", "genotypes")
    )


def run_cli(path: Path, out: Path, chunk_size: str = "1kb"):
    return CliRunner().invoke(main, ["ingest", "--vcf", str(path), "--out", str(out), "--chunk-size", chunk_size, "--no-progress", "--scheduler", "synchronous"])


def assert_refused(path: Path, out: Path, *fragments: str) -> str:
    result = run_cli(path, out)
    assert result.exit_code == 1, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("genofed: error: ") and "Traceback" not in result.output, result.output
    assert str(path.name) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    return message


def ingest_all(tmp_path: Path, text: str | bytes, chunk_size: int | str = 1000, kinds: list[str] = KINDS) -> dict[str, tuple[dict, tuple]]:
    results = {}
    for kind in kinds:
        path = write_kind(tmp_path / "in", text, kind)
        out = tmp_path / f"out-{kind}"
        report = ingest(path, out=out, chunk_size=chunk_size, contig_style="keep", scheduler="synchronous")
        results[kind] = (report, tables(out))
    return results


def assert_identical(results: dict[str, tuple[dict, tuple]]) -> None:
    first = results["vcf"]
    for kind, (report, (variants, genotypes)) in results.items():
        assert report["records_read"] == first[0]["records_read"], kind
        assert report["variants_written"] == first[0]["variants_written"], kind
        assert variants.schema == first[1][0].schema and genotypes.schema == first[1][1].schema, kind
        # repr: NaN (a missing DS) equals NaN
        assert repr(variants.to_pylist()) == repr(first[1][0].to_pylist()), kind
        assert repr(genotypes.to_pylist()) == repr(first[1][1].to_pylist()), kind


# --- silent loss: UTF-8 values through the index -------------------------------------------


def test_vcf_semantics__utf8_info_value_is_read_through_every_index(tmp_path):
    text = header(["s1", "s2"]) + "\n".join(line(100 * i + 100, info="NOTE=Müller" if i == 12 else ".") for i in range(26)) + "\n"
    results = ingest_all(tmp_path, text, chunk_size="1kb")
    assert results["vcf"][0]["records_read"] == 26 and results["vcf"][0]["variants_written"] == 26
    assert_identical(results)


def test_vcf_semantics__csi_index_is_used(tmp_path):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100) + "\n" + line(5000) + "\n", "csi")
    assert not path.with_name(path.name + ".tbi").exists()
    report = ingest(path, out=tmp_path / "d", chunk_size=1000, scheduler="synchronous")
    assert report["inputs"]["indexed"] and report["tasks"] == 2 and report["variants_written"] == 2


def test_vcf_semantics__utf8_contig_name_is_read_through_every_index(tmp_path):
    text = header(["s1", "s2"], contigs=("chré", "chr☃")) + "\n".join(line(p, chrom=c) for c in ("chré", "chr☃") for p in (100, 1500, 2500)) + "\n"
    results = ingest_all(tmp_path, text, chunk_size="1kb")
    assert results["vcf"][0]["variants_written"] == 6
    assert_identical(results)


# --- two paths, one answer -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vcf", "tbi", "csi"])
def test_vcf_semantics__pos_0_is_refused_by_every_path(tmp_path, kind):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(0) + "\n" + line(100) + "\n", kind)
    assert_refused(path, tmp_path / "out" / "d", "chr1", "POS 0")


@pytest.mark.parametrize("kind", ["vcf", "tbi", "csi"])
def test_vcf_semantics__undeclared_contig_is_refused_by_every_path(tmp_path, kind):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100) + "\n" + line(200, chrom="chrX") + "\n", kind)
    assert_refused(path, tmp_path / "out" / "d", "chrX", "not declared")


@pytest.mark.parametrize(("kind", "pos"), [("vcf", "100x"), ("vcf", "1_000"), ("vcf", "+100"), ("tbi", "100x"), ("csi", "100x")])
def test_vcf_semantics__unparsable_pos_is_refused_by_every_path(tmp_path, kind, pos):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(50) + "\n" + line(pos) + "\n" + line(2000) + "\n", kind)
    assert_refused(path, tmp_path / "out" / "d", "chr1", f"POS {pos!r}")


@pytest.mark.parametrize("kind", ["vcf", "tbi", "csi"])
def test_vcf_semantics__wrong_sample_count_is_refused_by_every_path(tmp_path, kind):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100) + "\n" + line(200, ("0/1",)) + "\n", kind)
    assert_refused(path, tmp_path / "out" / "d", "chr1:200", "1 sample columns, expected 2")


def test_parse_position__strict_like_htslib():
    assert parse_position(b"2147483647", "f") == 2147483647
    for raw in (b" 100", b"1_000", b"+5", b"0", b"2147483648", b"1" + b"0" * 30, b"", "١٢".encode()):
        with pytest.raises(InputError, match="POS"):
            parse_position(raw, "f: chr1")


def test_vcf_semantics__huge_pos_is_an_error_not_a_traceback(tmp_path):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100) + "\n" + line(10**30) + "\n", "vcf")
    assert_refused(path, tmp_path / "out" / "d", "chr1 (line 9)", "from 1 to 2147483647")


# --- GT and DS read as strictly as htslib -------------------------------------------------


def test_parse_gt__leading_phase_only_from_vcf_4_4():
    assert parse_gt(b"/1") == ((1,), False)
    assert parse_gt(b"/1", leading_phase=False) is None and parse_gt(b"|0|1", leading_phase=False) is None
    assert parse_gt(b"0|1", leading_phase=False) == ((0, 1), True)


def test_vcf_semantics__leading_slash_gt_refused_before_4_4(tmp_path):
    path = write_kind(tmp_path, header(["s1", "s2"], version="4.2") + line(100, ("/1", "0/1")) + "\n", "vcf")
    assert_refused(path, tmp_path / "out" / "d", "chr1:100 (line 8)", "'/1'", "VCF 4.4")


@pytest.mark.parametrize("value", ["5.0", "-3", "inf", "1_0", " 1"])
def test_vcf_semantics__ds_out_of_range_or_not_a_number_is_refused(tmp_path, value):
    text = header(["s1", "s2"]) + line(100) + "\n" + line(200, ("0/1:1", f"1/1:{value}"), fmt="GT:DS") + "\n"
    path = write_kind(tmp_path, text, "vcf")
    assert_refused(path, tmp_path / "out" / "d", "chr1:200 (line 9)", "sample column 2", "DS")


def test_vcf_semantics__ds_on_one_record_and_multiallelic_without_ds(tmp_path):
    text = header(["s1", "s2"]) + line(100, ("0/1:1", "1/1:2"), fmt="GT:DS") + "\n" + line(200, ("0/2", "1/1"), alt="G,T") + "\n"
    results = ingest_all(tmp_path, text)
    assert results["vcf"][0]["variants_written"] == 3
    assert_identical(results)


# --- records without GT: missing calls, counted ----------------------------------------------


def test_vcf_semantics__records_without_gt_are_missing_calls(tmp_path):
    text = header(["s1", "s2"]) + line(100, ("0,3,9", "0,1,2"), fmt="PL") + "\n" + line(200) + "\n"
    results = ingest_all(tmp_path, text)
    assert_identical(results)
    report, (_, genotypes) = results["tbi"]
    assert report["records_without_gt"] == 1 and report["records_read"] == 2 and report["variants_written"] == 2
    if HAS_BCFTOOLS:
        query = subprocess.run(["bcftools", "query", "-f", "[%GT ]\n", str(write_kind(tmp_path, text, "vcf", "q"))], capture_output=True, text=True, check=True)
        assert query.stdout.splitlines()[0].split() == [".", "."]
    calls = unpacked_calls(genotypes.column("call_dosage"), 2, source="genotypes")
    assert calls.tolist() == [[-1, -1], [1, 2]]  # missing calls


def test_vcf_semantics__file_without_any_gt_is_refused(tmp_path):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100, ("0,3,9", "0,1,2"), fmt="PL") + "\n", "vcf")
    assert_refused(path, tmp_path / "out" / "d", "none of its 1 records has GT")


@pytest.mark.skipif(not (HTSLIB_TESTS / "index.vcf").exists(), reason="htslib test files not installed")
def test_vcf_semantics__htslib_pl_only_files_give_clear_answers(tmp_path):
    assert_refused(HTSLIB_TESTS / "formatcols.vcf", tmp_path / "a" / "d", "has GT in FORMAT")
    result = run_cli(HTSLIB_TESTS / "index.vcf", tmp_path / "b" / "d")
    assert result.exit_code in (0, 1) and "Traceback" not in result.output


# --- tracebacks become errors ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["tabix/large_chr.vcf", "vcf_meta_meta.vcf"])
def test_vcf_semantics__htslib_sites_only_files_are_refused(tmp_path, name):
    if not (HTSLIB_TESTS / name).exists():
        pytest.skip("htslib test files not installed")
    assert_refused(HTSLIB_TESTS / name, tmp_path / "out" / "d", "no sample columns")


def test_vcf_semantics__sites_only_vcf_is_refused(tmp_path):
    path = write_kind(tmp_path, header([]) + "chr1\t100\t.\tA\tG\t.\tPASS\t.\n", "vcf")
    assert_refused(path, tmp_path / "out" / "d", "no sample columns")


# A non-UTF-8 CHROM only as plain text: tabix itself cannot index such a file ("Failed to parse TBX_VCF").
@pytest.mark.parametrize(("column", "kind"), [("chrom", "vcf"), ("ref", "vcf"), ("id", "vcf"), ("ref", "tbi"), ("id", "tbi")])
def test_vcf_semantics__non_utf8_bytes_are_refused(tmp_path, column, kind):
    record = line(200).encode()
    fields = record.split(b"\t")
    fields[{"chrom": 0, "id": 2, "ref": 3}[column]] = {"chrom": b"chr\xff", "id": b"rs\xff", "ref": b"\xff"}[column]
    text = header(["s1", "s2"]).encode() + line(100).encode() + b"\n" + b"\t".join(fields) + b"\n"
    if column == "chrom":
        text = text.replace(b"##contig=<ID=chr1,length=100000>", b"")
    message = assert_refused(write_kind(tmp_path, text, kind), tmp_path / "out" / "d", "UTF-8")
    assert "\xff" not in message


def test_vcf_semantics__non_utf8_sample_name_is_refused(tmp_path):
    text = header(["s1", "s2"]).encode().replace(b"\ts2", b"\ts\xff") + line(100).encode() + b"\n"
    assert_refused(write_kind(tmp_path, text, "vcf"), tmp_path / "out" / "d", "UTF-8")


def test_vcf_semantics__full_disk_is_one_clear_error(tmp_path, monkeypatch):
    from pipeline import ingest_task

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest_task, "write_chunk", full)
    for kind in ("vcf", "tbi"):
        path = write_kind(tmp_path / kind, header(["s1", "s2"]) + line(100) + "\n", kind)
        out = tmp_path / kind / "out" / "d"
        message = assert_refused(path, out, "disk", "full")
        assert str(out) in message
        assert list(out.parent.iterdir()) == []


# --- property: every kind of input gives the same dataset -----------------------------------


@st.composite
def small_vcfs(draw) -> str:
    samples = [f"s{i}" for i in range(draw(st.integers(1, 3)))]
    lines = []
    for contig in ("chr1", "chr2")[: draw(st.integers(1, 2))]:
        position = 0
        for _ in range(draw(st.integers(1, 6))):
            position += draw(st.integers(1, 400))
            alts = draw(st.lists(st.sampled_from(["C", "G", "T", "AT"]), min_size=1, max_size=2, unique=True))
            with_ds = draw(st.booleans())
            without_gt = draw(st.integers(0, 9)) == 0
            cells = []
            for _ in samples:
                ploidy = draw(st.sampled_from([1, 2, 2]))
                alleles = draw(st.lists(st.one_of(st.just("."), st.integers(0, len(alts)).map(str)), min_size=ploidy, max_size=ploidy))
                gt = draw(st.sampled_from("/|")).join(alleles)
                ds = ",".join(draw(st.sampled_from([".", "0", "0.5", "1"])) for _ in alts)
                cells.append((f"{ds}" if without_gt else f"{gt}:{ds}") if with_ds else ("0,1,2" if without_gt else gt))
            fmt = ("DS" if without_gt else "GT:DS") if with_ds else ("PL" if without_gt else "GT")
            info = draw(st.sampled_from([".", "NOTE=Müller", "NOTE=ok"]))
            lines.append(line(position, tuple(cells), fmt=fmt, info=info, chrom=contig, alt=",".join(alts)))
    return header(samples, contigs=("chr1", "chr2")) + "\n".join(lines) + "\n" + line(5000, tuple("0/1" for _ in samples), chrom="chr2") + "\n"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=small_vcfs(), chunk_size=st.sampled_from([150, 700]))
def test_vcf_semantics__plain_tbi_csi_bcf_give_identical_datasets(tmp_path_factory, text, chunk_size):
    folder = tmp_path_factory.mktemp("kinds")
    assert_identical(ingest_all(folder, text, chunk_size=chunk_size))
    blocks = [b for b in read_blocks(write_kind(folder / "r", text, "vcf"))]
    assert sum(b.num_records for b in blocks) == text.count("\nchr")


# --- the index's record counts, NUL bytes, comments, DS overflow, region planning -----------


def test_vcf_semantics__bcf_record_the_index_cannot_find_is_refused(tmp_path):
    # htslib's region queries never return a BCF record at POS 0 (the text forms refuse POS 0 themselves)
    plain = tmp_path / "pos0.vcf"
    plain.write_text(header(["s1", "s2"]) + line(0) + "\n" + line(20) + "\n")
    bcf = tmp_path / "pos0.bcf"
    with pysam.VariantFile(str(plain)) as source, pysam.VariantFile(str(bcf), "wb", header=source.header) as sink:
        for rec in source:
            sink.write(rec)
    pysam.tabix_index(str(bcf), preset="bcf", csi=True, force=True)
    message = assert_refused(bcf, tmp_path / "out" / "d", "chr1: index 2, read 1", "POS 0", "bcftools index")
    assert len(message.splitlines()) == 1


def test_vcf_semantics__stale_index_is_refused(tmp_path):
    old = write_kind(tmp_path / "old", header(["s1", "s2"]) + line(100) + "\n" + line(200) + "\n", "tbi")
    new = write_kind(tmp_path / "new", header(["s1", "s2"]) + line(100) + "\n" + line(200) + "\n" + line(300) + "\n", "vcf")
    path = tmp_path / "stale.vcf.gz"
    pysam.tabix_compress(str(new), str(path))
    shutil.copy(old.with_name(old.name + ".tbi"), path.with_name(path.name + ".tbi"))
    assert_refused(path, tmp_path / "out" / "d", "index 2, read 3", "re-index")


@pytest.mark.parametrize("kind", ["tbi", "csi", "bcf"])
def test_index_record_counts__match_the_records(tmp_path, kind):
    text = header(["s1", "s2"], contigs=("chr1", "chr2")) + "".join(line(p, chrom=c) + "\n" for c, p in [("chr1", 5), ("chr1", 9), ("chr2", 7)])
    assert index_record_counts(open_vcf(write_kind(tmp_path, text, kind))) == {"chr1": 2, "chr2": 1}
    assert index_record_counts(open_vcf(write_kind(tmp_path, text, "vcf"))) is None


def test_vcf_semantics__index_without_counts_skips_the_check(tmp_path, monkeypatch, caplog):
    path = write_kind(tmp_path, header(["s1", "s2"]) + line(100) + "\n", "tbi")
    monkeypatch.setattr("pipeline.ingest.index_record_counts", lambda source: None)
    with caplog.at_level("INFO", logger="pipeline.ingest"):
        report = ingest(path, out=tmp_path / "d", chunk_size=1000, scheduler="synchronous")
    assert report["variants_written"] == 1 and "no record counts" in caplog.text


def test_vcf_semantics__dropped_records_still_count_as_read_for_the_index(tmp_path):
    text = header(["s1", "s2"]) + line(100) + "\n" + line(200, ("0/0", "0/0"), alt=".") + "\n" + line(300, alt="<DEL>") + "\n" + line(400, alt="G,T") + "\n" + line(500, alt="A") + "\n"
    results = ingest_all(tmp_path, text, chunk_size=150, kinds=["vcf", "tbi", "csi"])
    assert results["tbi"][0]["records_read"] == 5 and results["tbi"][0]["variants_written"] == 3
    assert_identical(results)


@pytest.mark.parametrize("where", ["info", "last_sample", "last_line_without_newline"])
def test_vcf_semantics__nul_byte_in_a_record_line_is_refused(tmp_path, where):
    # htslib ends the line at the NUL; the whole line must not be read as if it were not there
    records = [line(100), line(200, info=".\x00") if where == "info" else line(200, ("0/1", "1/1\x00x"))]
    text = header(["s1", "s2"]) + "\n".join(records if where == "last_line_without_newline" else [*records, line(300), ""])
    for kind in ("vcf", "vcf.gz"):
        path = write_kind(tmp_path / kind, text, "vcf")
        if kind == "vcf.gz":
            path = pysam.tabix_compress(str(path), str(path) + ".gz", force=True) or Path(str(path) + ".gz")
        assert_refused(path, tmp_path / "out" / kind, "chr1:200 (line 9)", "NUL")


def test_vcf_semantics__hash_line_after_records_is_a_comment_on_every_path(tmp_path):
    text = header(["s1", "s2"]) + line(100) + "\n" + "#chr1\t150\t.\tA\tG\t.\tPASS\t.\tGT\t1/1\t1/1\n" + line(200) + "\n# a note\n" + line(1500) + "\n"
    results = ingest_all(tmp_path, text, chunk_size="1kb", kinds=["vcf", "tbi", "csi"])  # htslib cannot write the '#' line to BCF
    assert results["vcf"][0]["records_read"] == 3 and results["tbi"][0]["inputs"]["indexed"]
    assert_identical(results)


def test_vcf_semantics__ds_beyond_float32_is_refused_without_a_warning(tmp_path, recwarn):
    text = header(["s1", "s2"]) + line(100, ("0/1:1", "1/1:1e40"), fmt="GT:DS") + "\n"
    path = write_kind(tmp_path, text, "vcf")
    assert_refused(path, tmp_path / "out" / "d", "chr1:100 (line 8)", "sample column 2", "DS")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    with pytest.raises(InputError, match="out of range"), np.errstate(over="raise"):
        decode_ds([b"GT:DS"] * 2, [b"0/1:1e40\t0/0:0", b"0/1:0.5,1e39\t0/0:0"], 2, [1, 2])


def test_vcf_semantics__region_planning_jumps_over_empty_windows(tmp_path):
    text = header(["s1", "s2"], contigs=("chrM",)).replace("length=100000", "length=16569") + line(100, chrom="chrM") + "\n" + line(2147483647, chrom="chrM") + "\n"
    path = write_kind(tmp_path, text, "csi")
    source = open_vcf(path)
    started = time.perf_counter()
    regions = source.regions(100)
    assert time.perf_counter() - started < 5
    assert [(r.start, r.end) for r in regions] == [(1, 101), (2147483601, 2147483648)]
    report = ingest(path, out=tmp_path / "d", chunk_size=100, contig_style="keep", scheduler="synchronous")
    assert report["records_read"] == 2 and report["variants_written"] == 2


def test_regions__only_windows_where_a_record_starts(tmp_path):
    # a long deletion overlaps windows 2-3; only windows 1 and 4 hold record starts
    text = header(["s1", "s2"]) + line(50, ref="A" * 250, alt="A") + "\n" + line(350) + "\n"
    source = open_vcf(write_kind(tmp_path, text, "tbi"))
    assert [(r.start, r.end) for r in source.regions(100)] == [(1, 101), (301, 401)]
