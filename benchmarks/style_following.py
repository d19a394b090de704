"""Cross-style fusion, measured (issue 15 §3): does a studio's generator draw in another studio's style when
given that studio's shared AdaIN_SD statistics? Every training variant as local-only and as FedGAI (D shared),
scored against the demo's cross-style ground truth. Exact commands and results: docs/results.md.

    python benchmarks/style_following.py all --out runs/fusion --studios 3 --seeds 0 --workers 2

`train` writes demo studios with their cross-style ground truth (if missing) and trains each (variant, seed)
federation in one process through the product's in-process federation (federated/simulator/inprocess.py: the studio's
check and guard, the server's screening and step), saving every studio's checkpoint in a run folder that
`fedgai evaluate-fusion` also reads. `evaluate`
scores each run with fedgai.evaluation.cross_style and writes OUT/fusion.json and a markdown table OUT/fusion.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from _pool import run_spawned

from fedgai.cli import setting
from fedgai.config import FedgaiConfig, profile

DEMO_SEED = 15  # the federation benchmark's demo studios (docs/results.md): 131, 44, 214, 55, ... pairs
DEMO_SIZE = 128
UNPAIRED = 200  # the quick profile's demo data (data.demo_unpaired)
# 64 px, the sizes of docs/results.md's issue 15 comparison, so that a run fits 2 CPU cores in minutes.
SMALL = {"model.encoder": "efficientnet-lite0", "loss.clip_pretrained": "none", "model.image_size": 64,
         "train.max_pairs": 64, "train.epochs": 2, "model.gram_rows": 32, "model.gram_cols": 64,
         "model.disc_width": 64, "model.decoder_width": 64, "train.num_threads": 1}
SAMPLE, PUBLIC = {"train.adain_sample_p": 0.5}, {"train.public_styles": True}
TRAINING = {"set_stats": {}, "sample_stats": SAMPLE, "public_styles": PUBLIC, "both": SAMPLE | PUBLIC}
VARIANTS: dict[str, dict[str, Any]] = {f"{mode}_{name}": {"fed.mode": mode, **extra}
                                       for name, extra in TRAINING.items() for mode in ("local", "fedgai")}


# ----------------------------------------------------------------------------------------------- train
def demo_data(data: Path, cross: Path, studios: int) -> list[Path]:
    """The demo studios and their cross-style ground truth (made once, with the split every run uses)."""
    from fedgai.data.demo import CrossStyle, make_demo

    if not data.exists():  # all 8 studios: their sizes depend on how many are drawn
        t = profile("quick").train
        make_demo(data, studios=8, seed=DEMO_SEED, size=DEMO_SIZE, unpaired=UNPAIRED,
                  cross_style=CrossStyle(cross, t.split_seed, t.val_fraction, t.test_fraction))
    return sorted(p for p in data.iterdir() if (p / "photos").is_dir())[:studios]


def run_federation(variant: str, seed: int, base: dict[str, Any], studios: list[Path], out: Path) -> float:
    """One federation (or local-only run) of every studio; leaves a run folder per studio with its checkpoint."""
    from fedgai.federated.simulator.inprocess import run_federation as federate

    cfg = FedgaiConfig.from_dict(base).with_overrides({**VARIANTS[variant], "train.seed": seed})
    folder = out / f"{variant}-seed{seed}"
    run = federate(cfg, studios, folder, tag=f" {variant}")
    for trainer in run.trainers.values():
        trainer.save_checkpoint()
    run.close()
    (folder / "run.json").write_text(json.dumps({"variant": variant, "seed": seed, "seconds": run.seconds}) + "\n")
    return run.seconds


def _train_worker(job: tuple) -> str:
    variant, seed, base, studios, out = job
    torch.set_num_threads(1)
    if (out / f"{variant}-seed{seed}" / "run.json").is_file():
        return f"{variant}-seed{seed}: done before"
    return f"{variant}-seed{seed}: {run_federation(variant, seed, base, studios, out):.0f} s"


def train(args: argparse.Namespace, studios: list[Path]) -> None:
    base = profile("quick").with_overrides(SMALL | dict(args.set)).to_dict()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(base, indent=2) + "\n")
    jobs = [(v, s, base, studios, args.out) for s in args.seeds for v in args.variants]
    run_spawned(_train_worker, jobs, args.workers, failed=lambda job: f"{job[0]}-seed{job[1]}")


# ----------------------------------------------------------------------------------------------- evaluate
def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Score every finished run (fusion.json per run, kept so that adding runs does not rescore the others)."""
    from fedgai.config import EvalConfig
    from fedgai.evaluation import cross_style

    results = {}
    for run in sorted(p for p in args.out.iterdir() if (p / "run.json").is_file()):
        cached = run / "fusion.json"
        if not cached.is_file():
            report = cross_style.evaluate_fusion([run], args.cross, data=args.data, steps=args.steps, progress=False,
                                            cfg=EvalConfig(feature_size=args.feature_size))
            cached.write_text(json.dumps(report, indent=1) + "\n")
            print(f"evaluated {run.name}", flush=True)
        report = json.loads(cached.read_text())
        results[run.name] = report | {"summary": cross_style.summarise(report["pairs"], report["own"])}  # current rules
    summary = summarise(results)
    (args.out / "fusion.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    (args.out / "fusion.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: mean and spread over seeds of each run's mean over studio pairs."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for name, report in results.items():
        by_variant.setdefault(name.rsplit("-seed", 1)[0], []).append(report["summary"])
    out = {}
    for variant, reports in by_variant.items():
        keys = [k for k, v in reports[0].items() if isinstance(v, float)]
        out[variant] = {k: {"mean": statistics.fmean(r[k] for r in reports),
                            "std": statistics.pstdev(r[k] for r in reports)} for k in keys}
        out[variant]["share_curve"] = [statistics.fmean(c) for c in zip(*(r["share_curve"] for r in reports),
                                                                           strict=True)]
        out[variant]["seeds"] = len(reports)
    return out


def markdown(summary: dict[str, dict[str, Any]]) -> str:
    head = ("| variant | share for B along α (0 → 1) | FD-Style to B's truth (α=0 → 1) | chamfer ratio (pooled) | "
            "monotone pairs | pixel change α 0→1 | own style acc | own FD-Style | own FD-EffNetLite0 |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant in VARIANTS:
        s = summary.get(variant)
        if s is None:
            continue
        curve = " → ".join(f"{100 * v:.0f}" for v in s["share_curve"])
        rows.append(f"| {variant} | {curve} % | {s['fd_style_own_end']['mean']:.3f} → "
                    f"{s['fd_style_b_end']['mean']:.3f} | {s['chamfer_ratio']['mean']:.2f} "
                    f"({s['chamfer_ratio_pooled']['mean']:.2f}) | "
                    f"{100 * s['monotone']['mean']:.0f} % | "
                    f"{100 * s['pixel_change']['mean']:.2f} % | {100 * s['own_style_acc']['mean']:.0f} % | "
                    f"{s['own_fd_style']['mean']:.3f} | {s['own_fd_effnet']['mean']:.1f} |")
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("all", "train", "evaluate"))
    p.add_argument("--out", type=Path, default=Path("runs/fusion"))
    p.add_argument("--data", type=Path, help="demo studios (default OUT/data; made if missing)")
    p.add_argument("--cross", type=Path, help="their cross-style ground truth (default OUT/cross-style)")
    p.add_argument("--studios", type=int, default=3, help="the first N demo studios")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--steps", type=int, default=5, help="grid points from A's style (0) to B's (1)")
    p.add_argument("--feature-size", type=int, default=112,
                   help="EfficientNet-Lite0 input side for the style classifier (evaluate: 224; 112 fits 2 cores)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--set", type=setting, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run after SMALL's, parsed as `fedgai --set` parses them")
    args = p.parse_args(argv)
    args.data = args.data or args.out / "data"
    args.cross = args.cross or args.out / "cross-style"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stage in ("all", "train"):
        train(args, demo_data(args.data, args.cross, args.studios))
    if args.stage in ("all", "evaluate"):
        evaluate(args)


if __name__ == "__main__":
    main()
