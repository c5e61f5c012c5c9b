"""Tests of pipeline.io.vcf: decoding against pysam and bcftools, regions, validation errors."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import GenofedError, InputError, VcfFormatError
from pipeline.io import vcf
from pipeline.io.vcf import Region, open_vcf, read_blocks
from tests.io.vcf_text import naive_genotypes, record, vcf_text, write

SAMPLES = ["s1", "s2", "s3"]


def read_all(path: Path, region: Region | None = None, **kwargs) -> list[vcf.RecordBlock]:
    return list(read_blocks(path, region, **kwargs))


def flatten(blocks: list[vcf.RecordBlock]) -> list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None]]:
    rows = []
    for block in blocks:
        for i in range(block.num_records):
            ds = None if block.ds is None else block.ds[i]
            rows.append((block.contig, int(block.position[i]), block.allele_index[i], block.phased[i], ds))
    return rows


def assert_same_as_pysam(path: Path, blocks: list[vcf.RecordBlock]) -> None:
    expected = naive_genotypes(path)
    got = flatten(blocks)
    assert [(c, p) for c, p, *_ in got] == [(c, p) for c, p, *_ in expected]
    for (_, pos, alleles, phased, ds), (_, _, want, want_phased, want_ds) in zip(got, expected, strict=True):
        ploidy = want.shape[1]
        np.testing.assert_array_equal(alleles[:, :ploidy], want, err_msg=f"POS {pos}")
        assert (alleles[:, ploidy:] == vcf.ABSENT_ALLELE).all()
        diploid = (want >= -1).sum(axis=1) >= 2
        np.testing.assert_array_equal(phased[diploid], want_phased[diploid], err_msg=f"POS {pos}")
        if want_ds is None:
            assert ds is None or np.isnan(ds).all()
        else:
            np.testing.assert_allclose(ds[:, : want_ds.shape[1]], want_ds, rtol=1e-6, equal_nan=True)


# --- hypothesis: random VCFs -------------------------------------------------------------------

FORMATS = ["GT", "GT", "GT:DS", "GT:AD:DS", "GT:GQ"]  # GT not first: see test_read_blocks__gt_not_first


@st.composite
def calls(draw: st.DrawFn, n_alts: int, one_digit: bool) -> str:
    ploidy = draw(st.sampled_from([2, 2, 2, 1, 3])) if not one_digit else 2
    top = min(n_alts, 9) if one_digit else n_alts
    alleles = draw(st.lists(st.integers(-1, top), min_size=ploidy, max_size=ploidy))
    separator = draw(st.sampled_from("/|"))
    return separator.join("." if a < 0 else str(a) for a in alleles)


@st.composite
def sample_field(draw: st.DrawFn, fmt: str, n_alts: int, one_digit: bool) -> str:
    values = []
    for key in fmt.split(":"):
        if key == "GT":
            values.append(draw(calls(n_alts, one_digit)))
        elif key == "DS":
            ds = draw(st.lists(st.one_of(st.just("."), st.floats(0, 1, width=32).map(lambda x: f"{x:.4g}")), min_size=n_alts, max_size=n_alts))
            values.append(",".join(ds) if any(d != "." for d in ds) else ".")
        elif key == "AD":
            values.append(",".join(str(v) for v in draw(st.lists(st.integers(0, 50), min_size=n_alts + 1, max_size=n_alts + 1))))
        else:
            values.append(str(draw(st.integers(0, 99))))
    if fmt.startswith("GT") and draw(st.booleans()):
        values = values[: draw(st.integers(1, len(values)))]  # trailing fields may be dropped
    return ":".join(values)


@st.composite
def vcf_records(draw: st.DrawFn, num_samples: int, one_digit: bool = False) -> list[str]:
    lines = []
    for contig in ("chr1", "chr2"):
        positions = sorted(draw(st.lists(st.integers(1, 990), min_size=0, max_size=8)))
        for pos in positions:
            n_alts = draw(st.sampled_from([1, 1, 1, 2, 3, 11] if not one_digit else [1, 1, 2, 3]))
            alts = ",".join("CGTA"[k % 4] * (1 + k // 4) for k in range(n_alts))
            fmt = draw(st.sampled_from(FORMATS))
            fields = [draw(sample_field(fmt, n_alts, one_digit)) for _ in range(num_samples)]
            lines.append(record(contig, pos, alts, fmt, fields, ref="A" * draw(st.integers(1, 20))))
    return lines


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), num_samples=st.integers(1, 4), max_records=st.integers(1, 5))
def test_read_blocks__matches_pysam_on_random_vcfs(data: st.DataObject, num_samples: int, max_records: int) -> None:
    samples = [f"id{j}" for j in range(num_samples)]
    lines = data.draw(vcf_records(num_samples))
    with tempfile.TemporaryDirectory() as folder:
        text = vcf_text(samples, lines)
        for kind in ("vcf", "vcf.gz", "bcf"):
            path = write(Path(folder), "random", text, kind=kind)
            blocks = read_all(path, max_records=max_records)
            assert all(1 <= b.num_records <= max_records for b in blocks)
            assert_same_as_pysam(path, blocks)
            if kind != "vcf":
                regions = open_vcf(path).regions(97)
                by_region = [block for region in regions for block in read_all(path, region, max_records=max_records)]
                assert_same_as_pysam(path, by_region)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), num_samples=st.integers(1, 6))
def test_decode_genotypes__fast_path_equals_reference_parser(data: st.DataObject, num_samples: int) -> None:
    lines = data.draw(vcf_records(num_samples, one_digit=True))
    if not lines:
        return
    split = [line.encode().split(b"\t", 9) for line in lines]
    formats = [f[8] for f in split]
    samples = [f[9] for f in split]
    num_alts = [len(f[4].split(b",")) for f in split]
    alleles, phased = vcf.decode_genotypes(formats, samples, num_samples, num_alts)
    for i in range(len(lines)):
        want, want_phased = vcf._parse_record_gt(formats[i], samples[i], num_samples, vcf._no_locator, i)
        np.testing.assert_array_equal(alleles[i, :, : want.shape[1]], want)
        np.testing.assert_array_equal(phased[i], want_phased)


def test_decode_genotypes__common_shapes_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the reference parser was used for a one-digit diploid record")

    monkeypatch.setattr(vcf, "_parse_record_gt", fail)
    formats = [b"GT", b"GT:DS", b"GT:AD:GQ", b"GT"]
    samples = [b"0|1\t./.\t1/1", b"0/1:0.9\t1|1:2\t.|0:.", b"1/0:3,4:99\t0/0\t./.:.:.", b"0/0\t0/0\t0/1"]
    alleles, phased = vcf.decode_genotypes(formats, samples, 3, [1, 1, 1, 1])
    np.testing.assert_array_equal(alleles[1], [[0, 1], [1, 1], [-1, 0]])
    np.testing.assert_array_equal(phased[1], [False, True, True])
    np.testing.assert_array_equal(alleles[2], [[1, 0], [0, 0], [-1, -1]])



@pytest.mark.parametrize("formats, samples, want", [
    ([b"GT", b"GT"], [b"0|1\t1|1", b".|0\t0|0"], [[True, True], [True, True]]),  # only '|' in the text
    ([b"GT", b"GT"], [b"0/1\t1/1", b"./0\t0/0"], [[False, False], [False, False]]),  # only '/'
    ([b"GT", b"GT"], [b"0|1\t1/1", b"./0\t0|0"], [[True, False], [False, True]]),  # both
    ([b"GT:XS", b"GT:XS"], [b"0/1:a|b\t1/1:c", b"0/0:.\t1/0:d|e"], [[False, False], [False, False]]),  # '|' elsewhere
    ([b"GT:XS", b"GT:XS"], [b"0|1:a/b\t1|1:c", b"0|0:.\t1|0:d/e"], [[True, True], [True, True]]),  # '/' elsewhere
], ids=["phased", "unphased", "mixed", "pipe-in-another-field", "slash-in-another-field"])
def test_decode_genotypes__phasing_whichever_separators_the_text_holds(formats, samples, want) -> None:
    alleles, phased = vcf.decode_genotypes(formats, samples, 2, [1, 1])
    np.testing.assert_array_equal(phased, want)
    for i in range(2):
        reference, reference_phased = vcf._parse_record_gt(formats[i], samples[i], 2, vcf._no_locator, i)
        np.testing.assert_array_equal(alleles[i], reference)
        np.testing.assert_array_equal(phased[i], reference_phased)

@pytest.mark.parametrize("table, terminators", [(vcf._PAIRS_TAB, b"\t"), (vcf._PAIRS_FIELD, b"\t:")], ids=["alone", "with-fields"])
def test_decode_cells__every_byte_triple_as_the_gt_grammar_says(table: np.ndarray, terminators: bytes) -> None:
    """All 2^24 (allele, separator, allele) byte triples before each kind of terminator, and every terminator."""
    values = np.arange(256, dtype=np.uint8)
    allele_ok = np.isin(values, list(b"0123456789."))
    separator_ok = np.isin(values, list(b"/|"))
    index = np.where(values == ord("."), -1, values.astype(np.int16) - ord("0")).astype(np.int8)
    a, s, b = (x.ravel() for x in np.meshgrid(values, values, values, indexing="ij"))
    for terminator in [*terminators, 0x00, ord(";"), 0x89, 0xBA]:
        cells = np.stack([a, s, b, np.full_like(a, terminator)], axis=-1).reshape(-1, 1, 4)
        alleles, valid = vcf._decode_cells(cells, table)
        want = allele_ok[a] & separator_ok[s] & allele_ok[b] & (terminator in terminators)
        np.testing.assert_array_equal(valid, want)
        np.testing.assert_array_equal(alleles[want, 0], np.stack([index[a[want]], index[b[want]]], axis=-1))
    triples = np.array([list(b"0/1"), list(b".|9"), list(b"0/0")], dtype=np.uint8)
    for terminator in values:
        cells = np.concatenate([triples, np.full((3, 1), terminator, np.uint8)], axis=1).reshape(3, 1, 4)
        assert vcf._decode_cells(cells, table)[1].tolist() == [terminator in terminators] * 3


def _tokens(values: list[bytes]) -> tuple[bytes, np.ndarray, np.ndarray]:
    text = b"\t".join(values)
    lengths = np.array([len(value) for value in values], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return text, starts, lengths


def test_plain_decimals__bit_for_bit_what_strtod_gives() -> None:
    rng = np.random.default_rng(7)
    values = [b"0", b"2", b"1.", b".5", b"0.000", b"1.999", b"12345678", b"0.123456", b".0000001", b"99999999"]
    for decimals in range(7):  # '1.234567', 8 bytes at most
        values += [(b"%." + str(decimals).encode() + b"f") % x for x in rng.uniform(0, 2, 300)]
    values += [str(x).encode()[:8] for x in rng.uniform(0, 9, 300)]
    got = vcf._plain_decimals(*_tokens(values))
    assert got is not None
    want = np.array([float(value) for value in values])  # Python's float() is correctly rounded, as strtod
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))


@pytest.mark.parametrize("odd", [b"1e-3", b"+1", b"-0.5", b"nan", b"inf", b"1.2.3", b".", b"", b"123456789", b"1_0", b" 1", b"0x1", b"1,2"])
def test_plain_decimals__any_other_form_is_left_to_the_general_parser(odd: bytes) -> None:
    assert vcf._plain_decimals(*_tokens([b"0.5", odd, b"1"])) is None


def test_decode_ds__a_batch_with_another_number_form_reads_as_before() -> None:
    samples = [b"0/1:0.153\t1/1:1e0\t0/0:.", b"0/1:0.5\t1/1:2\t0/0:0"]
    ds = vcf.decode_ds([b"GT:DS"] * 2, samples, 3, [1, 1])
    np.testing.assert_array_equal(ds[:, :, 0], np.array([[0.153, 1.0, np.nan], [0.5, 2.0, 0.0]], dtype=np.float32))


@pytest.mark.parametrize("fmt", ["DS", "GT:DS", "DS:GT", "GT:DS:HDS:GP", "GT:HDS:GP:DS"])
def test_decode_ds__imputation_server_layouts_take_the_batch_path(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DS anywhere among the FORMAT fields, as minimac and Beagle write it: read without the per-record parser."""
    def fail(*args: object) -> None:
        raise AssertionError("the per-record DS parser was used")

    monkeypatch.setattr(vcf, "_ds_fast", fail)
    rng = np.random.default_rng(len(fmt))
    field = {"GT": lambda d: "0|1", "HDS": lambda d: "0.250,0.750", "GP": lambda d: "0.1,0.8,0.1"}
    rows = [["." if rng.random() < 0.2 else f"{rng.uniform(0, 2):.{rng.integers(0, 4)}f}" for _ in range(4)] for _ in range(6)]
    samples = ["\t".join(":".join(value if key == "DS" else field[key](value) for key in fmt.split(":")) for value in row).encode()
               for row in rows]
    ds = vcf.decode_ds([fmt.encode()] * 6, samples, 4, [1] * 6)
    want = np.array([[np.nan if value == "." else float(value) for value in row] for row in rows], dtype=np.float32)
    np.testing.assert_array_equal(ds[:, :, 0], want)


