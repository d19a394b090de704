"""Style fusion: a studio's own generator drawing in a blend of its style and styles other studios chose to share.

A studio's style enters its generator only through AdaIN_SD: per encoder tap, the channel mean and standard
deviation of its sketch set's features (the paper's generator re-styles the encoder taps with them; the styled
renderer, model.generator styled, also maps them to the style code that modulates every decoder stage).
`share_style` writes exactly those numbers (nothing else: no sketch, no generator weight) to a readable JSON
file the studio may hand to another studio. `fuse_grid` then runs the receiving studio's own generator with
statistics interpolated between its own and the shared ones, which is the paper's style-fusion use. Statistics
from another feature space (encoder or its weights differ) are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from fedgai.data import read_image
from fedgai.device import resolve_device
from fedgai.edge.runtime import resolve_model
from fedgai.edge.sketcher import StudioModel, load_studio_model
from fedgai.models import AdaINSD

STYLE_FORMAT = "fedgai-style/1"


class StyleMismatch(ValueError):
    """Shared statistics that do not fit the receiving studio's generator."""


@dataclass(frozen=True)
class SharedStyle:
    studio: str
    encoder: str
    encoder_hash: str
    means: tuple[tuple[float, ...], ...]
    stds: tuple[tuple[float, ...], ...]


def adain_of(model: StudioModel) -> AdaINSD:
    adain = getattr(model.generator, "adain", None)
    if not isinstance(adain, AdaINSD):
        raise StyleMismatch("this generator has no AdaIN_SD statistics to share or blend")
    return adain


def style_of(model: StudioModel) -> SharedStyle:
    """The studio's AdaIN_SD statistics: all that style fusion needs from it."""
    adain = adain_of(model)
    taps = range(len(model.encoder.channels))
    return SharedStyle(
        studio=str(model.metadata.get("studio", "unknown")),
        encoder=model.encoder.name,
        encoder_hash=model.encoder.weights_hash(),
        means=tuple(tuple(getattr(adain, f"mean{i}").flatten().tolist()) for i in taps),
        stds=tuple(tuple(getattr(adain, f"std{i}").flatten().tolist()) for i in taps),
    )


def share_style(model_path: Path, out: Path) -> Path:
    """Write a studio's style statistics to ``out`` (JSON), for the studio to hand on if it wants to."""
    style = style_of(load_studio_model(resolve_model(model_path)[1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"format": STYLE_FORMAT, **style.__dict__}, indent=1) + "\n")
    return out


def load_style(path: Path) -> SharedStyle:
    """Read a shared style file; anything that is not one is a clear error."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StyleMismatch(f"cannot read style file {path}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != STYLE_FORMAT:
        raise StyleMismatch(f"{path} is not a fedgai style file (written by `fedgai share-style`)")
    try:
        return SharedStyle(str(data["studio"]), str(data["encoder"]), str(data["encoder_hash"]),
                           tuple(tuple(map(float, m)) for m in data["means"]),
                           tuple(tuple(map(float, s)) for s in data["stds"]))
    except (KeyError, TypeError, ValueError) as err:
        raise StyleMismatch(f"style file {path} is incomplete or malformed: {err}") from err


def check_compatible(own: SharedStyle, other: SharedStyle) -> None:
    """Statistics are only meaningful in the feature space they were measured in."""
    if (own.encoder, own.encoder_hash) != (other.encoder, other.encoder_hash):
        raise StyleMismatch(f"style of {other.studio!r} was measured with encoder {other.encoder} "
                            f"({other.encoder_hash}); this generator uses {own.encoder} ({own.encoder_hash})")
    if [len(m) for m in own.means] != [len(m) for m in other.means] or \
            [len(s) for s in other.stds] != [len(m) for m in other.means]:
        raise StyleMismatch(f"style of {other.studio!r} has other channel counts than this generator's taps")
    if any(v <= 0 for s in other.stds for v in s):
        raise StyleMismatch(f"style of {other.studio!r} has non-positive standard deviations")


def blend_stats(own: list[tuple[torch.Tensor, torch.Tensor]], other: list[tuple[torch.Tensor, torch.Tensor]],
                alpha: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap (mean, std) at ``alpha`` of the way from ``own`` to ``other`` (0 = own, 1 = other): style fusion's
    one rule, for shared style files (``blend``) and for the statistics a generator holds (``AdaINSD.stats()``)."""
    return [(m0 * (1 - alpha) + m1 * alpha, s0 * (1 - alpha) + s1 * alpha)
            for (m0, s0), (m1, s1) in zip(own, other, strict=True)]


def tap_stats(style: SharedStyle) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A shared style's per-tap (mean, std) as tensors, the form the generator and ``blend_stats`` take."""
    return [(torch.tensor(m), torch.tensor(s)) for m, s in zip(style.means, style.stds, strict=True)]


def blend(own: SharedStyle, other: SharedStyle, alpha: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per tap (mean, std) at ``alpha`` of the way from the own style to the other (0 = own, 1 = other)."""
    return blend_stats(tap_stats(own), tap_stats(other), alpha)


@torch.no_grad()
def sketch_with(model: StudioModel, photos: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> torch.Tensor:
    """Run the generator with the given AdaIN_SD statistics (per tap (mean, std), any shape of C values).

    They go in as ``generator(taps, stats)``, never into the stored buffers: the styled renderer reads them both
    for the taps and for its style code, and the studio's own statistics cannot be left overwritten."""
    adain = adain_of(model)
    if len(stats) != adain.n_taps:
        raise StyleMismatch(f"{len(stats)} taps of statistics for a generator with {adain.n_taps}")
    device = next(model.generator.parameters()).device
    targets = [(mean.reshape(1, -1, 1, 1).to(device), std.reshape(1, -1, 1, 1).to(device)) for mean, std in stats]
    return model.generator(model.encoder(photos.to(device)), targets).cpu()


def fuse_grid(model: StudioModel, others: list[SharedStyle], photos: torch.Tensor, steps: int) -> torch.Tensor:
    """Rows: each photo x each shared style; columns: the photo, then alpha = 0 (own style) ... 1 (other's)."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (own style and the other's), got {steps}")
    own = style_of(model)
    for other in others:
        check_compatible(own, other)
    alphas = [i / (steps - 1) for i in range(steps)]
    tiles = []
    for photo in photos:
        for other in others:
            row = [sketch_with(model, photo[None], blend(own, other, a))[0].expand(3, -1, -1) for a in alphas]
            tiles += [photo, *row]
    return make_grid((torch.stack(tiles) + 1) / 2, nrow=steps + 1, padding=2, pad_value=1.0)


def fuse(model_path: Path, style_files: list[Path], photo_files: list[Path], out: Path, steps: int = 5,
         device: str = "auto") -> Path:
    """Write the interpolation grid PNG of a studio's generator between its style and each shared style."""
    if not style_files:
        raise ValueError("fuse needs at least one --style file (written by `fedgai share-style`)")
    if not photo_files:
        raise ValueError("fuse needs at least one photo")
    model = load_studio_model(resolve_model(model_path)[1], resolve_device(device))
    others = [load_style(p) for p in style_files]
    size = model.cfg.model.image_size
    photos = torch.stack([read_image(p, 3, size) for p in photo_files])
    grid = fuse_grid(model, others, photos, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out)
    return out
