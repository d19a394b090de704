"""The optional parts of a studio's training, each a small object plugged into StudioTrainer's one loop
(trainer.py): record-level DP (record_dp.py), Ditto's personal generator (ditto.py), public edge styles
(public_styles.py), unpaired photos (unpaired.py) and per-pair AdaIN_SD statistics (adain_sampling.py).

The loop itself is always the same: per item of an epoch's schedule (``Updates``), a D step then a G step, then
each ``Feature``'s ``after_step``. A feature overrides only the hooks it needs; the base class's do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedgai.objective import PairBatch


@dataclass
class TrainStep:
    """What a GAN step trained on, for the features that act after it: the batch, the unpaired photos the critics
    saw (None when unused) and the batch's (pair indices, flips) when it came from the epoch's schedule."""

    batch: PairBatch
    unpaired_photos: torch.Tensor | None = None
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None


class Feature:
    """An optional training feature. Every hook does nothing here, so a feature states only what it changes."""

    def train(self) -> None:
        """Put the feature's own networks in training mode (called where the trainer's are)."""

    def after_step(self, step: TrainStep) -> dict[str, float]:
        """Extra updates after D's and G's; returns their loss values for the epoch's log."""
        return {}

    def received_global(self) -> None:
        """The federation's entries were just loaded into the networks that cross the wire."""

    def state_to_save(self) -> dict[str, Any]:
        """Checkpoint entries the feature needs to resume (keys must not clash with the trainer's)."""
        return {}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Resume from a checkpoint holding ``state_to_save()``'s entries."""


class Updates(Protocol):
    """How an epoch is cut into steps and how one step updates D then G: batched (trainer.BatchUpdates) or
    per pair under record-level DP (record_dp.PrivateUpdates)."""

    def epoch(self) -> Sequence:
        """This epoch's items, one per step (called once at the start of each epoch)."""

    def step(self, item: Any) -> dict[str, float]:
        """One D update then one G update; their loss values."""

    def fit_statistics(self, adain: torch.nn.Module, taps: list[list[torch.Tensor]],
                       sketches: list[torch.Tensor]) -> None:
        """Fit AdaIN_SD's statistics to the studio's sketch set (``taps``: the encoder's, in chunks)."""

    def metadata(self) -> dict[str, Any]:
        """What the run's metadata.json records of the schedule."""

    def summary(self) -> dict[str, float]:
        """Values ``train_epochs`` reports beside the mean losses."""
