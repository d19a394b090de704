import pytest
import torch
from torch import nn

from fedgai.config import ModelConfig
from fedgai.models import (
    VGG16_FILE,
    AdaINSD,
    EfficientNetLite0Encoder,
    EncoderUnavailable,
    VGG16Encoder,
    build_discriminator,
    build_encoder,
    build_gan,
    gram_matrix,
)
from fedgai.sharing import shared_keys


def _fake_vgg_weights(tmp_path):
    from torchvision.models import vgg16

    path = tmp_path / VGG16_FILE
    torch.save(vgg16().state_dict(), path)
    return path


def test_vgg16_taps_are_the_activations_before_each_maxpool(tmp_path):
    enc = VGG16Encoder(_fake_vgg_weights(tmp_path))
    taps = enc(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape) for t in taps] == [(1, 64, 64, 64), (1, 128, 32, 32), (1, 256, 16, 16), (1, 512, 8, 8)]
    assert all(isinstance(enc.features[i], nn.ReLU) for i in (3, 8, 15, 22))
    assert all(isinstance(enc.features[i + 1], nn.MaxPool2d) for i in (3, 8, 15))
    assert not any(p.requires_grad for p in enc.parameters())


def test_vgg16_missing_weights_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(EncoderUnavailable, match="VGG-16 ImageNet weights not found"):
        build_encoder(ModelConfig(encoder="vgg16"))
    with pytest.raises(EncoderUnavailable, match="not a file"):
        build_encoder(ModelConfig(encoder="vgg16", vgg_weights=str(tmp_path / "nope.pth")))
    enc = build_encoder(ModelConfig(encoder="auto"))
    assert enc.name == "efficientnet-lite0" and enc.pretrained
    assert "using the offline ImageNet EfficientNet-Lite0" in caplog.text


def test_auto_uses_vgg16_when_cached(tmp_path, monkeypatch):
    (tmp_path / "checkpoints").mkdir()
    _fake_vgg_weights(tmp_path / "checkpoints")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert build_encoder(ModelConfig(encoder="auto")).name == "vgg16"


def test_efficientnet_encoder_is_pretrained_and_multiscale():
    enc = EfficientNetLite0Encoder()
    taps = enc(torch.zeros(1, 3, 64, 64))
    assert [t.shape[1] for t in taps] == list(enc.channels) == [16, 24, 40, 112]
    assert [64 // t.shape[-1] for t in taps] == list(enc.strides)
    # ImageNet weights, not a fresh init: BN running stats were learned.
    assert not torch.allclose(enc.stem[1].running_var, torch.ones_like(enc.stem[1].running_var))


def test_adain_sd_output_matches_sketch_set_statistics():
    torch.manual_seed(0)
    adain = AdaINSD((4,))
    sketch_feats = [[torch.randn(5, 4, 6, 6) * 3 + 2], [torch.randn(3, 4, 6, 6) * 3 + 2]]
    adain.fit(sketch_feats)
    allf = torch.cat([b[0] for b in sketch_feats])
    torch.testing.assert_close(adain.mean0.flatten(), allf.mean(dim=(0, 2, 3)), atol=1e-5, rtol=0)
    out = adain([torch.randn(2, 4, 8, 8) * 0.1 - 5])[0]
    torch.testing.assert_close(out.mean(dim=(2, 3)), adain.mean0.flatten().expand(2, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(2, 3), unbiased=False), adain.std0.flatten().expand(2, 4),
                               atol=1e-3, rtol=1e-3)
    assert "mean0" in adain.state_dict() and bool(adain.fitted)


@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_discriminator_shapes(test_cfg, size):
    cfg = test_cfg.with_overrides({"model.image_size": size})
    gan = build_gan(cfg)
    fake = gan.generator(gan.encoder(torch.rand(2, 3, size, size) * 2 - 1))
    assert fake.shape == (2, 1, size, size) and fake.abs().max() <= 1
    logits, feats = gan.discriminator([gram_matrix(t) for t in gan.encoder(fake)])
    assert logits.shape == (2,) and feats.shape == (2, cfg.model.disc_width // 2)


def test_discriminator_has_batchnorm_and_no_generator_weights(test_cfg):
    d = build_discriminator(test_cfg)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 2
    # BN sits inside nn.Sequential: its keys carry no "bn", which is why exclusion goes by module type.
    assert not any("bn" in k for k in d.state_dict())


def test_structure_critic_scores_photo_sketch_pairs_and_its_batchnorm_stays_local(test_cfg):
    d = build_discriminator(test_cfg.with_overrides({"model.structure_critic": 8}))
    photo, sketch = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    h = d.patch.features(photo, sketch)
    assert h.shape == (2, 32, 16, 16) and d.patch.score(h).shape == (2,)
    shared = set(shared_keys({"discriminator": d}, "fedgai"))
    assert "discriminator.patch.head.weight_orig" in shared
    patch_bn = [k for k in d.state_dict() if k.startswith("patch.body.3") or k.startswith("patch.body.6")]
    assert patch_bn and not shared & {f"discriminator.{k}" for k in patch_bn}
    assert build_discriminator(test_cfg).patch is None  # off by default: the paper's D, same keys


def test_gram_matrix_is_normalised_channel_correlation():
    f = torch.arange(8.0).view(1, 2, 2, 2)
    flat = f.view(2, 4)
    torch.testing.assert_close(gram_matrix(f)[0], flat @ flat.T / 8)
