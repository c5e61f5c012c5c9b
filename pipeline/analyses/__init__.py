"""Federated analyses: each one is two pure functions and a layout per round.

:mod:`.protocol` says what an analysis is (its hooks, its typed state, what a site
step may know of its site); :mod:`.phases` runs analyses one after another inside one
job; :mod:`.registry` names the analyses a federation can run. One module (or package)
per analysis: :mod:`.secure_sum`, :mod:`.census`, :mod:`.pca`, :mod:`.gwas`,
:mod:`.train`. Analyses import :mod:`pipeline.encoding` to declare their layouts and
never :mod:`pipeline.secagg` or :mod:`pipeline.federation`: the runtime encodes, masks
and moves their contributions.
"""

from pipeline.analyses.protocol import (
    GENOTYPES,
    Analysis,
    Contribution,
    JobState,
    KeyUnion,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
)
from pipeline.analyses.site_cache import SiteCache

__all__ = ["GENOTYPES", "Analysis", "Contribution", "JobState", "KeyUnion", "Result", "RoundLayout", "SiteCache", "SiteContext", "StepResult"]
