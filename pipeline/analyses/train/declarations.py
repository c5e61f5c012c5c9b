"""What the training phases declare to the secure sum: bit rules and held-out statistic fields.

Sums of sample counts and histogram bins are exact counts. Sums of real values
(moments, screening sums, model deltas, losses) are fixed point with every fractional
bit the job's number of sites leaves, up to :data:`MAX_SCALE_BITS`. The training and
evaluation rounds try Z_2^32 first (half the mask bandwidth) and take Z_2^64 when
Z_2^32 would keep fewer than :data:`MIN_DELTA_SCALE_BITS` fractional bits of the model
delta or :data:`MIN_METRIC_SCALE_BITS` of a loss sum; the moments and screening rounds,
whose sums must be near exact, use Z_2^64.

The held-out statistics (:mod:`pipeline.models.evaluation`) are summed in every
training round (the learning curve) and in the final evaluation, which also has one
*slot* per participant: the same statistics under ``site:NAME:statistic`` names and a
``site:NAME:shared`` flag. The coordinator refuses summed statistics no honest sites
give (:func:`check_statistics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.analyses.sum_checks import check_moments, check_real_sum, refuse_impossible
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.encoding import Count, Declaration, Layout, Real
from pipeline.models import evaluation

__all__ = [
    "MAX_SCALE_BITS",
    "MIN_DELTA_SCALE_BITS",
    "MIN_METRIC_SCALE_BITS",
    "LAYOUT_HINT",
    "real",
    "statistic_fields",
    "check_samples",
    "check_statistics",
    "slot",
    "slot_fields",
]

MAX_SCALE_BITS = 32
"""Most fractional bits a real field of a training job keeps."""
MIN_DELTA_SCALE_BITS = 10
"""Fewer fractional bits than this for the model delta in Z_2^32 and a round uses Z_2^64 instead."""
MIN_METRIC_SCALE_BITS = 4
"""The same for sums of per-sample losses (a 1/32 error on a sum over many samples is harmless)."""
LAYOUT_HINT = "lower the job's max_samples_per_site, max_abs_value or clip_norm"


def real(name: str, shape: tuple[int, ...], bound: float, *, min_bits: int = 0) -> Real:
    """A real field of a training layout (at most :data:`MAX_SCALE_BITS` fractional bits)."""
    return Real(name, shape, bound, min_scale_bits=min_bits, max_scale_bits=MAX_SCALE_BITS)


def statistic_fields(plan: TrainingPlan, n_holdout: int, *, prefix: str = "") -> tuple[list[Declaration], list[Declaration]]:
    """The held-out statistics of ``n_holdout`` samples: (real fields, count fields).

    Args:
        prefix: put before every field name (a site's slot).
    """
    n = float(max(n_holdout, 1))
    if plan.task == "binary":
        reals = [("brier_sum", (1,), n), ("log_loss_sum", (1,), n * evaluation.LOG_LOSS_CAP)]
        counts = [("hist_case", (plan.bins,), n), ("hist_control", (plan.bins,), n), ("correct", (1,), n)]
    else:
        reals = [("sse", (1,), n * evaluation.SQUARED_ERROR_CAP), ("target_sum", (1,), n * 50.0), ("target_sumsq", (1,), n * 2500.0)]
        counts = [("count", (1,), n)]
    return ([real(prefix + name, shape, bound, min_bits=MIN_METRIC_SCALE_BITS) for name, shape, bound in reals],
            [Count(prefix + name, shape, bound) for name, shape, bound in counts])


def check_samples(where: str, plan: TrainingPlan, field: str, samples: int, sites: int) -> None:
    """Refuses more samples than ``sites`` sites have: a site with more than ``max_samples_per_site`` refuses the job.

    Raises:
        ProtocolError: naming ``field`` and the count.
    """
    most = sites * plan.max_samples_per_site
    refuse_impossible(where, field, samples, samples > most,
                      f"at most {sites} sites x max_samples_per_site {plan.max_samples_per_site} = {most}")


def check_statistics(where: str, plan: TrainingPlan, layout: Layout, total: Mapping[str, np.ndarray], num_sites: int, *,
                     prefix: str = "") -> None:
    """Refuses summed held-out statistics no honest sites give, so no published rate leaves [0, 1].

    Over n held-out samples, at most ``max_samples_per_site`` per site: binary, at most
    n correct calls, a Brier sum in [0, n] and a log-loss sum in [0, n x LOG_LOSS_CAP];
    quantitative, an SSE in [0, n x SQUARED_ERROR_CAP] and a target variance >= 0.

    Args:
        prefix: a site's slot (:func:`slot`), whose statistics are that one site's.

    Raises:
        ProtocolError: naming the field and the value.
    """
    if plan.task == "binary":
        n_name = f"{prefix}hist_case + {prefix}hist_control"
        n = int(np.sum(total[prefix + "hist_case"]) + np.sum(total[prefix + "hist_control"]))
    else:
        n_name = prefix + "count"
        n = int(np.asarray(total[n_name]).reshape(-1)[0])
    check_samples(where, plan, n_name, n, 1 if prefix else num_sites)
    if plan.task == "binary":
        correct = np.asarray(total[prefix + "correct"])
        refuse_impossible(where, prefix + "correct", correct, correct > n, f"at most the {n} held-out samples")
        check_real_sum(where, layout, total, num_sites, prefix + "brier_sum", at_most=n, expected="n x 1")
        check_real_sum(where, layout, total, num_sites, prefix + "log_loss_sum", at_most=n * evaluation.LOG_LOSS_CAP,
                       expected=f"n x {evaluation.LOG_LOSS_CAP:g}")
    else:
        check_real_sum(where, layout, total, num_sites, prefix + "sse", at_most=n * evaluation.SQUARED_ERROR_CAP,
                       expected=f"n x {evaluation.SQUARED_ERROR_CAP:g}")
        check_moments(where, layout, total, num_sites, count=n_name, sums=prefix + "target_sum", squares=prefix + "target_sumsq")


def slot(site: str, statistic: str) -> str:
    """The field of ``site``'s own slot in the evaluation layout."""
    return f"site:{site}:{statistic}"


def slot_fields(plan: TrainingPlan, participants: Sequence[str], n_holdout: int) -> tuple[list[Declaration], list[Declaration], list[Declaration]]:
    """One slot per participant: (real fields, count fields, ``shared`` flags), sites in order."""
    reals: list[Declaration] = []
    counts: list[Declaration] = []
    for site in participants:
        site_reals, site_counts = statistic_fields(plan, n_holdout, prefix=slot(site, ""))
        reals += site_reals
        counts += site_counts
    return reals, counts, [Count(slot(site, "shared"), (1,), 1.0) for site in participants]
