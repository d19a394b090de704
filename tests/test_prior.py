"""The public prior: built from public data only by the commands that start studios (never by a trainer or a server
on the side), cached per architecture, and every mode can start from it."""

from __future__ import annotations

import shlex

import numpy as np
import pytest
import torch
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel

import fedgai.prior as prior
from fedgai import prior_build
from fedgai.cli import build_parser, load_config, main
from fedgai.config import profile
from fedgai.data.sketchify import sketchify_image
from fedgai.federated.round import initial_global
from fedgai.federated.server.controller import FilteredFedAvg
from fedgai.federated.studio.client import local_round
from fedgai.trainer import StudioTrainer


@pytest.fixture
def small_prior(tmp_path, monkeypatch):
    """A tiny recipe (8 public pairs, 1 epoch) cached in a fresh folder."""
    monkeypatch.setattr(prior, "PRIOR_PAIRS", 8)
    monkeypatch.setattr(prior, "PRIOR_EPOCHS", 1)
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_public_pairs_are_edge_sketches_of_public_garments():
    photo, sketch = prior_build.public_pair(3, 64)
    again = prior_build.public_pair(3, 64)
    assert np.array_equal(np.asarray(photo), np.asarray(again[0]))  # seeded: the same prior every build
    style = prior.PRIOR_STYLES[3 % len(prior.PRIOR_STYLES)]
    assert np.array_equal(np.asarray(sketch), sketchify_image(np.asarray(photo), style))  # edges of the photo
    assert not np.array_equal(np.asarray(photo), np.asarray(prior_build.public_pair(4, 64)[0]))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.startswith("adain.")}


def built(cfg):
    """``cfg``, after building the prior it starts from, as `fedgai prior build` / `fedgai simulate` do first."""
    assert prior_build.build_missing_prior(cfg) is not None
    return cfg


