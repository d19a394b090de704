"""Demo garments as parametric geometry (silhouette, panels, seams, folds, buttons) and its rasterisation.

Photos (photo_render) and sketches (sketch_styles) both draw from this geometry, so a sketch never derives
from photo pixels. Coordinates are normalised to [0, 1], y down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter

KINDS = ("top", "dress", "trousers", "coat", "skirt")
SUPERSAMPLE = 2

Points = np.ndarray  # (N, 2) float, normalised [0, 1] coordinates, y down


@dataclass
class Garment:
    """A garment's drawable geometry in normalised coordinates."""

    kind: str
    outline: Points
    frame: Points  # control polygon before rounding: the construction style extends its edges
    panels: list[Points] = field(default_factory=list)
    seams: list[Points] = field(default_factory=list)
    folds: list[Points] = field(default_factory=list)
    buttons: list[tuple[float, float, float]] = field(default_factory=list)
    guides: list[Points] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    centre: float = 0.5
    light: float = 1.0  # +1: lit from the left, shadow side on the right


# ---------------------------------------------------------------- geometry helpers


def _pts(*points: tuple[float, float]) -> Points:
    return np.array(points, dtype=np.float64)


def _bezier(p0: Points, p1: Points, p2: Points, steps: int = 12) -> Points:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _curve(start: tuple[float, float], end: tuple[float, float], bend: float, steps: int = 10) -> Points:
    """A gentle arc from start to end whose middle sits ``bend`` to the left of the chord."""
    p0, p2 = np.asarray(start, float), np.asarray(end, float)
    chord = p2 - p0
    normal = np.array([chord[1], -chord[0]]) / (np.linalg.norm(chord) + 1e-9)
    return _bezier(p0, (p0 + p2) / 2 + 2 * bend * normal, p2, steps)


def _round_corners(poly: Points, radii: np.ndarray, steps: int = 5) -> Points:
    """Replace each vertex by a quadratic curve of the given radius (0 keeps it sharp)."""
    out = []
    n = len(poly)
    for i in range(n):
        vertex, prev, nxt = poly[i], poly[i - 1], poly[(i + 1) % n]
        if radii[i] <= 0:
            out.append(vertex[None])
            continue
        a = vertex + (prev - vertex) * min(radii[i] / (np.linalg.norm(prev - vertex) + 1e-9), 0.45)
        b = vertex + (nxt - vertex) * min(radii[i] / (np.linalg.norm(nxt - vertex) + 1e-9), 0.45)
        out.append(_bezier(a, vertex, b, steps))
    return np.concatenate(out)


def _mirror(points: Points, cx: float) -> Points:
    mirrored = np.array(points, dtype=np.float64)
    mirrored[..., 0] = 2 * cx - mirrored[..., 0]
    return mirrored


def _symmetric(left: list[tuple[float, float]], radii: list[float], bottom: Points, top: Points,
               cx: float) -> tuple[Points, Points]:
    """Silhouette from its left side (neck to hem), the bottom run (left to right) and the top run
    (right to left); returns (rounded outline, control frame)."""
    left_pts = _pts(*left)
    right_pts = _mirror(left_pts, cx)[::-1]
    frame = np.concatenate([left_pts, bottom.reshape(-1, 2), right_pts, top.reshape(-1, 2)])
    corner = np.concatenate([radii, np.zeros(len(bottom)), radii[::-1], np.zeros(len(top))])
    return _round_corners(frame, corner), frame


def _box(x: float, y: float, half_w: float, half_h: float) -> Points:
    return _pts((x - half_w, y - half_h), (x + half_w, y - half_h), (x + half_w, y + half_h),
                (x - half_w, y + half_h))


def _both(shape: Points, cx: float) -> list[Points]:
    return [shape, _mirror(shape, cx)]


def _fold(rng: np.random.Generator, start: tuple[float, float], direction: tuple[float, float],
          length: float) -> Points:
    end = (start[0] + direction[0] * length, start[1] + direction[1] * length)
    return _curve(start, end, rng.normal(0, 0.12) * length, steps=8)


