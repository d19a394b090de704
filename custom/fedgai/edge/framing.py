"""Whole-photo framing for sketching (numpy + Pillow only): no crop, the photo's own aspect ratio.

A photo is resized so that its longer side is the chosen size, padded (edge pixels repeated) up to the
network's multiple of 32, sketched, and the padding is cut away again, so every garment comes out whole.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

log = logging.getLogger(__name__)

# Input sides must be multiples of this (the encoder's coarsest stride times the decoder's extra pooling).
MULTIPLE = 32
DEFAULT_MAX_SIZE = 1024
# What Pillow raises for files that are not (complete) images.
DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)

# photos N x 3 x H x W float32 RGB in [0, 1] -> sketches N x 1 x H x W float32 in [0, 1] (1 = paper).
BatchRunner = Callable[[np.ndarray], np.ndarray]


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, folders replaced by their visible files; missing paths are an error naming them."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise FileNotFoundError(f"not found: {', '.join(missing)}")
    files: list[Path] = []
    for p in inputs:
        files.extend(sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
                     if p.is_dir() else [p])
    if not files:
        raise FileNotFoundError(f"no files in {', '.join(map(str, inputs))}")
    return files


def read_photo(path: Path) -> Image.Image | None:
    """The photo as upright RGB, transparency flattened onto white paper; None when it is not an image."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
    except DECODE_ERRORS:
        return None
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        paper = Image.new("RGBA", img.size, "white")
        return Image.alpha_composite(paper, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def output_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(w, h) at the photo's aspect ratio with the longer side `size` (default min(longer, 1024)), never upscaled."""
    longer = max(width, height)
    target = min(size or DEFAULT_MAX_SIZE, longer)
    scale = target / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_batch(photo: Image.Image, width: int, height: int) -> np.ndarray:
    """1 x 3 x H' x W' float32 in [0, 1]: resized to (width, height), then edge-padded to multiples of 32."""
    if photo.size != (width, height):
        photo = photo.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(photo, dtype=np.float32).transpose(2, 0, 1) / 255.0
    pad_h, pad_w = -height % MULTIPLE, -width % MULTIPLE
    return np.pad(array, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")[None]


def to_sketch(output: np.ndarray, width: int, height: int) -> Image.Image:
    """The first sketch of a N x 1 x H' x W' batch, padding removed, as an 8-bit grayscale image."""
    ink = np.clip(output[0, 0, :height, :width], 0.0, 1.0)
    return Image.fromarray(np.round(ink * 255.0).astype(np.uint8), mode="L")


def sketch_files(run: BatchRunner, inputs: list[Path], out: Path, size: int | None = None,
                 progress: bool = True) -> list[Path]:
    """Write `<out>/<stem>.png` (mode L) for every photo; non-images are skipped with a warning.

    `out` is created only once a sketch is ready, so a failing run leaves no empty folder behind.
    """
    if size is not None and size < MULTIPLE:
        raise ValueError(f"--size must be at least {MULTIPLE} px, got {size}")
    written: list[Path] = []
    for path in tqdm(expand_inputs(inputs), desc="sketching", unit="photo", disable=not progress):
        photo = read_photo(path)
        if photo is None:
            log.warning("skipping %s: not an image Pillow can read", path)
            continue
        width, height = output_size(*photo.size, size)
        sketch = to_sketch(run(to_batch(photo, width, height)), width, height)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{path.stem}.png"
        sketch.save(target)
        written.append(target)
    if not written:
        raise ValueError(f"none of the inputs is an image: {', '.join(map(str, inputs))}")
    return written
