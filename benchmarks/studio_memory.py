"""Where one studio process's memory goes: private memory (RssAnon) after each step of a studio's life.

    python benchmarks/studio_memory.py runs/demo-data/studio-07-charcoal [--epochs 4] [--profile quick]

Steps: import torch; the rest of the imports; the trainer built (data decoded, networks, optimisers); each
epoch's peak (sampled every 10 ms), after the epoch, and after its freed heap is returned (slots.release_memory,
as a studio does after each round in `fedgai simulate`). Private memory is what each of the simulator's studio
processes adds; shared library pages are counted once across them (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import threading
import time
from pathlib import Path


def private_mb() -> float:
    """RssAnon of this process, MB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+)", status)[1]) / 1024


class Peak:
    """The largest private memory seen since the last reset, sampled in a thread."""

    def __init__(self) -> None:
        self.value = private_mb()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.value = max(self.value, private_mb())
            time.sleep(0.01)

    def reset(self) -> None:
        self.value = private_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studio", type=Path)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = []

    def record(step: str, value: float | None = None) -> None:
        rows.append((step, private_mb() if value is None else value))
        print(f"{step:34s} {rows[-1][1]:7.0f} MB", flush=True)

    start = private_mb()
    import torch

    record(f"import torch {torch.__version__}")
    from fedgai.config import profile
    from fedgai.federated.studio.slots import release_memory
    from fedgai.losses import CLIP_UNAVAILABLE_ENV
    from fedgai.trainer import StudioTrainer

    record("+ NVFlare client, fedgai imports")
    # As in `fedgai simulate` offline: the studio is told CLIP is unavailable and never imports open_clip.
    os.environ.setdefault(CLIP_UNAVAILABLE_ENV, "benchmark: CLIP not loaded")
    cfg = profile(args.profile).with_overrides({"model.encoder": "efficientnet-lite0", "train.num_threads": 1})
    trainer = StudioTrainer(cfg, args.studio, tempfile.mkdtemp(), device="cpu")
    record("trainer built")
    release_memory()
    record("trainer built, trimmed")
    peak = Peak()
    for epoch in range(1, args.epochs + 1):
        peak.reset()
        trainer.train_epochs(1)
        trainer.quality()
        record(f"epoch {epoch}: peak", peak.value)
        record(f"epoch {epoch}: after")
        release_memory()
        record(f"epoch {epoch}: after, trimmed")
    print(f"(private memory before importing torch: {start:.0f} MB)")


if __name__ == "__main__":
    main()
