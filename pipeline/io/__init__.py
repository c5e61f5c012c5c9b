"""Readers for site inputs: VCF/BCF genotypes, the reference FASTA, phenotype tables."""

from pipeline.io.fasta import Reference, open_reference
from pipeline.io.phenotypes import read_phenotypes
from pipeline.io.vcf import RecordBlock, Region, VcfSource, open_vcf, read_blocks

__all__ = ["RecordBlock", "Reference", "Region", "VcfSource", "open_reference", "open_vcf", "read_blocks", "read_phenotypes"]
