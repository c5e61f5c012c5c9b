"""The simulated files' BGZF writer: any deflate level reads back the same text."""

from __future__ import annotations

import gzip

import pysam
import pytest

from pipeline.errors import ConfigurationError
from pipeline.sim import writers

TEXT = b"".join(b"chr22\t%d\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\t0|0\n" % position for position in range(1, 20001))


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_open_bgzf__every_level_is_bgzf_that_reads_back_the_text(tmp_path, level):
    path = tmp_path / f"level{level}.gz"
    with writers.open_bgzf(path, level=level) as handle:
        handle.write(TEXT)
    assert gzip.decompress(path.read_bytes()) == TEXT
    with pysam.BGZFile(str(path), "rb") as reread:  # htslib accepts it as BGZF
        assert reread.read() == TEXT


def test_open_bgzf__a_lower_level_writes_more_bytes(tmp_path):
    sizes = {}
    for level in (1, 6):
        with writers.open_bgzf(tmp_path / f"{level}.gz", level=level) as handle:
            handle.write(TEXT)
        sizes[level] = (tmp_path / f"{level}.gz").stat().st_size
    assert sizes[1] > sizes[6]


@pytest.mark.parametrize("level", [-1, 10])
def test_open_bgzf__a_level_outside_0_to_9_is_refused(tmp_path, level):
    with pytest.raises(ConfigurationError, match="0 to 9"):
        writers.open_bgzf(tmp_path / "x.gz", level=level)
