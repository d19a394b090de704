"""Loss terms of the FedGAI objective: Gram (style), hinge adversarial, CLIP (semantic), FedDecorr.

Each is a plain function of tensors so it can be tested against a hand computation; weights live in
config.LossConfig.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from fedgai.config import LossConfig
from fedgai.models import channel_statistics
from fedgai.privacy.policy import hub_download_refusal

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's file names on the Hugging Face hub (a .safetensors copy is preferred when present).
CLIP_WEIGHTS = "open_clip_pytorch_model.bin"
CLIP_SAFE_WEIGHTS = "open_clip_model.safetensors"
# Set by `fedgai simulate` for its studio processes when the CLIP weights cannot be had (the reason).
CLIP_UNAVAILABLE_ENV = "FEDGAI_CLIP_UNAVAILABLE"
CLIP_HOW_TO_ENABLE = ("Put the checkpoint in the Hugging Face cache or set loss.clip_pretrained to a local file to "
                      "enable it.")


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


def feature_matching_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L1 between the critic's features of a generated sketch and of its real pair (pix2pixHD's term).

    Unlike the hinge term's one scalar per sketch, it gives the generator a dense, paired signal through the
    critic, so a critic that learned sketch styles from every studio (the shared D) shapes each generator.
    The real side is a fixed target (detached); the critic's own update stays the hinge loss.
    """
    return (fake - real.detach()).abs().mean()


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
    """open_clip's model from a pretrained tag or local checkpoint; offline, say so once and disable the term."""
    if clip_off(cfg):
        return None, ClipStatus(False, "disabled in config (loss.clip = 0 or loss.clip_pretrained = 'none')")
    unavailable = os.environ.get(CLIP_UNAVAILABLE_ENV)
    if unavailable:  # fedgai simulate found no weights: open_clip is not even imported (~140 MB a process)
        return None, ClipStatus(False, unavailable)
    visual, reason = _clip_visual(cfg.clip_model, cfg.clip_pretrained)
    if visual is None:
        return None, ClipStatus(False, reason)
    return ClipLoss(visual, visual.image_size[0]), ClipStatus(True, reason)


@functools.cache
def clip_checkpoint(model_name: str, source: str) -> tuple[str | None, str | None, dict]:
    """(local checkpoint, None, open_clip tag) or (None, why not, tag): local file, caches, then one download
    when the hub answers. Builds no model."""
    import open_clip

    if _is_file(source):
        return (source, None, {}) if Path(source).is_file() else (
            None, f"loss.clip_pretrained file {source} does not exist", {})
    tag = open_clip.get_pretrained_cfg(model_name, source)
    if not tag:
        return None, f"unknown CLIP weights '{model_name}/{source}'", {}
    return (*_tag_checkpoint(tag), tag)


@functools.cache
def _clip_visual(model_name: str, source: str) -> tuple[nn.Module | None, str]:
    """One load attempt (and at most one warning) per process: in-process simulator studios share the frozen
    model or the failure. A tag's weights come from the local caches first; the hub is asked only when
    online (HF_HUB_OFFLINE unset) and the weights are not cached."""
    import open_clip

    checkpoint, problem, tag = clip_checkpoint(model_name, source)
    if checkpoint is not None:
        try:
            model = open_clip.create_model(model_name, pretrained=checkpoint,
                                           force_quick_gelu=tag.get("quick_gelu", False))
        except (RuntimeError, OSError) as err:
            problem = f"CLIP weights {checkpoint} cannot be loaded ({err})"
        else:
            log.info("CLIP loss: %s/%s", model_name, source)
            return model.visual, f"{model_name}/{source}"
    log.warning("CLIP term DISABLED for this process: %s. %s", problem, CLIP_HOW_TO_ENABLE)
    return None, problem


def _is_file(source: str) -> bool:
    """loss.clip_pretrained names a local checkpoint file (else an open_clip tag such as 'openai')."""
    return "/" in source or source.endswith((".pt", ".bin", ".safetensors"))


