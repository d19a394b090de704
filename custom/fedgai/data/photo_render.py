"""Demo garment "photos": fabric colour and print, panels, shading, folds, seams, buttons and a backdrop."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from fedgai.data.garments import Garment, Tone, closed, coverage, grid, wide_blur

PRINTS = ("solid", "stripes", "dots", "checks", "plaid", "floral", "twill")


def render_photo(g: Garment, tone: Tone, palette: np.ndarray, print_weights: np.ndarray,
                 rng: np.random.Generator, size: int) -> Image.Image:
    """A flat-lay product shot: the garment in a palette colour and a print drawn by ``print_weights``."""
    base = _jitter_colour(palette[rng.integers(len(palette))], rng)
    fabric = _with_panels(_print(rng, palette, print_weights, base, g, size), g, base, rng, size)
    garment = np.clip(fabric * _photo_light(g, tone, rng, size)[..., None], 0.0, 1.0)
    background = _background(rng, size, float(base.mean()))
    shift = (max(1, size // 40), rng.integers(-size // 60, size // 60 + 1))
    background *= (1 - 0.35 * wide_blur(np.roll(tone.mask, shift, axis=(0, 1)), size / 30))[..., None]
    alpha = tone.mask[..., None]
    composite = np.clip(background * (1 - alpha) + garment * alpha, 0.0, 1.0)
    image = Image.fromarray(np.uint8(np.round(composite * 255)), "RGB")
    _draw_buttons(image, g, base, size)
    return image


def _with_panels(fabric: np.ndarray, g: Garment, base: np.ndarray, rng: np.random.Generator,
                 size: int) -> np.ndarray:
    """Collars, pockets, bands: half in a darker shade of the base colour, half in the print."""
    for panel in g.panels:
        if rng.random() < 0.5:
            cover = coverage([panel], size)[..., None]
            fabric = fabric * (1 - cover) + base * rng.uniform(0.75, 0.9) * cover
    return fabric


def _photo_light(g: Garment, tone: Tone, rng: np.random.Generator, size: int) -> np.ndarray:
    """Shading, fold highlights, stitched seams, panel edges and their small shadows, fabric grain."""
    seams = coverage(g.seams, size, width=size / 256) * 0.25
    edges = coverage([*[closed(p) for p in g.panels], closed(g.outline)], size, width=size / 200) * 0.3
    panels = coverage(g.panels, size)
    offset = (max(1, size // 128),) * 2
    panel_shadow = gaussian_filter(np.roll(panels, offset, axis=(0, 1)), size / 200) * (1 - panels)
    grain = 1.0 + 0.03 * gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 0.6)
    return tone.shade * (1 + 0.18 * tone.highlights) * (1 - seams - edges) * (1 - 0.25 * panel_shadow) * grain


def _jitter_colour(colour: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(colour * rng.uniform(0.85, 1.12) + rng.normal(0, 0.03, 3), 0.02, 0.98).astype(np.float32)


def _contrast_colour(base: np.ndarray, palette: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    choices = [np.array([0.96, 0.95, 0.92]), np.array([0.08, 0.08, 0.12]), palette[rng.integers(7)]]
    distances = [float(np.abs(c - base).sum()) for c in choices]
    pick = int(rng.integers(3))
    chosen = choices[pick] if distances[pick] > 0.6 else choices[int(np.argmax(distances))]
    return np.asarray(chosen, np.float32)


def _print(rng: np.random.Generator, palette: np.ndarray, print_weights: np.ndarray, base: np.ndarray,
           g: Garment, size: int) -> np.ndarray:
    """Fabric colour (size x size x 3) for the garment's print, in garment-relative coordinates."""
    kind = PRINTS[rng.choice(len(PRINTS), p=print_weights)]
    second = _contrast_colour(base, palette, rng)
    xx, yy = grid(size)
    u, v = xx - g.centre, yy
    period = rng.uniform(0.03, 0.08)
    fabric = np.broadcast_to(base, (size, size, 3)).copy()
    if kind == "solid":
        return fabric
    if kind == "floral":
        return _floral(rng, fabric, second, palette, period * 2, size)
    if kind == "stripes":
        angle = rng.choice([0.0, math.pi / 2, math.pi / 4])
        coord = u * math.cos(angle) + v * math.sin(angle)
        amount = _band(coord / period, rng.uniform(0.25, 0.6))
    elif kind == "dots":
        row = np.floor(v / period)
        cu = (u / period + 0.5 * (row % 2)) % 1.0 - 0.5
        cv = (v / period) % 1.0 - 0.5
        amount = np.clip((rng.uniform(0.15, 0.3) - np.hypot(cu, cv)) * period * size * 2 + 0.5, 0, 1)
    elif kind == "checks":
        amount = 0.5 * _band(u / period, 0.5) + 0.5 * _band(v / period, 0.5)
    elif kind == "plaid":
        fine = _band(u / period, 0.3) + _band(v / period, 0.3)
        broad = _band(u / (period * 3.1), 0.12) + _band(v / (period * 3.1), 0.12)
        amount = np.clip(0.35 * fine + 0.3 * broad, 0, 1)
    else:  # twill: denim-like diagonal weave
        slub = 0.6 + 0.4 * rng.random((size, size), dtype=np.float32)
        amount = 0.35 * _band((u + v) * size / 3.0, 0.5) * slub
        second = np.clip(base * 1.5 + 0.1, 0, 1).astype(np.float32)
    return fabric * (1 - amount[..., None]) + second * amount[..., None]