def _sleeve(shoulder: tuple[float, float], angle_deg: float, length: float,
            width: float) -> tuple[tuple[float, float], tuple[float, float], np.ndarray]:
    """Sleeve end corners (top, bottom) and the sleeve's unit direction, hanging ``angle_deg`` below level."""
    a = math.radians(angle_deg)
    direction = np.array([-math.cos(a), math.sin(a)])
    top = np.asarray(shoulder) + direction * length
    bottom = top + np.array([math.sin(a), math.cos(a)]) * width
    return tuple(top), tuple(bottom), direction


# ---------------------------------------------------------------- garments


def make_garment(kind: str, rng: np.random.Generator) -> Garment:
    """A random garment of one of KINDS, lit from a random side and placed like a product shot."""
    builders = {"top": _top, "dress": _dress, "trousers": _trousers, "coat": _coat, "skirt": _skirt}
    garment = builders[kind](rng, 0.5)
    garment.light = float(rng.choice([-1.0, 1.0]))
    return _fit(garment, rng)


def _top(rng: np.random.Generator, cx: float) -> Garment:
    variant = rng.choice(["tee", "longsleeve", "shirt", "tank"], p=[0.35, 0.2, 0.3, 0.15])
    top, nw, slope = 0.12, rng.uniform(0.06, 0.09), rng.uniform(0.03, 0.06)
    sw = rng.uniform(0.19, 0.24) if variant != "tank" else nw + rng.uniform(0.03, 0.05)
    bw = rng.uniform(0.17, 0.21) if variant == "tank" else sw - rng.uniform(0.0, 0.03)
    hem_y, flare = rng.uniform(0.72, 0.9), rng.uniform(-0.01, 0.04)
    arm_y = top + slope + rng.uniform(0.13, 0.17)
    shoulder, armpit, hem = (cx - sw, top + slope), (cx - bw, arm_y), (cx - bw - flare, hem_y)
    g = Garment("top", np.zeros((0, 2)), np.zeros((0, 2)), centre=cx, levels=[top + slope, arm_y, hem_y])
    left: list[tuple[float, float]] = [(cx - nw, top), shoulder]
    radii = [0.01, 0.012]
    if variant == "tank":
        left += [armpit]
        radii += [0.05]
        g.seams += _both(_curve(shoulder, armpit, -0.03), cx)
    else:
        long = variant in ("longsleeve", "shirt")
        angle = rng.uniform(58, 75) if long else rng.uniform(25, 45)
        length = rng.uniform(0.38, 0.48) if long else rng.uniform(0.1, 0.16)
        width = rng.uniform(0.06, 0.08) if long else rng.uniform(0.08, 0.11)
        s_top, s_bot, direction = _sleeve(shoulder, angle, length, width)
        left += [s_top, s_bot, armpit]
        radii += [0.006, 0.006, 0.03]
        g.seams += _both(_curve(shoulder, armpit, -0.015), cx)
        back = np.asarray(s_top) - direction * 0.05, np.asarray(s_bot) - direction * 0.05
        cuff = _pts(s_top, s_bot, tuple(back[1]), tuple(back[0]))
        if long:
            g.panels += _both(cuff, cx)
        else:
            g.seams += _both(cuff[2:], cx)
        g.folds += _both(_fold(rng, tuple((np.asarray(shoulder) + np.asarray(s_top)) / 2 + [0.01, 0.02]),
                               tuple(direction * 0.3 + [0.3, 0.5]), length * 0.35), cx)
    left += [hem]
    radii += [0.01]
    hem_curve = _curve((cx - bw - flare, hem_y), (cx + bw + flare, hem_y), -rng.uniform(0, 0.02))[1:-1]
    neck = _neckline(rng, cx, nw, top, "collar" if variant == "shirt" else None)
    g.outline, g.frame = _symmetric(left, radii, hem_curve, neck, cx)
    g.seams.append(_curve((cx - bw - flare + 0.01, hem_y - 0.025), (cx + bw + flare - 0.01, hem_y - 0.025),
                          -0.01))
    if variant == "shirt":
        _shirt_front(g, rng, cx, nw, top, hem_y)
    else:
        g.seams.append(neck + [0, 0.018])
    _body_folds(g, rng, cx, bw, arm_y, hem_y)
    return g


