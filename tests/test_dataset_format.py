"""The stored genotype form: 2-bit calls per variant, read back exactly, readable without genofed, older formats upgraded in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import dataset
from pipeline.cli import main
from pipeline.dataset_upgrade import upgrade_dataset
from pipeline.errors import InputError
from tests.test_qc import sample_ids, variants_table

N_SAMPLES = 7
CHUNK_SIZES = [5, 4, 3]


def _matrices(seed: int = 3) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Calls with missing values, and per chunk dosages (the middle chunk has none)."""
    rng = np.random.default_rng(seed)
    calls = rng.integers(-1, 3, size=(sum(CHUNK_SIZES), N_SAMPLES)).astype(np.int8)
    doses: list[np.ndarray | None] = []
    for index, size in enumerate(CHUNK_SIZES):
        dose = rng.uniform(0, 2, size=(size, N_SAMPLES)).astype(np.float32)
        dose[rng.random(dose.shape) < 0.2] = np.nan
        doses.append(None if index == 1 else dose)
    return calls, doses


def _write(root: Path, calls: np.ndarray, doses: list[np.ndarray | None]) -> Path:
    root.mkdir(parents=True)
    variants = variants_table(calls.shape[0])
    chunks, start = [], 0
    for index, size in enumerate(CHUNK_SIZES):
        block = dataset.Block(variants=variants.slice(start, size), call_dosage=calls[start:start + size], dosage=doses[index])
        chunks.append(dataset.write_chunk(root, index, block))
        start += size
    samples = pa.table({"sample_index": pa.array(np.arange(N_SAMPLES, dtype=np.int32)),
                        "sample_id": pa.array(sample_ids(N_SAMPLES)), "has_phenotypes": pa.array(np.zeros(N_SAMPLES, bool))})
    dataset.write_metadata(root, samples=samples, chunks=chunks)
    return root


def _assert_reads_back(root: Path, calls: np.ndarray, doses: list[np.ndarray | None]) -> None:
    opened = dataset.open_dataset(root)
    start = 0
    for name, size, dose in zip(opened.chunk_names, CHUNK_SIZES, doses):
        block = opened.read_block(name, with_dosage=True)
        np.testing.assert_array_equal(block.call_dosage, calls[start:start + size])
        if dose is None:
            assert block.dosage is None
        else:
            np.testing.assert_array_equal(block.dosage, dose)  # NaN where missing, bit for bit
        start += size


def decode_calls(value: bytes, num_samples: int) -> np.ndarray:
    """The contract's documented decoding of one call_dosage value, written apart from genofed's reader."""
    if len(value) == num_samples:  # one byte a call
        return np.frombuffer(value, np.int8)
    bits = np.unpackbits(np.frombuffer(value, np.uint8), bitorder="little").reshape(-1, 2).astype(np.int8)
    codes = bits[:, 0] + 2 * bits[:, 1]
    return np.where(codes == 3, -1, codes)[:num_samples].astype(np.int8)


def _calls_of(path: Path) -> list[list[int]]:
    return [decode_calls(value, N_SAMPLES).tolist() for value in pq.read_table(path).column("call_dosage").to_pylist()]


def _as_format_2(root: Path) -> None:
    """Rewrites a dataset as genofed wrote format 2: one byte a call, dataset.json 2.0.0."""
    for path in sorted((root / "genotypes").glob("*.parquet")):
        table = pq.read_table(path)
        calls = pa.array([np.asarray(row, np.int8).tobytes() for row in _calls_of(path)], pa.binary())
        pq.write_table(table.set_column(1, "call_dosage", calls), path, compression="zstd")
    meta = json.loads((root / "dataset.json").read_text())
    meta["format_version"] = "2.0.0"
    meta["schemas"]["genotypes"] = "2.0.0"
    (root / "dataset.json").write_text(json.dumps(meta))


