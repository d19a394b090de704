"""One studio's paired photos and sketches on disk: validation, decoding and the training dataset.

Layout: ``ROOT/photos/`` and ``ROOT/sketches/`` hold images paired by file stem, and an optional
``ROOT/studio.json`` names the studio. Photos without a sketch - in ``ROOT/photos-unpaired/``, or in
``photos/`` with no sketch of their stem - are *unpaired*: product photos a studio has not drawn, which only
the terms that need no real sketch use. Nothing here ever writes into a studio folder.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

MIN_SIZE = 64
# Decoded images cost ~12 bytes per pixel as float RGB: 40 MP is a 480 MB array, past that a file is refused.
MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
STUDIO_FIELDS = ("name", "designer", "licence")
UNPAIRED = "photos-unpaired"

# What Pillow raises for truncated, corrupt or non-image files (SyntaxError/EOFError come from some plugins).
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_REDUCIBLE = ("L", "LA", "La", "I", "F", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr")


class StudioDataError(ValueError):
    """Everything wrong with a folder at once, so a designer can fix it in one pass."""

    def __init__(self, root: str | Path, problems: list[str], what: str = "studio folder") -> None:
        self.root = Path(root)
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = [f"{what} {self.root} cannot be used ({count}):"]
        lines += [f"  - {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Studio:
    root: Path
    name: str
    designer: str | None
    licence: str | None
    pairs: tuple[tuple[Path, Path], ...]
    unpaired: tuple[Path, ...] = ()


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (hidden files such as macOS ``._x.png`` are OS clutter)."""
    return sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_studio(root: str | Path, min_size: int = MIN_SIZE, *, follow_symlinks: bool = False,
                max_pixels: int = MAX_PIXELS) -> Studio:
    """Validate a studio folder completely and return its pairs; raises one error listing every problem.

    Links that lead out of the folder are problems unless ``follow_symlinks``: a studio is what its folder
    holds, so a stray link cannot pull another studio's (or the system's) files into training.
    """
    root = Path(root)
    if not root.is_dir():
        raise StudioDataError(root, ["not a folder" if root.exists() else "folder does not exist"])
    problems: list[str] = []
    meta = _read_meta(root, problems)
    by_kind = {}
    for kind in ("photos", "sketches"):
        if not (root / kind).is_dir():
            problems.append(f"{kind}/: folder is missing")
        elif not follow_symlinks and (target := outside_link(root / kind, root)):
            problems.append(f"{kind}/: {target}")
        else:
            images = _index_folder(root, kind, problems, follow_symlinks=follow_symlinks,
                                   min_size=min_size, max_pixels=max_pixels)
            by_kind[kind] = images
    pairs: list[tuple[Path, Path]] = []
    unpaired: list[Path] = []
    if len(by_kind) == 2:
        pairs, unpaired = _match(by_kind["photos"], by_kind["sketches"], root, problems)
        if not pairs:
            extensions = ", ".join(IMAGE_EXTENSIONS)
            problems.append(f"studio is empty: no photo-sketch pairs (images must end in {extensions})")
    unpaired += _unpaired_folder(root, problems, follow_symlinks=follow_symlinks, min_size=min_size,
                                 max_pixels=max_pixels)
    if problems:
        raise StudioDataError(root, problems)
    return Studio(
        root=root,
        name=meta.get("name") or root.resolve().name,
        designer=meta.get("designer"),
        licence=meta.get("licence"),
        pairs=tuple(pairs),
        unpaired=tuple(unpaired),
    )


def _unpaired_folder(root: Path, problems: list[str], **checks) -> list[Path]:
    """The usable photos of the optional photos-unpaired/ folder (its problems are the studio's problems)."""
    folder = root / UNPAIRED
    if not folder.is_dir():
        return []
    if not checks["follow_symlinks"] and (target := outside_link(folder, root)):
        problems.append(f"{UNPAIRED}/: {target}")
        return []
    return [path for _, path in sorted(_index_folder(root, UNPAIRED, problems, **checks).items())]


