"""One federated round without NVFlare: the studio's update step and the server's aggregation step.

NVFlare only carries these: federated/client.py wraps ``studio_update`` in flare.receive/send, the controller
(federated/controller.py) wraps ``server_step`` around its broadcast and screening, and the benchmark harness
(benchmarks/federation_value.py) calls both directly, so what it measures is the product's round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgai.config import FedgaiConfig
from fedgai.federated.aggregation import Params, Weight, aggregate, capped_weights, clip_to_median_norm, update_norm


@dataclass
class StudioUpdate:
    """A studio's round: the DIFF of its shared entries against the round's baseline, and its loss means."""

    diff: dict[str, torch.Tensor]
    losses: dict[str, float]


def studio_update(trainer, baseline: Mapping[str, torch.Tensor] | None, tag: str = "") -> StudioUpdate:
    """Train the round's local epochs; the DIFF is taken against ``baseline`` (the global the studio loaded, or
    its own D when it refused the global; None in the local-only mode, which sends nothing)."""
    losses = trainer.train_epochs(trainer.cfg.train.epochs, tag=tag)
    if baseline is None:
        return StudioUpdate({}, losses)
    after = trainer.shared_state()
    return StudioUpdate({key: after[key] - baseline[key] for key in baseline}, losses)


@dataclass
class ServerStep:
    """The new global entries and what the aggregation did to each studio's update."""

    params: dict[str, np.ndarray]
    weights: dict[str, Weight]
    norms: dict[str, float]
    clipped: dict[str, bool]
    clip_bound: float | None
    step_norm: float
    first_counts: dict[str, int] = field(default_factory=dict)


def server_step(global_params: Mapping[str, np.ndarray], updates: Mapping[str, Params],
                counts: Mapping[str, int] | None, cfg: FedgaiConfig, first_counts: Mapping[str, int],
                floor: float = 0.0) -> ServerStep:
    """Cap the weights (``counts`` None under DP: every studio weighs the same), bound outsized updates by the
    round's median norm (never below ``floor``), aggregate with fed.aggregator and apply the step.

    ``first_counts``: each studio's count when first seen (the cap on count inflation); the result carries it
    with this round's newcomers added. Raises aggregation.TooFewStudios when a robust aggregator has too few.
    """
    if counts is None:
        weights, seen = {site: Weight(1.0) for site in updates}, dict(first_counts)
    else:
        seen = {**{site: counts[site] for site in updates}, **first_counts}
        weights = capped_weights({site: counts[site] for site in updates}, cfg.fed, seen)
    clipped, bound = clip_to_median_norm(updates, cfg.fed.norm_bound_factor, floor)
    step = aggregate(clipped, weights, cfg.fed)
    return ServerStep(
        params=apply_update(global_params, step), weights=weights,
        norms={site: update_norm(params) for site, params in updates.items()},
        clipped={site: clipped[site] is not updates[site] for site in updates},
        clip_bound=bound, step_norm=update_norm(step), first_counts=seen,
    )


def apply_update(global_params: Mapping[str, np.ndarray], diff: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """global + diff, key by key, keeping each entry's dtype (a DIFF never removes entries, unlike a partial FULL
    update)."""
    return {key: (value + diff[key]).astype(value.dtype) if key in diff else value
            for key, value in global_params.items()}