def _as_format_1(root: Path) -> None:
    """Rewrites a dataset as genofed wrote format 1: genotypes as list<int8> / list<float32>, dataset.json 1.0.0."""
    for path in sorted((root / "genotypes").glob("*.parquet")):
        table = pq.read_table(path)
        calls = _calls_of(path)
        doses = [None if value is None else np.frombuffer(value, "<f4").tolist() for value in table.column("dosage").to_pylist()]
        pq.write_table(pa.table({"variant_id": table.column("variant_id"), "call_dosage": pa.array(calls, pa.list_(pa.int8())),
                                 "dosage": pa.array(doses, pa.list_(pa.float32()))}), path, compression="zstd")
    meta = json.loads((root / "dataset.json").read_text())
    meta["format_version"] = "1.0.0"
    meta["schemas"]["genotypes"] = "1.0.0"
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.fixture
def written(tmp_path):
    calls, doses = _matrices()
    return _write(tmp_path / "site.dataset", calls, doses), calls, doses


def test_packed_genotypes__read_back_exactly_as_written(written):
    root, calls, doses = written
    _assert_reads_back(root, calls, doses)
    table = pq.read_table(root / "genotypes" / "chunk-00000.parquet")
    assert table.schema.field("call_dosage").type == pa.binary()
    assert all(len(value) == 2 for value in table.column("call_dosage").to_pylist())  # 7 samples, 2 bits each


def test_packed_genotypes__one_arrow_chunk_per_row_group_keeps_offsets_in_range(monkeypatch, tmp_path):
    """Many row groups (as at 10^5 samples): written in pieces and read back as one matrix."""
    monkeypatch.setattr(dataset, "GENOTYPES_PER_ROW_GROUP", 2 * N_SAMPLES)
    calls, doses = _matrices(seed=5)
    root = _write(tmp_path / "pieces.dataset", calls, doses)
    assert pq.ParquetFile(root / "genotypes" / "chunk-00000.parquet").metadata.num_row_groups == 3
    _assert_reads_back(root, calls, doses)


def test_chunk_of_several_blocks__packed_in_turn_and_nan_where_a_block_has_no_dosage(tmp_path):
    """Ingest writes a chunk's reader blocks without joining them: the same chunk as from the joined block."""
    calls, doses = _matrices(seed=9)
    variants = variants_table(calls.shape[0])
    pieces = [dataset.Block(variants=variants.slice(0, 5), call_dosage=calls[:5], dosage=doses[0]),
              dataset.Block(variants=variants.slice(5, 4), call_dosage=calls[5:9], dosage=None),
              dataset.Block(variants=variants.slice(9, 3), call_dosage=calls[9:], dosage=doses[2])]
    root = tmp_path / "blocks.dataset"
    root.mkdir()
    entry = dataset.write_chunk(root, 0, *pieces)
    assert entry == {"name": "chunk-00000", "num_variants": 12, "has_dosage": True}
    samples = pa.table({"sample_index": pa.array(np.arange(N_SAMPLES, dtype=np.int32)),
                        "sample_id": pa.array(sample_ids(N_SAMPLES)), "has_phenotypes": pa.array(np.zeros(N_SAMPLES, bool))})
    dataset.write_metadata(root, samples=samples, chunks=[entry])
    block = dataset.open_dataset(root).read_block("chunk-00000", with_dosage=True)
    np.testing.assert_array_equal(block.call_dosage, calls)
    np.testing.assert_array_equal(block.dosage, np.concatenate([doses[0], np.full((4, N_SAMPLES), np.nan, np.float32), doses[2]]))
    assert block.variants.to_pylist() == variants.to_pylist()


