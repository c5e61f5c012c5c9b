"""A site's differential-privacy budget: what its noisy releases have cost, and whether the next fits.

Every noisy release a site contributes to costs zCDP ``rho`` (:class:`pipeline.privacy.Spend`),
and zCDP adds up over releases, whoever asked for them: the same people's data is in
all of them. The site keeps one JSON line per spend in ``state_dir/privacy-spend.jsonl``
(0600, synced, appended only) and, before it sends anything of a noisy round, checks that
the total with this round, converted to (epsilon, delta) at its policy's ``delta``, stays
within its ``epsilon_budget`` (:class:`~pipeline.federation.config.PrivacyPolicy`);
otherwise it declines with ``budget-exhausted``. A spend is recorded when the site commits
to the round, before its noisy contribution leaves, and not refunded if the round then
aborts: the coordinator may have learned the sum.

The budget is per site over the whole federation (every analyst together);
:func:`spending_report` shows the operator what was spent, by whom, on what.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.federation.config import PrivacyPolicy
from pipeline.outputs import append_private_lines
from pipeline.privacy import PrivacyTerms, Spend, zcdp_to_approx_dp

__all__ = ["SPEND_FILE", "BudgetEntry", "PrivacyBudget", "report_text", "spending_report", "terms_refusal"]

SPEND_FILE = "privacy-spend.jsonl"


@dataclass(frozen=True)
class BudgetEntry:
    """One noisy round the site contributed to."""

    job_id: str
    round_index: int
    analysis: str
    analyst: str
    rho: float
    epsilon: float
    delta: float
    sigma: float
    honest_sites: int
    time: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PrivacyBudget:
    """The site's spends (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._entries = self._load()

    def _load(self) -> list[BudgetEntry]:
        if not self.path.is_file():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append(BudgetEntry(**json.loads(line)))
            except (ValueError, TypeError) as error:
                raise ConfigurationError(
                    f"{self.path}, line {number}: not a privacy spend ({error}); the budget cannot be known without it, "
                    "so the agent will not start: restore it from a backup"
                ) from None
        return entries

    @property
    def entries(self) -> tuple[BudgetEntry, ...]:
        return tuple(self._entries)

    def spent_rho(self) -> float:
        """zCDP spent so far (the sum over every recorded round)."""
        return sum(entry.rho for entry in self._entries)

    def spent(self, key: tuple[str, int]) -> bool:
        """Whether the round ``(job_id, round_index)`` is already recorded (a resumed round is not spent twice)."""
        return any((entry.job_id, entry.round_index) == key for entry in self._entries)

    def refusal(self, spend: Spend, policy: PrivacyPolicy, *, site: str) -> PolicyRefusal | None:
        """``budget-exhausted`` when this round would take the site beyond its budget, else ``None``."""
        if policy.epsilon_budget is None:
            return None
        after = zcdp_to_approx_dp(self.spent_rho() + spend.rho, policy.delta)
        if after > policy.epsilon_budget:
            before = zcdp_to_approx_dp(self.spent_rho(), policy.delta) if self._entries else 0.0
            return PolicyRefusal(
                f"site {site}: this release (rho {spend.rho:.4g}) would take the spent privacy from epsilon {before:.4g} "
                f"to {after:.4g} at delta {policy.delta:g}, beyond the budget of {policy.epsilon_budget:g}",
                code="budget-exhausted")
        return None

    def record(self, job_id: str, round_index: int, analysis: str, analyst: str, spend: Spend) -> BudgetEntry | None:
        """Appends the spend of a round (once per round); returns the entry, or ``None`` if already recorded."""
        if self.spent((job_id, round_index)):
            return None
        entry = BudgetEntry(job_id=job_id, round_index=round_index, analysis=analysis, analyst=analyst, rho=spend.rho,
                            epsilon=spend.epsilon, delta=spend.delta, sigma=spend.sigma, honest_sites=spend.honest_sites,
                            time=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        append_private_lines(self.path, [entry.to_json()])
        self._entries.append(entry)
        return entry


def terms_refusal(terms: PrivacyTerms | None, policy: PrivacyPolicy, *, threshold: int, releases_samples: bool,
                  site: str) -> PolicyRefusal | None:
    """Why the site declines a job's privacy terms before sending anything, or ``None``.

    A site that requires differential privacy declines a job that would release its
    samples without it. A noisy job must assume at least the site's ``max_colluding``
    and count on no more honest sites than ``threshold - max_colluding``: a site can
    subtract its own noise, and colluders theirs.
    """
    if terms is None:
        if policy.required and releases_samples:
            return PolicyRefusal(f"site {site} releases its samples only with differential privacy",
                                 public="the site releases only with differential privacy (a privacy block in the spec)")
        return None
    if terms.max_colluding < policy.max_colluding:
        return PolicyRefusal(
            f"site {site}: the job assumes {terms.max_colluding} colluding sites, the policy {policy.max_colluding}",
            public="the job's privacy.max_colluding is below what the site assumes")
    if terms.honest_sites > threshold - policy.max_colluding:
        return PolicyRefusal(
            f"site {site}: the job counts on {terms.honest_sites} honest sites' noise; with threshold {threshold} and "
            f"{policy.max_colluding} colluding, only {threshold - policy.max_colluding} are guaranteed",
            public="the job's privacy terms count on more honest sites than its threshold guarantees")
    return None


def spending_report(budget: PrivacyBudget, policy: PrivacyPolicy) -> dict[str, Any]:
    """What the site has spent, in all, by analyst and by job (``genofed site budget``)."""
    rho = budget.spent_rho()
    spent = zcdp_to_approx_dp(rho, policy.delta) if budget.entries else 0.0
    by_analyst: dict[str, float] = {}
    for entry in budget.entries:
        by_analyst[entry.analyst] = by_analyst.get(entry.analyst, 0.0) + entry.rho
    return {
        "budget": {"epsilon": policy.epsilon_budget, "delta": policy.delta},
        "spent": {"rho": rho, "epsilon": spent, "delta": policy.delta},
        "remaining_epsilon": None if policy.epsilon_budget is None else max(policy.epsilon_budget - spent, 0.0),
        "by_analyst": {name: {"rho": value, "epsilon": zcdp_to_approx_dp(value, policy.delta)}
                       for name, value in sorted(by_analyst.items())},
        "releases": [entry.to_json() for entry in budget.entries],
        "scope": "the whole federation: every analyst's jobs draw on this site's one budget",
    }


def report_text(report: Mapping[str, Any]) -> str:
    """The report for people."""
    budget, spent = report["budget"], report["spent"]
    lines = [
        f"spent epsilon {spent['epsilon']:.4g} at delta {spent['delta']:g} (zCDP rho {spent['rho']:.4g})"
        + (f" of a budget of {budget['epsilon']:g}; {report['remaining_epsilon']:.4g} left" if budget["epsilon"] is not None
           else "; no budget set ([policy.privacy] epsilon_budget)"),
        f"scope: {report['scope']}",
    ]
    for name, value in report["by_analyst"].items():
        lines.append(f"  {name:<16} epsilon {value['epsilon']:.4g} (rho {value['rho']:.4g})")
    for entry in report["releases"]:
        lines.append(f"  {entry['time']}  {entry['job_id']} round {entry['round_index']}  {entry['analysis']:<10} "
                     f"{entry['analyst']:<12} epsilon {entry['epsilon']:.4g} (rho {entry['rho']:.4g}, sigma {entry['sigma']:g})")
    return "\n".join(lines)
