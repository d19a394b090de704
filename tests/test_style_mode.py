"""fed.mode fedgai_style (issue 27 §2): what crosses the wire, what stays at the studio, FedRep's order, the refusals,
and the styled renderer's training path (model.generator styled) through the product's trainer and prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedgai import prior, prior_build
from fedgai.config import ConfigError, profile
from fedgai.data.public_styles import write_line_style_studio
from fedgai.features.fedrep import fit_head, head_parameters, train_round
from fedgai.federated.simulator import inprocess
from fedgai.modes import mode, protection_problem
from fedgai.trainer import StudioTrainer

STYLED = {"model.generator": "styled", "model.image_size": 64, "fed.mode": "fedgai_style", "privacy.he": True,
          "fed.min_clients": 3, "train.round_steps": 2, "train.head_steps": 1, "train.max_pairs": 6}


def styled_cfg(**overrides):
    return profile("test").with_overrides({**STYLED, **overrides})


@pytest.fixture(scope="module")
def three_studios(tmp_path_factory) -> list[Path]:
    from fedgai.data import make_demo

    out = tmp_path_factory.mktemp("style-mode") / "studios"
    return make_demo(out, studios=3, seed=0, size=64, progress=False, small=())


@pytest.fixture
def trainer(three_studios, tmp_path) -> StudioTrainer:
    trainer = StudioTrainer(styled_cfg(), three_studios[0], tmp_path / "run")
    yield trainer
    trainer.close()


def test_the_wire_carries_the_renderer_and_critic_trunk_never_the_head_statistics_or_power_iteration(trainer):
    keys = set(trainer.shared_state())
    generator = {k.partition(".")[2] for k in keys if k.startswith("generator.")}
    critic = {k.partition(".")[2] for k in keys if k.startswith("discriminator.")}
    assert {"mapping.net.1.weight", "start.conv.1.weight", "out.1.weight"} <= generator
    assert not any(".film." in k or k.startswith("adain.") for k in generator)
    assert critic == {f"convs.{i}.{p}" for i in range(3) for p in ("weight_orig", "bias")}
    head = {id(p) for p in head_parameters(trainer)}
    films = [p for n, p in trainer.generator.named_parameters() if ".film." in n]
    branch = [p for n, p in trainer.discriminator.named_parameters() if not n.startswith("convs.")]
    assert films and branch and {id(p) for p in films + branch} == head


def test_fedrep_order_fits_the_head_with_the_body_frozen_then_the_body_with_the_head_frozen(trainer):
    head = {id(p) for p in head_parameters(trainer)}
    named = {f"{net}.{n}": p for net, m in trainer.wire_networks().items() for n, p in m.named_parameters()}
    before = {k: p.detach().clone() for k, p in named.items()}
    fit_head(trainer, 2)
    changed = {k for k, p in named.items() if not torch.equal(p, before[k])}
    assert changed and all(id(named[k]) in head for k in changed)
    after_head = {k: p.detach().clone() for k, p in named.items()}
    losses = train_round(trainer)
    moved = {k for k, p in named.items() if not torch.equal(p, after_head[k])}
    assert {k for k in moved if id(named[k]) not in head}, "the body trained"
    assert {k for k in moved if id(named[k]) in head}, "the round's head phase trained the head"
    assert "head_loss_g" in losses and "loss_g" in losses
    assert all(p.requires_grad for p in named.values())  # every flag restored after the phases


def test_a_round_is_a_fixed_number_of_steps_whatever_the_studio_size(three_studios, tmp_path, monkeypatch):
    trainer = StudioTrainer(styled_cfg(**{"train.round_steps": 5, "train.head_steps": 2}), three_studios[0],
                            tmp_path / "run")
    calls = []
    real = trainer.updates.step
    monkeypatch.setattr(trainer.updates, "step", lambda item: calls.append(1) or real(item))
    train_round(trainer)
    assert len(calls) == 7  # 2 head steps + 5 body steps, though 6 pairs at batch 4 make 1 batch an epoch
    trainer.close()


def test_freeze_d_keeps_the_critics_first_convolutions_at_their_starting_values(three_studios, tmp_path):
    cfg = styled_cfg(**{"fed.mode": "local", "privacy.he": False, "fed.min_clients": 1, "train.freeze_d": 2})
    trainer = StudioTrainer(cfg, three_studios[0], tmp_path / "run")
    frozen = [p.detach().clone() for p in trainer.discriminator.frozen_layers(2)]
    free = [p.detach().clone() for p in trainer.discriminator.convs[2].parameters()]
    train_round(trainer)
    assert all(torch.equal(a, b) for a, b in zip(frozen, trainer.discriminator.frozen_layers(2), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(free, trainer.discriminator.convs[2].parameters(), strict=True))
    trainer.close()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model.generator": "mrfm"}, "set model.generator to 'styled'"),
    ({"privacy.he": False}, "shares generator weights"),
    ({"fed.mode": "fedgai"}, "runs in fed.mode local or fedgai_style"),
    ({"privacy.he": False, "privacy.dp": "record", "fed.mode": "local"}, "no record-level DP path"),
    ({"train.unpaired_batch": 4}, "does not use it"),
    ({"train.freeze_d": 4}, "freeze_d must be <= 3"),
    ({"model.generator": "mrfm", "fed.mode": "local", "privacy.he": False, "train.public_mix": 4},
     "public_mix feeds the styled renderer"),
    ({"train.public_mix": -1}, "public_mix must be >= 0"),
])
def test_settings_the_styled_mode_cannot_honour_are_refused_with_the_reason(overrides, message):
    with pytest.raises(ConfigError, match=message):
        styled_cfg(**overrides)


def test_the_studio_refuses_fedgai_style_without_he_over_three_studios_or_noised_client_dp():
    assert mode("fedgai_style").sends_generator
    cfg = styled_cfg()
    assert protection_problem("fedgai_style", cfg.privacy, 2) is not None  # HE with two: each learns the other's
    assert protection_problem("fedgai_style", cfg.privacy, 3) is None


def test_the_renderer_objective_judges_the_batch_in_the_style_it_was_drawn_in(trainer):
    photo, sketch = next(trainer.loader())
    losses = trainer.step(photo, sketch)
    assert {"pixel_l1", "statistics", "adversarial", "loss_d"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())


def test_a_federated_round_under_he_shares_the_body_and_keeps_each_studios_head(three_studios, tmp_path):
    trained = {}

    def after_train(rnd, trainers):  # each studio's own renderer after its local steps, before the average
        trained.update({site: {k: v.clone() for k, v in t.generator.state_dict().items()}
                        for site, t in trainers.items()})

    run = inprocess.run_federation(styled_cfg(**{"fed.rounds": 1}), three_studios, tmp_path, after_train=after_train)
    states = [t.generator.state_dict() for t in run.trainers.values()]
    for key in run.global_params:
        net, _, name = key.partition(".")
        if net == "generator":  # every studio holds the decrypted global body
            for state in states:
                np.testing.assert_allclose(state[name].numpy(), run.global_params[key], atol=1e-3)
    films = [k for k in states[0] if ".film." in k]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in films), "heads stay each studio's own"
    own = trained[three_studios[0].name]
    body = [k.partition(".")[2] for k in run.global_params if k.startswith("generator.")]
    assert any(not np.array_equal(own[k].numpy(), run.global_params[f"generator.{k}"]) for k in body), \
        "after_train sees the studio's own renderer, before the average"
    run.close()


def test_the_styled_prior_trains_on_many_public_line_styles_each_pair_in_its_own_statistics(tmp_path, monkeypatch,
                                                                                             three_studios):
    monkeypatch.setattr(prior, "STYLED_PRIOR_STYLES", 3)
    monkeypatch.setattr(prior, "STYLED_PRIOR_PER_STYLE", 2)
    monkeypatch.setattr(prior, "STYLED_PRIOR_STEPS", 2)
    base = styled_cfg(**{"fed.mode": "local", "privacy.he": False, "fed.min_clients": 1})
    config = prior_build.prior_config(base)
    assert config.train.adain_sample_p == 1.0 and config.train.round_steps == 2
    assert prior.prior_key(base, "random") != prior.prior_key(base.with_overrides({"model.generator": "mrfm"}),
                                                              "random")
    studio = write_line_style_studio(tmp_path / "public", 64, prior.STYLED_PRIOR_STYLES, prior.STYLED_PRIOR_PER_STYLE,
                                     prior.PRIOR_STREAM)
    assert len(list((studio / "sketches").iterdir())) == 6
    path = prior_build.build_prior(base, tmp_path / "prior.pt")
    trainer = StudioTrainer(styled_cfg(**{"train.prior": str(path)}), three_studios[0], tmp_path / "run")
    saved = torch.load(path, weights_only=True)["generator"]
    assert all(torch.equal(trainer.generator.state_dict()[k], v) for k, v in saved.items())
    trainer.close()


def test_fedgai_style_code_keeps_only_the_statistics_home(three_studios, tmp_path):
    trainer = StudioTrainer(styled_cfg(**{"fed.mode": "fedgai_style_code"}), three_studios[0], tmp_path / "run")
    keys = set(trainer.shared_state())
    assert any(".film." in k for k in keys) and "discriminator.embed.1.weight_orig" in keys
    assert not any(k.startswith("generator.adain.") or k.endswith(("weight_u", "weight_v")) for k in keys)
    assert head_parameters(trainer) == []  # no head: train_round is train.round_steps steps on everything
    with pytest.raises(ValueError, match="keeps no head"):
        fit_head(trainer, 1)
    trainer.close()
