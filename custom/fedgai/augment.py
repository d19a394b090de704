"""DiffAugment (Zhao et al. 2020) for the styled renderer's critic: the few-pair studio's defence against a critic
that memorises its handful of sketches. Colour, translation and cutout, differentiable (kornia), applied to every
critic input, real and fake alike, so G's gradient passes through the same augmentation D saw."""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.cache
def _augmentations() -> tuple[nn.Module, nn.Module]:
    import kornia.augmentation as K  # ~0.3 s to import; only the styled renderer's critic needs it

    colour = K.ColorJiggle(0.3, 0.3, 0.3, p=1.0)
    geometry = nn.Sequential(K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), padding_mode="border", p=1.0),
                             K.RandomErasing(scale=(0.06, 0.25), ratio=(1.0, 1.0), value=0.0, p=1.0))
    return colour, geometry


def diff_augment(photo: torch.Tensor, sketch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(photo, sketch) in [-1, 1] with the photo's colours jittered and one random translation and cutout per
    pair, the same for photo and sketch, so the critic still judges whether the lines fit the photo."""
    colour, geometry = _augmentations()
    both = geometry(torch.cat([colour((photo + 1) / 2) * 2 - 1, sketch], 1))
    return both[:, :3], both[:, 3:]


def no_augment(photo: torch.Tensor, sketch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return photo, sketch
