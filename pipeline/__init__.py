"""genofed: cross-silo federated genomics.

Sites harmonize their VCF/BCF data into a shared Arrow contract (``schemas/``) and
compute local statistics; a coordinator only ever learns sums, obtained by secure
aggregation (``pipeline.secagg``).
"""

__version__ = "0.1.0"
