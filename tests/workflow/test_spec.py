"""Workflow files: the shipped ones validate and plan; broken ones fail naming the line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError
from pipeline.federation.job_spec import load_spec
from pipeline.workflow.run import load_for_site
from pipeline.workflow.spec import is_workflow_file, load_workflow
from tests.workflow.conftest import make_site

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("site-prep", "site-gwas", "site-pca", "site-train")

VALID = """\
kind: workflow
name: demo
params:
  vcf: {required: true}
  maf: 0.0
steps:
  - name: ingest
    run: ingest
    inputs: {vcf: "${params.vcf}"}
    output: "${site.dataset}"
  - name: qc
    run: qc
    inputs: {dataset: "${steps.ingest.output}"}
    params: {maf: "${params.maf}"}
    output: "${work}/qc"
"""


def _write(tmp_path: Path, text: str, name: str = "wf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_load_workflow__shipped_files_validate_and_plan(name, tmp_path):
    spec = load_workflow(REPO / "workflows" / f"{name}.yaml")
    assert spec.name == name
    assert [s.name for s in spec.steps][:2] == ["ingest", "qc"]
    site = make_site(tmp_path / "site")
    _, config, work, steps = load_for_site(REPO / "workflows" / f"{name}.yaml", site=site, params={"vcf": "x.vcf.gz"})
    assert steps[0].output == config.dataset
    assert steps[1].inputs["dataset"] == config.dataset
    if name != "site-prep":
        analysis = name.removeprefix("site-")
        federated = steps[-1]
        assert federated.kind == "federated" and federated.params["analysis"] == analysis
        assert set(federated.upstream) == {"ingest", "qc"}
        assert federated.output == work / analysis


@pytest.mark.parametrize("name", ["census", "secure-sum", "train"])
def test_load_workflow__job_specs_are_told_apart(name):
    path = REPO / "workflows" / f"{name}.yaml"
    assert not is_workflow_file(path)
    assert "analysis" in load_spec(path)  # still a valid job spec
    with pytest.raises(ConfigurationError, match=r"job spec .*genofed job submit"):
        load_workflow(path)


def test_load_workflow__valid_minimal(tmp_path):
    spec = load_workflow(_write(tmp_path, VALID))
    assert [(s.name, s.run) for s in spec.steps] == [("ingest", "ingest"), ("qc", "qc")]
    assert spec.params["vcf"].required and spec.params["maf"].default == 0.0
    assert spec.steps[1].where.endswith("wf.yaml:11")


BROKEN = [
    ("steps:\n  - name: [unclosed\n", 3, "not valid YAML: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence started on line 2)"),
    (VALID.replace("    run: qc\n", "    run: qcc\n"), 12, "unknown kind 'qcc'"),
    (VALID.replace("    params: {maf", "    colour: red\n    params: {maf"), 14, "unknown key 'colour'"),
    (VALID.replace('inputs: {vcf: "${params.vcf}"}', 'inputs: {vcf: "${params.vcf}", bam: x}'), 9, "no input 'bam'"),
    (VALID.replace("${params.maf}", "${params.mafx}"), 14, "names no declared parameter"),
    (VALID.replace("${steps.ingest.output}", "${steps.qc.output}"), 13, "names no earlier step"),
    (VALID.replace("  - name: qc", "  - name: ingest"), 11, "already exists"),
    (VALID.replace('params: {maf: "${params.maf}"}', "params: {maf: 0.7}"), 14, "expected a number in [0.0, 0.5]"),
    (VALID.replace('    inputs: {dataset: "${steps.ingest.output}"}\n', ""), 11, "needs inputs.dataset"),
    (VALID.replace("  maf: 0.0\n", "  maf: 0.0\n  maf: 0.1\n"), 6, "duplicate key 'maf'"),
    (VALID.replace("${site.dataset}", "${site.colour}"), 10, "the site has"),
    (VALID.replace("kind: workflow", "kind: pipeline"), 1, "starts with 'kind: workflow'"),
    (VALID + "  - name: gwas\n    run: federated\n    inputs: {dataset: x}\n    output: y\n", 16, "needs params.analysis"),
    (VALID + "  - name: gwas\n    run: federated\n    inputs: {dataset: x}\n    params: {analysis: GWAS!}\n    output: y\n", 19, "an analysis name"),
    (VALID + "    after: [later]\n", 16, "'later' is not an earlier step"),
]


@pytest.mark.parametrize(("text", "line", "message"), BROKEN)
def test_load_workflow__errors_name_the_line(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigurationError) as info:
        load_workflow(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def test_load_workflow__include_brings_params_and_steps_first(tmp_path):
    _write(tmp_path, VALID, "base.yaml")
    path = _write(tmp_path, """\
        kind: workflow
        name: more
        include: base.yaml
        steps:
          - name: gwas
            run: federated
            inputs: {dataset: "${steps.ingest.output}"}
            params: {analysis: gwas}
            output: "${work}/gwas"
        """)
    spec = load_workflow(path)
    assert [s.name for s in spec.steps] == ["ingest", "qc", "gwas"]
    assert spec.steps[0].where.startswith(str(tmp_path / "base.yaml"))
    loop = _write(tmp_path, "kind: workflow\nname: loop\ninclude: loop.yaml\nsteps: []\n", "loop.yaml")
    with pytest.raises(ConfigurationError, match=r"loop.yaml:3: include: .* includes itself"):
        load_workflow(loop)


def test_resolve__parameters_checked_against_the_file(tmp_path):
    path = _write(tmp_path, VALID)
    site = make_site(tmp_path / "site")
    with pytest.raises(ConfigurationError, match=r"wf.yaml:4: parameter 'vcf' is required; give it with --param vcf="):
        load_for_site(path, site=site)
    with pytest.raises(ConfigurationError, match=r"--param colour: the workflow has no such parameter"):
        load_for_site(path, site=site, params={"vcf": "a.vcf", "colour": "red"})
    with pytest.raises(ConfigurationError, match=r"wf.yaml:14: step 'qc': maf is 0.9; expected a number in \[0.0, 0.5\]"):
        load_for_site(path, site=site, params={"vcf": "a.vcf", "maf": 0.9})
    _, _, work, steps = load_for_site(path, site=site, params={"vcf": "a.vcf"}, work=tmp_path / "w")
    assert steps[0].inputs == {"vcf": Path("a.vcf").resolve()}
    assert steps[1].output == (tmp_path / "w" / "qc").resolve() and steps[1].upstream == ("ingest",)


def test_workflow_validate__cli(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["workflow", "validate", *(str(REPO / "workflows" / f"{n}.yaml") for n in SHIPPED)])
    assert ok.exit_code == 0, ok.output
    assert "site-gwas ok: ingest (ingest) -> qc (qc) -> gwas (federated)" in ok.output
    bad = runner.invoke(main, ["workflow", "validate", str(_write(tmp_path, VALID.replace("run: qc", "run: qcc")))])
    assert bad.exit_code == 1
    assert "wf.yaml:12: step 'qc': unknown kind 'qcc'" in bad.output
