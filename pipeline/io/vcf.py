"""VCF / VCF.gz (BGZF) / BCF reader: validated records in vectorized blocks.

pysam/htslib reads the header, the index and a BCF's records; a VCF.gz's record text is
inflated by zlib-ng (:class:`BgzfText`), a region's from the offset the index gives.
Genotypes are then parsed from the records' text with numpy. A block's sample columns are joined into one
buffer and, in the common case (every GT a one-digit diploid call written in three
bytes, first in FORMAT), decoded with a lookup table and no Python work per sample.
Anything else (multi-digit allele indexes, haploid or polyploid calls, GT not first)
goes through a per-record parser that is slower but handles the whole format, and is
the reference the fast path is tested against (with pysam's own decoding).

Records are always checked while they are read: sample column count, GT syntax, allele
indexes within the ALT count, contigs declared in the header and sort order. Every
error names the file, the record (``contig:pos`` and the line when streaming text) and
what to do.

One semantics for every way in: a plain VCF, a BGZF VCF with a .tbi or .csi index and
a BCF give the same records and the same errors. Indexed text is fetched as raw bytes
(never decoded by the index iterator, so a UTF-8 value cannot make a window look
empty) and split by the same code as a streamed file; every record, whichever path it
came from, goes through :func:`read_blocks`' checks. Values are read as strictly as
htslib: POS is ASCII digits from 1 to 2^31-1 (POS 0, which the indexes cannot find, is
refused), a leading phasing mark in GT needs VCF 4.4, DS is a number in ``[0, ploidy]``,
and CHROM/ID/REF/ALT must be UTF-8 without control characters. A NUL byte anywhere in a
record line of a streamed text file is refused (htslib ends the line there). A record
whose FORMAT has no GT has missing calls, as bcftools and plink2 read it (counted in
``RecordBlock.records_without_gt``).

A line starting with '#' after the header is a comment, as tabix's VCF preset reads it:
it is skipped on every path (the index cannot return it, so streaming skips it too and
both give the same records). htslib's streaming reader would read it as a record.

An index can only return records it can locate. :func:`index_record_counts` reads the
number of records a TBI/CSI index holds per contig, so the ingest can check that the
records read by region add up to it (a POS 0 record in a BCF, or a stale index, would
otherwise be lost silently).
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pysam
from zlib_ng import gzip_ng, zlib_ng

from pipeline.assembly import assembly_from_header
from pipeline.errors import InputError, VcfFormatError

MISSING_ALLELE = -1  # '.' in a GT
ABSENT_ALLELE = -2  # slot beyond a call's ploidy (haploid call in a diploid-width array)
MAX_ALT_ALLELES = 126  # allele indexes are stored as int8
IMPUTATION_KEYS = ("R2", "DR2", "INFO")
"""INFO keys of imputation quality, in the order one is chosen when a header declares several:
minimac's R2, Beagle's DR2, IMPUTE's INFO (plink2 --extract-if-info reads the key it is given)."""
GP_SUM_TOLERANCE = 0.01
"""How far a call's genotype probabilities may sum from 1 (files round them to a few decimals)."""

_BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
_READ_CHUNK = 1 << 22  # bytes of decompressed text read at a time when streaming
_BATCH_BYTES = 1 << 19  # genotype text decoded at a time (fits in cache)
_MAX_POSITION = (1 << 31) - 2  # largest 0-based start of a record (POS 2^31-1)
_MAX_POS = (1 << 31) - 1  # largest VCF POS: a 32-bit signed Integer (VCF 4.x), as htslib reads it; also fetch()'s largest coordinate (int32)

_TAB = 9


def _pair_table(terminators: bytes) -> np.ndarray:
    """Codes of every two bytes of GT text, read as one little-endian uint16, for :func:`_decode_fast`.

    A one-digit diploid call and the byte after it are two pairs: (allele, separator)
    and (allele, terminator). The table gives an (allele, terminator) pair the allele's
    index (digits 0..9, '.' -1), an (allele, '/' or '|') pair that index + 16, and any
    other pair -128. ``np.take`` of it over the text's pairs is cheaper than mapping
    every byte (``bytes.translate``), and leaves the alleles where the output wants them.
    """
    table = np.full(1 << 16, -128, dtype=np.int8)
    for allele, index in [(ord("."), -1), *((ord("0") + digit, digit) for digit in range(10))]:
        for terminator in terminators:
            table[allele | terminator << 8] = index
        for separator in b"/|":
            table[allele | separator << 8] = index + 16
    return table


_PAIRS_TAB = _pair_table(b"\t")  # a call alone in its cell
_PAIRS_FIELD = _pair_table(b"\t:")  # a call followed by other FORMAT fields
_CELL_ADD = np.uint16(0x00F1)
"""Added to a cell's two pair codes (one uint16), it makes both bytes allele + 1 (0..10) exactly
when the cell is valid: the first code, allele + 16 in 15..25, loses 15 and carries 1 into the
second, allele in -1..9. Any other code leaves a byte above 15, so ``& _CELL_MASK`` tests a cell."""
_CELL_MASK = np.uint16(0xF0F0)
_PIPE = ord("|")
_GT_SYNTAX = re.compile(rb"[|/]?(?:\.|\d+)(?:[|/](?:\.|\d+))*")
_GT_SPLIT = re.compile(rb"[|/]")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # tab (\x09) separates the columns joined for the check


@dataclass(frozen=True)
class Region:
    """A window of one contig: records with ``start <= POS < end`` (1-based) belong to it.

    Windows of one contig tile it without overlap, so each record lands in exactly one
    region whatever its length.
    """

    contig: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.end <= self.start:
            raise ValueError(f"region {self.contig}:{self.start}-{self.end} is empty or starts before 1; expected 1 <= start < end")

    def __str__(self) -> str:
        return f"{self.contig}:{self.start}-{self.end - 1}"


@dataclass(frozen=True)
class RecordBlock:
    """A batch of consecutive records of one contig, genotypes as dense arrays.

    ``allele_index`` is int8 ``(records, samples, max_ploidy)``: GT allele indexes,
    ``-1`` for a missing allele ('.') and ``-2`` for a slot beyond the call's ploidy.
    ``phased`` is True where a call has two or more alleles all separated by '|'.
    ``ds`` is float32 ``(records, samples, max_alts)`` FORMAT/DS (NaN missing), or None
    when no record of the block has DS or GP; a record with GP and no DS has the expected
    ALT counts of its genotype probabilities there (:func:`decode_gp_dosage`, counted in
    ``records_ds_from_gp``). ``records_without_gt`` counts the records whose FORMAT has no
    GT: their calls are read as missing (as bcftools and plink2 do). ``info_score`` is
    float32 ``(records, max_alts)``, the imputation quality INFO value the source names
    (:attr:`VcfSource.imputation_key`; NaN where a record has none), or None without one.
    """

    source: str
    contig: str
    position: np.ndarray
    line_number: np.ndarray | None
    record_id: list[str | None]
    ref: list[str]
    alts: list[tuple[str, ...]]
    allele_index: np.ndarray
    phased: np.ndarray | None
    ds: np.ndarray | None
    records_without_gt: int = 0
    info_score: np.ndarray | None = None
    records_ds_from_gp: int = 0

    @property
    def num_records(self) -> int:
        return int(self.position.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.allele_index.shape[1])


@contextlib.contextmanager
def _quiet_htslib() -> Iterator[None]:
    """Silences htslib's own stderr warnings; genofed reports problems itself."""
    previous = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(previous)


