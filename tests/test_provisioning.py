"""Provisioning and the localhost deployment: the project file, the kits' HE keys, both jobs end to end from
startup kits, and that nobody without a valid kit of this project gets in."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml
from he_records import received_records
from nvflare.apis.fl_exception import FLCommunicationError
from nvflare.fuel.f3.cellnet.cell_cipher import InvalidCertChain
from nvflare.fuel.flare_api.api_spec import InvalidJobDefinition, NoConnection
from nvflare.fuel.flare_api.flare_api import new_secure_session
from scripts import load_script

from fedgai.config import profile
from fedgai.federated.he_keys import CLIENT_CONTEXT, HE_PARAMS, SERVER_CONTEXT, SecretKeyFound, check_no_secret_key
from fedgai.federated.jobs.allow_list import job_classes
from fedgai.federated.server.controller import OUTPUT_DIR

REPO = Path(__file__).resolve().parent.parent
ADMIN = "admin@fedgai.example"
SITES = ["studio-a", "studio-b"]


deploy = load_script("provisioning/deploy.py")


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory) -> tuple[Path, dict, Path]:
    """(kits folder, project, workdir) of a fresh provisioning on a free port."""
    workdir = tmp_path_factory.mktemp("provisioned")
    project = deploy.local_project(deploy.PROJECT_TEMPLATE, workdir / "project.yml", deploy.free_port())
    return deploy.provision(workdir / "project.yml", workdir / "workspace"), project, workdir


# ----------------------------------------------------------------------------------------------- project file
def test_project_file_has_one_server_the_studios_an_admin_and_he_before_signing():
    project = yaml.safe_load((REPO / "provisioning" / "project.yml").read_text())
    assert project["api_version"] == 3
    kinds = {kind: [p for p in project["participants"] if p["type"] == kind] for kind in ("server", "client", "admin")}
    assert len(kinds["server"]) == 1
    assert [p["name"] for p in kinds["client"]] == SITES
    assert [(p["name"], p["role"]) for p in kinds["admin"]] == [(ADMIN, "project_admin")]
    builders = [b["path"].rsplit(".", 1)[-1] for b in project["builders"]]
    assert builders.index("HEBuilder") < builders.index("SignatureBuilder") == len(builders) - 1
    he_args = next(b["args"] for b in project["builders"] if b["path"].endswith("HEBuilder"))
    assert he_args == HE_PARAMS  # the simulator's throw-away contexts use the same parameters


def test_local_copy_points_everyone_at_localhost_on_the_given_port(tmp_path):
    project = deploy.local_project(deploy.PROJECT_TEMPLATE, tmp_path / "p.yml", 12345, name="other")
    written = yaml.safe_load((tmp_path / "p.yml").read_text())
    server = deploy.participants(written, "server")[0]
    assert written == project and written["name"] == "other"
    assert (server["default_host"], server["fed_learn_port"], server["admin_port"]) == ("localhost", 12345, 12345)


# ----------------------------------------------------------------------------------------------- kits and keys
def test_server_kit_context_has_no_secret_key_and_studio_kits_do(provisioned):
    kits, project, _ = provisioned
    server = deploy.participants(project, "server")[0]["name"]
    check_no_secret_key(kits / server / "startup" / SERVER_CONTEXT)
    assert not (kits / server / "startup" / CLIENT_CONTEXT).exists()
    assert not list((kits / ADMIN).rglob("*.tenseal"))
    for site in SITES:
        with pytest.raises(SecretKeyFound):
            check_no_secret_key(kits / site / "startup" / CLIENT_CONTEXT)
        assert not (kits / site / "startup" / SERVER_CONTEXT).exists()


def test_contexts_are_signed_in_the_kits(provisioned):
    """The sites refuse unsigned or altered startup content in secure mode; the contexts are covered."""
    kits, project, _ = provisioned
    server = deploy.participants(project, "server")[0]["name"]
    for name, context in [(server, SERVER_CONTEXT), *((site, CLIENT_CONTEXT) for site in SITES)]:
        assert context in json.loads((kits / name / "startup" / "signature.json").read_text())


# ----------------------------------------------------------------------------------------------- site policies
def test_kits_are_hardened_no_custom_code_and_fedgai_classes_enforced(provisioned):
    kits, project, _ = provisioned
    server = deploy.participants(project, "server")[0]["name"]
    for name in [server, *SITES]:
        local = kits / name / "local"
        resources = json.loads((local / "resources.json").read_text())
        assert resources["class_list_enforcement_mode"] == "enforce"
        assert set(resources["class_allow_list"]) == job_classes("server" if name == server else "client")
        policy = json.loads((local / "authorization.json").read_text())["permissions"]
        assert all(rights.get("byoc", "none") == "none" for rights in policy.values() if isinstance(rights, dict))
    for site in SITES:  # only the project admin deploys jobs at a studio
        policy = json.loads((kits / site / "local" / "authorization.json").read_text())["permissions"]
        assert [role for role, rights in policy.items() if rights.get("submit_job", "none") != "none"] == [
            "project_admin"]


def test_server_keeps_jobs_and_snapshots_inside_its_kit(provisioned):
    """Not NVFlare's machine-wide /tmp/nvflare/{jobs,snapshot}-storage shared by every deployment on a host."""
    kits, project, _ = provisioned
    server = kits / deploy.participants(project, "server")[0]["name"]
    resources = json.loads((server / "local" / "resources.json").read_text())
    job_manager = next(c for c in resources["components"] if c["id"] == "job_manager")
    snapshots = resources["snapshot_persistor"]["args"]["storage"]["args"]["root_dir"]
    assert job_manager["args"]["uri_root"] == str(server.resolve() / "storage" / "jobs")
    assert snapshots == str(server.resolve() / "storage" / "snapshots")


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_deploy_script_runs_plain_dp_and_he_jobs_from_startup_kits(tmp_path):
    """provision -> start server + 2 studios -> submit fedgai, fedgai_dp, fedgai_he (test profile) -> stop."""
    workdir = tmp_path / "deploy"
    assert deploy.main(["--workdir", str(workdir), "--profile", "test", "--job-timeout", "300"]) == 0
    summary = {s["job"]: s for s in json.loads((workdir / "output" / "summary.json").read_text())}
    assert {job: s["status"] for job, s in summary.items()} == {
        "fedgai": deploy.COMPLETED, "fedgai_dp": deploy.COMPLETED, "fedgai_he": deploy.COMPLETED}
    rounds = profile("test").fed.rounds
    plain = Path(summary["fedgai"]["result"]) / "workspace" / OUTPUT_DIR
    assert all(json.loads((plain / f"round-{r:03d}.json").read_text())["aggregated"] == 2 for r in range(rounds))
    noised = Path(summary["fedgai_dp"]["result"]) / "workspace" / OUTPUT_DIR
    for r in range(rounds):  # every studio's update arrived noised, with its epsilon so far
        contributions = json.loads((noised / f"round-{r:03d}.json").read_text())["contributions"]
        assert all(c["accepted"] and c["dp_epsilon"] > 0 for c in contributions.values())
    records = received_records(Path(summary["fedgai_he"]["result"]) / "workspace", rounds, SITES)
    assert all(r["accepted"] for r in records)
    assert {e["type"] for r in records for e in r["entries"].values()} == {"CKKSVector"}
    for job in summary.values():
        assert sorted(job["studio_outputs"]) == SITES
        assert all((Path(p) / "checkpoints" / "last.pt").is_file() for p in job["studio_outputs"].values())
    assert not deploy.pids_of_kit(workdir)  # everything it started has ended
    stored = {p.name for p in (workdir / "workspace").glob("fedgai/prod_*/cloud.fedgai.example/storage/jobs/*")}
    assert stored == {job["job_id"] for job in summary.values()}  # the jobs are kept in this deployment's kit


