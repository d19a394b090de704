"""Provision the FedGAI project and run it on this machine from its startup kits, then stop everything.

    python provisioning/deploy.py [--workdir runs/deploy] [--profile test] [--job jobs/fedgai ...]

Studios' data: demo studios in ``WORKDIR/data/<site>`` (``--data-size`` px), or ``--data-root`` with one folder
per site name.

1. writes ``WORKDIR/project.yml``: provisioning/project.yml with the server on localhost at a free port;
2. ``nvflare provision`` -> one startup kit per participant in ``WORKDIR/workspace/fedgai/prod_NN/``, each
   hardened with fedgai.federated.jobs.kits (what ``python -m fedgai.federated.jobs.kits KIT`` does at a real site);
3. the studios' data root is passed to them as $FEDGAI_DATA_ROOT (the client script reads ``ROOT/<site>``);
4. starts the server, then every studio, each from its own kit (``startup/sub_start.sh --once``: the
   foreground form of start.sh, so this script owns the process), logs in ``WORKDIR/logs/``;
5. logs in with the admin kit (Session API), waits for all studios, submits each job, waits for it and
   downloads its result into ``WORKDIR/output/<job>/``, moving the studios' outputs next to it;
6. shuts the system down through the admin session - and, whatever happened, ends the processes it
   started (the server and studio processes and the job processes NVFlare spawned from their kits).

Without ``--job`` it submits the committed jobs/fedgai, jobs/fedgai_dp and jobs/fedgai_he (paper profile:
GPU-sized); with ``--profile`` it exports the three jobs fresh for that profile into ``WORKDIR/jobs`` and submits
those.
``WORKDIR/output/summary.json`` lists every job's id, status, time and result folder; the exit code is 0
only if every job finished with status FINISHED:COMPLETED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from nvflare.apis.fl_exception import FLCommunicationError
from nvflare.fuel.flare_api.api_spec import JobNotDone, JobNotRunning, MonitorReturnCode, NoConnection
from nvflare.fuel.flare_api.flare_api import Session, new_secure_session

from fedgai.federated.jobs.kits import harden_kits
from fedgai.federated.studio.client import DATA_ROOT_ENV, OUTPUT_ROOT_ENV, SitePaths

REPO = Path(__file__).resolve().parent.parent
PROJECT_TEMPLATE = REPO / "provisioning" / "project.yml"
DEFAULT_JOBS = (REPO / "jobs" / "fedgai", REPO / "jobs" / "fedgai_dp", REPO / "jobs" / "fedgai_he")
COMPLETED = "FINISHED:COMPLETED"


class DeployError(RuntimeError):
    """The local deployment could not be provisioned or brought up."""


# ----------------------------------------------------------------------------------------------- provisioning
def free_port() -> int:
    """A localhost TCP port nobody listens on right now (parallel runs get different ones)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def local_project(template: Path, out: Path, port: int, name: str | None = None) -> dict:
    """Write a copy of the project file for this machine: server reached at localhost:port; returns it."""
    project = yaml.safe_load(template.read_text())
    if name:
        project["name"] = name
    server = participants(project, "server")[0]
    server.update(default_host="localhost", fed_learn_port=port, admin_port=port)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(project, sort_keys=False))
    return project


def participants(project: dict, kind: str) -> list[dict]:
    return [p for p in project["participants"] if p["type"] == kind]


