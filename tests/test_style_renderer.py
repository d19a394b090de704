"""The style-conditioned renderer (issue 27 §1): it must follow its style code, at every decoder stage."""

from __future__ import annotations

import pytest
import torch

from fedgai.losses import statistics_consistency
from fedgai.models import (
    AdaINSD,
    FiLM,
    ProjectionCritic,
    RandomEncoder,
    StyledSketchGenerator,
    StyledUnit,
    channel_statistics,
    style_vector,
)

SIZE = 32


@pytest.fixture(scope="module")
def encoder() -> RandomEncoder:
    return RandomEncoder()


def styles(encoder: RandomEncoder, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Photos and two synthetic line styles of the same shapes: thin dark lines vs thick grey bands."""
    torch.manual_seed(0)
    photos = torch.rand(n, 3, SIZE, SIZE) * 2 - 1
    rows = torch.arange(SIZE).view(1, 1, SIZE, 1)
    offsets = torch.randint(0, 6, (n, 1, 1, 1))
    thin = torch.where((rows + offsets) % 8 == 0, -1.0, 1.0).expand(n, 1, SIZE, SIZE)
    thick = torch.where((rows + offsets) % 8 < 4, 0.0, 1.0).expand(n, 1, SIZE, SIZE)
    return photos, thin.contiguous(), thick.contiguous()


def set_stats(encoder: RandomEncoder, sketches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """AdaIN_SD's statistics of a sketch set (what a studio's generator holds)."""
    adain = AdaINSD(encoder.channels)
    with torch.no_grad():
        adain.fit([encoder(sketches)])
    return adain.stats()


def test_shapes_and_range(encoder):
    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=16)
    taps = encoder(torch.rand(3, 3, SIZE, SIZE) * 2 - 1)
    out = gen(taps)
    assert out.shape == (3, 1, SIZE, SIZE)
    assert out.abs().max() <= 1


def test_every_decoder_stage_is_modulated_by_the_code(encoder):
    """Each unit normalises without an affine and takes a FiLM from the code, so no norm can erase the style;
    after one step of the statistics loss every FiLM has received gradient from the style."""
    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=16)
    units = [m for m in gen.modules() if isinstance(m, StyledUnit)]
    assert len(units) == 1 + 3 * (len(encoder.channels) - 1) + len(gen.upsample)
    assert all(not unit.norm.affine for unit in units)
    photos, thin, _ = styles(encoder, 4)
    loss = statistics_consistency(encoder(gen(encoder(photos), set_stats(encoder, thin))), set_stats(encoder, thin))
    loss.backward()
    films = [m for m in gen.modules() if isinstance(m, FiLM)]
    assert len(films) == len(units)
    assert all(f.affine.weight.grad.abs().sum() > 0 for f in films)


def test_code_changes_the_drawing_where_taps_do_not(encoder):
    """With the encoder taps' AdaIN held fixed, another code alone changes the output: the decoder reads it."""
    torch.manual_seed(1)
    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=16)
    for film in (m for m in gen.modules() if isinstance(m, FiLM)):
        torch.nn.init.normal_(film.affine.weight, std=0.3)
    photos, thin, thick = styles(encoder, 2)
    taps = gen.adain(encoder(photos), set_stats(encoder, thin))
    codes = [gen.mapping(set_stats(encoder, s)).expand(2, -1) for s in (thin, thick)]

    def decode(code: torch.Tensor) -> torch.Tensor:
        x = gen.start(taps[-1], code)
        for block, fine in zip(gen.blocks, reversed(taps[:-1]), strict=True):
            x = block(fine, x, code)
        return x

    assert (decode(codes[0]) - decode(codes[1])).abs().mean() > 1e-3


def test_trained_renderer_draws_in_the_style_it_is_given(encoder):
    """Trained on two styles with the statistics loss and L1, the same photos drawn with each style's statistics
    come out in that style: closer to its own statistics than to the other's. Fails if G ignores its code."""
    torch.manual_seed(0)
    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=16)
    photos, thin, thick = styles(encoder, 4)
    stats = {"thin": set_stats(encoder, thin), "thick": set_stats(encoder, thick)}
    taps = encoder(photos)
    opt = torch.optim.Adam(gen.parameters(), 3e-3)
    for _ in range(30):
        loss = sum(torch.nn.functional.l1_loss(gen(taps, stats[name]), target)
                   + statistics_consistency(encoder(gen(taps, stats[name])), stats[name])
                   for name, target in (("thin", thin), ("thick", thick)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for own, other in (("thin", "thick"), ("thick", "thin")):
            drawn = encoder(gen(taps, stats[own]))
            assert statistics_consistency(drawn, stats[own]) < 0.5 * statistics_consistency(drawn, stats[other])


def test_statistics_consistency_is_zero_only_for_the_injected_statistics():
    torch.manual_seed(0)
    taps = [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 4, 4)]
    own = channel_statistics(taps)
    assert statistics_consistency(taps, own) < 1e-10
    shifted = [(m + 0.5, s) for m, s in own]
    expected = sum(0.25 / (m + 0.5).pow(2).mean() for m, _ in own)
    assert statistics_consistency(taps, shifted) == pytest.approx(float(expected), rel=1e-5)


def test_projection_critic_scores_depend_on_the_style_and_freezed_names_lower_layers(encoder):
    torch.manual_seed(0)
    critic = ProjectionCritic(8, 2 * sum(encoder.channels))
    photos, thin, thick = styles(encoder, 2)
    a = critic(photos, thin, style_vector(set_stats(encoder, thin)))
    b = critic(photos, thin, style_vector(set_stats(encoder, thick)))
    assert a.shape == (2,)
    assert not torch.allclose(a, b)
    frozen = critic.frozen_layers(2)
    assert {id(p) for p in frozen} == {id(p) for conv in critic.convs[:2] for p in conv.parameters()}
    assert critic.frozen_layers(0) == []