def _neckline(rng: np.random.Generator, cx: float, nw: float, top: float, shape: str | None) -> Points:
    """Neckline from the right neck point to the left one (endpoints excluded)."""
    shape = shape or rng.choice(["round", "v", "boat"])
    depth = {"round": rng.uniform(0.04, 0.08), "v": rng.uniform(0.06, 0.11), "boat": 0.02,
             "collar": 0.06}[shape]
    if shape == "v":
        return _pts((cx, top + depth))
    return _bezier(np.array([cx + nw, top]), np.array([cx, top + 2 * depth]), np.array([cx - nw, top]))[1:-1]


def _shirt_front(g: Garment, rng: np.random.Generator, cx: float, nw: float, top: float,
                 hem_y: float) -> None:
    collar = _pts((cx - nw, top), (cx - nw - 0.03, top + 0.07), (cx - 0.005, top + 0.085),
                  (cx - 0.01, top + 0.06))
    g.panels += _both(collar, cx)
    g.seams.append(_pts((cx + 0.015, top + 0.08), (cx + 0.015, hem_y - 0.01)))
    count = int(rng.integers(5, 8))
    g.buttons += [(cx, y, 0.008) for y in np.linspace(top + 0.1, hem_y - 0.06, count)]
    if rng.random() < 0.6:
        px, py = cx + rng.uniform(0.07, 0.1), top + rng.uniform(0.15, 0.2)
        g.panels.append(_pts((px, py), (px + 0.08, py), (px + 0.08, py + 0.08), (px + 0.04, py + 0.095),
                             (px, py + 0.08)))


def _body_folds(g: Garment, rng: np.random.Generator, cx: float, bw: float, arm_y: float,
                hem_y: float) -> None:
    g.folds += _both(_fold(rng, (cx - bw + 0.02, arm_y + 0.02), (0.6, 0.8), rng.uniform(0.06, 0.12)), cx)
    for _ in range(int(rng.integers(1, 4))):
        x = cx + rng.uniform(-bw + 0.04, bw - 0.04)
        y = rng.uniform(arm_y + 0.1, hem_y - 0.12)
        g.folds.append(_fold(rng, (x, y), (rng.normal(0, 0.3), 1.0), rng.uniform(0.08, hem_y - y - 0.02)))


def _dress(rng: np.random.Generator, cx: float) -> Garment:
    top, nw = rng.uniform(0.08, 0.11), rng.uniform(0.05, 0.08)
    sleeved = rng.random() < 0.4
    sw = rng.uniform(0.15, 0.18) if sleeved else nw + rng.uniform(0.025, 0.05)
    bust, bust_y = rng.uniform(0.12, 0.15), top + rng.uniform(0.13, 0.17)
    waist_y, ww = rng.uniform(0.33, 0.42), bust - rng.uniform(0.02, 0.04)
    hem_y, hw = rng.uniform(0.84, 0.95), rng.uniform(0.2, 0.38)
    shoulder = (cx - sw, top + 0.015)
    g = Garment("dress", np.zeros((0, 2)), np.zeros((0, 2)), centre=cx, levels=[bust_y, waist_y, hem_y])
    left: list[tuple[float, float]] = [(cx - nw, top), shoulder]
    radii = [0.005, 0.008]
    if sleeved:
        s_top, s_bot, _ = _sleeve(shoulder, rng.uniform(30, 45), rng.uniform(0.06, 0.1), 0.07)
        left += [s_top, s_bot]
        radii += [0.005, 0.005]
        g.seams += _both(_curve(shoulder, (cx - bust, bust_y), -0.015), cx)
    left += [(cx - bust, bust_y), (cx - ww, waist_y)]
    radii += [0.04, 0.03]
    side = _curve((cx - ww, waist_y), (cx - hw, hem_y), rng.uniform(-0.03, 0.0), steps=6)[1:-1]
    left += [tuple(p) for p in side] + [(cx - hw, hem_y)]
    radii += [0.0] * len(side) + [0.01]
    hem = _hem(rng, cx, hw, hem_y, wavy=hw > 0.3 and rng.random() < 0.6)
    neck = _neckline(rng, cx, nw, top, None)
    g.outline, g.frame = _symmetric(left, radii, hem, neck, cx)
    g.seams.append(_curve((cx - ww, waist_y), (cx + ww, waist_y), -0.008))
    g.seams += _both(_pts((cx - bust * 0.5, waist_y), (cx - bust * 0.45, waist_y - 0.07)), cx)
    if rng.random() < 0.35:
        g.panels.append(_pts((cx - ww - 0.003, waist_y - 0.015), (cx + ww + 0.003, waist_y - 0.015),
                             (cx + ww + 0.004, waist_y + 0.015), (cx - ww - 0.004, waist_y + 0.015)))
    elif rng.random() < 0.4:
        g.buttons += [(cx, y, 0.007) for y in np.linspace(bust_y - 0.05, waist_y - 0.03, 4)]
    _skirt_folds(g, rng, cx, ww, waist_y, hw, hem_y)
    return g


