"""Record-level DP planner: the expected batch, the number of steps and sigma that spend a target epsilon well.

A run of E epochs at training batch B takes k = ceil(N/B) steps per epoch at sample rate q = 1/k (Opacus'
schedule, accountant.record_level_schedule), so the expected batch is qN and the run takes T = kE steps. Each
candidate B gets the smallest sigma whose whole run (the AdaIN_SD statistics release plus one D and one G
release per step, record.record_level_steps) stays within the target; its score is the signal-to-noise of the
run's summed update, sqrt(T) qN / sigma (clipped gradients add up linearly over steps, their noise in root sum
of squares). In the large-sigma regime that score hardly depends on B, and it drops where sigma falls towards 1
(subsampling amplifies less there), so the planner takes the candidate with the fewest steps (the largest
expected batch) whose score is within SNR_TOLERANCE of the best: less noisy steps, same budget.

Nothing here adds arithmetic of its own: sigma and epsilon come from record.calibrate_record_noise and
accountant.compute_epsilon, so the ledger of a planned run charges exactly what the plan predicts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from fedgai.config import FedgaiConfig, PrivacyConfig
from fedgai.privacy.accountant import Step, compute_epsilon, record_level_schedule
from fedgai.privacy.record import MAX_PLANNED_NOISE, calibrate_record_noise, record_level_steps

SNR_TOLERANCE = 0.05  # a candidate within 5 % of the best score counts as just as good

log = logging.getLogger(__name__)


class PlanInfeasible(ValueError):
    """No schedule reaches the target epsilon for these pairs (the message says what would)."""


@dataclass(frozen=True)
class RecordPlan:
    """One record-level schedule and what the accountant charges for it."""

    pairs: int
    epochs: int
    batch_size: int  # the trainer's batch for record_level_schedule: sample rate 1/ceil(pairs/batch_size)
    noise_multiplier: float
    delta: float
    target_epsilon: float
    expected_epsilon: float
    sample_rate: float
    steps_per_epoch: int

    @property
    def steps(self) -> int:
        """Training steps of the whole run (each one D and one G release)."""
        return self.steps_per_epoch * self.epochs

    @property
    def expected_batch(self) -> float:
        return self.sample_rate * self.pairs

    @property
    def score(self) -> float:
        """sqrt(T) qN / sigma: the run's summed clipped signal over its summed noise, in clip-norm units."""
        return math.sqrt(self.steps) * self.expected_batch / self.noise_multiplier

    def ledger_steps(self, privacy: PrivacyConfig) -> list[Step]:
        """What RecordLevelDP records for the whole planned run."""
        return record_level_steps(self.privacy(privacy), self.pairs, self.batch_size, self.epochs)

    def privacy(self, privacy: PrivacyConfig) -> PrivacyConfig:
        """``privacy`` with the planned sigma (what the trainer's RecordLevelDP runs with)."""
        return dataclasses.replace(privacy, noise_multiplier=self.noise_multiplier)


def run_epochs(cfg: FedgaiConfig) -> int:
    """The epochs one record-level run trains: train.epochs in each of fed.rounds rounds."""
    return cfg.train.epochs * cfg.fed.rounds


def candidate_batches(pairs: int, max_batch: int) -> list[int]:
    """Training batches worth comparing: powers of two and the largest allowed, one per sample rate."""
    top = min(pairs, max_batch)
    batches = sorted({b for b in (2**i for i in range(1, top.bit_length())) if b <= top} | {top})
    by_rate = {record_level_schedule(pairs, b, 1)[1]: b for b in batches}  # steps per epoch -> batch
    return sorted(by_rate.values())


