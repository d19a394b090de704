"""Each studio's pairs split once into train / val / test, so held-out quality means what it says.

The split is by pair (file stem), deterministic for a seed and stable when files are added: a pair's side
depends only on a hash of (seed, stem), never on how many other pairs exist or on their order. Test pairs
are never trained on in any mode; val pairs drive the per-round held-out metric.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from fedgai.data.studio import Studio
from fedgai.layout import SPLIT_FILE

MIN_TRAIN_PAIRS = 2


class SplitError(ValueError):
    """A split cannot be made or does not match the studio it is used with."""


@dataclass(frozen=True)
class StudioSplit:
    studio: str
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        sides = (set(self.train), set(self.val), set(self.test))
        if sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2]:
            raise SplitError(f"split of studio {self.studio!r} is not disjoint")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> StudioSplit:
        try:
            data = json.loads(Path(path).read_text())
            return cls(studio=str(data["studio"]), seed=int(data["seed"]),
                       **{side: tuple(map(str, data[side])) for side in ("train", "val", "test")})
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise SplitError(f"cannot read split {path}: {err}") from err


def _rank(seed: int, stem: str) -> str:
    return hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest()


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) pair counts: at least one of each side whose fraction is > 0, leaving >= 2 to train."""
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n - n_test - n_val < MIN_TRAIN_PAIRS:
        raise SplitError(f"{n} pairs are too few to hold out {n_val} val and {n_test} test pairs and still "
                         f"train on {MIN_TRAIN_PAIRS}; add pairs or lower train.val_fraction/test_fraction")
    return n_val, n_test


def split_studio(studio: Studio, seed: int, val_fraction: float, test_fraction: float) -> StudioSplit:
    """The deterministic split of a studio's pairs by stem."""
    stems = sorted((photo.stem for photo, _ in studio.pairs), key=lambda s: _rank(seed, s))
    n_val, n_test = split_counts(len(stems), val_fraction, test_fraction)
    return StudioSplit(studio=studio.name, seed=seed, test=tuple(sorted(stems[:n_test])),
                       val=tuple(sorted(stems[n_test : n_test + n_val])),
                       train=tuple(sorted(stems[n_test + n_val :])))


def run_split(studio: Studio, run_dir: Path, seed: int, val_fraction: float, test_fraction: float) -> StudioSplit:
    """The split stored in a run folder, or a new one saved there; a stored split must match the studio."""
    path = Path(run_dir) / SPLIT_FILE
    fresh = split_studio(studio, seed, val_fraction, test_fraction)
    if not path.is_file():
        fresh.save(path)
        return fresh
    stored = StudioSplit.load(path)
    if stored != fresh:
        raise SplitError(f"{path} was made for another studio or split setting ({stored.studio!r}, seed "
                         f"{stored.seed}); this run has {fresh.studio!r}, seed {fresh.seed}. Use a new run folder.")
    return stored
