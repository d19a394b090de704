"""train.public_mix: every step's batch gains public line-style pairs, each drawn in its own sketch's statistics.

Why: FedAvg over local steps that see one studio's code lets each studio pull the shared renderer towards its own
style, and the average of those pulls is not a renderer that follows codes (docs/results.md, issue 27 §3). The
pooled falsifier (§0) paid because every batch mixed styles and the critic judged all of them. Public styles give
every local step that mix without any other studio's data: they are the prior's procedural line styles
(data/public_styles.py, families disjoint from the demo studios'), made at the studio itself, nothing downloaded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from fedgai import prior
from fedgai.data import SketchPairDataset, load_studio
from fedgai.data.public_styles import write_line_style_studio
from fedgai.data.studio import MIN_SIZE
from fedgai.objective import RealFeatures
from fedgai.pair_features import PairFeatureCache

Batch = tuple[torch.Tensor, torch.Tensor, RealFeatures]


def public_line_styles(size: int) -> Path:
    """The prior's public line-style pairs rendered for ``size`` px, made once per machine in the prior cache
    (prior.cache_dir()); written to a temporary folder and renamed, so concurrent studios never see half a set.
    Rendered as the prior's were (at least MIN_SIZE; the loader resizes to ``size``)."""
    size = max(size, MIN_SIZE)
    folder = prior.cache_dir() / f"line-styles-{size}px-{prior.STYLED_PRIOR_STYLES}x{prior.STYLED_PRIOR_PER_STYLE}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".line-styles-", dir=folder.parent))
    try:  # an interrupted render leaves no half set behind
        write_line_style_studio(tmp / "studio", size, prior.STYLED_PRIOR_STYLES, prior.STYLED_PRIOR_PER_STYLE,
                                prior.PRIOR_STREAM)
        with contextlib.suppress(OSError):  # another studio renamed its copy first: theirs is the same set
            os.rename(tmp / "studio", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class PublicMix:
    """Draws ``count`` random public pairs (with a random flip) per step; their encoder features are cached like
    the studio's own (pair_features.PairFeatureCache). Its own random stream, so the studio's schedule is unchanged."""

    def __init__(self, count: int, size: int, seed: int, encode: Callable[[torch.Tensor, torch.Tensor], RealFeatures],
                 device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.count = count
        self.pairs = SketchPairDataset(load_studio(public_line_styles(size)), size)
        self.cache = PairFeatureCache(self.pairs, encode, device, autocast)
        self.rng = torch.Generator().manual_seed(seed)

    def join(self, batch: Batch) -> Batch:
        """``batch`` (the studio's pairs) followed by ``count`` public pairs."""
        indices = torch.randint(len(self.pairs), (self.count,), generator=self.rng)
        flips = torch.rand(self.count, generator=self.rng) < 0.5
        photo, sketch, real = self.cache.batch(indices, flips)
        return (torch.cat([batch[0], photo]), torch.cat([batch[1], sketch]), RealFeatures.cat(batch[2], real))
