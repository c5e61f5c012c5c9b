"""Reference FASTA (plain or bgzipped) through pysam.FastaFile.

Harmonization checks and fixes REF alleles against the reference; it asks for many
short spans of one contig at a time, so :meth:`Reference.fetch_alleles` fetches the
block's span once and slices it instead of one htslib call per record.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pysam

from pipeline.errors import FastaError
from pipeline.harmonize.contigs import contig_aliases

_MAX_GAP = 1 << 20  # positions further apart than this are fetched separately


def _is_plain_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(18)
    return head[:2] == b"\x1f\x8b" and not (len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC")


@dataclass(frozen=True)
class ReferenceFiles:
    """A FASTA and the index files htslib reads it with: plain values, so Dask tasks can carry them.

    Each task opens its own :class:`Reference` from them (an htslib handle is not shared
    between threads) without building the index again.
    """

    path: Path
    fai: Path | None = None
    gzi: Path | None = None

    def open(self) -> Reference:
        """The reference through these index files.

        Where they are not (a task on another machine than the one that indexed the FASTA
        into a temporary folder), it is indexed anew as :func:`open_reference` does.
        """
        if any(index is not None and not index.exists() for index in (self.fai, self.gzi)):
            return open_reference(self.path)
        return Reference(self.path, self.fai, self.gzi)


class Reference:
    """An opened reference genome (identity: a FASTA file and its .fai/.gzi index).

    Picklable: a copy reopens the file by path, so Dask tasks can receive one. When the
    index had to be built in a temporary folder, the Reference that built it owns the
    folder and :meth:`close` removes it; copies and references opened from
    :attr:`files` do not.
    """

    def __init__(self, path: Path, fai: Path | None = None, gzi: Path | None = None, *, owned_folder: Path | None = None) -> None:
        self.files = ReferenceFiles(path, fai, gzi)
        # removes the folder on close(), or when this object is collected or the interpreter exits
        self._remove_folder = weakref.finalize(self, shutil.rmtree, owned_folder, True) if owned_folder is not None else None
        self._handle = pysam.FastaFile(str(path), filepath_index=str(fai) if fai else None, filepath_index_compressed=str(gzi) if gzi else None)
        self.contigs: dict[str, int] = dict(zip(self._handle.references, self._handle.lengths, strict=True))

    def __getstate__(self) -> dict[str, Any]:
        return {"files": self.files}

    def __setstate__(self, state: dict[str, Any]) -> None:
        files = state["files"]
        self.__init__(files.path, files.fai, files.gzi)  # type: ignore[misc]

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()
        if self._remove_folder is not None:
            self._remove_folder()

    @property
    def path(self) -> Path:
        return self.files.path

    def __repr__(self) -> str:
        return f"Reference({str(self.path)!r}, contigs={len(self.contigs)})"

    def resolve_contig(self, name: str) -> str:
        """The reference's name for contig ``name`` ('22' finds 'chr22', 'MT' finds 'chrM').

        Raises:
            FastaError: no contig of that name under either convention.
        """
        for alias in contig_aliases(name):
            if alias in self.contigs:
                return alias
        names = list(self.contigs)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise FastaError(
            f"{self.path}: no contig {name!r} (nor {', '.join(repr(a) for a in contig_aliases(name)[1:])}); the reference has "
            f"{shown}; use the reference of the VCF's genome build"
        )

    def fetch(self, contig: str, start0: int, end0: int) -> str:
        """Uppercase sequence of ``[start0, end0)`` (0-based, half-open) of ``contig``.

        Raises:
            FastaError: unknown contig or a span beyond the contig's end.
        """
        name = self.resolve_contig(contig)
        length = self.contigs[name]
        if start0 < 0 or end0 < start0 or end0 > length:
            raise FastaError(
                f"{self.path}: {name}:{start0 + 1}-{end0} is outside the contig (length {length}); the VCF and the reference "
                "are probably from different genome builds"
            )
        try:
            return self._handle.fetch(name, start0, end0).upper()
        except (OSError, ValueError) as error:
            raise FastaError(f"{self.path}: cannot read {name}:{start0 + 1}-{end0} ({error}); the file or its .fai/.gzi index is corrupt, delete the index and retry") from error

    def fetch_alleles(self, contig: str, position: np.ndarray | Sequence[int], length: np.ndarray | Sequence[int] | int = 1) -> list[str]:
        """Reference spans ``[POS, POS + length)`` for a block of records of one contig.

        One fetch per cluster of nearby positions (gaps under 1 Mb), then slicing, so a
        block of thousands of records costs a few htslib calls.

        Args:
            contig: contig name (either naming convention).
            position: 1-based positions.
            length: span lengths (for example ``len(REF)``), one per position or one for all.

        Raises:
            FastaError: unknown contig or a span beyond the contig's end.
        """
        start0 = np.asarray(position, dtype=np.int64) - 1
        lengths = np.broadcast_to(np.asarray(length, dtype=np.int64), start0.shape)
        end0 = start0 + lengths
        result: list[str] = [""] * start0.size
        if start0.size == 0:
            return result
        order = np.argsort(start0, kind="stable")
        sorted_start = start0[order]
        running_end = np.maximum.accumulate(end0[order])
        breaks = np.flatnonzero(sorted_start[1:] - running_end[:-1] > _MAX_GAP) + 1
        for group in np.split(order, breaks):
            span_start = int(start0[group].min())
            span_end = int(end0[group].max())
            sequence = self.fetch(contig, span_start, span_end)
            for i in group.tolist():
                result[i] = sequence[start0[i] - span_start : end0[i] - span_start]
        return result


def open_reference(path: str | Path) -> Reference:
    """Opens a FASTA (plain or bgzipped), creating its .fai/.gzi index if missing.

    The index is written next to the file when the folder is writable, otherwise into
    a temporary folder (the file itself is never modified) that :meth:`Reference.close`
    removes: open it once and hand :attr:`Reference.files` to whatever else reads it. An
    index older than the FASTA is rebuilt, so a rewritten reference never keeps stale
    contig lengths.

    Raises:
        FastaError: the file is missing, plain-gzip compressed or not a FASTA file.
    """
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: no such file; check the path to the reference FASTA (.fa, .fa.gz bgzipped)")
    if _is_plain_gzip(path):
        raise FastaError(f"{path}: compressed with plain gzip, which cannot be indexed; recompress it with 'zcat {path} | bgzip > {path.name}.bgz' and 'samtools faidx'")
    fai = gzi = folder = None
    compressed = _starts_gzip(path)
    indexes = [Path(f"{path}.fai")] + ([Path(f"{path}.gzi")] if compressed else [])
    modified = path.stat().st_mtime
    stale = any(not index.exists() or index.stat().st_mtime < modified for index in indexes)
    rebuild = stale and any(index.exists() for index in indexes)  # an index older than the FASTA
    if stale and not os.access(path.parent, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="genofed-fai-"))
        fai = folder / f"{path.name}.fai"
        gzi = folder / f"{path.name}.gzi" if compressed else None
    try:
        previous = pysam.set_verbosity(0)
        try:
            if fai is None and rebuild:
                pysam.faidx(str(path))  # rewrites the stale .fai/.gzi next to the file
            if fai is not None:
                arguments = [str(path), "--fai-idx", str(fai)] + (["--gzi-idx", str(gzi)] if gzi else [])
                pysam.faidx(*arguments)
            return Reference(path, fai, gzi, owned_folder=folder)
        finally:
            pysam.set_verbosity(previous)
    except (OSError, ValueError, pysam.SamtoolsError) as error:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise FastaError(f"{path}: cannot be opened as a FASTA file ({error}); expected '>name' lines followed by sequence, plain or bgzipped") from error


def _starts_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"
