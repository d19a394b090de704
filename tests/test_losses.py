import os

import pytest
import torch

from fedgai.config import LossConfig
from fedgai.losses import (
    ClipLoss,
    feature_matching_loss,
    feddecorr_loss,
    gram_loss,
    hinge_d_loss,
    hinge_g_loss,
    load_clip,
)


def test_gram_loss_zero_on_identical_and_positive_otherwise():
    a = [torch.rand(2, 3, 3), torch.rand(2, 5, 5)]
    assert gram_loss(a, [t.clone() for t in a]).item() == 0
    assert gram_loss(a, [t + 0.1 for t in a]).item() > 0


def test_hinge_losses():
    assert hinge_d_loss(torch.tensor([2.0]), torch.tensor([-2.0])).item() == 0
    assert hinge_d_loss(torch.tensor([0.0]), torch.tensor([0.5])).item() == pytest.approx(2.5)
    assert hinge_g_loss(torch.tensor([1.0, 3.0])).item() == -2


def test_feddecorr_matches_hand_computation():
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0], [5.0, 6.0]])
    # by hand: standardise columns (unbiased var), corr = z^T z, mean squared off-diagonal / N
    mean = x.mean(0)
    var = ((x - mean) ** 2).sum(0) / 2
    z = (x - mean) / torch.sqrt(var + 1e-8)
    c01 = (z[:, 0] * z[:, 1]).sum()
    expected = (2 * c01**2 / 2) / 3
    assert feddecorr_loss(x).item() == pytest.approx(expected.item(), rel=1e-5)
    assert feddecorr_loss(x[:1]).item() == 0


def test_feddecorr_penalises_collapsed_dimensions():
    torch.manual_seed(0)
    base = torch.randn(64, 1)
    collapsed = base.repeat(1, 8) + 0.01 * torch.randn(64, 8)
    assert feddecorr_loss(collapsed) > 10 * feddecorr_loss(torch.randn(64, 8))


def test_clip_offline_is_disabled_loudly(caplog):
    loss, status = load_clip(LossConfig(clip_pretrained="/nonexistent/clip.bin"))
    assert loss is None and not status.enabled and "does not exist" in status.reason
    assert "CLIP term DISABLED" in caplog.text
    loss, status = load_clip(LossConfig(clip=0))
    assert loss is None and "disabled in config" in status.reason


def test_clip_loss_is_one_minus_cosine():
    visual = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    loss = ClipLoss(visual, size=8)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0, abs=1e-6)
    assert loss(x, -x).item() > 0


def test_feature_matching_is_zero_on_the_real_pair_and_trains_only_the_generated_side():
    real = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert feature_matching_loss(real, real.clone()).item() == 0
    fake = torch.randn(2, 4, 3, 3, requires_grad=True)
    feature_matching_loss(real, fake).backward()
    assert real.grad is None and fake.grad.abs().sum() > 0


def test_an_unreachable_hub_turns_clip_off_in_one_line_without_a_download(tmp_path, monkeypatch, capsys,
                                                                          fresh_clip_checks):
    import huggingface_hub
    import open_clip

    from fedgai import losses

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(losses, "_connects", lambda *a: False)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("the hub was asked"))
    studio_env = losses.clip_preflight(LossConfig())
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "cannot be reached" in printed[0]
    assert "not in the local cache" in studio_env[losses.CLIP_UNAVAILABLE_ENV]
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # the studio processes started next inherit it
    model, status = load_clip(LossConfig())
    assert model is None and not status.enabled and "not in the local cache" in status.reason


def test_studios_told_clip_is_unavailable_do_not_even_import_open_clip(monkeypatch):
    """`fedgai simulate` decides once (clip_preflight); its studio processes then skip open_clip (~140 MB each)."""
    from fedgai import losses

    monkeypatch.setenv(losses.CLIP_UNAVAILABLE_ENV, "weights not in the local cache (offline)")
    monkeypatch.setattr(losses, "_clip_visual", lambda *a: pytest.fail("open_clip was asked"))
    model, status = load_clip(LossConfig())
    assert model is None and not status.enabled and status.reason == "weights not in the local cache (offline)"