def test_auto_prior_is_built_once_cached_and_loaded(small_prior, studio_dir, tmp_path):
    cfg = built(profile("test").with_overrides({"train.prior": "auto"}))
    assert prior_build.build_missing_prior(cfg) is None  # cached: nothing to build
    first = StudioTrainer(cfg, studio_dir, tmp_path / "a")
    cached = sorted(small_prior.glob("prior-*.pt"))
    assert len(cached) == 1 and first.metadata["prior"] == str(cached[0])
    state = torch.load(cached[0], weights_only=True)
    assert all(torch.equal(v, state["generator"][k]) for k, v in _params(first.generator).items())
    assert all(torch.equal(v, state["discriminator"][k]) for k, v in first.discriminator.state_dict().items())
    plain = StudioTrainer(profile("test"), studio_dir, tmp_path / "b")
    assert torch.equal(first.generator.adain.mean0, plain.generator.adain.mean0)  # the studio's own statistics
    mtime = cached[0].stat().st_mtime_ns
    StudioTrainer(cfg, studio_dir, tmp_path / "c")
    assert cached[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_record_dp_fine_tunes_from_the_prior_with_the_rest_frozen_at_it(small_prior, studio_dir, tmp_path):
    cfg = built(profile("test").with_overrides({"train.prior": "auto", "privacy.dp": "record",
                                                "privacy.record_trainable": "style_head"}))
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    state = torch.load(trainer.prior, weights_only=True)
    trainer.train_epochs(1)
    for name, param in trainer.generator.named_parameters():
        assert torch.equal(param.detach(), state["generator"][name]) != param.requires_grad, name


def test_a_prior_of_another_architecture_is_refused(small_prior, studio_dir, tmp_path):
    path = prior_build.build_prior(profile("test"), tmp_path / "narrow.pt")
    wide = profile("test").with_overrides({"train.prior": str(path), "model.decoder_width": 64})
    with pytest.raises(prior.PriorError, match="another architecture"):
        StudioTrainer(wide, studio_dir, tmp_path / "run")


class InProcessServer(FilteredFedAvg):
    """The real server controller, with NVFlare's messaging replaced by real studio trainers' local rounds."""

    def __init__(self, cfg, run_dir, trainers):
        super().__init__(config=cfg.to_dict(), checkpoint_dir="")
        self.abort_signal = Signal()
        self.run_dir, self.trainers = run_dir, trainers
        self.sent: list[FLModel] = []
        self.starts: list[dict[str, torch.Tensor]] = []  # each studio's shared D right after its receive
        self.panics: list[str] = []

    def sample_clients(self, num_clients=None):
        return list(self.trainers)

    def broadcast_model(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0,
                        wait_time_after_min_received=0, **kwargs):
        self.sent.append(data)
        # NVFlare's params converters: numpy on the server's side, torch on the studios'.
        received = FLModel(params={k: torch.from_numpy(v) for k, v in data.params.items()},
                           current_round=data.current_round, meta=data.meta)
        replies = []
        for site, trainer in self.trainers.items():
            reply = local_round(trainer, received, trainer.run_dir / "ledger.json")
            # What the studio trained from: its D after training minus the DIFF it sent.
            after = trainer.shared_state()
            self.starts.append({k: after[k] - reply.params[k] for k in reply.params})
            reply.params = {k: v.numpy() for k, v in reply.params.items()}
            reply.meta["client_name"] = site
            replies.append(reply)
        return replies

    def get_run_dir(self):
        return str(self.run_dir)

    def panic(self, reason):
        self.panics.append(reason)


def test_a_federation_starts_from_the_priors_d_not_the_servers_random_one(small_prior, demo_root, tmp_path):
    cfg = built(profile("test").with_overrides({"train.prior": "auto", "fed.rounds": 1}))
    trainers = {s.name: StudioTrainer(cfg, s, tmp_path / s.name) for s in sorted(demo_root.iterdir()) if s.is_dir()}
    state = torch.load(next(iter(trainers.values())).prior, weights_only=True)["discriminator"]
    server = InProcessServer(cfg, tmp_path / "server", trainers)
    server.run()
    assert not server.panics
    first = server.sent[0].params
    assert sorted(first) and all(k.startswith("discriminator.") for k in first)
    for key, value in first.items():
        assert torch.equal(torch.as_tensor(value), state[key.removeprefix("discriminator.")]), key
    random_init = initial_global(profile("test"))
    assert any(not np.array_equal(random_init[k], np.asarray(v)) for k, v in first.items())
    for start in server.starts:  # every studio's round-1 training started from the prior's D
        for key, value in start.items():
            torch.testing.assert_close(value, state[key.removeprefix("discriminator.")], rtol=0, atol=1e-5)


def test_a_server_whose_prior_is_missing_stops_with_the_reason(tmp_path):
    missing = tmp_path / "nowhere" / "prior.pt"
    server = InProcessServer(profile("test").with_overrides({"train.prior": str(missing)}), tmp_path, {})
    server.run()
    assert len(server.panics) == 1 and f"train.prior {missing} is not a file" in server.panics[0]
    assert server.sent == []


def test_a_mode_that_shares_g_starts_g_from_the_prior_too(small_prior):
    cfg = built(profile("test").with_overrides({"train.prior": "auto", "fed.mode": "fedavg_full", "privacy.he": True}))
    start = initial_global(cfg)
    state = torch.load(prior.prior_path(cfg, "random"), weights_only=True)
    shared_g = [k for k in start if k.startswith("generator.")]
    assert shared_g
    for key in shared_g:
        assert np.array_equal(start[key], state["generator"][key.removeprefix("generator.")].numpy()), key


def _no_training(monkeypatch):
    """Any GAN training from here on fails the test."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a prior was trained as a side effect")
    monkeypatch.setattr(StudioTrainer, "train_epochs", refuse)


def _command_builds_the_missing_prior(message: str, cfg) -> None:
    """The command in ``message`` (between backticks) builds exactly the prior ``cfg`` needs (same key)."""
    command = message.split("`")[1]
    assert command.startswith("fedgai prior build --profile ")
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert prior.prior_key(load_config(args), "random") == prior.prior_key(cfg, "random")


@pytest.mark.parametrize("overrides", [{}, {"privacy.dp": "record", "model.decoder_width": 48}])
def test_a_trainer_without_its_auto_prior_stops_with_the_command_that_builds_it(
        overrides, small_prior, studio_dir, tmp_path, monkeypatch):
    _no_training(monkeypatch)
    cfg = profile("test").with_overrides({"train.prior": "auto", **overrides})
    with pytest.raises(prior.PriorError, match="build it first with `fedgai prior build") as err:
        StudioTrainer(cfg, studio_dir, tmp_path / "run")
    _command_builds_the_missing_prior(str(err.value), cfg)
    assert not small_prior.exists() or not any(small_prior.iterdir())  # nothing built, nothing cached


def test_the_servers_initial_global_without_its_auto_prior_stops_with_the_command(small_prior, tmp_path,
                                                                                   monkeypatch):
    _no_training(monkeypatch)
    cfg = profile("test").with_overrides({"train.prior": "auto"})
    with pytest.raises(prior.PriorError, match="`make prior`") as err:
        initial_global(cfg)
    _command_builds_the_missing_prior(str(err.value), cfg)
    server = InProcessServer(cfg, tmp_path, {})
    server.run()
    assert len(server.panics) == 1 and "build it first with `fedgai prior build" in server.panics[0]
    assert server.sent == [] and not small_prior.exists()


def test_train_local_without_its_prior_says_how_to_build_it_before_writing_anything(small_prior, studio_dir,
                                                                                    tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train-local", "--studio", str(studio_dir), "--epochs", "1", "--out", str(run),
                 "--profile", "test", "--set", "train.prior=auto"])
    assert code == 2 and "build it first with `fedgai prior build --profile test`" in capsys.readouterr().err
    assert not run.exists()


def test_the_build_command_for_a_quick_record_level_run_is_make_priors(small_prior):
    cfg = profile("quick").with_overrides({"train.prior": "auto", "train.unpaired_batch": 0, "privacy.dp": "record"})
    assert prior.build_command(cfg) == ("fedgai prior build --profile quick --set privacy.dp=record "
                                        "--set train.unpaired_batch=0")
