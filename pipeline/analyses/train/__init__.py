"""``train``: federated training of a biomarker model (FedAvg, FedProx, FedAdam...).

A training job is five phases run as one :class:`~pipeline.analyses.phases.Phased` job
(:mod:`.job`), each one or more secure-sum rounds:

0. **keys** (:mod:`.keys`, only with ``features: {variants: all}``): a
   :class:`~pipeline.analyses.KeyUnion` of the variant IDs the sites hold at or above
   their minimum minor allele count (sites whose policy allows ``share_variant_keys``).
1. **screen** (:mod:`.screening`, only with ``features: {screen_top: K}``): per
   candidate variant, sums over the training splits of x, x², x·y, y, y² and the count
   (Z_2^64); the coordinator keeps the K variants most correlated with the target (sure
   independence screening, Fan & Lv 2008), the marginal association a GWAS would publish.
2. **moments** (:mod:`.moments`): per feature the count, sum and sum of squares over
   each site's training split, and the split sizes (Z_2^64): every site then
   standardizes with the same federated means and standard deviations
   (:mod:`pipeline.models.features`).
3. **train** (:mod:`.rounds`, rounds 1..T, skipped with ``rounds: 0``): each site runs
   the jitted local update (:mod:`pipeline.models.local_update`: E epochs, minibatches,
   optional FedProx ``mu`` and elastic net) from the global model, clips its delta to L2
   norm ``clip_norm`` and contributes ``(n_s * delta_s, n_s)`` in Z_2^32 with a
   fixed-point scale chosen so the sum of all sites cannot wrap (Z_2^64 when Z_2^32 would
   keep fewer than 10 fractional bits of the delta); the coordinator applies the server
   optimizer (an optax transformation, :mod:`pipeline.models.server_optimizers`) to the
   pseudo-gradient. In the same sum each site adds the evaluation statistics of the
   global model it started from on its held-out split, which gives the learning curve
   at no extra round.
4. **evaluate** (:mod:`.final_evaluation`): the final model's statistics on the held-out
   splits (:mod:`pipeline.models.evaluation`: AUC from per-class score histograms,
   accuracy, Brier score, log loss; or R² and MSE), with one slot per participant that
   only a site whose policy says ``share_site_metrics`` fills.

The global model, the server optimizer state and the history are the job's public
state, which the coordinator stores before each round: a restarted coordinator resumes
at the round it was in, from the last global model. Per-site metrics stay local unless
the site's policy allows them (the evaluation slots above): each round a site logs its
own held-out metrics to its own log, and after the job its agent writes the final model
and its held-out metrics under its state folder
(:meth:`.final_evaluation.FinalEvaluation.site_finish`).

With a ``privacy`` block the job is (epsilon, delta)-differentially private for each
person over all its rounds (:mod:`.privacy`): the features must be given (no key round,
no screening), the moments, each training round (DP-FedSGD: one full-batch step from the
sum of per-example gradients clipped to ``clip_norm``, no sample count, no learning
curve) and the final evaluation (score histograms, no per-site slots) are released with
discrete Gaussian noise added at each site, and the budget is split 10% / 80% / 10%
between them; the result's ``privacy`` says how.

The job's parameters are a :class:`TrainingPlan` (:mod:`.plan`). Spec (see
``workflows/train.yaml``)::

    analysis: train
    target: binary_trait          # column of the samples table
    task: binary                  # or quantitative
    covariates: [age, sex]
    features: {variants: all, screen_top: 50}   # or {variants: [ids]}, or {gwas: PATH, top: 50}
    model: {kind: logistic, hidden: [32], seed: 0}   # linear | logistic | mlp
    local: {epochs: 1, batch_size: 64, optimizer: sgd, learning_rate: 0.1, mu: 0.0, l1: 0.0, l2: 0.0}
    server: {optimizer: fedavg, learning_rate: 1.0}  # fedavg | fedadam | fedyogi | fedadagrad
    rounds: 20
    clip_norm: 10.0
    holdout_fraction: 0.2
    seed: 0
    privacy: {epsilon: 3.0, delta: 1.0e-6, max_colluding: 0}   # optional; then local: {epochs: 1}, no batch_size
"""

from pipeline.analyses.train.final_evaluation import EvaluationState, FinalEvaluation
from pipeline.analyses.train.job import TRAIN, Train, training_phases
from pipeline.analyses.train.keys import FeatureKeys, FeatureKeysState
from pipeline.analyses.train.model_record import biomarkers, model_record
from pipeline.analyses.train.moments import Moments, MomentsState
from pipeline.analyses.train.plan import TrainingPlan
from pipeline.analyses.train.rounds import TrainingRounds, TrainingRoundsState
from pipeline.analyses.train.screening import (
    Screening,
    ScreeningState,
    ScreeningSummary,
)
from pipeline.analyses.train.site_data import (
    contributing_sets,
    site_key,
    site_training_arrays,
)

__all__ = [
    "TRAIN",
    "Train",
    "TrainingPlan",
    "training_phases",
    "contributing_sets",
    "site_key",
    "site_training_arrays",
    "model_record",
    "biomarkers",
    "FeatureKeys",
    "FeatureKeysState",
    "Screening",
    "ScreeningState",
    "ScreeningSummary",
    "Moments",
    "MomentsState",
    "TrainingRounds",
    "TrainingRoundsState",
    "FinalEvaluation",
    "EvaluationState",
]
