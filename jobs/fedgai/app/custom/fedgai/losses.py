"""Loss terms of the FedGAI objective: Gram (style), hinge adversarial, CLIP (semantic), FedDecorr.

Each is a plain function of tensors so it can be tested against a hand computation; weights live in
config.LossConfig.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedgai.config import LossConfig

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gram_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Sum over encoder taps of the MSE between Gram matrices, each relative to the real Gram's energy.

    Zero iff the styles' channel statistics agree. The relative scale makes one weight fit every encoder
    (raw Gram magnitudes differ ~100x between VGG-16 and EfficientNet taps).
    """
    return sum(
        F.mse_loss(f, r) / (r.detach().pow(2).mean() + 1e-12) for r, f in zip(real, fake, strict=True)
    )


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for the critic: relu(1 - D(real)) + relu(1 + D(fake)), batch means."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge game: -D(fake)."""
    return -fake_logits.mean()


def feddecorr_loss(x: torch.Tensor) -> torch.Tensor:
    """FedDecorr (Shi et al., ICLR 2023): penalise correlated dimensions of a batch of representations.

    Standardise each dimension over the batch, corr = x^T x, return the mean squared off-diagonal entry / N.
    Counters the dimensional collapse that heterogeneous studios cause in the shared network.
    """
    n, c = x.shape
    if n == 1:
        return x.new_zeros(())
    x = (x - x.mean(0)) / torch.sqrt(1e-8 + x.var(0))
    corr = x.T @ x
    off_diagonal = corr - torch.diag(torch.diagonal(corr))
    return (off_diagonal**2).sum() / (c * (c - 1)) / n


def content_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of globally pooled deepest encoder features (HAIGEN's content term)."""
    return (1 - F.cosine_similarity(real.mean(dim=(2, 3)), fake.mean(dim=(2, 3)), dim=1)).mean()


@dataclass
class ClipStatus:
    """What became of the CLIP term; recorded in run metadata so a disabled term is never silent."""

    enabled: bool
    reason: str


class ClipLoss(nn.Module):
    """1 - cosine similarity of CLIP image embeddings, generated vs real sketch (HAIGEN's semantic term)."""

    def __init__(self, visual: nn.Module, size: int = 224):
        super().__init__()
        self.visual = visual.eval()
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.expand(-1, 3, -1, -1), size=self.size, mode="bilinear", align_corners=False)
        return self.visual(((x + 1) / 2 - self.mean) / self.std)

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.embed(real)
        return (1 - F.cosine_similarity(self.embed(fake), target, dim=1)).mean()


def load_clip(cfg: LossConfig) -> tuple[ClipLoss | None, ClipStatus]:
    """open_clip's model from a pretrained tag or local checkpoint; offline, say so and disable the term."""
    if cfg.clip == 0 or cfg.clip_pretrained == "none":
        return None, ClipStatus(False, "disabled in config (loss.clip = 0 or loss.clip_pretrained = 'none')")
    visual, reason = _clip_visual(cfg.clip_model, cfg.clip_pretrained)
    if visual is None:
        log.warning(
            "CLIP term DISABLED: %s. Put the checkpoint in the Hugging Face cache or set loss.clip_pretrained "
            "to a local file to enable it.", reason,
        )
        return None, ClipStatus(False, reason)
    log.info("CLIP loss: %s", reason)
    return ClipLoss(visual, visual.image_size[0]), ClipStatus(True, reason)


@functools.cache
def _clip_visual(model_name: str, source: str) -> tuple[nn.Module | None, str]:
    """One load attempt per process: in-process simulator studios share the frozen model (or the failure)."""
    if ("/" in source or source.endswith((".pt", ".bin", ".safetensors"))) and not Path(source).is_file():
        return None, f"loss.clip_pretrained file {source} does not exist"
    offline = os.environ.get("HF_HUB_OFFLINE")
    # Cached weights only: read before huggingface_hub is imported, so a missing file fails at once.
    os.environ["HF_HUB_OFFLINE"] = "1" if offline is None else offline
    try:
        import open_clip

        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=source)
    except (RuntimeError, OSError) as err:
        return None, f"CLIP weights '{model_name}/{source}' unavailable offline ({err})"
    finally:
        if offline is None:
            del os.environ["HF_HUB_OFFLINE"]
    return model.visual, f"{model_name}/{source}"
