"""On a running provisioned system (provisioning/deploy.py, hardened kits): a job that brings its own code is
refused by the studios, and the config-only FedGAI job runs in the same deployment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from scripts import load_script

from fedgai.config import profile
from fedgai.federated.jobs.job import build_job
from fedgai.federated.server.controller import OUTPUT_DIR

REPO = Path(__file__).resolve().parent.parent
SITES = ["studio-a", "studio-b"]
REFUSAL = "BYOC not permitted"  # NVFlare's reason when a site's policy has no byoc right


deploy = load_script("provisioning/deploy.py")


def byoc_job(plain: Path, out: Path) -> Path:
    """The plain job with code in the studios' app: the server's app stays config-only, so only the studios'
    policy can stop it (a job that NVFlare's job format allows: one app per site group)."""
    server_app, studio_app = out / "app_server", out / "app_studio"
    shutil.copytree(plain / "app", server_app)
    shutil.copytree(plain / "app", studio_app)
    (server_app / "config" / "config_fed_client.json").unlink()
    (studio_app / "config" / "config_fed_server.json").unlink()
    (studio_app / "custom").mkdir()
    (studio_app / "custom" / "studio_extra.py").write_text('"""Code a submitter wants run at the studios."""\n')
    meta = json.loads((plain / "meta.json").read_text())
    meta.update(name=out.name, deploy_map={"app_server": ["server"], "app_studio": SITES})
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """The provisioned system up on localhost, and the plain job for the test profile."""
    workdir = tmp_path_factory.mktemp("byoc")
    project = deploy.local_project(deploy.PROJECT_TEMPLATE, workdir / "project.yml", deploy.free_port())
    kits = deploy.provision(workdir / "project.yml", workdir / "workspace")
    deploy.make_studio_data(workdir / "data", SITES)
    build_job(profile("test")).export_job(str(workdir / "jobs"))
    with deploy.Deployment(kits, project, workdir, workdir / "data") as running:
        running.start(timeout=180)
        yield running, workdir / "jobs" / "fedgai"


@pytest.mark.slow
def test_studios_refuse_a_job_with_custom_code(system, tmp_path):
    running, plain = system
    job = byoc_job(plain, tmp_path / "fedgai_byoc")
    summary = running.run_job(job, timeout=180)
    assert summary["status"] == "FINISHED:FAILED_TO_RUN"
    # The server took its config-only app; each studio refused its app, so the job never started anywhere.
    detail = json.loads((Path(summary["result"]) / "meta.json").read_text())["job_deploy_detail"]
    assert "server: OK" in detail
    assert all(f"{site}: NVFLARE_ERROR: {REFUSAL}" in detail for site in SITES)
    assert summary["studio_outputs"] == {}  # no studio trained
    assert not list(running.kits.glob(f"*/{summary['job_id']}/app_studio/custom"))  # and none kept the code


@pytest.mark.slow
def test_the_config_only_job_runs_in_the_same_deployment(system):
    running, plain = system
    summary = running.run_job(plain, timeout=300)
    assert summary["status"] == deploy.COMPLETED
    rounds = profile("test").fed.rounds
    out = Path(summary["result"]) / "workspace" / OUTPUT_DIR
    assert all(json.loads((out / f"round-{r:03d}.json").read_text())["aggregated"] == 2 for r in range(rounds))
    assert sorted(summary["studio_outputs"]) == SITES
