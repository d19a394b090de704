"""Speed and memory of local training and inference on this machine (not a test: numbers go to docs).

For each encoder and resolution, in a fresh subprocess (so peak RSS is per configuration):
images/s of one G+D training step (StudioTrainer.step, batch 8) and of generator inference.
VGG-16 runs with randomly initialised weights when its ImageNet file is absent: speed does not depend
on the weights' values.

    python benchmarks/local_train.py [--sizes 128 256] [--encoders efficientnet-lite0 vgg16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def measure(encoder: str, size: int, batch: int, steps: int) -> dict:
    from fedgai.config import profile
    from fedgai.data import make_demo
    from fedgai.trainer import StudioTrainer

    with tempfile.TemporaryDirectory() as tmp:
        weights = None
        if encoder == "vgg16":
            from torchvision.models import vgg16

            weights = str(Path(tmp) / "vgg16-random.pth")
            torch.save(vgg16().state_dict(), weights)
        studio = make_demo(Path(tmp) / "demo", studios=1, seed=0, size=size, progress=False)[0]
        cfg = profile("paper").with_overrides({
            "model.encoder": encoder, "model.vgg_weights": weights, "model.image_size": size,
            "train.batch_size": batch, "train.max_pairs": batch * 2, "loss.clip_pretrained": "none",
        })
        trainer = StudioTrainer(cfg, studio, Path(tmp) / "run")
        photo, sketch = next(iter(trainer.loader()))
        trainer.step(photo, sketch)  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            trainer.step(photo, sketch)
        train_ips = steps * batch / (time.perf_counter() - start)
        trainer.generate(photo)
        start = time.perf_counter()
        for _ in range(steps):
            trainer.generate(photo)
        infer_ips = steps * batch / (time.perf_counter() - start)
    return {
        "encoder": encoder, "size": size, "batch": batch,
        "train_images_per_s": round(train_ips, 2), "generate_images_per_s": round(infer_ips, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--encoders", nargs="+", default=["efficientnet-lite0", "vgg16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/local_train.json"))
    parser.add_argument("--one", nargs=2, metavar=("ENCODER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.batch, args.steps)))
        return
    rows = []
    for encoder in args.encoders:
        for size in args.sizes:
            cmd = [sys.executable, __file__, "--one", encoder, str(size), "--batch", str(args.batch),
                   "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    result = {"machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                          "processor": platform.processor(), "torch": torch.__version__}, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
