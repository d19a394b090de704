"""Issue 27 §3: does the style score pass the untrained floor check on every demo studio?

The falsifier (docs/results.md, "A style-conditioned renderer on pooled studios") found that FD-Style, the Fréchet
distance in the studio-style classifier's probabilities, scores an UNTRAINED renderer's grey noise as near-perfect
for studio-03-hatching (0.001, style accuracy 1.0): a classifier that knows only the studios files texture under the
most textured one. This script measures, for every studio of a demo, whether noise scores worse than two things a
style score must rank above it, with the old score (FD-Style) and the new one (FD-Style-reject: the same classifier
plus a "not a line sketch" class fitted on evaluation/style.not_sketches, none of them made by the renderer, and an
"another line style" class fitted on public procedural line styles; MetricSuite.style_classifier):

- noise: a randomly initialised ``models.StyledSketchGenerator`` (3 init seeds), drawing the studio's test photos
  with the studio's own AdaIN_SD statistics (of its training sketches), as benchmarks/style_pooling.py's untrained arm;
- edges: an XDoG edge sketch of each test photo (``fedgai.data.sketchify_image``, the product's default style);
- real: the studio's own training sketches (other garments, the same hand; the classifier was fitted on them, so
  this floor is optimistic).
Each set is scored against the studio's real held-out test sketches (the product's split: seed 0, 10 % val, 20 % test),
the classifier fitted on every studio's real training sketches (at most EvalConfig.style_pairs_per_studio each, as
`fedgai evaluate`). The check passes for a score when noise is worse than both edges and real.

    fedgai data demo --studios 8 --seed 15 --size 128 --out runs/floor-data
    python benchmarks/style_floor.py --data runs/floor-data        # -> benchmarks/results/style_floor.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SIZE = 64
ARMS = ("noise", "edges", "real")
SCORES = ("FD-Style", "style_acc", "FD-Style-reject", "not_sketch_share")


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 H x W sketch -> 1 x H x W in [-1, 1]."""
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1)[None]


def sides(folder: Path) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The studio's pair count and (photos, sketches) of its train and test split at SIZE px."""
    from fedgai.config import TrainConfig
    from fedgai.data import SketchPairDataset, load_studio
    from fedgai.data.split import split_studio

    studio, t = load_studio(folder), TrainConfig()
    split = split_studio(studio, t.split_seed, t.val_fraction, t.test_fraction)
    out = {}
    for side in ("train", "test"):
        data = SketchPairDataset(studio, SIZE, stems=getattr(split, side))
        photos, sketches = (torch.stack(x) for x in zip(*(data[i] for i in range(len(data))), strict=True))
        out[side] = (photos, sketches)
    return len(studio.pairs), out


def edge_sketches(photos: torch.Tensor) -> torch.Tensor:
    from fedgai.data import sketchify_image

    rgb = ((photos.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    return torch.stack([to_tensor(sketchify_image(image, "xdog")) for image in rgb])


@torch.no_grad()
def untrained_drawings(encoder, photos: torch.Tensor, train_sketches: torch.Tensor, seed: int) -> torch.Tensor:
    """A randomly initialised renderer drawing ``photos`` with the statistics of ``train_sketches``."""
    from fedgai.models import AdaINSD, StyledSketchGenerator

    adain = AdaINSD(encoder.channels)
    adain.fit([encoder(train_sketches)])
    torch.manual_seed(seed)
    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=64).eval()
    return gen(encoder(photos), adain.stats())


def score(style, real: torch.Tensor, fake: torch.Tensor, studio: str) -> dict[str, float]:
    from fedgai.evaluation.metrics import style_fd_reject, style_frechet_distance

    return {"FD-Style": style_frechet_distance(style, real, fake), "style_acc": style.accuracy(fake, studio),
            "FD-Style-reject": style_fd_reject(style, real, fake), "not_sketch_share": style.reject_share(fake)}


def run(data: Path, seeds: list[int], first: int | None = None) -> dict:
    from fedgai.config import EvalConfig, ModelConfig
    from fedgai.evaluation.metrics import MetricSuite
    from fedgai.models import build_encoder

    started = time.perf_counter()
    suite = MetricSuite(EvalConfig())
    encoder = build_encoder(ModelConfig(encoder="efficientnet-lite0"))
    folders = sorted(p for p in data.iterdir() if (p / "photos").is_dir())[:first]
    counts, studios = {}, {}
    for f in folders:
        counts[f.name], studios[f.name] = sides(f)
    cap = suite.cfg.style_pairs_per_studio
    fit_sketches = torch.cat([s["train"][1][:cap] for s in studios.values()])
    labels = [name for name, s in studios.items() for _ in range(len(s["train"][1][:cap]))]
    style = suite.style_classifier(fit_sketches, labels)
    results = {}
    for name, s in studios.items():
        train_sketches, (test_photos, test_sketches) = s["train"][1], s["test"]
        real = suite.features(test_sketches)
        noise = [score(style, real, suite.features(untrained_drawings(encoder, test_photos, train_sketches, seed)),
                       name) for seed in seeds]
        results[name] = {
            "pairs": counts[name],
            "n_test": len(test_sketches),
            "noise": {k: statistics.fmean(n[k] for n in noise) for k in SCORES} | {"per_seed": noise},
            "edges": score(style, real, suite.features(edge_sketches(test_photos)), name),
            "real": score(style, real, suite.features(train_sketches), name),
        }
        for key in ("FD-Style", "FD-Style-reject"):
            r = results[name]
            r[f"passes {key}"] = min(x[key] for x in noise) > max(r["edges"][key], r["real"][key])
        print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k.startswith('passes')})}", flush=True)
    return {"data": str(data), "size": SIZE, "untrained_seeds": seeds, "classifier_studios": list(studios),
            "classifier_sketches": len(fit_sketches), "reject_classes": style.reject_classes[len(studios):],
            "studios": results,
            "seconds": round(time.perf_counter() - started, 1)}


def table(result: dict) -> str:
    """One row per studio: old and new score of noise / edges / real (lower is better), and the check."""
    lines = ["| studio | pairs (test) | FD-Style noise / edges / real | style_acc noise | FD-Style-reject noise / "
             "edges / real | not-a-sketch share noise / edges / real | floor check old → new |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["studios"].items():
        def trio(key: str, pattern: str = "{:.3f}", r: dict = r) -> str:
            return " / ".join(pattern.format(r[arm][key]) for arm in ARMS)

        check = " → ".join("pass" if r[f"passes {k}"] else "FAIL" for k in ("FD-Style", "FD-Style-reject"))
        lines.append(f"| {name} | {r['pairs']} ({r['n_test']}) | {trio('FD-Style')} | {r['noise']['style_acc']:.2f} | "
                     f"{trio('FD-Style-reject')} | {trio('not_sketch_share', '{:.2f}')} | {check} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="demo studios (fedgai data demo --seed 15)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "style_floor.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="untrained renderer init seeds")
    parser.add_argument("--studios", type=int, help="only the first N studios (4: the falsifier's classifier)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only print the table of --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.report:
        result = run(args.data, args.seeds, args.studios)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(json.loads(args.out.read_text())))


if __name__ == "__main__":
    main()
