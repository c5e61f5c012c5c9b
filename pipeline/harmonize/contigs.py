"""Canonical contig names, so that every site writes the same key for the same locus.

Styles: ``chr`` ('22' -> 'chr22', 'MT' -> 'chrM'), ``nochr`` ('chr22' -> '22', 'chrM' ->
'MT'), ``keep`` (the file's own name). Only the leading ``chr`` prefix (any case) and the
mitochondrial name differ between the two common conventions (UCSC and Ensembl/1000G).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pipeline.errors import ConfigurationError
from pipeline.harmonize.batch import VariantBatch

CONTIG_STYLES = ("chr", "nochr", "keep")
_MITOCHONDRIAL = ("chrM", "MT", "chrMT", "M")


def _bare(name: str) -> str:
    bare = name[3:] if name[:3].lower() == "chr" and len(name) > 3 else name
    return "MT" if bare.upper() in ("M", "MT") else bare


def contig_aliases(name: str) -> list[str]:
    """``name`` first, then the names it may have under the other convention ('22' <-> 'chr22')."""
    if name in _MITOCHONDRIAL:
        return [name] + [alias for alias in _MITOCHONDRIAL if alias != name]
    if name.startswith("chr"):
        return [name, name[3:]]
    return [name, "chr" + name]


def canonical_contig(name: str, style: str) -> str:
    """The contig name in ``style`` (see the module docstring)."""
    if style == "keep":
        return name
    bare = _bare(name)
    if style == "nochr":
        return bare
    if style == "chr":
        return "chrM" if bare == "MT" else f"chr{bare}"
    raise ConfigurationError(f"unknown contig style {style!r}; use one of {', '.join(CONTIG_STYLES)}")


def canonical_contigs(style: str) -> Callable[[VariantBatch], VariantBatch]:
    """Step renaming the batch's contig to ``style``."""
    if style not in CONTIG_STYLES:
        raise ConfigurationError(f"unknown contig style {style!r}; use one of {', '.join(CONTIG_STYLES)}")

    def step(batch: VariantBatch) -> VariantBatch:
        return dataclasses.replace(batch, contig=canonical_contig(batch.contig, style))

    return step
