"""Record-level DP's schedule (privacy.dp: record): every epoch a fixed number of steps, each one D update then
one G update on its own Poisson sample of pairs, every pair's gradient clipped and the sum noised
(privacy/record.py); AdaIN_SD's statistics released through the Gaussian mechanism. No autocast: per-pair
clipping is checked in float32 only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedgai.config import FedgaiConfig
from fedgai.models import gram_matrix
from fedgai.objective import CriticPairs, GeneratorPairs, Objective, PairBatch
from fedgai.pair_features import PairFeatureCache
from fedgai.privacy.planner import planned_record_dp
from fedgai.privacy.record import RecordLevelDP, train_only


def record_level_dp(cfg: FedgaiConfig, pairs: int, generator: nn.Module, discriminator: nn.Module,
                    ledger: str | Path, studio: str) -> tuple[RecordLevelDP, dict[str, Any]]:
    """Record-level DP as configured: the planned schedule when privacy.plan is on (privacy/planner.py), and
    DP-SGD on privacy.record_trainable's parameters only (the rest stay where they started). Returns it and
    what the run's metadata records of it."""
    privacy, batch, plan = planned_record_dp(cfg, pairs)
    noised = train_only(cfg.privacy.record_trainable, generator, discriminator)
    details = {"dp_noised_parameters": noised, "dp_noise_multiplier": privacy.noise_multiplier,
               "dp_batch_size": batch, "dp_plan": dataclasses.asdict(plan) if plan else None}
    return RecordLevelDP(privacy, pairs, batch, ledger, studio), details


@dataclasses.dataclass
class PrivateUpdates:
    """The per-pair schedule (features.Updates): D then G, each through ``RecordLevelDP.step``."""

    dp: RecordLevelDP
    details: dict[str, Any]
    pairs: PairFeatureCache
    objective: Objective
    generator: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer

    def epoch(self) -> range:
        """Charged before it runs, so that a refused epoch costs nothing."""
        self.dp.charge_epoch()
        return range(self.dp.steps_per_epoch)

    def step(self, item: int) -> dict[str, float]:
        """One D step, then one G step, each on its own Poisson sample (the pair is the unit: one clipped
        gradient each; see Objective's per-pair losses). An empty sample still takes its noised step."""
        batch = self._sampled()
        critic = None if batch is None else self._critic_pairs(batch).columns()
        out = self.dp.step(self.objective.discriminator, self.opt_d, self.objective.discriminator_pair_loss, critic)
        batch = self._sampled()
        pairs = None if batch is None else GeneratorPairs.of(batch).columns()
        return out | self.dp.step(self.generator, self.opt_g, self.objective.generator_pair_loss, pairs)

    @torch.no_grad()
    def _critic_pairs(self, batch: PairBatch) -> CriticPairs:
        fake = self.generator(batch.real.photo_taps)
        grams = [gram_matrix(t) for t in self.objective.encoder(fake)]
        return CriticPairs(batch.real.sketch_grams, grams, batch.photo, batch.sketch, fake)

    def _sampled(self) -> PairBatch | None:
        """A Poisson sample's (randomly flipped) pairs and features; None for an empty sample."""
        indices = self.dp.sample()
        if len(indices) == 0:
            return None
        return PairBatch(*self.pairs.batch(indices, torch.rand(len(indices)) < 0.5))

    def fit_statistics(self, adain: nn.Module, taps: list[list[torch.Tensor]], sketches: list[torch.Tensor]) -> None:
        """Released through the Gaussian mechanism; a blank page (white paper) is the reference."""
        blank = self.objective.encoder(torch.ones_like(sketches[0]).unsqueeze(0).to(taps[0][0].device))
        self.dp.fit_adain(adain, taps, blank)

    def metadata(self) -> dict[str, Any]:
        return self.details

    def summary(self) -> dict[str, float]:
        return {"dp_epsilon": self.dp.epsilon()}
