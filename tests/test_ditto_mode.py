"""fed.mode fedgai_ditto (issue 15 §4): the personal generator stays home, the shared one's update leaves, the
proximal pull, the refusals, and which generator the studio saves and sketches with."""

from __future__ import annotations

import copy

import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from fedgai.config import ConfigError, profile
from fedgai.edge.sketcher import load_studio_model
from fedgai.federated.round import initial_global
from fedgai.federated.studio.client import local_round
from fedgai.models import build_gan
from fedgai.objective import PairBatch
from fedgai.sharing import norm_keys, private_stats_keys, shared_keys, split_key
from fedgai.trainer import StudioTrainer, make_optimizer

HE = {"fed.mode": "fedgai_ditto", "privacy.he": True}


def _trainer(studio_dir, path, lam: float = 0.1) -> StudioTrainer:
    return StudioTrainer(profile("test").with_overrides({**HE, "fed.ditto_lambda": lam}), studio_dir, path)


def _batch(trainer: StudioTrainer):
    indices, flips = next(iter(trainer.batches()))
    return trainer.features.batch(indices, flips)


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _moved_global(trainer: StudioTrainer, offset: float) -> dict[str, torch.Tensor]:
    """A received global whose generator entries sit ``offset`` away from the studio's own."""
    return {k: v + offset if k.startswith("generator.") else v for k, v in trainer.shared_state().items()}


def _pulled_distance(trainer: StudioTrainer) -> float:
    return trainer.ditto.distance(trainer.generator)


# ----------------------------------------------------------------------------------------------- wire
def test_ditto_sends_d_as_fedgai_plus_the_whole_generator_without_norm_and_adain():
    cfg = profile("test").with_overrides(HE)
    gan = build_gan(cfg)
    nets = {"generator": gan.generator, "discriminator": gan.discriminator}
    keys = shared_keys(nets, "fedgai_ditto")
    assert [k for k in keys if k.startswith("discriminator.")] == shared_keys(nets, "fedgai")
    g_keys = {split_key(k)[1] for k in keys if k.startswith("generator.")}
    g = nets["generator"]
    assert not g_keys & (norm_keys(g) | private_stats_keys(g))
    assert {"head.1.weight", "blocks.2.up.1.weight_orig", "start.1.weight_orig"} <= g_keys  # fine and coarse stages
    assert sorted(initial_global(cfg)) == keys  # the server expects exactly what the studios send


def test_only_the_shared_generators_update_leaves_never_the_personal_one(studio_dir, tmp_path):
    studio = _trainer(studio_dir, tmp_path)
    received = FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(studio.cfg).items()},
                       current_round=0)
    result = local_round(studio, received)
    shared, personal = studio.ditto.generator.state_dict(), studio.generator.state_dict()
    g_sent = {split_key(k)[1]: v for k, v in result.params.items() if k.startswith("generator.")}
    assert g_sent and not set(g_sent) & (norm_keys(studio.generator) | private_stats_keys(studio.generator))
    moved = 0
    for name, diff in g_sent.items():
        before = torch.as_tensor(received.params[f"generator.{name}"])
        torch.testing.assert_close(before + diff, shared[name])  # the DIFF is the shared generator's
        moved += not torch.allclose(before + diff, personal[name])  # ... and not the personal one's
    assert moved > len(g_sent) // 2


def test_a_received_global_goes_into_the_shared_generator_and_becomes_the_anchor(studio_dir, tmp_path):
    studio = _trainer(studio_dir, tmp_path)
    personal = _state(studio.generator)
    studio.load_shared(_moved_global(studio, 0.25))
    for name, value in studio.generator.state_dict().items():
        torch.testing.assert_close(value, personal[name])  # the personal generator is untouched
    params = dict(studio.ditto.generator.named_parameters())
    assert studio.ditto.anchor and all(torch.equal(a, params[n]) for n, a in studio.ditto.anchor.items())
    # the pull covers exactly the shared generator entries that are parameters: no BatchNorm, no AdaIN_SD
    sent = {split_key(k)[1] for k in studio.shared_state() if k.startswith("generator.")}
    assert set(studio.ditto.anchor) == sent & set(params)


