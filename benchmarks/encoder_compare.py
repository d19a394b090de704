"""Which encoder to use: train the same demo studio with each and score held-out sketches.

Scores are encoder-independent: L1 to the real sketch and the IoU of ink pixels (value < 0 in [-1, 1]),
on pairs the generator never saw. VGG-16's ImageNet weights are not on this machine, so `vgg16-random`
is the paper's architecture with random weights: it shows what pretraining buys, not the paper's encoder.

    python benchmarks/encoder_compare.py [--studio-index 1] [--pairs 48] [--epochs 10] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedgai.config import profile
from fedgai.data import Studio, make_demo
from fedgai.trainer import StudioTrainer

# name -> encoder setting; "vgg16" (ImageNet) needs --vgg-weights.
ENCODERS = {"efficientnet-lite0": "efficientnet-lite0", "vgg16": "vgg16", "vgg16-random": "vgg16", "random": "random"}
DEFAULT_ENCODERS = ["efficientnet-lite0", "vgg16-random", "random"]


def ink_iou(fake: torch.Tensor, real: torch.Tensor) -> float:
    a, b = fake < 0, real < 0
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def held_out(studio: Studio, first: int, count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from fedgai.data import read_image

    pairs = studio.pairs[first : first + count]
    return (torch.stack([read_image(p, 3, size) for p, _ in pairs]),
            torch.stack([read_image(s, 1, size) for _, s in pairs]))


def run(name: str, studio_dir: Path, args: argparse.Namespace, tmp: Path) -> dict:
    encoder = ENCODERS[name]
    weights = str(args.vgg_weights) if name == "vgg16" else None
    if name == "vgg16-random":
        from torchvision.models import vgg16

        weights = str(tmp / "vgg16-random.pth")
        torch.save(vgg16().state_dict(), weights)
    cfg = profile("quick").with_overrides({
        "model.encoder": encoder, "model.vgg_weights": weights, "model.image_size": args.size,
        "train.max_pairs": args.pairs, "loss.clip_pretrained": "none",
    })
    trainer = StudioTrainer(cfg, studio_dir, tmp / name)
    start = time.perf_counter()
    trainer.train_epochs(args.epochs)
    seconds = time.perf_counter() - start
    photos, sketches = held_out(trainer.studio, args.pairs, args.test_pairs, args.size)
    fake = trainer.generate(photos)
    trainer.save_grid(args.grids / f"encoder_{name}.png")
    return {"encoder": name, "train_seconds": round(seconds, 1),
            "heldout_l1": round(float((fake - sketches).abs().mean()), 4),
            "heldout_ink_iou": round(ink_iou(fake, sketches), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studio-index", type=int, default=1, help="demo studio (1 = bold marker)")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--test-pairs", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--encoders", nargs="+", default=DEFAULT_ENCODERS, choices=list(ENCODERS))
    parser.add_argument("--vgg-weights", type=Path, help="ImageNet vgg16-397923af.pth (for --encoders vgg16)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/encoder_compare.json"))
    parser.add_argument("--grids", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if "vgg16" in args.encoders and not args.vgg_weights:
        parser.error("--encoders vgg16 needs --vgg-weights (the ImageNet file)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        studio_dir = make_demo(tmp / "demo", studios=args.studio_index + 1, size=args.size, progress=False)[-1]
        rows = []
        for name in args.encoders:
            rows.append(run(name, studio_dir, args, tmp))
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings,
                                    "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
