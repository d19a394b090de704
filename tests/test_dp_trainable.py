"""Private fine-tuning of few parameters: under record-level DP only privacy.record_trainable's parameters
are trained and noised; the frozen ones stay bit for bit where they started."""

from __future__ import annotations

import torch

from fedgai.config import profile
from fedgai.trainer import StudioTrainer

STYLE_HEAD = {"privacy.dp": "record", "privacy.record_trainable": "style_head", "privacy.noise_multiplier": 1.0}


def _trainable(module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def test_frozen_parameters_do_not_move_under_dp(studio_dir, tmp_path):
    trainer = StudioTrainer(profile("test").with_overrides(STYLE_HEAD), studio_dir, tmp_path)
    nets = {"G": trainer.generator, "D": trainer.discriminator}
    before = {n: {k: p.detach().clone() for k, p in net.named_parameters()} for n, net in nets.items()}
    last = len(trainer.generator.blocks) - 1
    assert _trainable(trainer.generator) == {k for k in before["G"]
                                            if k.startswith((f"blocks.{last}.", "upsample.", "head."))}
    assert _trainable(trainer.discriminator) == {k for k in before["D"] if k.startswith("head.")}
    trainer.train_epochs(1)
    for n, net in nets.items():
        for name, param in net.named_parameters():
            moved = not torch.equal(param.detach(), before[n][name])
            assert moved == param.requires_grad, f"{n}.{name}: moved={moved}, trainable={param.requires_grad}"
    noised = sum(p.numel() for net in nets.values() for p in net.parameters() if p.requires_grad)
    assert trainer.metadata["dp_noised_parameters"] == noised
    assert noised < sum(p.numel() for net in nets.values() for p in net.parameters()) / 2


def test_noise_is_added_only_to_trainable_parameters(studio_dir, tmp_path):
    trainer = StudioTrainer(profile("test").with_overrides(STYLE_HEAD), studio_dir, tmp_path)
    dp, generator = trainer.record_dp, trainer.generator
    before = {k: p.detach().clone() for k, p in generator.named_parameters()}
    dp.step(generator, trainer.opt_g, trainer.objective.generator_pair_loss, None)  # an empty sample: noise only
    for name, param in generator.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and torch.equal(param.detach(), before[name]), name


def test_all_trains_every_parameter(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "record"})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    total = sum(p.numel() for net in (trainer.generator, trainer.discriminator) for p in net.parameters())
    assert trainer.metadata["dp_noised_parameters"] == total
