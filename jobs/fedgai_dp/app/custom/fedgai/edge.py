"""Sketching on a designer's machine: rebuild a studio's generator from its checkpoint and run it."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import list_images, read_image
from fedgai.models import Encoder, SketchGenerator, build_encoder, build_generator


class Sketcher:
    """Photo -> sketch with a trained studio generator (the encoder it was trained with is rebuilt)."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"model checkpoint {path} does not exist")
        state = torch.load(path, map_location=device, weights_only=False)
        if "generator" not in state or "config" not in state:
            raise ValueError(f"{path} is not a fedgai generator checkpoint (no generator/config inside)")
        cfg = FedgaiConfig.from_dict(state["config"])
        cfg = cfg.with_overrides({"model.encoder": state["metadata"]["encoder"]})
        self.image_size = cfg.model.image_size
        self.encoder: Encoder = build_encoder(cfg.model).to(device)
        self.generator: SketchGenerator = build_generator(cfg, self.encoder).to(device).eval()
        self.generator.load_state_dict(state["generator"])
        self.device = device

    @torch.no_grad()
    def __call__(self, photos: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(photos.to(self.device))).cpu()

    def sketch_files(self, inputs: list[Path], out: Path, batch: int = 8, progress: bool = True) -> list[Path]:
        """Write `<out>/<stem>.png` for every photo (folders are expanded)."""
        photos = expand_inputs(inputs)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i in tqdm(range(0, len(photos), batch), desc="sketching", disable=not progress):
            chunk = photos[i : i + batch]
            images = torch.stack([read_image(p, 3, self.image_size) for p in chunk])
            for path, sketch in zip(chunk, self(images), strict=True):
                target = out / f"{path.stem}.png"
                save_image((sketch + 1) / 2, target)
                written.append(target)
        return written


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by their images; missing paths are an error naming them."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing)}")
    photos: list[Path] = []
    for p in inputs:
        photos.extend(list_images(p) if p.is_dir() else [p])
    if not photos:
        raise FileNotFoundError(f"no images (png/jpg/jpeg/webp) in {', '.join(map(str, inputs))}")
    return photos
