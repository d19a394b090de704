"""How screened updates become one global step, so that no single studio can steer it.

Three levers, each bounding what one studio can do within the rules:
- weight: a studio's pair count is self-reported, so it is capped (per site, absolutely, at a multiple of the
  round's median weight, and at the count the studio first reported);
- size: an update longer than a multiple of the round's median update norm is scaled down to that bound;
- aggregator: the sample-weighted mean (fedavg), or a coordinate-wise trimmed mean or median, which ignore
  weights and discard the extreme values of every coordinate.

Medians are "lower" medians (the smaller middle value), so with two studios the bound follows the smaller one.
Updates at or below a floor (zero, or too small to change a float32 model) and non-finite ones are refused
before any median is taken, so a studio sending nothing cannot scale every honest update down to nothing.
The trimmed mean and the median only set one studio's values aside from 3 studios on (``robust_min_studios``);
below that they are the plain mean and are refused rather than run under a name that promises more.
Everything here is numpy on plain dicts; the controller and the tests call it alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedgai.config import FedConfig, robust_count_problem

Params = Mapping[str, np.ndarray]
# Relative float32 resolution: an update smaller than this times the model's norm leaves the model as it was.
FLOAT32_RESOLUTION = float(np.finfo(np.float32).eps)


class TooFewStudios(ValueError):
    """The configured aggregator cannot set aside one hostile studio's values with this many studios."""


@dataclass(frozen=True)
class Weight:
    """A studio's aggregation weight and, when it is less than the studio claimed, why."""

    value: float
    note: str | None = None


def lower_median(values: Sequence[float]) -> float:
    """The smaller middle value: a majority of honest studios keeps it honest, even among two studios."""
    if not values:
        raise ValueError("lower_median needs at least one value")
    ordered = sorted(values)
    return float(ordered[(len(ordered) - 1) // 2])


def update_norm(params: Params) -> float:
    """L2 norm over all entries (in float64)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in params.values()))


def site_cap(fed: FedConfig, site: str) -> int | None:
    """The most pairs ``site`` may count for: its entry in fed.site_max_samples, else fed.max_samples_per_site."""
    return fed.site_max_samples.get(site, fed.max_samples_per_site)


def capped_weights(claims: Mapping[str, int], fed: FedConfig, first_seen: Mapping[str, int]) -> dict[str, Weight]:
    """Each studio's weight: its claimed count, capped by config, by its first-seen count and by the round's median."""
    weights = {}
    for site, claim in claims.items():
        value, notes = claim, []
        if site in first_seen and claim != first_seen[site]:
            value = min(value, first_seen[site])
            notes.append(f"count changed from the first-seen {first_seen[site]} to {claim}")
        cap = site_cap(fed, site)
        if cap is not None and value > cap:
            value = cap
            notes.append(f"capped at {cap} pairs per site")
        weights[site] = (value, notes)
    if fed.max_weight_factor is not None and weights:
        bound = fed.max_weight_factor * lower_median([v for v, _ in weights.values()])
        for site, (value, notes) in weights.items():
            if value > bound:
                weights[site] = (bound, [*notes, f"capped at {fed.max_weight_factor:g} x the round's median weight"])
    return {site: Weight(float(v), "; ".join(notes) or None) for site, (v, notes) in weights.items()}


def near_zero_norm(reference: Params) -> float:
    """The norm at or below which an update is refused as empty: float32 resolution x the model's norm.

    Relative to the model, so the floor means the same for any network size; an update this small would not
    change the float32 model, so no training studio sends one, and a zero update must not set the round's
    median-based norm bound (with two studios it would scale the other studio's update to 0).
    """
    return FLOAT32_RESOLUTION * update_norm(reference)


def size_problem(params: Params, floor: float) -> str | None:
    """Why an update's size disqualifies it (non-finite, or norm at or below ``floor``), else None."""
    norm = update_norm(params)
    if not math.isfinite(norm):
        return "update contains NaN or Inf"
    if norm <= floor:
        return (f"update norm {norm:.3g} is at or below the floor {floor:.3g} (an empty update: it cannot change "
                "the model, and would pull the round's median-based norm bound down to nothing)")
    return None


def clip_to_median_norm(updates: Mapping[str, Params], factor: float | None, floor: float = 0.0
                        ) -> tuple[dict[str, Params], float | None]:
    """Scale every update longer than ``factor`` x the round's median norm down to it; returns (updates, bound).

    The median is taken over the norms above ``floor`` and the bound is never below ``floor``: screening
    refuses updates at or below it (``near_zero_norm``, or under client-level DP what the noise alone
    reaches), and one that got here anyway must not pull the bound down for everyone else. Non-finite
    updates raise ValueError: their norm would make the bound meaningless.
    """
    if factor is None or not updates:
        return dict(updates), None
    norms = {site: update_norm(params) for site, params in updates.items()}
    nonfinite = sorted(site for site, norm in norms.items() if not math.isfinite(norm))
    if nonfinite:
        raise ValueError(f"non-finite updates reached the norm bound (screen them first): {', '.join(nonfinite)}")
    above = [norm for norm in norms.values() if norm > floor]
    bound = max(factor * lower_median(above), floor) if above else floor
    out: dict[str, Params] = {}
    for site, params in updates.items():
        scale = bound / norms[site] if norms[site] > bound else 1.0
        out[site] = params if scale == 1.0 else {k: (v * scale).astype(v.dtype) for k, v in params.items()}
    return out, bound


def weighted_mean(updates: Sequence[tuple[Params, float]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of DIFF updates (computed in float64, returned in each entry's dtype)."""
    total = float(sum(weight for _, weight in updates))
    if not updates or total <= 0:
        raise ValueError("weighted_mean needs at least one update with a positive weight")
    first = updates[0][0]
    return {
        key: (sum(params[key].astype(np.float64) * weight for params, weight in updates) / total).astype(
            first[key].dtype
        )
        for key in first
    }


def trimmed_count(n: int, fraction: float) -> int:
    """Values cut at each end of a coordinate: ceil(fraction x n), leaving at least one (or two) in the middle."""
    return min(math.ceil(fraction * n), (n - 1) // 2)


def coordinate_wise(updates: Sequence[Params], statistic: str, trim_fraction: float) -> dict[str, np.ndarray]:
    """Coordinate-wise median or trimmed mean of the updates (unweighted: counts are self-reported)."""
    out = {}
    for key, first in updates[0].items():
        stack = np.stack([u[key].astype(np.float64) for u in updates])
        if statistic == "median":
            value = np.median(stack, axis=0)
        else:
            k = trimmed_count(len(updates), trim_fraction)
            value = np.sort(stack, axis=0)[k:len(updates) - k].mean(axis=0)
        out[key] = value.astype(first.dtype)
    return out


def aggregate(updates: Mapping[str, Params], weights: Mapping[str, Weight], fed: FedConfig) -> dict[str, np.ndarray]:
    """The global step from screened, norm-clipped updates, with the configured aggregator.

    Raises TooFewStudios when a trimmed mean or median would run over too few updates to be robust (a round
    in which studios dropped out or were refused): the job stops with the reason instead of averaging.
    """
    problem = robust_count_problem(fed.aggregator, fed.trim_fraction, len(updates))
    if problem:
        raise TooFewStudios(f"refusing to aggregate this round: {problem}")
    if fed.aggregator == "fedavg":
        return weighted_mean([(params, weights[site].value) for site, params in updates.items()])
    return coordinate_wise(list(updates.values()), fed.aggregator, fed.trim_fraction)
