"""The genome assembly a dataset's positions are on: the names genofed knows, and how it reads them.

A GWAS result is only useful to a consortium (and only poolable across sites) when its
positions are on one named assembly. A dataset records it in ``dataset.json``
(``genome_assembly``), given to ``genofed ingest --assembly`` or read from the VCF header;
a site names it in its pre-flight answer (one of a closed set of answers:
:func:`pipeline.federation.rounds.preflight_answer`) and the coordinator writes it into
the GWAS-SSF metadata. Nothing here guesses: a header that names no assembly, or two,
records none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is not imported at run time: the CLI imports this module, and the analyst's client loads no numpy
    import numpy as np

from pipeline.errors import ConfigurationError, InputError

__all__ = ["ASSEMBLIES", "PSEUDOAUTOSOMAL", "X_CONTIGS", "assembly_from_header", "check_assembly", "in_pseudoautosomal",
           "non_par_x"]

ASSEMBLIES = ("GRCh37", "GRCh38")
"""The assemblies a dataset may record (GWAS-SSF metadata names them so)."""

PSEUDOAUTOSOMAL = {
    "GRCh37": ((60_001, 2_699_520), (154_931_044, 155_260_560)),
    "GRCh38": ((10_001, 2_781_479), (155_701_383, 156_030_895)),
}
"""chrX's pseudo-autosomal regions PAR1 and PAR2 (1-based, inclusive; plink2 --split-par b37/b38),
where males carry two copies as on an autosome; elsewhere on chrX they carry one."""

_HEADER_NAMES = {"grch37": "GRCh37", "hg19": "GRCh37", "b37": "GRCh37", "hs37d5": "GRCh37", "grch38": "GRCh38",
                 "hg38": "GRCh38", "hs38dh": "GRCh38"}
"""Names a VCF header's ``##reference`` or ``##contig=<...,assembly=...>`` uses for each assembly (case-insensitive)."""

_HEADER_TOKEN = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(_HEADER_NAMES) + r")(?![0-9])", re.IGNORECASE)
"""A known name standing alone in a value (``GRCh38.p14``, ``/ref/hs37d5.fa.gz``; not ``hg380``)."""


def check_assembly(value: str | None, *, source: str) -> str | None:
    """``value`` as one of :data:`ASSEMBLIES` (``None``: not recorded).

    Raises:
        ConfigurationError: any other value; ``source`` says where it came from.
    """
    if value is None or value in ASSEMBLIES:
        return value
    raise ConfigurationError(f"{source}: genome assembly {value!r} is not one genofed knows; use {' or '.join(ASSEMBLIES)}")


def assembly_from_header(values: Iterable[str], *, source: str) -> str | None:
    """The one assembly a VCF header's ``##reference`` and contig ``assembly=`` values name, or ``None``.

    Conservative: a value names an assembly only through a known name standing alone in
    it (``GRCh38``, ``hg19``, ``hs37d5.fa``...); values naming none are ignored.

    Raises:
        InputError: the values name two assemblies (the header contradicts itself).
    """
    named: dict[str, str] = {}
    for value in values:
        for token in _HEADER_TOKEN.findall(value):
            named.setdefault(_HEADER_NAMES[token.lower()], value)
    if len(named) > 1:
        shown = "; ".join(f"{assembly} ({value!r})" for assembly, value in named.items())
        raise InputError(f"{source}: the header names two genome assemblies: {shown}; fix the header, or give the "
                         "assembly the positions are on with --assembly")
    return next(iter(named), None)


X_CONTIGS = ("chrX", "X")
"""chrX's names in either contig style (a dataset stores one: ``genofed ingest --contig-style``)."""


def non_par_x(contigs: np.ndarray, position: np.ndarray, assembly: str) -> np.ndarray:
    """bool per variant (``contigs`` an object array, ``position`` an int array): on chrX outside the
    pseudo-autosomal regions of ``assembly``, where males are haploid.

    What plink2 calls chrX after ``--split-par``: the PARs count as autosomal (``PAR1``/``PAR2``).
    """
    on_x = (contigs == X_CONTIGS[0]) | (contigs == X_CONTIGS[1])  # numpy arrays: elementwise
    return on_x & ~in_pseudoautosomal(position, assembly)


def in_pseudoautosomal(position: np.ndarray, assembly: str) -> np.ndarray:
    """bool per chrX ``position`` (1-based): inside PAR1 or PAR2 of ``assembly``."""
    (start1, end1), (start2, end2) = PSEUDOAUTOSOMAL[assembly]
    return ((position >= start1) & (position <= end1)) | ((position >= start2) & (position <= end2))
