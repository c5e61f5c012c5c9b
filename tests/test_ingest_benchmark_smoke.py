"""The ingest benchmark's synthetic site generator (tests/benchmarks is not collected): ingest gives back its calls.

The generator is only run by hand at biobank sizes; this keeps it from rotting at a tiny
size, through both of its write paths (one process, and parts concatenated).
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from pipeline.dataset import open_dataset
from pipeline.ingest import ingest
from tests.benchmarks.synthetic_site import synthetic_calls, write_synthetic_site

SAMPLES, VARIANTS = 50, 200


@pytest.mark.parametrize(("phased", "jobs"), [(False, 1), (True, 2)])
def test_synthetic_site__ingest_reads_back_the_generated_calls(tmp_path, phased: bool, jobs: int) -> None:
    site = write_synthetic_site(tmp_path, SAMPLES, VARIANTS, seed=3, phased=phased, jobs=jobs)
    report = ingest(site.vcf, out=tmp_path / "dataset", fasta=site.fasta, chunk_size="5kb", workers=1)
    # Every REF is the FASTA's base and every record a biallelic SNP: nothing swapped or dropped.
    assert report["records_read"] == report["variants_written"] == report["ref_checked"] == VARIANTS
    assert report["swapped"] == report["strand_flipped"] == 0
    assert report["chunks"] > 2

    expected = {}
    for ids, dosage in synthetic_calls(SAMPLES, VARIANTS, seed=3):
        expected.update(zip(ids, dosage))
    dataset = open_dataset(tmp_path / "dataset")
    got = {}
    for block in dataset.iter_blocks():
        got.update(zip(block.variants.column("variant_id").to_pylist(), block.call_dosage))
    assert got.keys() == expected.keys()
    for key, calls in expected.items():
        np.testing.assert_array_equal(got[key], calls, err_msg=key)
    truth = np.stack(list(expected.values()))
    assert 0 < (truth < 0).mean() < 0.05  # some missing calls, not many
    assert {0, 1, 2} <= set(np.unique(truth).tolist())

    with gzip.open(site.vcf, "rt") as handle:
        first = next(line for line in handle if not line.startswith("#"))
    assert ("|" in first) == phased
    # Cached: a second call finds the files and does not rewrite them.
    stamp = site.vcf.stat().st_mtime_ns
    again = write_synthetic_site(tmp_path, SAMPLES, VARIANTS, seed=3, phased=phased, jobs=jobs)
    assert again.seconds == 0 and again.vcf.stat().st_mtime_ns == stamp
    assert json.loads((site.vcf.parent / "site.json").read_text())["variants"] == VARIANTS