def test_decode_ds__cells_with_fewer_or_more_fields_read_as_the_general_parser_does() -> None:
    cases = [(b"0|1:0.5:0.1,0.8,0.1\t1|1\t0|0:.:.", [0.5, np.nan, np.nan]),
             (b"0|1:.5:0.1,0.8,0.1\t1|1:2:0,0,1\t0|0:.:1,0,0", [0.5, 2, np.nan]),  # '.5' is a number, '.' is missing
             (b"0|1:0.5:0.1:1:1\t1|1\t0|0:1:0", [0.5, np.nan, 1])]  # as many colons as three full cells: one long, one short
    for sample_text, want in cases:
        ds = vcf.decode_ds([b"GT:DS:GP"], [sample_text], 3, [1])
        np.testing.assert_array_equal(ds[0, :, 0], np.array(want, dtype=np.float32))


def test_decode_genotypes__mixed_ploidy_pads_with_absent() -> None:
    alleles, phased = vcf.decode_genotypes([b"GT", b"GT"], [b"0\t1/1\t.", b"0/1/2\t10|0\t./."], 3, [1, 10])
    assert alleles.shape == (2, 3, 3)
    np.testing.assert_array_equal(alleles[0], [[0, -2, -2], [1, 1, -2], [-1, -2, -2]])
    np.testing.assert_array_equal(alleles[1], [[0, 1, 2], [10, 0, -2], [-1, -1, -2]])
    np.testing.assert_array_equal(phased, [[False, False, False], [False, True, False]])


