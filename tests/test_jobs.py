"""The exported NVFlare job folder and the end-to-end POC run."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedgai.config import profile
from fedgai.federated.job import CLIENT_SCRIPT, DP_JOB_SETTINGS, build_job, client_args, export

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "jobs" / "fedgai"


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def configs(job: Path) -> tuple[dict, dict]:
    config = job / "app" / "config"
    return (json.loads((config / "config_fed_server.json").read_text()),
            json.loads((config / "config_fed_client.json").read_text()))


@pytest.mark.parametrize("dp", [False, True], ids=["fedgai", "fedgai_dp"])
def test_committed_job_is_what_the_generator_writes(tmp_path, dp):
    fresh = export(tmp_path, dp=dp)
    committed = REPO / "jobs" / fresh.name
    hint = "regenerate it: make jobs"
    assert tree(fresh) == tree(committed), hint
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, tree(fresh), shallow=False)
    assert mismatch == [] and errors == [], f"{mismatch or errors} differ; {hint}"


def test_dp_job_noises_every_result_before_it_leaves():
    server, client = configs(REPO / "jobs" / "fedgai_dp")
    cfg = server["workflows"][0]["args"]["config"]
    assert cfg["privacy"] == profile("paper").with_overrides(DP_JOB_SETTINGS).to_dict()["privacy"]
    filters = [f for group in client["task_result_filters"] for f in group["filters"]]
    names = [f["path"].rsplit(".", 1)[1] for f in filters]
    assert names.index("GaussianDPFilter") < names.index("OutboundAudit")  # noise first, then record what left
    dp = filters[names.index("GaussianDPFilter")]["args"]
    assert (dp["noise_multiplier"], dp["clip_norm"], dp["target_epsilon"]) == (2.0, 1.0, 10.0)


def test_job_is_self_contained_and_portable():
    server, client = configs(COMMITTED)
    custom = COMMITTED / "app" / "custom"
    components = [*server["workflows"], *server["components"], *client["components"],
                  *(f for group in client["task_result_filters"] for f in group["filters"])]
    for comp in components:  # every class is NVFlare's own or shipped in custom/
        module = comp["path"].rsplit(".", 1)[0]
        assert module.startswith("nvflare.") or (custom / (module.replace(".", "/") + ".py")).is_file(), module
    executor = client["executors"][0]["executor"]["args"]
    assert executor["task_script_path"] == CLIENT_SCRIPT and (custom / CLIENT_SCRIPT).is_file()
    assert "task_script_args" not in executor  # sites find their studio via $FEDGAI_DATA_ROOT
    text = (COMMITTED / "app" / "config" / "config_fed_server.json").read_text()
    text += (COMMITTED / "app" / "config" / "config_fed_client.json").read_text()
    assert str(REPO) not in text and "/tmp" not in text
    assert not list(custom.rglob("__pycache__"))


def test_committed_job_runs_the_paper_schedule():
    server, _ = configs(COMMITTED)
    cfg = server["workflows"][0]["args"]["config"]
    assert cfg == profile("paper").to_dict()
    assert (cfg["fed"]["rounds"], cfg["train"]["epochs"], cfg["fed"]["mode"]) == (11, 11, "fedgai")


def test_studio_map_and_output_root_become_script_args(tmp_path):
    args = client_args({"studio-02": tmp_path / "b", "studio-01": tmp_path / "a"}, tmp_path / "out")
    assert args == f"--studio studio-01={tmp_path}/a --studio studio-02={tmp_path}/b --output-root {tmp_path}/out"
    with pytest.raises(ValueError, match="spaces"):
        client_args({"studio-01": Path("/my studios/a")}, None)


def test_client_level_dp_filter_runs_before_the_audit(tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "client", "privacy.target_epsilon": 8.0})
    build_job(cfg).export_job(str(tmp_path))
    _, client = configs(tmp_path / "fedgai")
    filters = client["task_result_filters"][0]["filters"]
    assert [f["path"].rsplit(".", 1)[1] for f in filters] == ["GaussianDPFilter", "OutboundAudit"]
    assert filters[0]["args"]["target_epsilon"] == 8.0


def _poc(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "poc" / "run_poc.py"), "--workspace", str(tmp_path),
                           "--studios", "2", "--profile", "test", *args],
                          capture_output=True, text=True, timeout=600)


def _processes_mentioning(path: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(path).encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_poc_end_to_end(tmp_path):
    run = _poc(tmp_path, "--keep")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "POC finished: 2 round(s), aggregated per round: [2, 2]" in run.stdout
    prod = tmp_path / "poc" / "fedgai_poc" / "prod_00"
    # server, both studios, their job logs, and the server's job log (in the downloaded result)
    logs = [*prod.glob("*/log.txt"), *prod.glob("*/*/log.txt"), *(tmp_path / "results").rglob("log.txt")]
    assert len(logs) == 6
    for log in logs:
        assert [x for x in log.read_text().splitlines() if " ERROR " in x or "Traceback" in x] == [], log
    for site in ("studio-01", "studio-02"):  # the studios found their data via $FEDGAI_DATA_ROOT
        assert (prod / site / "fedgai_output" / site / "grids" / "round-001.png").is_file()
    assert len(list((tmp_path / "results").rglob("fedgai/global-round-*.pt"))) == 2
    assert _processes_mentioning(tmp_path / "poc") == []


@pytest.mark.slow
def test_poc_stops_everything_when_the_run_fails(tmp_path):
    run = _poc(tmp_path, "--timeout", "1")
    assert run.returncode != 0
    assert "PocError" in run.stderr and "nvflare poc stop" in run.stdout
    assert _processes_mentioning(tmp_path / "poc") == []
    assert not (tmp_path / "poc").exists()  # cleaned
