"""Server-side screening of one studio's contribution before it may touch the global model.

Everything a studio sends is untrusted: any type can arrive where a number or an array is expected. A bad
contribution (wrong keys, shapes or dtypes, NaN/Inf, an outsized or empty update, no usable sample count) is dropped
with a reason; the round goes on with the others. What the server keeps of a contribution for its records
(metrics, epsilon) is converted to plain, finite JSON values here. Every check is a plain function, so the
rules can be tested without NVFlare.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedgai.config import FedgaiConfig
from fedgai.federated.aggregation import near_zero_norm, size_problem, update_norm

PREVIEW = 3
# Standard deviations of the DP noise's norm allowed above its mean before an update counts as outsized.
NOISE_NORM_MARGIN = 6.0
# What the round summary keeps of a studio's metrics: at most this many, with names at most this long.
MAX_METRICS = 64
MAX_METRIC_NAME = 64
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40


def short_repr(value: Any) -> str:
    """A bounded repr for messages: a hostile value must not flood the logs."""
    return _short.repr(value)


def _preview(keys: list[str]) -> str:
    more = f" (+{len(keys) - PREVIEW} more)" if len(keys) > PREVIEW else ""
    return ", ".join(keys[:PREVIEW]) + more


def as_number(value: Any) -> float | None:
    """A real number (Python or numpy, not bool) as float; None for anything else. May be NaN/Inf."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range
        return math.inf


def sample_count(value: Any) -> tuple[int | None, str | None]:
    """(count, None) for a positive integer (numpy integers too), else (None, why not)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or value <= 0:
        return None, ("sample count (meta NUM_STEPS_CURRENT_ROUND) must be a positive integer, got "
                      f"{short_repr(value)} ({type(value).__name__})")
    return int(value), None


def clean_metrics(metrics: Any) -> tuple[dict[str, float | None], list[str]]:
    """(numeric metrics with NaN/Inf as None, names of the non-finite ones); anything else is left out."""
    if not isinstance(metrics, Mapping):
        return {}, []
    out: dict[str, float | None] = {}
    nonfinite = []
    for name, value in list(metrics.items())[:MAX_METRICS]:
        number = as_number(value)
        if not isinstance(name, str) or len(name) > MAX_METRIC_NAME or number is None:
            continue
        out[name] = number if math.isfinite(number) else None
        if out[name] is None:
            nonfinite.append(name)
    return out, nonfinite


def clean_epsilon(value: Any) -> tuple[float | None, str | None]:
    """(epsilon, None) for a finite epsilon >= 0 or no epsilon, else (None, why it was not recorded)."""
    if value is None:
        return None, None
    number = as_number(value)
    if number is None or not math.isfinite(number) or number < 0:
        return None, f"dp_epsilon must be a finite number >= 0, got {short_repr(value)} ({type(value).__name__})"
    return number, None


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


def update_norm_floor(cfg: FedgaiConfig, reference: Mapping[str, np.ndarray]) -> float:
    """The norm at or below which an update is refused as empty: also the floor under the median-based bound.

    Plain: float32 resolution x the model's norm (``near_zero_norm``). Under client-level DP every honest
    update carries noise of norm ~ sigma C sqrt(d), and its clipped signal (norm <= C) can cancel at most C of
    it, so anything below sigma C (sqrt(d) - margin) - C was not noised as the job says: without this floor a
    studio sending zeros would set the median bound to 0 with two studios.
    """
    floor = near_zero_norm(reference)
    p = cfg.privacy
    if p.dp != "client":
        return floor
    d = sum(v.size for v in reference.values())
    noise = p.noise_multiplier * p.clip_norm * (np.sqrt(d) - NOISE_NORM_MARGIN) - p.clip_norm
    return max(floor, float(noise))


def contribution_problem(
    params: Any,
    params_type: Any,
    num_samples: Any,
    reference: Mapping[str, np.ndarray],
    max_update_norm: float | None,
    *,
    count_required: bool = True,
    min_update_norm: float | None = None,
) -> str | None:
    """Why a contribution cannot be aggregated, or None when it can.

    ``reference`` holds the global entries the mode federates (empty for the local-only baseline, where a
    studio must send metrics only). Updates must be DIFFs: a partial FULL update would replace the whole
    global dict in NVFlare's ``FLModelUtils.update_model``. ``count_required`` is off under DP, where studios
    do not send their pair count and every studio weighs the same. Updates whose norm is at or below
    ``min_update_norm`` (``update_norm_floor``; by default ``near_zero_norm(reference)``) are refused as empty.
    """
    if count_required:
        problem = sample_count(num_samples)[1]
        if problem:
            return problem
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        return f"params must be a dict of arrays, got {type(params).__name__}"
    if not all(isinstance(key, str) for key in params):
        return "params has non-string keys"
    missing = sorted(set(reference) - set(params))
    extra = sorted(set(params) - set(reference))
    if extra:
        return f"{len(extra)} unexpected key(s): {_preview([k[:MAX_METRIC_NAME] for k in extra])}"
    if missing:
        return f"{len(missing)} missing key(s): {_preview(missing)}"
    if not reference:
        return None
    if params_type != "DIFF":
        return f"params_type is {short_repr(params_type)}, expected DIFF"
    problem = _array_problem(params, reference)
    if problem:
        return problem
    norm = update_norm(params)
    if max_update_norm is not None and norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds fed.max_update_norm {max_update_norm:g}"
    return size_problem(params, near_zero_norm(reference) if min_update_norm is None else min_update_norm)


def _array_problem(params: Mapping[str, Any], reference: Mapping[str, np.ndarray]) -> str | None:
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
    return None