def clip_off(cfg: LossConfig) -> bool:
    """The config switches the CLIP term off (weight 0, or no weights to load)."""
    return cfg.clip == 0 or cfg.clip_pretrained == "none"


def hub_marked_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection, asked once per process. When it does not,
    HF_HUB_OFFLINE is set for this process and the studio processes it starts, so that none of them spends
    the download's retries (and their multi-line errors) on it."""
    if hub_marked_offline():
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    answered: list[bool] = []
    # A thread: a name lookup without a network can block longer than any socket timeout.
    probe = threading.Thread(target=lambda: answered.append(_connects(host, 443, timeout)), daemon=True)
    probe.start()
    probe.join(timeout + 1)
    if not answered or not answered[0]:
        os.environ["HF_HUB_OFFLINE"] = "1"
        return False
    return True


def _connects(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def clip_preflight(cfg: LossConfig) -> dict[str, str]:
    """Before studios start (``fedgai simulate``): decide once whether the CLIP weights can be had. When they
    cannot, one console line, and the environment for the studio processes (``CLIP_UNAVAILABLE_ENV``) under
    which they skip open_clip altogether instead of each importing it, retrying and warning."""
    if clip_off(cfg):
        return {}
    checkpoint, problem, _ = clip_checkpoint(cfg.clip_model, cfg.clip_pretrained)
    if checkpoint is not None:
        return {}
    print(f"CLIP term off for every studio: {problem}. {CLIP_HOW_TO_ENABLE}")
    return {CLIP_UNAVAILABLE_ENV: problem}


def _tag_checkpoint(tag: dict) -> tuple[str | None, str | None]:
    """(local file, None) for a known open_clip tag, or (None, why not): cache first, then one download where
    the site allows it (a studio's policy: allow_hub_downloads)."""
    from huggingface_hub import try_to_load_from_cache

    repo, filename = os.path.split(tag.get("hf_hub", ""))
    names = [CLIP_SAFE_WEIGHTS, CLIP_WEIGHTS] if filename in ("", CLIP_WEIGHTS) else [filename]
    for name in names if repo else []:
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):
            return cached, None
    url_file = Path("~/.cache/clip").expanduser() / os.path.basename(tag.get("url", ""))
    if tag.get("url") and url_file.is_file():
        return str(url_file), None
    refusal = hub_download_refusal()  # before even probing the hub: a studio's network use is its site's call
    if refusal:
        return None, f"weights {tag.get('hf_hub') or tag.get('url')} are not in the local cache, and {refusal}"
    if not hub_reachable():
        return None, (f"weights {tag.get('hf_hub') or tag.get('url')} are not in the local cache and the hub "
                      "cannot be reached (offline)")
    import open_clip

    try:
        return open_clip.download_pretrained(tag), None
    except (OSError, RuntimeError) as err:  # FileNotFoundError from the hub, URLError from a plain URL
        return None, f"weights could not be downloaded ({err})"


def statistics_consistency(fake_taps: list[torch.Tensor], target: list[tuple[torch.Tensor, torch.Tensor]]
                           ) -> torch.Tensor:
    """AdaIN's style loss: the re-encoded output's channel statistics against the injected ones, summed over taps
    of MSE(mean) + MSE(std), each relative to the target's energy so every tap weighs alike. Zero iff the output
    carries exactly the statistics it was asked to draw in; the term that makes a renderer obey its code."""
    total = fake_taps[0].new_zeros(())
    for (mean, std), (t_mean, t_std) in zip(channel_statistics(fake_taps), target, strict=True):
        t_mean, t_std = t_mean.expand_as(mean), t_std.expand_as(std)
        total = total + F.mse_loss(mean, t_mean) / (t_mean.pow(2).mean() + 1e-8) \
            + F.mse_loss(std, t_std) / (t_std.pow(2).mean() + 1e-8)
    return total
