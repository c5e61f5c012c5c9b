"""Every genotype input format behind one seam: open an input, read its record blocks.

The VCF/BCF, PLINK and BGEN readers all give :class:`~pipeline.io.vcf.RecordBlock`s;
the ingest picks the reader here, so everything after it (harmonization, chunking, the
dataset, the report) is one code path whatever the format. Only VCF/BCF inputs can be
read by region (through their index); the others are read in one pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import ConfigurationError
from pipeline.io import bgen, plink
from pipeline.io.vcf import RecordBlock, VcfSource, open_vcf, read_blocks

Source = VcfSource | plink.PlinkSource | bgen.BgenSource

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
