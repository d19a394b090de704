"""End-to-end FedGAI on localhost with NVFlare POC: a server, N studio sites and an admin.

    python poc/run_poc.py                              # submit jobs/fedgai as is (paper profile: long)
    python poc/run_poc.py --profile test --studios 2   # tiny job exported on the fly (about a minute)

Steps: demo studios (unless --data-root) -> `nvflare poc prepare` from a generated project.yml (server,
studio-01.., admin; free ports) -> kits hardened like provisioned ones (fedgai.federated.jobs.kits: config-only
jobs, server storage inside its kit) -> `nvflare poc start` (server + studios, no admin console) -> submit the job
with the Session API, monitor it, download the result -> `nvflare poc stop` + `nvflare poc clean`.
Everything is stopped on any failure or signal, and leftover processes of this workspace are killed by id.

Studios find their data the way a production site would: $FEDGAI_DATA_ROOT/<site name> (or the one
$FEDGAI_DATA_ROOT/<site name>-* folder), so the job folder is submitted unchanged. The NVFlare CLI runs with
HOME inside the workspace so that POC does not touch the user's ~/.nvflare settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ADMIN = "admin@fedgai.local"
PROJECT = "fedgai_poc"
NVFLARE = Path(sys.executable).parent / "nvflare"


class PocError(RuntimeError):
    """The POC run did not complete."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_yaml(studios: list[str], he: bool) -> str:
    """A POC project: server on two free ports, the studios, one project admin."""
    fed_port, admin_port = free_port(), free_port()
    clients = "".join(f"  - name: {s}\n    type: client\n    org: fedgai\n" for s in studios)
    he_builder = ("  - path: nvflare.lighter.impl.he.HEBuilder\n"
                  "    args: {poly_modulus_degree: 8192, coeff_mod_bit_sizes: [60, 40, 40], scale_bits: 40}\n"
                  if he else "")
    return f"""api_version: 3
name: {PROJECT}
description: FedGAI proof of concept on localhost
participants:
  - name: server
    type: server
    org: fedgai
    fed_learn_port: {fed_port}
    admin_port: {admin_port}
{clients}  - name: {ADMIN}
    type: admin
    org: fedgai
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args: {{config_folder: config}}
  - path: nvflare.lighter.impl.cert.CertBuilder
{he_builder}  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""


class Poc:
    """One POC deployment in ``workspace``; ``stop()`` is safe to call at any point."""

    def __init__(self, workspace: Path, data_root: Path):
        from fedgai.prior import ENV_DIR, cache_dir

        self.workspace = workspace
        self.poc_dir = workspace / "poc"
        self.env = {
            **os.environ,
            "NVFLARE_POC_WORKSPACE": str(self.poc_dir),
            "HOME": str(workspace / "home"),
            "FEDGAI_DATA_ROOT": str(data_root),
            ENV_DIR: str(cache_dir()),  # HOME moves: train.prior=auto still finds the priors built here
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        (workspace / "home").mkdir(parents=True, exist_ok=True)
        self.started = False

    def nvflare(self, *args: str, timeout: float = 300) -> None:
        print(f"$ nvflare {' '.join(args)}", flush=True)
        subprocess.run([str(NVFLARE), *args], env=self.env, check=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)

    def prepare(self, studios: list[str], he: bool) -> None:
        project = self.workspace / "project.yml"
        project.write_text(project_yaml(studios, he))
        self.nvflare("poc", "prepare", "-i", str(project), "--force")
        from fedgai.federated.jobs.kits import harden_kits

        harden_kits(self.poc_dir / PROJECT / "prod_00")  # the same site policies as provisioned kits

    def start(self) -> None:
        self.started = True
        self.nvflare("poc", "start", "--timeout", "120")

    def admin_kit(self) -> Path:
        return self.poc_dir / PROJECT / "prod_00" / ADMIN

    def stop(self, clean: bool) -> None:
        """Stop the services, kill what survived (by pid, only processes of this workspace), clean up."""
        if self.started:
            try:
                self.nvflare("poc", "stop", timeout=120)
            except (subprocess.SubprocessError, OSError) as err:
                print(f"nvflare poc stop failed: {err}", file=sys.stderr)
            kill_leftovers(self.poc_dir)
        if clean and self.poc_dir.exists():
            try:
                self.nvflare("poc", "clean", timeout=120)
            except (subprocess.SubprocessError, OSError) as err:
                print(f"nvflare poc clean failed ({err}); removing {self.poc_dir}", file=sys.stderr)
                shutil.rmtree(self.poc_dir, ignore_errors=True)


def workspace_pids(poc_dir: Path) -> list[int]:
    """Processes whose command line mentions this (unique) POC workspace: the ones this script started."""
    pids = []
    marker = str(poc_dir).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def kill_leftovers(poc_dir: Path, grace: float = 20.0) -> None:
    deadline = time.monotonic() + grace
    while workspace_pids(poc_dir) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in workspace_pids(poc_dir):
        print(f"killing leftover POC process {pid}", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def run_job(admin_kit: Path, job_dir: Path, results: Path, timeout: float) -> Path:
    """Submit, monitor, check the status and download the result; returns the downloaded folder."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    session = new_secure_session(ADMIN, str(admin_kit), timeout=60)
    try:
        job_id = session.submit_job(str(job_dir))
        print(f"submitted {job_dir} as job {job_id}", flush=True)
        code = session.monitor_job(job_id, timeout=timeout, poll_interval=5)
        status = session.get_job_meta(job_id).get("status")
        print(f"job {job_id}: monitor {code.name}, status {status}", flush=True)
        if status != "FINISHED:COMPLETED":
            raise PocError(f"job {job_id} ended with status {status} (monitor: {code.name})")
        results.mkdir(parents=True, exist_ok=True)
        return Path(session.download_job_result(job_id, str(results)))
    finally:
        session.close()


