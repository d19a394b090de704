"""fed.mode fedgai_struct (issue 15 §4): what crosses the wire, the refusals, and the studio's style guard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from fedgai.config import ConfigError, FedgaiConfig, profile
from fedgai.federated import round as round_mod
from fedgai.federated.jobs.job import build_job
from fedgai.federated.round import initial_global
from fedgai.federated.studio.client import local_round, releasable
from fedgai.models import build_gan
from fedgai.modes import STRUCTURE_STAGES
from fedgai.privacy.client_level import StudioClientDP
from fedgai.privacy.mechanism import clip_and_noise
from fedgai.sharing import norm_keys, private_stats_keys, shared_keys, split_key
from fedgai.trainer import StudioTrainer
from fedgai.wire import DP_RELEASABLE_META, TOOK_SHARED_STAGES_KEY, release_meta

HE = {"fed.mode": "fedgai_struct", "privacy.he": True}
CLIENT_DP = {"fed.mode": "fedgai_struct", "privacy.dp": "client", "privacy.noise_multiplier": 1.0}
MARK = "generator.start.1.weight_orig"  # a coarse-stage entry the fake style score reads


def _networks(cfg: FedgaiConfig) -> dict[str, torch.nn.Module]:
    gan = build_gan(cfg)
    return {"generator": gan.generator, "discriminator": gan.discriminator}


# ----------------------------------------------------------------------------------------------- wire
def test_struct_mode_sends_d_as_fedgai_plus_the_coarse_generator_stages_only():
    cfg = profile("test").with_overrides(HE)
    nets = _networks(cfg)
    keys = shared_keys(nets, "fedgai_struct")
    assert [k for k in keys if k.startswith("discriminator.")] == shared_keys(nets, "fedgai")
    g_keys = {split_key(k)[1] for k in keys if k.startswith("generator.")}
    assert all(k.startswith(STRUCTURE_STAGES) for k in g_keys)
    assert {"start.1.weight_orig", "blocks.0.down.1.weight_orig", "blocks.0.up.1.weight_orig", "blocks.0.skip.weight",
            "blocks.0.fuse.0.weight_orig", "blocks.0.w"} <= g_keys
    g = nets["generator"]
    assert not g_keys & (norm_keys(g) | private_stats_keys(g))  # BatchNorm and AdaIN_SD stay local
    assert not any(k.startswith(("blocks.1.", "blocks.2.", "upsample.", "head.", "adain.")) for k in g_keys)
    assert not any(k.endswith(("_u", "_v", "running_mean", "running_var")) for k in g_keys)
    # the server expects exactly what the studios send
    assert sorted(initial_global(cfg)) == keys


# ----------------------------------------------------------------------------------------------- refusal
@pytest.mark.parametrize("privacy", [{}, {"privacy.dp": "record"},
                                     {"privacy.dp": "client", "privacy.noise_multiplier": 0.0}])
def test_struct_mode_is_refused_without_he_or_noised_client_dp(privacy):
    with pytest.raises(ConfigError, match="fedgai_struct.*privacy.he.*client"):
        profile("test").with_overrides({"fed.mode": "fedgai_struct", **privacy})


@pytest.mark.parametrize("privacy", [HE, CLIENT_DP])
def test_struct_mode_runs_with_he_or_client_dp(privacy):
    assert profile("test").with_overrides(privacy).fed.mode == "fedgai_struct"


def test_the_plain_job_refuses_struct_mode_even_from_a_config_changed_after_validation():
    cfg = profile("test").with_overrides(CLIENT_DP)
    plain = dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, dp="none"))
    with pytest.raises(ValueError, match="server must never see one studio's update"):
        build_job(plain)


# ----------------------------------------------------------------------------------------------- guard
@pytest.fixture(scope="module")
def studio(studio_dir, tmp_path_factory) -> StudioTrainer:
    return StudioTrainer(profile("test").with_overrides(HE), studio_dir, tmp_path_factory.mktemp("struct"))


def _received(studio: StudioTrainer, value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in studio.shared_state().items()}


def _fake_style(studio: StudioTrainer, monkeypatch, shared_is_worse: bool) -> None:
    """A val Gram distance that is 1 with the received (constant 0.5) stages and 0 with the studio's own, or
    the other way round."""
    def quality() -> dict[str, float]:
        received = bool(torch.all(studio.shared_state()[MARK] == 0.5))
        return {"val_l1": 0.0, "val_gram": float(received == shared_is_worse)}

    monkeypatch.setattr(studio, "quality", quality)


def test_guard_keeps_its_own_stages_when_the_shared_ones_worsen_its_style(studio, monkeypatch):
    own = studio.shared_state()
    _fake_style(studio, monkeypatch, shared_is_worse=True)
    loaded = round_mod.receive_global(studio, _received(studio, 0.5))
    after = studio.shared_state()
    assert loaded.took_shared_stages is False
    for key, value in after.items():
        expected = own[key] if key.startswith("generator.") else torch.full_like(value, 0.5)  # D always taken
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(loaded.baseline[key], expected)  # the DIFF is taken from what was kept


def test_guard_takes_the_shared_stages_when_they_improve_its_style(studio, monkeypatch):
    _fake_style(studio, monkeypatch, shared_is_worse=False)
    loaded = round_mod.receive_global(studio, _received(studio, 0.5))
    assert loaded.took_shared_stages is True
    assert all(torch.all(v == 0.5) for v in studio.shared_state().values())


def test_guard_scores_the_studios_own_val_gram_distance(studio):
    assert round_mod.val_style_score(studio) == studio.quality()["val_gram"]


def test_under_client_dp_the_guards_bit_is_not_sent(studio_dir, tmp_path):
    """Issue 24: the bit is a function of the studio's val pairs outside epsilon, so under DP it stays home."""
    studio = StudioTrainer(profile("test").with_overrides(CLIENT_DP), studio_dir, tmp_path / "studio")
    received = FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(studio.cfg).items()},
                       current_round=0)
    result = local_round(studio, received, tmp_path / "ledger.json")
    assert isinstance(result.meta[TOOK_SHARED_STAGES_KEY], bool)  # the studio's own record keeps it
    sent = releasable(result, studio.cfg, StudioClientDP(studio.cfg.privacy, tmp_path / "ledger.json"))
    assert sent.metrics is None and set(sent.meta) <= DP_RELEASABLE_META
    assert TOOK_SHARED_STAGES_KEY not in sent.meta
    assert TOOK_SHARED_STAGES_KEY not in release_meta({**result.meta}, dp=True)[0]  # nor past the last gate


def test_modes_without_the_guard_send_no_bit(studio_dir, tmp_path):
    studio = StudioTrainer(profile("test"), studio_dir, tmp_path)
    received = FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(studio.cfg).items()},
                       current_round=0)
    assert TOOK_SHARED_STAGES_KEY not in local_round(studio, received).meta


def test_client_dp_keeps_a_0d_shared_entry_an_array():
    """The MRFM scalar blocks.0.w is a 0-d entry; the server's screening refuses a numpy scalar."""
    noised, _ = clip_and_noise({"generator.blocks.0.w": np.zeros((), np.float32)}, 1.0, 1.0)
    assert isinstance(noised["generator.blocks.0.w"], np.ndarray) and noised["generator.blocks.0.w"].shape == ()