def _hem(rng: np.random.Generator, cx: float, hw: float, hem_y: float, wavy: bool) -> Points:
    hem = _curve((cx - hw, hem_y), (cx + hw, hem_y), -rng.uniform(0.01, 0.04), steps=25)[1:-1]
    if wavy:
        t = np.linspace(0, 1, len(hem))
        hem[:, 1] += rng.uniform(0.008, 0.018) * np.sin(t * math.pi * rng.integers(5, 10))
    return hem


def _skirt_folds(g: Garment, rng: np.random.Generator, cx: float, ww: float, waist_y: float, hw: float,
                 hem_y: float) -> None:
    """Drape lines fanning from the waist to the hem."""
    count = int(rng.integers(3, 8))
    for t in np.sort(rng.uniform(-0.85, 0.85, count)):
        start_y = waist_y + rng.uniform(0.03, 0.2) * (hem_y - waist_y)
        start = (cx + t * ww * (0.6 + 0.4 * (start_y - waist_y) / (hem_y - waist_y)), start_y)
        end = (cx + t * hw * rng.uniform(0.8, 1.0), hem_y - rng.uniform(0.0, 0.03))
        g.folds.append(_curve(start, end, rng.normal(0, 0.01), steps=8))


def _trousers(rng: np.random.Generator, cx: float) -> Garment:
    waist_y, ww = rng.uniform(0.06, 0.1), rng.uniform(0.14, 0.18)
    hip_y, hip_w = waist_y + 0.12, ww + rng.uniform(0.01, 0.025)
    crotch_y = waist_y + rng.uniform(0.25, 0.3)
    shorts = rng.random() < 0.2
    hem_y = crotch_y + rng.uniform(0.12, 0.2) if shorts else rng.uniform(0.88, 0.95)
    outer = cx - hip_w - (rng.uniform(0.01, 0.04) if shorts else rng.uniform(-0.02, 0.05))
    leg = min(rng.uniform(0.14, 0.2) if shorts else rng.uniform(0.07, 0.16), cx - 0.015 - outer)
    g = Garment("trousers", np.zeros((0, 2)), np.zeros((0, 2)), centre=cx, levels=[waist_y, crotch_y, hem_y])
    left = [(cx - ww, waist_y), (cx - hip_w, hip_y), (outer, hem_y), (outer + leg, hem_y)]
    g.outline, g.frame = _symmetric(left, [0.004, 0.06, 0.004, 0.004], _pts((cx, crotch_y)), np.zeros((0, 2)),
                                    cx)
    band = 0.035
    g.panels.append(_pts((cx - ww, waist_y), (cx + ww, waist_y), (cx + ww + 0.003, waist_y + band),
                         (cx - ww - 0.003, waist_y + band)))
    loop = _box(cx - ww * 0.7, waist_y + band / 2 + 0.004, 0.006, band / 2 + 0.008)
    g.panels += _both(loop, cx)
    g.buttons.append((cx, waist_y + band / 2, 0.008))
    g.seams.append(_pts((cx, waist_y + band), (cx, crotch_y - 0.01)))
    g.seams.append(np.concatenate([_pts((cx + 0.035, waist_y + band)),
                                   _curve((cx + 0.035, crotch_y - 0.08), (cx, crotch_y - 0.03), -0.01, 6)]))
    pocket = _curve((cx - ww + 0.05, waist_y + band), (cx - hip_w + 0.003, waist_y + 0.11), 0.015)
    g.seams += _both(pocket, cx)
    g.seams += _both(_pts((outer + 0.005, hem_y - 0.025), (outer + leg - 0.004, hem_y - 0.025)), cx)
    if not shorts:
        _leg_folds(g, rng, cx, hip_w, crotch_y, outer, leg, hem_y)
    return g


