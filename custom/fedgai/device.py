"""Where training and inference run: the ``train.device`` / ``--device`` setting made concrete."""

from __future__ import annotations

from pathlib import Path

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
    """bf16 autocast where the hardware computes it natively ("auto": a CUDA GPU with bf16, a CPU with AVX512-BF16
    or AMX) or where told to ("bf16"); None = float32."""
    if setting == "off" or device.type not in ("cuda", "cpu"):
        return None
    if setting == "auto" and not (torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_bf16()):
        return None
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (x86 avx512_bf16 or amx_bf16 in /proc/cpuinfo; False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
