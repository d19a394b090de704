"""The exported NVFlare job folders (configuration only, run by an installed fedgai), the version pin, the
hardened studios' policies and the end-to-end POC run."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from nvflare.apis.app_validation import AppValidationKey
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import UnsafeComponentError
from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer
from nvflare.fuel.sec.authz import Authorizer, AuthzContext, Person

from fedgai.config import profile
from fedgai.federated.jobs.allow_list import SIDES, allow_fedgai, job_classes
from fedgai.federated.jobs.he_job import export_jobs
from fedgai.federated.jobs.job import DP_JOB_SETTINGS, build_job
from fedgai.federated.jobs.kits import STUDIO_POLICY
from fedgai.federated.studio import executor
from fedgai.federated.studio.client import STUDIOS_ENV, SitePaths
from fedgai.federated.studio.executor import CLIENT_SCRIPT, FedgaiVersionCheck, StudioExecutor
from fedgai.wire import VERSION_META_KEY

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "jobs" / "fedgai"
JOBS = ["fedgai", "fedgai_dp", "fedgai_he"]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def configs(job: Path) -> tuple[dict, dict]:
    config = job / "app" / "config"
    return (json.loads((config / "config_fed_server.json").read_text()),
            json.loads((config / "config_fed_client.json").read_text()))


def component_paths(node) -> list[str]:
    """Every class path named anywhere in a job config (workflows, components, filters, nested args)."""
    if isinstance(node, dict):
        own = [node["path"]] if isinstance(node.get("path"), str) else []
        return own + [p for value in node.values() for p in component_paths(value)]
    if isinstance(node, list):
        return [p for value in node for p in component_paths(value)]
    return []


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jobs")
    export_jobs(out, "paper")
    return out


@pytest.mark.parametrize("name", JOBS)
def test_committed_jobs_are_a_fresh_config_export(fresh, name):
    hint = "regenerate them: make jobs"
    assert tree(fresh / name) == tree(REPO / "jobs" / name), hint
    _, mismatch, errors = filecmp.cmpfiles(fresh / name, REPO / "jobs" / name, tree(fresh / name), shallow=False)
    assert mismatch == [] and errors == [], f"{mismatch or errors} differ; {hint}"


def test_the_allow_list_names_exactly_the_classes_of_a_fresh_export(fresh):
    """allow_list.py writes the shipped jobs' classes down (reading them from an export tied every job to all
    three: issue 26's cycle); this keeps the list and the jobs the same, side by side."""
    for side, name in SIDES.items():
        exported = {path for job in JOBS for path in component_paths(json.loads(
            (fresh / job / "app" / "config" / name).read_text()))}
        assert job_classes(side) == exported, f"{side}: update federated/jobs/allow_list.py"


@pytest.mark.parametrize("name", JOBS)
def test_jobs_carry_no_code_and_pin_the_installed_fedgai(name):
    job = REPO / "jobs" / name
    assert tree(job) == ["app/config/config_fed_client.json", "app/config/config_fed_server.json", "meta.json"]
    pinned = json.loads((job / "meta.json").read_text())[VERSION_META_KEY]
    assert pinned == executor.installed_version()
    server, client = configs(job)
    assert client["executors"][0]["executor"] == {"path": "fedgai.federated.studio.executor.StudioExecutor",
                                                  "args": {"fedgai_version": pinned}}
    checks = [c for c in server["components"] if c["path"].endswith("FedgaiVersionCheck")]
    assert [c["args"] for c in checks] == [{"fedgai_version": pinned}]
    text = json.dumps([server, client])
    assert str(REPO) not in text and "/tmp" not in text  # portable: sites use $FEDGAI_DATA_ROOT


