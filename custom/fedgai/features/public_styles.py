"""train.public_styles: after each GAN step, one more G update towards the batch's photos drawn in a random
public edge style, with that target's own AdaIN_SD statistics. The targets are made from the studio's own photos
only, so teaching G to follow its statistics needs no other studio's sketch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from fedgai.config import LossConfig
from fedgai.data.sketchify import SKETCH_STYLES, sketchify_image
from fedgai.features import Feature, TrainStep
from fedgai.losses import content_loss, gram_loss
from fedgai.models import gram_matrix


def public_style_targets(pairs: Dataset, count: int) -> torch.Tensor:
    """(pairs, public styles, 1, H, W): each of the first ``count`` training photos drawn in every public edge
    style (data/sketchify.py), in [-1, 1] like the sketches."""
    targets = []
    for i in range(count):
        rgb = ((pairs[i][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        targets.append(torch.stack([torch.from_numpy(sketchify_image(rgb, style)).float()[None] / 127.5 - 1
                                    for style in SKETCH_STYLES]))
    return torch.stack(targets)


class PublicStyles(Feature):
    """The extra G update; D neither trains nor judges it (the paired terms only: gram, content, pixel L1)."""

    def __init__(self, targets: torch.Tensor, generator: nn.Module, encoder: nn.Module,
                 optimizer: torch.optim.Optimizer, weights: LossConfig, autocast: Callable, device: torch.device):
        self.targets = targets
        self.generator = generator
        self.encoder = encoder
        self.opt = optimizer
        self.weights = weights
        self.autocast = autocast
        self.device = device

    def after_step(self, step: TrainStep) -> dict[str, float]:
        """Only for steps of the epoch's schedule: the targets are chosen by the batch's pair indices and flips."""
        if step.pairs is None:
            return {}
        return self.step(step.batch.real.photo_taps, *step.pairs)

    def step(self, photo_taps: list[torch.Tensor], indices: torch.Tensor, flips: torch.Tensor) -> dict[str, float]:
        """One G update towards the batch's photos in a random public edge style each."""
        styles = torch.randint(self.targets.shape[1], (len(indices),))
        target = self.targets[indices, styles]
        target = torch.where(flips.view(-1, 1, 1, 1), target.flip(-1), target).to(self.device)
        w = self.weights
        with self.autocast():
            with torch.no_grad():
                target_taps = self.encoder(target)
            fake = self.generator(photo_taps, self.generator.adain.sample_stats(target_taps))
            fake_taps = self.encoder(fake)
            loss = (w.gram * gram_loss([gram_matrix(t) for t in target_taps], [gram_matrix(t) for t in fake_taps])
                    + w.content * content_loss(target_taps[-1], fake_taps[-1])
                    + w.pixel_l1 * (fake - target).abs().mean())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"public_style": loss.item()}
