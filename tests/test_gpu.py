"""GPU smoke test: a few training steps of the test profile on CUDA. Skipped, with the reason shown by
pytest's -ra summary, where torch sees no CUDA GPU (the CPU suite covers the same code in float32)."""

from __future__ import annotations

import math

import pytest
import torch

from fedgai.cli import main
from fedgai.trainer import StudioTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to torch; run on a GPU machine (benchmarks/gpu_smoke.py)")


def _tensors(trainer: StudioTrainer) -> list[torch.Tensor]:
    nets = (trainer.encoder, trainer.generator, trainer.discriminator)
    return [t for net in nets for t in (*net.parameters(), *net.buffers())]


def test_training_runs_on_the_gpu_with_finite_losses(test_cfg, studio_dir, tmp_path):
    trainer = StudioTrainer(test_cfg.with_overrides({"model.image_size": 64}), studio_dir, tmp_path / "run")
    assert trainer.device.type == "cuda"  # train.device "auto" picks the GPU
    assert all(t.is_cuda for t in _tensors(trainer))
    assert trainer.amp == (torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    losses = trainer.train_epochs(2)
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert all(t.is_cuda for t in _tensors(trainer))
    assert all(math.isfinite(v) for v in trainer.quality().values())
    trainer.save_grid(tmp_path / "grid.png")
    # A GPU checkpoint resumes on a CPU-only machine.
    cpu = StudioTrainer(test_cfg.with_overrides({"model.image_size": 64}), studio_dir, tmp_path / "cpu", "cpu")
    cpu.load_checkpoint(trainer.save_checkpoint())
    assert cpu.epoch == 2 and all(not t.is_cuda for t in _tensors(cpu))


def test_float32_on_the_gpu_when_amp_is_off(test_cfg, studio_dir, tmp_path):
    cfg = test_cfg.with_overrides({"model.image_size": 64, "train.amp": "off", "train.device": "cuda"})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path / "run")
    assert trainer.amp is None
    assert all(math.isfinite(v) for v in trainer.train_epochs(1).values())


def test_train_local_cli_on_cuda(studio_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-local", "--studio", str(studio_dir), "--out", str(run), "--epochs", "1",
                 "--profile", "test", "--device", "cuda"]) == 0
    assert "device cuda" in capsys.readouterr().out
    assert '"device": "cuda' in (run / "metadata.json").read_text()