@pytest.mark.parametrize("name", JOBS)
def test_a_hardened_studio_and_server_accept_every_class_of_the_jobs(name, tmp_path):
    """What the kits' enforce-mode allow-list (NVFlare default + "fedgai.") lets through: all of our jobs."""
    authorizer = ComponentPathAuthorizer()
    workspace = resources_workspace(tmp_path, allow_fedgai({"format_version": 2}))
    for config in configs(REPO / "jobs" / name):
        for path in component_paths(config):
            authorizer.authorize_component_config({"path": path, "args": {}}, workspace=workspace)


def resources_workspace(folder: Path, resources: dict) -> SimpleNamespace:
    (folder / "resources.json").write_text(json.dumps(resources))
    return SimpleNamespace(get_resources_file_path=lambda: str(folder / "resources.json"))


def test_a_hardened_studio_refuses_classes_outside_nvflare_and_fedgai(tmp_path):
    authorizer = ComponentPathAuthorizer()
    workspace = resources_workspace(tmp_path, allow_fedgai({"format_version": 2}))
    with pytest.raises(UnsafeComponentError, match="not in allow_list"):
        authorizer.authorize_component_config({"path": "evil.trainer.Exfiltrate", "args": {}}, workspace=workspace)
    # NVFlare's own default list alone (an unhardened site) refuses our executor: the studio decides
    plain = resources_workspace(tmp_path, {"format_version": 2})
    with pytest.raises(UnsafeComponentError):
        authorizer.authorize_component_config({"path": "fedgai.federated.studio.executor.StudioExecutor"},
                                              workspace=plain)


def studio_authorizer(site_org: str = "studio_a") -> Authorizer:
    authorizer = Authorizer(site_org=site_org)
    assert authorizer.load_policy(STUDIO_POLICY) == ""
    return authorizer


@pytest.mark.parametrize("who", [Person("admin@fedgai.example", "fedgai", "project_admin"),
                                 Person("lead@studio-b.example", "studio_b", "lead"),
                                 Person("lead@studio-a.example", "studio_a", "lead")])
def test_studios_refuse_custom_code_from_anyone(who):
    allowed, _ = studio_authorizer().authorize(AuthzContext(right="byoc", user=who, submitter=who))
    assert not allowed


def test_studios_run_only_the_project_admins_jobs():
    """The studio checks submit_job for the submitter when the server deploys a job to it."""
    authorizer = studio_authorizer()
    admin = Person("admin@fedgai.example", "fedgai", "project_admin")
    other_lead = Person("lead@studio-b.example", "studio_b", "lead")
    own_admin = Person("admin@studio-a.example", "studio_a", "org_admin")
    assert authorizer.authorize(AuthzContext(right="submit_job", user=admin, submitter=admin))[0]
    for who in (other_lead, own_admin):
        assert not authorizer.authorize(AuthzContext(right="submit_job", user=who, submitter=who))[0]


def test_a_studio_refuses_a_job_with_custom_code(tmp_path):
    """NVFlare's own deploy-time check (AppAuthzService) with a studio's policy: a BYOC app is refused."""
    from nvflare.fuel.sec.authz import AuthorizationService
    from nvflare.private.fed.utils.app_authz import AppAuthzService

    previous = AuthorizationService.get_authorizer()
    AuthorizationService.the_authorizer = studio_authorizer()
    try:
        allowed, reason = AppAuthzService.authorize_app_info(
            {AppValidationKey.BYOC: True}, "admin@fedgai.example", "fedgai", "project_admin")
        assert (allowed, reason) == (False, "BYOC not permitted")
        assert AppAuthzService.authorize_app_info({}, "admin@fedgai.example", "fedgai", "project_admin")[0]
    finally:
        AuthorizationService.the_authorizer = previous


# ----------------------------------------------------------------------------------------------- version pin
def start_run(component) -> list[str]:
    """Fire START_RUN at a component; returns the panic reasons it raised."""
    panics = []
    component.system_panic = lambda reason, fl_ctx: panics.append(reason)
    component.handle_event(EventType.START_RUN, FLContext())
    return panics


@pytest.mark.parametrize("make", [lambda v: StudioExecutor(fedgai_version=v), lambda v: FedgaiVersionCheck(v)],
                         ids=["studio", "server"])
