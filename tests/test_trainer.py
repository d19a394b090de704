import json

import pytest
import torch

from fedgai.cli import main
from fedgai.trainer import StudioTrainer


@pytest.fixture
def trainer(test_cfg, studio_dir, tmp_path):
    return StudioTrainer(test_cfg.with_overrides({"model.image_size": 64}), studio_dir, tmp_path / "run")


def test_a_few_steps_lower_the_generator_loss(trainer):
    photo, sketch = next(iter(trainer.loader()))
    first = trainer.step(photo, sketch)["loss_g"]
    for _ in range(15):
        last = trainer.step(photo, sketch)["loss_g"]
    assert last < 0.8 * first


def test_metadata_records_encoder_and_clip(trainer):
    meta = json.loads((trainer.run_dir / "metadata.json").read_text())
    assert meta["encoder"] == "random" and meta["encoder_pretrained"] is False
    assert meta["clip_enabled"] is False and "disabled" in meta["clip_status"]
    assert meta["num_samples"] == trainer.num_samples == 8  # test profile caps at 8 pairs


def test_sketch_statistics_come_from_the_studio_sketches(trainer):
    sketches = torch.stack([trainer.plain[i][1] for i in range(trainer.num_samples)])
    taps = trainer.encoder(sketches)
    torch.testing.assert_close(trainer.generator.adain.mean0.flatten(), taps[0].mean(dim=(0, 2, 3)),
                               atol=1e-5, rtol=1e-4)


def test_same_seed_same_run(test_cfg, studio_dir, tmp_path):
    cfg = test_cfg.with_overrides({"model.image_size": 64})
    results = []
    for name in ("a", "b"):
        t = StudioTrainer(cfg, studio_dir, tmp_path / name)
        results.append(t.train_epochs(1))
    assert results[0] == results[1]


def test_checkpoint_resume_restores_state(trainer, test_cfg, studio_dir):
    trainer.train_epochs(1)
    path = trainer.save_checkpoint()
    other = StudioTrainer(trainer.cfg, studio_dir, trainer.run_dir.parent / "other")
    other.load_checkpoint(path)
    assert other.epoch == 1
    for k, v in trainer.generator.state_dict().items():
        torch.testing.assert_close(other.generator.state_dict()[k], v)


def test_train_local_cli_writes_grids_checkpoint_and_sketches(studio_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train-local", "--studio", str(studio_dir), "--epochs", "2", "--out", str(run), "--profile", "test",
            "--image-size", "64"]
    assert main(args) == 0
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and "quality_l1" in history[0]
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())
    # --resume continues where it stopped instead of starting over
    assert main([*args[:4], "3", *args[5:], "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert len((run / "history.jsonl").read_text().splitlines()) == 3

    out = tmp_path / "sketches"
    assert main(["sketch", "--model", str(run / "checkpoints" / "last.pt"), str(studio_dir / "photos"),
                 "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == len(list((studio_dir / "photos").iterdir()))
