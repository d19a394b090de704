"""One federated round without NVFlare: the global it starts from, the studio's update step and the server's
aggregation step.

NVFlare only carries these: federated/studio/client.py wraps ``studio_update`` in flare.receive/send, the controller
(federated/server/controller.py) wraps ``server_step`` around its broadcast and screening, and the benchmark harness
(benchmarks/federation_value.py) calls both directly, so what it measures is the product's round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgai.config import FedgaiConfig
from fedgai.features.fedrep import train_round
from fedgai.federated.aggregation import Params, Weight, aggregate, capped_weights, clip_to_median_norm, update_norm
from fedgai.models import build_discriminator, build_gan, per_sample_networks
from fedgai.modes import mode as fed_mode
from fedgai.prior import load_prior, resolved_encoder_name
from fedgai.sharing import shared_state, style_guarded_keys
from fedgai.wire import DP_WEIGHT


def initial_global(cfg: FedgaiConfig) -> dict[str, np.ndarray]:
    """The mode's shared entries of freshly built networks, seeded so every run starts alike, or of the public
    prior when train.prior is on: the same file the studios resolve ("auto": built before the job, never here).

    fedavg_full and fedbn also federate the generator, so the server needs the studios' encoder (for its
    channel counts) in those baselines only. Raises PriorError for a prior that is missing or built for another
    architecture.
    """
    torch.manual_seed(cfg.train.seed)
    if fed_mode(cfg.fed.mode).sends_generator:
        gan = build_gan(cfg)
        networks = {"generator": gan.generator, "discriminator": gan.discriminator}
        encoder_name = gan.encoder.name
    else:
        networks = {"discriminator": build_discriminator(cfg)}
        encoder_name = resolved_encoder_name(cfg)
    load_prior(cfg, encoder_name, networks.get("generator"), networks["discriminator"])
    # Under DP-SGD build_discriminator already swaps BatchNorm for GroupNorm, which then stays local too.
    return {k: v.numpy() for k, v in shared_state(networks, cfg.fed.mode, per_sample_networks(cfg)).items()}


@dataclass
class Received:
    """What a studio loaded from a round's global: the DIFF baseline (the global's entries, and its own for
    the stages its style guard declined), and whether it took the generator stages (None: no guard in this mode)."""

    baseline: dict[str, torch.Tensor]
    took_shared_stages: bool | None = None


def aggregation_weight(cfg: FedgaiConfig, num_samples: int) -> int:
    """The weight a studio's update carries (meta NUM_STEPS_CURRENT_ROUND): its pair count, or 1 (wire.DP_WEIGHT)
    under DP, under fed.weighting uniform, or auto in a mode with equal weights (then its pair count never leaves).
    Under DP wire.release_meta also sets it at the wire, whatever the meta said."""
    weighting = cfg.fed.weighting
    uniform = weighting == "uniform" or (weighting == "auto" and fed_mode(cfg.fed.mode).equal_weights)
    return DP_WEIGHT if uniform or cfg.privacy.dp != "none" else num_samples


def val_style_score(trainer) -> float:
    """The studio's own style score, from its held-out val pairs only (lower is better): the Gram distance
    of generated and real sketches at the encoder's taps (trainer.quality's ``*_gram``). The cross-studio style
    classifier is not available at a studio in a federation."""
    return next(value for key, value in trainer.quality().items() if key.endswith("_gram"))


def receive_global(trainer, params: Mapping[str, torch.Tensor]) -> Received:
    """Load a round's global entries. In a style-guarded mode (modes.Mode.style_guard) the studio scores
    its val style with its own generator stages and with the received ones, and keeps its own where the
    received ones score worse; D is always taken. Only the resulting bit may leave the studio. fedgai_ditto has
    no per-round guard: the global goes into the shared generator and becomes the anchor of the personal one,
    which is the guard (trainer.load_shared, features/ditto.py)."""
    received = {key: torch.as_tensor(value).detach().clone().cpu() for key, value in params.items()}
    guarded = style_guarded_keys(sorted(received), trainer.cfg.fed.mode)
    if not guarded:
        trainer.load_shared(received)
        return Received(received)
    own = trainer.shared_state()
    own_score = val_style_score(trainer)
    trainer.load_shared(received)
    took = val_style_score(trainer) <= own_score
    if took:
        return Received(received, True)
    kept = {**received, **{key: own[key] for key in guarded}}
    trainer.load_shared(kept)
    return Received(kept, False)


@dataclass
class StudioUpdate:
    """A studio's round: the DIFF of its shared entries against the round's baseline, and its loss means."""

    diff: dict[str, torch.Tensor]
    losses: dict[str, float]


def studio_update(trainer, baseline: Mapping[str, torch.Tensor] | None, tag: str = "") -> StudioUpdate:
    """Train the round's local work (features/fedrep.train_round: epochs or fixed steps, FedRep's head then
    body); the DIFF is taken against ``baseline`` (the global the studio loaded, or its own D when it refused the
    global; None in the local-only mode, which sends nothing)."""
    losses = train_round(trainer, tag)
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
