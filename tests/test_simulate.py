"""The simulator run people watch: one progress line per round with an ETA, a quiet console, and studios that
keep their trainer for the whole run instead of being rebuilt every round."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import fedgai.federated.simulator.simulate as simulate_module
from fedgai import prior
from fedgai.config import profile
from fedgai.federated.server.progress import RoundProgress
from fedgai.federated.simulator.simulate import ProgressPrinter, check_run, pool_size, simulate, studio_memory_mb


def summary(rnd: int, started: float, ended: float, total: int = 3, **extra) -> dict:
    """A round summary as controller.py writes it: studio-01 and -02 aggregated, studio-03 dropped."""
    contributions = {
        "studio-01": {"accepted": True, "metrics": {"val_l1": 0.2, "loss_g": 9.0}},
        "studio-02": {"accepted": True, "metrics": {"val_l1": 0.4, "val_gram": None}},  # non-finite -> None
        "studio-03": {"accepted": False, "metrics": {"val_l1": 5.0}},
    }
    return {"round": rnd, "total_rounds": total, "aggregated": 2, "contributions": contributions,
            "no_result": ["studio-04"], "started_at": started, "ended_at": ended,
            "wall_time_s": ended - started, **extra}


def test_progress_line_shows_aggregated_held_out_mean_and_eta():
    progress = RoundProgress()
    first = progress.line(summary(0, 100.0, 110.0))
    # Mean over the aggregated studios only; None (non-finite) values and training losses are left out.
    assert first == "round 0 [1/3]: aggregated 2/4, val_l1 0.300; 10.0 s; ETA 0:00:20"
    # The ETA uses the mean time per round so far, the gap between rounds included: (130 - 100) / 2 x 1 left.
    assert progress.line(summary(1, 112.0, 130.0)).endswith("18.0 s; ETA 0:00:15")
    assert progress.line(summary(2, 131.0, 140.0)).endswith("; done")


def test_progress_line_without_held_out_metrics_and_after_an_early_end():
    no_val = summary(0, 0.0, 5.0, total=4, finished="no more rounds: the privacy budget is spent")
    for contribution in no_val["contributions"].values():
        contribution["metrics"] = {"loss_g": 1.0}
    assert RoundProgress().line(no_val) == "round 0 [1/4]: aggregated 2/4; 5.0 s; done"


def test_progress_printer_prints_each_new_round_once_and_skips_stale_or_partial_files(tmp_path, capsys):
    printer = ProgressPrinter(tmp_path)
    start = printer.since
    (tmp_path / "round-000.json").write_text(json.dumps(summary(0, start - 60, start - 50)))  # an earlier run's
    printer.poll()
    assert capsys.readouterr().out == ""
    (tmp_path / "round-000.json").write_text(json.dumps(summary(0, start + 1, start + 11)))
    (tmp_path / "round-001.json").write_text('{"round": 1, "tot')  # still being written
    printer.poll()
    printer.poll()
    assert capsys.readouterr().out.splitlines() == ["round 0 [1/3]: aggregated 2/4, val_l1 0.300; 10.0 s; ETA 0:00:20"]
    (tmp_path / "round-001.json").write_text(json.dumps(summary(1, start + 12, start + 21)))
    printer.poll()
    assert capsys.readouterr().out.startswith("round 1 [2/3]")


class JobStarted(Exception):
    """Raised by a stand-in simulator: what happened before the job started is what the test is about."""


def test_simulate_builds_a_missing_auto_prior_once_before_the_job_starts(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prior, "PRIOR_PAIRS", 8)  # a tiny recipe: 8 public pairs, 1 epoch
    monkeypatch.setattr(prior, "PRIOR_EPOCHS", 1)
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "priors"))
    cfg = profile("test").with_overrides({"train.prior": "auto"})
    needed = prior.missing_auto_prior(cfg)

    def start_job(job, workspace, sites, threads, out):
        assert needed.is_file()  # the server and the studios only load it
        raise JobStarted

    monkeypatch.setattr(simulate_module, "run_simulator", start_job)
    with pytest.raises(JobStarted):
        simulate(cfg, 2, tmp_path / "ws", demo_root)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("public prior:")]
    assert len(printed) == 1 and str(needed) in printed[0]
    with pytest.raises(JobStarted):  # cached: used as it is, nothing built or said
        simulate(cfg, 2, tmp_path / "ws2", demo_root)
    assert "public prior:" not in capsys.readouterr().out


@pytest.mark.slow
def test_simulation_prints_one_progress_line_per_round_and_keeps_each_trainer(demo_root, tmp_path, capsys):
    """Three studios on this 2-core machine: more studios than cores, each still keeps its own process."""
    data = tmp_path / "data"
    for folder in sorted(p for p in demo_root.iterdir() if p.is_dir()):
        shutil.copytree(folder, data / folder.name)
    shutil.copytree(data / folder.name, data / "zz-third-studio")
    simulate(profile("test").with_overrides({"fed.rounds": 2}), 3, tmp_path / "ws", data)
    printed = capsys.readouterr().out.splitlines()

    progress = [line for line in printed if line.startswith("round ") and "[" in line]
    assert len(progress) == 2
    assert re.fullmatch(r"round 0 \[1/2\]: aggregated 3/3, val_gram \S+, val_ink_iou \S+, val_l1 \S+; "
                        r"\S+ s; ETA \d+:\d\d:\d\d", progress[0])
    assert progress[1].startswith("round 1 [2/2]: aggregated 3/3") and progress[1].endswith("; done")
    assert not [line for line in printed if " - INFO - " in line]  # NVFlare's INFO log stays in the log files
    assert " - INFO - " in (tmp_path / "ws" / "nvflare" / "server" / "log.txt").read_text()

    # Each studio built its trainer (and loaded its data) in round 0 only, then kept it.
    first, second = check_run(tmp_path / "ws", 2)
    assert set(first["contributions"]) == {"studio-01", "studio-02", "studio-03"}
    for site, contribution in first["contributions"].items():
        assert contribution["metrics"]["setup_seconds"] > 0, site
        assert second["contributions"][site]["metrics"]["setup_seconds"] == 0, site
        assert second["contributions"][site]["metrics"]["studio_cpu_seconds"] > 0, site
        assert second["contributions"][site]["metrics"]["slot_wait_seconds"] >= 0, site
    # 3 studios, 2 cores at 1 torch thread each: the studios took turns through 2 training slots.
    slots = tmp_path / "ws" / "training_slots"
    assert {p.name for p in slots.glob("slot-*")} <= {"slot-0.lock", "slot-1.lock"}
    assert (slots / "slot-0.lock").is_file() and not list((slots / "waiting").iterdir())


def test_threads_outside_one_to_studios_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"threads must be between 1 and the number of studios \(2\), got 3"):
        simulate(profile("test").with_overrides({"fed.rounds": 1}), 2, tmp_path, Path(tmp_path), threads=3)


def test_the_pool_gives_every_studio_its_process_while_memory_holds_them_else_as_many_as_fit():
    cfg = profile("test")
    one = studio_memory_mb(cfg) * 1e6
    assert pool_size(32, cfg, int(100 * one)) == 32  # all fit: no studio restarts between rounds
    assert pool_size(32, cfg, int(12.1 * one)) == 9  # 80 % of 12.1 studios' memory holds 9
    assert pool_size(32, cfg, 0) == 1  # never none
    # Studios waiting for one of 2 training slots hold no step's memory: more of them fit.
    quick = profile("quick")
    one = studio_memory_mb(quick) * 1e6
    assert pool_size(32, quick, int(12.1 * one)) == 9
    assert pool_size(32, quick, int(12.1 * one), slots=2) > 15
    assert studio_memory_mb(profile("quick")) > studio_memory_mb(cfg)  # larger batches of larger images


def test_simulate_prints_the_pool_it_chose(demo_root, tmp_path, capsys, monkeypatch):
    """The choice is made (and said) before the simulator starts; here the run is stopped right there."""
    import fedgai.federated.simulator.simulate as sim

    def stop(*args):
        raise RuntimeError("stopped before the simulator")

    monkeypatch.setattr(sim, "run_simulator", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        simulate(profile("test").with_overrides({"fed.rounds": 1}), 2, tmp_path / "ws", demo_root)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("simulator pool:"))
    assert re.fullmatch(r"simulator pool: 2 of 2 studios at once, \d training at a time \(one process per studio; "
                        r"~0\.\d GB each while training, 0\.\d GB waiting; \d+\.\d GB available, \d+ cores; "
                        r"--threads N / --slots N to choose\)", line)


def test_fedgai_simulate_threads_reaches_the_simulator(tmp_path, capsys):
    from fedgai.cli import main

    args = ["simulate", "--studios", "2", "--threads", "3", "--workspace", str(tmp_path / "ws"), "--profile", "test"]
    assert main(args) == 2
    assert "threads must be between 1 and the number of studios (2), got 3" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_encoder_auto_is_resolved_once_for_every_studio_with_one_line(tmp_path, capsys, monkeypatch):
    """The studios of one simulator share the machine, so `auto` is decided once and named in their config."""
    import fedgai.models as models
    from fedgai.federated.simulator.simulate import resolve_auto_encoder

    monkeypatch.setattr(models, "find_vgg16_weights", lambda cfg: None)
    cfg = resolve_auto_encoder(profile("quick"))
    assert cfg.model.encoder == "efficientnet-lite0"
    assert capsys.readouterr().out.count("VGG-16 weights") == 1
    weights = tmp_path / "vgg16.pth"
    monkeypatch.setattr(models, "find_vgg16_weights", lambda cfg: weights)
    assert resolve_auto_encoder(profile("quick")).model.encoder == "vgg16"
    assert resolve_auto_encoder(profile("test")).model.encoder == "random"  # a named encoder stays as it is
    assert capsys.readouterr().out == ""


def test_the_console_drops_nvflares_more_results_than_required_warning_only(tmp_path):
    """Every round with all studios in (more than fed.min_clients) used to print an NVFlare WARNING."""
    import logging
    import logging.config

    from fedgai.federated.simulator.simulate import quiet_console_log_config

    config = json.loads(quiet_console_log_config(tmp_path / "log.json").read_text())
    filter_spec = config["filters"]["more_results"]
    assert "more_results" in config["handlers"]["consoleHandler"]["filters"]
    factory = filter_spec["()"]
    module, _, name = factory.rpartition(".")
    console_filter = getattr(__import__(module, fromlist=[name]), name)()

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("FilteredFedAvg", logging.WARNING, __file__, 1, message, None, None)

    assert not console_filter.filter(record(
        "Number of results (8) is different from number of expected responses (2)."))
    assert console_filter.filter(record(  # fewer than required: a real problem, still shown
        "Number of results (1) is different from number of expected responses (2)."))
    assert console_filter.filter(record("studio-03 dropped: non-finite update"))
