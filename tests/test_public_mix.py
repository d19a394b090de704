"""train.public_mix (features/public_mix.py): public line-style pairs join every step's batch, each drawn in its
own statistics; made once per machine at the studio, never another studio's data, the studio's schedule unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgai import prior
from fedgai.config import profile
from fedgai.data import public_styles
from fedgai.features import public_mix
from fedgai.features.adain_sampling import AdainSampling
from fedgai.trainer import StudioTrainer

STYLED = {"model.generator": "styled", "model.image_size": 64, "fed.mode": "local", "train.max_pairs": 6,
          "train.batch_size": 4}


@pytest.fixture
def small_public_set(tmp_path, monkeypatch) -> list[int]:
    """A 3 x 2 public set in a fresh prior cache; the list counts how often it was rendered."""
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(prior, "STYLED_PRIOR_STYLES", 3)
    monkeypatch.setattr(prior, "STYLED_PRIOR_PER_STYLE", 2)
    rendered: list[int] = []
    real = public_styles.write_line_style_studio

    def counting(*args):
        rendered.append(1)
        return real(*args)

    monkeypatch.setattr(public_mix, "write_line_style_studio", counting)
    return rendered


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Path:
    from fedgai.data import make_demo

    return make_demo(tmp_path_factory.mktemp("public-mix") / "studios", studios=1, seed=0, size=64, progress=False,
                     small=())[0]


def test_the_public_set_is_rendered_once_per_machine_in_the_prior_cache(small_public_set):
    first = public_mix.public_line_styles(64)
    assert first.parent == prior.cache_dir() and len(list((first / "sketches").iterdir())) == 6
    assert public_mix.public_line_styles(64) == first and len(small_public_set) == 1
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no half-written set left behind


def test_every_step_judges_the_studios_pairs_in_its_statistics_and_the_public_pairs_in_their_own(
        small_public_set, studio, tmp_path, monkeypatch):
    trainer = StudioTrainer(profile("test").with_overrides({**STYLED, "train.public_mix": 3}), studio, tmp_path / "r")
    seen = []
    real = trainer.objective.discriminator_loss
    monkeypatch.setattr(trainer.objective, "discriminator_loss", lambda inputs: seen.append(inputs) or real(inputs))
    trainer.train_steps(1)
    inputs = seen[0]
    assert len(inputs.batch.sketch) == 4 + 3
    own_mean = trainer.generator.adain.stats()[0][0]
    means = inputs.stats[0][0]
    assert torch.allclose(means[:4], own_mean.expand_as(means[:4]))
    assert not any(torch.allclose(means[i], own_mean[0]) for i in range(4, 7)), "public pairs keep their own code"
    public_sketches = {tuple(trainer.public_mix.pairs[i][1].flatten()[:64].tolist()) for i in range(6)}
    drawn = [tuple(s.flatten()[:64].tolist()) for s in inputs.batch.sketch[4:]]
    flipped = [tuple(s.flip(-1).flatten()[:64].tolist()) for s in inputs.batch.sketch[4:]]
    assert all(a in public_sketches or b in public_sketches for a, b in zip(drawn, flipped, strict=True))
    trainer.close()


def test_the_mix_leaves_the_studios_own_schedule_and_stream_unchanged(small_public_set, studio, tmp_path):
    plain = StudioTrainer(profile("test").with_overrides(STYLED), studio, tmp_path / "a")
    mixed = StudioTrainer(profile("test").with_overrides({**STYLED, "train.public_mix": 2}), studio, tmp_path / "b")
    for a, b in zip(plain.batches(), mixed.batches(), strict=True):
        assert torch.equal(a[0], b[0])
    plain.close()
    mixed.close()


def test_adain_sampling_draws_no_random_number_for_always_own_pairs_at_p_zero():
    class Adain:
        mean0, std0 = torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)

        @staticmethod
        def sample_stats(taps):
            return [(t.mean((2, 3), keepdim=True), t.std((2, 3), keepdim=True)) for t in taps]

    generator = type("G", (), {"adain": Adain()})()
    sampling = AdainSampling(0.0, lambda sketch: [sketch.repeat(1, 2, 1, 1)], torch.device("cpu"))
    sketch = torch.randn(5, 1, 4, 4)
    state = torch.get_rng_state()
    stats = sampling.stats(generator, sketch, always_own=2)
    assert torch.equal(torch.get_rng_state(), state)
    mean = stats[0][0].flatten(1)
    assert torch.equal(mean[:3], torch.zeros(3, 2))
    assert torch.allclose(mean[3:], sketch[3:].mean((1, 2, 3))[:, None].expand(2, 2))
    assert sampling.stats(generator, sketch) is None