def test_read_blocks__gt_not_first(tmp_path: Path) -> None:
    # pysam's allele_indices is empty when GT is not the first FORMAT key; bcftools reads it
    lines = [record("chr1", 1, "G,T", "DS:GT", ["0.5:0/1", ".:2|2", "1"]), record("chr1", 2, "G", "GQ:GT", ["9:1/1", "3:.", "7:0|1"])]
    path = write(tmp_path, "gtlast", vcf_text(SAMPLES, lines), kind="vcf.gz")
    (block,) = read_all(path)
    np.testing.assert_array_equal(block.allele_index[0], [[0, 1], [2, 2], [-1, -2]])
    np.testing.assert_array_equal(block.allele_index[1], [[1, 1], [-1, -2], [0, 1]])
    np.testing.assert_allclose(block.ds[0, :, 0], [0.5, np.nan, 1.0], equal_nan=True)
    if shutil.which("bcftools"):
        out = subprocess.run(["bcftools", "query", "-f", "[%GT\\t]\\n", str(path)], check=True, capture_output=True, text=True).stdout
        assert out.splitlines()[1].split("\t")[:3] == ["1/1", ".", "0|1"]


def test_read_blocks__matches_bcftools_query(tmp_path: Path) -> None:
    if shutil.which("bcftools") is None:
        pytest.skip("bcftools not installed")
    rng = np.random.default_rng(1)
    lines = []
    for pos in range(1, 301):
        gts = [f"{rng.integers(0, 3)}{'|/'[rng.integers(0, 2)]}{rng.integers(0, 3)}" if rng.random() > 0.05 else "./." for _ in range(7)]
        lines.append(record("chr1", pos, "G,T", "GT", gts))
    path = write(tmp_path, "query", vcf_text([f"s{j}" for j in range(7)], lines), kind="vcf.gz")
    out = subprocess.run(["bcftools", "query", "-f", "[%GT\\t]\\n", str(path)], check=True, capture_output=True, text=True).stdout
    expected = [[gt.replace("|", "/") for gt in line.split("\t")[:-1]] for line in out.splitlines()]
    got = [
        ["/".join("." if a < 0 else str(a) for a in call) for call in block.allele_index[i]]
        for block in read_blocks(path, max_records=64)
        for i in range(block.num_records)
    ]
    assert got == expected