def test_a_site_with_another_fedgai_version_stops_the_job(make, monkeypatch):
    monkeypatch.setattr(executor, "installed_version", lambda: "0.0.9")
    panics = start_run(make("0.1.0"))
    assert len(panics) == 1
    assert "has fedgai 0.0.9, but this job needs fedgai 0.1.0" in panics[0] and "install" in panics[0]


def test_the_pinned_version_passes_the_check():
    assert start_run(FedgaiVersionCheck(executor.installed_version())) == []
    assert Path(CLIENT_SCRIPT).is_file() and CLIENT_SCRIPT.endswith("fedgai/federated/studio/client.py")


# ----------------------------------------------------------------------------------------------- job content
def test_dp_job_noises_every_result_before_it_leaves():
    server, client = configs(REPO / "jobs" / "fedgai_dp")
    cfg = next(w for w in server["workflows"] if w["id"] == "controller")["args"]["config"]
    assert cfg["privacy"] == profile("paper").with_overrides(DP_JOB_SETTINGS).to_dict()["privacy"]
    filters = [f for group in client["task_result_filters"] for f in group["filters"]]
    names = [f["path"].rsplit(".", 1)[1] for f in filters]
    assert names.index("GaussianDPFilter") < names.index("OutboundAudit")  # noise first, then record what left
    dp = filters[names.index("GaussianDPFilter")]["args"]
    assert (dp["noise_multiplier"], dp["clip_norm"], dp["target_epsilon"]) == (4.0, 1.0, 10.0)


def test_committed_job_runs_the_paper_schedule():
    server, _ = configs(COMMITTED)
    cfg = next(w for w in server["workflows"] if w["id"] == "controller")["args"]["config"]
    assert cfg == profile("paper").to_dict()
    assert (cfg["fed"]["rounds"], cfg["train"]["epochs"], cfg["fed"]["mode"]) == (11, 11, "fedgai")


def test_a_simulator_runs_studio_folders_reach_the_sites_through_their_environment(tmp_path):
    """Never as script arguments (issue 24 §2): the job's client config names no folder."""
    job = build_job(profile("test"), {"studio-02": tmp_path / "b", "studio-01": tmp_path / "a"})
    assert json.loads(job.site_env[STUDIOS_ENV]) == {"studio-01": str(tmp_path / "a"), "studio-02": str(tmp_path / "b")}
    assert SitePaths.from_env(job.site_env).studios == {"studio-01": tmp_path / "a", "studio-02": tmp_path / "b"}


def test_client_level_dp_filter_runs_before_the_audit(tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "client", "privacy.target_epsilon": 8.0})
    build_job(cfg).export_job(str(tmp_path))
    _, client = configs(tmp_path / "fedgai")
    filters = client["task_result_filters"][0]["filters"]
    assert [f["path"].rsplit(".", 1)[1] for f in filters] == ["GaussianDPFilter", "OutboundAudit"]
    assert filters[0]["args"]["target_epsilon"] == 8.0
    assert not (tmp_path / "fedgai" / "app" / "custom").exists()


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
    for site in ("studio-01", "studio-02"):  # the studios found their data via $FEDGAI_DATA_ROOT; one folder per job
        assert len(list((prod / site / "fedgai_output" / site).glob("*/grids/round-001.png"))) == 1
    assert len(list((tmp_path / "results").rglob("fedgai/global-round-*.pt"))) == 2
    assert _processes_mentioning(tmp_path / "poc") == []


@pytest.mark.slow
def test_poc_stops_everything_when_the_run_fails(tmp_path):
    run = _poc(tmp_path, "--timeout", "1")
    assert run.returncode != 0
    assert "PocError" in run.stderr and "nvflare poc stop" in run.stdout
    assert _processes_mentioning(tmp_path / "poc") == []
    assert not (tmp_path / "poc").exists()  # cleaned
