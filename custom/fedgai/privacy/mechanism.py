"""Client-level Gaussian mechanism for one model update (DP-FedAvg).

McMahan et al. 2018 ("Learning differentially private recurrent language models") and Augenstein et al. 2020
(DP-FedAvg-GAN): the *whole* update of a client is scaled so that its global L2 norm is at most C, then
N(0, (sigma*C)^2) is added to every coordinate. The sensitivity of one client's contribution is then C, so one
release is a Gaussian mechanism with noise multiplier sigma; the accountant composes the rounds.

Randomness: the default generator is numpy's PCG64 seeded with 128 bits from ``secrets`` (the OS CSPRNG).
PCG64 itself is *not* a cryptographic RNG: its output is statistically excellent but predictable to someone
who observes enough raw output or learns the seed. Seeding from the OS per release keeps the seed
unguessable, and the server only ever sees update + noise, never raw draws. Two known gaps remain and are
accepted here: an attacker with access to the site's process memory can read the state, and floating-point
Gaussian sampling is not an exact Gaussian (Mironov 2012), which in theory weakens the guarantee at the
least-significant bits.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import numpy as np

Update = dict[str, np.ndarray]


class UnsafeUpdateError(ValueError):
    """The update cannot be privatised safely, so it must not leave the site."""


def secure_rng() -> np.random.Generator:
    """A fresh generator seeded from the OS CSPRNG, so the noise seed cannot be guessed or replayed."""
    return np.random.default_rng(secrets.randbits(128))


def validate_update(update: Mapping[str, object]) -> None:
    """Refuse anything the mechanism cannot bound: no arrays, non-numpy, non-float or non-finite values."""
    if not isinstance(update, Mapping) or not update:
        raise UnsafeUpdateError("the update holds no arrays; nothing can be privatised")
    for key, value in update.items():
        if not isinstance(value, np.ndarray):
            raise UnsafeUpdateError(f"update entry {key!r} is {type(value).__name__}, not a numpy array")
        if not np.issubdtype(value.dtype, np.floating):
            raise UnsafeUpdateError(f"update entry {key!r} has dtype {value.dtype}; only real floats can be noised")
        if not np.all(np.isfinite(value)):
            raise UnsafeUpdateError(f"update entry {key!r} has NaN or infinite values")


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over all arrays (accumulated in float64 so float16/32 updates cannot overflow)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))


def check_parameters(clip_norm: float, noise_multiplier: float) -> None:
    """Reject settings that would make the mechanism meaningless (no clipping bound, negative noise)."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier}")


def clip_and_noise(
    update: Mapping[str, np.ndarray],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> tuple[Update, dict[str, float]]:
    """Clip the whole update to L2 norm <= clip_norm, add N(0, (noise_multiplier*clip_norm)^2) per coordinate.

    Shapes and dtypes are kept. Returns the noised update and {"norm_before", "clip_factor", "noise_std"}.
    """
    check_parameters(clip_norm, noise_multiplier)
    validate_update(update)
    rng = rng if rng is not None else secure_rng()
    norm = update_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    # np.asarray: numpy arithmetic on a 0-d array (e.g. the generator's MRFM scalar ``blocks.0.w``) returns a
    # scalar, which the server's screening refuses as "not an array".
    noised = {
        key: np.asarray((a.astype(np.float64) * factor + rng.normal(0.0, std, size=a.shape)).astype(a.dtype))
        for key, a in update.items()
    }
    return noised, {"norm_before": norm, "clip_factor": factor, "noise_std": std}
