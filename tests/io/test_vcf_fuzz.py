"""Seeded fuzzing of ``genofed ingest`` over every input form, judged against bcftools.

The fuzzer, the mutations, the forms and the rules for "equal", "refused" and
"disagree" are in :mod:`tests.io.vcf_fuzz_support` (its docstring lists the decisions).
A failing run prints the tally per form, each failing case (form, mutations, seed,
exception or first differing call) and the folder its inputs were copied to; reproduce
one with the ``genofed ingest`` command listed in that folder's ``failures.txt``, or the
whole run with ``python -m tests.io.vcf_fuzz_support --seed SEED --count N --keep DIR``.
Set ``GENOFED_FUZZ_KEEP`` to choose the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.io import vcf_fuzz_support as fuzz

DEFAULT_SEED = 20261205
DEFAULT_COUNT = 40  # about 180 inputs over the six forms
SLOW_COUNT = 400  # about 1,800 inputs
CONTROL_COUNT = 8


@pytest.fixture
def needs_tools() -> None:
    missing = fuzz.tools_missing()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (CI installs them with apt: bcftools, tabix)")


def _keep_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    chosen = os.environ.get("GENOFED_FUZZ_KEEP")
    if chosen:
        folder = Path(chosen) / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path_factory.mktemp(name)


def _run_and_check(report: fuzz.Report) -> None:
    text = report.text()
    print(text)
    tally = report.tally()["all"]
    assert tally["tried"] > 0, "no input form could be made; are bcftools/bgzip/tabix working?"
    assert report.failures == [], text


def test_vcf_fuzz__unmutated_inputs_equal_bcftools(needs_tools: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Control: valid generated VCFs are read exactly as bcftools reads them (checks the harness too)."""
    keep = _keep_folder(tmp_path_factory, "vcf-fuzz-control")
    report = fuzz.run_fuzz(DEFAULT_SEED, CONTROL_COUNT, keep=keep, forms=("vcf", "vcf.gz", "bcf"), use_htslib=False, fuzz=False)
    _run_and_check(report)
    assert report.tally()["all"]["equal"] == report.tally()["all"]["tried"], report.text()


def test_vcf_fuzz__every_form_matches_bcftools_or_refuses(needs_tools: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """About 180 fuzzed inputs over six forms: no traceback, hang, disagreement or bad refusal."""
    keep = _keep_folder(tmp_path_factory, "vcf-fuzz-failures")
    print(f"failing inputs are copied to {keep}")
    _run_and_check(fuzz.run_fuzz(DEFAULT_SEED, DEFAULT_COUNT, keep=keep))


@pytest.mark.slow
def test_vcf_fuzz__many_inputs(needs_tools: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """About 1,800 fuzzed inputs (another seed); same verdicts as the default test."""
    keep = _keep_folder(tmp_path_factory, "vcf-fuzz-slow-failures")
    print(f"failing inputs are copied to {keep}")
    _run_and_check(fuzz.run_fuzz(DEFAULT_SEED + 1, SLOW_COUNT, keep=keep))
