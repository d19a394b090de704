"""Running an exported sketcher with onnxruntime + numpy only, and picking the right runner for --model.

Nothing here imports torch: a designer's laptop needs onnxruntime, numpy and Pillow to sketch with an
exported model. Checkpoints and TorchScript files are handed to fedgai.edge.sketcher (torch) lazily.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fedgai.edge.framing import DECODE_ERRORS, MULTIPLE
from fedgai.layout import CHECKPOINT

SPEC_KEY = "fedgai_spec"
SPEC_FORMAT = "fedgai-sketcher/1"
INPUT_NAME, OUTPUT_NAME = "photo", "sketch"
DEVICES = ("auto", "cpu", "cuda")


def io_spec(metadata: dict[str, Any]) -> dict[str, Any]:
    """What an exported file expects and returns, bundled into it (ONNX metadata / TorchScript extra file)."""
    return {
        "format": SPEC_FORMAT,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, "H", "W"], "dtype": "float32", "range": [0.0, 1.0],
                  "channels": "RGB", "multiple_of": MULTIPLE},
        "output": {"name": OUTPUT_NAME, "shape": ["N", 1, "H", "W"], "dtype": "float32", "range": [0.0, 1.0],
                   "meaning": "grayscale sketch, 1 = paper, 0 = ink"},
        **metadata,
    }


def check_spec(text: str | None, path: Path) -> dict[str, Any]:
    spec = json.loads(text) if text else {}
    if spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{path} is not a model exported by `fedgai export` (no {SPEC_FORMAT} spec inside)")
    return spec


def onnx_providers(device: str) -> list[str]:
    """auto = CUDA when this onnxruntime build has it; cuda without it is an error, not a silent CPU run."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ValueError("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda and device != "cpu" else [
        "CPUExecutionProvider"]


class OnnxSketcher:
    """An exported photo -> sketch graph (encoder, AdaIN_SD statistics, generator) in onnxruntime."""

    def __init__(self, path: str | Path, device: str = "auto"):
        import onnxruntime as ort

        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=onnx_providers(device))
        except ort.capi.onnxruntime_pybind11_state.Fail as err:  # InvalidProtobuf and load failures
            raise ValueError(f"{self.path} is not a readable ONNX model ({err})") from err
        self.spec = check_spec(self.session.get_modelmeta().custom_metadata_map.get(SPEC_KEY), self.path)

    def __call__(self, photos: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: photos.astype(np.float32)})[0]


def resolve_model(model: Path) -> tuple[str, Path]:
    """(kind, file) for --model: a run folder means its checkpoints/last.pt; kind is onnx/torchscript/checkpoint."""
    if model.is_dir():
        last = model / CHECKPOINT
        if not last.is_file():
            raise FileNotFoundError(f"{model} is a folder without checkpoints/last.pt: pass a training run "
                                    "folder, a checkpoint, or a file written by `fedgai export`")
        model = last
    if not model.is_file():
        raise FileNotFoundError(f"model checkpoint {model} does not exist")
    if model.suffix.lower() == ".onnx":
        return "onnx", model
    if zipfile.is_zipfile(model):
        with zipfile.ZipFile(model) as archive:
            names = archive.namelist()
        return ("torchscript" if any("/code/" in n for n in names) else "checkpoint"), model
    if _is_image(model):
        raise ValueError(f"{model} is an image, not a model: --model takes a checkpoint "
                         "(RUN_DIR/checkpoints/last.pt), a run folder, or an exported .onnx/.ts file")
    raise ValueError(f"{model} is not a fedgai checkpoint or exported model")


def _is_image(path: Path) -> bool:
    try:
        with Image.open(path) as img:
            img.verify()
    except DECODE_ERRORS:
        return False
    return True