# ----------------------------------------------------------------------------------------------- proximal
def test_lambda_pulls_the_personal_generator_towards_the_received_shared_one(studio_dir, tmp_path):
    distances = {}
    for lam in (0.0, 100.0):
        studio = _trainer(studio_dir, tmp_path / str(lam), lam)
        studio.load_shared(_moved_global(studio, 0.01))
        start = _pulled_distance(studio)
        studio.step(*_batch(studio))
        distances[lam] = _pulled_distance(studio)
    assert distances[100.0] < start < distances[0.0]


def test_lambda_zero_is_the_plain_generator_update_on_the_same_batch(studio_dir, tmp_path):
    studio = _trainer(studio_dir, tmp_path, 0.0)
    studio.load_shared(_moved_global(studio, 0.5))  # an anchor far away: at lambda 0 it must not matter
    plain = copy.deepcopy(studio.generator)
    opt = make_optimizer(studio.cfg, plain.parameters(), studio.cfg.train.lr_g)
    photo, sketch, real = _batch(studio)
    d_state = _state(studio.discriminator)  # D's spectral-norm u advances on every training-mode forward
    studio.ditto.personal_step(PairBatch(photo, sketch, real), None)
    studio.discriminator.load_state_dict(d_state)
    # the same G update by hand, through the same D
    fake = plain(real.photo_taps)
    terms = studio.objective.generator_terms(fake, studio.encoder(fake), sketch, real.sketch_deep, real.sketch_grams,
                                             photo)
    opt.zero_grad(set_to_none=True)
    studio.objective.weighted(terms).backward()
    opt.step()
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(studio.generator.state_dict()[name], value)


# ----------------------------------------------------------------------------------------------- refusal
@pytest.mark.parametrize("privacy", [{}, {"privacy.dp": "client", "privacy.noise_multiplier": 0.0}])
def test_ditto_is_refused_without_he_or_noised_client_dp(privacy):
    with pytest.raises(ConfigError, match="fedgai_ditto.*privacy.he.*client"):
        profile("test").with_overrides({"fed.mode": "fedgai_ditto", **privacy})


def test_ditto_is_refused_under_record_level_dp_even_with_he():
    with pytest.raises(ConfigError, match="fedgai_ditto.*record-level DP"):
        profile("test").with_overrides({**HE, "privacy.dp": "record"})


@pytest.mark.parametrize("lam", [-0.1, float("inf"), float("nan")])
def test_ditto_lambda_must_be_a_finite_non_negative_number(lam):
    with pytest.raises(ConfigError, match="fed.ditto_lambda"):
        profile("test").with_overrides({**HE, "fed.ditto_lambda": lam})


def test_ditto_runs_with_client_dp():
    cfg = profile("test").with_overrides({"fed.mode": "fedgai_ditto", "privacy.dp": "client",
                                          "privacy.noise_multiplier": 1.0})
    assert cfg.fed.mode == "fedgai_ditto"


# ----------------------------------------------------------------------------------------------- what the studio uses
def test_the_personal_generator_is_saved_evaluated_and_sketches(studio_dir, tmp_path):
    studio = _trainer(studio_dir, tmp_path / "run", 0.0)
    studio.step(*_batch(studio))
    personal, shared = _state(studio.generator), _state(studio.ditto.generator)
    assert any(not torch.equal(personal[k], shared[k]) for k in personal)
    path = studio.save_checkpoint()
    model = load_studio_model(path)  # what `fedgai sketch`, `export` and `evaluate` load
    for name, value in model.generator.state_dict().items():
        torch.testing.assert_close(value, personal[name])
    # the val score follows the personal generator, not the shared one
    before = studio.quality()
    studio.ditto.generator.load_state_dict({k: torch.zeros_like(v) for k, v in shared.items()})
    assert studio.quality() == before
    # a resumed run gets both generators back
    again = _trainer(studio_dir, tmp_path / "run", 0.0)
    again.load_checkpoint(path)
    for net, saved in ((again.generator, personal), (again.ditto.generator, shared)):
        for name, value in net.state_dict().items():
            torch.testing.assert_close(value, saved[name])
