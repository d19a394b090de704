"""The demo studios' line styles: one garment geometry drawn the way each designer draws."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from fedgai.data.garments import SUPERSAMPLE, Garment, Points, Tone, closed, coverage, wide_blur

DEMO_STYLES: tuple[str, ...] = (
    "fine", "marker", "hatching", "construction", "double", "stipple", "charcoal", "brush",
)


def render_sketch(g: Garment, tone: Tone, style: str, rng: np.random.Generator, size: int) -> Image.Image:
    """The garment drawn in one designer's line style: white paper, dark lines."""
    renderers = {"fine": _fine, "marker": _marker, "hatching": _hatching, "construction": _construction,
                 "double": _double, "stipple": _stipple, "charcoal": _charcoal, "brush": _brush}
    ink = np.clip(renderers[style](g, tone, rng, size), 0.0, 1.0)
    return Image.fromarray(np.uint8(np.round(255 * (1 - ink))), "L")


def _strokes(g: Garment) -> dict[str, list[Points]]:
    """Line work by role; closed shapes repeat their first point."""
    return {"outline": [closed(g.outline)], "panels": [closed(p) for p in g.panels], "seams": list(g.seams),
            "folds": list(g.folds)}


def _lines(polys: list[Points], size: int, width: float, strength: float) -> np.ndarray:
    return coverage(polys, size, width=width) * strength


def _button_ink(g: Garment, size: int, filled: bool, strength: float) -> np.ndarray:
    circles = [_circle(x, y, r) for x, y, r in g.buttons]
    return (coverage(circles, size) if filled else coverage(circles, size, width=size / 256)) * strength


def _circle(x: float, y: float, r: float, steps: int = 16) -> Points:
    a = np.linspace(0, 2 * math.pi, steps)
    return np.stack([x + r * np.cos(a), y + r * np.sin(a)], axis=1)


