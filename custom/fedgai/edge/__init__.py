"""Sketching on a designer's machine: the compressed generator, export, whole-photo sketching, and style fusion
(``style_blend``: ``fedgai share-style``, ``fedgai fuse``).

Torch-free modules (``framing``, ``runtime``, ``runners``) run an exported ONNX model with onnxruntime, numpy and Pillow
only; the torch parts (``sketcher``, ``lite``, ``distill``, ``export``, ``style_blend``) load lazily, so importing this
package never pulls torch in by itself.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedgai.edge.framing import expand_inputs, sketch_files
from fedgai.edge.runners import open_runner
from fedgai.edge.runtime import OnnxSketcher

_LAZY = {
    "Sketcher": "fedgai.edge.sketcher",
    "CompressedGenerator": "fedgai.edge.lite",
    "Distiller": "fedgai.edge.distill",
    "export_model": "fedgai.edge.export",
}

__all__ = ["OnnxSketcher", "expand_inputs", "open_runner", "sketch_files", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
