from __future__ import annotations

import pytest

from pipeline.errors import ConfigurationError
from pipeline.harmonize.contigs import canonical_contig, canonical_contigs
from pipeline.harmonize.multiallelic import split_block
from tests.harmonize.records import make_block


@pytest.mark.parametrize(
    ("name", "style", "expected"),
    [
        ("22", "chr", "chr22"),
        ("chr22", "chr", "chr22"),
        ("CHR22", "chr", "chr22"),
        ("chr22", "nochr", "22"),
        ("22", "nochr", "22"),
        ("MT", "chr", "chrM"),
        ("chrM", "nochr", "MT"),
        ("chrX", "nochr", "X"),
        ("chr22", "keep", "chr22"),
        ("22", "keep", "22"),
    ],
)
def test_canonical_contig__styles(name, style, expected):
    assert canonical_contig(name, style) == expected


def test_canonical_contigs__renames_batch():
    batch = canonical_contigs("nochr")(split_block(make_block([(1, "A", "C", ["0/1"])], contig="chr7")))
    assert batch.contig == "7"


def test_canonical_contigs__unknown_style_raises():
    with pytest.raises(ConfigurationError, match="chr, nochr, keep"):
        canonical_contigs("ucsc")
