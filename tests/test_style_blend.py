"""Style fusion: what a studio shares is only its AdaIN_SD statistics, and blending them moves the sketch."""

from __future__ import annotations

import json

import pytest
import torch

from fedgai.cli import main
from fedgai.edge.sketcher import load_studio_model
from fedgai.edge.style_blend import StyleMismatch, blend, fuse_grid, load_style, share_style, sketch_with, style_of
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
