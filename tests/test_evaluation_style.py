"""Known answers for the style-aware scores (FD-Style, the paired Gram distance) on the demo data generator,
which draws any garment in any studio's line style: so "own style" and "another studio's style" are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgai.config import EvalConfig
from fedgai.data.garments import KINDS, garment_tone, make_garment
from fedgai.data.sketch_styles import DEMO_STYLES, render_sketch
from fedgai.evaluation.metrics import MetricSuite, gram_distance, style_frechet_distance
from fedgai.evaluation.style import StyleClassifier
from fedgai.models import EfficientNetLite0Encoder

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
def classifier(suite) -> StyleClassifier:
    features = torch.cat([suite.features(drawings(style, TRAIN, 0)) for style in DEMO_STYLES])
    return StyleClassifier().fit(features, [style for style in DEMO_STYLES for _ in TRAIN])


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
