"""What the CLI does with run folders, studio folders, devices and interruptions: exit codes and messages."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from fedgai.cli import main
from fedgai.config import ConfigError, LossConfig, profile
from fedgai.data import StudioDataError, load_studio, read_image


def _train(studio: Path, out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train-local", "--studio", str(studio), "--out", str(out), "--epochs", str(epochs),
            "--profile", "test", "--device", "cpu", *extra]


def _history(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "history.jsonl").read_text().splitlines()]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png(path: Path, side: int = 8_000) -> Path:
    """A PNG whose header declares side x side px (its data would not even decode)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def studio(studio_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the demo studio (tests add files to it)."""
    return Path(shutil.copytree(studio_dir, tmp_path / "studio"))


# ---------------------------------------------------------------- studio data safety


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(studio, capsys):
    _huge_png(studio / "photos" / "huge.png")
    _huge_png(studio / "sketches" / "huge.png")
    assert main(["data", "check", str(studio)]) == 2
    err = capsys.readouterr().err
    assert "photos/huge.png: 8000x8000 px (64 MP) is above the limit of 40 MP" in err
    assert "sketches/huge.png" in err and "Traceback" not in err
    with pytest.raises(StudioDataError, match="above the limit"):
        read_image(studio / "photos" / "huge.png", 3, 64)


def test_large_images_are_shrunk_before_the_float_copy_and_match_a_full_decode(tmp_path):
    smooth = np.asarray(Image.effect_mandelbrot((900, 600), (-2.0, -1.0, 1.0, 1.0), 60).convert("RGB"))
    path = tmp_path / "big.png"
    Image.fromarray(smooth).filter(ImageFilter.GaussianBlur(6)).save(path)
    full = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)[:, :, 150:750]
    reference = F.interpolate(full[None], size=(64, 64), mode="bicubic", antialias=True)[0] * 2 - 1
    shrunk = read_image(path, 3, 64)  # reduced 9x as 8-bit before the float copy
    assert shrunk.shape == (3, 64, 64)
    assert (shrunk - reference.clamp(-1, 1)).abs().mean() < 0.02


def test_links_out_of_the_studio_are_problems_unless_allowed(studio, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(studio / "photos" / "0001.png", outside / "0001.png")
    (studio / "photos" / "0001.png").symlink_to(outside / "0001.png")
    (studio / "extra").mkdir()
    shutil.move(studio / "photos" / "0002.png", studio / "extra" / "0002.png")
    (studio / "photos" / "0002.png").symlink_to(studio / "extra" / "0002.png")  # stays inside: fine
    assert main(["data", "check", str(studio)]) == 2
    err = capsys.readouterr().err
    assert "photos/0001.png: links to" in err and "outside the studio folder" in err and "0002" not in err
    assert main(["data", "check", str(studio), "--follow-symlinks"]) == 0
    assert len(load_studio(studio, follow_symlinks=True).pairs) == len(list((studio / "sketches").iterdir()))


def test_train_local_never_writes_into_the_studio(studio, capsys):
    out = studio / "runs" / "one"
    assert main(_train(studio, out)) == 2
    assert "fedgai never writes into a studio folder" in capsys.readouterr().err
    assert not (studio / "runs").exists()


def test_a_failed_command_leaves_no_empty_out_folder(tmp_path, capsys):
    (tmp_path / "bad" / "photos").mkdir(parents=True)
    out = tmp_path / "run"
    assert main(_train(tmp_path / "bad", out)) == 2
    assert "sketches/: folder is missing" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- reruns


def test_reruns_need_resume_or_overwrite(studio, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(studio, run)) == 0
    assert main(_train(studio, run, epochs=2)) == 2
    assert "already holds a training run; pass --resume" in capsys.readouterr().err
    assert _history(run) == [1]
    assert main(_train(studio, run, "--resume", epochs=2)) == 0
    assert _history(run) == [1, 2]
    (run / "dp_ledger.json").write_text("{}")  # privacy already spent on the studio's data
    assert main(_train(studio, run, "--overwrite")) == 0
    assert "--overwrite: removed" in capsys.readouterr().out
    assert _history(run) == [1] and (run / "dp_ledger.json").read_text() == "{}"
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # plain tensors and containers
    assert state["epoch"] == 1


def test_resume_refuses_another_size_another_studio_or_no_checkpoint(studio, demo_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(studio, run)) == 0
    assert main(_train(studio, run, "--resume", "--image-size", "64", epochs=2)) == 2
    assert "other model settings (image_size 32 -> 64)" in capsys.readouterr().err
    other = sorted(p for p in demo_root.iterdir() if p.is_dir())[1]
    assert main(_train(other, run, "--resume", epochs=2)) == 2
    assert f"was trained on studio {studio.resolve()}" in capsys.readouterr().err
    assert main(_train(studio, tmp_path / "new", "--resume")) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
    assert _history(run) == [1] and not (tmp_path / "new").exists()


def test_ctrl_c_in_train_local_says_how_to_resume(studio, tmp_path, capsys, monkeypatch):
    from fedgai.trainer import StudioTrainer

    original = StudioTrainer.train_epochs

    def interrupted_after_one(self, epochs, tag=""):
        if self.epoch >= 1:
            raise KeyboardInterrupt
        return original(self, epochs, tag)

    monkeypatch.setattr(StudioTrainer, "train_epochs", interrupted_after_one)
    run = tmp_path / "run"
    assert main(_train(studio, run, epochs=3)) == 130
    err = capsys.readouterr().err
    assert "interrupted; resume with: fedgai train-local" in err and err.rstrip().endswith("--resume")
    assert "Traceback" not in err and _history(run) == [1]


# ---------------------------------------------------------------- simulate


def test_simulate_refuses_one_studio_as_data_and_too_few_studios(studio, tmp_path, capsys):
    workspace = tmp_path / "ws"
    assert main(["simulate", "--workspace", str(workspace), "--data", str(studio), "--studios", "2"]) == 2
    assert "looks like one studio; pass the folder that holds the studios" in capsys.readouterr().err
    assert main(["simulate", "--workspace", str(workspace), "--studios", "1", "--profile", "quick"]) == 2
    assert "at least fed.min_clients = 2 studios" in capsys.readouterr().err
    assert not workspace.exists()


def test_simulate_refuses_an_earlier_run_and_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import fedgai.federated.simulator.simulate as sim

    workspace = tmp_path / "ws"
    (workspace / "server_state").mkdir(parents=True)
    (workspace / "studios" / "studio-01").mkdir(parents=True)
    args = ["simulate", "--workspace", str(workspace), "--studios", "2", "--profile", "test"]
    assert main(args) == 2
    assert "already holds a simulation; pass --resume" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sim, "run_simulator", interrupted)
    assert main([*args, "--resume"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"resume with: fedgai {' '.join(args)} --resume")
    assert main([*args, "--overwrite"]) == 130
    assert not (workspace / "studios").exists()


def test_one_studio_federation_warns_loudly(caplog):
    from fedgai.federated.simulator.simulate import check_request

    with caplog.at_level(logging.WARNING):
        check_request(profile("test"), 1, None)
    assert "ONE studio is not a federation" in caplog.text


# ---------------------------------------------------------------- devices and CLIP


def test_device_setting_is_validated_and_a_missing_gpu_is_a_clear_error(studio, tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.device"):
        profile("test").with_overrides({"train.device": "gpu"})
    with pytest.raises(SystemExit):
        main(_train(studio, tmp_path / "run", "--device", "gpu"))
    assert "expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the missing-GPU message cannot be shown here")
    assert main([*_train(studio, tmp_path / "run"), "--device", "cuda"]) == 2
    assert "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_offline_clip_warns_once_and_never_asks_the_hub(tmp_path, monkeypatch, caplog, fresh_clip_checks):
    import huggingface_hub
    import open_clip

    from fedgai import losses

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip copy either
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("the hub was asked"))
    with caplog.at_level(logging.INFO):
        first = losses.load_clip(LossConfig())
        second = losses.load_clip(LossConfig())
    assert first[0] is None and second[0] is None and "not in the local cache" in first[1].reason
    assert [r.levelname for r in caplog.records if r.levelno >= logging.WARNING] == ["WARNING"]
