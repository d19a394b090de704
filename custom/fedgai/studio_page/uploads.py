"""What a browser may send the page, and where it is kept: in memory, never on disk.

An upload is checked in the order that costs least: its declared size, the bytes actually received, the pixel
count its header declares (the 40 MP rule of studio folders, before a pixel decodes), then a full decode. Its
file name is display text only: it names the download, sanitised, and never becomes a path.
"""

from __future__ import annotations

import io
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Generic, TypeVar

from PIL import Image

from fedgai.data.studio import pixel_problem
from fedgai.edge.framing import DECODE_ERRORS, output_size, read_photo
from fedgai.safe_paths import UnsafePathError, safe_name

KEEP_PHOTOS = 48  # photos held for re-drawing (<= 3 MB each at 1024 px); the oldest is forgotten first
KEEP_SKETCHES = 128  # rendered sketches (PNG bytes) kept for repeated slider positions and downloads
NAME_CHARS = 80
K, V = TypeVar("K"), TypeVar("V")


class PageError(ValueError):
    """A request the page refuses (an upload, a photo it no longer holds, a blend it cannot do); the message is
    shown to the designer as is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Photo:
    """A decoded upload, already at the size its sketch will have (so re-drawing never re-reads the file)."""

    name: str
    image: Image.Image

    @property
    def download(self) -> str:
        return download_name(self.name)


def display_name(name: str) -> str:
    """The name a designer sees: the last path part only, shortened, for messages and titles."""
    return PurePosixPath(name.replace("\\", "/")).name[:NAME_CHARS] or "photo"


def download_name(name: str) -> str:
    """`<stem>-sketch.png` from the uploaded name, with only letters, digits, '.', '_' and '-' left."""
    stem = PurePosixPath(display_name(name)).stem
    try:
        return f"{safe_name(stem)}-sketch.png"
    except UnsafePathError:
        return "photo-sketch.png"


def too_big(size: int, max_bytes: int, name: str) -> PageError:
    return PageError(f"{display_name(name)}: {size / 1e6:.1f} MB is more than this page takes "
                       f"({max_bytes / 1e6:g} MB); downscale it first", status=413)


def decode_upload(data: bytes, name: str, max_pixels: int, size: int | None) -> Photo:
    """The upload as an upright RGB photo at its sketch's size; PageError says what is wrong with it."""
    label = display_name(name)
    if not data:
        raise PageError(f"{label}: the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as header:
            problem = pixel_problem(header, label, max_pixels)
    except Image.DecompressionBombError:
        problem = f"{label}: too large to decode safely"
    except DECODE_ERRORS:  # not an image: read_photo below says so
        problem = None
    if problem:
        raise PageError(problem, status=413)
    photo = read_photo(io.BytesIO(data))  # type: ignore[arg-type]  # Pillow opens a path or a file object
    if photo is None:
        raise PageError(f"{label}: not an image this page can read (a photo as PNG, JPEG or WebP), or the file "
                          "is broken", status=415)
    width, height = output_size(*photo.size, size)
    if photo.size != (width, height):
        photo = photo.resize((width, height), Image.Resampling.LANCZOS)
    return Photo(label, photo)


class Memory(Generic[K, V]):
    """A small thread-safe LRU: the page's only storage, bounded so a long session cannot fill the laptop."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
            return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def new_id() -> str:
    """An unguessable id: another browser tab or host cannot enumerate someone's photos."""
    return secrets.token_urlsafe(12)
