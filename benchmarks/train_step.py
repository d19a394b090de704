"""One quick-profile training step, taken apart: where the time goes, what the encoder-feature cache saves, and
how far the step is from this CPU's matmul peak (not a test: numbers go to docs/benchmarks.md).

All in one process, so the ratios compare like with like:
1. the breakdown of one step (torch.profiler over the step's labelled parts, uncached, so the encoder's
   share on the real pairs shows);
2. images/s of whole training epochs, interleaved epoch by epoch: before (the same batches, features
   recomputed every step, Adam as a per-parameter loop), with the cache, with fused optimisers, and with
   bf16 autocast (StudioTrainer.train_epochs, the product's path on a CPU with native bf16);
3. the step's FLOPs (torch.utils.flop_counter) and float32 and bf16 matmuls' GFLOP/s on the same threads.

    python benchmarks/train_step.py [--size 128] [--pairs 32] [--epochs 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

PARTS = ("encoder: photo", "encoder: real sketch", "G forward", "encoder: generated sketch",
         "D loss (Gram + structure critic)", "D backward + optimiser", "G loss terms", "G backward", "G optimiser")


def make_trainer(root: Path, size: int, pairs: int):
    from fedgai.config import profile as config_profile
    from fedgai.data import make_demo
    from fedgai.trainer import StudioTrainer

    studio = make_demo(root / "demo", studios=1, seed=0, size=size, progress=False)[0]
    cfg = config_profile("quick").with_overrides({"model.image_size": size, "train.max_pairs": pairs,
                                                  "loss.clip_pretrained": "none"})
    return StudioTrainer(cfg.with_overrides({"train.amp": "off"}), studio, root / "run")  # float32 first


def breakdown(trainer, photo: torch.Tensor, sketch: torch.Tensor, steps: int) -> dict[str, float]:
    """Milliseconds per step of each labelled part (CPU time, children included)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(photo, sketch)
    by_name = {e.key: e.cpu_time_total / 1000 / steps for e in prof.key_averages()}
    parts = {name: round(by_name.get(name, 0.0), 1) for name in PARTS}
    return parts


def uncached_epoch(trainer) -> None:
    """One epoch over the same batches as train_epochs, recomputing the encoder features every step."""
    trainer.generator.train()
    trainer.discriminator.train()
    for indices, flips in trainer.batches():
        trainer.step(*trainer.features.images(indices, flips))
    trainer.epoch += 1


def looped_adam(trainer) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """The optimisers before this change: Adam as a Python loop of small ops per parameter."""
    cfg = trainer.cfg.train
    return tuple(torch.optim.Adam(net.parameters(), lr=lr, betas=(0.5, 0.999), foreach=False, fused=False)
                 for net, lr in ((trainer.generator, cfg.lr_g), (trainer.discriminator, cfg.lr_d)))


def throughput(trainer, epochs: int) -> dict[str, dict[str, float]]:
    """images/s (wall and per CPU second) of each variant, epoch by epoch interleaved on the same networks:
    before (float32, features recomputed, looped Adam), + cache, + fused optimisers, + bf16 autocast (the product
    on a CPU with native bf16: train.amp auto). Each precision has its own feature cache, filled by a first epoch."""
    from fedgai.pair_features import PairFeatureCache

    fused, looped = (trainer.opt_g, trainer.opt_d), looped_adam(trainer)
    caches = {}
    for amp in (None, torch.bfloat16):
        trainer.amp = amp
        caches[amp] = trainer.features = PairFeatureCache(trainer.dataset, trainer.objective.real_features,
                                                          trainer.device, trainer._autocast)
        trainer.train_epochs(1)
    images = (trainer.num_samples // trainer.cfg.train.batch_size) * trainer.cfg.train.batch_size
    cached = lambda t: t.train_epochs(1)  # noqa: E731 - the product's epoch
    variants = {"before": (looped, None, uncached_epoch), "cache": (looped, None, cached),
                "cache+fused": (fused, None, cached), "cache+fused+bf16": (fused, torch.bfloat16, cached)}
    wall = dict.fromkeys(variants, 0.0)
    cpu = dict.fromkeys(variants, 0.0)
    for _ in range(epochs):
        for name, (optimisers, amp, run) in variants.items():
            trainer.opt_g, trainer.opt_d = optimisers
            trainer.amp, trainer.features = amp, caches[amp]
            start, start_cpu = time.perf_counter(), time.process_time()
            run(trainer)
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    trainer.opt_g, trainer.opt_d = fused
    return {"images_per_s": {k: round(epochs * images / v, 2) for k, v in wall.items()},
            "images_per_cpu_s": {k: round(epochs * images / v, 2) for k, v in cpu.items()}}


def step_flops(trainer, photo: torch.Tensor, sketch: torch.Tensor, cached: bool) -> float:
    real = trainer.objective.real_features(photo, sketch) if cached else None
    with FlopCounterMode(display=False) as counter:
        trainer.step(photo, sketch, real)
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matmul on torch's threads: the practical peak this step could reach at that precision."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image size (quick profile: 128)")
    parser.add_argument("--pairs", type=int, default=32, help="training pairs of the studio (default 32)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(Path(tmp), args.size, args.pairs)
        batch = trainer.cfg.train.batch_size
        photo, sketch = next(iter(trainer.loader()))
        trainer.step(photo, sketch)  # warm-up
        parts = breakdown(trainer, photo, sketch, steps=3)
        speed = throughput(trainer, args.epochs)
        flops = {"uncached": step_flops(trainer, photo, sketch, False), "cached": step_flops(trainer, photo, sketch,
                                                                                              True)}
        peak, peak_bf16 = matmul_peak(), matmul_peak(torch.bfloat16)
    ips = speed["images_per_s"]
    step_flop = {k: flops["uncached"] if k == "before" else flops["cached"] for k in ips}
    achieved = {k: round(step_flop[k] / batch * ips[k] / 1e9, 2) for k in ips}
    result = {
        "machine": {"threads": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "setting": {"profile": "quick", "size": args.size, "batch": batch, "pairs": args.pairs,
                    "timed_epochs": args.epochs},
        "step_ms_by_part": parts,
        **speed,
        "speedup": {k: round(v / ips["before"], 2) for k, v in ips.items()},
        "speedup_cpu": {k: round(v / speed["images_per_cpu_s"]["before"], 2)
                        for k, v in speed["images_per_cpu_s"].items()},
        "step_gflop": {k: round(v / 1e9, 2) for k, v in flops.items()},
        "achieved_gflops": achieved,
        "matmul_peak_gflops": {"float32": round(peak, 1), "bf16": round(peak_bf16, 1)},
        "share_of_peak": {k: round(v / (peak_bf16 if "bf16" in k else peak), 3) for k, v in achieved.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
