"""Known answers for the style-aware scores (FD-Style, the paired Gram distance) on the demo data generator,
which draws any garment in any studio's line style: so "own style" and "another studio's style" are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgai.config import EvalConfig
from fedgai.data.garments import KINDS, garment_tone, make_garment
from fedgai.data.sketch_styles import DEMO_STYLES, render_sketch
from fedgai.evaluation.metrics import MetricSuite, gram_distance, style_fd_reject, style_frechet_distance
from fedgai.evaluation.style import OTHER_LINES, REJECT, StyleClassifier, line_sketches, not_sketches
from fedgai.models import AdaINSD, EfficientNetLite0Encoder, StyledSketchGenerator

SIZE = 64
TRAIN = range(0, 24)  # garments whose drawings fit the classifier
TEST = range(100, 116)  # the "real test sketches"
HELD_OUT = range(200, 216)  # the same studio's other held-out sketches: other garments, same style


def drawings(style: str, garments: range, draw_seed: int) -> torch.Tensor:
    """Each garment drawn in `style`, [-1, 1] sketches N x 1 x SIZE x SIZE (the geometry depends only on the
    garment number, the hand's randomness on draw_seed)."""
    out = []
    for g in garments:
        garment = make_garment(KINDS[g % len(KINDS)], np.random.default_rng([g]))
        sketch = render_sketch(garment, garment_tone(garment, SIZE), style, np.random.default_rng([g, draw_seed]),
                               SIZE)
        out.append(torch.from_numpy(np.asarray(sketch, dtype=np.float32) / 127.5 - 1)[None])
    return torch.stack(out)


@pytest.fixture(scope="module")
def suite() -> MetricSuite:
    return MetricSuite(EvalConfig())  # the report's 224 px features


@pytest.fixture(scope="module")
def train_set(suite) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(sketches, their styles, their features): what the classifiers are fitted on."""
    sketches = torch.cat([drawings(style, TRAIN, 0) for style in DEMO_STYLES])
    return sketches, [style for style in DEMO_STYLES for _ in TRAIN], suite.features(sketches)


@pytest.fixture(scope="module")
def classifier(train_set) -> StyleClassifier:
    _, labels, features = train_set
    return StyleClassifier().fit(features, labels)


@pytest.fixture(scope="module")
def test_features(suite) -> dict[str, torch.Tensor]:
    return {style: suite.features(drawings(style, TEST, 1)) for style in DEMO_STYLES}


@pytest.mark.parametrize("own", DEMO_STYLES)
def test_fd_style_is_zero_for_identical_sets_and_ranks_the_own_style_first(own, suite, classifier, test_features):
    real = test_features[own]
    assert style_frechet_distance(classifier, real, real) == pytest.approx(0.0, abs=1e-9)
    own_held_out = style_frechet_distance(classifier, real, suite.features(drawings(own, HELD_OUT, 2)))
    for other in DEMO_STYLES:
        if other != own:  # the same garments drawn by another studio are further away than other garments of ours
            assert style_frechet_distance(classifier, real, test_features[other]) > own_held_out, other


@pytest.fixture(scope="module")
def encoder() -> EfficientNetLite0Encoder:
    return EfficientNetLite0Encoder().freeze()


@pytest.mark.parametrize("own", DEMO_STYLES)
def test_gram_distance_is_zero_for_identical_pairs_and_ranks_the_own_style_first(own, encoder):
    real = drawings(own, TEST, 1)
    assert gram_distance(encoder, real, real) == pytest.approx(0.0, abs=1e-12)
    redrawn = gram_distance(encoder, drawings(own, TEST, 3), real)  # the same garments, the same hand, again
    for other in DEMO_STYLES:
        if other != own:
            assert gram_distance(encoder, drawings(other, TEST, 1), real) > redrawn, other


def test_gram_distance_needs_pairs(encoder):
    with pytest.raises(ValueError, match="equally many"):
        gram_distance(encoder, drawings("fine", TEST, 1)[:3], drawings("fine", TEST, 1))


# ---------------------------------------------------------------- FD-Style-reject: noise is no style


@pytest.fixture(scope="module")
def reject_classifier(suite, train_set) -> StyleClassifier:
    sketches, labels, features = train_set
    return suite.style_classifier(sketches, labels, features=features)


@pytest.fixture(scope="module")
def untrained_noise(suite, encoder) -> dict[str, torch.Tensor]:
    """Features of a randomly initialised renderer's drawings of the test garments, in each style's own AdaIN_SD
    statistics (the falsifier's untrained arm); nothing of it is in the reject class's images."""
    out = {}
    for style in DEMO_STYLES:
        adain = AdaINSD(encoder.channels)
        with torch.no_grad():
            adain.fit([encoder(drawings(style, TRAIN, 0))])
            torch.manual_seed(0)
            gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=32).eval()
            out[style] = suite.features(gen(encoder(drawings(style, TEST, 1)), adain.stats()))
    return out


def test_old_fd_style_files_untrained_noise_under_a_textured_studio(classifier, test_features, untrained_noise):
    """The trap the falsifier found: for some studio, the studios-only classifier puts the noise nearer to its test
    sketches than line sketches of the same garments in some other studio's style."""
    fooled = [own for own in DEMO_STYLES
              if style_frechet_distance(classifier, test_features[own], untrained_noise[own])
              < max(style_frechet_distance(classifier, test_features[own], test_features[other])
                    for other in DEMO_STYLES if other != own)]
    assert fooled


@pytest.mark.parametrize("own", DEMO_STYLES)
def test_fd_style_reject_ranks_untrained_noise_below_every_line_sketch(own, suite, reject_classifier, test_features,
                                                                       untrained_noise):
    real = test_features[own]
    noise = style_fd_reject(reject_classifier, real, untrained_noise[own])
    own_held_out = style_fd_reject(reject_classifier, real, suite.features(drawings(own, HELD_OUT, 2)))
    others = [style_fd_reject(reject_classifier, real, test_features[o]) for o in DEMO_STYLES if o != own]
    assert noise > max(others) > own_held_out
    assert reject_classifier.reject_share(untrained_noise[own]) >= 0.5
    assert reject_classifier.reject_share(real) == 0.0


def test_the_reject_classes_leave_fd_style_exactly_as_before(classifier, reject_classifier, test_features):
    assert reject_classifier.reject_classes == [*sorted(DEMO_STYLES), OTHER_LINES, REJECT]
    for features in test_features.values():  # the same fit (bit for bit at the same thread count)
        torch.testing.assert_close(reject_classifier.embed(features), classifier.embed(features), rtol=0, atol=1e-9)


def test_not_sketches_and_line_sketches_are_seeded_images_of_the_right_shape():
    like = drawings("fine", range(3), 0)
    made = not_sketches(like, 10, seed=1)
    assert made.shape == (10, 1, SIZE, SIZE) and made.min() >= -1 and made.max() <= 1
    assert torch.equal(made, not_sketches(like, 10, seed=1)) and not torch.equal(made, not_sketches(like, 10, seed=2))
    assert len({round(float(x.std()), 3) for x in made}) > 5  # grain, nets, blobs and pages, not one picture
    lines = line_sketches(3, SIZE)
    assert lines.shape == (3, 1, SIZE, SIZE) and torch.equal(lines, line_sketches(3, SIZE))
    assert (lines > 0.5).float().mean() > 0.5  # mostly paper: line drawings
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        not_sketches(like[0], 4)


def test_the_reject_classes_are_reserved_and_need_images():
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="reject-aware classes"):
        StyleClassifier().fit(features, ["a"] * 4 + [REJECT] * 4)
    with pytest.raises(ValueError, match="needs >= 2 images"):
        StyleClassifier().fit(features, ["a"] * 4 + ["b"] * 4, reject=features[:1])
    with pytest.raises(RuntimeError, match="without reject"):
        StyleClassifier().fit(features, ["a"] * 4 + ["b"] * 4).embed_reject(features)
