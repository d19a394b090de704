"""One feature space per federation: a studio's discriminator only means something in its own feature space.

D scores Gram matrices of the frozen encoder's features, so two studios whose encoders differ (``encoder:
auto`` picks VGG-16 where its weights are cached, EfficientNet-Lite0 elsewhere) train Ds that cannot be
averaged. The feature space is named by a small dict (the fingerprint): encoder name and weights hash, CLIP
state, image size and the discriminator's shape. Studios report theirs with every update; the server fixes the
federation's from a strict majority of the first round's studios, sends it with the global model and refuses
other updates; a studio refuses a global model from another feature space. Each side says what differs.
A strict majority, because a fingerprint is self-reported: with two studios a tie broken by sorting would let a
studio that makes one up decide the federation's feature space and lock the honest studio out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedgai.config import FedgaiConfig
from fedgai.wire import FINGERPRINT_META_KEY

# The fingerprint (wire.FINGERPRINT_META_KEY) goes studio -> server in every result, server -> studio with the
# global model.
FIELDS = ("encoder", "encoder_weights", "clip", "image_size", "discriminator")
MAX_VALUE_LENGTH = 200
NO_MAJORITY = ("no feature space is reported by a strict majority of the studios, so none is adopted (a tie cannot "
               "tell a made-up fingerprint from a real one): the studios must run the same encoder and CLIP setting")
FeatureSpace = dict[str, Any]


class FeatureSpaceMismatch(ValueError):
    """The global model and this studio (or a studio and the federation) use different feature spaces."""


def feature_space(cfg: FedgaiConfig, encoder_name: str, encoder_weights: str, clip_enabled: bool) -> FeatureSpace:
    """The fingerprint of a studio that runs ``cfg`` with the given encoder and CLIP state."""
    return {**config_expectations(cfg), "encoder": encoder_name, "encoder_weights": encoder_weights,
            "clip": f"{cfg.loss.clip_model}:{cfg.loss.clip_pretrained}" if clip_enabled else None}


def studio_feature_space(trainer: Any) -> FeatureSpace:
    """The fingerprint of a StudioTrainer (its built encoder and whether CLIP loaded)."""
    return feature_space(trainer.cfg, trainer.encoder.name, trainer.encoder.weights_hash(), trainer.clip is not None)


def config_expectations(cfg: FedgaiConfig) -> FeatureSpace:
    """The fingerprint fields the job's configuration fixes by itself (the server knows them before round 0)."""
    m = cfg.model
    fixed: FeatureSpace = {
        "image_size": m.image_size,
        "discriminator": f"gram {m.gram_rows}x{m.gram_cols}, width {m.disc_width}, "
                         f"mode {cfg.fed.mode}, dp {cfg.privacy.dp}",
    }
    if m.encoder != "auto":
        fixed["encoder"] = m.encoder
    if cfg.loss.clip_pretrained == "none":
        fixed["clip"] = None
    return fixed


def parse(value: Any) -> tuple[FeatureSpace | None, str | None]:
    """(fingerprint, None) when ``value`` is a well-formed fingerprint (it comes off the wire), else (None, why)."""
    if not isinstance(value, Mapping):
        return None, f"no feature-space fingerprint (meta {FINGERPRINT_META_KEY})"
    if set(value) != set(FIELDS):
        return None, f"malformed feature-space fingerprint: fields must be {', '.join(FIELDS)}"
    for key, item in value.items():
        if isinstance(item, bool) or (item is not None and not isinstance(item, str | int)):
            return None, f"malformed feature-space fingerprint: {key} is a {type(item).__name__}"
        if isinstance(item, str) and len(item) > MAX_VALUE_LENGTH:
            return None, f"malformed feature-space fingerprint: {key} is too long"
    return dict(value), None


def differences(own: Mapping[str, Any], other: Mapping[str, Any], here: str, there: str) -> list[str]:
    """``key: value here, value there`` for every field both name and that differ."""
    return [f"{key}: {own[key]!r} {here}, {other[key]!r} {there}" for key in FIELDS
            if key in own and key in other and own[key] != other[key]]


def update_problem(reported: Any, expected: Mapping[str, Any] | None) -> str | None:
    """Server side: why a studio's reported fingerprint does not fit the federation's (or its config's), or None.

    ``expected`` is None when the studios were asked to agree and no fingerprint held a strict majority
    (``majority``): then no update fits, since none can be told apart from a made-up one.
    """
    fingerprint, problem = parse(reported)
    if problem:
        return problem
    if expected is None:
        return NO_MAJORITY
    diff = differences(fingerprint, expected, "at the studio", "in the federation")
    return f"feature space differs from the federation's: {'; '.join(diff)}" if diff else None


def check_global_model(own: Mapping[str, Any], received: Any) -> None:
    """Studio side: raise FeatureSpaceMismatch if the global model comes from another feature space.

    ``received`` is None before the federation has fixed its feature space (round 0).
    """
    if received is None:
        return
    fingerprint, problem = parse(received)
    if problem:
        raise FeatureSpaceMismatch(f"the global model carries a {problem}")
    diff = differences(own, fingerprint, "here", "in the global model")
    if diff:
        raise FeatureSpaceMismatch(
            f"the global model was trained in another feature space ({'; '.join(diff)}); this studio cannot "
            "join it: use the federation's encoder (model.encoder / model.vgg_weights) and CLIP setting")


def majority(fingerprints: Mapping[str, FeatureSpace]) -> FeatureSpace | None:
    """The fingerprint more than half of the studios report, or None when none does (a tie, or a split).

    No tie-break: any rule that picks one of two equally reported fingerprints lets a hostile studio win the
    pick with a fingerprint it made up. Without a strict majority nothing is adopted and the next round asks
    again; ``update_problem(..., None)`` gives the reason every update of such a round is refused.
    """
    counts: dict[tuple, tuple[int, FeatureSpace]] = {}
    for fingerprint in fingerprints.values():
        key = tuple((k, str(fingerprint[k])) for k in FIELDS)
        counts[key] = (counts.get(key, (0, fingerprint))[0] + 1, fingerprint)
    for count, fingerprint in counts.values():
        if 2 * count > len(fingerprints):
            return fingerprint
    return None
