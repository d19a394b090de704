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


def test_feature_matching_gives_the_generator_a_signal_shaped_by_the_critic(test_cfg, studio_dir, tmp_path):
    t = StudioTrainer(test_cfg.with_overrides({"model.image_size": 64, "loss.feature_matching": 5.0}), studio_dir,
                      tmp_path / "fm")
    photo, sketch = next(iter(t.loader()))

    def generator_grad() -> torch.Tensor:
        t.generator.zero_grad()
        t.generator_losses(photo, sketch)["feature_matching"].backward()
        return torch.cat([p.grad.flatten() for p in t.generator.parameters() if p.grad is not None])

    before = generator_grad()
    assert before.abs().sum() > 0
    with torch.no_grad():  # another critic (e.g. the global D after a round) -> another signal to G
        t.discriminator.body[0].weight_orig.mul_(-1)
    assert not torch.allclose(before, generator_grad())
    assert "feature_matching" in t.step(photo, sketch)
    assert "feature_matching" not in StudioTrainer(test_cfg, studio_dir, tmp_path / "paper").step(photo, sketch)


def test_structure_critic_trains_with_d_and_drives_the_generator(test_cfg, studio_dir, tmp_path):
    t = StudioTrainer(test_cfg.with_overrides({"model.image_size": 64, "model.structure_critic": 8}), studio_dir,
                      tmp_path / "structure")
    photo, sketch = next(iter(t.loader()))
    t.generator.zero_grad()
    t.generator_losses(photo, sketch)["structure"].backward()
    assert sum(p.grad.abs().sum() for p in t.generator.parameters() if p.grad is not None) > 0
    before = t.discriminator.patch.head.weight_orig.detach().clone()
    assert "structure" in t.step(photo, sketch)
    assert not torch.equal(before, t.discriminator.patch.head.weight_orig)  # D's optimiser trains it


def test_metadata_records_encoder_and_clip(trainer):
    meta = json.loads((trainer.run_dir / "metadata.json").read_text())
    assert meta["encoder"] == "random" and meta["encoder_pretrained"] is False
    assert meta["clip_enabled"] is False and "disabled" in meta["clip_status"]
    assert meta["num_samples"] == trainer.num_samples == 8  # test profile caps at 8 pairs


def test_sketch_statistics_come_from_the_studio_sketches(trainer):
    sketches = torch.stack([trainer.dataset[i][1] for i in range(trainer.num_samples)])
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
    assert [h["epoch"] for h in history] == [1, 2] and "val_l1" in history[0]
    assert (run / "tensorboard").is_dir() and any((run / "tensorboard").iterdir())
    # --resume continues where it stopped instead of starting over
    assert main([*args[:4], "3", *args[5:], "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert len((run / "history.jsonl").read_text().splitlines()) == 3

    out = tmp_path / "sketches"
    assert main(["sketch", "--model", str(run / "checkpoints" / "last.pt"), str(studio_dir / "photos"),
                 "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == len(list((studio_dir / "photos").iterdir()))


def test_record_level_dpsgd_reports_epsilon_and_enforces_the_budget(test_cfg, studio_dir, tmp_path):
    from fedgai.privacy import PrivacyBudgetExceeded, compute_epsilon
    from fedgai.privacy.record import record_level_steps

    cfg = test_cfg.with_overrides({"model.image_size": 64, "privacy.dp": "record", "privacy.noise_multiplier": 1.0})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path / "dp")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.discriminator.modules())
    assert not any(k.endswith("weight_orig") for k in trainer.discriminator.state_dict())
    out = trainer.train_epochs(2)
    # One ledger: the AdaIN_SD statistics release, then one D and one G step per training step.
    steps = record_level_steps(cfg.privacy, trainer.num_samples, cfg.train.batch_size, 2)
    assert out["dp_epsilon"] == pytest.approx(compute_epsilon(steps, cfg.privacy.delta))
    assert "feddecorr" not in out  # FedDecorr couples a batch's pairs: not used under record-level DP
    # The ledger survives the trainer (a restarted site keeps counting) and the budget is enforced.
    tight = cfg.with_overrides({"privacy.target_epsilon": out["dp_epsilon"] + 1e-3})
    again = StudioTrainer(tight, studio_dir, tmp_path / "dp")
    assert again.dp_epsilon() == pytest.approx(out["dp_epsilon"])
    with pytest.raises(PrivacyBudgetExceeded):
        again.train_epochs(1)


def test_record_level_dp_trains_the_structure_critic_per_pair(test_cfg, studio_dir, tmp_path):
    cfg = test_cfg.with_overrides({"model.image_size": 64, "model.structure_critic": 8, "loss.feature_matching": 1.0,
                                   "privacy.dp": "record", "privacy.noise_multiplier": 1.0})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path / "dp")
    patch = trainer.discriminator.patch
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in patch.modules())  # GroupNorm: per-pair safe
    before = patch.head.weight.detach().clone()
    out = trainer.train_epochs(1)
    assert {"structure", "feature_matching"} <= set(out) and out["dp_epsilon"] > 0
    assert not torch.equal(before, patch.head.weight)


@pytest.fixture(scope="module")
def unpaired_studio(tmp_path_factory):
    from fedgai.data import make_demo

    return make_demo(tmp_path_factory.mktemp("unpaired") / "s", studios=1, seed=0, size=64, progress=False,
                     unpaired=6)[0]


def test_unpaired_photos_reach_g_only_through_the_critics(test_cfg, unpaired_studio, tmp_path):
    cfg = test_cfg.with_overrides({"model.image_size": 64, "model.structure_critic": 8, "train.unpaired_batch": 3})
    t = StudioTrainer(cfg, unpaired_studio, tmp_path / "u")
    photo, sketch = next(iter(t.loader()))
    real = t._real_features(photo, sketch)
    fake = t.generator(real.photo_taps)
    fake_taps = t.encoder(fake)
    others = [t.unpaired_batch(), t.unpaired_batch().flip(-2)]  # two different sets of unpaired photos
    terms = [t.objective.generator_terms(fake, fake_taps, sketch, real.sketch_deep, real.sketch_grams, photo,
                                         t._generate_unpaired(u)) for u in others]
    for paired in ("gram", "content", "pixel_l1"):
        assert terms[0][paired].item() == terms[1][paired].item()
    for critic in ("adversarial", "structure"):
        assert terms[0][critic].item() != terms[1][critic].item()
    assert json.loads((t.run_dir / "metadata.json").read_text())["unpaired_photos"] == 6
    t.train_epochs(1)
    assert len(t.unpaired._cache) > 0  # training drew unpaired photos


def test_unpaired_photos_change_nothing_unless_asked(test_cfg, unpaired_studio, tmp_path):
    from fedgai.data import make_demo

    cfg = test_cfg.with_overrides({"model.image_size": 64})
    without = make_demo(tmp_path / "plain", studios=1, seed=0, size=64, progress=False)[0]  # the same pairs
    with_photos = StudioTrainer(cfg, unpaired_studio, tmp_path / "a")
    assert with_photos.unpaired is None and with_photos.unpaired_batch() is None
    first = with_photos.train_epochs(1)
    assert StudioTrainer(cfg, without, tmp_path / "b").train_epochs(1) == first


def test_record_level_dp_refuses_unpaired_photos(test_cfg):
    from fedgai.config import ConfigError

    with pytest.raises(ConfigError, match="unpaired_batch > 0 is refused under record-level DP"):
        test_cfg.with_overrides({"privacy.dp": "record", "train.unpaired_batch": 2})
