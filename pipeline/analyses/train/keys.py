"""Phase ``keys`` of a training job: the union of the variants the sites hold.

Only with ``features: {variants: all}``. One :class:`~pipeline.analyses.KeyUnion`
round: each site whose policy allows ``share_variant_keys`` sends the IDs of its
variants whose minor allele count is at least its policy's ``min_allele_count`` (and at
least 1), never a count; the coordinator keeps their sorted union as the candidate
features. The counts are the census' (:func:`pipeline.analyses.census.site_variant_counts`,
kept in the job's site cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.analyses.census import minor_allele_count, site_variant_counts
from pipeline.analyses.protocol import (
    Analysis,
    KeyUnion,
    Result,
    RoundLayout,
    SiteContext,
    StepResult,
)
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.dataset import Dataset
from pipeline.errors import ConfigurationError, InputError

__all__ = ["FEATURE_KEYS", "FeatureKeys", "FeatureKeysState"]


@dataclass(frozen=True)
class FeatureKeysState:
    """The key phase's state: the plan, and after its round the variant union.

    Attributes:
        plan: the job's plan.
        variant_ids: the sorted union of the shared keys; ``None`` before the round ends.
    """

    plan: TrainingPlan
    variant_ids: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "variant_ids": None if self.variant_ids is None else list(self.variant_ids)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureKeysState:
        ids = data["variant_ids"]
        return cls(TrainingPlan.from_json(data["plan"]), None if ids is None else tuple(str(v) for v in ids))

    def handover(self) -> dict[str, Any]:
        """What the later phases need: the plan and the candidate variants."""
        return {"plan": self.plan.to_json(), "variant_ids": list(self.variant_ids or ())}


class FeatureKeys(Analysis[FeatureKeysState]):
    """The feature-key union (see the module docstring)."""

    name = "train.keys"

    def init(self, spec: Mapping[str, Any], participants: tuple[str, ...]) -> FeatureKeysState:
        """``spec``: the phase spec of the training job (``plan``)."""
        return FeatureKeysState(TrainingPlan.from_json(spec["plan"]))

    def state_from_json(self, data: Mapping[str, Any]) -> FeatureKeysState:
        return FeatureKeysState.from_json(data)

    def layout(self, state: FeatureKeysState, round_index: int) -> RoundLayout:
        return KeyUnion("variant_id", "variants each site holds at or above its minimum minor allele count (feature union)")

    def site_step(self, state: FeatureKeysState, round_index: int, dataset: Dataset, site: SiteContext) -> dict[str, np.ndarray]:
        """The site's variant IDs at or above its minimum minor allele count (none without ``share_variant_keys``)."""
        if not site.share_variant_keys:
            return {"variant_id": np.array([], dtype=str)}
        ids, counts = site_variant_counts(dataset, site.cache)
        minor = minor_allele_count(counts[0], counts[1], counts[2])
        kept = pc.filter(ids, pa.array(minor >= max(site.min_allele_count, 1))).to_numpy(zero_copy_only=False)
        return {"variant_id": np.unique(kept.astype(str))}

    def coordinator_step(
        self, state: FeatureKeysState, round_index: int, total: Mapping[str, np.ndarray], num_sites: int
    ) -> StepResult[FeatureKeysState]:
        """The union, checked against ``max_variants`` unless it will be screened.

        Raises:
            InputError: no key and no covariate: nothing to train on.
            ConfigurationError: more variants than ``features.max_variants`` and no screening.
        """
        plan = state.plan
        union = tuple(sorted({str(k) for k in np.asarray(total["variant_id"]).tolist()}))
        if not union and not plan.covariates:
            raise InputError("train: no site shared any variant key and there are no covariates; nothing to train on")
        limit = plan.features.max_variants
        if limit is not None and len(union) > limit and plan.features.screen_top is None:
            raise ConfigurationError(
                f"train: the sites share {len(union)} variants, more than features.max_variants {limit}; "
                "screen them (features: {variants: all, screen_top: K}), select them from a GWAS table "
                "(features: {gwas: PATH, top: K}) or raise max_variants"
            )
        return dataclasses.replace(state, variant_ids=union), True, Result(summary={})


FEATURE_KEYS = FeatureKeys()
