"""Cross-style fusion, scored: the demo's cross-style ground truth and the fusion score's known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fedgai.config import EvalConfig
from fedgai.data import SketchPairDataset, load_studio
from fedgai.data.demo import CROSS_STYLE_FILE, CrossStyle, make_demo, redraw_in_style
from fedgai.data.split import split_studio
from fedgai.edge.sketcher import StudioModel
from fedgai.evaluation.cross_style import FusionStudio, fusion_report, ground_truth, read_manifest
from fedgai.evaluation.metrics import MetricSuite, ink_chamfer
from fedgai.evaluation.style import StyleClassifier
from fedgai.models import AdaINSD, RandomEncoder

SEED, SIZE = 0, 64


@pytest.fixture(scope="module")
def cross_demo(tmp_path_factory) -> tuple[list[Path], Path]:
    """Two demo studios (fine, marker) and their cross-style ground truth for the default split."""
    root = tmp_path_factory.mktemp("cross")
    folders = make_demo(root / "studios", studios=2, seed=SEED, size=SIZE, progress=False,
                        cross_style=CrossStyle(root / "cross"))
    return folders, root / "cross"


def sketches(folder: Path, stems: list[str]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.open(folder / "sketches" / f"{s}.png"))).float()[None]
                        / 127.5 - 1 for s in stems])


def test_cross_style_draws_each_test_photo_in_the_other_style(cross_demo):
    (a, b), cross = cross_demo
    manifest = read_manifest(cross)
    test = split_studio(load_studio(a), 0, 0.1, 0.2).test
    assert manifest["studios"][a.name] == {"test": list(test), "styles": [b.name]}
    truth = ground_truth(cross, manifest, a.name, b.name, test, SIZE)
    own = sketches(a, list(test))
    # Another style: B's drawings differ from A's own sketches of the same photos ...
    assert (truth - own).abs().mean() > 0.02
    # ... of the same garment: their strokes lie nearer A's sketch of that photo than of the next photo.
    assert ink_chamfer(truth, own) < 0.7 * ink_chamfer(truth, own.roll(1, 0))
    # Deterministic, and A's "own style" redraw is A's sketch byte for byte.
    item = int(test[0]) - 1
    assert np.array_equal(np.array(redraw_in_style(0, item, SEED, SIZE, 1)),
                          np.array(Image.open(cross / a.name / b.name / f"{test[0]}.png")))
    assert np.array_equal(np.array(redraw_in_style(0, item, SEED, SIZE, 0)),
                          np.array(Image.open(a / "sketches" / f"{test[0]}.png")))


def test_cross_style_never_reaches_a_training_folder(cross_demo, tmp_path):
    (a, b), cross = cross_demo
    studio_files = {p.name for folder in (a, b) for p in folder.rglob("*.png")}
    assert len(load_studio(a).pairs) == len(list((a / "photos").iterdir()))
    assert sorted(p.name for p in cross.iterdir()) == sorted([a.name, b.name, CROSS_STYLE_FILE])
    assert not (cross.resolve().is_relative_to(a.parent.resolve()))
    assert studio_files  # the studios' own files are untouched by the cross-style writer
    with pytest.raises(ValueError, match="outside the studios' folder"):
        make_demo(tmp_path / "s", studios=1, size=SIZE, progress=False, cross_style=CrossStyle(tmp_path / "s" / "x"))


def test_ground_truth_refuses_another_split(cross_demo):
    (a, b), cross = cross_demo
    others = split_studio(load_studio(a), 7, 0.1, 0.4).test
    with pytest.raises(ValueError, match="another split"):
        ground_truth(cross, read_manifest(cross), a.name, b.name, others, SIZE)


# ----------------------------------------------------------------------------------------------- fusion score
class StatReader(nn.Module):
    """A fake generator whose drawing is fixed by its AdaIN_SD statistics: the own-style sketches at the own
    statistics, the other studio's truth at theirs, a pixel blend in between (``follow=False``: always the own
    sketches, i.e. a generator that ignores the statistics)."""

    def __init__(self, adain: AdaINSD, own: torch.Tensor, other: torch.Tensor, other_mean: torch.Tensor,
                 follow: bool):
        super().__init__()
        self.adain, self.own, self.other, self.follow = adain, own, other, follow
        self.own_mean, self.other_mean = adain.mean0.flatten().clone(), other_mean.flatten()
        self.device_anchor = nn.Parameter(torch.zeros(()))  # sketch_with reads the device off a parameter

    def forward(self, taps: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor:
        if not self.follow:
            return self.own
        span = self.other_mean - self.own_mean
        mean = (stats if stats is not None else self.adain.stats())[0][0]  # the generators' forward(taps, stats)
        alpha = float((mean.flatten() - self.own_mean) @ span / (span @ span))
        return (1 - alpha) * self.own + alpha * self.other


def fake_model(name: str, encoder: RandomEncoder, mean: float, own: torch.Tensor, other: torch.Tensor,
               follow: bool) -> StudioModel:
    adain = AdaINSD(encoder.channels)
    for i, c in enumerate(encoder.channels):
        adain.set_tap(i, torch.full((c,), mean), torch.ones(c))
    generator = StatReader(adain, own, other, torch.full((encoder.channels[0],), 1 - mean), follow)
    return StudioModel(None, {"studio": name}, encoder, generator, False)


@pytest.fixture(scope="module")
def scored_pair(cross_demo):
    """(truths, classifier, suite, studio data) for the two demo studios' test photos."""
    (a, b), cross = cross_demo
    suite = MetricSuite(EvalConfig(feature_size=64, batch_size=32))
    manifest = read_manifest(cross)
    data = {}
    for folder in (a, b):
        studio = load_studio(folder)
        split = split_studio(studio, 0, 0.1, 0.2)
        test = SketchPairDataset(studio, SIZE, stems=split.test)
        train = SketchPairDataset(studio, SIZE, stems=split.train[:32])
        data[folder.name] = (list(split.test), torch.stack([test[i][0] for i in range(len(test))]),
                             torch.stack([test[i][1] for i in range(len(test))]),
                             torch.stack([train[i][1] for i in range(len(train))]))
    classifier = StyleClassifier().fit(torch.cat([suite.features(d[3]) for d in data.values()]),
                                       [n for n, d in data.items() for _ in range(len(d[3]))])
    truths = {(x, y): ground_truth(cross, manifest, x, y, data[x][0], SIZE) for x in data for y in data if x != y}
    return truths, classifier, suite, data


