"""train.unpaired_batch: photos without a sketch, judged by the critics beside the paired fakes (adversarial
terms only: no paired term has a real sketch to compare with)."""

from __future__ import annotations

import torch
from torch import nn

from fedgai.data import PhotoDataset
from fedgai.models import gram_matrix
from fedgai.objective import Unpaired


class UnpairedPhotos:
    """Draws each step's unpaired photos and G's sketches of them."""

    def __init__(self, photos: PhotoDataset | None, batch: int):
        """``photos``: None when the option is off or the studio has none (then ``draw`` gives None)."""
        self.photos = photos
        self.batch = batch

    def draw(self) -> torch.Tensor | None:
        """``batch`` random unpaired photos, each flipped with probability 1/2 (None when unused)."""
        if self.photos is None:
            return None
        picks = torch.randint(len(self.photos), (self.batch,))
        flips = torch.rand(len(picks)) < 0.5
        return torch.stack([self.photos[int(i)].flip(-1) if f else self.photos[int(i)]
                            for i, f in zip(picks, flips, strict=True)])


def unpaired_fakes(photo: torch.Tensor, generator: nn.Module, encoder: nn.Module) -> Unpaired:
    """``generator``'s sketches of unpaired photos and their Gram matrices, for the critics' terms."""
    with torch.no_grad():
        taps = encoder(photo)
    fake = generator(taps)
    return Unpaired(photo, fake, [gram_matrix(t) for t in encoder(fake)])