def _check_compression(path: Path) -> bool:
    """Returns whether ``path`` is BGZF; rejects plain gzip and truncated BGZF."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(18)
            if head[:2] != b"\x1f\x8b":
                return False
            is_bgzf = len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC"
            if not is_bgzf:
                raise VcfFormatError(
                    f"{path}: compressed with plain gzip, not BGZF; recompress it so it can be read and indexed: "
                    f"'zcat {path} | bgzip > {path.stem}.bgz.vcf.gz' (or 'bcftools view -Oz')"
                )
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - len(_BGZF_EOF)))
            if handle.read() != _BGZF_EOF:
                raise VcfFormatError(
                    f"{path}: the BGZF end-of-file block is missing, so the file is truncated (an interrupted copy or "
                    "download); copy it again from the source"
                )
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error}); check the permissions") from error
    return True


def _header_problem(path: Path, compressed: bool) -> str:
    """Explains why htslib rejected a text VCF header (the common cases)."""
    try:
        opener = pysam.BGZFile(str(path), "rb") if compressed else open(path, "rb")
        with opener as handle:
            head = handle.read(1 << 20)
    except OSError:
        return "the file cannot be decompressed"
    if not head:
        return "the file is empty"
    for number, line in enumerate(head.split(b"\n"), start=1):
        if line.startswith(b"#CHROM"):
            return "the header is malformed"
        if not line.startswith(b"#"):
            if number == 1:
                return "it does not start with a '##fileformat=VCF' header"
            return f"line {number} is a record but no '#CHROM POS ID REF ALT QUAL FILTER INFO ...' header line came before it"
    return "no '#CHROM' header line in the first megabyte"


class VcfSource:
    """An opened, header-validated VCF/BCF file (identity: a file on disk).

    Attributes:
        path: the file.
        samples: sample IDs in column order.
        contigs: contigs declared in the header (name -> length, None when the header
            gives none); when the header declares no contig at all, the index's contigs.
        declared_contigs: whether the header has ``##contig`` lines (then records on
            other contigs are an error).
        has_index: whether a .tbi/.csi index was found.
        is_bcf: BCF (binary) rather than text VCF.
        is_compressed: BGZF-compressed (always true for BCF written by bcftools).
        version: the ``##fileformat=VCFv4.x`` version as ``(4, x)``; rules that changed
            between versions (a leading phasing mark in GT, VCF 4.4) follow it.
        index: the .tbi/.csi file used (None without one).
        header_assembly: the genome assembly the header's ``##reference`` and contig
            ``assembly=`` values name (:func:`pipeline.assembly.assembly_from_header`), or None.
        imputation_key: the INFO key of imputation quality the header declares, the first
            of :data:`IMPUTATION_KEYS` (minimac's R2, Beagle's DR2, IMPUTE's INFO), or None.
    """

    def __init__(
        self,
        path: Path,
        samples: list[str],
        contigs: dict[str, int | None],
        declared_contigs: bool,
        has_index: bool,
        is_bcf: bool,
        is_compressed: bool,
        version: tuple[int, int] = (4, 2),
        index: Path | None = None,
        header_assembly: str | None = None,
        imputation_key: str | None = None,
    ) -> None:
        self.path = path
        self.samples = samples
        self.contigs = contigs
        self.declared_contigs = declared_contigs
        self.has_index = has_index
        self.is_bcf = is_bcf
        self.is_compressed = is_compressed
        self.version = version
        self.index = index
        self.header_assembly = header_assembly
        self.imputation_key = imputation_key

    def __repr__(self) -> str:
        kind = "BCF" if self.is_bcf else ("VCF.gz" if self.is_compressed else "VCF")
        return f"VcfSource({str(self.path)!r}, {kind}, samples={len(self.samples)}, contigs={len(self.contigs)}, indexed={self.has_index})"

    def regions(self, chunk_size: int) -> list[Region]:
        """Cuts the contigs that have records into windows of ``chunk_size`` bases.

        Windows sit on a fixed grid (``1 + k * chunk_size``) and only those where at
        least one record starts are returned; the last window of a contig reaches past
        its last record, even when the header gives no length or a wrong one. Planning
        costs one index query per returned window (plus a few per contig), whatever the
        span between records.

        Raises:
            InputError: the file has no index.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if not self.has_index:
            raise InputError(
                f"{self.path}: no index (.tbi/.csi) next to the file, so it cannot be split into regions; create one with "
                f"'tabix -p vcf {self.path}' or 'bcftools index {self.path}', or read the whole file with region=None"
            )
        regions: list[Region] = []
        with _quiet_htslib(), _Fetcher(self) as fetcher:
            for contig in fetcher.contigs():
                if self.declared_contigs and contig not in self.contigs:
                    # the same error read_blocks gives, before planning windows on a contig of unknown length
                    raise VcfFormatError(
                        f"{self.path}: {contig}: contig {contig!r} has records (in the index) but is not declared in the header "
                        f"(##contig lines declare {', '.join(list(self.contigs)[:5])}{', ...' if len(self.contigs) > 5 else ''}); "
                        "add it with 'bcftools reheader' or fix the CHROM column"
                    )
                position = fetcher.first_position(contig, 0, None)
                if position is None:
                    continue
                end = self._end_bound(fetcher, contig)
                # one index query per occupied window: jump to the next record's window, never probe empty ones
                while position is not None:
                    start = 1 + ((position - 1) // chunk_size) * chunk_size
                    stop = min(start + chunk_size, end)
                    regions.append(Region(contig, start, stop))
                    position = fetcher.next_position(contig, stop) if stop < end else None
        return regions

    def _end_bound(self, fetcher: _Fetcher, contig: str) -> int:
        """A 1-based exclusive bound above every record's POS on ``contig``."""
        length = self.contigs.get(contig)
        low = length if length else 0
        if fetcher.first_position(contig, low, None) is None:
            return low + 1
        high = 1 << 29
        while high < _MAX_POS and fetcher.first_position(contig, high, None) is not None:
            high = min(high * 2, _MAX_POS)
        # smallest x with no record overlapping [x, inf) (0-based): every POS <= x
        while low + 1 < high:
            middle = (low + high) // 2
            if fetcher.first_position(contig, middle, None) is None:
                high = middle
            else:
                low = middle
        return high + 1


class _Fetcher:
    """Index probes used to plan regions (first record overlapping a 0-based window)."""

    def __init__(self, source: VcfSource) -> None:
        self.source = source
        self.handle: pysam.VariantFile | pysam.TabixFile
        self.handle = _open_indexed(source)

    def __enter__(self) -> _Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def contigs(self) -> list[str]:
        indexed: list[str]
        if isinstance(self.handle, pysam.VariantFile):
            indexed = [str(name) for name in self.handle.index.keys()]
        else:
            indexed = _tabix_contigs(self.source, self.handle)
        ordered = [name for name in self.source.contigs if name in set(indexed)]
        return ordered + [name for name in indexed if name not in self.source.contigs]

    def _positions(self, contig: str, start0: int, end0: int | None) -> Iterator[int]:
        """POS of each record the index returns for the window, in order.

        A record that cannot be read or whose POS is not valid is an error, never the
        end of the window (records would be lost silently).
        """
        if contig not in self._indexed():
            return
        where = f"{self.source.path}: {contig}:{start0 + 1}-{'end' if end0 is None else end0}"
        records = self.handle.fetch(_contig_to_tabix(self.handle, contig), start0, end0)
        for record in _readable(records, lambda error: f"{where}: unreadable record ({error}); the file or its index is "
                                "corrupt: copy it again, or re-index it"):
            if isinstance(record, str):
                fields = record.encode("latin-1").split(b"\t", 2)
                yield parse_position(fields[1] if len(fields) > 1 else b"", f"{self.source.path}: {fields[0].decode(errors='replace')}")
            else:
                yield int(record.pos)

    def first_position(self, contig: str, start0: int, end0: int | None) -> int | None:
        """POS of the first record overlapping the window, None when there is none."""
        return next(self._positions(contig, start0, end0), None)

    def next_position(self, contig: str, position: int) -> int | None:
        """POS of the first record with ``POS >= position`` (1-based), None when there is none.

        Records that start before ``position`` but overlap it (a long REF) come first
        from the index and are skipped.
        """
        start0 = min(position - 1, _MAX_POSITION)
        return next((found for found in self._positions(contig, start0, None) if found >= position), None)

    def _indexed(self) -> set[str]:
        cached: set[str] | None = getattr(self, "_indexed_contigs", None)
        if cached is None:
            cached = set(self.contigs())
            self._indexed_contigs = cached
        return cached


def _find_index(path: Path, *, is_bcf: bool = False) -> Path | None:
    """The index next to ``path``: ``.tbi`` or ``.csi`` (bcftools index's default; the only one for BCF)."""
    for suffix in (".csi",) if is_bcf else (".tbi", ".csi"):
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


_TBI_PSEUDO_BIN = 37450  # the bin holding a reference's record counts in a .tbi (SAM spec, 5.2)


def index_record_counts(source: VcfSource) -> dict[str, int] | None:
    """Records per contig that the file's TBI/CSI index says it holds (htslib's ``hts_idx_get_stat``).

    Each reference of an index made by htslib 1.0 or later has a pseudo-bin whose
    second chunk is ``(n_mapped, n_unmapped)``: the number of records indexed. Read
    from the index file itself (BGZF, small), as pysam does not expose it.

    Returns:
        contig -> n_mapped for every contig with records, or None when the file has
        no index, or the index has no counts (made by tabix before htslib) or cannot
        be parsed (then nothing can be checked against it).
    """
    index = source.index if source.index is not None else _find_index(source.path, is_bcf=source.is_bcf)
    if index is None:
        return None
    try:
        with gzip.open(index, "rb") as handle:
            data = handle.read()
        return _parse_index_counts(data, source)
    except (OSError, EOFError, struct.error, ValueError, IndexError):
        return None


def _parse_index_counts(data: bytes, source: VcfSource) -> dict[str, int] | None:
    """The pseudo-bin counts of a decompressed .tbi/.csi (layouts: SAM spec 5.2, CSIv1 spec)."""
    offset = 4
    names: list[str] | None = None
    if data[:4] == b"TBI\x01":
        n_ref, *_, l_nm = struct.unpack_from("<8i", data, offset)
        offset += 32
        names = [name.decode("utf-8", errors="replace") for name in data[offset : offset + l_nm].split(b"\x00")[:n_ref]]
        offset += l_nm
        pseudo_bin, is_csi = _TBI_PSEUDO_BIN, False
    elif data[:4] == b"CSI\x01":
        _min_shift, depth, l_aux = struct.unpack_from("<3i", data, offset)
        offset += 12
        aux = data[offset : offset + l_aux]
        offset += l_aux
        if l_aux >= 28:  # a tabix configuration then the names (CSI of a text VCF)
            l_nm = struct.unpack_from("<i", aux, 24)[0]
            names = [name.decode("utf-8", errors="replace") for name in aux[28 : 28 + l_nm].split(b"\x00")]
        (n_ref,) = struct.unpack_from("<i", data, offset)
        offset += 4
        pseudo_bin, is_csi = ((1 << (3 * depth + 3)) - 1) // 7 + 1, True  # htslib's META_BIN: n_bins + 1
    else:
        return None
    if names is None:  # a BCF's CSI: reference i is the header's contig with IDX i
        with _quiet_htslib(), pysam.VariantFile(str(source.path)) as handle:
            by_id: dict[int, str] = {int(contig.id): str(contig.name) for contig in handle.header.contigs.values()}
        names = [by_id.get(tid, f"#{tid}") for tid in range(n_ref)]
    counts: dict[str, int] = {}
    for tid in range(n_ref):
        (n_bin,) = struct.unpack_from("<i", data, offset)
        offset += 4
        found: int | None = None
        for _ in range(n_bin):
            (bin_number,) = struct.unpack_from("<I", data, offset)
            offset += 12 if is_csi else 4  # CSI bins carry a loffset
            (n_chunk,) = struct.unpack_from("<i", data, offset)
            offset += 4
            if bin_number == pseudo_bin and n_chunk == 2:
                found = struct.unpack_from("<Q", data, offset + 16)[0]
            offset += 16 * n_chunk
        if not is_csi:
            (n_intv,) = struct.unpack_from("<i", data, offset)
            offset += 4 + 8 * n_intv
        if n_bin and found is None:
            return None  # an index without counts
        if found:
            counts[names[tid]] = counts.get(names[tid], 0) + found
    return counts


def _open_indexed(source: VcfSource) -> pysam.VariantFile | pysam.TabixFile:
    """Opens a file for region queries through its .tbi or .csi index.

    A text VCF is read as bytes (Latin-1 maps every byte to one character and back),
    so a UTF-8 value never fails to decode in the index iterator; records are decoded
    once, by the same code as the whole-file path.
    """
    if source.is_bcf:
        return pysam.VariantFile(str(source.path))
    index = source.index or _find_index(source.path)
    if index is None:
        raise InputError(f"{source.path}: no index (.tbi/.csi) next to the file; create one with 'bcftools index {source.path}'")
    return pysam.TabixFile(str(source.path), index=str(index), encoding="latin-1")


def _tabix_contigs(source: VcfSource, handle: pysam.TabixFile) -> list[str]:
    """The contigs of a tabix index (pysam decodes them as UTF-8 whatever the handle's encoding)."""
    try:
        return [str(name) for name in handle.contigs]
    except UnicodeDecodeError as error:
        raise VcfFormatError(
            f"{source.path}: a contig name in the index is not valid UTF-8 ({error.reason}); VCF 4.3 text is UTF-8: fix the CHROM column"
        ) from None


def _contig_to_tabix(handle: pysam.VariantFile | pysam.TabixFile, contig: str) -> str:
    """A contig name for a query on ``handle`` (the Latin-1 tabix handle sends each character as one byte: give it the UTF-8 bytes)."""
    return contig if isinstance(handle, pysam.VariantFile) else contig.encode("utf-8").decode("latin-1")


def parse_position(raw: bytes, where: str) -> int:
    """A record's POS, read as strictly as htslib does: ASCII digits, 1 to 2^31-1.

    Python's ``int()`` also accepts '1_000', ' 100' and '+5'; those are errors here.
    POS 0 (a telomere placeholder) is refused: htslib's indexes do not return such
    records, so reading by region would lose them.

    Raises:
        VcfFormatError: naming ``where`` and the value.
    """
    if raw.isdigit() and len(raw) <= 10:
        position = int(raw)
        if 1 <= position <= _MAX_POS:
            return position
        if position == 0:
            raise VcfFormatError(
                f"{where}: POS 0 (a telomere placeholder, not a site); expected a position from 1 to {_MAX_POS}: remove the record "
                "(for example 'bcftools view -e POS=0')"
            )
    shown = bytes(raw[:20]).decode(errors="replace")
    raise VcfFormatError(f"{where}: POS {shown!r} is not a position; expected ASCII digits only, from 1 to {_MAX_POS} (VCF POS is a 32-bit integer)")


def open_vcf(path: str | Path) -> VcfSource:
    """Opens and validates a VCF, BGZF-compressed VCF or BCF file.

    Raises:
        InputError: the file is missing or unreadable.
        VcfFormatError: the file is truncated, plain-gzip compressed, or its header is
            not a valid VCF header (for example no ``#CHROM`` line).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path (expected a .vcf, .vcf.gz or .bcf file)")
    if not path.is_file():
        raise InputError(f"{path}: not a file; expected a .vcf, .vcf.gz or .bcf file")
    compressed = _check_compression(path)
    with _quiet_htslib():
        try:
            handle = pysam.VariantFile(str(path))
        except (ValueError, OSError, NotImplementedError) as error:
            if compressed and isinstance(error, OSError) and "truncated" in str(error):
                raise VcfFormatError(f"{path}: the file is truncated; copy it again from the source") from error
            raise VcfFormatError(
                f"{path}: not a readable VCF/BCF file: {_header_problem(path, compressed)}; expected '##' meta lines then a "
                "'#CHROM POS ID REF ALT QUAL FILTER INFO FORMAT <samples>' line (check with 'bcftools view -h')"
            ) from error
        try:
            is_bcf = handle.format == "BCF"
            samples = list(handle.header.samples)
            contigs: dict[str, int | None] = {name: contig.length for name, contig in handle.header.contigs.items()}
            version_text = str(handle.header.version or "")
            assembly_values = [str(record.value) for record in handle.header.records if record.key == "reference"]
            assembly_values += [str(contig.header_record.get("assembly") or "") for contig in handle.header.contigs.values()
                                if contig.header_record is not None]
            imputation_key = next((key for key in IMPUTATION_KEYS if key in handle.header.info), None)
        except UnicodeDecodeError as error:
            raise VcfFormatError(
                f"{path}: the header (sample IDs or contig names) is not valid UTF-8 ({error.reason} at byte {error.start}); "
                "VCF 4.3 text is UTF-8: fix the names, for example with 'bcftools reheader'"
            ) from None
        finally:
            handle.close()
    index = _find_index(path, is_bcf=is_bcf) if (compressed or is_bcf) else None
    version_match = re.search(r"(\d+)\.(\d+)", version_text)
    version = (int(version_match.group(1)), int(version_match.group(2))) if version_match else (4, 2)
    # htslib adds the index's contigs to a text header: keep only those its ##contig lines declare
    declared = bool(contigs) if is_bcf else False
    if not is_bcf:
        names = _declared_contigs(path, compressed)
        declared = bool(names)
        if declared:
            contigs = {name: contigs.get(name) for name in names}
    if len(set(samples)) != len(samples):
        raise VcfFormatError(f"{path}: duplicate sample IDs in the '#CHROM' header line; sample IDs must be unique")
    return VcfSource(path, samples, contigs, declared, index is not None, is_bcf, compressed, version=version, index=index,
                     header_assembly=assembly_from_header(assembly_values, source=str(path)), imputation_key=imputation_key)


_CONTIG_ID = re.compile(rb"^##contig=<(?:.*?[<,])?ID=([^,>]+)")


def _declared_contigs(path: Path, compressed: bool) -> list[str]:
    """The contigs a text VCF's own header declares in ``##contig`` lines (read up to '#CHROM')."""
    opener = pysam.BGZFile(str(path), "rb") if compressed else open(path, "rb")
    names: list[str] = []
    pending = b""
    with contextlib.suppress(OSError), opener as handle:
        while True:
            chunk = handle.read(1 << 16)
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"#CHROM") or not line.startswith(b"#"):
                    return names
                match = _CONTIG_ID.match(line)
                if match:
                    names.append(match.group(1).decode(errors="replace"))
    return names


# --- record streams: (line_number | None, split record) ----------------------------------
#
# A split record is the list of its first nine columns as bytes plus, as a tenth item,
# its sample columns still tab-joined, as a zero-copy view into the decompressed buffer
# where possible (the genotype decoder joins these views once per block).

_HEAD_BYTES = 1024  # the fixed columns of a record almost always fit in this many bytes


def _split_record(buffer: bytes, start: int, end: int) -> list[bytes | memoryview]:
    """Splits ``buffer[start:end]`` (one record, no newline) into 9 columns + samples."""
    if end > start and buffer[end - 1] == 13:  # '\r' of a CRLF file
        end -= 1
    head = buffer[start : min(end, start + _HEAD_BYTES)]
    fields: list[bytes | memoryview] = head.split(b"\t", 9)  # type: ignore[assignment]
    if len(fields) == 10 and end > start + _HEAD_BYTES:
        fields[9] = memoryview(buffer)[start + len(head) - len(fields[9]) : end]
    elif len(fields) < 10 and end > start + _HEAD_BYTES:
        fields = buffer[start:end].split(b"\t", 9)  # type: ignore[assignment]
    return fields


class BgzfText:
    """A BGZF file's decompressed text from virtual offset ``offset`` (0: the start), as a readable stream.

    BGZF is multi-member gzip, so zlib-ng's gzip reader inflates it; it does so about 2.6
    times faster than htslib's zlib through pysam here (a third of ingest's CPU was
    inflating) and releases Python's lock while it works. A virtual offset is the
    compressed offset of a block (high 48 bits) and a position in its text (low 16).
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self._raw = open(path, "rb")  # noqa: SIM115 -- closed by close(), as the stream's owner
        try:
            self._raw.seek(offset >> 16)
            self._text = gzip_ng.GzipFile(fileobj=self._raw, mode="rb")
            skip = offset & 0xFFFF
            while skip and (skipped := len(self._text.read(skip))):
                skip -= skipped
        except BaseException:
            self._raw.close()
            raise

    def read(self, size: int = -1) -> bytes:
        return self._text.read(size)

    def close(self) -> None:
        try:
            self._text.close()
        finally:
            self._raw.close()


def _lines(handle: Any, path: Path, after: Callable[[int], str]) -> Iterator[tuple[bytes, int, int, bool]]:
    """Every line of a decompressed text stream as ``(buffer, start, end, has_nul)``, without copying it.

    Reads in large chunks (bounded memory) and yields slices of them, so the sample
    columns are copied once, by the genotype decoder; ``has_nul`` says whether the
    line's chunk holds a NUL byte (one scan per chunk: lines are checked only then).

    Raises:
        VcfFormatError: decompression fails (``after(lines read)`` says where).
    """
    count = 0
    pending = b""
    while True:
        try:
            chunk = handle.read(_READ_CHUNK)
        except (OSError, EOFError, zlib_ng.error) as error:
            raise VcfFormatError(f"{path}: decompression failed {after(count)} (the file is truncated or corrupt); copy it again from the source") from error
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline < 0:
            pending += chunk
            continue
        first = pending + chunk[:newline]
        has_nul = b"\x00" in first or b"\x00" in chunk
        count += 1
        yield first, 0, len(first), has_nul
        position = newline + 1
        while (newline := chunk.find(b"\n", position)) >= 0:
            count += 1
            yield chunk, position, newline, has_nul
            position = newline + 1
        pending = chunk[position:]
    if pending.strip():
        yield pending, 0, len(pending), b"\x00" in pending


def _text_records(source: VcfSource) -> Iterator[tuple[int | None, list[bytes | memoryview]]]:
    """Streams a text VCF's records with their 1-based line numbers, header checked.

    Reads decompressed text in large chunks (bounded memory) and splits records in
    place, so the sample columns are copied once, by the genotype decoder.
    """
    path = source.path
    try:
        handle = BgzfText(path) if source.is_compressed else open(path, "rb")
    except OSError as error:
        raise InputError(f"{path}: cannot be opened ({error}); check the file and its permissions") from error
    expected_columns = 9 + len(source.samples) if source.samples else None
    seen_header = False
    number = 0

    def header_line(line: bytes, number: int) -> None:
        nonlocal seen_header
        if line.startswith(b"#CHROM"):
            seen_header = True
            columns = line.rstrip(b"\r").count(b"\t") + 1
            if expected_columns is not None and columns != expected_columns:
                raise VcfFormatError(f"{path}: line {number}: the '#CHROM' line has {columns} columns, expected {expected_columns} (9 fixed + one per sample)")

    def no_header(number: int) -> VcfFormatError:
        return VcfFormatError(
            f"{path}: line {number} is a record but no '#CHROM POS ID REF ALT QUAL FILTER INFO ...' header line came "
            "before it; add the header (see 'bcftools view -h' of a valid file)"
        )

    try:
        for buffer, start, end, has_nul in _lines(handle, path, lambda count: f"after line {count}"):
            number += 1
            if end - start <= 1 and buffer[start:end] in (b"", b"\r"):
                continue
            if buffer[start] == 35:  # '#'
                header_line(buffer[start:end], number)
                continue
            if not seen_header:
                raise no_header(number)
            if has_nul and buffer.find(b"\x00", start, end) >= 0:
                raise _nul_error(path, buffer[start:end], number)
            yield number, _split_record(buffer, start, end)
    finally:
        with contextlib.suppress(OSError):
            handle.close()


def _nul_error(path: Path, line: bytes, number: int | None) -> VcfFormatError:
    """A record line holding a NUL byte: htslib ends the line there, so tools would read different records."""
    fields = line.split(b"\t", 2)
    chrom = fields[0].split(b"\x00")[0].decode(errors="replace")[:40]
    pos = fields[1].split(b"\x00")[0].decode(errors="replace")[:12] if len(fields) > 1 else "?"
    at = f" (line {number})" if number is not None else ""
    return VcfFormatError(
        f"{path}: {chrom}:{pos}{at}: a NUL byte (\\x00) in the record line; htslib ends the line there, so the record would be read "
        "differently by other tools (or the file is corrupt): fix the record, or copy the file again from the source"
    )


_T = TypeVar("_T")


def _readable(records: Iterator[_T], unreadable: Callable[[BaseException], str]) -> Iterator[_T]:
    """The records htslib yields; a read error is a :class:`VcfFormatError` (``unreadable(error)``), never their end."""
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except (OSError, ValueError) as error:
            raise VcfFormatError(unreadable(error)) from error
        yield record


def _bcf_records(source: VcfSource) -> Iterator[tuple[int | None, list[bytes | memoryview]]]:
    """Streams a BCF's records, formatted as VCF text by htslib (C)."""
    with _quiet_htslib():
        handle = pysam.VariantFile(str(source.path))
        try:
            for record in _readable(handle, lambda error: f"{source.path}: unreadable BCF record ({error}); the file is "
                                    "truncated or corrupt, copy it again or rewrite it with 'bcftools view -Ob'"):
                line = _bcf_line(source, record)
                yield None, _split_record(line, 0, len(line) - 1)
        finally:
            handle.close()


def _bcf_line(source: VcfSource, record: pysam.VariantRecord) -> bytes:
    """A BCF record as VCF text (htslib formats it); a non-UTF-8 value is an error."""
    try:
        return str(record).encode()
    except UnicodeDecodeError as error:
        raise VcfFormatError(
            f"{source.path}: record at {record.chrom}:{record.pos}: a value is not valid UTF-8 ({error.reason}); VCF 4.3 text is UTF-8: "
            "fix the value at the source and re-export the file"
        ) from None


def _region_records(source: VcfSource, region: Region) -> Iterator[tuple[int | None, list[bytes | memoryview]]]:
    """Records with ``region.start <= POS < region.end``, through the index."""
    if not source.has_index:
        raise InputError(
            f"{source.path}: no index (.tbi/.csi), so region {region} cannot be read; create one with "
            f"'tabix -p vcf {source.path}' or 'bcftools index {source.path}', or read the whole file"
        )
    start0, end0 = region.start - 1, min(region.end - 1, _MAX_POS)  # a window can end at 2^31 (after POS 2^31-1)
    with _quiet_htslib():
        handle = _open_indexed(source)
        try:
            indexed = handle.index.keys() if isinstance(handle, pysam.VariantFile) else _tabix_contigs(source, handle)
            if region.contig not in set(indexed):
                return  # contig without records in the index
            name = _contig_to_tabix(handle, region.contig)
            records = _readable(handle.fetch(name, start0, end0), lambda error: f"{source.path}: region {region}: unreadable record "
                                f"({error}); the file is corrupt, copy it again")
            if source.is_bcf:
                for record in records:
                    if start0 <= record.start < end0:
                        line = _bcf_line(source, record)
                        yield None, _split_record(line, 0, len(line) - 1)
                return
            first = next(records, None)
            if first is None:
                return
            after_first = handle.tell()  # the virtual offset after the record tabix found: htslib reads one line per next
        finally:
            handle.close()
    yield from _text_region(source, region, name.encode("latin-1"), first.encode("latin-1"), after_first)


def _text_region(source: VcfSource, region: Region, contig: bytes, first: bytes, offset: int) -> Iterator[tuple[int | None, list[bytes | memoryview]]]:
    """A text VCF's records of ``region``: the first one the index found, then the file read on from ``offset``.

    Records are sorted (the index needs it), so reading stops at the first record past
    the region or on another contig. Reading the BGZF stream in large chunks, as the
    whole-file path does, costs half of fetching each line through tabix (which makes
    each a str and back).
    """
    with contextlib.closing(BgzfText(source.path, offset)) as stream:
        yield from _region_lines(source, region, contig, itertools.chain(
            [(first, 0, len(first), b"\x00" in first)], _lines(stream, source.path, lambda count: f"in region {region}")))


def _region_lines(source: VcfSource, region: Region, contig: bytes,
                  lines: Iterator[tuple[bytes, int, int, bool]]) -> Iterator[tuple[int | None, list[bytes | memoryview]]]:
    """The records of ``region`` among sorted ``lines`` (see :func:`_lines`), up to the first past it."""
    for buffer, start, end, has_nul in lines:
        if (end - start <= 1 and buffer[start:end] in (b"", b"\r")) or buffer[start] == 35:  # a '#' line among records: a comment, as tabix reads it
            continue
        if has_nul and buffer.find(b"\x00", start, end) >= 0:
            raise _nul_error(source.path, buffer[start:end], None)
        fields = _split_record(buffer, start, end)
        if bytes(fields[0]) != contig:
            return
        raw = fields[1] if len(fields) > 1 else b""
        if not (raw.isdigit() and len(raw) <= 10):  # type: ignore[union-attr]
            yield None, fields  # an invalid POS is reported by read_blocks, in the window tabix put it in
            continue
        position = int(raw)  # type: ignore[arg-type]
        if position >= region.end:
            return
        if position >= region.start:
            yield None, fields


# --- grouping records into blocks ---------------------------------------------------------


def _where(source: str, contig: str, position: int, line_number: int | None) -> str:
    line = f" (line {line_number})" if line_number is not None else ""
    return f"{source}: {contig}:{position}{line}"


def read_blocks(path: str | Path, region: Region | None = None, *, max_records: int = 2000) -> Iterator[RecordBlock]:
    """Reads a VCF/BCF file as blocks of at most ``max_records`` records of one contig.

    Module-level and picklable so a Dask task can call it with a path and a region.
    Memory is bounded by ``max_records x samples``, never by the file size.

    Args:
        path: a .vcf, .vcf.gz (BGZF) or .bcf file.
        region: records with ``region.start <= POS < region.end`` (needs an index), or
            None to stream the whole file.
        max_records: records per block.

    Raises:
        VcfFormatError: a record is malformed, on an undeclared contig, or out of order.
    """
    if max_records < 1:
        raise ValueError(f"max_records must be >= 1, got {max_records}")
    source = open_vcf(path)
    if region is not None:
        records = _region_records(source, region)
    elif source.is_bcf:
        records = _bcf_records(source)
    else:
        records = _text_records(source)
    name = str(source.path)
    num_samples = len(source.samples)
    min_columns = 10 if num_samples else 8
    finished: set[str] = set()
    contig: str | None = None
    last_position = 0
    batch: list[tuple[int | None, int, list[bytes | memoryview]]] = []
    for line_number, fields in records:
        if len(fields) < min_columns:
            where = f"{name}: line {line_number}" if line_number is not None else f"{name}: record {bytes(fields[0])[:20]!r}:{bytes(fields[1])[:12]!r}" if len(fields) > 1 else name
            raise VcfFormatError(
                f"{where}: {len(fields)} tab-separated columns, expected {9 + num_samples if num_samples else '8 or more'}"
                f"{f' (9 fixed + {num_samples} samples)' if num_samples else ''}; the file is truncated or not tab-separated"
            )
        raw_contig = bytes(fields[0])
        try:
            record_contig = raw_contig.decode()
        except UnicodeDecodeError:
            at = f"line {line_number}" if line_number is not None else f"a record after {contig}:{last_position}" if contig else "the first record"
            raise VcfFormatError(f"{name}: {at}: CHROM {raw_contig[:20]!r} is not valid UTF-8; VCF 4.3 text is UTF-8: fix the contig name") from None
        raw = fields[1]
        # the common case inline (no call per record); parse_position explains anything else
        if not (raw.isdigit() and len(raw) <= 10 and 1 <= (position := int(raw)) <= _MAX_POS):  # type: ignore[union-attr]
            position = parse_position(bytes(raw), f"{name}: {record_contig}{f' (line {line_number})' if line_number is not None else ''}")
        if record_contig != contig:
            if batch:
                yield _make_block(name, contig, batch, num_samples, version=source.version, imputation_key=source.imputation_key)  # type: ignore[arg-type]
                batch = []
            if record_contig in finished:
                raise VcfFormatError(
                    f"{_where(name, record_contig, position, line_number)}: contig {record_contig} appears again after {contig}; "
                    "records must be sorted by contig then position: sort with 'bcftools sort'"
                )
            if source.declared_contigs and record_contig not in source.contigs:
                raise VcfFormatError(
                    f"{_where(name, record_contig, position, line_number)}: contig {record_contig!r} is not declared in the header "
                    f"(##contig lines declare {', '.join(list(source.contigs)[:5])}{', ...' if len(source.contigs) > 5 else ''}); "
                    "add it with 'bcftools reheader' or fix the CHROM column"
                )
            if contig is not None:
                finished.add(contig)
            contig = record_contig
            last_position = 0
        if position < last_position:
            raise VcfFormatError(
                f"{_where(name, contig, position, line_number)}: position {position} comes after {last_position}; records must be "
                "sorted by position within a contig: sort with 'bcftools sort'"
            )
        last_position = position
        batch.append((line_number, position, fields))
        if len(batch) >= max_records:
            yield _make_block(name, contig, batch, num_samples, version=source.version, imputation_key=source.imputation_key)
            batch = []
    if batch:
        yield _make_block(name, contig, batch, num_samples, version=source.version, imputation_key=source.imputation_key)  # type: ignore[arg-type]


def _make_block(name: str, contig: str, batch: list[tuple[int | None, int, list[bytes]]], num_samples: int, *, version: tuple[int, int] = (4, 2),
                imputation_key: str | None = None) -> RecordBlock:
    """Turns a batch of split records into a RecordBlock (fixed columns + genotypes)."""
    line_numbers = [b[0] for b in batch]
    positions = [b[1] for b in batch]
    record_id: list[str | None] = []
    ref: list[str] = []
    alts: list[tuple[str, ...]] = []
    locate = _Locator(name, contig, positions, line_numbers)
    columns = [fields[2:5] for _, _, fields in batch]  # ID, REF, ALT
    if _CONTROL.search(contig.encode()) or _CONTROL.search(b"\t".join(itertools.chain.from_iterable(columns))):
        i = next((i for i, c in enumerate(columns) if _CONTROL.search(b"\t".join(c))), 0)
        raise VcfFormatError(
            f"{locate(i)}: a control character (such as NUL) in the CHROM, ID, REF or ALT column; htslib stops reading the value "
            "there, so the record would be read differently by other tools: fix the record"
        )
    try:
        for record_id_raw, ref_raw, alt_raw in columns:
            record_id.append(None if record_id_raw == b"." else record_id_raw.decode())
            ref.append(ref_raw.decode())
            alts.append(() if alt_raw == b"." else tuple(alt_raw.decode().split(",")))
    except UnicodeDecodeError:
        i = len(alts)
        raise VcfFormatError(f"{locate(i)}: the ID, REF or ALT column is not valid UTF-8; VCF 4.3 text is UTF-8: fix the record") from None
    n = len(batch)
    without_gt: list[int] = []
    if num_samples:
        formats = [fields[8] for _, _, fields in batch]
        samples = [fields[9] for _, _, fields in batch]
        num_alts = [len(a) for a in alts]
        allele_index, phased = decode_genotypes(formats, samples, num_samples, num_alts, locate, version=version, without_gt=without_gt)
        ds = decode_ds(formats, samples, num_samples, num_alts, locate, ploidy=lambda: _ds_bound(allele_index, without_gt))
        ds, from_gp = _with_gp_dosage(ds, formats, samples, num_samples, num_alts, locate)
    else:
        allele_index = np.zeros((n, 0, 2), dtype=np.int8)
        phased = np.zeros((n, 0), dtype=bool)
        ds, from_gp = None, 0
    info_score = None if imputation_key is None else decode_info_score([fields[7] for _, _, fields in batch], imputation_key, [len(a) for a in alts], locate)
    return RecordBlock(
        source=name,
        contig=contig,
        position=np.asarray(positions, dtype=np.int64),
        line_number=None if line_numbers[0] is None else np.asarray(line_numbers, dtype=np.int64),
        record_id=record_id,
        ref=ref,
        alts=alts,
        allele_index=allele_index,
        phased=phased,
        ds=ds,
        records_without_gt=len(without_gt),
        info_score=info_score,
        records_ds_from_gp=from_gp,
    )


def _ds_bound(allele_index: np.ndarray, without_gt: list[int]) -> np.ndarray:
    """The largest valid DS per record (its ploidy; 2 for a record without GT)."""
    slots = np.zeros(allele_index.shape[:2], dtype=np.int8)
    for slot in range(allele_index.shape[2]):  # a pass per slot: numpy reduces a last axis of 2 slowly
        slots += allele_index[:, :, slot] != ABSENT_ALLELE
    ploidy = slots.max(axis=1, initial=1).astype(np.int64)
    if without_gt:
        ploidy[without_gt] = np.maximum(ploidy[without_gt], 2)
    return ploidy


@dataclass(frozen=True)
class _Locator:
    """Names record ``i`` of a block in error messages."""

    source: str
    contig: str
    positions: Sequence[int]
    line_numbers: Sequence[int | None]

    def __call__(self, i: int) -> str:
        return _where(self.source, self.contig, self.positions[i], self.line_numbers[i])


def _no_locator(i: int) -> str:
    return f"record {i + 1}"


# --- genotype decoding ------------------------------------------------------------------


def decode_genotypes(
    formats: Sequence[bytes],
    samples: Sequence[bytes | memoryview],
    num_samples: int,
    num_alts: Sequence[int],
    where: object = _no_locator,
    *,
    version: tuple[int, int] = (4, 4),
    without_gt: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes the GT of a block of records from their FORMAT and sample columns.

    Args:
        formats: each record's FORMAT column.
        samples: each record's sample columns, still tab-joined (the text after FORMAT).
        num_samples: samples in the header.
        num_alts: each record's number of ALT alleles.
        where: callable naming record ``i`` in error messages.
        version: the file's VCF version; a leading phasing mark ('/1', '|0|1') is
            valid from VCF 4.4 on only.
        without_gt: when given, the indexes of records whose FORMAT has no GT are
            appended to it. Their calls are read as missing ('.'), as bcftools does.

    Returns:
        ``allele_index`` int8 (records, samples, max_ploidy) and ``phased`` bool
        (records, samples).

    Raises:
        VcfFormatError: wrong number of sample columns, unparsable GT, or an allele
            index beyond the record's ALT alleles.
    """
    locate = where if callable(where) else _no_locator
    n = len(samples)
    alleles = np.empty((n, num_samples, 2), dtype=np.int8)
    phased = np.empty((n, num_samples), dtype=bool)
    highest = np.zeros(n, dtype=np.int64)
    is_fast = np.zeros(n, dtype=bool)
    if num_samples:
        width = 4 * num_samples - 1
        plain = [i for i in range(n) if formats[i] == b"GT" and len(samples[i]) == width]
        if plain:
            _decode_fast(samples, plain, num_samples, alleles, phased, highest, is_fast, with_fields=False)
        if len(plain) < n:
            samples = [sample if is_fast[i] else bytes(sample) for i, sample in enumerate(samples)]
            others = [i for i in range(n) if not is_fast[i] and formats[i][:3] in (b"GT:", b"GT") and samples[i].count(b"\t") == num_samples - 1]
            if others:
                _decode_fast(samples, others, num_samples, alleles, phased, highest, is_fast, with_fields=True)
    slow: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in np.flatnonzero(~is_fast).tolist():
        slow[i] = _parse_record_gt(formats[i], bytes(samples[i]), num_samples, locate, i, leading_phase=version >= (4, 4))
        if without_gt is not None and b"GT" not in formats[i].split(b":"):
            without_gt.append(i)
        highest[i] = slow[i][0].max(initial=-1)
    ploidy = max([2 if is_fast.any() else 1] + [calls.shape[1] for calls, _ in slow.values()])
    if ploidy == 2:
        allele_index = alleles
    else:
        allele_index = np.full((n, num_samples, ploidy), ABSENT_ALLELE, dtype=np.int8)
        if is_fast.any():
            allele_index[is_fast, :, :2] = alleles[is_fast]
    for i, (calls, call_phased) in slow.items():
        allele_index[i, :, calls.shape[1] :] = ABSENT_ALLELE
        allele_index[i, :, : calls.shape[1]] = calls
        phased[i] = call_phased
    too_high = np.flatnonzero(highest > np.asarray(num_alts, dtype=np.int64))
    if too_high.size:
        i = int(too_high[0])
        raise VcfFormatError(
            f"{locate(i)}: a genotype uses allele index {highest[i]} but the record has {num_alts[i]} ALT allele(s); "
            "fix the GT or ALT column of the record (or re-export the file from the source)"
        )
    return allele_index, phased


def _cell_starts(tabs: np.ndarray) -> np.ndarray:
    """Where each tab-ended cell of joined sample text starts, from the tabs that end them."""
    starts = np.empty(tabs.size, dtype=np.int64)
    if tabs.size:
        starts[0] = 0
        starts[1:] = tabs[:-1] + 1
    return starts


def _gather_bytes(text: bytes, starts: np.ndarray, width: int) -> np.ndarray:
    """(starts, width) uint8: the ``width`` (4 or 8) bytes at each start, one gather each.

    A stride-1 view reads the bytes at every offset as one unaligned word, so a cell
    costs one index instead of ``width``. ``text`` must hold ``width`` bytes after the last start.
    """
    words = np.ndarray((len(text) - width + 1,), dtype=f"<u{width}", buffer=text, strides=(1,))
    return words[starts].view(np.uint8).reshape(starts.size, width)


def _decode_cells(cells: np.ndarray, table: np.ndarray = _PAIRS_TAB) -> tuple[np.ndarray, np.ndarray]:
    """Alleles of 3-byte diploid calls, each with the byte after it, and whether every cell of a row is one.

    Args:
        cells: uint8 (rows, samples, 4): allele, separator, allele, terminator.
        table: :data:`_PAIRS_TAB` (the terminator must be a tab) or :data:`_PAIRS_FIELD` (a tab or ':').

    Returns:
        ``alleles`` int8 (rows, samples, 2) (-1 missing; meaningless in a row that is not
        valid) and ``valid`` bool (rows,).
    """
    codes = np.take(table, cells.view(np.uint16), mode="clip")  # one code per byte pair
    words = codes.view(np.uint16).reshape(cells.shape[:2])
    words += _CELL_ADD
    valid = ((words & _CELL_MASK) == 0).all(axis=1)
    codes -= np.int8(1)
    return codes, valid


def _decode_fast(
    samples: Sequence[bytes | memoryview],
    rows: list[int],
    num_samples: int,
    alleles: np.ndarray,
    phased: np.ndarray,
    highest: np.ndarray,
    is_fast: np.ndarray,
    *,
    with_fields: bool,
) -> None:
    """Decodes one-digit diploid calls written in 3 bytes, for ``rows``, into the outputs.

    Without other FORMAT fields the joined sample text is a (rows, samples, 4) array
    as is; with them, each sample's start is found from the tabs. Each cell's two byte
    pairs become codes by :func:`_pair_table` and are checked and turned into alleles
    by two additions and one mask. Rows are handled in batches of about
    ``_BATCH_BYTES`` so temporaries stay in cache. Rows with any other call shape keep
    ``is_fast`` False and go to the general parser.
    """
    per_record = 4 * num_samples if not with_fields else max(len(samples[rows[0]]), 4 * num_samples)
    step = max(1, _BATCH_BYTES // per_record)
    for first in range(0, len(rows), step):
        batch = rows[first : first + step]
        m = len(batch)
        if with_fields:
            text = b"\t".join([samples[i] for i in batch]) + b"\t\x80\x80\x80"
            data = np.frombuffer(text, dtype=np.uint8)
            starts = _cell_starts(np.flatnonzero(data == _TAB))  # exactly m * num_samples cells (counts checked)
            cells = _gather_bytes(text, starts, 4).reshape(m, num_samples, 4)
            table = _PAIRS_FIELD
        else:
            text = b"\t".join([samples[i] for i in batch] + [b""])
            cells = np.frombuffer(text, dtype=np.uint8).reshape(m, num_samples, 4)
            table = _PAIRS_TAB
        calls, ok = _decode_cells(cells, table)
        contiguous = batch[-1] - batch[0] == m - 1
        target = slice(batch[0], batch[-1] + 1) if contiguous else np.asarray(batch)
        alleles[target] = calls
        # A valid cell's separator is '/' or '|': text with only one of them needs no pass over the cells.
        if b"|" not in text:
            phased[target] = False
        elif b"/" not in text:
            phased[target] = True
        else:
            phased[target] = cells[:, :, 1] == _PIPE
        highest[target] = alleles[target].reshape(m, -1).max(axis=1)
        is_fast[target] = ok


_GT_CACHE: dict[bytes, tuple[tuple[int, ...], bool] | None] = {}


def parse_gt(text: bytes, *, leading_phase: bool = True) -> tuple[tuple[int, ...], bool] | None:
    """Parses one GT value ('0/1', '1|0|2', '.', '10/3', '|0|1'); None when invalid.

    Returns the allele indexes (-1 for '.') and whether the call is phased (two or more
    alleles, all separated by '|'). A leading phasing mark ('|0|1', '/1') is VCF 4.4
    syntax: with ``leading_phase=False`` (files before 4.4) it is invalid, as in htslib.
    """
    if not leading_phase and text[:1] in (b"/", b"|"):
        return None
    cached = _GT_CACHE.get(text)
    if cached is not None or text in _GT_CACHE:
        return cached
    result: tuple[tuple[int, ...], bool] | None = None
    if _GT_SYNTAX.fullmatch(text):
        body = text[1:] if text[:1] in (b"/", b"|") else text
        parts = _GT_SPLIT.split(body)
        alleles = tuple(MISSING_ALLELE if part == b"." else int(part) for part in parts)
        result = (alleles, len(parts) > 1 and b"/" not in body)
    if len(_GT_CACHE) < 100_000:
        _GT_CACHE[text] = result
    return result


def _parse_record_gt(fmt: bytes, sample_text: bytes, num_samples: int, locate: object, i: int, *, leading_phase: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The reference parser for one record: any ploidy, any allele index, GT anywhere.

    A record whose FORMAT has no GT (PL only, say) has missing calls, as bcftools and
    plink2 read it.
    """
    where = locate(i)  # type: ignore[operator]
    keys = fmt.split(b":")
    fields = sample_text.split(b"\t")
    if len(fields) != num_samples:
        raise VcfFormatError(
            f"{where}: {len(fields)} sample columns, expected {num_samples} (the samples of the '#CHROM' line); "
            "the record is truncated or has extra columns"
        )
    if b"GT" not in keys:
        return np.full((num_samples, 1), MISSING_ALLELE, dtype=np.int8), np.zeros(num_samples, dtype=bool)
    gt_key = keys.index(b"GT")
    calls: list[tuple[int, ...]] = []
    phased = np.zeros(num_samples, dtype=bool)
    for j, field in enumerate(fields):
        parts = field.split(b":", gt_key + 1)
        text = parts[gt_key] if gt_key < len(parts) else b"."
        parsed = parse_gt(text, leading_phase=leading_phase)
        if parsed is None:
            raise VcfFormatError(
                f"{where}: sample column {j + 1}: GT {text[:20].decode(errors='replace')!r} is not a genotype; expected allele "
                "indexes or '.' separated by '/' or '|' (for example 0/1, 1|0, ./.)"
                f"{'' if leading_phase else ', with no leading phasing mark before VCF 4.4'}"
            )
        calls.append(parsed[0])
        phased[j] = parsed[1]
    ploidy = max(len(c) for c in calls)
    if any(value > 127 for call in calls for value in call):
        raise VcfFormatError(f"{where}: allele index above 127; split multi-allelic records with 'bcftools norm -m-' first")
    alleles = np.full((num_samples, ploidy), ABSENT_ALLELE, dtype=np.int8)
    for j, call in enumerate(calls):
        alleles[j, : len(call)] = call
    return alleles, phased


def decode_ds(
    formats: Sequence[bytes],
    samples: Sequence[bytes | memoryview],
    num_samples: int,
    num_alts: Sequence[int],
    where: object = _no_locator,
    *,
    ploidy: np.ndarray | Callable[[], np.ndarray] | None = None,
) -> np.ndarray | None:
    """FORMAT/DS of a block as float32 (records, samples, max_alts), NaN missing; None without DS.

    The width is the block's largest ALT count (records without DS are all NaN), so
    every record's alleles have a column. Values are read as strictly as htslib does
    (no '1_0', no blanks) and each must lie in ``[0, ploidy]`` (the expected ALT
    allele count of the call; ``ploidy`` per record, or a function computing it only
    when the block has DS; 2 when not given).

    Raises:
        VcfFormatError: a DS value that is not a number or out of range.
    """
    locate = where if callable(where) else _no_locator
    with_ds = [i for i, fmt in enumerate(formats) if b"DS" in fmt.split(b":")]
    if not with_ds:
        return None
    with np.errstate(over="ignore"):  # a value beyond float32 (1e40) becomes inf, refused below as out of range
        ds = _decode_ds_values(formats, samples, num_samples, num_alts, locate, with_ds)
    bound = np.full(len(samples), 2, dtype=np.int64) if ploidy is None else np.asarray(ploidy() if callable(ploidy) else ploidy)
    with np.errstate(invalid="ignore"):
        bad = ~(np.isnan(ds) | ((ds >= 0) & (ds <= bound[:, None, None])))
    if bad.any():
        i, j, k = (int(v) for v in np.argwhere(bad)[0])
        raise VcfFormatError(
            f"{locate(i)}: sample column {j + 1}: DS {float(ds[i, j, k]):g} (ALT {k + 1}) is out of range; expected a dosage from 0 to "
            f"{int(bound[i])} (the call's ploidy) or '.'"
        )
    return ds


def _with_gp_dosage(
    ds: np.ndarray | None, formats: Sequence[bytes], samples: Sequence[bytes | memoryview], num_samples: int, num_alts: Sequence[int],
    locate: Callable[[int], str],
) -> tuple[np.ndarray | None, int]:
    """``ds`` with the GP-derived dosages of records that have GP and no DS; and how many records those are."""
    with_gp = [i for i, fmt in enumerate(formats) if b"GP" in (keys := fmt.split(b":")) and b"DS" not in keys]
    if not with_gp:
        return ds, 0
    width = max([1, *num_alts])
    merged = np.full((len(formats), num_samples, width), np.nan, np.float32) if ds is None else ds
    for i in with_gp:
        merged[i, :, : max(1, num_alts[i])] = decode_gp_dosage(formats[i], samples[i], num_samples, num_alts[i], lambda: locate(i))
    return merged, len(with_gp)


def genotype_allele_counts(num_alleles: int, ploidy: int) -> np.ndarray:
    """(genotypes, alleles) copies of each allele in each genotype, in VCF's GL/GP order.

    Diploid genotype j/k (j <= k) is number k(k+1)/2 + j; a haploid one is its allele.
    """
    if ploidy == 1:
        return np.eye(num_alleles, dtype=np.float64)
    counts = np.zeros((num_alleles * (num_alleles + 1) // 2, num_alleles), np.float64)
    for k in range(num_alleles):
        for j in range(k + 1):
            counts[k * (k + 1) // 2 + j, j] += 1
            counts[k * (k + 1) // 2 + j, k] += 1
    return counts


def decode_gp_dosage(
    fmt: bytes, sample_text: bytes | memoryview, num_samples: int, num_alts: int, where: Callable[[], str]
) -> np.ndarray:
    """Expected ALT allele counts (samples, alts) of one record from its FORMAT/GP, NaN where GP is missing.

    As ``plink2 --vcf dosage=GP`` and ``bcftools +dosage`` compute them: the sum over
    genotypes of probability times copies of the ALT. The number of values tells
    haploid (one per allele) from diploid calls; probabilities must lie in [0, 1] and sum
    to 1 within :data:`GP_SUM_TOLERANCE`.

    Raises:
        VcfFormatError: a value that is not a number, a count of values that fits no
            ploidy, or probabilities out of range.
    """
    key = fmt.split(b":").index(b"GP")
    columns = bytes(sample_text).split(b"\t")
    num_alleles = num_alts + 1
    out = np.full((num_samples, max(1, num_alts)), np.nan, np.float32)
    by_size: dict[int, list[int]] = {}
    values: list[list[bytes]] = []
    for j, column in enumerate(columns[:num_samples]):
        parts = column.split(b":")
        text = parts[key] if key < len(parts) else b"."
        values.append(text.split(b","))
        if text != b".":
            by_size.setdefault(len(values[-1]), []).append(j)
    for size, rows in by_size.items():
        ploidy = 1 if size == num_alleles else 2 if size == num_alleles * (num_alleles + 1) // 2 else 0
        if ploidy == 0 or num_alts == 0:
            raise VcfFormatError(
                f"{where()}: sample column {rows[0] + 1}: GP has {size} values; with {num_alleles} alleles expected {num_alleles} "
                f"(haploid) or {num_alleles * (num_alleles + 1) // 2} (diploid)"
            )
        try:
            probability = np.array([values[j] for j in rows], dtype=np.bytes_).astype(np.float64)
        except ValueError:
            j = next(j for j in rows if not all(_DS_NUMBER.fullmatch(v) for v in values[j]))
            raise VcfFormatError(f"{where()}: sample column {j + 1}: GP {b','.join(values[j])[:40].decode(errors='replace')!r} is not a list of numbers") from None
        total = probability.sum(axis=1)
        bad = ~(np.all((probability >= 0) & (probability <= 1), axis=1) & (np.abs(total - 1) <= GP_SUM_TOLERANCE))
        if bad.any():
            j = rows[int(np.flatnonzero(bad)[0])]
            raise VcfFormatError(
                f"{where()}: sample column {j + 1}: GP {b','.join(values[j])[:40].decode(errors='replace')} are not genotype probabilities "
                f"(each in [0, 1], summing to 1 within {GP_SUM_TOLERANCE}); phred-scaled GP is not read: convert with bcftools +tag2tag"
            )
        out[rows] = (probability @ genotype_allele_counts(num_alleles, ploidy))[:, 1:]
    return out


def decode_info_score(info: Sequence[bytes | memoryview], key: str, num_alts: Sequence[int], where: Callable[[int], str]) -> np.ndarray:
    """The INFO ``key`` values as float32 (records, max_alts): one value for every ALT, or one per ALT; NaN where absent.

    Raises:
        VcfFormatError: a value that is not a number, or a count that is neither 1 nor the record's ALT count.
    """
    pattern = re.compile(rb"(?:^|;)" + re.escape(key.encode()) + rb"=([^;]*)")
    out = np.full((len(info), max([1, *num_alts])), np.nan, np.float32)
    for i, text in enumerate(info):
        match = pattern.search(bytes(text))
        if match is None or match.group(1) == b".":
            continue
        parts = match.group(1).split(b",")
        if len(parts) not in (1, num_alts[i]):
            raise VcfFormatError(f"{where(i)}: INFO/{key} has {len(parts)} values; expected 1 or one per ALT allele ({num_alts[i]})")
        if not all(_DS_NUMBER.fullmatch(part) for part in parts):
            raise VcfFormatError(f"{where(i)}: INFO/{key}={match.group(1)[:40].decode(errors='replace')} is not a number")
        numbers = np.array([float(part) for part in parts], np.float32)
        out[i, : max(1, num_alts[i])] = numbers if numbers.size > 1 else numbers[0]
    return out


_DS_NUMBER = re.compile(rb"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|[Ii][Nn][Ff](?:[Ii][Nn][Ii][Tt][Yy])?|[Nn][Aa][Nn])")


def _decode_ds_values(
    formats: Sequence[bytes], samples: Sequence[bytes | memoryview], num_samples: int, num_alts: Sequence[int], locate: object, with_ds: list[int]
) -> np.ndarray:
    """The DS values, parsed (fast paths, then the general parser); ranges checked by the caller."""
    locate = locate if callable(locate) else _no_locator
    width = max([1, *num_alts])
    ds = np.full((len(samples), num_samples, width), np.nan, dtype=np.float32)
    done: set[int] = set()
    by_format: dict[bytes, list[int]] = {}
    for i in with_ds:
        if num_alts[i] == 1:
            by_format.setdefault(formats[i], []).append(i)
    for fmt, rows in by_format.items():
        keys = fmt.split(b":")
        step = max(1, _BATCH_BYTES // max(1, len(samples[rows[0]])))
        for first in range(0, len(rows), step):
            batch = rows[first : first + step]
            values = _ds_batch(samples, batch, num_samples, keys.index(b"DS"), len(keys))
            if values is not None:
                ds[batch, :, 0] = values
                done.update(batch)
    for i in with_ds:
        if i in done:
            continue
        key = formats[i].split(b":").index(b"DS")
        sample_text = bytes(samples[i])
        values = None if b"_" in sample_text or b" " in sample_text else _ds_fast(sample_text, key, num_samples)
        if values is not None and num_alts[i] <= 1:
            ds[i, :, 0] = values
            continue
        for j, field in enumerate(sample_text.split(b"\t")):
            parts = field.split(b":")
            if key >= len(parts) or parts[key] == b".":
                continue
            numbers = parts[key].split(b",")
            if len(numbers) > width:
                raise VcfFormatError(f"{locate(i)}: sample column {j + 1}: DS has {len(numbers)} values, expected one per ALT allele ({num_alts[i]})")
            for k, number in enumerate(numbers):
                if number == b".":
                    continue
                if not _DS_NUMBER.fullmatch(number):
                    raise VcfFormatError(f"{locate(i)}: sample column {j + 1}: DS {number[:20].decode(errors='replace')!r} is not a number") from None
                ds[i, j, k] = float(number)
    return ds


def _ds_batch(samples: Sequence[bytes | memoryview], rows: list[int], num_samples: int, key: int, fields: int) -> np.ndarray | None:
    """DS of biallelic records that share one FORMAT (DS its field ``key`` of ``fields``), read without a loop.

    Every cell must hold all the FORMAT's fields and every DS must be a plain decimal
    or '.' (:func:`_plain_decimals`); the fields are found from the text's tabs and
    colons. Returns None, so the general parser runs and reports the exact problem,
    when anything is unusual.
    """
    cells = len(rows) * num_samples
    text = b"\t".join([samples[i] for i in rows] + [b""])
    data = np.frombuffer(text, dtype=np.uint8)
    tabs = np.flatnonzero(data == _TAB)
    if tabs.size != cells:
        return None
    starts = _cell_starts(tabs)
    all_colons = np.flatnonzero(data == _COLON_BYTE)
    if all_colons.size != cells * (fields - 1):
        return None
    colons = all_colons.reshape(cells, fields - 1)  # each cell's colons, when its first and last lie inside it
    if fields > 1 and ((colons[:, 0] < starts).any() or (colons[:, -1] > tabs).any()):
        return None
    first = starts if key == 0 else colons[:, key - 1] + 1
    lengths = (tabs if key == fields - 1 else colons[:, key]) - first
    if (lengths < 1).any():
        return None
    missing = (lengths == 1) & (data[first] == _DOT_BYTE)
    values = np.full(cells, np.nan)
    parsed = _plain_decimals(text, first[~missing], lengths[~missing])
    if parsed is None:
        return None
    values[~missing] = parsed
    return values.reshape(len(rows), num_samples)


_COLON_BYTE, _DOT_BYTE = ord(":"), ord(".")
_POWERS_OF_TEN = 10.0 ** np.arange(9)
_DECIMAL_BYTES = 8  # the longest plain decimal read by column arithmetic ('0.123456'); longer ones go to the general parser


def _plain_decimals(text: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """The numbers at ``text[starts:starts + lengths]`` when every one is a plain decimal; None otherwise.

    A plain decimal is digits with at most one '.' and at least one digit ('2', '0.153',
    '.5'), 8 bytes at most, as imputation servers write DS. Its digits make an exact
    integer mantissa and its fraction digits a power of ten, so the one float64 division
    rounds as ``strtod`` does: the values equal the general parser's (``float()``), bit for bit.
    """
    count = starts.size
    if count == 0:
        return np.zeros(0)
    width = int(lengths.max())
    if width > _DECIMAL_BYTES or int(lengths.min()) < 1:
        return None
    columns = _gather_bytes(text + bytes(_DECIMAL_BYTES), starts, _DECIMAL_BYTES)
    mantissa = np.zeros(count, np.int32)
    fraction_digits = np.zeros(count, np.int8)
    digits = np.zeros(count, np.int8)
    seen_dot = np.zeros(count, bool)
    bad = np.zeros(count, bool)
    for position in range(width):
        column = columns[:, position]
        inside = position < lengths
        digit = column - np.uint8(ord("0"))
        is_digit = (digit <= 9) & inside
        is_dot = (column == _DOT_BYTE) & inside
        bad |= (inside & ~(is_digit | is_dot)) | (is_dot & seen_dot)
        np.copyto(mantissa, mantissa * 10 + digit, where=is_digit)
        fraction_digits += is_digit & seen_dot
        digits += is_digit
        seen_dot |= is_dot
    if bad.any() or not digits.all():
        return None
    return mantissa / _POWERS_OF_TEN[fraction_digits]


def _ds_fast(sample_text: bytes, key: int, num_samples: int) -> np.ndarray | None:
    """One DS value per sample without a Python loop, or None to use the general parser."""
    pattern = _DS_PATTERNS.get(key)
    if pattern is None:
        pattern = _DS_PATTERNS.setdefault(key, re.compile(rb"(?:^|\t)" + rb"[^:\t]*:" * key + rb"([^:\t]*)"))
    values = pattern.findall(sample_text)
    if len(values) != num_samples or b"," in sample_text and any(b"," in v for v in values):
        return None
    array = np.asarray(values)
    if array.dtype.itemsize < 3:
        array = array.astype("S3")
    array[array == b"."] = b"nan"
    try:
        return array.astype(np.float32)
    except ValueError:
        return None


_DS_PATTERNS: dict[int, re.Pattern[bytes]] = {}
