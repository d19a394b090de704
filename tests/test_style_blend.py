"""Style fusion: what a studio shares is only its AdaIN_SD statistics, and blending them moves the sketch."""

from __future__ import annotations

import json

import pytest
import torch

from fedgai.cli import main
from fedgai.edge.sketcher import load_studio_model
from fedgai.edge.style_blend import (
    StyleMismatch,
    blend,
    blend_stats,
    fuse_grid,
    load_style,
    share_style,
    sketch_with,
    style_of,
)
from fedgai.trainer import StudioTrainer


@pytest.fixture(scope="module")
def two_studios(demo_root, tmp_path_factory):
    """Checkpoints of both demo studios after one tiny epoch each."""
    from fedgai.config import profile

    out = tmp_path_factory.mktemp("fusion")
    ckpts = []
    for studio in sorted(p for p in demo_root.iterdir() if p.is_dir()):
        trainer = StudioTrainer(profile("test"), studio, out / studio.name)
        trainer.train_epochs(1)
        ckpts.append(trainer.save_checkpoint())
        trainer.close()
    return ckpts


def test_blend_stats_moves_each_tap_from_the_own_statistics_to_the_other():
    """The one blend rule (``blend`` on style files, the benchmarks on a generator's statistics): 0 is the own,
    1 the other, 0.5 the midpoint, for means and stds of every tap."""
    own = [(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0])), (torch.tensor([4.0]), torch.tensor([0.5]))]
    other = [(torch.tensor([2.0, 6.0]), torch.tensor([3.0, 1.0])), (torch.tensor([-4.0]), torch.tensor([1.5]))]
    midpoint = [((m0 + m1) / 2, (s0 + s1) / 2) for (m0, s0), (m1, s1) in zip(own, other, strict=True)]
    for alpha, expected in ((0.0, own), (1.0, other), (0.5, midpoint)):
        torch.testing.assert_close(blend_stats(own, other, alpha), expected)


def test_shared_style_file_holds_only_the_statistics(two_studios, tmp_path):
    path = share_style(two_studios[1], tmp_path / "b.style.json")
    data = json.loads(path.read_text())
    assert set(data) == {"format", "studio", "encoder", "encoder_hash", "means", "stds"}
    model = load_studio_model(two_studios[1])
    assert [len(m) for m in data["means"]] == list(model.encoder.channels)
    assert load_style(path) == style_of(model)


def test_alpha_zero_is_the_own_style_and_alpha_one_draws_differently(two_studios, tmp_path):
    own, other = load_studio_model(two_studios[0]), load_style(share_style(two_studios[1], tmp_path / "b.json"))
    photos = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = own.generator(own.encoder(photos))
    torch.testing.assert_close(sketch_with(own, photos, blend(style_of(own), other, 0.0)), plain)
    assert not torch.allclose(sketch_with(own, photos, blend(style_of(own), other, 1.0)), plain)
    # the generator's own statistics are restored after a blended run
    torch.testing.assert_close(own.generator(own.encoder(photos)), plain)
    grid = fuse_grid(own, [other, other], photos, steps=3)
    assert grid.shape[0] == 3 and grid.shape[2] == 2 + 4 * (32 + 2)  # photo + 3 alphas per row
    assert grid.shape[1] == 2 + 4 * (32 + 2)  # 2 photos x 2 styles


def test_statistics_from_another_feature_space_are_refused(two_studios, tmp_path):
    path = share_style(two_studios[1], tmp_path / "b.json")
    data = json.loads(path.read_text())
    data["encoder_hash"] = "0" * 16
    path.write_text(json.dumps(data))
    own = load_studio_model(two_studios[0])
    with pytest.raises(StyleMismatch, match="encoder"):
        fuse_grid(own, [load_style(path)], torch.zeros(1, 3, 32, 32), steps=2)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(StyleMismatch, match="not a fedgai style file"):
        load_style(tmp_path / "junk.json")


def test_cli_share_style_then_fuse_writes_the_grid(two_studios, demo_root, tmp_path, capsys):
    style = tmp_path / "b.style.json"
    assert main(["share-style", "--model", str(two_studios[1]), "--out", str(style)]) == 0
    photo = sorted((sorted(demo_root.iterdir())[0] / "photos").iterdir())[0]
    out = tmp_path / "grid.png"
    assert main(["fuse", "--model", str(two_studios[0]), "--style", str(style), "--steps", "4",
                 "--out", str(out), str(photo)]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["fuse", "--model", str(two_studios[0]), "--style", str(photo), "--out", str(out), str(photo)]) == 2
    assert "cannot read style file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_styled(demo_root, tmp_path_factory):
    """Styled renderers (model.generator styled) of both demo studios after one tiny epoch each."""
    from fedgai.config import profile

    cfg = profile("test").with_overrides({"model.generator": "styled", "fed.mode": "local", "train.round_steps": 2,
                                          "train.head_steps": 1, "train.max_pairs": 6})
    out = tmp_path_factory.mktemp("styled-fusion")
    ckpts = []
    for studio in sorted(p for p in demo_root.iterdir() if p.is_dir()):
        trainer = StudioTrainer(cfg, studio, out / studio.name)
        trainer.train_epochs(1)
        ckpts.append(trainer.save_checkpoint())
        trainer.close()
    return ckpts


def test_a_styled_renderer_draws_the_blend_through_its_style_code(two_styled, demo_root, tmp_path):
    """generator(taps, blended statistics): the mapping network reads the blend, alpha 0 is the own drawing, and
    every step of the grid draws differently."""
    from fedgai.models import StyledSketchGenerator, style_vector

    own, other = load_studio_model(two_styled[0]), load_style(share_style(two_styled[1], tmp_path / "b.json"))
    assert isinstance(own.generator, StyledSketchGenerator)
    photos = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = own.generator(own.encoder(photos))
    seen = []
    hook = own.generator.mapping.register_forward_hook(lambda _m, args, _out: seen.append(style_vector(args[0])))
    alphas = (0.0, 0.5, 1.0)
    drawn = [sketch_with(own, photos, blend(style_of(own), other, a)) for a in alphas]
    hook.remove()
    torch.testing.assert_close(drawn[0], plain)
    assert all(not torch.allclose(a, b) for i, a in enumerate(drawn) for b in drawn[i + 1:])
    for alpha, code_input in zip(alphas, seen, strict=True):  # the code is the blend's, not the stored statistics'
        expected = style_vector([(m.view(1, -1, 1, 1), s.view(1, -1, 1, 1)) for m, s in blend(style_of(own), other,
                                                                                               alpha)])
        torch.testing.assert_close(code_input, expected)
    assert style_of(own) == style_of(load_studio_model(two_styled[0]))  # its own statistics are untouched
    grid = fuse_grid(own, [other], photos[:1], steps=3)
    tiles = [grid[:, 2:34, 2 + 34 * i:34 + 34 * i] for i in range(1, 4)]  # the three alphas after the photo
    assert all(not torch.equal(a, b) for i, a in enumerate(tiles) for b in tiles[i + 1:])
    photo = sorted((sorted(demo_root.iterdir())[0] / "photos").iterdir())[0]
    assert main(["fuse", "--model", str(two_styled[0]), "--style", str(tmp_path / "b.json"), "--steps", "3",
                 "--out", str(tmp_path / "grid.png"), str(photo)]) == 0