def check_result(result: Path, rounds: int) -> list[dict]:
    """The server's round summaries inside a downloaded job result."""
    summaries = sorted(result.rglob("fedgai/round-*.json"))
    if len(summaries) != rounds:
        raise PocError(f"expected {rounds} round summaries in {result}, found {len(summaries)}")
    return [json.loads(p.read_text()) for p in summaries]


def export_job(profile_name: str, out: Path) -> Path:
    from fedgai.federated.jobs.job import export

    return export(out, profile_name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", type=Path, help="working folder (default: a new temporary folder)")
    p.add_argument("--studios", type=int, default=2)
    p.add_argument("--profile", help="export a job with this profile (e.g. test) instead of using jobs/fedgai")
    p.add_argument("--job", type=Path, default=REPO / "jobs" / "fedgai", help="job folder to submit")
    p.add_argument("--data-root", type=Path, help="folder with one studio folder per site (default: demo data)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    p.add_argument("--he", action="store_true", help="provision homomorphic-encryption contexts")
    p.add_argument("--keep", action="store_true", help="keep the POC workspace (logs) after the run")
    args = p.parse_args(argv)

    workspace = (args.workspace or Path(tempfile.mkdtemp(prefix="fedgai-poc-"))).resolve()
    studios = [f"studio-{i:02d}" for i in range(1, args.studios + 1)]
    data_root = args.data_root or workspace / "data"
    if args.data_root is None and not data_root.exists():
        from fedgai.data import make_demo

        make_demo(data_root, studios=args.studios, size=64, progress=False)
    job_dir = export_job(args.profile, workspace / "job") if args.profile else args.job
    rounds = json.loads((job_dir / "app" / "config" / "config_fed_server.json").read_text())[
        "workflows"][0]["args"]["config"]["fed"]["rounds"]

    poc = Poc(workspace, data_root.resolve())
    # A signal ends the run through the finally below, so the services are always stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(128 + signal.SIGHUP))
    try:
        poc.prepare(studios, args.he)
        poc.start()
        result = run_job(poc.admin_kit(), job_dir, workspace / "results", args.timeout)
        summaries = check_result(result, rounds)
    finally:
        poc.stop(clean=not args.keep)
    print(f"\nPOC finished: {len(summaries)} round(s), aggregated per round: "
          f"{[s['aggregated'] for s in summaries]}")
    print(f"  job result (server workspace: round summaries, global D, TensorBoard): {result}")
    print(f"  studios' outputs stay at the sites: {workspace / 'poc'}/{PROJECT}/prod_00/<site>/fedgai_output"
          + (" (removed: run with --keep)" if not args.keep else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
