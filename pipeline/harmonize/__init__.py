"""Harmonization: raw VCF record blocks -> biallelic, normalized, REF-checked batches.

Steps are pure functions made by factories and composed with :func:`chain`:
:mod:`multiallelic` (split, bcftools ``norm -m-`` semantics), :mod:`contigs` (canonical
names), :mod:`alleles` (minimal representation), :mod:`reference` (REF check, swap,
strand flip against a FASTA); :mod:`samples` matches samples to phenotypes.
"""

from pipeline.harmonize.batch import VariantBatch, call_dosage, concat_blocks, to_block
from pipeline.harmonize.chain import chain, harmonizer

__all__ = ["VariantBatch", "call_dosage", "chain", "concat_blocks", "harmonizer", "to_block"]
