"""Record-level DP: the pair is the unit, G and D and AdaIN_SD's statistics are private, one ledger bounds all."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import fedgai
from fedgai.config import PrivacyConfig, profile
from fedgai.losses import hinge_d_loss
from fedgai.models import GramDiscriminator, SketchGenerator, build_discriminator
from fedgai.privacy import (
    PrivacyBudgetExceeded,
    RecordLevelDP,
    Step,
    compute_epsilon,
    noised_mean,
    noised_sum,
    statistics_sum,
)
from fedgai.privacy.record import clip_per_pair, per_pair_gradients
from fedgai.trainer import StudioTrainer

DELTA = 1e-5
CLIP = 0.5


def _critic() -> GramDiscriminator:
    torch.manual_seed(0)
    return GramDiscriminator(n_taps=2, rows=4, cols=16, width=16, per_sample=True)


def _grams(n: int, scale: float = 1.0) -> list[torch.Tensor]:
    return [torch.randn(n, 8, 8) * scale, torch.randn(n, 16, 16) * scale]


def _pair_loss(critic, real, fake):
    loss = hinge_d_loss(critic(real)[0], critic(fake)[0])
    return loss, {"loss_d": loss}


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(len(g), -1) for g in grads.values()], 1)


def _engine(tmp_path, **overrides) -> RecordLevelDP:
    cfg = PrivacyConfig(dp="record", clip_norm=CLIP, **overrides)
    return RecordLevelDP(cfg, num_pairs=16, batch_size=4, ledger_path=tmp_path / "ledger.json", studio="s")


def test_the_pair_is_the_unit_one_gradient_of_real_plus_fake_per_pair():
    """Old code: real and fake were two rows of one batch, so one pair gave two separately clipped gradients."""
    critic, real, fake = _critic(), _grams(3), _grams(3)
    grads, logs = per_pair_gradients(critic, _pair_loss, [real, fake])
    assert all(len(g) == 3 for g in grads.values()) and logs["loss_d"].shape == (3,)
    for i in range(3):
        critic.zero_grad()
        loss = hinge_d_loss(critic([g[i : i + 1] for g in real])[0], critic([g[i : i + 1] for g in fake])[0])
        loss.backward()
        for name, param in critic.named_parameters():
            torch.testing.assert_close(grads[name][i], param.grad, rtol=1e-4, atol=1e-6)


def test_per_pair_clipped_gradients_are_bounded_by_the_clip_norm():
    grads, _ = per_pair_gradients(_critic(), _pair_loss, [_grams(6, 50.0), _grams(6, 50.0)])
    before, after = _flat(grads).norm(dim=1), _flat(clip_per_pair(grads, CLIP)).norm(dim=1)
    assert before.max() > CLIP  # clipping is active
    assert torch.all(after <= CLIP * (1 + 1e-5))
    small = before < CLIP
    torch.testing.assert_close(after[small], before[small])


def test_removing_one_pair_moves_the_summed_clipped_gradient_by_at_most_c():
    grads, _ = per_pair_gradients(_critic(), _pair_loss, [_grams(5, 50.0), _grams(5, 50.0)])
    total = _flat(clip_per_pair(grads, CLIP)).sum(0)
    for k in range(5):
        rest = {name: torch.cat([g[:k], g[k + 1 :]]) for name, g in grads.items()}
        assert (total - _flat(clip_per_pair(rest, CLIP)).sum(0)).norm() <= CLIP * (1 + 1e-5)


def test_one_pairs_gradient_does_not_depend_on_the_other_pairs_of_its_batch():
    """BatchNorm would couple them (and break the sensitivity argument); per-sample networks use GroupNorm."""
    torch.manual_seed(0)
    generator = SketchGenerator((4, 8), finest_stride=1, width=8, per_sample=True)
    taps = [torch.randn(3, 4, 8, 8), torch.randn(3, 8, 4, 4)]

    def loss(generate, photo_taps):
        out = generate(photo_taps).mean()
        return out, {"out": out}

    first, _ = per_pair_gradients(generator, loss, [[t[[0, 1]] for t in taps]])
    second, _ = per_pair_gradients(generator, loss, [[t[[0, 2]] for t in taps]])
    for name in first:
        torch.testing.assert_close(first[name][0], second[name][0])


def test_per_sample_networks_have_no_batchnorm_and_no_spectral_norm():
    cfg = profile("test").with_overrides({"privacy.dp": "record"})
    disc = build_discriminator(cfg)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in disc.modules())
    assert not any(k.endswith(("weight_u", "weight_orig")) for k in disc.state_dict())
    plain = build_discriminator(profile("test"))
    assert any(k.endswith("weight_orig") for k in plain.state_dict())


@pytest.mark.parametrize("module", ["models.py", "sharing.py", "wire.py"])
def test_models_and_keys_do_not_import_privacy_code(module):
    tree = ast.parse((Path(fedgai.__file__).parent / module).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m and m.startswith("fedgai.privacy")]


def test_private_gradient_has_noise_std_sigma_c_over_expected_batch(tmp_path):
    dp = _engine(tmp_path, noise_multiplier=2.0)
    zeros = {"w": torch.zeros(4, 50_000)}
    noisy = dp.privatise(zeros, {"w": torch.Size([50_000])})["w"]
    expected_batch = dp.sample_rate * dp.num_pairs
    assert noisy.std().item() == pytest.approx(2.0 * CLIP / expected_batch, rel=0.03)


def test_an_empty_sample_still_takes_a_noised_step(tmp_path):
    critic = _critic()
    before = [p.detach().clone() for p in critic.parameters()]
    dp = _engine(tmp_path)
    dp.step(critic, torch.optim.SGD(critic.parameters(), lr=0.1), _pair_loss, None)
    assert all(not torch.equal(b, p) for b, p in zip(before, critic.parameters(), strict=True))


def test_poisson_sample_rate(tmp_path):
    dp = _engine(tmp_path)
    sizes = torch.tensor([len(dp.sample()) for _ in range(2000)], dtype=torch.float)
    assert dp.sample_rate == 0.25 and sizes.mean().item() == pytest.approx(4.0, rel=0.05)


def test_statistics_mechanism_sensitivity_is_sqrt2_times_clip():
    rows = torch.randn(6, 10) * 3
    outlier = torch.full((1, 10), 1e4)
    with_outlier = statistics_sum(torch.cat([rows, outlier]), 2.0)
    assert (with_outlier - statistics_sum(rows, 2.0)).norm().item() == pytest.approx(math.sqrt(2) * 2.0, rel=1e-6)
    for k in range(6):
        rest = torch.cat([rows[:k], rows[k + 1 :]])
        assert (statistics_sum(rows, 2.0) - statistics_sum(rest, 2.0)).norm() <= math.sqrt(2) * 2.0 + 1e-9


def test_statistics_release_without_noise_is_the_clipped_mean_and_noise_has_its_std():
    rows = torch.randn(8, 5, dtype=torch.float64)
    torch.testing.assert_close(noised_mean(rows, 100.0, 0.0), rows.mean(0))
    zeros = torch.zeros(1, 20_000, dtype=torch.float64)
    noise = noised_sum(zeros, 1.0, 3.0, torch.Generator().manual_seed(0))[:-1]
    assert noise.std().item() == pytest.approx(3.0 * math.sqrt(2), rel=0.03)  # sigma x sensitivity


def test_budget_is_checked_before_an_epoch_is_charged(tmp_path):
    dp = _engine(tmp_path, noise_multiplier=1.0, target_epsilon=1.0)
    assert not dp.affordable(1)  # G cannot train before the sketch statistics are released
    dp.release_statistics(torch.zeros(2, 3), torch.zeros(3))  # sigma 5: epsilon 0.79 of the 1.0
    spent = dp.ledger.steps
    assert not dp.affordable(1)
    with pytest.raises(PrivacyBudgetExceeded):
        dp.charge_epoch()
    assert dp.ledger.steps == spent == (Step(5.0, 1.0, 1),)


def test_one_ledger_bounds_g_d_and_the_statistics(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 1.5,
                                          "privacy.stats_noise_multiplier": 4.0})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    out = trainer.train_epochs(1)
    dp = trainer.record_dp
    stats = Step(4.0, 1.0, 1)
    sgd = Step(1.5, dp.sample_rate, 2 * dp.steps_per_epoch)  # one D and one G step per training step
    assert dp.ledger.steps == (stats, sgd)
    assert out["dp_epsilon"] == trainer.dp_epsilon() == pytest.approx(compute_epsilon([stats, sgd], DELTA))
    d_only = Step(1.5, dp.sample_rate, dp.steps_per_epoch)  # what the old accounting charged
    assert out["dp_epsilon"] > compute_epsilon([sgd], DELTA) > compute_epsilon([d_only], DELTA)
    trained = trainer.generator.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in before.items() if "adain" not in k)
    assert {"loss_d", "loss_g", "gram"} <= set(out)