def _band(coord: np.ndarray, duty: float) -> np.ndarray:
    """Soft-edged periodic band: 1 inside the first ``duty`` of each period."""
    phase = coord % 1.0
    return np.clip(np.minimum(phase, duty - phase) * 12 + 0.5, 0.0, 1.0) * (phase < duty + 0.05)


def _floral(rng: np.random.Generator, fabric: np.ndarray, petal: np.ndarray, palette: np.ndarray,
            period: float, size: int) -> np.ndarray:
    layer = Image.fromarray(np.uint8(fabric * 255), "RGB")
    draw = ImageDraw.Draw(layer)
    heart = tuple(int(c * 255) for c in palette[rng.integers(7)])
    leaf = (60, 110, 60)
    step = period * size
    count = int((size / step) ** 2 * 1.3)
    for cx, cy, radius, turn in zip(rng.uniform(0, size, count), rng.uniform(0, size, count),
                                    rng.uniform(0.15, 0.3, count) * step, rng.uniform(0, 2 * math.pi, count),
                                    strict=True):
        lx, ly = cx + math.cos(turn) * radius * 1.6, cy + math.sin(turn) * radius * 1.6
        draw.ellipse((lx - radius * 0.5, ly - radius * 0.5, lx + radius * 0.5, ly + radius * 0.5), fill=leaf)
        for k in range(5):
            a = turn + k * 2 * math.pi / 5
            px, py = cx + math.cos(a) * radius * 0.7, cy + math.sin(a) * radius * 0.7
            draw.ellipse((px - radius * 0.5, py - radius * 0.5, px + radius * 0.5, py + radius * 0.5),
                         fill=tuple(int(c * 255) for c in petal))
        draw.ellipse((cx - radius * 0.3, cy - radius * 0.3, cx + radius * 0.3, cy + radius * 0.3), fill=heart)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, size: int, garment_level: float) -> np.ndarray:
    """A studio backdrop that contrasts with the garment, plain or lightly textured."""
    value = rng.uniform(0.55, 0.72) if garment_level > 0.75 else rng.uniform(0.82, 0.97)
    tint = np.clip(value + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)
    _, yy = grid(size)
    backdrop = np.broadcast_to(tint, (size, size, 3)) * (1.04 - 0.08 * yy)[..., None]
    texture = rng.choice(["plain", "grain", "linen"])
    if texture == "grain":
        noise = gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 1.0)
        backdrop = backdrop * (1 + 0.03 * noise)[..., None]
    elif texture == "linen":
        threads = rng.standard_normal(size)[None, :] + rng.standard_normal(size)[:, None]
        backdrop = backdrop * (1 + 0.012 * threads)[..., None]
    return backdrop.astype(np.float32)


def _draw_buttons(image: Image.Image, g: Garment, base: np.ndarray, size: int) -> None:
    draw = ImageDraw.Draw(image)
    fill = tuple(int(c * 255) for c in (base * 0.45 if base.mean() > 0.4 else np.clip(base + 0.35, 0, 1)))
    for x, y, r in g.buttons:
        px, py, pr = x * size, y * size, max(1.5, r * size)
        draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=fill, outline=(30, 30, 30))
        hr = pr * 0.35
        draw.ellipse((px - pr * 0.4 - hr, py - pr * 0.4 - hr, px - pr * 0.4 + hr, py - pr * 0.4 + hr),
                     fill=tuple(min(255, c + 60) for c in fill))
