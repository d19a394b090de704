"""What fed.mode fedgai_ditto costs a studio: its training step against FedGAI's, same studio, same batches.

    python benchmarks/ditto_step_time.py runs/bench-data-u/studio-01-fine --reps 20

Both trainers are built with the settings of docs/results.md's fedgai_struct / fedgai_ditto comparison (64 px,
EfficientNet-Lite0, width 64, unpaired photos as in the quick profile, one thread) and take turns on the same
batch each repetition, so machine load hits both alike. Prints the median step time of each (the first
repetition, which warms caches, is dropped) and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fedgai.config import profile
from fedgai.trainer import StudioTrainer

SETTING = {"model.encoder": "efficientnet-lite0", "loss.clip_pretrained": "none", "model.image_size": 64,
           "train.max_pairs": 64, "train.epochs": 2, "model.gram_rows": 32, "model.gram_cols": 64,
           "model.disc_width": 64, "model.decoder_width": 64, "train.num_threads": 1}
MODES = {"fedgai": {}, "fedgai_ditto": {"fed.mode": "fedgai_ditto", "privacy.he": True}}


def step_seconds(trainer: StudioTrainer) -> float:
    """One training step (D + G; Ditto: D + shared G + personal G) on the epoch's first batch."""
    trainer.generator.train()
    trainer.discriminator.train()
    photo, sketch, real = trainer.features.batch(*next(iter(trainer.batches())))
    unpaired = trainer.unpaired_batch()
    start = time.perf_counter()
    trainer.step(photo, sketch, real, unpaired=unpaired)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studio", type=Path)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    base = profile("quick").with_overrides(SETTING)
    with tempfile.TemporaryDirectory() as scratch:
        trainers = {m: StudioTrainer(base.with_overrides(o), args.studio, Path(scratch) / m) for m, o in MODES.items()}
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.reps + 1):
            for mode, trainer in trainers.items():
                times[mode].append(step_seconds(trainer))
    median = {m: statistics.median(t[1:]) for m, t in times.items()}
    print(json.dumps({"median_step_s": median, "ratio": median["fedgai_ditto"] / median["fedgai"],
                      "reps": args.reps}))


if __name__ == "__main__":
    main()
