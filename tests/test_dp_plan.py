"""The record-level DP planner: what it predicts is what the ledger charges; impossible targets are refused."""

from __future__ import annotations

import dataclasses

import pytest

from fedgai.cli import main
from fedgai.config import ConfigError, PrivacyConfig, profile
from fedgai.privacy import compute_epsilon
from fedgai.privacy.planner import PlanInfeasible, RecordPlan, choose, plan_record_dp, run_epochs
from fedgai.privacy.record import record_level_steps
from fedgai.trainer import StudioTrainer

PLANNED = {"privacy.dp": "record", "privacy.plan": True, "privacy.target_epsilon": 8.0}
# Record-level DP with a target and privacy.plan unset: planned by default.
DEFAULT = {"privacy.dp": "record", "privacy.target_epsilon": 8.0}


@pytest.mark.parametrize("overrides", [DEFAULT, PLANNED], ids=["default", "plan=true"])
def test_ledger_of_a_planned_run_charges_what_the_planner_predicted(studio_dir, tmp_path, overrides):
    cfg = profile("test").with_overrides(overrides)
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    plan = plan_record_dp(cfg.privacy, trainer.num_samples, run_epochs(cfg))
    assert trainer.record_dp.cfg.noise_multiplier == plan.noise_multiplier
    assert trainer.record_dp.sample_rate == plan.sample_rate
    trainer.train_epochs(run_epochs(cfg))
    assert list(trainer.record_dp.ledger.steps) == plan.ledger_steps(cfg.privacy)
    assert trainer.dp_epsilon() == pytest.approx(plan.expected_epsilon, rel=1e-9)
    assert plan.expected_epsilon <= 8.0
    assert not trainer.record_dp.affordable(1)  # the plan spends the budget: one more epoch would pass it
    assert trainer.metadata["dp_plan"]["noise_multiplier"] == plan.noise_multiplier


def test_planned_sigma_is_the_smallest_that_fits_and_respects_the_floor():
    privacy = PrivacyConfig(dp="record", target_epsilon=4.0)
    plan = plan_record_dp(privacy, pairs=40, epochs=6)

    def epsilon(sigma: float) -> float:
        loud = dataclasses.replace(privacy, noise_multiplier=sigma)
        return compute_epsilon(record_level_steps(loud, 40, plan.batch_size, 6), privacy.delta)

    assert epsilon(plan.noise_multiplier) == pytest.approx(plan.expected_epsilon) and plan.expected_epsilon <= 4.0
    assert epsilon(plan.noise_multiplier * 0.98 - 0.01) > 4.0  # calibrated to 1 % / 0.01
    floored = plan_record_dp(dataclasses.replace(privacy, noise_multiplier=20.0), pairs=40, epochs=6)
    assert floored.noise_multiplier >= 20.0 and floored.expected_epsilon < 4.0  # a site's minimum sigma holds


def _plan(batch: int, steps: int, sigma: float) -> RecordPlan:
    return RecordPlan(pairs=64, epochs=steps // (64 // batch), batch_size=batch, noise_multiplier=sigma, delta=1e-5,
                      target_epsilon=8.0, expected_epsilon=7.9, sample_rate=batch / 64, steps_per_epoch=64 // batch)


def test_choice_prefers_the_largest_batch_whose_signal_to_noise_is_near_the_best():
    small, mid, large = _plan(8, 80, 1.0), _plan(16, 40, 1.45), _plan(64, 10, 2.9)
    assert [round(p.score, 1) for p in (small, mid, large)] == [71.6, 69.8, 69.8]
    assert choose([small, mid, large], min_steps=20) == mid  # within 5 %, fewer steps; large has too few steps
    assert choose([small, mid, large], min_steps=1) == large
    assert choose([small, _plan(16, 40, 3.0)], min_steps=1) == small  # a much noisier big batch loses


def test_an_unreachable_target_is_a_clear_error(capsys):
    with pytest.raises(PlanInfeasible, match="out of reach for 30 training pairs.*statistics release alone"):
        plan_record_dp(PrivacyConfig(dp="record"), pairs=30, epochs=10, target_epsilon=0.5)
    assert main(["dp", "plan", "--pairs", "30", "--epsilon", "0.5", "--profile", "test"]) == 2
    assert "out of reach" in capsys.readouterr().err


def test_plan_needs_a_target():
    with pytest.raises(ConfigError, match="privacy.plan needs privacy.target_epsilon"):
        profile("test").with_overrides({"privacy.dp": "record", "privacy.plan": True})


def test_cli_prints_sigma_batch_steps_and_epsilon(capsys):
    assert main(["dp", "plan", "--pairs", "12", "--epsilon", "8", "--epochs", "2", "--profile", "test"]) == 0
    out = capsys.readouterr().out
    chosen = plan_record_dp(PrivacyConfig(dp="record"), pairs=12, epochs=2, target_epsilon=8.0)
    assert f"sigma {chosen.noise_multiplier:.2f}, batch {chosen.batch_size}" in out
    assert f"{chosen.steps} steps" in out and f"expected epsilon {chosen.expected_epsilon:.3f}" in out


def test_an_explicit_plan_false_keeps_sigma_and_batch_as_set(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({**DEFAULT, "privacy.plan": False, "privacy.noise_multiplier": 0.5})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    assert trainer.record_dp.cfg.noise_multiplier == 0.5
    assert trainer.metadata["dp_batch_size"] == cfg.train.batch_size and trainer.metadata["dp_plan"] is None
    planned = plan_record_dp(cfg.privacy, trainer.num_samples, run_epochs(cfg))
    assert (planned.noise_multiplier, planned.batch_size) != (0.5, cfg.train.batch_size)  # what the default runs


def test_without_a_target_nothing_is_planned():
    assert not PrivacyConfig(dp="record").planned
    assert PrivacyConfig(dp="record", target_epsilon=4.0).planned
    assert not PrivacyConfig(dp="client", target_epsilon=4.0).planned  # the planner is record-level only


def test_a_default_plan_out_of_reach_trains_as_set_and_the_budget_refuses(studio_dir, tmp_path, caplog):
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.target_epsilon": 0.5})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path / "default")
    assert trainer.metadata["dp_plan"] is None and "out of reach" in caplog.text
    assert not trainer.record_dp.affordable(1)  # the ledger, not the plan, stops it
    with pytest.raises(PlanInfeasible, match="out of reach"):  # asked for by name: no other schedule
        StudioTrainer(cfg.with_overrides({"privacy.plan": True}), studio_dir, tmp_path / "explicit")
