"""A studio's check of each global model before it loads it: finite, and not moved further than a bound the
studio holds itself.

Why: a server (or, under HE, one studio scaling its encrypted update) can send a global that would wreck the
studio's D. The check runs in the studio's own script for every global (client.py), and in the HE decryptor
(he_studio.py) on what it decrypts.

The bound cannot be ratcheted (issue 24 §4): a change counts towards later bounds at most as much as the first
change the studio accepted (its anchor), so a global grown ~10x per round is refused from the third round on,
instead of passing for ever because each round's change was within 10x of the last (old code: 7 rounds of 9.9x
passed, ending at 1e7 x the norm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass
class GlobalCheck:
    """Refused: any non-finite value; a change (L2 over all shared entries) larger than ``factor`` x the largest of
    the last ``history`` accepted changes, each counted at most as the first accepted change; or, before any
    change was seen, larger than ``first_factor`` x the last global's own norm. The bounds are loose on purpose
    (an honest round moves D by about as much as the previous one; the first round can move it by about its own
    norm): they stop a scaled or corrupted aggregate, not a small poisoned step inside it. A refused global does
    not become the reference."""

    factor: float = 10.0
    history: int = 3
    first_factor: float = 10.0
    last: dict[str, np.ndarray] | None = None
    changes: list[float] = field(default_factory=list)
    anchor: float | None = None  # the first accepted change (> 0)

    def review(self, params: Mapping[str, np.ndarray]) -> str | None:
        """Why ``params`` must not be loaded, or None (then it is the new reference)."""
        arrays = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
        nonfinite = sorted(key for key, value in arrays.items() if not np.isfinite(value).all())
        if nonfinite:
            return f"{len(nonfinite)} entries hold non-finite values: {nonfinite[:3]}"
        if self.last is not None and set(self.last) == set(arrays):
            change = float(np.sqrt(sum(np.sum((arrays[k] - self.last[k]) ** 2) for k in arrays)))
            bound, basis = self.bound()
            if change > bound:
                return f"it moved by {change:.3g} since the last global, more than the bound {bound:.3g} ({basis})"
            if change > 0:  # an unchanged global (a round without updates) says nothing about the next change
                self.anchor = change if self.anchor is None else self.anchor
                self.changes = [*self.changes, min(change, self.anchor)][-self.history:]
        self.last = arrays
        return None

    def bound(self) -> tuple[float, str]:
        """The largest change accepted now, and what it is derived from."""
        if self.changes:
            return self.factor * max(self.changes), (f"{self.factor:g} x the largest of the last {len(self.changes)} "
                                                     f"changes, each counted at most as the first, {self.anchor:.3g}")
        norm = float(np.sqrt(sum(np.sum(value ** 2) for value in (self.last or {}).values())))
        return self.first_factor * norm, f"{self.first_factor:g} x the last global's norm, before any change was seen"
