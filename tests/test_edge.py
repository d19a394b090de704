"""Edge deployment: compressed generator, distillation with resume, export round-trip, whole-photo sketching."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from fedgai.cli import main
from fedgai.config import ConfigError, profile
from fedgai.data import load_studio
from fedgai.data.split import StudioSplit, split_studio
from fedgai.edge import OnnxSketcher, Sketcher
from fedgai.edge.distill import Distiller
from fedgai.edge.lite import CompressedGenerator
from fedgai.edge.sketcher import StudioModel, TorchScriptSketcher
from fedgai.models import EFFNET_TAPS, SketchGenerator, StyledSketchGenerator, build_gan
from fedgai.trainer import StudioTrainer

REPO = Path(__file__).resolve().parents[1]
FAST_EDGE = ["--epochs", "1", "--width", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def teacher(studio_dir, tmp_path_factory) -> Path:
    """A full generator trained for one epoch with the test profile: RUN_DIR/checkpoints/last.pt."""
    torch.set_num_threads(1)
    trainer = StudioTrainer(profile("test"), studio_dir, tmp_path_factory.mktemp("teacher"))
    trainer.train_epochs(1)
    trainer.save_checkpoint()
    trainer.close()
    return trainer.run_dir


@pytest.fixture(scope="module")
def compressed(teacher, studio_dir) -> Path:
    out = teacher / "compressed.pt"
    assert main(["compress", "--model", str(teacher), "--studio", str(studio_dir), "--out", str(out), *FAST_EDGE]) == 0
    return out


@pytest.fixture(scope="module")
def exported(compressed) -> Path:
    out = compressed.parent / "export"
    assert main(["export", "--model", str(compressed), "--out", str(out)]) == 0
    return out


def macs(module: torch.nn.Module, *args) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args)
    return counter.get_total_flops() // 2


def test_compressed_generator_is_much_smaller_than_the_full_one():
    """Default edge width vs the quick profile's decoder, on EfficientNet-Lite0's taps at 128 px."""
    cfg = profile("quick")
    channels, strides = (16, 24, 40, 112), (2, 4, 8, 16)
    taps = [torch.randn(1, c, 128 // s, 128 // s) for c, s in zip(channels, strides, strict=True)]
    full = SketchGenerator(channels, strides[0], cfg.model.decoder_width).eval()
    lite = CompressedGenerator(channels, strides[0], cfg.edge.width).eval()
    assert len(EFFNET_TAPS) == len(channels)
    assert lite(taps).shape == full(taps).shape == (1, 1, 128, 128)
    n_full, n_lite = (sum(p.numel() for p in m.parameters()) for m in (full, lite))
    assert n_lite * 4 <= n_full
    assert macs(lite, taps) * 4 <= macs(full, taps)


def test_compress_refuses_to_overwrite_and_resumes(teacher, studio_dir, tmp_path, capsys):
    out = tmp_path / "edge" / "c.pt"
    args = ["compress", "--model", str(teacher / "checkpoints" / "last.pt"), "--studio", str(studio_dir),
            "--out", str(out), *FAST_EDGE]
    assert main(args) == 0
    assert torch.load(out, weights_only=True)["epoch"] == 1
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "epoch 1/2" in printed
    assert "epoch=2" in printed and "epoch=1 " not in printed  # epoch 1 is not trained again
    state = torch.load(out, weights_only=True)
    assert state["epoch"] == 2 and state["metadata"]["compressed"]


def test_compressed_checkpoint_keeps_the_studio_sketch_statistics(teacher, compressed):
    full, lite = Sketcher(teacher, "cpu"), Sketcher(compressed, "cpu")
    assert isinstance(lite.generator, CompressedGenerator)
    for name, value in full.generator.adain.state_dict().items():
        assert torch.equal(lite.generator.adain.state_dict()[name], value)


def test_export_round_trip_matches_eager(compressed, exported):
    photos = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)  # not the export's example shape
    eager = Sketcher(compressed, "cpu").run(photos)
    scripted = TorchScriptSketcher(exported / "sketcher.ts", "cpu")
    onnx = OnnxSketcher(exported / "sketcher.onnx", "cpu")
    assert eager.shape == (1, 1, 64, 96) and eager.std() > 0
    assert np.abs(scripted(photos) - eager).max() < 1e-4
    assert np.abs(onnx(photos) - eager).max() < 1e-4
    for spec in (scripted.spec, onnx.spec):
        assert spec["generator"] == "compressed" and spec["input"]["name"] == "photo"


def photo_folder(root: Path) -> Path:
    folder = root / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"wide": (640, 360), "tall": (300, 600), "huge": (2000, 2000)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.jpg")
    (folder / "notes.txt").write_text("not a photo")
    return folder


def test_sketch_with_exported_model_keeps_every_photo_whole(exported, tmp_path, caplog):
    photos, out = photo_folder(tmp_path), tmp_path / "sketches"
    assert main(["sketch", "--model", str(exported / "sketcher.onnx"), str(photos), "--out", str(out),
                 "--device", "cpu"]) == 0
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"wide.png": (640, 360), "tall.png": (300, 600), "huge.png": (1024, 1024)}
    assert all(Image.open(p).mode == "L" for p in out.iterdir())
    assert "notes.txt" in caplog.text  # skipped with a warning, not a failure

    small = tmp_path / "small"
    assert main(["sketch", "--model", str(exported / "sketcher.ts"), str(photos / "wide.jpg"),
                 str(photos / "tall.jpg"), "--out", str(small), "--size", "320", "--device", "cpu"]) == 0
    assert {p.name: Image.open(p).size for p in small.iterdir()} == {"wide.png": (320, 180), "tall.png": (160, 320)}


def test_onnx_sketching_runs_without_torch(exported, tmp_path):
    photos, out = photo_folder(tmp_path), tmp_path / "out"
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "from pathlib import Path\n"
        "from fedgai.edge import open_runner, sketch_files\n"
        f"run = open_runner(Path({str(exported / 'sketcher.onnx')!r}), 'cpu')\n"
        f"print(len(sketch_files(run, [Path({str(photos / 'tall.jpg')!r})], Path({str(out)!r}), progress=False)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "custom")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert Image.open(out / "tall.png").size == (300, 600)


def bad_models(root: Path) -> dict[str, tuple[Path, str]]:
    (root / "run").mkdir()
    Image.new("RGB", (64, 64)).save(root / "photo.png")
    (root / "notes.txt").write_text("hello")
    torch.save({"weights": torch.zeros(2)}, root / "other.pt")
    return {"folder": (root / "run", "checkpoints/last.pt"), "image": (root / "photo.png", "is an image"),
            "text": (root / "notes.txt", "not a fedgai checkpoint"), "other": (root / "other.pt", "not a fedgai")}


@pytest.mark.parametrize("kind", ["folder", "image", "text", "other"])
def test_bad_model_is_a_clear_error_and_leaves_no_out_folder(kind, tmp_path, capsys):
    model, message = bad_models(tmp_path)[kind]
    out = tmp_path / "out"
    assert main(["sketch", "--model", str(model), str(tmp_path / "photo.png"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_compress_after_federation_runs_only_after_the_last_round(studio_dir, tmp_path):
    from fedgai.edge.distill import compress_after_federation

    cfg = profile("test").with_overrides({"edge.epochs": 1, "edge.width": 8, "edge.compress_after_training": True})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path / "site")
    assert compress_after_federation(trainer, cfg.fed.rounds - 2) is None
    out = compress_after_federation(trainer, cfg.fed.rounds - 1)
    assert out == tmp_path / "site" / "checkpoints" / "compressed.pt"
    assert Sketcher(out, "cpu")(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("setting", [{"edge.width": 0}, {"edge.lr": 0.0}, {"edge.epochs": 0},
                                     {"edge.distill": 0.0, "edge.pixel_l1": 0.0, "edge.gram": 0.0}])
def test_edge_settings_are_validated(setting):
    with pytest.raises(ConfigError, match="edge"):
        profile("test").with_overrides(setting)


def distilled(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out, weights_only=True)["generator"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def studio_copy(studio_dir: Path, root: Path, stems: set[str], sketches_only: bool = False) -> Path:
    """A copy of the studio whose pairs `stems` are replaced by noise (only their sketches: by blank pages)."""
    copy = root / studio_dir.name
    shutil.copytree(studio_dir, copy)
    rng = np.random.default_rng(1)
    for stem in stems:
        sketch = next((copy / "sketches").glob(f"{stem}.*"))
        Image.new("L", Image.open(sketch).size, 255).save(sketch)
        if not sketches_only:
            photo = next((copy / "photos").glob(f"{stem}.*"))
            size = Image.open(photo).size
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(photo)
    return copy


def test_compress_reads_the_training_split_only(teacher, compressed, studio_dir, tmp_path):
    split = StudioSplit.load(teacher / "split.json")
    held_out = studio_copy(studio_dir, tmp_path / "held-out", set(split.val) | set(split.test))
    trained = studio_copy(studio_dir, tmp_path / "trained", set(split.train[:3]))
    for name, studio in {"held-out": held_out, "trained": trained}.items():
        assert main(["compress", "--model", str(teacher), "--studio", str(studio), "--out",
                     str(tmp_path / f"{name}.pt"), *FAST_EDGE]) == 0
    assert same_weights(distilled(tmp_path / "held-out.pt"), distilled(compressed))  # val/test never read
    assert not same_weights(distilled(tmp_path / "trained.pt"), distilled(compressed))


def test_compress_finds_the_studio_folder_the_run_recorded(teacher, compressed, tmp_path):
    assert main(["compress", "--model", str(teacher), "--out", str(tmp_path / "c.pt"), *FAST_EDGE]) == 0
    assert same_weights(distilled(tmp_path / "c.pt"), distilled(compressed))


def test_compress_with_a_moved_studio_folder_or_another_studio_is_a_clear_error(teacher, demo_root, tmp_path,
                                                                               capsys):
    moved = tmp_path / "run"
    shutil.copytree(teacher / "checkpoints", moved / "checkpoints")
    shutil.copy(teacher / "split.json", moved / "split.json")
    state = torch.load(moved / "checkpoints" / "last.pt", weights_only=True)
    state["metadata"]["studio_dir"] = str(tmp_path / "moved-away")
    torch.save(state, moved / "checkpoints" / "last.pt")
    assert main(["compress", "--model", str(moved), "--out", str(tmp_path / "c.pt"), *FAST_EDGE]) == 2
    err = capsys.readouterr().err
    assert "moved-away" in err and "--studio" in err and "Traceback" not in err
    other = sorted(p for p in demo_root.iterdir() if p.is_dir())[1]
    assert main(["compress", "--model", str(teacher), "--studio", str(other), "--out", str(tmp_path / "c.pt"),
                 *FAST_EDGE]) == 2
    assert "trained on" in capsys.readouterr().err and not (tmp_path / "c.pt").exists()


def test_evaluate_scores_the_compressed_generator_beside_the_full_one_on_the_same_test_pairs(teacher, compressed,
                                                                                            tmp_path, capsys):
    run = Path(shutil.copytree(teacher, tmp_path / "run"))
    student = run / "checkpoints" / "compressed.pt"
    assert main(["compress", "--model", str(run), "--out", str(student), *FAST_EDGE]) == 0  # the recorded studio
    fast = ["--feature-size", "64", "--style-pairs", "12", "--gallery-rows", "2", "--threads", "1"]
    assert main(["evaluate", str(run), str(student), "--out", str(tmp_path / "eval"), *fast]) == 0
    with (tmp_path / "eval" / "metrics.csv").open() as fh:
        full, lite = csv.DictReader(fh)
    assert lite["run"] == full["run"] + " compressed" and lite["studio"] == full["studio"]
    assert lite["n_test"] == full["n_test"] and lite["SSIM"] != full["SSIM"]  # same pairs, other generator
    assert main(["evaluate", str(compressed), "--out", str(tmp_path / "loose")]) == 2  # no run folder around it
    assert "no test pairs to score it on" in capsys.readouterr().err


@pytest.mark.parametrize("dp", ["record", "none"])
def test_under_record_level_dp_compress_reads_photos_only(dp, studio_dir, tmp_path):
    """Record-level DP: the student depends on the private teacher and the training photos, never on a sketch
    (post-processing); without DP the real sketches are part of its loss."""
    cfg = profile("test").with_overrides({"privacy.dp": dp})
    gan = build_gan(cfg)
    teacher = StudioModel(cfg, {"studio": studio_dir.name}, gan.encoder, gan.generator, compressed=False)
    split = split_studio(load_studio(studio_dir), 0, 0.1, 0.1)
    blank = studio_copy(studio_dir, tmp_path, set(split.train), sketches_only=True)
    students = []
    for name, studio in {"real": studio_dir, "blank": blank}.items():
        distiller = Distiller(teacher, studio, split.train, tmp_path / f"{name}.pt", "cpu", {"epochs": 1, "width": 8})
        distiller.train(progress=False)
        students.append(distilled(tmp_path / f"{name}.pt"))
    assert same_weights(*students) == (dp == "record")


# ----------------------------------------------------------------------------------------------- styled renderer
STYLED_LOCAL = {"model.generator": "styled", "fed.mode": "local", "train.round_steps": 2, "train.head_steps": 1,
                "train.max_pairs": 6}


@pytest.fixture(scope="module")
def styled_teacher(studio_dir, tmp_path_factory) -> Path:
    """A styled renderer (model.generator styled) after one tiny epoch: RUN_DIR with checkpoints/last.pt."""
    torch.set_num_threads(1)
    trainer = StudioTrainer(profile("test").with_overrides(STYLED_LOCAL), studio_dir, tmp_path_factory.mktemp("styled"))
    trainer.train_epochs(1)
    trainer.save_checkpoint()
    trainer.close()
    return trainer.run_dir


def test_a_styled_checkpoint_sketches_whole_photos_in_its_own_statistics(styled_teacher, tmp_path):
    sketcher = Sketcher(styled_teacher, "cpu")
    assert isinstance(sketcher.generator, StyledSketchGenerator)
    photos = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        taps = sketcher.encoder(photos)
        own = sketcher.generator(taps, sketcher.generator.adain.stats())
        other = sketcher.generator(taps, [(m + 1, s * 2) for m, s in sketcher.generator.adain.stats()])
    assert torch.equal(sketcher(photos), own) and not torch.allclose(own, other)
    out = tmp_path / "sketches"
    assert main(["sketch", "--model", str(styled_teacher), str(photo_folder(tmp_path) / "wide.jpg"), "--out", str(out),
                 "--size", "96", "--device", "cpu"]) == 0
    assert Image.open(out / "wide.png").size == (96, 54)


def test_a_styled_export_bakes_in_its_own_statistics_and_runs_in_onnxruntime(styled_teacher, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--model", str(styled_teacher), "--out", str(out)]) == 0
    photos = np.random.default_rng(1).random((2, 3, 64, 96), dtype=np.float32)
    eager = Sketcher(styled_teacher, "cpu").run(photos)
    scripted, onnx = TorchScriptSketcher(out / "sketcher.ts", "cpu"), OnnxSketcher(out / "sketcher.onnx", "cpu")
    assert eager.std() > 0
    assert np.abs(scripted(photos) - eager).max() < 1e-4 and np.abs(onnx(photos) - eager).max() < 1e-4
    assert [i.name for i in onnx.session.get_inputs()] == ["photo"]  # the statistics are constants of the graph
    assert onnx.spec["model_generator"] == scripted.spec["model_generator"] == "styled"
    sketches = tmp_path / "sketches"
    assert main(["sketch", "--model", str(out / "sketcher.onnx"), str(photo_folder(tmp_path) / "tall.jpg"),
                 "--out", str(sketches), "--device", "cpu"]) == 0
    assert Image.open(sketches / "tall.png").size == (300, 600)


def test_a_styled_teacher_distils_into_the_depthwise_student_at_its_own_statistics(styled_teacher, tmp_path, capsys):
    out = tmp_path / "compressed.pt"
    assert main(["compress", "--model", str(styled_teacher), "--out", str(out), *FAST_EDGE, "--epochs", "3"]) == 0
    losses = [float(line.split("distill=")[1].split()[0]) for line in capsys.readouterr().out.splitlines()
              if "distill=" in line]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns the styled teacher's drawing
    teacher, student = Sketcher(styled_teacher, "cpu"), Sketcher(out, "cpu")
    assert isinstance(student.generator, CompressedGenerator) and student.model.cfg.model.generator == "styled"
    for name, value in teacher.generator.adain.state_dict().items():
        assert torch.equal(student.generator.adain.state_dict()[name], value)
    assert student(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