# --- fixed columns, blocks, regions ------------------------------------------------------------


def test_read_blocks__fixed_columns_and_line_numbers(tmp_path: Path) -> None:
    lines = [record("chr1", 5, "G,<DEL>", calls=["0/1", "1/2", "./."], record_id="rs5"), record("chr1", 9, ".", calls=["0/0"] * 3, ref="AC")]
    path = write(tmp_path, "cols", vcf_text(SAMPLES, lines))
    (block,) = read_all(path)
    assert block.record_id == ["rs5", None]
    assert block.ref == ["A", "AC"]
    assert block.alts == [("G", "<DEL>"), ()]
    assert block.line_number.tolist() == [9, 10]  # 8 header lines
    assert block.position.dtype == np.int64 and block.allele_index.dtype == np.int8
    assert block.ds is None


def test_read_blocks__blocks_never_mix_contigs(tmp_path: Path) -> None:
    lines = [record("chr1", p, calls=["0/1"] * 3) for p in range(1, 6)] + [record("chr2", p, calls=["1/1"] * 3) for p in range(1, 4)]
    path = write(tmp_path, "contigs", vcf_text(SAMPLES, lines))
    blocks = read_all(path, max_records=3)
    assert [(b.contig, b.num_records) for b in blocks] == [("chr1", 3), ("chr1", 2), ("chr2", 3)]


