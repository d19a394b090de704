"""Server-side screening of one studio's contribution before it may touch the global model.

A bad contribution (wrong keys, shapes or dtypes, NaN/Inf, an outsized update, no sample count) is dropped
with a reason; the round goes on with the others. Every check is a plain function of numpy arrays so the
rules can be tested without NVFlare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedgai.config import FedgaiConfig
from fedgai.privacy.mechanism import update_norm

PREVIEW = 3
# Standard deviations of the DP noise's norm allowed above its mean before an update counts as outsized.
NOISE_NORM_MARGIN = 6.0


def _preview(keys: list[str]) -> str:
    more = f" (+{len(keys) - PREVIEW} more)" if len(keys) > PREVIEW else ""
    return ", ".join(keys[:PREVIEW]) + more


def update_norm_bound(cfg: FedgaiConfig, num_params: int) -> float | None:
    """fed.max_update_norm, widened under client-level DP to what a clipped, noised update can reach.

    Noise N(0, (sigma C)^2) on d coordinates has norm ~ sigma C sqrt(d) with spread ~ sigma C / sqrt(2);
    without the widening every honest DP update of the 0.37 M-parameter D (norm ~ 600 sigma C) is dropped.
    """
    bound = cfg.fed.max_update_norm
    p = cfg.privacy
    if bound is None or p.dp != "client":
        return bound
    noisy = p.clip_norm + p.noise_multiplier * p.clip_norm * (np.sqrt(num_params) + NOISE_NORM_MARGIN)
    return max(bound, float(noisy))


def contribution_problem(
    params: Mapping[str, Any] | None,
    params_type: str | None,
    num_samples: Any,
    reference: Mapping[str, np.ndarray],
    max_update_norm: float | None,
) -> str | None:
    """Why a contribution cannot be aggregated, or None when it can.

    ``reference`` holds the global entries the mode federates (empty for the local-only baseline, where a
    studio must send metrics only). Updates must be DIFFs: a partial FULL update would replace the whole
    global dict in NVFlare's ``FLModelUtils.update_model``.
    """
    params = params or {}
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
        return f"sample count (meta NUM_STEPS_CURRENT_ROUND) must be a positive integer, got {num_samples!r}"
    missing = sorted(set(reference) - set(params))
    extra = sorted(set(params) - set(reference))
    if extra:
        return f"{len(extra)} unexpected key(s): {_preview(extra)}"
    if missing:
        return f"{len(missing)} missing key(s): {_preview(missing)}"
    if not reference:
        return None
    if params_type != "DIFF":
        return f"params_type is {params_type}, expected DIFF"
    for key in sorted(reference):
        value, ref = params[key], reference[key]
        if not isinstance(value, np.ndarray):
            return f"{key}: expected an array, got {type(value).__name__}"
        if value.shape != ref.shape:
            return f"{key}: shape {value.shape} != {ref.shape}"
        if value.dtype != ref.dtype:
            return f"{key}: dtype {value.dtype} != {ref.dtype}"
        if not np.isfinite(value).all():
            return f"{key}: contains NaN or Inf"
    norm = update_norm(params)
    if max_update_norm is not None and norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds fed.max_update_norm {max_update_norm:g}"
    return None