def report_for(scored_pair, follow: bool) -> dict:
    truths, classifier, suite, data = scored_pair
    encoder = RandomEncoder()
    (a, (stems_a, photos_a, reals_a, _)), (b, (stems_b, photos_b, reals_b, _)) = data.items()
    studios = [FusionStudio(a, fake_model(a, encoder, 0.0, reals_a, truths[(a, b)], follow), stems_a, photos_a,
                            reals_a),
               FusionStudio(b, fake_model(b, encoder, 1.0, reals_b, truths[(b, a)], follow), stems_b, photos_b,
                            reals_b)]
    return fusion_report(studios, truths, classifier, suite, steps=3)


def test_a_generator_that_draws_the_truth_scores_the_truths_share_and_outline_ratio_one(scored_pair):
    report = report_for(scored_pair, follow=True)
    for pair in report["pairs"]:
        assert pair["share_b"][-1] == pytest.approx(pair["share_b_truth"])
        assert pair["share_b"][-1] > pair["share_b"][0]
        assert pair["fd_style_b"][-1] == pytest.approx(0.0, abs=1e-6)
        assert pair["chamfer_ratio"] == 1.0
        assert pair["pixel_change"] > 0.02
    # B's own drawings of A's photos are the ceiling: the classifier also knows each studio's garment mix.
    assert report["summary"]["share_b_end"] == pytest.approx(report["summary"]["share_b_truth"])
    assert report["summary"]["mean_curve_monotone"] == 1.0
    assert report["summary"]["own_style_acc"] >= 0.8 and report["summary"]["own_fd_style"] < 1e-6


def test_a_generator_that_ignores_the_statistics_scores_flat(scored_pair):
    report = report_for(scored_pair, follow=False)
    for pair in report["pairs"]:
        assert len(set(pair["share_b"])) == 1
        assert pair["pixel_change"] == 0.0
        assert pair["chamfer_ratio"] > 1.0
    assert report["summary"]["share_b_end"] <= 0.2
    assert json.loads(json.dumps(report)) == report  # the CLI writes it as JSON


def test_cli_demo_cross_style_then_evaluate_fusion(tmp_path, capsys):
    from fedgai.cli import main
    from fedgai.config import profile
    from fedgai.trainer import StudioTrainer

    studios, cross = tmp_path / "studios", tmp_path / "cross"
    assert main(["data", "demo", "--studios", "2", "--size", "64", "--out", str(studios),
                 "--cross-style", str(cross)]) == 0
    for folder in sorted(studios.iterdir()):
        t = StudioTrainer(profile("test"), folder, tmp_path / "run" / folder.name)
        t.train_epochs(1)
        t.save_checkpoint()
        t.close()
    out = tmp_path / "fusion.json"
    assert main(["evaluate-fusion", str(tmp_path / "run"), "--cross-style", str(cross), "--data", str(studios),
                 "--steps", "2", "--feature-size", "64", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["alphas"] == [0.0, 1.0] and len(report["pairs"]) == 2 and report["image_size"] == 32
    assert "share for B" in capsys.readouterr().out