def test_read_blocks__sites_only_vcf(tmp_path: Path) -> None:
    path = write(tmp_path, "sites", vcf_text([], [record("chr1", 3), record("chr1", 4)]))
    (block,) = read_all(path)
    assert block.allele_index.shape == (2, 0, 2)


def test_read_blocks__crlf_and_trailing_blank_lines(tmp_path: Path) -> None:
    text = vcf_text(SAMPLES, [record("chr1", 3, calls=["0|1", "1/1", "./."])]).replace("\n", "\r\n") + "\r\n\n"
    path = tmp_path / "crlf.vcf"
    path.write_bytes(text.encode())
    (block,) = read_all(path)
    np.testing.assert_array_equal(block.allele_index[0], [[0, 1], [1, 1], [-1, -1]])


def test_read_blocks__long_fixed_columns_and_large_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vcf, "_READ_CHUNK", 64)  # records span many reads
    long_ref = "A" * 1500  # fixed columns longer than the split shortcut
    lines = [record("chr1", p, calls=["0/1", "1|1", "./."], ref=long_ref if p % 2 else "A") for p in range(1, 40)]
    path = write(tmp_path, "long", vcf_text(SAMPLES, lines), kind="vcf.gz")
    blocks = read_all(path, max_records=7)
    assert_same_as_pysam(path, blocks)
    assert [len(r) for b in blocks for r in b.ref][:2] == [1500, 1]


