"""Where training and inference run: the ``train.device`` / ``--device`` setting made concrete."""

from __future__ import annotations

import torch

from fedgai.config import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(setting: str) -> torch.device:
    """"auto" = the first CUDA GPU when torch sees one, else the CPU; an explicit GPU must exist."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {setting!r} requested but torch sees no CUDA GPU; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {setting!r} requested but only {torch.cuda.device_count()} GPU(s) are visible")
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA where the GPU supports it ("auto") or is told to ("bf16"); None = float32."""
    if device.type != "cuda" or setting == "off":
        return None
    if setting == "auto" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16
