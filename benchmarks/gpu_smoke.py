"""GPU site check, under 5 minutes on one GPU: the CUDA smoke tests, then paper-profile training speed.

1. runs tests/test_gpu.py (fails if they fail or are skipped: this script is for GPU machines);
2. times StudioTrainer.step at the paper profile (256 px, batch 8 or --batch, EfficientNet-Lite0 encoder, CLIP off)
   on CUDA with bf16 autocast, on CUDA in float32 and on the CPU (fewer steps), and prints one JSON line each.

    python benchmarks/gpu_smoke.py [--steps 20] [--cpu-steps 2] [--batch 8] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def smoke_tests() -> None:
    """The CUDA tests must run and pass here; a skip means torch sees no GPU."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(REPO / "tests" / "test_gpu.py")],
                            cwd=REPO, capture_output=True, text=True)
    print(result.stdout[-2000:], flush=True)
    if result.returncode != 0 or "skipped" in result.stdout.splitlines()[-1]:
        sys.exit("tests/test_gpu.py did not pass on this machine")


def time_steps(studio: Path, run: Path, device: str, amp: str, steps: int, batch: int) -> dict:
    """Seconds per G+D step at 256 px, after one warm-up step; peak GPU memory where it applies."""
    from fedgai.config import profile
    from fedgai.trainer import StudioTrainer

    cfg = profile("paper").with_overrides({"model.encoder": "efficientnet-lite0", "loss.clip_pretrained": "none",
                                           "train.max_pairs": 2 * batch, "train.batch_size": batch,
                                           "train.device": device, "train.amp": amp})
    trainer = StudioTrainer(cfg, studio, run)
    photo, sketch = (t.to(trainer.device) for t in next(iter(trainer.loader())))
    trainer.step(photo, sketch)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    losses = [trainer.step(photo, sketch)["loss_g"] for _ in range(steps)]
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return {"device": str(trainer.device), "amp": "bf16" if trainer.amp else "off", "size": 256,
            "batch": cfg.train.batch_size, "steps": steps, "s_per_step": round(seconds, 4),
            "images_per_s": round(cfg.train.batch_size / seconds, 1), "last_loss_g": round(losses[-1], 4),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if trainer.device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps on the GPU (default 20)")
    parser.add_argument("--cpu-steps", type=int, default=2, help="timed steps on the CPU (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8, the paper profile's)")
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch: run this on a GPU machine")
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    smoke_tests()
    from fedgai.data import make_demo

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        studio = make_demo(Path(tmp) / "demo", studios=1, seed=0, size=256, progress=False)[0]
        for index, (device, amp, steps) in enumerate(
                [("cuda", "auto", args.steps), ("cuda", "off", args.steps), ("cpu", "off", args.cpu_steps)]):
            results.append(time_steps(studio, Path(tmp) / f"run{index}", device, amp, steps, args.batch))
            print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