def test_regions__each_record_in_exactly_one_region(tmp_path: Path) -> None:
    # deletions that span window boundaries; a contig without length; records past a wrong length
    lines = [record("chr1", p, calls=["0/1"] * 3, ref="A" * 30) for p in (1, 9, 10, 11, 19, 20, 50)]
    lines += [record("chr2", p, calls=["1/1"] * 3) for p in (5, 400, 100_000)]
    lines += [record("chr3", p, calls=["0/0"] * 3) for p in (7, 8)]
    contigs = {"chr1": 200_000, "chr2": None, "chr3": 7, "chr4": 500}  # chr1 sets the .csi depth
    for kind in ("vcf.gz", "bcf"):
        path = write(tmp_path, f"regions-{kind}", vcf_text(SAMPLES, lines, contigs), kind=kind)
        source = open_vcf(path)
        regions = source.regions(10)
        positions = [(b.contig, int(p)) for r in regions for b in read_all(path, r) for p in b.position]
        assert positions == [(c, p) for c, p, *_ in naive_genotypes(path)]
        assert all(r.end - r.start <= 10 for r in regions)
        assert {r.contig for r in regions} == {"chr1", "chr2", "chr3"}
        assert Region("chr1", 1, 11) in regions and Region("chr1", 11, 21) in regions


def test_regions__read_on_from_the_index_across_bgzf_blocks_and_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A region is read from the offset after the index's first record: records that cross BGZF blocks
    and the reader's chunks come out as the whole-file read gives them, each in exactly one region."""
    rng = np.random.default_rng(7)
    samples = [f"s{i}" for i in range(60)]
    genotypes = ["0/0", "0/1", "1/1", "./."]
    lines = [record(contig, p, calls=[genotypes[g] for g in rng.integers(0, 4, len(samples))], ref="A" * (1 + p % 40))
             for contig in ("chr1", "chr2") for p in range(1, 4000, 3)]
    text = vcf_text(samples, lines)
    assert len(text) > 8 * 65536  # BGZF blocks hold 64 KiB of text each
    path = write(tmp_path, "blocks", text, kind="vcf.gz")
    monkeypatch.setattr(vcf, "_READ_CHUNK", 777)  # lines cross the reader's chunks
    whole = flatten(read_all(path))
    regions = open_vcf(path).regions(250)
    by_region = [row for region in regions for row in flatten(read_all(path, region))]
    assert len(regions) > 20 and len(by_region) == len(whole)
    for ours, theirs in zip(by_region, whole):
        assert ours[:2] == theirs[:2]
        np.testing.assert_array_equal(ours[2], theirs[2])


def test_read_blocks__a_corrupt_bgzf_block_names_the_file_on_every_path(tmp_path: Path) -> None:
    """A block damaged in the middle of the file (its end-of-file marker intact): one clear error, whole file or by region."""
    rng = np.random.default_rng(8)
    samples = [f"s{i}" for i in range(60)]
    lines = [record("chr1", p, calls=[("0/0", "0/1", "1/1")[g] for g in rng.integers(0, 3, len(samples))]) for p in range(1, 6000, 2)]
    path = write(tmp_path, "corrupt", vcf_text(samples, lines), kind="vcf.gz")
    regions = open_vcf(path).regions(200)  # planned on the intact file (planning reads through the index too)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # zeros inside a deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(VcfFormatError, match=r"corrupt\.vcf\.gz: decompression failed after line \d+ .*copy it again"):
        read_all(path)
    with pytest.raises(VcfFormatError, match=r"corrupt\.vcf\.gz: .*(decompression failed|unreadable record).*copy it again"):
        for region in regions:
            read_all(path, region)


