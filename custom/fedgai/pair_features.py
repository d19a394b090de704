"""The frozen encoder's view of each training pair, computed once per studio and reused every epoch.

The encoder never trains and the only augmentation is a horizontal flip, so a pair has exactly two views.
Each is encoded the first time a batch needs it and kept in memory (a conv encoder is not flip-equivariant:
the flipped view gets its own features). What is kept is only what the losses read (objective.RealFeatures):
the photo's taps, the sketch's deepest tap and its Gram matrices - not the sketch's other taps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from fedgai.data import SketchPairDataset
from fedgai.objective import RealFeatures


class PairFeatureCache:
    """Batches of (photo, sketch, RealFeatures) for (pair index, flipped) keys of one studio's training pairs."""

    def __init__(self, pairs: SketchPairDataset, encode: Callable[[torch.Tensor, torch.Tensor], RealFeatures],
                 device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager] | None = None):
        """``encode`` is Objective.real_features; ``autocast`` the trainer's (features match its precision)."""
        self.pairs = pairs
        self.encode = encode
        self.device = device
        self.autocast = autocast or contextlib.nullcontext
        self._rows: dict[tuple[int, bool], RealFeatures] = {}

    def __len__(self) -> int:
        """Views encoded so far (at most two per pair)."""
        return len(self._rows)

    def images(self, indices: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pairs' (photo, sketch) views on the device."""
        views = [self._view(int(i), bool(f)) for i, f in zip(indices, flips, strict=True)]
        return (torch.stack([p for p, _ in views]).to(self.device),
                torch.stack([s for _, s in views]).to(self.device))

    def batch(self, indices: torch.Tensor, flips: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, RealFeatures]:
        """Photos, sketches and their real features; views not seen before are encoded together."""
        photo, sketch = self.images(indices, flips)
        keys = [(int(i), bool(f)) for i, f in zip(indices, flips, strict=True)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._rows]
        if missing:
            at = [keys.index(k) for k in missing]
            with self.autocast():
                fresh = self.encode(photo[at], sketch[at])
            self._rows.update({k: fresh.row(j) for j, k in enumerate(missing)})
        return photo, sketch, RealFeatures.stack([self._rows[k] for k in keys])

    def _view(self, index: int, flipped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        photo, sketch = self.pairs[index]
        return (photo.flip(-1), sketch.flip(-1)) if flipped else (photo, sketch)