def _leg_folds(g: Garment, rng: np.random.Generator, cx: float, hip_w: float, crotch_y: float, outer: float,
               leg: float, hem_y: float) -> None:
    mid_top, mid_hem = cx - hip_w / 2, outer + leg / 2
    g.folds += _both(_pts((mid_top, crotch_y - 0.04), (mid_hem, hem_y - 0.04)), cx)  # pressed crease
    g.folds += _both(_fold(rng, (cx - 0.01, crotch_y - 0.005), (-0.9, -0.4), rng.uniform(0.04, 0.08)), cx)
    for _ in range(int(rng.integers(1, 4))):
        t = rng.uniform(0.35, 0.65)  # around the knee
        y = crotch_y + t * (hem_y - crotch_y)
        side = cx - hip_w + (outer - cx + hip_w) * t
        inner = cx + (outer + leg - cx) * t
        g.folds += _both(_fold(rng, (side + 0.01, y), (1.0, rng.uniform(0.1, 0.4)), (inner - side) * 0.5), cx)


def _coat(rng: np.random.Generator, cx: float) -> Garment:
    variant = rng.choice(["single", "double", "trench", "puffer"])
    top, nw, slope = 0.08, rng.uniform(0.06, 0.08), rng.uniform(0.04, 0.06)
    sw = rng.uniform(0.2, 0.25)
    bw = sw - rng.uniform(0.0, 0.02)
    hem_y = rng.uniform(0.66, 0.74) if variant == "puffer" else rng.uniform(0.85, 0.95)
    flare = rng.uniform(0.01, 0.06)
    arm_y = top + slope + rng.uniform(0.15, 0.19)
    shoulder = (cx - sw, top + slope)
    s_top, s_bot, direction = _sleeve(shoulder, rng.uniform(62, 78), rng.uniform(0.4, 0.5),
                                         rng.uniform(0.07, 0.09))
    left = [(cx - nw, top), shoulder, s_top, s_bot, (cx - bw, arm_y), (cx - bw - flare, hem_y)]
    hem = _curve((cx - bw - flare, hem_y), (cx + bw + flare, hem_y), -0.01)[1:-1]
    g = Garment("coat", np.zeros((0, 2)), np.zeros((0, 2)), centre=cx, levels=[top + slope, arm_y, hem_y])
    radii = [0.008, 0.012, 0.006, 0.006, 0.03, 0.008]
    neck = _neckline(rng, cx, nw, top, "round") if variant == "puffer" else _pts((cx, top + 0.05))
    g.outline, g.frame = _symmetric(left, radii, hem, neck, cx)
    if variant == "puffer":
        g.seams.append(neck + [0, 0.02])
    g.seams += _both(_curve(shoulder, (cx - bw, arm_y), -0.015), cx)
    g.seams += _both(np.stack([s_top, s_bot]) - direction * 0.06, cx)  # cuff
    elbow = tuple(np.asarray(shoulder) + direction * 0.25 + [0.015, 0.01])
    g.folds += _both(_fold(rng, elbow, (1.0, 0.3), 0.04), cx)
    g.folds += _both(_fold(rng, (cx - bw + 0.02, arm_y + 0.02), (0.5, 0.9), rng.uniform(0.05, 0.1)), cx)
    _coat_front(g, rng, variant, cx, nw, top, bw, arm_y, hem_y, flare)
    return g


