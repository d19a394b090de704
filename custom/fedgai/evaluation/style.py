"""Studio-style consistency: does a generated sketch look like it came from its own studio?

A multinomial logistic regression on frozen (EfficientNet-Lite0) features of the real *training* sketches of
every studio being compared; a studio's style accuracy is the share of its generated test sketches the
classifier attributes to that studio. Its accuracy on the real test sketches is the ceiling to compare with.
Its output probabilities are the feature space of FD-Style (metrics.style_frechet_distance).

A classifier that knows only the studios must file every image under one of them, and it files texture-like grey
noise under the most textured studio (hatching: an untrained renderer scored FD-Style 0.001 and style accuracy 1.0
there, docs/results.md). So it can also learn two more classes (``fit(..., reject=..., other_lines=...)``):
- REJECT, "not a line sketch", from images made here that are no line drawing: smoothed noise, the outputs of
  randomly initialised conv nets, blurred sketches and flat grey pages (``not_sketches``);
- OTHER_LINES, "a line sketch in no studio's style": public garments drawn in the public procedural line styles
  (``line_sketches``; data/public_styles.py, disjoint from every demo studio's family). Without it, edge maps of
  printed garments (stripes, dots) fall into REJECT, which would rank them below noise.
Its probabilities, the reject one weighted by REJECT_WEIGHT, are the space of FD-Style-reject
(metrics.style_fd_reject), where noise is far from every studio and a line sketch in the wrong style is not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

REJECT = "(not a line sketch)"
OTHER_LINES = "(another line style)"
OTHER_LINES_STREAM = 5_550_001  # public garments of OTHER_LINES: [stream, item] (the prior uses prior.PRIOR_STREAM)
OTHER_LINES_FIRST_STYLE = 100_000  # public styles from this index on (the prior's script uses the first few hundred)
# The reject probability's scale in FD-Style-reject's space: a set that is wholly "not a line sketch" lies
# 1 + REJECT_WEIGHT**2 = 5 from a studio's own sketches, further than a set of line sketches wholly in another
# studio's style (2): a drawing in the wrong style is still nearer than no drawing.
REJECT_WEIGHT = 2.0


class StyleClassifier:
    """Softmax regression with L2 on standardised features, fitted full-batch with L-BFGS (deterministic).

    With ``reject`` features a second regression, over the studios (plus OTHER_LINES with ``other_lines``
    features) plus REJECT, is fitted on its own standardisation; the studios-only one (logits, embed, predict,
    accuracy: FD-Style and style_acc) is exactly the one fitted without them."""

    def __init__(self, weight_decay: float = 1e-2, max_iter: int = 200):
        self.weight_decay = weight_decay
        self.max_iter = max_iter
        self.studios: list[str] = []
        self.reject_weight: torch.Tensor | None = None
        self.reject_bias: torch.Tensor | None = None
        self.reject_classes: list[str] = []

    def fit(self, features: torch.Tensor, studios: Sequence[str], reject: torch.Tensor | None = None,
            other_lines: torch.Tensor | None = None) -> StyleClassifier:
        """features (N, d), studios[i] = the studio of row i (at least two distinct studios); reject (M, d):
        features of images that are no line sketch (not_sketches), for the reject-aware regression; other_lines
        (K, d): features of line sketches in no studio's style (line_sketches), its OTHER_LINES class."""
        self.studios = sorted(set(studios))
        if len(self.studios) < 2:
            raise ValueError(f"the style classifier needs sketches of >= 2 studios, got {self.studios}")
        if len(features) != len(studios):
            raise ValueError(f"{len(features)} feature rows for {len(studios)} studio labels")
        if REJECT in self.studios or OTHER_LINES in self.studios:
            raise ValueError(f"{REJECT!r} and {OTHER_LINES!r} are the reject-aware classes, not studio names")
        if other_lines is not None and reject is None:
            raise ValueError("other_lines is a class of the reject-aware regression: give reject features too")
        x = features.double()
        self.mean, self.std = x.mean(0), x.std(0).clamp(min=1e-6)
        x = (x - self.mean) / self.std
        y = torch.tensor([self.studios.index(s) for s in studios])
        self.weight, self.bias = self._regression(x, y, len(self.studios))
        self.reject_weight = self.reject_bias = None
        self.reject_classes = [*self.studios]
        if reject is not None:
            extra = ([] if other_lines is None else [(OTHER_LINES, other_lines)]) + [(REJECT, reject)]
            xs, ys = [features.double()], [y]
            for label, rows in extra:
                if len(rows) < 2:
                    raise ValueError(f"the class {label!r} needs >= 2 images, got {len(rows)}")
                xs.append(rows.double())
                ys.append(torch.full((len(rows),), len(self.reject_classes)))
                self.reject_classes.append(label)
            # standardised over all its rows: dimensions nearly constant on sketches but not on noise would
            # otherwise be blown up by the sketches' tiny spread
            x_all = torch.cat(xs)
            self.reject_mean, self.reject_std = x_all.mean(0), x_all.std(0).clamp(min=1e-6)
            self.reject_weight, self.reject_bias = self._regression((x_all - self.reject_mean) / self.reject_std,
                                                                    torch.cat(ys), len(self.reject_classes))
        return self

    def _regression(self, x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + self.weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return weight, bias

    @property
    def has_reject(self) -> bool:
        return self.reject_weight is not None

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, studios) float64 scores; the largest names the predicted studio."""
        if not self.studios:
            raise RuntimeError("StyleClassifier used before fit")
        return ((features.double() - self.mean) / self.std) @ self.weight + self.bias

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's style space: each row's probabilities over the studios (N, studios).

        The classifier is linear, so its penultimate layer is its standardised input: all 1280 EfficientNet
        dimensions weighted alike, i.e. FD-EffNetLite0 again (and near-constant dimensions blow up). What it
        learned is its output. Probabilities rather than logits: logits grow without bound along the directions
        the classifier is sure of, so a few confident sketches would dominate a distance; probabilities are
        bounded, and on the demo styles they rank "same studio, other garments" closer than "same garments,
        other studio" for all 56 ordered pairs of demo styles at 224 px, where logits get 7 wrong.
        """
        return torch.softmax(self.logits(features), dim=1)

    def predict(self, features: torch.Tensor) -> list[str]:
        return [self.studios[i] for i in self.logits(features).argmax(1).tolist()]

    def accuracy(self, features: torch.Tensor, studio: str) -> float:
        """Share of the rows classified as `studio`."""
        if studio not in self.studios:
            raise ValueError(f"studio {studio!r} was not among the classifier's studios {self.studios}")
        predicted = self.predict(features)
        return sum(p == studio for p in predicted) / max(len(predicted), 1)

    @torch.no_grad()
    def reject_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, reject_classes): the reject-aware regression's probabilities (studios, OTHER_LINES if fitted,
        REJECT last)."""
        if self.reject_weight is None or self.reject_bias is None:
            raise RuntimeError("StyleClassifier fitted without reject features (fit(..., reject=...))")
        x = (features.double() - self.reject_mean) / self.reject_std
        return torch.softmax(x @ self.reject_weight + self.reject_bias, dim=1)

    def embed_reject(self, features: torch.Tensor) -> torch.Tensor:
        """FD-Style-reject's space: the reject-aware probabilities, the reject one scaled by REJECT_WEIGHT."""
        p = self.reject_probabilities(features)
        return torch.cat([p[:, :-1], REJECT_WEIGHT * p[:, -1:]], dim=1)

    def reject_share(self, features: torch.Tensor) -> float:
        """Share of the rows the reject-aware regression files as "not a line sketch"."""
        p = self.reject_probabilities(features)
        return float((p.argmax(1) == len(self.reject_classes) - 1).double().mean()) if len(p) else 0.0


