"""`fedgai evaluate` end to end: two studios trained locally and "federated", compared in one report that a
real headless browser renders (images decoded, tables filled)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import headless_chromium

from fedgai.cli import main
from fedgai.evaluation.report import fmt_bytes
from fedgai.evaluation.runs import find_studio_folders
from fedgai.federated.studio.client import save_round
from fedgai.trainer import StudioTrainer


class CodeOnLoad:
    """Unpickling this object creates `marker`: stands in for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


FAST = ["--feature-size", "64", "--style-pairs", "12", "--gallery-rows", "2", "--threads", "1"]
UPLOAD, DOWNLOAD, EPSILON = 4096, 8192, 2.5


def studios(demo_root: Path) -> list[Path]:
    return sorted(p for p in demo_root.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def runs(demo_root, tmp_path_factory) -> dict[str, Path]:
    """train-local runs of both demo studios, and a simulator-shaped workspace of the same studios: each site
    folder written by the client's own per-round writer, plus one round summary in the controller's format."""
    from fedgai.config import profile

    root = tmp_path_factory.mktemp("runs")
    for studio in studios(demo_root):
        assert main(["train-local", "--profile", "test", "--studio", str(studio), "--epochs", "1",
                     "--out", str(root / "local" / studio.name)]) == 0
    workspace = root / "sim"
    contributions = {}
    for i, studio in enumerate(studios(demo_root), start=1):
        site = f"studio-{i:02d}"
        trainer = StudioTrainer(profile("test"), studio, workspace / "studios" / site, device="cpu")
        save_round(trainer, 0, trainer.train_epochs(1))
        trainer.close()
        contributions[site] = {"accepted": True, "num_samples": trainer.num_samples, "bytes": UPLOAD,
                               "metrics": {}, "dp_epsilon": EPSILON}
    summary = {"round": 0, "mode": "fedgai", "aggregated": 2, "contributions": contributions, "dropped": [],
               "no_result": [], "global_update_norm": 0.5, "bytes_sent_per_site": DOWNLOAD}
    out = workspace / "nvflare" / "server" / "simulate_job" / "fedgai"
    out.mkdir(parents=True)
    (out / "round-000.json").write_text(json.dumps(summary))
    shutil.copytree(demo_root, workspace / "data")  # where `fedgai simulate` keeps its generated studios
    return {"local": root / "local", "sim": workspace}


def test_studio_folders_are_found_in_every_layout(runs):
    assert [p.name for p in find_studio_folders(runs["sim"])] == ["studio-01", "studio-02"]
    one = sorted((runs["local"]).iterdir())[0]
    assert find_studio_folders(one) == [one]


def test_help_names_the_metrics_honestly(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "EfficientNet-Lite0" in out and "not FID" in out and "--data" in out and "report.html" in out


def test_a_train_local_run_finds_the_studio_folder_it_recorded(runs, tmp_path):
    local_run = sorted(runs["local"].iterdir())[0]
    assert main(["evaluate", str(local_run), "--out", str(tmp_path / "report"), *FAST]) == 0  # no --data
    with (tmp_path / "report" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["studio"] for r in rows] == [local_run.name] and float(rows[0]["FD-EffNetLite0"]) >= 0


def test_a_moved_studio_folder_is_a_clear_error(runs, tmp_path, capsys):
    moved = tmp_path / "run"
    shutil.copytree(sorted(runs["local"].iterdir())[0], moved)
    checkpoint = moved / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["metadata"]["studio_dir"] = str(tmp_path / "moved-away")  # the folder the run recorded is gone
    torch.save(state, checkpoint)
    assert main(["evaluate", str(moved), "--out", str(tmp_path / "no-data")]) == 2
    err = capsys.readouterr().err
    assert "no data folder for studio" in err and "moved-away" in err and "--data" in err
    assert "Traceback" not in err and not (tmp_path / "no-data").exists()


def test_a_checkpoint_that_would_run_code_is_refused_unopened(runs, tmp_path, capsys):
    planted = tmp_path / "run"
    shutil.copytree(sorted(runs["local"].iterdir())[0], planted)
    checkpoint = planted / "checkpoints" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["payload"] = CodeOnLoad(tmp_path / "code-ran")
    torch.save(state, checkpoint)
    assert main(["evaluate", str(planted), "--out", str(tmp_path / "out")]) == 2
    assert "not a fedgai studio checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "code-ran").exists()


@pytest.fixture(scope="module")
def report(runs, demo_root, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["evaluate", *map(str, sorted(runs["local"].iterdir())), str(runs["sim"]), "--data",
                     str(demo_root), "--out", str(out), *FAST])
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


def test_table_csv_and_json_compare_both_runs_per_studio(report, demo_root):
    out, printed = report
    names = [p.name for p in studios(demo_root)]
    for column in ("studio", "n test", "FD", "KD", "SSIM", "PSNR", "ink IoU", "style acc", "FD-Style", "Gram",
                   "small", "large"):
        assert column in printed
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    # the two train-local folders form one "local-only" run; the workspace is the federated one
    assert sorted((r["run"], r["studio"]) for r in rows) == sorted(
        (run, name) for run in ("local-only", "fedgai") for name in names)
    for row in rows:
        assert float(row["FD-EffNetLite0"]) >= 0 and 0 <= float(row["style_acc"]) <= 1
        assert float(row["FD-Style"]) >= 0 and float(row["Gram_dist"]) >= 0
        assert -1 <= float(row["SSIM"]) <= 1 and 0 <= float(row["ink_IoU"]) <= 1
        assert int(row["n_test"].split(".")[0]) >= 1
    data = json.loads((out / "metrics.json").read_text())
    fed = [r for r in data["results"] if r["run"] == "fedgai"]
    assert all(r["upload_bytes"] == UPLOAD and r["download_bytes"] == DOWNLOAD and r["dp_epsilon"] == EPSILON
               for r in fed)
    assert all(r["upload_bytes"] == 0 and r["dp_epsilon"] is None for r in data["results"] if r["run"] != "fedgai")
    assert {m["size_group"] for m in data["group_means"]} == {r["size_group"] for r in data["results"]}
    assert all(row["FID"] == "unavailable" or float(row["FID"]) >= 0 for row in rows)  # never a made-up number
    assert {"FD-Style", "Gram_dist"} <= data["metrics"].keys()


@pytest.mark.parametrize(("count", "shown"), [(0, "0 B"), (999, "999 B"), (4096, "4.1 kB"), (1_480_000, "1.48 MB"),
                                              (9_596_000, "9.6 MB"), (123_456_789, "123 MB")])
def test_bytes_read_in_si_units(count, shown):
    assert fmt_bytes(count) == shown


def test_report_shows_traffic_in_kb_and_mb(report):
    out, _ = report
    html = (out / "report.html").read_text()
    traffic = html[html.index("<h2>Traffic and privacy</h2>"):html.index("<h2>Galleries")]
    assert "4.1 kB" in traffic and "8.19 kB" in traffic and "e+0" not in traffic


@pytest.fixture(scope="module")
def browser():
    yield from headless_chromium()


def test_report_renders_in_a_browser_with_every_image_loaded(report, browser, demo_root):
    out, _ = report
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: works offline, mailable
    browser.get((out / "report.html").resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    # gallery: 2 studios x 2 pairs x (photo, local-only, fedgai, real); plus one curve plot per run
    assert len(images) == 2 * 2 * 4 + 2
    assert all(complete and width > 0 for complete, width, _ in images), images
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.metrics tbody tr')).map(r => r.innerText);")
    assert len(rows) == 4 and all(any(s.name in row for s in studios(demo_root)) for row in rows)
    headers = browser.execute_script(
        "return Array.from(document.querySelectorAll('table.gallery thead th')).map(h => h.innerText);")
    assert headers[:5] == ["test pair", "photo", "local-only", "fedgai", "real sketch"]
