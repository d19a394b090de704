"""The ink (stroke) score: cheap enough for every round at a studio. It lives below both its users, the trainer's
``quality()`` and evaluation/metrics.py, because training must not depend on evaluation."""

from __future__ import annotations

import torch


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to [0, 1] (paper white = 1)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def ink_mask(sketches: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Stroke pixels: darker than `threshold` on the [0, 1] scale (paper is white). (N, H, W) bool."""
    return to_unit(sketches).mean(dim=1) < threshold


def ink_iou(fake: torch.Tensor, real: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean per-pair intersection-over-union of the stroke pixels (two blank pages agree: 1)."""
    a, b = ink_mask(fake, threshold), ink_mask(real, threshold)
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return float(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).mean())