@pytest.mark.parametrize("num_samples", [2, 3, 4, 5, 8, 13, 1001])
def test_pack_calls__every_call_and_position_against_the_documented_decoding(num_samples):
    calls = np.random.default_rng(num_samples).integers(-1, 3, size=(40, num_samples)).astype(np.int8)
    calls[:4, :4 if num_samples >= 4 else num_samples] = np.array([-1, 0, 1, 2])[:min(4, num_samples)]  # each code at each position
    packed, packable = dataset.pack_calls(calls)
    assert packed.shape == (40, (num_samples + 3) // 4) and packable.all()
    np.testing.assert_array_equal(np.stack([decode_calls(row.tobytes(), num_samples) for row in packed]), calls)
    np.testing.assert_array_equal(dataset.unpack_calls(packed, num_samples), calls)
    unused = 4 * packed.shape[1] - num_samples
    if unused:
        assert (packed[:, -1] >> (8 - 2 * unused) == 0).all()  # the last byte's unused bits are 0


def test_polyploid_call__its_variant_keeps_a_byte_a_call_and_the_chunk_reads_back(tmp_path):
    calls, doses = _matrices(seed=11)
    calls[2, 4] = 3  # a triploid call with three ALT alleles
    calls[9, 0] = 4
    calls[10, 6] = -2  # nothing genofed writes, but no 2-bit code may stand for it
    root = _write(tmp_path / "polyploid.dataset", calls, doses)
    _assert_reads_back(root, calls, doses)
    lengths = [len(value) for value in pq.read_table(root / "genotypes" / "chunk-00000.parquet").column("call_dosage").to_pylist()]
    assert lengths == [2, 2, N_SAMPLES, 2, 2]
    assert [len(value) for value in pq.read_table(root / "genotypes" / "chunk-00002.parquet").column("call_dosage").to_pylist()] == [N_SAMPLES, N_SAMPLES, 2]
    assert upgrade_dataset(root).converted == 0


def test_one_sample__a_byte_a_call(tmp_path):
    root = tmp_path / "one.dataset"
    root.mkdir()
    calls = np.array([[2], [-1], [0], [1]], np.int8)
    entry = dataset.write_chunk(root, 0, dataset.Block(variants=variants_table(4), call_dosage=calls, dosage=None))
    samples = pa.table({"sample_index": pa.array([0], pa.int32()), "sample_id": pa.array(sample_ids(1)), "has_phenotypes": pa.array([False])})
    dataset.write_metadata(root, samples=samples, chunks=[entry])
    assert pq.read_table(root / "genotypes" / "chunk-00000.parquet").column("call_dosage").to_pylist() == [b"\x02", b"\xff", b"\x00", b"\x01"]
    np.testing.assert_array_equal(dataset.open_dataset(root).read_block("chunk-00000").call_dosage, calls)


def test_format_2__read_as_it_is_then_packed_in_place_by_the_upgrade(written):
    root, calls, doses = written
    _as_format_2(root)
    _assert_reads_back(root, calls, doses)
    result = CliRunner().invoke(main, ["dataset", "upgrade", str(root), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["converted"], summary["already_packed"], summary["format_version"]) == (3, 0, "3.0.0")
    _assert_reads_back(root, calls, doses)
    assert all(len(value) == 2 for value in pq.read_table(root / "genotypes" / "chunk-00001.parquet").column("call_dosage").to_pylist())
    assert json.loads((root / "dataset.json").read_text())["schemas"]["genotypes"] == "3.0.0"
    assert (upgrade_dataset(root).converted, upgrade_dataset(root).already_packed) == (0, 3)


def test_readable_without_genofed__pandas_duckdb_polars(written):
    """The contract's documented decoding (2 bits a call, as a .pgen's hard calls) gives the matrix in each tool."""
    import duckdb
    import pandas as pd
    import polars as pl

    root, calls, _ = written
    files = str(root / "genotypes" / "*.parquet")
    frame = pd.concat([pd.read_parquet(path) for path in sorted((root / "genotypes").glob("*.parquet"))])
    from_pandas = np.stack([decode_calls(value, N_SAMPLES) for value in frame["call_dosage"]])
    rows = duckdb.sql(f"select variant_id, call_dosage from '{files}' order by filename, file_row_number").fetchall()
    from_duckdb = np.stack([decode_calls(value, N_SAMPLES) for _, value in rows])
    from_polars = np.stack([decode_calls(value, N_SAMPLES) for value in pl.read_parquet(files)["call_dosage"].to_list()])
    for matrix in (from_pandas, from_duckdb, from_polars):
        np.testing.assert_array_equal(matrix, calls)


def test_reader__a_row_of_the_wrong_width_is_refused_naming_file_and_row(written):
    root, _, _ = written
    path = root / "genotypes" / "chunk-00002.parquet"
    table = pq.read_table(path)
    values = table.column("call_dosage").to_pylist()
    values[1] = values[1] + b"\x00"
    pq.write_table(table.set_column(1, "call_dosage", pa.array(values, pa.binary())), path)
    with pytest.raises(InputError, match=r"chunk-00002\.parquet, column call_dosage: row 1 holds 3 bytes, expected 2 \(7 samples, 2 bits each\) or 7"):
        dataset.open_dataset(root).read_block("chunk-00002")


def test_format_1__refused_with_the_upgrade_command_then_upgraded_in_place(written):
    root, calls, doses = written
    _as_format_1(root)
    with pytest.raises(InputError, match=r"genofed dataset upgrade"):
        dataset.open_dataset(root)
    result = CliRunner().invoke(main, ["dataset", "upgrade", str(root), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["converted"], summary["already_packed"], summary["format_version"]) == (3, 0, dataset.FORMAT_VERSION)
    _assert_reads_back(root, calls, doses)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["schemas"]["genotypes"] == "3.0.0"
    assert not list(root.rglob(".*upgrading"))
    meta = (root / "dataset.json").read_bytes()
    again = upgrade_dataset(root)
    assert (again.converted, again.already_packed) == (0, 3)
    assert (root / "dataset.json").read_bytes() == meta


def test_format_1__an_interrupted_upgrade_is_finished_by_the_next_run(written):
    root, calls, doses = written
    _as_format_1(root)

    def stop_after_first(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        upgrade_dataset(root, progress=stop_after_first)
    with pytest.raises(InputError, match="genofed dataset upgrade"):  # dataset.json still says format 1
        dataset.open_dataset(root)
    finished = upgrade_dataset(root)
    assert (finished.converted, finished.already_packed) == (2, 1)
    _assert_reads_back(root, calls, doses)


def test_format_1__a_damaged_chunk_fails_naming_file_and_row_and_changes_nothing(written, tmp_path):
    root, _, _ = written
    _as_format_1(root)
    path = root / "genotypes" / "chunk-00000.parquet"
    table = pq.read_table(path)
    rows = table.column("call_dosage").to_pylist()
    rows[3] = rows[3] + [0]
    pq.write_table(table.set_column(1, "call_dosage", pa.array(rows, pa.list_(pa.int8()))), path)
    before = {p.name: p.read_bytes() for p in (root / "genotypes").iterdir()}
    result = CliRunner().invoke(main, ["dataset", "upgrade", str(root)])
    assert result.exit_code == 1
    assert "chunk-00000.parquet, column call_dosage: row 3 holds 8 genotypes" in result.output
    assert {p.name: p.read_bytes() for p in (root / "genotypes").iterdir()} == before
    assert json.loads((root / "dataset.json").read_text())["format_version"] == "1.0.0"


def test_format_1_chunk_in_a_format_2_dataset__refused_naming_the_upgrade_which_mends_it(written, tmp_path):
    """Ingest parts joined across genofed versions: the reader names the chunk, never decodes lists as bytes."""
    root, calls, doses = written
    old = shutil.copytree(root, tmp_path / "old.dataset")
    _as_format_1(old)
    shutil.copy(old / "genotypes" / "chunk-00001.parquet", root / "genotypes" / "chunk-00001.parquet")
    with pytest.raises(InputError, match=r"chunk-00001\.parquet, column call_dosage: genotypes stored as list<.*genofed dataset upgrade"):
        dataset.open_dataset(root).read_block("chunk-00001")
    meta = (root / "dataset.json").read_bytes()
    mended = upgrade_dataset(root)
    assert (mended.converted, mended.already_packed) == (1, 2)
    assert (root / "dataset.json").read_bytes() == meta  # a current dataset: only the chunk changes
    _assert_reads_back(root, calls, doses)
