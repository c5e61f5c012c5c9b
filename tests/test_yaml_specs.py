"""Exponent numbers (``1e-10``) in job specs, site workflows and ``--param``: numbers, as people write them.

PyYAML's YAML 1.1 resolver reads ``1e-10`` as a string (only ``1.0e-10`` was a number),
so a census spec with ``hwe_p: 1e-10`` or ``--param hwe_p=1e-10`` was refused.
"""

from __future__ import annotations

import pytest
import yaml

from pipeline.analyses.registry import get_analysis
from pipeline.federation.job_spec import analysis_parameters, load_spec
from pipeline.workflow.plan import parse_param_overrides
from pipeline.workflow.spec import load_workflow
from pipeline.yaml_specs import load_yaml

EXPONENTS = [("1e-10", 1e-10), ("5e-3", 5e-3), ("1E6", 1e6), ("+2e+5", 2e5), ("-3e2", -300.0), ("1.0e-10", 1e-10), ("1.e5", 1e5)]


@pytest.mark.parametrize(("text", "value"), EXPONENTS)
def test_load_yaml__exponent_forms_are_floats(text, value):
    loaded = load_yaml(f"x: {text}")["x"]
    assert isinstance(loaded, float) and loaded == value


@pytest.mark.parametrize(("text", "value"), [("12", 12), ("0.5", 0.5), ("1_000", 1000), ("abc", "abc"), ("1e", "1e"), ("e5", "e5"),
                                             ("1e-10x", "1e-10x"), ("'1e-10'", "1e-10"), ("true", True), ("null", None), ("5Mb", "5Mb")])
def test_load_yaml__everything_else_resolves_as_before(text, value):
    assert load_yaml(f"x: {text}")["x"] == value == yaml.safe_load(f"x: {text}")["x"]


def test_load_yaml__safe_loader_itself_is_unchanged():
    assert yaml.safe_load("x: 1e-10")["x"] == "1e-10"


def test_load_spec__a_census_spec_with_1e_10_is_accepted(tmp_path):
    path = tmp_path / "census.yaml"
    path.write_text("analysis: census\nmin_call_rate: 0.95\nhwe_p: 1e-10\nmaf: 5e-3\n")
    spec = load_spec(path)
    assert spec["hwe_p"] == 1e-10 and spec["maf"] == 5e-3
    state = get_analysis("census").init(analysis_parameters(spec), ("a", "b"))
    assert state.parameters.hwe_p == 1e-10


def test_param_overrides__exponent_numbers_are_floats():
    assert parse_param_overrides(["hwe_p=1e-10", "maf=5e-3", "n=1E6", "vcf=site-1.vcf.gz"]) == {
        "hwe_p": 1e-10, "maf": 5e-3, "n": 1e6, "vcf": "site-1.vcf.gz"}


def test_load_workflow__exponent_defaults_are_floats(tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(
        "kind: workflow\nname: t\nparams:\n  hwe_p: 1e-10\n  maf: 5e-3\nsteps:\n  - name: qc\n    run: qc\n"
        "    inputs: {dataset: data}\n    params: {hwe_p: \"${params.hwe_p}\"}\n    output: out\n"
    )
    spec = load_workflow(path)
    assert spec.params["hwe_p"].default == 1e-10 and spec.params["maf"].default == 5e-3