def outside_link(path: Path, root: Path) -> str | None:
    """Why ``path`` may not be followed: it resolves outside ``root`` through a symbolic link (else None)."""
    target = path.resolve()
    if target.is_relative_to(root.resolve()):
        return None
    return f"links to {target}, outside the studio folder (allow with --follow-symlinks or data.follow_symlinks)"


def pixel_problem(img: Image.Image, label: str, max_pixels: int = MAX_PIXELS) -> str | None:
    """Refuse an image whose header declares more than ``max_pixels``: checked before a single pixel decodes."""
    width, height = img.size
    if width * height <= max_pixels:
        return None
    return (f"{label}: {width}x{height} px ({width * height / 1e6:.0f} MP) is above the limit of "
            f"{max_pixels / 1e6:g} MP; downscale it first")


def decode_problem(path: Path, label: str, min_size: int, max_pixels: int = MAX_PIXELS) -> str | None:
    """Why ``path`` cannot be used as a training image, or None; decodes it fully to catch truncation."""
    try:
        with Image.open(path) as img:
            if too_large := pixel_problem(img, label, max_pixels):
                return too_large
            img.load()
            width, height = ImageOps.exif_transpose(img).size
    except Image.DecompressionBombError:
        return f"{label}: too large to decode safely"
    except _DECODE_ERRORS:
        return f"{label}: cannot be read (corrupt or not an image)"
    if min(width, height) < min_size:
        return f"{label}: {width}x{height} px is below the minimum {min_size} px"
    return None


def load_array(path: Path) -> np.ndarray:
    """Decode to float32 H x W x C in [0, 1] (C = 1 or 3), normalising the odd modes designers' tools save.

    Alpha is composited on white paper, palette images are expanded, 16-bit values are scaled by 65535 and
    the EXIF orientation is applied so photos match what the designer saw.
    """
    with Image.open(path) as img:
        return _to_array(ImageOps.exif_transpose(img))


