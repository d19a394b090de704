"""Training G to follow its AdaIN_SD statistics (train.adain_sample_p, train.public_styles): what reaches G,
what trains, and that the statistics then steer the drawing where without the option they do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgai.config import ConfigError, profile
from fedgai.data.sketchify import SKETCH_STYLES, sketchify_image
from fedgai.features.public_styles import public_style_targets
from fedgai.trainer import StudioTrainer


def trainer(studio_dir, tmp_path, **overrides) -> StudioTrainer:
    cfg = profile("test").with_overrides({"train.max_pairs": 16} | {f"train.{k}": v for k, v in overrides.items()})
    return StudioTrainer(cfg, studio_dir, tmp_path / "run")


def adain_calls(t: StudioTrainer) -> list[tuple]:
    """The statistics argument of every AdaIN_SD call from here on (None = the set's)."""
    seen: list[tuple] = []
    t.generator.adain.register_forward_hook(lambda module, args, out: seen.append(args[1] if len(args) > 1 else None))
    return seen


def test_options_are_validated():
    with pytest.raises(ConfigError, match="adain_sample_p"):
        profile("test").with_overrides({"train.adain_sample_p": 1.5})
    with pytest.raises(ConfigError, match="record-level DP"):
        profile("test").with_overrides({"train.public_styles": True, "privacy.dp": "record"})
    assert profile("paper").train.adain_sample_p == 0 and not profile("paper").train.public_styles


def test_sampled_statistics_are_each_real_sketchs_own(studio_dir, tmp_path):
    t = trainer(studio_dir, tmp_path, adain_sample_p=1.0)
    photo, sketch, real = t.features.batch(torch.arange(4), torch.zeros(4, dtype=torch.bool))
    seen = adain_calls(t)
    t.step(photo, sketch, real)
    expected = t.generator.adain.sample_stats(t.encoder(sketch))
    for (mean, std), (m, s) in zip(seen[0], expected, strict=True):
        assert mean.shape == m.shape and torch.allclose(mean, m) and torch.allclose(std, s)


def test_without_the_option_g_always_draws_with_the_set_statistics(studio_dir, tmp_path):
    t = trainer(studio_dir, tmp_path)
    seen = adain_calls(t)
    t.train_epochs(1)
    assert seen and all(s is None for s in seen) and t.public_styles is None


def test_public_styles_are_the_studios_own_photos_and_train_only_g(studio_dir, tmp_path):
    t = trainer(studio_dir, tmp_path, public_styles=True)
    assert t.public_styles.targets.shape == (t.num_samples, len(SKETCH_STYLES), 1, 32, 32)
    rgb = ((t.dataset[0][0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(((t.public_styles.targets[0, 1, 0] + 1) * 127.5).round().numpy(),
                          sketchify_image(rgb, list(SKETCH_STYLES)[1]))
    d_before = {k: v.clone() for k, v in t.discriminator.state_dict().items()}
    g_before = {k: v.clone() for k, v in t.generator.state_dict().items()}
    _, _, real = t.features.batch(torch.arange(4), torch.zeros(4, dtype=torch.bool))
    out = t.public_styles.step(real.photo_taps, torch.arange(4), torch.zeros(4, dtype=torch.bool))
    assert out["public_style"] > 0
    assert all(torch.equal(v, t.discriminator.state_dict()[k]) for k, v in d_before.items())
    assert any(not torch.equal(v, t.generator.state_dict()[k]) for k, v in g_before.items())


@torch.no_grad()
def steering(t: StudioTrainer) -> float:
    """How much nearer each public-style target G draws when given that target's statistics than another's:
    mean L1 to the target with other targets' statistics minus with its own (> 0: the statistics steer)."""
    t.generator.eval()
    targets = public_style_targets(t.dataset, t.num_samples)
    photos = torch.stack([t.dataset[i][0] for i in range(t.num_samples)])
    taps = t.encoder(photos)
    n = targets.shape[1]
    drawn = [t.generator(taps, t.generator.adain.sample_stats(t.encoder(targets[:, s]))) for s in range(n)]
    d = torch.tensor([[float((drawn[i] - targets[:, j]).abs().mean()) for j in range(n)] for i in range(n)])
    return float((d.sum() - d.diag().sum()) / (n * n - n) - d.diag().mean())


def test_public_styles_make_the_statistics_steer_the_drawing(studio_dir, tmp_path):
    with_option = trainer(studio_dir, tmp_path / "on", public_styles=True)
    without = trainer(studio_dir, tmp_path / "off")
    for t in (with_option, without):
        t.train_epochs(8)
    assert steering(with_option) > 0.01
    assert steering(without) < 0.005
