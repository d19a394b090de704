"""Loading a studio's generator (full or compressed) from its checkpoint and running it with torch."""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedgai.config import FedgaiConfig
from fedgai.device import resolve_device
from fedgai.edge.framing import sketch_files
from fedgai.edge.lite import build_compressed
from fedgai.edge.runtime import check_spec, resolve_model
from fedgai.models import Encoder, build_encoder, build_generator

COMPRESSED_FORMAT = "fedgai-compressed/1"
SPEC_FILE = "spec.json"


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A fedgai checkpoint's dict, loaded with weights_only=True (no code runs); clear errors otherwise."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a fedgai checkpoint ({str(err).splitlines()[0]})") from err
    if not isinstance(state, dict) or not {"generator", "config", "metadata"} <= state.keys():
        raise ValueError(f"{path} is not a fedgai generator checkpoint (no generator/config/metadata inside)")
    return state


@dataclass
class StudioModel:
    """A studio's frozen encoder and trained generator, rebuilt from a checkpoint."""

    cfg: FedgaiConfig
    metadata: dict[str, Any]
    encoder: Encoder
    generator: nn.Module
    compressed: bool


def load_studio_model(path: Path, device: torch.device | str = "cpu") -> StudioModel:
    """Rebuild encoder + generator (full, or compressed if `fedgai compress` wrote it) in eval mode."""
    state = read_checkpoint(path, device)
    cfg = FedgaiConfig.from_dict(state["config"]).with_overrides({"model.encoder": state["metadata"]["encoder"]})
    encoder = build_encoder(cfg.model).to(device)
    compressed = state.get("format") == COMPRESSED_FORMAT
    generator = build_compressed(cfg, encoder) if compressed else build_generator(cfg, encoder)
    generator.load_state_dict(state["generator"])
    return StudioModel(cfg, state["metadata"], encoder, generator.to(device).eval(), compressed)


class SketchPipeline(nn.Module):
    """photo (RGB in [0, 1]) -> sketch ([0, 1], 1 = paper): frozen encoder, AdaIN_SD statistics and generator
    in one module, which is what gets exported."""

    def __init__(self, encoder: Encoder, generator: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.generator = generator

    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        return (self.generator(self.encoder(photo * 2 - 1)) + 1) / 2


@contextlib.contextmanager
def quiet_torchscript() -> Iterator[None]:
    """torch.jit warns that it is deprecated on every call, and tracing flags the encoder's constant channel
    check; TorchScript is still what designers' tools load, and export verifies it on another shape."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


class Sketcher:
    """Photo -> sketch with a studio checkpoint (full or compressed generator; its encoder is rebuilt)."""

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        kind, path = resolve_model(Path(checkpoint))
        if kind != "checkpoint":
            raise ValueError(f"{path} is an exported {kind} model, not a checkpoint; use fedgai.edge.open_runner")
        self.device = resolve_device(device)
        self.model = load_studio_model(path, self.device)
        self.image_size = self.model.cfg.model.image_size
        self.encoder, self.generator = self.model.encoder, self.model.generator
        self.pipeline = SketchPipeline(self.encoder, self.generator).eval()

    @torch.no_grad()
    def __call__(self, photos: torch.Tensor) -> torch.Tensor:
        """[-1, 1] photos -> [-1, 1] sketches (the training convention)."""
        return self.generator(self.encoder(photos.to(self.device))).cpu()

    @torch.no_grad()
    def run(self, photos: np.ndarray) -> np.ndarray:
        """The exported models' convention: [0, 1] RGB batch -> [0, 1] sketch batch."""
        return self.pipeline(torch.from_numpy(photos).to(self.device)).cpu().numpy()

    def sketch_files(self, inputs: list[Path], out: Path, size: int | None = None,
                     progress: bool = True) -> list[Path]:
        """Write `<out>/<stem>.png` for every photo, whole and at its own aspect ratio (see framing)."""
        return sketch_files(self.run, inputs, out, size=size, progress=progress)


class TorchScriptSketcher:
    """A TorchScript file written by `fedgai export` (no fedgai model code needed to run it)."""

    def __init__(self, path: Path, device: str = "auto"):
        self.device = resolve_device(device)
        extra = {SPEC_FILE: ""}
        with quiet_torchscript():
            self.module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        self.spec = check_spec(extra[SPEC_FILE], path)

    @torch.no_grad()
    def __call__(self, photos: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(photos).to(self.device)).cpu().numpy()
