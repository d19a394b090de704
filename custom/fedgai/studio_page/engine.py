"""The studio's generator behind the page: loaded once, run under one lock, with `fedgai sketch`'s framing and
`fedgai fuse`'s blending.

One lock guards every run of the model: two runs at once on a 2-core laptop would only slow each other down
(blending passes the statistics into the run, `style_blend.sketch_with`, and leaves the generator as it was).
Page requests that do not sketch never take it, so the page stays responsive while a batch runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedgai.config import DataConfig, FedgaiConfig
from fedgai.edge.framing import BatchRunner, output_size, to_batch, to_sketch
from fedgai.edge.runners import open_runner
from fedgai.edge.runtime import resolve_model
from fedgai.edge.sketcher import Sketcher, StudioModel
from fedgai.edge.style_blend import (
    SharedStyle,
    StyleMismatch,
    blend,
    check_compatible,
    load_style,
    sketch_with,
    style_of,
)

RESULTS_PAGE = "docs/results.md, cross-style fusion"
WARM_UP_SIDE = 64


@dataclass(frozen=True)
class StyleChoice:
    """One shared style file as the page lists it: usable (``style``) or refused (``problem``)."""

    label: str
    style: SharedStyle | None
    problem: str | None


@dataclass(frozen=True)
class BlendSupport:
    """Whether the loaded generator follows shared statistics, and in plain words why not."""

    available: bool
    reason: str


class PageModel:
    """A run folder, checkpoint (full or compressed) or exported sketcher, ready to sketch whole photos."""

    def __init__(self, model: Path, device: str = "auto"):
        self.kind, self.path = resolve_model(model)
        self.studio: StudioModel | None = None
        self.runner: BatchRunner
        if self.kind == "checkpoint":
            sketcher = Sketcher(self.path, device)
            self.studio, self.runner = sketcher.model, sketcher.run
        else:
            self.runner = open_runner(self.path, device)
        self.own_style = style_of(self.studio) if self.studio is not None else None
        self.lock = threading.Lock()
        self.sketch(Image.new("RGB", (WARM_UP_SIDE, WARM_UP_SIDE), "white"), None)  # first sketch pays no set-up

    @property
    def config(self) -> FedgaiConfig | None:
        return self.studio.cfg if self.studio is not None else None

    @property
    def studio_name(self) -> str:
        return str(self.studio.metadata.get("studio", "")) if self.studio is not None else ""

    @property
    def max_pixels(self) -> int:
        """The run's data.max_megapixels (the 40 MP rule of studio folders), or its default without a config."""
        return (self.config.data if self.config is not None else DataConfig()).max_pixels

    def describe(self) -> str:
        """What the page says it sketches with."""
        if self.studio is None:
            return f"exported sketcher {self.path.name} ({self.kind})"
        what = ("compressed (edge) generator" if self.studio.compressed else
                "styled renderer" if self.studio.cfg.model.generator == "styled" else "full generator")
        return f"{what} of studio {self.studio_name or 'unknown'} ({self.path})"

    def blend_support(self) -> BlendSupport:
        """Blending moves the AdaIN_SD statistics; it is offered only where the generator is known to follow them."""
        if self.studio is None:
            return BlendSupport(False, "This is an exported sketcher: the studio's style statistics are fixed inside "
                                       "its graph. Start the page with the run folder to blend styles.")
        if self.studio.compressed:
            return BlendSupport(False, "This compressed (edge) generator was distilled at the studio's own style "
                                       "statistics only, so it does not follow shared ones. Start the page with the "
                                       "run folder (the full generator) to blend styles.")
        if self.studio.cfg.model.generator == "styled":
            return BlendSupport(True, "This is a styled renderer (model.generator styled): every stage of its decoder "
                                      "is steered by the style statistics it is given, so shared ones steer its "
                                      "drawing.")
        if not self.studio.cfg.train.public_styles:
            return BlendSupport(False, "This generator does not follow shared styles: it was trained without "
                                       "train.public_styles, and such a generator draws the same sketch whatever "
                                       f"style statistics it is given ({RESULTS_PAGE}). Train with --set "
                                       "train.public_styles=true to blend styles here.")
        return BlendSupport(True, "This generator was trained with train.public_styles: shared statistics steer "
                                  "its drawing.")

    def load_styles(self, folder: Path | None) -> list[StyleChoice]:
        """Every *.json in the studio's chosen folder: usable, or refused with the reason (no file is skipped
        silently, so a designer sees why a style is missing)."""
        if folder is None:
            return []
        return [self._style_choice(path) for path in sorted(folder.glob("*.json")) if path.is_file()]

    def _style_choice(self, path: Path) -> StyleChoice:
        label = path.name.removesuffix(".json").removesuffix(".style")
        try:
            style = load_style(path)
            if self.own_style is not None:
                check_compatible(self.own_style, style)
        except StyleMismatch as err:
            return StyleChoice(label, None, str(err))
        return StyleChoice(f"{style.studio} ({path.name})", style, None)

    def sketch(self, photo: Image.Image, size: int | None, style: SharedStyle | None = None,
               alpha: float = 0.0) -> Image.Image:
        """The photo's sketch, whole, at its aspect ratio (longer side `size`, default as `fedgai sketch`);
        `alpha` of the way from the studio's own style to `style`."""
        width, height = output_size(*photo.size, size)
        batch = to_batch(photo, width, height)
        with self.lock:
            output = self.runner(batch) if style is None or alpha == 0 else self._blended(batch, style, alpha)
        return to_sketch(output, width, height)

    def _blended(self, batch: np.ndarray, style: SharedStyle, alpha: float) -> np.ndarray:
        """`fedgai fuse`'s blend on one framed batch ([0, 1] in and out, as the exported runners)."""
        if self.studio is None or self.own_style is None:
            raise StyleMismatch("this model cannot blend styles")
        photos = torch.from_numpy(batch) * 2 - 1
        sketches = sketch_with(self.studio, photos, blend(self.own_style, style, alpha))
        return ((sketches + 1) / 2).numpy()