def test_regions__without_index_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "noindex", vcf_text(SAMPLES, [record("chr1", 1, calls=["0/1"] * 3)]), kind="vcf.gz-noindex")
    source = open_vcf(path)
    assert not source.has_index
    with pytest.raises(InputError, match="tabix -p vcf"):
        source.regions(1000)
    with pytest.raises(InputError, match="no index"):
        read_all(path, Region("chr1", 1, 100))
    assert flatten(read_all(path))[0][1] == 1  # streaming works without an index


def test_open_vcf__header_and_picklable(tmp_path: Path) -> None:
    path = write(tmp_path, "header", vcf_text(SAMPLES, [], {"chr1": 100, "chrX": None}), kind="bcf")
    source = open_vcf(path)
    assert source.samples == SAMPLES
    assert source.contigs == {"chr1": 100, "chrX": None}
    assert source.is_bcf and source.has_index
    assert pickle.loads(pickle.dumps(source)).samples == SAMPLES
    assert pickle.loads(pickle.dumps(Region("chr1", 1, 5))) == Region("chr1", 1, 5)
    assert read_all(path) == []


def test_read_blocks__ds_values(tmp_path: Path) -> None:
    lines = [
        record("chr1", 1, "G", "GT:DS", ["0/1:0.95", "1/1:.", "./.:1.5e0"]),
        record("chr1", 2, "G,T", "GT:DS", ["0/1:0.5,0.25", "1/1:.", "0/2"]),
        record("chr1", 3, "G", "GT", ["0/1", "1/1", "0/0"]),
    ]
    path = write(tmp_path, "ds", vcf_text(SAMPLES, lines), kind="vcf.gz")
    (block,) = read_all(path)
    assert block.ds.shape == (3, 3, 2) and block.ds.dtype == np.float32
    np.testing.assert_allclose(block.ds[0, :, 0], [0.95, np.nan, 1.5], equal_nan=True)
    np.testing.assert_allclose(block.ds[1], [[0.5, 0.25], [np.nan, np.nan], [np.nan, np.nan]], equal_nan=True)
    assert np.isnan(block.ds[2]).all()
    assert_same_as_pysam(path, [block])


# --- validation errors ---------------------------------------------------------------------------


def error_of(path: Path) -> GenofedError:
    with pytest.raises(GenofedError) as caught:
        read_all(path)
    return caught.value


def test_errors__missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        open_vcf(tmp_path / "absent.vcf.gz")


