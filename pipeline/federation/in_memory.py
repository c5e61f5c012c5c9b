"""Run a whole analysis in one process: the rounds of a job without a network.

:func:`run_in_memory` plays coordinator and sites of a job over local datasets: it
calls ``site_step`` at every site, sums the contributions (plainly, or through the
real secure-aggregation protocol of :func:`pipeline.secagg.simulate_secure_sum`), and
feeds the sum to ``coordinator_step``. The state passes through JSON between rounds
(``to_json`` then ``state_from_json``), as it does through the coordinator's store, so
anything that runs here runs in a federation. Each site has its own
:class:`~pipeline.analyses.SiteCache` for the run, dropped at the end as the site agent
drops it when a job ends. Tests and benchmarks use it; deployments use the coordinator
and site agents.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.analyses import Analysis, JobState, KeyUnion, Result, SiteContext
from pipeline.dataset import Dataset, open_dataset
from pipeline.encoding import Layout
from pipeline.errors import ProtocolError
from pipeline.secagg.driver import simulate_secure_sum

__all__ = ["InMemoryRun", "run_in_memory", "plain_sum", "default_context"]


@dataclass
class InMemoryRun:
    """A finished in-memory job: its result and the state each round started from."""

    result: Result
    states: list[tuple[int, Any]] = field(default_factory=list)


def default_context(name: str, *, share_site_metrics: bool = False) -> SiteContext:
    """A permissive site policy (k = 1, shares variant keys) for simulations.

    Per-site metrics stay at the site unless ``share_site_metrics``, as in a
    deployed site's policy.
    """
    return SiteContext(name=name, min_samples=1, min_allele_count=1, share_variant_keys=True,
                       share_site_metrics=share_site_metrics)


def plain_sum(layout: Layout, contributions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The exact sum without encoding: int64 for integer fields, float64 otherwise."""
    out: dict[str, np.ndarray] = {}
    for f in layout.fields:
        dtype = np.int64 if f.encoding.scale_bits == 0 else np.float64
        out[f.name] = np.sum([np.asarray(c[f.name], dtype).reshape(f.shape) for c in contributions], axis=0).astype(dtype)
    return out


def run_in_memory(
    analysis: Analysis,
    spec: Mapping[str, Any],
    datasets: Mapping[str, Dataset | Path | str],
    *,
    secure: bool = False,
    threshold: int | None = None,
    seed: int | None = None,
    contexts: Mapping[str, SiteContext] | None = None,
    start: tuple[int, JobState] | None = None,
    max_rounds: int | None = None,
    on_round: Callable[[int, Any], None] | None = None,
) -> InMemoryRun:
    """Runs ``analysis`` over ``datasets`` (site name -> dataset) until it returns a result.

    Args:
        spec: the analysis parameters (the job spec without runtime keys).
        secure: sum through the real SecAgg protocol (fixed-point, masks) instead of plainly.
        threshold: Shamir threshold of the secure sum (default: a majority, at least 1).
        seed: deterministic key material of the secure sum (tests only).
        contexts: each site's policy (default: :func:`default_context`); its
            ``share_site_metrics`` reaches the analysis' site steps.
        start: ``(round_index, state)`` to resume from instead of ``analysis.init``.
        max_rounds: stop with ``ProtocolError`` after this many rounds (a guard).
        on_round: called with ``(round_index, state)`` before each round.

    Raises:
        ProtocolError: the job did not finish within ``max_rounds``.
    """
    names = tuple(sorted(datasets))
    opened = {n: d if isinstance(d, Dataset) else open_dataset(d) for n, d in datasets.items()}
    sites = {n: (contexts or {}).get(n, default_context(n)) for n in names}
    if start is None:
        round_index, state = 0, analysis.init(dict(spec), names)
    else:
        round_index, state = start
    run = InMemoryRun(result=Result(summary={}))
    limit = max_rounds if max_rounds is not None else 1_000_000
    while round_index < limit:
        state = analysis.state_from_json(json.loads(json.dumps(state.to_json())))
        run.states.append((round_index, state))
        if on_round is not None:
            on_round(round_index, state)
        layout = analysis.layout(state, round_index)
        contributions = [analysis.site_step(state, round_index, opened[n], sites[n]) for n in names]
        if isinstance(layout, KeyUnion):
            keys = np.concatenate([np.asarray(c[layout.name], dtype=object) for c in contributions]) if contributions else np.array([], object)
            total: dict[str, np.ndarray] = {layout.name: np.unique(keys.astype(str))}
        elif secure:
            layout.check_bit_budget(len(names))
            total = simulate_secure_sum(
                contributions, layout=layout, threshold=threshold or max(1, len(names) // 2 + 1), seed=seed,
            )
        else:
            total = plain_sum(layout, contributions)
        state, done, result = analysis.coordinator_step(state, round_index, total, len(names))
        if done:
            assert result is not None
            run.result = result
            for context in sites.values():
                context.cache.clear()
            return run
        round_index += 1
    raise ProtocolError(f"analysis {analysis.name} did not finish within {limit} rounds")
