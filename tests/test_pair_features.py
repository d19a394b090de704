"""The encoder-feature cache: a cached training step is the uncached step, and each view is encoded once."""

import pytest
import torch

from fedgai.trainer import StudioTrainer

SETTINGS = {"model.image_size": 64, "model.structure_critic": 8, "loss.feature_matching": 5.0}


@pytest.fixture
def make_trainer(test_cfg, studio_dir, tmp_path):
    def make(name: str, **overrides) -> StudioTrainer:
        return StudioTrainer(test_cfg.with_overrides(SETTINGS | overrides), studio_dir, tmp_path / name)
    return make


def test_cached_step_equals_the_uncached_step(make_trainer):
    cached, plain = make_trainer("cached"), make_trainer("plain")
    indices, flips = torch.tensor([0, 3, 5, 6]), torch.tensor([False, True, True, False])
    photo, sketch, real = cached.features.batch(indices, flips)
    for _ in range(2):  # the second step sees weights the first one moved
        with_cache, without = cached.step(photo, sketch, real), plain.step(photo, sketch)
        assert with_cache.keys() == without.keys() and {"structure", "feature_matching"} <= with_cache.keys()
        for name, value in without.items():
            assert with_cache[name] == pytest.approx(value, rel=1e-5, abs=1e-5), name
    for a, b in zip(cached.generator.parameters(), plain.generator.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_flipped_view_has_its_own_features(make_trainer):
    t = make_trainer("flip")
    index = torch.tensor([2])
    photo, sketch, real = t.features.batch(index, torch.tensor([True]))
    unflipped_photo, _ = t.dataset[2]
    torch.testing.assert_close(photo[0], unflipped_photo.flip(-1))
    expected = t.objective.real_features(photo, sketch)
    torch.testing.assert_close(real.photo_taps[0], expected.photo_taps[0], rtol=1e-5, atol=1e-6)
    _, _, other = t.features.batch(index, torch.tensor([False]))
    assert not torch.allclose(other.photo_taps[0], real.photo_taps[0])


def test_each_view_is_encoded_once_over_epochs(make_trainer):
    t = make_trainer("once")
    calls = []
    encode = t.features.encode
    t.features.encode = lambda photo, sketch: calls.append(len(photo)) or encode(photo, sketch)
    t.train_epochs(3)
    assert sum(calls) == len(t.features) <= 2 * t.num_samples
    seen = len(t.features)
    t.train_epochs(1)
    assert sum(calls) - seen == len(t.features) - seen  # only views never drawn before are encoded


def test_record_level_dp_steps_read_the_cache(make_trainer):
    t = make_trainer("dp", **{"privacy.dp": "record", "model.structure_critic": 0, "loss.feature_matching": 0.0})
    t.train_epochs(1)
    assert 0 < len(t.features) <= 2 * t.num_samples


def test_bf16_autocast_on_cpu_trains_and_caches_at_its_precision(make_trainer):
    from fedgai.device import amp_dtype

    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert amp_dtype("off", torch.device("cpu")) is None
    t = make_trainer("bf16", **{"train.amp": "bf16"})
    assert t.amp == torch.bfloat16 and t.metadata["amp"] == "bf16"
    photo, sketch, real = t.features.batch(torch.tensor([0, 1, 2, 3]), torch.tensor([False, True, False, True]))
    assert real.photo_taps[0].dtype == torch.bfloat16  # the cache holds what the autocast step would compute
    losses = t.step(photo, sketch, real)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert next(t.generator.parameters()).dtype == torch.float32  # weights and optimiser stay float32