def line_sketches(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``count`` public line sketches (N, 1, size, size in [-1, 1]): public garments, each in its own public
    procedural line style (an edge detector with random scale, threshold, width, jitter, pressure, smoothing),
    drawn at 2x and reduced as the public prior's are. No studio's data and no studio's family (OTHER_LINES)."""
    import numpy as np
    from PIL import Image

    from fedgai.data.public_styles import public_photo, public_style, render_line_style

    out = []
    for i in range(count):
        photo = public_photo(OTHER_LINES_STREAM, seed * 1_000_003 + i, 2 * size)
        ink = render_line_style(np.asarray(photo), public_style(OTHER_LINES_FIRST_STYLE + seed * 1_000_003 + i),
                                np.random.default_rng([OTHER_LINES_STREAM, seed, i]))
        small = Image.fromarray(ink, "L").resize((size, size), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(small, dtype=np.float32) / 127.5 - 1)[None])
    return torch.stack(out) if out else torch.zeros((0, 1, size, size))


def not_sketches(sketches: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` images (N, 1, H, W in [-1, 1], the size of ``sketches``) that are no line sketch: the reject class.

    Four kinds in turn, each at random grey level and contrast, none made by the renderer being judged:
    - smoothed Gaussian noise (grain from 1 to ~6 px at 64 px): the grey noise of an untrained generator;
    - a randomly initialised conv net (nearest upsampling, conv, instance norm, leaky ReLU) on low-resolution noise:
      the blotchy textures of other untrained decoders;
    - a real sketch blurred until its lines are blobs (sigma 2-6 px at 64 px), shifted towards grey;
    - a flat page with faint noise: an empty or collapsed output.
    Seeded: the same sketches, count and seed give the same images.
    """
    if sketches.dim() != 4 or sketches.shape[1] != 1 or not len(sketches):
        raise ValueError(f"not_sketches needs sketches as N x 1 x H x W (N >= 1), got {tuple(sketches.shape)}")
    g = torch.Generator().manual_seed(seed)
    h, w = sketches.shape[-2:]
    scale = min(h, w) / 64
    kinds = (_smooth_noise, _random_net, _blurred_sketch, _flat_page)
    sizes = [len(range(k, count, len(kinds))) for k in range(len(kinds))]
    parts = [kind(sketches, n, g, scale) for kind, n in zip(kinds, sizes, strict=True) if n]
    if not parts:
        return sketches.new_zeros((0, 1, h, w))
    # interleave so that any prefix holds every kind
    order = torch.cat([torch.arange(k, count, len(kinds)) for k in range(len(kinds)) if sizes[k]])
    out = torch.empty((count, 1, h, w))
    out[order] = torch.cat(parts)
    return out.clamp(-1, 1)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return (low + (high - low) * torch.rand(n, generator=g)).view(n, 1, 1, 1)


def _grey(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Unit-std maps at a random mean grey and contrast."""
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True).clamp(min=1e-6)
    return _uniform(g, len(x), -0.6, 0.9) + _uniform(g, len(x), 0.05, 0.5) * x


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (sigma: N x 1 x 1 x 1, px), reflect-padded."""
    out = []
    for image, s in zip(x, sigma.flatten().tolist(), strict=True):
        radius = max(1, math.ceil(3 * s))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        y = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        y = F.conv2d(F.conv2d(y, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
        out.append(y[0])
    return torch.stack(out)


def _smooth_noise(sketches: torch.Tensor, n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    h, w = sketches.shape[-2:]
    noise = torch.randn((n, 1, h, w), generator=g)
    return _grey(_gaussian_blur(noise, _uniform(g, n, 0.4, 3.0) * scale), g)


def _random_net(sketches: torch.Tensor, n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    h, w = sketches.shape[-2:]
    out = []
    for _ in range(n):
        ups = int(torch.randint(2, 5, (1,), generator=g))
        width = int(torch.randint(8, 33, (1,), generator=g))
        x = torch.randn((1, width, max(1, h >> ups), max(1, w >> ups)), generator=g)
        for _ in range(ups):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            weight = torch.randn((width, width, 3, 3), generator=g) * math.sqrt(2 / (9 * width))
            x = F.leaky_relu(F.instance_norm(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight)), 0.2)
        x = F.conv2d(x, torch.randn((1, width, 3, 3), generator=g) / math.sqrt(9 * width), padding=1)
        out.append(torch.tanh(F.interpolate(x, size=(h, w), mode="nearest")))
    return _grey(torch.cat(out), g)


def _blurred_sketch(sketches: torch.Tensor, n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    picks = sketches[torch.randint(len(sketches), (n,), generator=g)].float()
    blurred = _gaussian_blur(picks, _uniform(g, n, 2.0, 6.0) * scale)
    fade = _uniform(g, n, 0.3, 1.0)
    return fade * blurred + (1 - fade) * _uniform(g, n, -0.4, 0.6)


def _flat_page(sketches: torch.Tensor, n: int, g: torch.Generator, scale: float) -> torch.Tensor:
    h, w = sketches.shape[-2:]
    return _uniform(g, n, -0.8, 1.0) + 0.03 * torch.randn((n, 1, h, w), generator=g)
