"""Many public line styles for the public prior: hundreds of parameter draws of one procedural line drawer.

A style-conditioned renderer learns to follow its style code only if it was trained on many styles (issue 27
§1): with one style per studio nothing forces it to obey. This module draws public garment photos (the prior's
own random streams, no studio's data) as line sketches under a random ``LineStyle``: an edge detector and its
scale and threshold, then stroke width, jitter, pressure and smoothing.

The public families are edge-detector lines only (PUBLIC_FAMILIES). The demo studios' styles (data/
sketch_styles.py: hatching, stipple, double strokes, charcoal, brush, marker fills, construction lines) are
procedural too, and must never be drawn here: otherwise the prior would already hold the studios' styles and every
gain measured against it would be the prior's, not the federation's (tests/test_public_styles.py checks it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, grey_dilation, map_coordinates, sobel

from fedgai.data.demo import PALETTE
from fedgai.data.garments import KINDS, garment_tone, make_garment
from fedgai.data.photo_render import PRINTS, render_photo
from fedgai.data.sketchify import _canny, _luminance, _xdog

PUBLIC_FAMILIES: tuple[str, ...] = ("xdog", "canny", "sobel")
# What a public style may never be: the demo studios' families (sketch_styles.DEMO_STYLES) and their elements.
FORBIDDEN_ELEMENTS: tuple[str, ...] = ("hatching", "stipple", "double", "charcoal", "brush", "marker", "fill",
                                       "construction", "fine")
PUBLIC_STREAM = 7_340_041  # first entry of every public style's random stream (garments use prior.PRIOR_STREAM)


@dataclass(frozen=True)
class LineStyle:
    """One public line style. Lengths are in pixels at a 256 px short side and scale with the image."""

    family: str  # edge detector: xdog, canny or sobel
    scale: float  # the detector's Gaussian sigma
    threshold: float  # xdog: eps; canny: high quantile; sobel: quantile of the gradient magnitude kept
    width: float  # stroke width added by dilation (0 = the detector's own line)
    jitter: float  # amplitude of a smooth random displacement of the strokes
    pressure: float  # darkest ink, 1 = black
    smoothing: float  # Gaussian softening of the strokes

    def to_dict(self) -> dict[str, float | str]:
        return dataclasses.asdict(self)


def draw_style(rng: np.random.Generator) -> LineStyle:
    """A random public style: every family equally likely, continuous parameters uniform in their ranges."""
    family = PUBLIC_FAMILIES[rng.integers(len(PUBLIC_FAMILIES))]
    threshold = {"xdog": rng.uniform(-0.05, 0.25), "canny": rng.uniform(0.80, 0.95),
                 "sobel": rng.uniform(0.80, 0.95)}[family]
    return LineStyle(family=family, scale=float(rng.uniform(0.6, 3.0)), threshold=float(threshold),
                     width=float(rng.choice([0.0, rng.uniform(0.5, 4.0)])), jitter=float(rng.uniform(0.0, 3.0)),
                     pressure=float(rng.uniform(0.45, 1.0)), smoothing=float(rng.uniform(0.0, 1.5)))


def public_style(index: int) -> LineStyle:
    """Public style number ``index`` (seeded: the same index is the same style everywhere)."""
    return draw_style(np.random.default_rng([PUBLIC_STREAM, index]))


def public_photo(stream: int, item: int, size: int) -> Image.Image:
    """A public garment photo: every kind, the whole demo palette and every print equally likely."""
    rng = np.random.default_rng([stream, item])
    garment = make_garment(KINDS[rng.integers(len(KINDS))], rng)
    return render_photo(garment, garment_tone(garment, size), PALETTE, np.full(len(PRINTS), 1 / len(PRINTS)), rng,
                        size)


def render_line_style(rgb: np.ndarray, style: LineStyle, rng: np.random.Generator) -> np.ndarray:
    """A uint8 H x W sketch (255 = paper) of an H x W x 3 photo in ``style``; ``rng`` draws the jitter field."""
    gray = _luminance(rgb)
    unit = min(gray.shape) / 256
    ink = _detect(gray, style, unit)
    if style.width > 0:
        side = max(1, round(style.width * unit))
        ink = grey_dilation(ink, size=(side, side))
    if style.jitter > 0:
        ink = _jittered(ink, style.jitter * unit, rng)
    if style.smoothing > 0:
        ink = gaussian_filter(ink, style.smoothing * unit)
    return np.uint8(np.round(255 * (1 - style.pressure * np.clip(ink, 0.0, 1.0))))


def write_line_style_studio(out: Path, size: int, styles: int, per_style: int, stream: int) -> Path:
    """A studio folder of public line-style pairs: ``styles`` public styles, each drawing its own ``per_style``
    public garments (photo stream ``stream``) at 2x ``size`` (the loader reduces them). The styled renderer's prior
    trains on it (prior_build.py) and train.public_mix mixes it into every step (features/public_mix.py)."""
    (out / "photos").mkdir(parents=True)
    (out / "sketches").mkdir()
    for index in range(styles):
        style, rng = public_style(index), np.random.default_rng(index)
        for j in range(per_style):
            photo = public_photo(stream, 10_000 + index * per_style + j, 2 * size)
            name = f"{index:04d}-{j}.png"
            photo.save(out / "photos" / name)
            Image.fromarray(render_line_style(np.asarray(photo), style, rng), "L").save(out / "sketches" / name)
    meta = {"name": "public-line-styles", "licence": "CC0-1.0 (generated by fedgai)", "style": "public line styles"}
    (out / "studio.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def _detect(gray: np.ndarray, style: LineStyle, unit: float) -> np.ndarray:
    """Ink in [0, 1] (0 = paper) of the style's edge detector."""
    if style.family == "xdog":
        return _xdog(gray, style.scale * unit, eps=style.threshold)
    if style.family == "canny":
        return _canny(gray, unit, style.scale, high=style.threshold).astype(np.float32)
    if style.family == "sobel":
        smooth = gaussian_filter(gray, style.scale * unit)
        magnitude = np.hypot(sobel(smooth, 0), sobel(smooth, 1))
        return (magnitude >= np.quantile(magnitude, style.threshold)).astype(np.float32)
    raise ValueError(f"unknown public line family {style.family!r}; choose one of {', '.join(PUBLIC_FAMILIES)}")


def _jittered(ink: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """The strokes displaced by a smooth random field (a hand that wavers), amplitude in pixels."""
    h, w = ink.shape
    coarse = max(h, w) / 8
    fields = [gaussian_filter(rng.standard_normal((h, w)), coarse) for _ in range(2)]
    fields = [f / (np.abs(f).max() + 1e-8) * amplitude for f in fields]
    rows, cols = np.indices((h, w), dtype=np.float32)
    return map_coordinates(ink, [rows + fields[0], cols + fields[1]], order=1, mode="nearest").astype(np.float32)
