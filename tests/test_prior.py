"""The public prior: built here from public data only, cached per architecture, and every mode can start from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedgai.prior as prior
from fedgai.config import profile
from fedgai.data.sketchify import sketchify_image
from fedgai.trainer import StudioTrainer


@pytest.fixture
def small_prior(tmp_path, monkeypatch):
    """A tiny recipe (8 public pairs, 1 epoch) cached in a fresh folder."""
    monkeypatch.setattr(prior, "PRIOR_PAIRS", 8)
    monkeypatch.setattr(prior, "PRIOR_EPOCHS", 1)
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_public_pairs_are_edge_sketches_of_public_garments():
    photo, sketch = prior.public_pair(3, 64)
    again = prior.public_pair(3, 64)
    assert np.array_equal(np.asarray(photo), np.asarray(again[0]))  # seeded: the same prior every build
    style = prior.PRIOR_STYLES[3 % len(prior.PRIOR_STYLES)]
    assert np.array_equal(np.asarray(sketch), sketchify_image(np.asarray(photo), style))  # edges of the photo
    assert not np.array_equal(np.asarray(photo), np.asarray(prior.public_pair(4, 64)[0]))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if not k.startswith("adain.")}


def test_auto_prior_is_built_once_cached_and_loaded(small_prior, studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"train.prior": "auto"})
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
    cfg = profile("test").with_overrides({"train.prior": "auto", "privacy.dp": "record",
                                          "privacy.record_trainable": "style_head"})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    state = torch.load(trainer.prior, weights_only=True)
    trainer.train_epochs(1)
    for name, param in trainer.generator.named_parameters():
        assert torch.equal(param.detach(), state["generator"][name]) != param.requires_grad, name


def test_a_prior_of_another_architecture_is_refused(small_prior, studio_dir, tmp_path):
    path = prior.build_prior(profile("test"), tmp_path / "narrow.pt")
    wide = profile("test").with_overrides({"train.prior": str(path), "model.decoder_width": 64})
    with pytest.raises(prior.PriorError, match="another architecture"):
        StudioTrainer(wide, studio_dir, tmp_path / "run")