def _coat_front(g: Garment, rng: np.random.Generator, variant: str, cx: float, nw: float, top: float,
                bw: float, arm_y: float, hem_y: float, flare: float) -> None:
    offset = 0.045 if variant in ("double", "trench") else 0.0
    break_y = top + rng.uniform(0.22, 0.3) if variant != "puffer" else top + 0.05
    if variant != "puffer":
        tip = (cx - nw - rng.uniform(0.04, 0.07), top + rng.uniform(0.1, 0.14))
        lapel = _pts((cx - nw, top), tip, (cx - offset * 0.5, break_y), (cx - nw * 0.3, top + 0.05))
        g.panels += _both(lapel, cx)
    g.seams.append(_pts((cx + offset, break_y), (cx + offset, hem_y)))
    g.seams.append(_curve((cx - bw - flare + 0.01, hem_y - 0.03), (cx + bw + flare - 0.01, hem_y - 0.03),
                          -0.01))
    columns = [cx - offset, cx + offset] if offset else [cx]
    count = int(rng.integers(2, 5))
    g.buttons += [(x, y, 0.011) for x in columns for y in np.linspace(break_y + 0.04, break_y + 0.3, count)]
    if variant == "trench":
        belt_y = arm_y + rng.uniform(0.08, 0.14)
        g.panels.append(_box(cx, belt_y, bw + 0.006, 0.02))
        g.panels.append(_box(cx, belt_y, 0.025, 0.028))  # buckle
        g.levels.append(belt_y)
    if variant == "puffer":
        for y in np.arange(arm_y - 0.12, hem_y - 0.05, 0.07):
            half = bw + flare * (y - arm_y) / (hem_y - arm_y) - 0.005
            g.seams.append(_curve((cx - half, y), (cx + half, y), -0.008))
    else:
        py = rng.uniform(0.58, 0.66) * hem_y + 0.04
        g.panels += _both(_pts((cx - bw + 0.03, py), (cx - 0.07, py), (cx - 0.07, py + 0.035),
                               (cx - bw + 0.03, py + 0.035)), cx)
    for _ in range(int(rng.integers(2, 4))):
        x = cx + rng.uniform(-bw + 0.03, bw - 0.03)
        g.folds.append(_fold(rng, (x, hem_y - rng.uniform(0.12, 0.25)), (rng.normal(0, 0.2), 1.0), 0.1))


def _skirt(rng: np.random.Generator, cx: float) -> Garment:
    variant = rng.choice(["aline", "pleated", "pencil", "flared"])
    waist_y, ww, band = rng.uniform(0.1, 0.18), rng.uniform(0.13, 0.17), rng.uniform(0.03, 0.05)
    hem_y = rng.uniform(0.7, 0.92)
    hw = {"aline": rng.uniform(0.25, 0.32), "pleated": rng.uniform(0.25, 0.33),
          "pencil": ww + rng.uniform(0.0, 0.03), "flared": rng.uniform(0.32, 0.42)}[variant]
    g = Garment("skirt", np.zeros((0, 2)), np.zeros((0, 2)), centre=cx,
                levels=[waist_y, waist_y + 0.15, hem_y])
    left = [(cx - ww, waist_y)]
    radii = [0.004]
    if variant == "pencil":
        left.append((cx - ww - 0.04, waist_y + 0.14))
        radii.append(0.08)
    left.append((cx - hw, hem_y))
    radii.append(0.008)
    if variant == "pleated":
        hem = _pleats(g, rng, cx, ww, waist_y + band, hw, hem_y)
    else:
        hem = _hem(rng, cx, hw, hem_y, wavy=variant == "flared")
    g.outline, g.frame = _symmetric(left, radii, hem, np.zeros((0, 2)), cx)
    g.panels.append(_pts((cx - ww, waist_y), (cx + ww, waist_y), (cx + ww + 0.004, waist_y + band),
                         (cx - ww - 0.004, waist_y + band)))
    if variant == "pencil":
        g.seams.append(_pts((cx, hem_y), (cx, hem_y - rng.uniform(0.08, 0.14))))
        g.folds += _both(_fold(rng, (cx - ww + 0.03, waist_y + 0.1), (0.4, 1.0), 0.08), cx)
    elif variant != "pleated":
        _skirt_folds(g, rng, cx, ww, waist_y + band, hw, hem_y)
    if rng.random() < 0.3:
        g.buttons += [(cx, y, 0.008) for y in np.linspace(waist_y + band / 2, hem_y - 0.08, 5)]
    return g


