"""Cross-style fusion against ground truth: does studio A's generator, given studio B's shared AdaIN_SD
statistics, draw A's test photos the way B would have drawn them?

The demo federation can draw any garment in any studio's style (`fedgai data demo --cross-style`), so each
ordered pair (A, B) has a truth: B's drawings of A's test photos. Along the grid alpha = 0 (A's own statistics)
... 1 (B's, exactly what `fedgai share-style` hands over), A's generator's sketches are scored with the style
classifier of `fedgai evaluate` (fitted on the real training sketches of the run's studios): the share it
attributes to B, and FD-Style to B's truth. The outline must hold while the style moves: the ink chamfer
distance of the B-end sketch to B's truth, relative to that of A's own-style sketch to A's real sketch.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fedgai.config import EvalConfig
from fedgai.data import SketchPairDataset, read_image
from fedgai.data.demo import CROSS_STYLE_FILE, CROSS_STYLE_FORMAT
from fedgai.device import resolve_device
from fedgai.edge.sketcher import StudioModel, load_studio_model
from fedgai.edge.style_blend import SharedStyle, blend, check_compatible, sketch_with, style_of
from fedgai.evaluation.evaluate import fit_style, resolve_data
from fedgai.evaluation.metrics import MetricSuite, frechet_distance, ink_chamfer
from fedgai.evaluation.runs import load_run, merge_runs
from fedgai.evaluation.style import StyleClassifier


@dataclass
class FusionStudio:
    """One studio of the run: its generator, its test photos and real test sketches (by stem)."""

    name: str
    model: StudioModel
    stems: list[str]
    photos: torch.Tensor
    reals: torch.Tensor

    @property
    def style(self) -> SharedStyle:
        return style_of(self.model)


def read_manifest(cross: Path) -> dict[str, Any]:
    """The cross-style folder's manifest; anything else is a clear error."""
    path = Path(cross) / CROSS_STYLE_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{cross} holds no readable {CROSS_STYLE_FILE} (written by `fedgai data demo "
                                f"--cross-style`): {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != CROSS_STYLE_FORMAT:
        raise ValueError(f"{path} is not a cross-style manifest ({CROSS_STYLE_FORMAT})")
    return manifest


def ground_truth(cross: Path, manifest: dict[str, Any], studio: str, style: str, stems: Sequence[str],
                 size: int) -> torch.Tensor:
    """Studio ``studio``'s test photos (``stems``) as drawn in studio ``style``'s style, at ``size`` px."""
    entry = manifest["studios"].get(studio)
    if entry is None or style not in entry["styles"]:
        raise ValueError(f"{cross} has no drawings of {studio!r}'s photos in {style!r}'s style")
    missing = sorted(set(stems) - set(entry["test"]))
    if missing:
        raise ValueError(f"{cross} was written for another split: test pairs {missing[:5]} of {studio!r} are not in "
                         f"it (manifest split {manifest['split']}); write it with the runs' train.split_seed")
    return torch.stack([read_image(Path(cross) / studio / style / f"{stem}.png", 1, size) for stem in stems])


def share_and_fd(classifier: StyleClassifier, suite: MetricSuite, fakes: torch.Tensor, style: str,
                 truth_features: torch.Tensor) -> tuple[float, float]:
    """(share of ``fakes`` the classifier attributes to ``style``, FD-Style of ``fakes`` to the truth)."""
    features = suite.features(fakes)
    fd = frechet_distance(classifier.embed(truth_features), classifier.embed(features)) \
        if min(len(features), len(truth_features)) >= 2 else float("nan")
    return classifier.accuracy(features, style), fd


def chamfer_ratio(b_end: float, own: float) -> float:
    """How much further the B-end strokes lie from B's truth than A's own-style strokes from A's real sketch
    (1 = the outline holds as well in B's style; two exact matches count as 1)."""
    return 1.0 if b_end == own == 0 else b_end / max(own, 1e-6)


def pair_score(a: FusionStudio, b: FusionStudio, truth: torch.Tensor, classifier: StyleClassifier,
               suite: MetricSuite, alphas: Sequence[float]) -> dict[str, Any]:
    """Studio A's generator along the grid from its own statistics to B's, against B's truth of A's photos."""
    check_compatible(a.style, b.style)
    fakes = [sketch_with(a.model, a.photos, blend(a.style, b.style, alpha)) for alpha in alphas]
    truth_features = suite.features(truth)
    curve = [share_and_fd(classifier, suite, f, b.name, truth_features) for f in fakes]
    threshold = suite.cfg.ink_threshold
    own, b_end = ink_chamfer(fakes[0], a.reals, threshold), ink_chamfer(fakes[-1], truth, threshold)
    shares = [s for s, _ in curve]
    return {"a": a.name, "b": b.name, "share_b": shares, "fd_style_b": [fd for _, fd in curve],
            "share_b_truth": classifier.accuracy(truth_features, b.name),
            "chamfer_own_px": own, "chamfer_b_end_px": b_end, "chamfer_ratio": chamfer_ratio(b_end, own),
            "monotone": all(y >= x for x, y in zip(shares, shares[1:], strict=False)),
            "pixel_change": float((fakes[-1] - fakes[0]).abs().mean() / 2)}


def summarise(pairs: list[dict[str, Any]], own: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over studio pairs (and over studios for the own-style scores)."""
    def mean(key: str) -> float:
        return statistics.fmean(float(p[key]) for p in pairs)

    curve = [statistics.fmean(v) for v in zip(*(p["share_b"] for p in pairs), strict=True)]
    return {"share_curve": curve, "share_b_end": curve[-1], "share_b_truth": mean("share_b_truth"),
            "mean_curve_monotone": float(all(y >= x for x, y in zip(curve, curve[1:], strict=False))),
            "monotone": statistics.fmean(float(p["monotone"]) for p in pairs),
            "fd_style_own_end": statistics.fmean(p["fd_style_b"][0] for p in pairs),
            "fd_style_b_end": statistics.fmean(p["fd_style_b"][-1] for p in pairs),
            "chamfer_ratio": mean("chamfer_ratio"),
            # Ratio of the pair means: robust to one pair whose own-style strokes sit almost exactly on the real ones.
            "chamfer_ratio_pooled": mean("chamfer_b_end_px") / max(mean("chamfer_own_px"), 1e-6),
            "pixel_change": mean("pixel_change"),
            "own_style_acc": statistics.fmean(float(m["style_acc"]) for m in own.values()),
            "own_fd_style": statistics.fmean(float(m["FD-Style"]) for m in own.values()),
            "own_fd_effnet": statistics.fmean(float(m["FD-EffNetLite0"]) for m in own.values())}


def fusion_report(studios: list[FusionStudio], truths: dict[tuple[str, str], torch.Tensor],
                  classifier: StyleClassifier, suite: MetricSuite, steps: int, progress: bool = False
                  ) -> dict[str, Any]:
    """Every ordered pair (A, B) of ``studios`` against ``truths[(A, B)]``; plus each studio's own-style scores
    (alpha = 0 against its real test sketches), so that a training option's cost to its own style shows."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (A's style and B's), got {steps}")
    if len(studios) < 2:
        raise ValueError("fusion needs at least two studios")
    alphas = [i / (steps - 1) for i in range(steps)]
    jobs = [(a, b) for a in studios for b in studios if a is not b]
    pairs = [pair_score(a, b, truths[(a.name, b.name)], classifier, suite, alphas)
             for a, b in tqdm(jobs, desc="fusion pairs", disable=not progress)]
    own = {}
    for s in studios:
        fake = sketch_with(s.model, s.photos, blend(s.style, s.style, 0.0))
        own[s.name] = {k: v for k, v in suite.evaluate(s.photos, fake, s.reals, classifier, s.name).items()
                       if k in ("style_acc", "FD-Style", "FD-EffNetLite0", "ink_chamfer_px", "SSIM")}
    return {"alphas": alphas, "pairs": pairs, "own": own, "summary": summarise(pairs, own)}


def evaluate_fusion(paths: Sequence[Path], cross: Path, data: Path | None = None, steps: int = 5,
                    cfg: EvalConfig | None = None, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """The fusion report of one run (a simulate workspace, or one mode's train-local folders) against the
    cross-style ground truth in ``cross``."""
    runs = merge_runs([load_run(Path(p)) for p in paths])
    if len(runs) != 1:
        raise ValueError(f"evaluate-fusion scores one run at a time; {', '.join(r.label for r in runs)} are "
                         "different runs")
    if len(runs[0].studios) < 2:
        raise ValueError("fusion needs a run of at least two studios (A draws in B's style)")
    manifest = read_manifest(cross)
    studio_data = resolve_data(runs, data)
    device = str(resolve_device(device))
    suite = MetricSuite(cfg, device)
    studios, sizes = [], set()
    for studio_run in runs[0].studios:
        model = load_studio_model(studio_run.checkpoint, device)
        size = model.cfg.model.image_size
        sizes.add(size)
        dataset = SketchPairDataset(studio_data[studio_run.studio], size, stems=studio_run.split.test)
        photos, reals = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        studios.append(FusionStudio(studio_run.studio, model, [p.stem for p, _ in dataset.pairs],
                                    torch.stack(photos), torch.stack(reals)))
    if len(sizes) != 1:
        raise ValueError(f"the run's generators draw at different sizes {sorted(sizes)}; fusion needs one")
    size = sizes.pop()
    classifier = fit_style(suite, studio_data, runs, size, progress)
    truths = {(a.name, b.name): ground_truth(cross, manifest, a.name, b.name, a.stems, size)
              for a in studios for b in studios if a is not b}
    report = fusion_report(studios, truths, classifier, suite, steps, progress)
    return {"run": [str(p) for p in paths], "cross_style": str(cross), "image_size": size, **report}