def test_errors__truncated_bgzf(tmp_path: Path) -> None:
    path = write(tmp_path, "trunc", vcf_text(SAMPLES, [record("chr1", p, calls=["0/1"] * 3) for p in range(1, 200)]), kind="vcf.gz-noindex")
    data = path.read_bytes()
    for cut in (28, len(data) // 2):
        truncated = tmp_path / f"cut{cut}.vcf.gz"
        truncated.write_bytes(data[:-cut])
        error = error_of(truncated)
        assert isinstance(error, VcfFormatError) and "truncated" in str(error) and str(truncated) in str(error)


def test_errors__plain_gzip(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "plain.vcf.gz"
    path.write_bytes(gzip.compress(vcf_text(SAMPLES, [record("chr1", 1, calls=["0/1"] * 3)]).encode()))
    assert "bgzip" in str(error_of(path))


def test_errors__no_chrom_header(tmp_path: Path) -> None:
    path = tmp_path / "nochrom.vcf"
    path.write_text("##fileformat=VCFv4.2\n" + record("chr1", 1, calls=["0/1"]) + "\n")
    error = error_of(path)
    assert isinstance(error, VcfFormatError) and "#CHROM" in str(error) and "line 2" in str(error)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([record("chr1", 5, calls=["0/1", "1/1"])], r"chr1:5 \(line 9\): 2 sample columns, expected 3"),
        ([record("chr1", 5, calls=["0/1", "1/1", "0/1", "1/1"])], r"chr1:5 \(line 9\): 4 sample columns, expected 3"),
        ([record("chr1", 5)], r"line 9: 8 tab-separated columns, expected 12"),
        ([record("chr1", 5, calls=["0/1", "0/x", "1/1"])], r"chr1:5 \(line 9\): sample column 2: GT '0/x' is not a genotype"),
        ([record("chr1", 5, calls=["0/1", "1//1", "1/1"])], r"sample column 2: GT '1//1'"),
        ([record("chr1", 5, calls=["0/1", "0/2", "1/1"])], r"chr1:5 \(line 9\): a genotype uses allele index 2 but the record has 1 ALT"),
        ([record("chr1", 5, "G,T", calls=["0/1", "0/12", "1/1"])], r"allele index 12 but the record has 2 ALT"),
        ([record("chr1", 5, fmt="GT:DS", calls=["0/1:0.1", "1/1:1", "0/0:2.5"])], r"sample column 3: DS 2.5 \(ALT 1\) is out of range; expected a dosage from 0 to 2"),
        ([record("chr1", 5, calls=["0/1", "/1", "1/1"])], r"sample column 2: GT '/1' is not a genotype.*before VCF 4.4"),
        ([record("chr1", 5, "C\x01", calls=["0/1"] * 3)], r"chr1:5 \(line 9\): a control character"),
        ([record("chr7", 5, calls=["0/1"] * 3)], r"chr7:5 \(line 9\): contig 'chr7' is not declared in the header"),
        ([record("chr1", 5, calls=["0/1"] * 3), record("chr1", 4, calls=["0/1"] * 3)], r"chr1:4 \(line 10\): position 4 comes after 5.*bcftools sort"),
        (
            [record("chr1", 5, calls=["0/1"] * 3), record("chr2", 1, calls=["0/1"] * 3), record("chr1", 9, calls=["0/1"] * 3)],
            r"chr1:9 \(line 11\): contig chr1 appears again after chr2",
        ),
        ([record("chr1", 5, calls=["0/1"] * 3).replace("\t5\t", "\tfive\t")], r"line 9\): POS 'five' is not a position"),
        ([record("chr1", 5, calls=["0/1"] * 3).replace("\t5\t", "\t1_000\t")], r"line 9\): POS '1_000' is not a position"),
    ],
)
def test_errors__malformed_records(tmp_path: Path, lines: list[str], expected: str) -> None:
    for kind in ("vcf", "vcf.gz-noindex"):
        path = write(tmp_path, "bad", vcf_text(SAMPLES, lines), kind=kind)
        error = error_of(path)
        assert isinstance(error, VcfFormatError)
        assert str(path) in str(error)
        assert pytest.importorskip("re").search(expected, str(error)), str(error)


def test_errors__detected_in_fast_path_batches(tmp_path: Path) -> None:
    # a bad call deep inside a large block that otherwise takes the vectorized path
    calls = ["0|1"] * 50
    lines = [record("chr1", p, calls=calls) for p in range(1, 300)]
    lines[250] = record("chr1", 251, calls=calls[:30] + ["0|?"] + calls[31:])
    path = write(tmp_path, "deep", vcf_text([f"s{j}" for j in range(50)], lines))
    error = error_of(path)
    assert "chr1:251 (line 259): sample column 31" in str(error)


def test_errors__header_without_contig_lines_accepts_any_contig(tmp_path: Path) -> None:
    text = vcf_text(SAMPLES, [record("chrZ", 5, calls=["0/1"] * 3)], contigs={})
    path = write(tmp_path, "nocontigs", text, kind="vcf.gz")
    source = open_vcf(path)
    assert not source.declared_contigs and source.contigs == {"chrZ": None}
    assert source.regions(1000) == [Region("chrZ", 1, 1001)] or source.regions(1000)[0].contig == "chrZ"
    assert flatten(read_all(path))[0][:2] == ("chrZ", 5)


def test_errors__are_genofed_errors_for_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.vcf"
    path.write_bytes(b"\x00\x01not a vcf at all\n")
    assert isinstance(error_of(path), VcfFormatError)
    empty = tmp_path / "empty.vcf"
    empty.write_text("")
    assert "empty" in str(error_of(empty))