def _pleats(g: Garment, rng: np.random.Generator, cx: float, ww: float, top: float, hw: float,
            hem_y: float) -> Points:
    """A zigzag hem with one pressed fold per pleat running up to the waistband; returns the hem."""
    hem = _curve((cx - hw, hem_y), (cx + hw, hem_y), -0.02, steps=int(rng.integers(10, 16)) * 2 + 1)[1:-1]
    hem[::2, 1] += 0.012
    tops = np.linspace(cx - ww, cx + ww, len(hem) // 2 + 2)[1:-1]
    g.folds += [_pts((x0, top), (x1, hem_y - 0.005)) for x0, x1 in zip(tops, hem[1::2, 0], strict=True)]
    return hem


def _fit(g: Garment, rng: np.random.Generator) -> Garment:
    """Scale, tilt and place the garment like a flat-lay product shot; adds construction guides."""
    lo, hi = g.outline.min(axis=0), g.outline.max(axis=0)
    scale = min(rng.uniform(0.74, 0.86) / (hi[1] - lo[1]), rng.uniform(0.7, 0.86) / (hi[0] - lo[0]))
    angle = math.radians(rng.normal(0, 2.0))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = (lo + hi) / 2
    shift = np.array([0.5, 0.5]) + rng.normal(0, 0.015, 2)

    def move(p: Points) -> Points:
        return (np.asarray(p, dtype=np.float64) - centre) * scale @ rot.T + shift

    margin = 0.06
    g.guides = [move(_pts((lo[0] - margin, y), (hi[0] + margin, y))) for y in g.levels]
    g.guides.append(move(_pts((g.centre, lo[1] - margin), (g.centre, hi[1] + margin))))
    g.outline, g.frame = move(g.outline), move(g.frame)
    g.panels = [move(p) for p in g.panels]
    g.seams = [move(p) for p in g.seams]
    g.folds = [move(p) for p in g.folds]
    g.buttons = [(*move(_pts((x, y)))[0], r * scale) for x, y, r in g.buttons]
    g.centre = float(move(_pts((g.centre, 0.5)))[0, 0])
    return g


def closed(poly: Points) -> Points:
    """A closed shape's outline: the first point repeated at the end."""
    return np.concatenate([poly, poly[:1]])


# ---------------------------------------------------------------- rasterising the geometry


@dataclass
class Tone:
    """Geometry-derived coverage and shading maps (size x size float32)."""

    mask: np.ndarray
    shade: np.ndarray  # 1 = fully lit, lower = shadow side, garment edges and folds
    folds: np.ndarray
    highlights: np.ndarray


def _scaled(points: Points, size: int) -> list[tuple[float, float]]:
    return [tuple(p) for p in np.asarray(points) * size * SUPERSAMPLE]


def coverage(polys: list[Points], size: int, width: float = 0.0) -> np.ndarray:
    """Antialiased coverage of filled polygons (width 0) or polylines of the given width (>= 1 px)."""
    canvas = Image.new("L", (size * SUPERSAMPLE,) * 2, 0)
    draw = ImageDraw.Draw(canvas)
    pen = max(SUPERSAMPLE, round(width * SUPERSAMPLE))
    for poly in polys:
        if width:
            draw.line(_scaled(poly, size), fill=255, width=pen, joint="curve")
        else:
            draw.polygon(_scaled(poly, size), fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def wide_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a [0, 1] map through Pillow: 8-bit, but several times faster at large sigma."""
    image = Image.fromarray(np.uint8(np.round(np.clip(values, 0.0, 1.0) * 255)), "L")
    return np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255.0


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis)


def garment_tone(g: Garment, size: int) -> Tone:
    """Coverage and shading of a garment at ``size`` px, shared by its photo and its sketch."""
    mask = coverage([g.outline], size)
    xx, _ = grid(size)
    side = 1.0 - 0.16 * np.clip(g.light * (xx - g.centre) / 0.3, -1.0, 1.0)
    volume = wide_blur(mask, size / 22)
    rounded = 0.72 + 0.28 * np.clip((volume - 0.35) / 0.5, 0.0, 1.0)
    folds = gaussian_filter(coverage(g.folds, size, width=size / 90), sigma=size / 140)
    offset = [p + [-g.light * 0.008, 0.0] for p in g.folds]
    highlights = gaussian_filter(coverage(offset, size, width=size / 110), sigma=size / 120)
    shade = side * rounded * (1.0 - 0.4 * folds)
    return Tone(mask, shade.astype(np.float32), folds, highlights)
