"""Every genotype input format behind one seam: open an input, read its record blocks.

The VCF/BCF, PLINK and BGEN readers all give :class:`~pipeline.io.vcf.RecordBlock`s;
the ingest picks the reader here, so everything after it (harmonization, chunking, the
dataset, the report) is one code path whatever the format. Every input is cut into the
same regions (:func:`region_plan`) and each becomes one Dask task: a VCF/BCF through its
index (one without an index is streamed in one pass), a PLINK or BGEN input through its
variant table (its readers seek to any variant), the task carrying its region's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ConfigurationError
from pipeline.io import bgen, plink
from pipeline.io.vcf import RecordBlock, Region, VcfSource, open_vcf, read_blocks

Source = VcfSource | plink.PlinkSource | bgen.BgenSource
RegionRows = plink.PlinkSource | bgen.BgenSource
"""A region's rows of a PLINK or BGEN input, read by one task (a VCF's task reads its region through the index)."""

INPUT_FORMATS = {"vcf": "", "pfile": ".pgen", "bfile": ".bed", "bgen": ""}
"""Input formats, each with the suffix its inputs' files take (``pfile``/``bfile`` inputs are PREFIXes)."""


def open_source(path: str | Path, input_format: str = "vcf", *, sample: str | Path | None = None) -> Source:
    """Opens one input of ``input_format`` (``sample``: a BGEN input's .sample file).

    Raises:
        ConfigurationError: an unknown format, or ``sample`` for an input that is not BGEN.
        InputError: the input cannot be read (the message names the file).
    """
    if input_format not in INPUT_FORMATS:
        raise ConfigurationError(f"unknown input format {input_format!r}; use one of {', '.join(INPUT_FORMATS)}")
    if sample is not None and input_format != "bgen":
        raise ConfigurationError(f"a .sample file ({sample}) goes with BGEN input only; {input_format} inputs carry their sample IDs")
    if input_format == "pfile":
        return plink.open_pfile(path)
    if input_format == "bfile":
        return plink.open_bfile(path)
    if input_format == "bgen":
        return bgen.open_bgen(path, sample)
    return open_vcf(path)


def read_source_blocks(path: str, source: Source | None, *, max_records: int) -> Iterator[RecordBlock]:
    """All the records of the input ``path`` (opened as ``source``; None for a VCF/BCF) in file order."""
    if isinstance(source, plink.PlinkSource):
        return plink.read_blocks(source, max_records=max_records)
    if isinstance(source, bgen.BgenSource):
        return bgen.read_blocks(source, max_records=max_records)
    return read_blocks(path, None, max_records=max_records)


def region_plan(source: Source, chunk_size: int) -> list[tuple[Region, RegionRows | None]] | None:
    """The input's regions of ``chunk_size`` bases, each with the rows its task reads (``None`` for a VCF's: the index
    finds them); ``None`` for a VCF/BCF without an index, which is streamed.

    Raises:
        InputError: a PLINK or BGEN input whose records are not sorted (naming the record).
    """
    if isinstance(source, plink.PlinkSource):
        return list(plink.regions(source, chunk_size))
    if isinstance(source, bgen.BgenSource):
        return list(bgen.regions(source, chunk_size))
    return [(region, None) for region in source.regions(chunk_size)] if source.has_index else None
