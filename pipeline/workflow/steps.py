"""Step kinds a site workflow can chain: ``ingest``, ``qc`` and ``federated``.

A kind declares the inputs it reads (paths whose *content* decides whether the step is
out of date), the parameters it takes (with their defaults and a check of each value),
whether its work is a Dask graph (so ``--scheduler`` applies), and the library call
that runs it. Adding a kind means adding one :class:`StepKind` to :data:`KINDS`.

``federated`` steps join a federated job as this site: they run the site agent
(``genofed site run --once``) until the jobs it took part in have finished, after
checking that the site's policy allows the step's analysis and that this genofed
knows it. Its output folder holds the agent's summary.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import outputs
from pipeline.analyses.registry import check_analysis_name
from pipeline.errors import ConfigurationError
from pipeline.federation.agent import run_site
from pipeline.federation.config import SiteConfig
from pipeline.ingest import ingest, ingest_part, parse_chunk_size
from pipeline.parameters import Param, choice, number
from pipeline.qc import run_qc

__all__ = ["StepKind", "KINDS", "RunContext", "check_param"]


@dataclass(frozen=True)
class RunContext:
    """What executing a step may use besides its inputs and parameters."""

    site: SiteConfig
    scheduler: str
    workers: int | None
    progress: bool
    part: int | None = None
    parts: int | None = None
    parts_dir: Path | None = None


@dataclass(frozen=True)
class StepKind:
    """A kind of step.

    Attributes:
        name: the value of ``run:`` in a workflow file.
        required_inputs / optional_inputs: input names (paths).
        params: parameter name -> :class:`Param`.
        dask: whether ``--scheduler`` applies to it.
        execute: ``execute(inputs, params, output, context) -> summary``; writes ``output``.
        help: one line for ``genofed workflow validate``'s listing and errors.
    """

    name: str
    required_inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    params: Mapping[str, Param]
    dask: bool
    execute: Callable[[Mapping[str, Path], Mapping[str, Any], Path, RunContext], dict[str, Any]]
    help: str

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.required_inputs + self.optional_inputs


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError("a number of seconds > 0")
    return float(value)


def _chunk_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("a size such as 5Mb, 500kb or 1000000")
    try:
        return parse_chunk_size(value)
    except ConfigurationError:
        raise ValueError("a size such as 5Mb, 500kb or 1000000") from None


def _analysis_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
        raise ValueError("an analysis name such as gwas, pca or train")
    return value


def check_param(kind: StepKind, name: str, value: Any) -> Any:
    """The cast value of parameter ``name`` of ``kind``.

    Raises:
        ValueError: saying what was expected.
    """
    return kind.params[name].check(value)


def _ingest(inputs: Mapping[str, Path], params: Mapping[str, Any], output: Path, context: RunContext) -> dict[str, Any]:
    if context.parts is not None and context.part is not None:  # one task of a batch array job
        return ingest_part(
            inputs["vcf"], parts_dir=context.parts_dir or output.with_name(output.name + ".parts"), part=context.part,
            parts=context.parts, fasta=inputs.get("fasta"), chunk_size=params["chunk_size"], contig_style=params["contig_style"],
            scheduler=context.scheduler, workers=context.workers,
        )
    return ingest(
        inputs["vcf"], out=output, fasta=inputs.get("fasta"), phenotypes=inputs.get("phenotypes"),
        chunk_size=params["chunk_size"], contig_style=params["contig_style"], scheduler=context.scheduler,
        workers=context.workers, force=True, progress=context.progress,
        parts_dir=context.parts_dir if context.parts is not None else None,
    )


def _qc(inputs: Mapping[str, Path], params: Mapping[str, Any], output: Path, context: RunContext) -> dict[str, Any]:
    return run_qc(
        inputs["dataset"], out=output, min_call_rate=params["min_call_rate"], min_sample_call_rate=params["min_sample_call_rate"],
        hwe_p=params["hwe_p"], maf=params["maf"], force=True, progress=context.progress,
    )


def _federated(inputs: Mapping[str, Path], params: Mapping[str, Any], output: Path, context: RunContext) -> dict[str, Any]:
    analysis = params["analysis"]
    site = context.site
    if inputs["dataset"].resolve() != site.dataset.resolve():
        raise ConfigurationError(
            f"{site.path}: the agent contributes from the dataset {site.dataset}, but the step reads {inputs['dataset']}; "
            "make the workflow's ingest output ${site.dataset} or change 'dataset' in site.toml"
        )
    if not site.policy.allows(analysis):
        raise ConfigurationError(
            f"{site.path}: the site's policy does not allow {analysis!r} (allowed_analyses = {list(site.policy.allowed_analyses)}); "
            "add it there if the site agrees to take part"
        )
    check_analysis_name(analysis)  # the agent imports the analysis when its job arrives
    summary = run_site(site.path, once=True, max_idle=params["max_idle"])
    if not summary["jobs"]:
        raise ConfigurationError(
            f"site {site.name}: no federated job reached the agent within max_idle = {params['max_idle']:g} s; ask the analyst "
            f"to submit the {analysis} job (genofed job submit) and run the workflow again, or raise max_idle"
        )
    summary = {**summary, "analysis": analysis}
    with outputs.atomic_directory(output, force=True) as tmp:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


KINDS: Mapping[str, StepKind] = {
    "ingest": StepKind(
        name="ingest", required_inputs=("vcf",), optional_inputs=("fasta", "phenotypes"),
        params={"chunk_size": Param("5Mb", _chunk_size), "contig_style": Param("chr", choice("chr", "nochr", "keep"))},
        dask=True, execute=_ingest, help="VCF/BCF (+ FASTA, + phenotypes) -> harmonized dataset (genofed ingest)",
    ),
    "qc": StepKind(
        name="qc", required_inputs=("dataset",), optional_inputs=(),
        params={
            "min_call_rate": Param(0.95, number(0.0, 1.0)), "min_sample_call_rate": Param(0.95, number(0.0, 1.0)),
            "hwe_p": Param(1e-6, number(0.0, 1.0)), "maf": Param(0.0, number(0.0, 0.5)),
        },
        dask=False, execute=_qc, help="per-variant and per-sample QC of a dataset (genofed qc)",
    ),
    "federated": StepKind(
        name="federated", required_inputs=("dataset",), optional_inputs=(),
        params={"analysis": Param(None, _analysis_name), "max_idle": Param(3600.0, _seconds)},
        dask=False, execute=_federated,
        help="take part in federated jobs of one analysis as this site (genofed site run --once)",
    ),
}
"""Step kinds by name."""
