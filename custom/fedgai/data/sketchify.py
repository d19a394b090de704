"""Edge-detected sketches for photo folders (the paper's route for DeepFashion-like data).

All sizes are given for a 256 px short side and scale with the image, so a style looks the same at
any resolution. XDoG follows Winnemoeller et al. 2012: S = (1 + p) G_sigma - p G_{k sigma} on the
contrast-stretched luminance, then T = 1 where S >= eps, else 1 + tanh(phi (S - eps)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, gaussian_filter
from skimage.color import rgb2gray, rgba2rgb
from skimage.exposure import rescale_intensity
from skimage.feature import canny
from skimage.morphology import disk
from skimage.util import img_as_float32
from tqdm import tqdm

from fedgai.data.studio import MIN_SIZE, StudioDataError, decode_problem, list_images, load_array

SKETCH_STYLES: dict[str, str] = {
    "contour": "Canny edges, thin black lines only",
    "xdog": "eXtended Difference of Gaussians: pencil-like lines with a little tone",
    "marker": "Canny edges dilated into bold marker outlines",
    "hatching": "XDoG lines plus diagonal hatching (cross-hatched where darkest)",
    "soft": "blurred wide XDoG with smudged tone, like soft charcoal",
}

# XDoG parameters at 256 px: sigma (px), k, p, eps, phi.
XDOG = {"sigma": 0.9, "k": 1.6, "p": 20.0, "eps": 0.1, "phi": 3.0}
# Hatching wants lines only (no tone), so its XDoG is thresholded lower and harder.
LINES_ONLY = {"eps": 0.0, "phi": 8.0}


def sketchify_image(rgb: np.ndarray, style: str) -> np.ndarray:
    """A uint8 H x W sketch (255 = white paper) of an H x W x 3 photo (uint8 or float in [0, 1]);
    H x W grayscale and H x W x 4 (composited on white) are accepted too."""
    if style not in SKETCH_STYLES:
        raise ValueError(f"unknown sketch style {style!r}; choose one of {', '.join(SKETCH_STYLES)}")
    gray = _luminance(rgb)
    unit = min(gray.shape) / 256
    ink = {"contour": _contour, "xdog": _xdog_style, "marker": _marker, "hatching": _hatching,
           "soft": _soft}[style](gray, unit)
    return np.uint8(np.round(255 * (1 - np.clip(ink, 0.0, 1.0))))


def sketchify_folder(photos_dir: str | Path, style: str, out: str | Path, size: int | None = None,
                     progress: bool = True) -> Path:
    """Turn a folder of photos into a studio folder ``out`` (photos/, sketches/, studio.json).

    Every photo is checked first: if any cannot be used, one StudioDataError lists them all and nothing is
    written. ``photos_dir`` is only read; ``out`` must be new or empty and outside it.
    """
    if style not in SKETCH_STYLES:
        raise ValueError(f"unknown sketch style {style!r}; choose one of {', '.join(SKETCH_STYLES)}")
    if size is not None and size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")
    photos_dir, out = Path(photos_dir), Path(out)
    _check_out(photos_dir, out)
    photos = _usable_photos(photos_dir, size)
    (out / "photos").mkdir(parents=True, exist_ok=True)
    (out / "sketches").mkdir(exist_ok=True)
    for path in tqdm(photos, desc=f"sketchify ({style})", unit="photo", disable=not progress):
        rgb = _resized(load_array(path), size)
        Image.fromarray(rgb, "RGB").save(out / "photos" / f"{path.stem}.png")
        Image.fromarray(sketchify_image(rgb, style), "L").save(out / "sketches" / f"{path.stem}.png")
    meta = {"name": out.resolve().name, "style": style}
    (out / "studio.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _check_out(photos_dir: Path, out: Path) -> None:
    if not photos_dir.is_dir():
        raise StudioDataError(photos_dir, ["folder does not exist"], what="photos folder")
    source, target = photos_dir.resolve(), out.resolve()
    if target == source or target.is_relative_to(source):
        raise ValueError(f"output {out} is inside the photos folder {photos_dir}; choose a folder outside it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; choose a new output folder")


def _usable_photos(photos_dir: Path, size: int | None) -> list[Path]:
    """All images of the folder, or one error listing every unreadable, too small or clashing file."""
    photos = list_images(photos_dir)
    problems = [msg for p in photos if (msg := decode_problem(p, p.name, MIN_SIZE))]
    stems: dict[str, list[str]] = {}
    for path in photos:
        stems.setdefault(path.stem, []).append(path.name)
    problems += [f"{' and '.join(names)}: duplicate stem {stem!r}"
                 for stem, names in stems.items() if len(names) > 1]
    if not photos:
        problems.append("no images (.png, .jpg, .jpeg, .webp) found")
    if problems:
        raise StudioDataError(photos_dir, problems, what="photos folder")
    return photos


def _resized(array: np.ndarray, size: int | None) -> np.ndarray:
    """uint8 RGB, scaled so the short side is ``size`` (None keeps the original)."""
    rgb = np.uint8(np.round(np.repeat(array, 3 // array.shape[-1], axis=-1) * 255))
    if size is None:
        return rgb
    height, width = rgb.shape[:2]
    scale = size / min(height, width)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return np.asarray(Image.fromarray(rgb, "RGB").resize(new, Image.Resampling.LANCZOS))


def _luminance(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(img_as_float32(image))
    if image.ndim == 3 and image.shape[-1] == 3:
        gray = rgb2gray(img_as_float32(image))
    elif image.ndim == 2:
        gray = img_as_float32(image)
    else:
        raise ValueError(f"expected an H x W, H x W x 3 or H x W x 4 image, got shape {image.shape}")
    low, high = np.percentile(gray, (1, 99))
    stretched = rescale_intensity(gray, in_range=(low, max(high, low + 1e-3)), out_range=(0.0, 1.0))
    return stretched.astype(np.float32)


def _xdog(gray: np.ndarray, sigma: float, eps: float = XDOG["eps"], phi: float = XDOG["phi"]) -> np.ndarray:
    """Ink amount in [0, 1] of the XDoG response (0 = paper)."""
    k, p = XDOG["k"], XDOG["p"]
    sharpened = (1 + p) * gaussian_filter(gray, sigma) - p * gaussian_filter(gray, sigma * k)
    paper = np.where(sharpened >= eps, 1.0, 1.0 + np.tanh(phi * (sharpened - eps)))
    return (1.0 - paper).astype(np.float32)


def _canny(gray: np.ndarray, unit: float, sigma: float, high: float = 0.93) -> np.ndarray:
    """Canny edges; ``high``: the quantile of the gradient above which an edge starts (0.13 below it continues)."""
    return canny(gray, sigma=sigma * max(unit, 0.5), low_threshold=high - 0.13, high_threshold=high,
                 use_quantiles=True)


def _contour(gray: np.ndarray, unit: float) -> np.ndarray:
    return _canny(gray, unit, 1.6).astype(np.float32)


def _xdog_style(gray: np.ndarray, unit: float) -> np.ndarray:
    return _xdog(gray, XDOG["sigma"] * unit)


def _marker(gray: np.ndarray, unit: float) -> np.ndarray:
    edges = _canny(gray, unit, 2.5)
    return binary_dilation(edges, structure=disk(max(1, round(1.5 * unit)))).astype(np.float32)


def _hatching(gray: np.ndarray, unit: float) -> np.ndarray:
    lines = _xdog(gray, XDOG["sigma"] * unit, **LINES_ONLY)
    tone = gaussian_filter(gray, 2.0 * unit)
    rows, cols = np.indices(gray.shape, dtype=np.float32)
    spacing = max(3.0, 4.5 * unit)
    diagonal = (((rows + cols) % spacing) < max(1.0, unit)).astype(np.float32)
    cross = (((rows - cols) % spacing) < max(1.0, unit)).astype(np.float32)
    hatch = diagonal * (tone < 0.45) + cross * (tone < 0.22)
    return np.maximum(lines, np.clip(hatch, 0.0, 1.0) * 0.7)


def _soft(gray: np.ndarray, unit: float) -> np.ndarray:
    lines = gaussian_filter(_xdog(gray, 1.6 * XDOG["sigma"] * unit), 1.2 * unit)
    smudge = np.clip(0.55 - gaussian_filter(gray, 4.0 * unit), 0.0, 1.0) * 0.9
    return np.clip(lines * 0.85 + smudge, 0.0, 0.9)
