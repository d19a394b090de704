"""Known answers for the held-out quality metrics (fedgai.evaluation.metrics / style)."""

import math

import pytest
import torch

from fedgai.config import ConfigError, EvalConfig
from fedgai.evaluation.features import InceptionUnavailable, find_inception_weights
from fedgai.evaluation.metrics import (
    UNAVAILABLE,
    MetricSuite,
    _Precomputed,
    evaluate_generated,
    frechet_distance,
    ink_chamfer,
    ink_iou,
    kernel_distance,
    psnr,
    ssim,
)
from fedgai.evaluation.style import StyleClassifier


def exact_gaussian_sample(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n rows whose sample mean and (N-1) covariance are exactly `mean` and `cov`."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T  # whitened: identity sample covariance
    return mean + z @ torch.linalg.cholesky(cov).T


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 1.0],
                                                                                 dtype=torch.float64)
    cov1, cov2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])).double(), torch.diag(torch.tensor([4.0, 1.0, 1.0])).double()
    a, b = exact_gaussian_sample(mu1, cov1, 200, 0), exact_gaussian_sample(mu2, cov2, 300, 1)
    # |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2 = (1 + 0 + 4) + (1 + 1 + 4)
    assert frechet_distance(a, b) == pytest.approx(11.0, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(11.0, rel=1e-6)


@pytest.mark.parametrize("rows", [12, 80])  # fewer and more samples than the 40 dimensions
def test_frechet_distance_agrees_with_torchmetrics(rows):
    from torchmetrics.image.fid import FrechetInceptionDistance

    gen = torch.Generator().manual_seed(rows)
    real = torch.randn(rows, 40, generator=gen, dtype=torch.float64)
    fake = torch.randn(rows + 3, 40, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    reference = FrechetInceptionDistance(feature=_Precomputed(40)).double()
    reference.update(real, real=True)
    reference.update(fake, real=False)
    assert frechet_distance(real, fake) == pytest.approx(float(reference.compute()), rel=1e-6)


def test_identical_feature_sets_are_at_distance_zero():
    feats = torch.randn(120, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifted = feats + 1.0
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    kd_same, kd_shifted = kernel_distance(feats, feats), kernel_distance(feats, shifted)
    assert kd_shifted > 0.1
    assert abs(kd_same) < 0.05 * kd_shifted


def test_kernel_distance_adapts_to_small_test_sets_and_is_seeded():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(8, 32, generator=gen), torch.randn(8, 32, generator=gen) + 2
    assert kernel_distance(real, fake) > 0  # subset size shrinks to the 8 pairs instead of failing
    big_real, big_fake = torch.randn(40, 8, generator=gen), torch.randn(30, 8, generator=gen)
    assert kernel_distance(big_real, big_fake, max_subset_size=10, seed=3) == \
        kernel_distance(big_real, big_fake, max_subset_size=10, seed=3)
    with pytest.raises(ValueError, match=">= 2 rows"):
        kernel_distance(real[:1], fake)


def test_ssim_and_psnr_known_values():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(3, 1, 32, 32, generator=gen) * 1.6 - 0.8
    assert ssim(real, real) == pytest.approx(1.0, abs=1e-6)
    # +-0.1 on the [0, 1] scale everywhere: MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    noise = torch.where(torch.rand(real.shape, generator=gen) < 0.5, -0.2, 0.2)
    assert psnr(real + noise, real) == pytest.approx(20.0, abs=1e-4)
    assert ssim(real + noise, real) < 0.99
    assert math.isinf(psnr(real, real))


def page(*boxes: tuple[int, int, int, int], size: int = 16) -> torch.Tensor:
    """A white 1 x 1 x size x size page with black ink in each (top, bottom, left, right) box."""
    img = torch.ones(1, 1, size, size)
    for top, bottom, left, right in boxes:
        img[..., top:bottom, left:right] = -1.0
    return img


def test_ink_iou_and_chamfer_known_answers():
    square = page((4, 8, 4, 8))
    half_overlap = page((4, 8, 6, 10))  # 8 shared pixels of 16 + 16 - 8 = 24
    assert ink_iou(square, square) == 1.0
    assert ink_iou(half_overlap, square) == pytest.approx(8 / 24)
    assert ink_iou(page(), page()) == 1.0  # two blank pages agree
    assert ink_iou(page((0, 2, 0, 2)), page((10, 12, 10, 12))) == 0.0
    # vertical lines 3 px apart: every stroke pixel is 3 px from the other line
    assert ink_chamfer(page((2, 14, 5, 6)), page((2, 14, 8, 9))) == pytest.approx(3.0)
    assert ink_chamfer(square, square) == 0.0
    assert ink_chamfer(page(), square) == pytest.approx(math.hypot(16, 16))  # strokes vs blank: worst case


def test_style_classifier_separates_clusters_and_reports_per_studio_accuracy():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 10, generator=gen), torch.randn(20, 10, generator=gen) + 3
    clf = StyleClassifier().fit(torch.cat([a, b]), ["a"] * 20 + ["b"] * 20)
    assert clf.accuracy(torch.randn(10, 10, generator=gen), "a") == 1.0
    assert clf.accuracy(torch.randn(10, 10, generator=gen) + 3, "a") == 0.0
    with pytest.raises(ValueError, match=">= 2 studios"):
        StyleClassifier().fit(a, ["a"] * 20)


def hatching(n: int, vertical: bool, seed: int, size: int = 64) -> torch.Tensor:
    """n sketches of parallel strokes at random spacing and phase: one drawing style."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.ones(n, 1, size, size)
    for i in range(n):
        step = int(torch.randint(5, 9, (), generator=gen))
        phase = int(torch.randint(0, step, (), generator=gen))
        if vertical:
            out[i, :, :, phase::step] = -1
        else:
            out[i, :, phase::step, :] = -1
    return out


@pytest.fixture(scope="module")
def suite() -> MetricSuite:
    return MetricSuite(EvalConfig(feature_size=96, kid_subsets=10))


def test_style_classifier_on_effnet_features_tells_drawing_styles_apart(suite):
    train = torch.cat([hatching(8, True, 0), hatching(8, False, 1)])
    clf = StyleClassifier().fit(suite.features(train), ["vertical"] * 8 + ["horizontal"] * 8)
    assert clf.accuracy(suite.features(hatching(6, True, 2)), "vertical") == 1.0
    assert clf.accuracy(suite.features(hatching(6, False, 3)), "horizontal") == 1.0


def test_evaluate_generated_reports_every_metric_and_marks_missing_weights(suite):
    photos = torch.rand(4, 3, 64, 64) * 2 - 1
    reals = hatching(4, True, 0)
    perfect = evaluate_generated(photos, reals, reals, suite=suite)
    assert perfect["FD-EffNetLite0"] == pytest.approx(0.0, abs=1e-3)
    assert perfect["SSIM"] == pytest.approx(1.0, abs=1e-6) and perfect["ink_IoU"] == 1.0
    assert perfect["n_test"] == 4
    wrong = evaluate_generated(photos, hatching(4, False, 1), reals, suite=suite)
    assert wrong["FD-EffNetLite0"] > 1.0 and wrong["ink_IoU"] < 0.5
    # Inception / CLIP weights are never downloaded: without a local copy the metric is named unavailable
    assert (perfect["FID"] == perfect["KID"] == UNAVAILABLE) == (suite.inception is None)
    assert (perfect["CLIP_photo_sketch"] == UNAVAILABLE) == (suite.clip is None)
    assert suite.clip_status and suite.inception_status  # the report says why, either way
    with pytest.raises(ValueError, match="differ in count"):
        evaluate_generated(photos[:3], reals, reals, suite=suite)


def test_missing_inception_weights_are_reported_not_downloaded(tmp_path):
    with pytest.raises(InceptionUnavailable, match="not a file"):
        find_inception_weights(str(tmp_path / "inception.pth"))


def test_eval_config_is_validated():
    with pytest.raises(ConfigError, match="ink_threshold"):
        EvalConfig(ink_threshold=1.5).validate()
    with pytest.raises(ConfigError, match="kid_subset_size"):
        EvalConfig(kid_subset_size=1).validate()