def provision(project_file: Path, workspace: Path) -> Path:
    """Run ``nvflare provision`` and harden the kits (fedgai.federated.jobs.kits: no custom code, studios run only
    the project admin's jobs, server storage inside its kit); returns the folder holding the kits (the newest
    prod_NN).

    ``--force`` lets a re-run provision into an existing workspace: same root CA, new prod_NN, new HE keys.
    """
    cmd = [sys.executable, "-m", "nvflare.cli", "provision", "-p", str(project_file), "-w", str(workspace),
           "--force"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError(f"nvflare provision failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    name = yaml.safe_load(project_file.read_text())["name"]
    kits = sorted((workspace / name).glob("prod_*"))[-1]
    harden_kits(kits)
    return kits


def make_studio_data(root: Path, sites: Sequence[str], size: int = 64) -> None:
    """Demo studios as ``root/<site>`` (skipped if they exist)."""
    if all((root / site).is_dir() for site in sites):
        return
    from fedgai.data import make_demo

    folders = make_demo(root / "_demo", studios=len(sites), size=size, progress=False)
    for site, folder in zip(sites, folders, strict=True):
        folder.rename(root / site)
    shutil.rmtree(root / "_demo")


# ----------------------------------------------------------------------------------------------- processes
def start_kit(kit: Path, log: Path, env: dict[str, str], prefix: Sequence[str] = ()) -> subprocess.Popen:
    """Start a server or studio from its startup kit in the foreground (``sub_start.sh --once``), after
    ``prefix`` (e.g. ``ip netns exec NS``: provisioning/multihost.py runs each site on its own host)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([*prefix, "bash", str(kit / "startup" / "sub_start.sh"), "--once"], cwd=kit,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kit_env(data_root: Path, output_root: Path) -> dict[str, str]:
    """This interpreter's environment first on PATH (sub_start.sh runs ``python3``) plus the studios' folders."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[DATA_ROOT_ENV] = str(data_root)
    env[OUTPUT_ROOT_ENV] = str(output_root)
    return env


def pids_of_kit(kit: Path) -> list[int]:
    """Processes with the kit's folder (or a path inside it) as a command-line argument: its parent process
    and the job processes NVFlare spawned in their own sessions (they outlive a killed parent)."""
    folder = str(kit).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(arg == folder or arg.startswith(folder + b"/") for arg in args):
            pids.append(int(entry.name))
    return pids


def end_processes(pids: Sequence[int], grace: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL what is left (processes that are not our children:
    the job processes NVFlare spawned)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already ended
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # already ended
            os.kill(pid, signal.SIGKILL)


def end_child(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM a process this script started, SIGKILL it after ``grace`` seconds, and reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# What the NVFlare server logs once it is deployed and its admin server is up. An open port is not enough:
# the listener comes first, and a login in between fails inside NVFlare (no server certificate yet).
SERVER_READY = "Server started"


def wait_for_server(log: Path, process: subprocess.Popen, timeout: float) -> None:
    """Until the server's log says it is ready; fails early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeployError(f"the server exited with code {process.returncode}; see {log}")
        if log.is_file() and SERVER_READY in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise DeployError(f"the server did not start within {timeout:.0f} s; see {log}")


# ----------------------------------------------------------------------------------------------- deployment
class Deployment:
    """The provisioned system running on localhost; a context manager that always stops what it started."""

    def __init__(self, kits: Path, project: dict, workdir: Path, data_root: Path):
        self.kits = kits
        self.workdir = workdir
        self.server = participants(project, "server")[0]["name"]
        self.sites = [p["name"] for p in participants(project, "client")]
        self.admin = participants(project, "admin")[0]["name"]
        self.env = kit_env(data_root, workdir / "studio_outputs")
        self.processes: dict[Path, subprocess.Popen] = {}
        self.session: Session | None = None
        self.submitted: list[str] = []

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> Session:
        """Server, then studios; returns an admin session once every studio is connected."""
        server = self.launch(self.kits / self.server)
        wait_for_server(self.log(self.server), server, timeout)
        for site in self.sites:
            self.launch(self.kits / site)
        self.session = self.login(self.kits / self.admin, timeout)
        self.wait_for_studios(timeout)
        return self.session

    def launch(self, kit: Path, log_name: str | None = None) -> subprocess.Popen:
        """Start the participant of ``kit`` (log: WORKDIR/logs/<log_name or kit folder>.log); stop() ends it."""
        self.processes[kit] = start_kit(kit, self.log(log_name or kit.name), self.env)
        return self.processes[kit]

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def login(self, admin_kit: Path, timeout: float) -> Session:
        """An admin session from ``admin_kit``; retries while the server is still coming up or, on a loaded
        machine, answers the login challenge too late."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return new_secure_session(self.admin, str(admin_kit), timeout=min(10.0, timeout))
            except (NoConnection, FLCommunicationError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def wait_for_studios(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            connected = {c.name for c in self.session.get_system_info().client_info}
            if set(self.sites) <= connected:
                return
            if time.monotonic() > deadline:
                raise DeployError(f"studios not connected after {timeout:.0f} s: {sorted(set(self.sites) - connected)}"
                                  f"; see {self.workdir / 'logs'}")
            time.sleep(2)

    def run_job(self, job_dir: Path, timeout: float) -> dict:
        """Submit, wait, download; returns the job's summary entry."""
        started = time.monotonic()
        job_id = self.session.submit_job(str(job_dir))
        self.submitted.append(job_id)
        rc, meta = self.session.monitor_job_and_return_job_meta(job_id, timeout=timeout, poll_interval=3.0)
        if rc == MonitorReturnCode.TIMEOUT:
            self.session.abort_job(job_id)
            meta = self.session.get_job_meta(job_id)
        out = self.workdir / "output" / job_dir.name
        result = self.session.download_job_result(job_id, destination=str(out))
        studios = self.collect_studio_outputs(out / "studios", job_id)
        return {"job": job_dir.name, "job_id": job_id, "status": meta.get("status"),
                "timed_out": rc == MonitorReturnCode.TIMEOUT, "seconds": round(time.monotonic() - started, 1),
                "result": result, "studio_outputs": studios}

    def collect_studio_outputs(self, out: Path, job_id: str) -> dict[str, str]:
        """Move each studio's outputs of the job that just ran (its folder for this job) next to the job's result."""
        moved = {}
        paths = SitePaths.from_env(self.env)
        for site in self.sites:
            source = paths.output_dir(site, job_id)
            if source.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                moved[site] = str(shutil.move(str(source), str(out / site)))
        return moved

    def stop(self, grace: float = 20.0) -> None:
        """Abort unfinished jobs and shut down through the admin session (if any); then, even if that failed,
        end every process of our kits.

        Like start.sh's own loop, the server process may need ending from outside after ``shutdown all``.
        """
        try:
            if self.session is not None:
                self.shutdown(grace)
        finally:
            self.session = None
            own = {p.pid for p in self.processes.values()}
            end_processes(sorted({pid for kit in self.processes for pid in pids_of_kit(kit)} - own))
            for process in self.processes.values():
                end_child(process)

    def shutdown(self, grace: float) -> None:
        """``shutdown all`` (refused while a job runs, hence the aborts and retries), then give the studios and
        their job processes ``grace`` seconds to exit. A server that is already gone is fine."""
        deadline = time.monotonic() + grace
        with contextlib.suppress(NoConnection, ConnectionError, TimeoutError, JobNotDone):
            for job_id in self.submitted:
                with contextlib.suppress(JobNotRunning):
                    if not str(self.session.get_job_meta(job_id).get("status", "")).startswith("FINISHED"):
                        self.session.abort_job(job_id)
            while True:
                try:
                    self.session.shutdown("all", wait=False)
                    break
                except JobNotDone:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1)
        studios = [self.processes[kit] for kit in (self.kits / site for site in self.sites) if kit in self.processes]
        while time.monotonic() < deadline and any(p.poll() is None for p in studios):
            time.sleep(0.5)


# ----------------------------------------------------------------------------------------------- main
def deploy(workdir: Path, jobs: Sequence[Path], job_timeout: float, template: Path = PROJECT_TEMPLATE,
           data_root: Path | None = None, data_size: int = 64) -> list[dict]:
    """Provision, start, run ``jobs`` one after the other, stop; returns the per-job summaries.

    Without ``data_root`` demo studios of ``data_size`` px are generated in WORKDIR/data.
    """
    workdir = workdir.resolve()
    project = local_project(template, workdir / "project.yml", free_port())
    kits = provision(workdir / "project.yml", workdir / "workspace")
    if data_root is None:
        data_root = workdir / "data"
        make_studio_data(data_root, [p["name"] for p in participants(project, "client")], data_size)
    summaries = []
    with Deployment(kits, project, workdir, Path(data_root).resolve()) as system:
        system.start()
        for job in jobs:
            summaries.append(system.run_job(Path(job).resolve(), job_timeout))
    out = workdir / "output" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summaries, indent=2) + "\n")
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Provision FedGAI and run its jobs on localhost from the startup kits")
    p.add_argument("--workdir", type=Path, default=Path("runs/deploy"), help="everything goes here")
    p.add_argument("--job", type=Path, action="append", help="job folder to submit (repeatable; default: the "
                   "three committed jobs)")
    p.add_argument("--profile", help="export the jobs fresh for this profile instead (e.g. test, quick)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="seconds per job before it is aborted")
    p.add_argument("--project", type=Path, default=PROJECT_TEMPLATE, help="project file to provision from")
    p.add_argument("--data-root", type=Path, help="folder with one studio folder per site (default: demo studios)")
    p.add_argument("--data-size", type=int, default=64, help="demo studio image size in px (default 64)")
    args = p.parse_args(argv)
    if args.profile and args.job:
        p.error("use either --job or --profile")
    if args.profile:
        from fedgai.federated.jobs.he_job import export_jobs

        jobs = export_jobs(args.workdir.resolve() / "jobs", args.profile)
    else:
        jobs = args.job or DEFAULT_JOBS
    summaries = deploy(args.workdir, jobs, args.job_timeout, args.project, args.data_root, args.data_size)
    for s in summaries:
        print(f"{s['job']}: {s['status']} in {s['seconds']} s, result in {s['result']}")
    print(f"summary: {args.workdir / 'output' / 'summary.json'}")
    return 0 if all(s["status"] == COMPLETED for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
