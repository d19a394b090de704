"""The runner behind `fedgai sketch --model`: an exported ONNX file runs torch-free (runtime.py); a
TorchScript file or a training checkpoint runs through torch (sketcher.py, imported only then)."""

from __future__ import annotations

from pathlib import Path

from fedgai.edge.framing import BatchRunner
from fedgai.edge.runtime import DEVICES, OnnxSketcher, resolve_model


def open_runner(model: Path, device: str = "auto") -> BatchRunner:
    """The runner for --model; ONNX files never import torch."""
    if device not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    kind, path = resolve_model(model)
    if kind == "onnx":
        return OnnxSketcher(path, device)
    from fedgai.edge.sketcher import Sketcher, TorchScriptSketcher

    return TorchScriptSketcher(path, device) if kind == "torchscript" else Sketcher(path, device).run
