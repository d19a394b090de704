"""Held-out quality of generated sketches against the real ones: distribution distances on frozen features,
pixel metrics, an ink (stroke) score, studio-style consistency (style accuracy, FD-Style, the paired Gram
distance) and CLIP photo<->sketch agreement.

Every function takes [-1, 1] tensors (sketches 1 x H x W, photos 3 x H x W). `MetricSuite` builds the slow
networks once; `evaluate_generated` is the one call a benchmark needs.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.kid import KernelInceptionDistance

from fedgai.config import EvalConfig, LossConfig
from fedgai.environment import scoped_env
from fedgai.evaluation.features import (
    EffNetLite0Features,
    FeatureNet,
    InceptionFeatures,
    InceptionUnavailable,
    find_inception_weights,
)
from fedgai.evaluation.style import StyleClassifier, line_sketches, not_sketches
from fedgai.ink import ink_iou, ink_mask, to_unit
from fedgai.losses import ClipLoss, load_clip
from fedgai.models import Encoder, gram_matrix

UNAVAILABLE = "unavailable"
Metrics = dict[str, float | str]


class _Precomputed(nn.Module):
    """Identity "feature network" so torchmetrics' KID runs on features that were extracted once (and are
    shared with FD and the style classifier) instead of re-running the network per metric."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, d) feature matrices (N >= 2 each):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

    Same value as torchmetrics' FrechetInceptionDistance (checked in the tests), computed exactly without its
    d x d non-symmetric eigendecomposition: with S1 = A A^T and S2 = B B^T (A, B the centred features over
    sqrt(N - 1)), the eigenvalues of S1 S2 are the squared singular values of the small N1 x N2 matrix A^T B,
    so tr sqrt(S1 S2) is its nuclear norm. For 1280-d features and a studio's test pairs that is milliseconds
    instead of seconds. With more samples than dimensions it uses the symmetric form tr sqrt(S1^1/2 S2 S1^1/2).
    """
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"Fréchet distance needs >= 2 rows per set, got {len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    a = (real - real.mean(0)) / (len(real) - 1) ** 0.5
    b = (fake - fake.mean(0)) / (len(fake) - 1) ** 0.5
    value = (real.mean(0) - fake.mean(0)).square().sum() + a.square().sum() + b.square().sum()
    return max(float(value - 2 * _trace_sqrt_product(a, b)), 0.0)  # round-off can dip a hair below 0


def _trace_sqrt_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tr sqrt(a^T a b^T b) for row-sample matrices a (N1 x d), b (N2 x d)."""
    if max(len(a), len(b)) <= a.shape[1]:  # fewer samples than dimensions: the small N1 x N2 route
        return torch.linalg.svdvals(a @ b.T).sum()
    eigenvalues, vectors = torch.linalg.eigh(a.T @ a)
    root = (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T  # symmetric sqrt(S1)
    return torch.linalg.eigvalsh(root @ (b.T @ b) @ root).clamp(min=0).sqrt().sum()


def style_frechet_distance(style: StyleClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD-Style: the Fréchet distance of two EfficientNet feature sets in the style classifier's space
    (StyleClassifier.embed), so that only what separates the studios' drawing styles counts."""
    return frechet_distance(style.embed(real), style.embed(fake))


def style_fd_reject(style: StyleClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD-Style-reject: FD-Style in the space of a classifier that also knows "not a line sketch"
    (StyleClassifier.embed_reject), so that noise, blobs and blank pages lie far from every studio instead of being
    filed under the most texture-like one. Needs a classifier with reject features (MetricSuite.style_classifier)."""
    return frechet_distance(style.embed_reject(real), style.embed_reject(fake))


@torch.no_grad()
def gram_distance(encoder: Encoder, fakes: torch.Tensor, reals: torch.Tensor, batch: int = 16) -> float:
    """Paired style distance: for each generated sketch and the real sketch of the same pair, the squared
    difference of their Gram matrices at every encoder tap (the taps the generator draws from), relative to
    the real Gram's energy, averaged over taps and pairs (0 = the same channel statistics everywhere).

    The relative scale is the one the training Gram loss uses (losses.gram_loss): raw Gram magnitudes differ
    by orders of magnitude between taps and encoders, and a raw mean would measure only the largest tap.
    Distances are comparable between runs with the same encoder (the report's run table names it).
    """
    if len(fakes) != len(reals) or not len(reals):
        raise ValueError(f"Gram distance needs equally many (>= 1) fakes and reals, got {len(fakes)}, {len(reals)}")
    device = next(encoder.buffers()).device
    per_pair = []
    for fake, real in zip(fakes.split(batch), reals.split(batch), strict=True):
        fake_taps, real_taps = encoder(fake.to(device)), encoder(real.to(device))
        taps = [(gram_matrix(f) - gram_matrix(r)).square().mean((1, 2)) / (gram_matrix(r).square().mean((1, 2))
                                                                           + 1e-12)
                for f, r in zip(fake_taps, real_taps, strict=True)]
        per_pair.append(torch.stack(taps).mean(0).double().cpu())
    return float(torch.cat(per_pair).mean())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, max_subset_size: int = 1000,
                    seed: int = 0) -> float:
    """KID-style unbiased polynomial-kernel MMD^2, averaged over random subsets.

    The subset size shrinks to the smaller set, so studios with a handful of test pairs still get a value;
    when it covers both sets whole every subset is the same and one suffices. Seeded: same features, same value.
    """
    size = min(max_subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"kernel distance needs >= 2 rows per set, got {len(real)} and {len(fake)}")
    if size == len(real) == len(fake):
        subsets = 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


def ssim(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean SSIM over pairs (1 = identical); a Gaussian window no larger than the image."""
    kernel = min(11, real.shape[-1] - (1 - real.shape[-1] % 2))
    return float(structural_similarity_index_measure(to_unit(fake), to_unit(real), data_range=1.0,
                                                     kernel_size=kernel))


def psnr(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Mean per-pair PSNR in dB on [0, 1] pixels (inf for identical images)."""
    return float(peak_signal_noise_ratio(to_unit(fake), to_unit(real), data_range=1.0, dim=(1, 2, 3),
                                         reduction="elementwise_mean"))


def _chamfer_pair(a: np.ndarray, b: np.ndarray) -> float:
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return float(np.hypot(*a.shape))  # strokes against a blank page: the worst possible distance
    to_b, to_a = distance_transform_edt(~b), distance_transform_edt(~a)
    return 0.5 * (float(to_b[a].mean()) + float(to_a[b].mean()))


def ink_chamfer(fake: torch.Tensor, real: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean symmetric chamfer distance in pixels between stroke pixels: how far each stroke is from the
    nearest stroke of the other drawing (0 = same strokes); forgiving where IoU punishes 1-px shifts."""
    a, b = ink_mask(fake, threshold).numpy(), ink_mask(real, threshold).numpy()
    return float(np.mean([_chamfer_pair(x, y) for x, y in zip(a, b, strict=True)]))


def hub_offline() -> contextlib.AbstractContextManager[None]:
    """Hugging Face hub lookups answer from the local cache only (evaluation never downloads weights)."""
    return scoped_env("HF_HUB_OFFLINE", "1")


class MetricSuite:
    """The networks behind the metrics, built once: EfficientNet-Lite0 always, Inception-v3 and CLIP only
    from files already on this machine (otherwise their metrics are reported as "unavailable", with why)."""

    def __init__(self, cfg: EvalConfig | None = None, device: str = "cpu"):
        self.cfg = (cfg or EvalConfig()).validate()
        self.device = device
        self.effnet = EffNetLite0Features(self.cfg.feature_size).to(device)
        self.inception: FeatureNet | None = None
        try:
            self.inception = InceptionFeatures(find_inception_weights(self.cfg.inception_weights)).to(device)
            self.inception_status = "Inception-v3 (torch-fidelity weights)"
        except InceptionUnavailable as err:
            self.inception_status = str(err)
        clip_cfg = LossConfig(clip_model=self.cfg.clip_model, clip_pretrained=self.cfg.clip_pretrained)
        with hub_offline():
            clip, status = load_clip(clip_cfg)
        self.clip: ClipLoss | None = clip.to(device) if clip is not None else None
        self.clip_status = status.reason

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """EfficientNet-Lite0 features (N, 1280), float64 on CPU."""
        return self.effnet.extract(images, self.cfg.batch_size)

    def style_classifier(self, sketches: torch.Tensor, studios: Sequence[str],
                         features: torch.Tensor | None = None, seed: int = 0) -> StyleClassifier:
        """The studio-style classifier of ``sketches`` (every compared studio's real training sketches at the
        evaluation resolution; studios[i] = the studio of row i) with its reject-aware regression, so it gives
        FD-Style-reject as well as FD-Style. Its two extra classes weigh like a few studios, not like all of them:
        "not a line sketch" gets half as many images as there are sketches (32 to 256; not_sketches of these
        sketches), "another line style" half that (line_sketches). At 1:1 a third to a quarter of an untrained
        renderer's noise went to "another line style" on the seed-15 demo; at 2:1 all of it is rejected.
        features: ``self.features(sketches)`` when the caller has it."""
        count = min(256, max(32, len(sketches) // 2))
        features = self.features(sketches) if features is None else features
        return StyleClassifier().fit(features, studios, reject=self.features(not_sketches(sketches, count, seed)),
                                     other_lines=self.features(line_sketches(count // 2, sketches.shape[-1], seed)))

    @torch.no_grad()
    def clip_similarity(self, photos: torch.Tensor, sketches: torch.Tensor) -> float | str:
        """Mean cosine similarity of CLIP image embeddings, photo vs its sketch."""
        if self.clip is None:
            return UNAVAILABLE
        sims = [F.cosine_similarity(self.clip.embed(p.to(self.device)), self.clip.embed(s.to(self.device)), dim=1)
                for p, s in zip(photos.split(self.cfg.batch_size), sketches.split(self.cfg.batch_size), strict=True)]
        return float(torch.cat(sims).mean())

    def distances(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> Metrics:
        """FD and KD between two feature sets, "unavailable" below the 2 rows each needs."""
        if min(len(real), len(fake)) < 2:
            return {f"FD-{name}": UNAVAILABLE, f"KD-{name}": UNAVAILABLE}
        return {f"FD-{name}": frechet_distance(real, fake),
                f"KD-{name}": kernel_distance(real, fake, self.cfg.kid_subsets, self.cfg.kid_subset_size,
                                              self.cfg.seed)}

    def inception_distances(self, reals: torch.Tensor, fakes: torch.Tensor) -> Metrics:
        if self.inception is None:
            return {"FID": UNAVAILABLE, "KID": UNAVAILABLE}
        d = self.distances("Inception", self.inception.extract(reals, self.cfg.batch_size),
                           self.inception.extract(fakes, self.cfg.batch_size))
        return {"FID": d["FD-Inception"], "KID": d["KD-Inception"]}

    def evaluate(self, photos: torch.Tensor, fakes: torch.Tensor, reals: torch.Tensor,
                 style: StyleClassifier | None = None, studio: str | None = None,
                 real_features: torch.Tensor | None = None, encoder: Encoder | None = None) -> Metrics:
        """All metrics of one studio's generated test sketches against its real ones.

        style/studio: a classifier fitted on the real training sketches of the studios being compared and
        this studio's name; gives style_acc, the share of generated sketches it attributes to this studio,
        and FD-Style, the distance of the two sets in the classifier's style space. Fitted with reject features
        too (style_classifier), it also gives FD-Style-reject (the same in the space that knows "not a line
        sketch") and not_sketch_share (the share of generated sketches filed as no line sketch); style_classifier
        fits one.
        real_features: `features(reals)` when the caller compares many runs against the same real sketches.
        encoder: the run's frozen encoder; gives Gram_dist, the paired Gram-matrix distance at its taps.
        """
        if not len(photos) == len(fakes) == len(reals):
            raise ValueError(f"photos, fakes and reals differ in count: {len(photos)}, {len(fakes)}, {len(reals)}")
        fake_feats = self.features(fakes)
        real_feats = self.features(reals) if real_features is None else real_features
        t = self.cfg.ink_threshold
        out: Metrics = {"n_test": float(len(reals))}
        out |= self.distances(self.effnet.name, real_feats, fake_feats)
        out |= {"SSIM": ssim(fakes, reals), "PSNR": psnr(fakes, reals), "ink_IoU": ink_iou(fakes, reals, t),
                "ink_chamfer_px": ink_chamfer(fakes, reals, t)}
        if style is not None and studio is not None:
            out |= {"style_acc": style.accuracy(fake_feats, studio),
                    "style_acc_real": style.accuracy(real_feats, studio),
                    "FD-Style": style_frechet_distance(style, real_feats, fake_feats) if len(reals) >= 2
                    else UNAVAILABLE}
            if style.has_reject:
                out |= {"FD-Style-reject": style_fd_reject(style, real_feats, fake_feats) if len(reals) >= 2
                        else UNAVAILABLE,
                        "not_sketch_share": style.reject_share(fake_feats)}
        if encoder is not None:
            out["Gram_dist"] = gram_distance(encoder, fakes, reals, self.cfg.batch_size)
        out |= self.inception_distances(reals, fakes)
        out["CLIP_photo_sketch"] = self.clip_similarity(photos, fakes)
        return out


def evaluate_generated(photos: torch.Tensor, fakes: torch.Tensor, reals: torch.Tensor,
                       suite: MetricSuite | None = None, style: StyleClassifier | None = None,
                       studio: str | None = None, encoder: Encoder | None = None) -> Metrics:
    """Metrics of generated vs real sketches for callers without a run folder (benchmarks). Pass a
    `MetricSuite` built once when calling repeatedly: building one loads the feature networks."""
    return (suite or MetricSuite()).evaluate(photos, fakes, reals, style, studio, encoder=encoder)
