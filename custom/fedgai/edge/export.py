"""`fedgai export`: the whole photo -> sketch pipeline (frozen encoder, the studio's AdaIN_SD statistics,
generator) as one TorchScript file and one ONNX graph, each carrying its input/output spec, checked against
the eager model (ONNX with onnxruntime) before anything is written to the output folder. A styled renderer
(model.generator styled) is exported drawing in its own statistics: its mapping network and FiLM head run on
those constants inside the graph, so the exported file draws the studio's style and no other."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgai.edge.framing import MULTIPLE
from fedgai.edge.runtime import INPUT_NAME, OUTPUT_NAME, SPEC_KEY, OnnxSketcher, io_spec
from fedgai.edge.sketcher import (
    SPEC_FILE,
    SketchPipeline,
    StudioModel,
    TorchScriptSketcher,
    load_studio_model,
    quiet_torchscript,
)

ONNX_FILE, TORCHSCRIPT_FILE = "sketcher.onnx", "sketcher.ts"
# Largest |eager - exported| accepted on [0, 1] sketches: float32 reordering noise, far below one grey level.
TOLERANCE = 1e-3


class ExportMismatch(ValueError):
    """An exported file does not reproduce the eager model."""


@dataclass
class ExportResult:
    onnx: Path
    torchscript: Path
    max_diff_torchscript: float
    max_diff_onnx: float


def model_spec(model: StudioModel) -> dict:
    """``model_generator``: the run's model.generator (a compressed student's is its teacher's); either way the
    studio's own AdaIN_SD statistics are constants of the exported graph, its only input is the photo."""
    return io_spec({
        "studio": model.metadata.get("studio"),
        "encoder": model.encoder.name,
        "generator": "compressed" if model.compressed else "full",
        "model_generator": model.cfg.model.generator,
        "train_size": model.cfg.model.image_size,
    })


def export_torchscript(pipeline: SketchPipeline, example: torch.Tensor, spec: dict, path: Path) -> None:
    with torch.no_grad(), quiet_torchscript():
        traced = torch.jit.trace(pipeline, example)
        torch.jit.save(traced, str(path), _extra_files={SPEC_FILE: json.dumps(spec)})


def export_onnx(pipeline: SketchPipeline, example: torch.Tensor, spec: dict, path: Path) -> None:
    """torch.export-based ONNX with dynamic batch, height and width; the spec goes into metadata_props."""
    dims = {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.onnx.export(pipeline, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes={"photo": dims}, dynamo=True, verbose=False)
    program.model.metadata_props[SPEC_KEY] = json.dumps(spec)
    program.save(path, external_data=False)


def export_model(checkpoint: Path, out: Path) -> ExportResult:
    """Write out/sketcher.ts and out/sketcher.onnx; compare both to eager on an unseen non-square batch."""
    model = load_studio_model(checkpoint, "cpu")
    pipeline = SketchPipeline(model.encoder, model.generator).eval()
    spec = model_spec(model)
    generator = torch.Generator().manual_seed(0)
    size = model.cfg.model.image_size
    example = torch.rand(1, 3, size, size, generator=generator)
    probe = torch.rand(2, 3, 2 * MULTIPLE, 3 * MULTIPLE, generator=generator)  # other batch, shape, aspect
    with torch.no_grad():
        expected = pipeline(probe).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        staged = Path(tmp)
        export_torchscript(pipeline, example, spec, staged / TORCHSCRIPT_FILE)
        export_onnx(pipeline, example, spec, staged / ONNX_FILE)
        diffs = {name: float(abs(runner(probe.numpy()) - expected).max()) for name, runner in (
            ("TorchScript", TorchScriptSketcher(staged / TORCHSCRIPT_FILE, "cpu")),
            ("ONNX", OnnxSketcher(staged / ONNX_FILE, "cpu")))}
        worst = max(diffs, key=diffs.get)
        if diffs[worst] > TOLERANCE:
            raise ExportMismatch(f"{worst} export differs from the eager model by {diffs[worst]:.2g} "
                                 f"(tolerance {TOLERANCE}); nothing written")
        out.mkdir(exist_ok=True)
        for name in (TORCHSCRIPT_FILE, ONNX_FILE):
            shutil.move(staged / name, out / name)
    return ExportResult(out / ONNX_FILE, out / TORCHSCRIPT_FILE, diffs["TorchScript"], diffs["ONNX"])