def read_image(path: Path, channels: int, size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """A channels x size x size float tensor in [-1, 1]: centre-cropped to square, antialiased resize.

    Images above ``max_pixels`` are refused before decoding; big ones are shrunk by an integer factor while
    still 8-bit (JPEG: at decode time), so the float copy is never made at full resolution.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (sketch) or 3 (photo), got {channels}")
    with Image.open(path) as img:
        if too_large := pixel_problem(img, path.name, max_pixels):
            raise StudioDataError(path, [too_large], what="image")
        img.draft(None, (size, size))  # JPEG: decode at a reduced scale that is still >= size
        array = _to_array(ImageOps.exif_transpose(_reduced(img, size)))
    array = _match_channels(array, channels)
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    tensor = _center_square(tensor)
    if tensor.shape[-1] != size:
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bicubic", antialias=True,
                               align_corners=False)[0]
    return (tensor.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()


class SketchPairDataset(torch.utils.data.Dataset):
    """(photo, sketch) tensors of one studio; decoded on first use and kept in memory (studios are small)."""

    def __init__(self, studio: Studio, image_size: int, max_pairs: int | None = None,
                 augment: bool = False, stems: Sequence[str] | None = None) -> None:
        """``stems`` restricts the set to those pairs (a split side), in the studio's order; ``max_pairs``
        then keeps the first of them."""
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs}")
        self.studio = studio
        self.image_size = image_size
        self.augment = augment
        pairs = studio.pairs
        if stems is not None:
            wanted = set(stems)
            pairs = tuple(pair for pair in pairs if pair[0].stem in wanted)
            if len(pairs) != len(wanted):
                raise ValueError(f"{len(wanted) - len(pairs)} requested pair(s) are not in studio {studio.name}")
        self.pairs = pairs[:max_pairs]
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        photo, sketch = self._decoded(index)
        if self.augment and torch.rand(()) < 0.5:
            return photo.flip(-1), sketch.flip(-1)
        # Clones keep callers' in-place edits out of the cache.
        return photo.clone(), sketch.clone()

    def _decoded(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self.pairs))[index]  # normalises negatives, raises IndexError past the end
        if index not in self._cache:
            photo_path, sketch_path = self.pairs[index]
            self._cache[index] = (read_image(photo_path, 3, self.image_size),
                                  read_image(sketch_path, 1, self.image_size))
        return self._cache[index]


class PhotoDataset(torch.utils.data.Dataset):
    """Photo tensors (unpaired photos: no sketch); decoded on first use and kept in memory."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths = tuple(paths)
        self.image_size = image_size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = range(len(self.paths))[index]
        if index not in self._cache:
            self._cache[index] = read_image(self.paths[index], 3, self.image_size)
        return self._cache[index]


def _read_meta(root: Path, problems: list[str]) -> dict[str, str]:
    path = root / "studio.json"
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        problems.append(f"studio.json: cannot be read ({err})")
        return {}
    except json.JSONDecodeError as err:
        problems.append(f"studio.json: invalid JSON ({err.msg} at line {err.lineno}, column {err.colno})")
        return {}
    if not isinstance(meta, dict):
        problems.append(f"studio.json: must be a JSON object, got {type(meta).__name__}")
        return {}
    for key in STUDIO_FIELDS:
        if key in meta and not isinstance(meta[key], str):
            problems.append(f"studio.json: {key!r} must be a string, got {meta[key]!r}")
    return {key: meta[key] for key in STUDIO_FIELDS if isinstance(meta.get(key), str)}


def _index_folder(root: Path, kind: str, problems: list[str], *, follow_symlinks: bool, min_size: int,
                  max_pixels: int) -> dict[str, Path]:
    """Usable images of one folder by stem; duplicates, outside links and unreadable files become problems."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in list_images(root / kind):
        by_stem[path.stem].append(path)
    usable = {}
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            names = [f"{kind}/{p.name}" for p in paths]
            problems.append(f"{', '.join(names[:-1])} and {names[-1]}: duplicate stem {stem!r}")
        broken = [msg for p in paths if (msg := _file_problem(p, root, f"{kind}/{p.name}", follow_symlinks,
                                                              min_size, max_pixels))]
        problems.extend(broken)
        if len(paths) == 1 and not broken:
            usable[stem] = paths[0]
    return usable


def _file_problem(path: Path, root: Path, label: str, follow_symlinks: bool, min_size: int,
                  max_pixels: int) -> str | None:
    if not follow_symlinks and (target := outside_link(path, root)):
        return f"{label}: {target}"
    return decode_problem(path, label, min_size, max_pixels)


def _match(photos: dict[str, Path], sketches: dict[str, Path], root: Path,
           problems: list[str]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(pairs by stem, photos without a sketch), sorted. A sketch without a photo is a problem (no term can
    use it) unless its own folder already has an issue with that stem."""
    photo_stems = {p.stem for p in list_images(root / "photos")}
    sketch_stems = {p.stem for p in list_images(root / "sketches")}
    for stem in sorted(set(sketches) - photo_stems):
        problems.append(f"sketches/{sketches[stem].name}: no matching photo")
    unpaired = [photos[stem] for stem in sorted(set(photos) - sketch_stems)]
    return [(photos[stem], sketches[stem]) for stem in sorted(set(photos) & set(sketches))], unpaired


def _to_array(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT:
        gray = np.asarray(img, dtype=np.float32) / 65535.0
        return np.clip(gray, 0.0, 1.0)[..., None]
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + (1.0 - alpha)
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float32)[..., None] / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _reduced(img: Image.Image, size: int) -> Image.Image:
    """Box-shrink by the largest integer factor that keeps the short side >= ``size``; palette indices and
    colour keys (``transparency``) cannot be averaged, so those images keep their size."""
    factor = min(img.size) // size
    if factor < 2 or img.mode not in _REDUCIBLE or "transparency" in img.info:
        return img
    return img.reduce(factor)


def _match_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.shape[-1] == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=-1)
    # ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
    return (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]


def _center_square(tensor: torch.Tensor) -> torch.Tensor:
    height, width = tensor.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return tensor[:, top:top + side, left:left + side]
