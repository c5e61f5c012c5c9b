"""Composes harmonization steps into one pure function (the optax ``chain`` shape).

A step is a pure function built by a factory from its configuration
(``canonical_contigs("chr")``, ``check_reference(ref)``); :func:`harmonizer` assembles the
standard order used by ingest, so a test, a Dask task and the streaming path all run the
same function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.harmonize.alleles import minimal_representation
from pipeline.harmonize.batch import VariantBatch
from pipeline.harmonize.contigs import canonical_contigs
from pipeline.harmonize.imputation import drop_low_imputation_quality
from pipeline.harmonize.multiallelic import split_multiallelic
from pipeline.harmonize.reference import check_reference, flag_strand_ambiguous

if TYPE_CHECKING:
    from pipeline.io.fasta import Reference
    from pipeline.io.vcf import RecordBlock

Step = Callable[[Any], Any]


def chain(*steps: Step) -> Step:
    """Applies ``steps`` left to right: ``chain(f, g)(x) == g(f(x))``."""

    def chained(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return chained


def harmonizer(
    *, contig_style: str = "chr", reference: Reference | None = None, min_info: float | None = None
) -> Callable[[RecordBlock], VariantBatch]:
    """The standard harmonization: split multi-allelics, drop low imputation quality, rename contigs, trim, check REF.

    Args:
        contig_style: ``chr``, ``nochr`` or ``keep`` (see :mod:`pipeline.harmonize.contigs`).
        reference: an opened FASTA; without one REF is not checked and nothing is swapped.
        min_info: drop variants whose imputation quality is below it
            (:mod:`pipeline.harmonize.imputation`); None keeps every variant.
    """
    steps: list[Step] = [split_multiallelic()]
    if min_info is not None:
        steps.append(drop_low_imputation_quality(min_info))
    steps += [canonical_contigs(contig_style), minimal_representation()]
    if reference is not None:
        steps.append(check_reference(reference))
    steps.append(flag_strand_ambiguous())
    return chain(*steps)
