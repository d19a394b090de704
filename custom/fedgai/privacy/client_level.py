"""Client-level DP applied by the studio itself, in its own send path (issue 24 §1).

A job's result filters are the job's choice: a job can leave GaussianDPFilter out, or bind it to another task,
and then nothing noises the update. So the studio's script (federated/studio/client.py, ``releasable``) clips and
noises its update with the same mechanism (mechanism.clip_and_noise) and charges the same site ledger before
``flare.send``; no job configuration reaches that code. A job's own GaussianDPFilter then finds the studio's
record in the meta and checks it instead of noising again (filter.py): noise is applied once, by the studio.

Epsilon sent: this job's (its own client-level rounds), not the site's total over every job: the total would
tell the server how much the studio spent elsewhere. The site's ledger holds the total; its budget stops the
studio whichever job spends it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedgai.config import PrivacyConfig
from fedgai.privacy.accountant import (
    CLIENT_LEVEL_SAMPLE_RATE,
    PrivacyLedger,
    Step,
    client_level_noise,
    compute_epsilon,
)
from fedgai.privacy.mechanism import UnsafeUpdateError, clip_and_noise
from fedgai.wire import DP_CLIP_META_KEY, DP_DELTA_META_KEY, DP_EPSILON_META_KEY, DP_NOISE_META_KEY


def dp_meta(epsilon: float, delta: float, noise_multiplier: float, clip_norm: float) -> dict[str, float]:
    """The DP bookkeeping a noised result carries: what was applied, and the epsilon it reports."""
    return {DP_EPSILON_META_KEY: epsilon, DP_DELTA_META_KEY: delta, DP_NOISE_META_KEY: noise_multiplier,
            DP_CLIP_META_KEY: clip_norm}


def noise_problem(meta: Mapping, noise_multiplier: float, clip_norm: float) -> str | None:
    """Why a result whose meta says it was noised is weaker than (sigma, C) asks, or None. The record is the
    studio's own (its script writes it; a config-only job adds no code that could)."""
    sigma, clip = meta.get(DP_NOISE_META_KEY), meta.get(DP_CLIP_META_KEY)
    if not isinstance(sigma, int | float) or not isinstance(clip, int | float):
        return "the result carries no record of the studio's noise"
    if sigma < noise_multiplier or clip > clip_norm:
        return (f"the studio noised with sigma {sigma}, clip {clip}; this filter requires sigma >= "
                f"{noise_multiplier}, clip <= {clip_norm}")
    return None


@dataclass
class StudioClientDP:
    """The studio's client-level DP for one job: its settings (the site policy's already applied), the site's
    ledger, and how many rounds this job has released."""

    privacy: PrivacyConfig
    ledger_path: Path
    studio: str | None = None
    released: int = 0

    def release(self, params: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """(the clipped and noised update, its DP meta). The round is charged first, under the ledger's lock
        (a crash over-counts, never under-counts); PrivacyBudgetExceeded when it would pass the target."""
        if not params:
            raise UnsafeUpdateError("the update holds no arrays; nothing can be privatised")
        p = self.privacy
        arrays = {key: torch.as_tensor(value).detach().cpu().numpy() for key, value in params.items()}
        ledger = PrivacyLedger(self.ledger_path, self.studio, p.accountant)
        ledger.charge(client_level_noise(p.noise_multiplier), CLIENT_LEVEL_SAMPLE_RATE, 1, p.delta, p.target_epsilon)
        self.released += 1
        noised, _ = clip_and_noise(arrays, p.clip_norm, p.noise_multiplier)
        return ({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in noised.items()},
                dp_meta(self.job_epsilon(), p.delta, p.noise_multiplier, p.clip_norm))

    def job_epsilon(self) -> float:
        """Epsilon of this job's client-level rounds alone."""
        if not self.released:
            return 0.0
        step = Step(client_level_noise(self.privacy.noise_multiplier), CLIENT_LEVEL_SAMPLE_RATE, self.released)
        return compute_epsilon([step], self.privacy.delta, self.privacy.accountant)
