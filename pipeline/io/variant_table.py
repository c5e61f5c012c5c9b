"""The variant table of a PLINK or BGEN input, read whole, and its cut into record blocks.

These formats keep the variants in a table apart from the genotypes (.pvar/.bim, the
BGEN variant headers). The ingest reads an input as consecutive records of one contig
at a time, as the VCF reader gives them; :func:`contig_blocks` checks the order the VCF
reader checks (each contig's records together, positions not decreasing, POS from 1)
and cuts the table into those blocks. Their readers seek to any variant, so the table
is also cut into the regions of an indexed VCF (:func:`table_regions`): one Dask task
each, reading only its rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.errors import InputError
from pipeline.io.vcf import Region

MAX_POSITION = (1 << 31) - 1  # the largest POS, as in VCF (a 32-bit signed integer)


@dataclass(frozen=True)
class VariantTable:
    """One row per variant in file order.

    ``line_number`` is the row's line in a text table (.pvar/.bim), None for BGEN;
    ``record_id`` is None where the file has '.'; ``alts`` is empty for ALT '.'.
    """

    contig: list[str]
    position: np.ndarray
    record_id: list[str | None]
    ref: list[str]
    alts: list[tuple[str, ...]]
    line_number: np.ndarray | None

    @property
    def num_variants(self) -> int:
        return int(self.position.shape[0])

    def rows(self, first: int, end: int) -> VariantTable:
        """Rows ``first`` to ``end`` (exclusive), line numbers kept."""
        return VariantTable(self.contig[first:end], self.position[first:end], self.record_id[first:end],
                            self.ref[first:end], self.alts[first:end],
                            None if self.line_number is None else self.line_number[first:end])

    def where(self, source: str, i: int) -> str:
        """``file: contig:pos (line n)`` of row ``i``, for messages."""
        line = f" (line {int(self.line_number[i])})" if self.line_number is not None else f" (variant {i + 1})"
        return f"{source}: {self.contig[i]}:{int(self.position[i])}{line}"


def contig_blocks(table: VariantTable, source: str, max_records: int, *, sort_hint: str) -> Iterator[tuple[str, int, int]]:
    """``(contig, first row, end row)`` of each block: consecutive rows of one contig, at most ``max_records``.

    Raises:
        InputError: a position outside 1..2^31-1, a contig whose records are not together
            or positions that decrease; the message names the row and ``sort_hint``.
    """
    position = table.position
    bad = np.flatnonzero((position < 1) | (position > MAX_POSITION))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{table.where(source, i)}: position {int(position[i])} is outside 1..{MAX_POSITION}; remove the variant (POS 0 marks an unplaced one)")
    seen: set[str] = set()
    start = 0
    n = table.num_variants
    while start < n:
        contig = table.contig[start]
        if contig in seen:
            raise InputError(f"{table.where(source, start)}: the records of contig {contig!r} are not together (it also comes earlier); {sort_hint}")
        seen.add(contig)
        end = start + 1
        while end < n and table.contig[end] == contig:
            end += 1
        down = np.flatnonzero(np.diff(position[start:end]) < 0)
        if down.size:
            i = start + int(down[0]) + 1
            raise InputError(f"{table.where(source, i)}: positions decrease (the record before is at {int(position[i - 1])}); {sort_hint}")
        for first in range(start, end, max_records):
            yield contig, first, min(first + max_records, end)
        start = end


def table_regions(table: VariantTable, source: str, chunk_size: int, *, sort_hint: str) -> list[tuple[Region, int, int]]:
    """``(region, first row, end row)`` of each window of ``chunk_size`` bases that holds a record.

    The windows sit on the grid an indexed VCF is cut on (``1 + k * chunk_size``: see
    :meth:`pipeline.io.vcf.VcfSource.regions`), so an input's chunks do not depend on its format.

    Raises:
        InputError: as :func:`contig_blocks` (the table's order is checked first).
    """
    runs = [(contig, first, end) for contig, first, end in contig_blocks(table, source, max(table.num_variants, 1), sort_hint=sort_hint)]
    regions: list[tuple[Region, int, int]] = []
    for contig, first, end in runs:
        window = (table.position[first:end] - 1) // chunk_size
        starts = np.flatnonzero(np.r_[True, np.diff(window) != 0])
        ends = np.r_[starts[1:], end - first]
        for start, stop in zip(starts.tolist(), ends.tolist()):
            k = int(window[start])
            regions.append((Region(contig, 1 + k * chunk_size, 1 + (k + 1) * chunk_size), first + start, first + stop))
    return regions
