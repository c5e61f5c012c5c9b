"""A site's ledger of releases: which of its samples went into which result, with which sites.

Secure aggregation hides a site's contribution from the coordinator; it does nothing
about what two *results* reveal together. An analyst with legitimate jobs could run the
same analysis on two sample sets one person apart, or over two site sets one site
apart, and read that person's or that site's data off the difference. The site keeps
this ledger in its state folder (outside any job's scratch folder, so restarts keep it)
and enforces three rules on every job before it sends anything, and again when the
survivors of a round are known (:func:`disclosure_refusal`):

- *contributors*: fewer than ``min_samples`` of its samples contribute: ``too-few-samples``;
- *set difference*: the contributing set differs from one the site already contributed
  to any release, or from another set of the same job, by 1 to
  ``min_set_difference - 1`` samples: ``set-too-close``;
- *site sets*: the release would differ by exactly one site from a *comparable* earlier
  release the site took part in (same analysis kind, overlapping variables; every
  genotype analysis involves :data:`~pipeline.analyses.GENOTYPES`): ``one-site-difference``.

What it does not stop (see the README): combinations of three or more releases
("tracker" attacks); differential privacy is the answer to those.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.analyses import Contribution
from pipeline.errors import ConfigurationError, PolicyRefusal
from pipeline.outputs import append_private_lines

__all__ = ["Release", "ReleaseLedger", "disclosure_refusal", "samples_digest"]


@dataclass(frozen=True)
class Release:
    """One result the site contributed to: the job, its analysis, the contributing set and the sites in it."""

    job_id: str
    analysis: str
    variables: tuple[str, ...]
    samples: frozenset[str]
    sites: frozenset[str]

    def to_json(self) -> dict[str, object]:
        return {"job_id": self.job_id, "analysis": self.analysis, "variables": list(self.variables),
                "samples": sorted(self.samples), "sites": sorted(self.sites)}

    def comparable(self, other: Release) -> bool:
        """Same analysis kind over overlapping variables: their difference would mean something."""
        return self.analysis == other.analysis and bool(set(self.variables) & set(other.variables))


def samples_digest(samples: Iterable[str]) -> str:
    """SHA-256 of the sorted sample IDs: what the audit log records of a contributing set."""
    return hashlib.sha256("\n".join(sorted(samples)).encode()).hexdigest()


def disclosure_refusal(candidate: Release, earlier: Sequence[Release], *, min_samples: int, min_set_difference: int,
                       site: str) -> PolicyRefusal | None:
    """Why ``candidate`` may not be released by this site given its ``earlier`` releases, or ``None``.

    Releases of the same job are not compared with each other (a job's rounds are one release).
    """
    count = len(candidate.samples)
    if count < min_samples:
        return PolicyRefusal(
            f"site {site}: {count} samples would contribute to {candidate.analysis} over {list(candidate.variables)}, "
            f"fewer than the policy's min_samples {min_samples}", code="too-few-samples")
    others = [release for release in earlier if release.job_id != candidate.job_id]
    for release in others:
        difference = len(candidate.samples ^ release.samples)
        if 0 < difference < min_set_difference:
            return PolicyRefusal(
                f"site {site}: the contributing set differs by {difference} samples from the one of job "
                f"{release.job_id} ({release.analysis}); the policy's min_set_difference is {min_set_difference}",
                code="set-too-close")
    for release in others:
        if candidate.comparable(release) and len(candidate.sites ^ release.sites) == 1:
            (odd,) = candidate.sites ^ release.sites
            return PolicyRefusal(
                f"site {site}: the release over sites {sorted(candidate.sites)} differs by site {odd} alone from job "
                f"{release.job_id} ({release.analysis}) over {sorted(release.sites)}", code="one-site-difference")
    return None


class ReleaseLedger:
    """The site's releases, one JSON line each in ``path`` (written 0600, synced, appended only)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._releases = self._load()

    def _load(self) -> list[Release]:
        if not self.path.is_file():
            return []
        releases = []
        try:
            lines = self.path.read_text().splitlines()
        except OSError as error:
            raise ConfigurationError(f"{self.path}: the site's release ledger is unreadable ({error.strerror})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                releases.append(Release(str(data["job_id"]), str(data["analysis"]), tuple(data["variables"]),
                                        frozenset(data["samples"]), frozenset(data["sites"])))
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigurationError(
                    f"{self.path}, line {number}: not a release record ({error}); the ledger protects the site's samples "
                    "from differencing, so the agent will not start without it: restore it from a backup"
                ) from None
        return releases

    @property
    def releases(self) -> tuple[Release, ...]:
        return tuple(self._releases)

    def candidates(self, job_id: str, analysis: str, contributions: Sequence[Contribution], sites: Iterable[str]) -> list[Release]:
        """The releases a job would make from this site, one per contributing set."""
        names = frozenset(sites)
        return [Release(job_id, analysis, tuple(sorted(c.variables)), frozenset(c.samples), names) for c in contributions]

    def check(self, candidates: Sequence[Release], *, min_samples: int, min_set_difference: int, site: str) -> None:
        """Raises the first :class:`PolicyRefusal` any of ``candidates`` meets against the earlier releases.

        A job's own contributing sets are compared with each other too: a GWAS releases
        census counts over every sample and regression sums over the complete cases, and
        two sets a few people apart would give those people's genotypes by difference.
        """
        for candidate in candidates:
            refusal = disclosure_refusal(candidate, self._releases, min_samples=min_samples,
                                         min_set_difference=min_set_difference, site=site)
            if refusal is not None:
                raise refusal
        for index, first in enumerate(candidates):
            for second in candidates[index + 1:]:
                difference = len(first.samples ^ second.samples)
                if 0 < difference < min_set_difference:
                    raise PolicyRefusal(
                        f"site {site}: two contributing sets of job {first.job_id} ({list(first.variables)} and "
                        f"{list(second.variables)}) differ by {difference} samples; the policy's min_set_difference is "
                        f"{min_set_difference}", code="set-too-close")

    def record(self, releases: Sequence[Release]) -> list[Release]:
        """Appends the releases not yet recorded; returns those appended."""
        new = [release for release in releases if release not in self._releases]
        if not new:
            return []
        append_private_lines(self.path, [release.to_json() for release in new])
        self._releases.extend(new)
        return new
