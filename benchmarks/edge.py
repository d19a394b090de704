"""Compressed (edge) generator vs the studio's full generator: size, MACs, CPU latency, ONNX Runtime, quality.

One demo studio; the full generator is trained with the quick settings and the EfficientNet-Lite0 encoder,
then distilled (`fedgai compress`). Quality is measured on held-out pairs that neither network saw.
Both networks share the frozen encoder, so costs are given for the generator alone and for the whole
photo -> sketch pipeline. Results: benchmarks/results/edge.json and docs/benchmarks.md.

    .venv/bin/python benchmarks/edge.py [--epochs 10] [--distill-epochs 20] [--size 128]

With --full and --compressed (checkpoints of a trained studio, e.g. RUN/checkpoints/last.pt and the
RUN/checkpoints/compressed.pt `fedgai compress` wrote), nothing is trained: only the costs of those two are
measured (results under "checkpoints" in the results file); their quality comes from `fedgai evaluate RUN
RUN/checkpoints/compressed.pt`, on the run's test pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from fedgai.config import profile
from fedgai.data import load_studio, make_demo, read_image
from fedgai.edge.distill import compress_checkpoint
from fedgai.edge.export import ONNX_FILE, export_model
from fedgai.edge.runtime import OnnxSketcher
from fedgai.edge.sketcher import SketchPipeline, StudioModel, load_studio_model
from fedgai.evaluation.metrics import ink_iou, ssim
from fedgai.trainer import StudioTrainer

RESULTS = Path(__file__).parent / "results" / "edge.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="full generator training epochs")
    p.add_argument("--distill-epochs", type=int, default=20)
    p.add_argument("--size", type=int, default=128, help="training resolution")
    p.add_argument("--train-pairs", type=int, default=30, help="pairs used for training; the rest are held out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per latency (median reported)")
    p.add_argument("--full", type=Path, help="a trained full generator's checkpoint (skips training)")
    p.add_argument("--compressed", type=Path, help="its compressed generator's checkpoint (with --full)")
    args = p.parse_args()
    if (args.full is None) != (args.compressed is None):
        p.error("--full and --compressed go together")
    return args


def macs(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, ORT graph optimisation)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cost(model: StudioModel, onnx: OnnxSketcher, repeats: int) -> dict:
    """Parameters, MACs at 256 px, CPU latency at 256 and 1024 px (batch 1): generator alone and pipeline."""
    pipeline = SketchPipeline(model.encoder, model.generator).eval()
    out = {"generator_params": sum(p.numel() for p in model.generator.parameters()),
           "encoder_params": sum(p.numel() for p in model.encoder.parameters())}
    for px in (256, 1024):
        photo = torch.rand(1, 3, px, px)
        with torch.no_grad():
            taps = model.encoder(photo * 2 - 1)
        if px == 256:
            out["generator_gmacs_256"] = macs(lambda: model.generator(taps)) / 1e9  # noqa: B023
            out["pipeline_gmacs_256"] = macs(lambda: pipeline(photo)) / 1e9  # noqa: B023
        with torch.no_grad():
            out[f"generator_ms_{px}"] = 1e3 * median_seconds(lambda: model.generator(taps), repeats)  # noqa: B023
            out[f"pipeline_ms_{px}"] = 1e3 * median_seconds(lambda: pipeline(photo), repeats)  # noqa: B023
        out[f"onnx_pipeline_ms_{px}"] = 1e3 * median_seconds(lambda: onnx(photo.numpy()), repeats)  # noqa: B023
    return out


def quality(model: StudioModel, photos: torch.Tensor, sketches: torch.Tensor) -> dict:
    with torch.no_grad():
        fake = model.generator(model.encoder(photos))
    return {"heldout_ink_iou": ink_iou(fake, sketches), "heldout_ssim": ssim(fake, sketches)}


def measure_checkpoints(args: argparse.Namespace) -> None:
    """Costs of two given checkpoints (full and compressed), side by side in one process."""
    results = {"settings": {"full": str(args.full), "compressed": str(args.compressed), "threads": args.threads,
                            "repeats": args.repeats, "torch": torch.__version__}}
    with tempfile.TemporaryDirectory() as tmp_dir:
        for name, ckpt in (("full", args.full), ("compressed", args.compressed)):
            exported = export_model(ckpt, Path(tmp_dir) / name)
            results[name] = {**cost(load_studio_model(ckpt, "cpu"), OnnxSketcher(exported.onnx, "cpu"), args.repeats),
                             "onnx_max_diff": exported.max_diff_onnx}
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    RESULTS.write_text(json.dumps({**stored, "checkpoints": results}, indent=2, default=float) + "\n")
    print_table(results)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.full is not None:
        measure_checkpoints(args)
        return
    cfg = profile("quick").with_overrides({
        "model.encoder": "efficientnet-lite0", "model.image_size": args.size, "train.max_pairs": args.train_pairs,
        "train.num_threads": args.threads, "loss.clip_pretrained": "none", "edge.epochs": args.distill_epochs})
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        studio_dir = make_demo(tmp / "demo", studios=1, seed=0, size=256, progress=False)[0]
        started = time.perf_counter()
        trainer = StudioTrainer(cfg, studio_dir, tmp / "run")
        trainer.train_epochs(args.epochs)
        full_ckpt = trainer.save_checkpoint()
        trainer.close()
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        distiller = compress_checkpoint(full_ckpt, tmp / "compressed.pt", studio_dir, "cpu")
        distiller.train()
        distill_s = time.perf_counter() - started
        held = load_studio(studio_dir).pairs[args.train_pairs:]
        photos = torch.stack([read_image(p, 3, args.size) for p, _ in held])
        sketches = torch.stack([read_image(s, 1, args.size) for _, s in held])
        results = {"settings": {**vars(args), "decoder_width": cfg.model.decoder_width, "edge": cfg.edge.__dict__,
                                "heldout_pairs": len(held), "train_seconds": train_s, "distill_seconds": distill_s,
                                "torch": torch.__version__}}
        for name, ckpt in (("full", full_ckpt), ("compressed", tmp / "compressed.pt")):
            model = load_studio_model(ckpt, "cpu")
            exported = export_model(ckpt, tmp / f"export-{name}")
            onnx = OnnxSketcher(exported.onnx, "cpu")
            results[name] = {**quality(model, photos, sketches), **cost(model, onnx, args.repeats),
                             "onnx_max_diff": exported.max_diff_onnx, "onnx_file": ONNX_FILE}
    RESULTS.parent.mkdir(exist_ok=True)
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    RESULTS.write_text(json.dumps({**results, **{k: stored[k] for k in ("checkpoints",) if k in stored}}, indent=2,
                                  default=float) + "\n")
    print_table(results)


def print_table(r: dict) -> None:
    full, lite = r["full"], r["compressed"]
    print("| metric | full | compressed | full / compressed |\n|---|---|---|---|")
    for key in full:
        if isinstance(full[key], int | float) and key != "onnx_max_diff":
            ratio = full[key] / lite[key] if lite[key] else float("nan")
            print(f"| {key} | {full[key]:.4g} | {lite[key]:.4g} | {ratio:.2f} |")
    print(f"ONNX max |diff| vs eager: full {full['onnx_max_diff']:.2g}, compressed {lite['onnx_max_diff']:.2g}")
    print(json.dumps(r["settings"], default=float))


if __name__ == "__main__":
    main()
