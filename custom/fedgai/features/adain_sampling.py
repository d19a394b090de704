"""train.adain_sample_p: G draws some pairs with their own sketch's AdaIN_SD statistics instead of the set's, so
that it learns to follow the statistics it is given (what style fusion relies on)."""

from __future__ import annotations

import torch
from torch import nn

# AdaIN_SD statistics per encoder tap: (mean, std), batch-first.
Stats = list[tuple[torch.Tensor, torch.Tensor]]


class AdainSampling:
    """Which AdaIN_SD statistics G draws a training batch with: each pair's own with probability ``p``."""

    def __init__(self, p: float, encoder: nn.Module, device: torch.device):
        self.p = p
        self.encoder = encoder
        self.device = device

    def stats(self, generator: nn.Module, sketch: torch.Tensor, always_own: int = 0) -> Stats | None:
        """Per-pair statistics for ``generator``'s batch; None (the set's for all) when no pair draws its own. The
        last ``always_own`` pairs always do (train.public_mix's public pairs: the set's statistics are not theirs).
        At p 0 no random number is drawn, so runs without the option keep their random stream."""
        if not self.p and not always_own:
            return None
        pick = torch.rand(len(sketch)) < self.p if self.p else torch.zeros(len(sketch), dtype=torch.bool)
        pick[len(sketch) - always_own:] = True
        if not pick.any():
            return None
        adain = generator.adain
        with torch.no_grad():
            own = adain.sample_stats(self.encoder(sketch))
        pick = pick.to(self.device).view(-1, 1, 1, 1)
        return [(torch.where(pick, m, getattr(adain, f"mean{i}")), torch.where(pick, s, getattr(adain, f"std{i}")))
                for i, (m, s) in enumerate(own)]
