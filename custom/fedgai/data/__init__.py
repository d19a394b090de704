"""Studio data: validated studio folders, the generated demo federation and photo sketchification."""

from fedgai.data.demo import DEMO_STYLES, make_demo
from fedgai.data.sketchify import SKETCH_STYLES, sketchify_folder, sketchify_image
from fedgai.data.studio import (
    MIN_SIZE,
    PhotoDataset,
    SketchPairDataset,
    Studio,
    StudioDataError,
    list_images,
    load_studio,
    read_image,
)

__all__ = [
    "DEMO_STYLES",
    "MIN_SIZE",
    "SKETCH_STYLES",
    "PhotoDataset",
    "SketchPairDataset",
    "Studio",
    "StudioDataError",
    "list_images",
    "load_studio",
    "make_demo",
    "read_image",
    "sketchify_folder",
    "sketchify_image",
]