def _fine(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    partial_folds = [f[: max(2, len(f) * 2 // 3)] for f in s["folds"]]
    return np.maximum.reduce([
        _lines(s["outline"] + s["panels"], size, 1.0 * u, 0.85),
        _lines(s["seams"], size, 0.8 * u, 0.5),
        _lines(partial_folds, size, 0.8 * u, 0.35),
        _button_ink(g, size, False, 0.8),
    ])


def _marker(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    flat_shadow = (tone.shade < 0.88) * tone.mask * 0.25
    return np.maximum.reduce([
        flat_shadow,
        _lines(s["outline"], size, 5.0 * u, 1.0),
        _lines(s["panels"], size, 3.0 * u, 1.0),
        _lines(s["seams"], size, 2.0 * u, 0.9),
        _button_ink(g, size, True, 1.0),
    ])


def _hatching(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    xx, yy = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    spacing = 4.0 * u
    diagonal = np.clip(1.0 - np.abs(((xx + yy) / spacing) % 1.0 - 0.5) * spacing, 0, 1)
    cross = np.clip(1.0 - np.abs(((xx - yy) / spacing) % 1.0 - 0.5) * spacing, 0, 1)
    inside = gaussian_filter(tone.mask, 1.0) > 0.9
    hatch = (diagonal * (tone.shade < 0.9) + cross * (tone.shade < 0.78)) * inside * 0.6
    return np.maximum.reduce([
        np.clip(hatch, 0, 0.6),
        _lines(s["outline"] + s["panels"], size, 1.5 * u, 0.9),
        _lines(s["seams"] + s["folds"], size, 1.0 * u, 0.7),
        _button_ink(g, size, False, 0.9),
    ])


def _construction(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    frame = closed(g.frame)
    extended = []
    for a, b in zip(frame[:-1], frame[1:], strict=True):
        direction = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        extended.append(np.stack([a - direction * 0.035, b + direction * 0.035]))
    return np.maximum.reduce([
        _lines(extended, size, 0.8 * u, 0.3),
        _lines(g.guides, size, 0.8 * u, 0.22),
        _lines(_dashed(g.guides[-1], 0.02), size, 1.0 * u, 0.4),
        _lines(s["outline"] + s["panels"], size, 1.2 * u, 0.6),
        _lines(s["seams"], size, 1.0 * u, 0.45),
        _lines(s["folds"], size, 0.8 * u, 0.3),
        _button_ink(g, size, False, 0.5),
    ])


def _dashed(line: Points, dash: float) -> list[Points]:
    dense = _resample(line, dash / 4)
    return [dense[i:i + 3] for i in range(0, len(dense) - 2, 8)]


def _resample(poly: Points, step: float) -> Points:
    """Points every ``step`` along the polyline."""
    poly = np.asarray(poly)
    lengths = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=1))]
    if lengths[-1] <= step:
        return poly
    at = np.arange(0.0, lengths[-1], step)
    return np.stack([np.interp(at, lengths, poly[:, 0]), np.interp(at, lengths, poly[:, 1])], axis=1)


def _wobble(poly: Points, rng: np.random.Generator, amplitude: float, overshoot: float) -> Points:
    """A hand-drawn pass: smooth random drift plus a little overshoot at both ends."""
    dense = _resample(poly, 0.01)
    if len(dense) < 2:
        return dense
    start_dir = dense[0] - dense[1]
    end_dir = dense[-1] - dense[-2]
    dense = np.concatenate([dense[:1] + start_dir / (np.linalg.norm(start_dir) + 1e-9) * overshoot, dense,
                            dense[-1:] + end_dir / (np.linalg.norm(end_dir) + 1e-9) * overshoot])
    knots = rng.normal(0, amplitude, (max(2, len(dense) // 8), 2))
    t = np.linspace(0, 1, len(dense))
    tk = np.linspace(0, 1, len(knots))
    drift = np.stack([np.interp(t, tk, knots[:, 0]), np.interp(t, tk, knots[:, 1])], axis=1)
    return dense + drift


def _split(poly: Points, rng: np.random.Generator, pieces: tuple[int, int]) -> list[Points]:
    """Cut a long line into the separate strokes a designer would make (slightly overlapping)."""
    dense = _resample(poly, 0.008)
    count = int(rng.integers(*pieces))
    if len(dense) < 4 * count:
        return [dense]
    cuts = np.sort(rng.choice(np.arange(2, len(dense) - 2), size=count - 1, replace=False))
    bounds = np.r_[0, cuts, len(dense)]
    return [dense[max(0, a - 1): b + 1] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _double(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    passes = []
    for role, strength in (("outline", 0.75), ("panels", 0.65), ("seams", 0.5), ("folds", 0.4)):
        pieces = [piece for line in s[role] for piece in _split(line, rng, (2, 5))]
        wobbly = [_wobble(p, rng, 0.005, 0.015) for p in pieces for _ in range(2)]
        passes.append(_lines(wobbly, size, 0.9 * u, strength))
    return np.maximum.reduce([*passes, _button_ink(g, size, False, 0.6)])


def _stipple(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    centres = [_resample(line, step * u / size) for role, step in
               (("outline", 3.0), ("panels", 3.5), ("seams", 4.5), ("folds", 5.5)) for line in s[role]]
    density = np.clip((0.95 - tone.shade) * 1.2, 0, 0.35)
    shading = (rng.random((size, size), dtype=np.float32) < density) * tone.mask
    dots = _dots(np.concatenate(centres), size, 0.9 * u)
    return np.maximum.reduce([dots * 0.95, shading * 0.75, _button_ink(g, size, True, 0.9)])


def _dots(centres: Points, size: int, radius: float) -> np.ndarray:
    """Antialiased round dots of ``radius`` px at the given centres."""
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    r = radius * SUPERSAMPLE
    for x, y in centres * size * SUPERSAMPLE:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def _charcoal(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    strokes = np.maximum.reduce([
        _lines(s["outline"] + s["panels"], size, 4.0 * u, 0.8),
        _lines(s["seams"] + s["folds"], size, 3.0 * u, 0.55),
    ])
    smudge = wide_blur(np.clip(1.0 - tone.shade, 0, 1) * tone.mask, 3 * u) * 1.4
    grain = 0.6 + 0.4 * gaussian_filter(rng.random((size, size), dtype=np.float32), 0.6 * u)
    return np.clip((gaussian_filter(strokes, 1.1 * u) + smudge) * grain * 1.2, 0, 0.9)


def _brush(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    s, u = _strokes(g), size / 256
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    for role, widest, pieces in (("outline", 5.0, (4, 8)), ("panels", 3.0, (1, 3)), ("seams", 2.2, (1, 2)),
                                 ("folds", 3.2, (1, 2))):
        for line in s[role]:
            for stroke in _split(line, rng, pieces):
                _tapered(draw, stroke, widest * u * SUPERSAMPLE * rng.uniform(0.8, 1.2), size)
    ink = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    return np.maximum(ink, _button_ink(g, size, True, 1.0))


def _tapered(draw: ImageDraw.ImageDraw, stroke: Points, widest: float, size: int) -> None:
    """A brush stroke: thin at both ends, full width in the middle."""
    points = _resample(stroke, 1.5 / size) * size * SUPERSAMPLE
    t = np.linspace(0, 1, len(points))
    widths = 0.6 + (widest - 0.6) * np.sin(np.pi * t) ** 0.7
    for (x0, y0), (x1, y1), w in zip(points[:-1], points[1:], widths[1:], strict=True):
        draw.line((x0, y0, x1, y1), fill=255, width=max(1, round(w)))
        r = w / 2
        draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=255)