@pytest.mark.slow
def test_processes_end_when_a_step_fails(tmp_path):
    workdir = tmp_path / "failing"
    with pytest.raises(InvalidJobDefinition):
        deploy.deploy(workdir, [tmp_path / "no-such-job"], job_timeout=60)
    assert (workdir / "logs" / "studio-a.log").is_file()  # the system was up when the submission failed
    assert not deploy.pids_of_kit(workdir)


# ----------------------------------------------------------------------------------------------- intruders
@pytest.fixture(scope="module")
def running(provisioned, tmp_path_factory):
    """The provisioned system up on localhost (no job), plus an 'intruder' project provisioned for the same
    address: same participant names and one more studio (studio-x), its own root CA."""
    kits, project, workdir = provisioned
    port = deploy.participants(project, "server")[0]["fed_learn_port"]
    intruder = deploy.local_project(deploy.PROJECT_TEMPLATE, workdir / "intruder.yml", port, name="intruder")
    intruder["participants"].append({"name": "studio-x", "type": "client", "org": "intruder"})
    (workdir / "intruder.yml").write_text(yaml.safe_dump(intruder, sort_keys=False))
    foreign = deploy.provision(workdir / "intruder.yml", workdir / "intruder")
    deploy.make_studio_data(workdir / "data", SITES)
    with deploy.Deployment(kits, project, workdir, workdir / "data") as system:
        system.start(timeout=120)
        yield system, foreign


@pytest.mark.slow
def test_admin_without_a_valid_kit_cannot_log_in(running, tmp_path):
    system, foreign = running
    with pytest.raises(NoConnection):  # another project's admin kit: TLS fails both ways
        new_secure_session(ADMIN, str(foreign / ADMIN), timeout=8)
    tampered = tmp_path / "tampered-admin"
    shutil.copytree(foreign / ADMIN, tampered)
    shutil.copy(system.kits / ADMIN / "startup" / "rootCA.pem", tampered / "startup" / "rootCA.pem")
    with pytest.raises(InvalidCertChain):  # trusts our server, but its certificate is not from our CA
        new_secure_session(ADMIN, str(tampered), timeout=8)
    with pytest.raises(FLCommunicationError):  # our kit, someone else's name
        new_secure_session("intruder@fedgai.example", str(system.kits / ADMIN), timeout=8)
    assert system.session.get_system_info().server_info.status  # the real admin is still served


@pytest.mark.slow
def test_studio_without_a_valid_kit_cannot_join(running, tmp_path):
    system, foreign = running
    impostor = system.launch(foreign / "studio-x", log_name="impostor")  # a studio of another project
    tampered_kit = tmp_path / "studio-b"
    shutil.copytree(foreign / "studio-b", tampered_kit)
    shutil.copy(system.kits / "studio-b" / "startup" / "rootCA.pem", tampered_kit / "startup" / "rootCA.pem")
    tampered = system.launch(tampered_kit)
    assert tampered.wait(timeout=60) != 0  # its kit no longer matches its signature: it refuses to start
    assert "not secure content" in system.log(tampered_kit.name).read_text()

    impostor_log = system.log("impostor")
    deadline = time.monotonic() + 60
    while "CERTIFICATE_VERIFY_FAILED" not in impostor_log.read_text() and time.monotonic() < deadline:
        time.sleep(1)
    assert "CERTIFICATE_VERIFY_FAILED" in impostor_log.read_text()
    assert impostor.poll() is None  # still knocking, never let in
    clients = system.session.get_system_info().client_info
    assert sorted(c.name for c in clients) == SITES