def candidates(privacy: PrivacyConfig, pairs: int, epochs: int, target_epsilon: float) -> list[RecordPlan]:
    """Every candidate batch that can reach the target, with its calibrated sigma (at least
    privacy.noise_multiplier); PlanInfeasible when none can."""
    if statistics_epsilon(privacy) > target_epsilon:  # the statistics alone overshoot: no sigma helps
        raise PlanInfeasible(_infeasible(privacy, pairs, epochs, target_epsilon))
    out: list[RecordPlan] = []
    low = 0.3
    for batch in candidate_batches(pairs, privacy.plan_max_batch):  # ascending: each needs more sigma
        try:
            low = calibrate_record_noise(privacy, pairs, batch, epochs, target_epsilon, low=low / 1.02)
        except ValueError:
            continue
        planned = dataclasses.replace(privacy, noise_multiplier=max(low, privacy.noise_multiplier))
        epsilon = compute_epsilon(record_level_steps(planned, pairs, batch, epochs), privacy.delta, privacy.accountant)
        rate, per_epoch = record_level_schedule(pairs, batch, 1)
        out.append(RecordPlan(pairs, epochs, batch, planned.noise_multiplier, privacy.delta, target_epsilon, epsilon,
                              rate, per_epoch))
    if not out:
        raise PlanInfeasible(_infeasible(privacy, pairs, epochs, target_epsilon))
    return out


def choose(plans: list[RecordPlan], min_steps: int) -> RecordPlan:
    """The fewest-step plan within SNR_TOLERANCE of the best score, among those with >= min_steps steps (or
    the plan with the most steps, when none has that many)."""
    eligible = [p for p in plans if p.steps >= min_steps] or [max(plans, key=lambda p: p.steps)]
    best = max(p.score for p in eligible)
    return min((p for p in eligible if p.score >= (1 - SNR_TOLERANCE) * best), key=lambda p: p.steps)


def plan_record_dp(privacy: PrivacyConfig, pairs: int, epochs: int, target_epsilon: float | None = None
                   ) -> RecordPlan:
    """The schedule for ``pairs`` training pairs over ``epochs`` epochs at privacy.target_epsilon (or the
    given target); PlanInfeasible when no sigma reaches it."""
    target = privacy.target_epsilon if target_epsilon is None else target_epsilon
    if target is None or not target > 0:
        raise PlanInfeasible(f"a plan needs a target epsilon > 0, got {target}")
    if pairs < 1 or epochs < 1:
        raise PlanInfeasible(f"a plan needs >= 1 training pair and >= 1 epoch, got {pairs} pairs, {epochs} epochs")
    return choose(candidates(privacy, pairs, epochs, target), privacy.plan_min_steps)


def planned_record_dp(cfg: FedgaiConfig, pairs: int) -> tuple[PrivacyConfig, int, RecordPlan | None]:
    """(privacy settings, training batch, plan) a record-level trainer runs with: planned when
    privacy.planned (privacy.plan, by default on whenever a target epsilon is set), else the config's sigma and
    train.batch_size (plan None)."""
    if not cfg.privacy.planned:
        return cfg.privacy, cfg.train.batch_size, None
    try:
        plan = plan_record_dp(cfg.privacy, pairs, run_epochs(cfg))
    except PlanInfeasible as err:
        if cfg.privacy.plan:  # asked for by name: the run must not start on another schedule
            raise
        # The default plan of a target no schedule reaches: train as set, and the ledger refuses what the target
        # cannot pay for (a studio in a federation then sends its budget notice instead of failing).
        log.warning("%s; privacy.plan is not set, so training with privacy.noise_multiplier %s and train.batch_size "
                    "%s, within the ledger's budget", err, cfg.privacy.noise_multiplier, cfg.train.batch_size)
        return cfg.privacy, cfg.train.batch_size, None
    return plan.privacy(cfg.privacy), plan.batch_size, plan


def statistics_epsilon(privacy: PrivacyConfig) -> float:
    """What the one AdaIN_SD statistics release costs on its own: the floor of every record-level run."""
    release = record_level_steps(privacy, 1, 1, 1)[0]
    return compute_epsilon([release], privacy.delta, privacy.accountant)


def _infeasible(privacy: PrivacyConfig, pairs: int, epochs: int, target: float) -> str:
    """Why no schedule reaches ``target``, and what would."""
    stats = statistics_epsilon(privacy)
    return (f"target epsilon {target} is out of reach for {pairs} training pairs over {epochs} epochs at delta "
            f"{privacy.delta}: no batch gets there with sigma <= {MAX_PLANNED_NOISE:g} (the AdaIN_SD statistics "
            f"release alone costs {stats:.3f} at privacy.stats_noise_multiplier {privacy.stats_noise_multiplier}); "
            "raise the target, train fewer epochs, or raise privacy.stats_noise_multiplier")
