"""Run the provisioned FedGAI system across hosts: the server, each studio and the admin on a host of its own
(a Linux network namespace), cut one studio's link in the middle of a round and restore it.

    sudo .venv/bin/python provisioning/multihost.py [--workdir runs/multihost] [--grace 20]

Needs root and iproute2 (``ip netns``). It creates everything it uses and removes it at the end:

- one namespace per host (server, studio-a, studio-b, admin) plus a "lan" namespace with a bridge; every host
  is joined to the bridge by its own veth pair, with an address in 10.213.0.0/24 (no other interface, no
  route out: nothing reaches or leaves the machine's own network);
- each host's ``/etc/netns/<ns>/hosts`` maps the server's provisioned name to its address (``ip netns exec``
  bind-mounts it over /etc/hosts), so the kits reach the server by name, as at real sites, with TLS on the
  provisioned certificates;
- the project is provisioned unchanged (provisioning/project.yml, hardened kits), the plain job exported for
  the test profile with ``fed.straggler_grace`` seconds of grace, and the admin submits it from its own host;
- once the server has written round 0's summary, studio-b's link goes down (``ip link set <veth> down``):
  round 1 closes with studio-a after the grace; when it has, the link comes back and studio-b takes part in
  round 2 again.

Prints which studios were aggregated in each round; ``WORKDIR/output/summary.json`` holds the job's summary.
tests/test_multihost.py runs the same steps.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import yaml

from fedgai.config import profile
from fedgai.federated.jobs.job import build_job
from fedgai.federated.server.controller import OUTPUT_DIR
from fedgai.round_summaries import read_round_summaries

REPO = Path(__file__).resolve().parent.parent
SUBNET = "10.213.0"
PREFIX_LEN = 24
NETNS_ETC = Path("/etc/netns")
RESULT_FILE = "summary.json"


def _load_deploy():
    """provisioning/deploy.py is a script beside this one, not a package module."""
    spec = importlib.util.spec_from_file_location("fedgai_deploy", REPO / "provisioning" / "deploy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


deploy = _load_deploy()


class NetworkError(RuntimeError):
    """The namespaces could not be set up (not root, no iproute2, or the kernel refused)."""


# ----------------------------------------------------------------------------------------------- network
def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_problem() -> str | None:
    """Why this machine cannot run hosts in network namespaces, or None."""
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    probe = f"fgai-probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`ip netns add` fails here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


class Network:
    """Hosts on one private LAN: one namespace per host, each joined to a bridge (in a namespace of its own)
    by a veth pair. ``names`` maps extra host names (the server's FQDN) to a host, for every hosts file."""

    def __init__(self, hosts: Sequence[str], names: Mapping[str, str], tag: str | None = None):
        self.tag = tag or f"fgai{os.getpid()}"
        self.hosts = list(hosts)
        self.address = {host: f"{SUBNET}.{i + 1}" for i, host in enumerate(self.hosts)}
        self.names = dict(names)
        self.lan = f"{self.tag}-lan"

    def ns(self, host: str) -> str:
        """The host's namespace name: the tag and the host name in letters, digits and dashes."""
        return f"{self.tag}-{re.sub('[^A-Za-z0-9-]', '-', host)}"

    def port(self, host: str) -> str:
        """The LAN end of the host's veth pair (interface names: at most 15 characters)."""
        return f"p{self.hosts.index(host)}"

    def exec_prefix(self, host: str) -> list[str]:
        """Command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.ns(host)]

    def up(self) -> None:
        _ip("netns", "add", self.lan)
        _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.lan, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_host(host)

    def _add_host(self, host: str) -> None:
        ns, port = self.ns(host), self.port(host)
        _ip("netns", "add", ns)
        _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns", self.lan)
        _ip("-n", self.lan, "link", "set", port, "master", "br0")
        _ip("-n", self.lan, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{self.address[host]}/{PREFIX_LEN}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")  # NVFlare's job processes talk to their parent on localhost
        etc = NETNS_ETC / ns
        etc.mkdir(parents=True, exist_ok=True)
        lines = [f"127.0.0.1 localhost {socket.gethostname()}"]
        lines += [f"{self.address[target]} {name}" for name, target in self.names.items()]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "resolv.conf").write_text("")  # names resolve from the hosts file only, never by DNS

    def cut(self, host: str) -> None:
        """Unplug the host's cable: its veth goes down at the LAN end."""
        _ip("-n", self.lan, "link", "set", self.port(host), "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.lan, "link", "set", self.port(host), "up")

    def down(self) -> None:
        """Remove every namespace (and with them the veths) and hosts file this network created."""
        for ns in [*(self.ns(h) for h in self.hosts), self.lan]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[Network]:
        try:
            self.up()
            yield self
        finally:
            self.down()


# ----------------------------------------------------------------------------------------------- system
class MultiHostDeployment(deploy.Deployment):
    """deploy.Deployment with every participant on its own host; the admin session runs on the admin's host
    too (``admin_run``), so nothing here logs in from this process."""

    def __init__(self, kits: Path, project: dict, workdir: Path, data_root: Path, network: Network):
        super().__init__(kits, project, workdir, data_root)
        self.network = network

    def launch(self, kit: Path, log_name: str | None = None) -> subprocess.Popen:
        prefix = self.network.exec_prefix(kit.name)
        self.processes[kit] = deploy.start_kit(kit, self.log(log_name or kit.name), self.env, prefix)
        return self.processes[kit]

    def start_sites(self, timeout: float) -> None:
        server = self.launch(self.kits / self.server)
        deploy.wait_for_server(self.log(self.server), server, timeout)
        for site in self.sites:
            self.launch(self.kits / site)

    def submit_from_admin_host(self, jobs: Sequence[Path], timeout: float) -> subprocess.Popen:
        """Start ``admin_run`` on the admin's host: log in, wait for the studios, run ``jobs``, write
        ``WORKDIR/output/summary.json``."""
        cmd = [*self.network.exec_prefix(self.admin), sys.executable, str(Path(__file__).resolve()), "admin",
               "--workdir", str(self.workdir), "--kits", str(self.kits), "--data-root",
               str(Path(self.env[deploy.DATA_ROOT_ENV])), "--timeout", str(timeout),
               *(arg for job in jobs for arg in ("--job", str(job)))]
        return self.spawn(cmd, self.log("admin"))

    def spawn(self, cmd: Sequence[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.processes[log] = process  # stop() ends it too
        return process

    def round_file(self, rnd: int) -> Path | None:
        """The server's summary of round ``rnd`` of the running job, once written."""
        found = sorted((self.kits / self.server).glob(f"*/{OUTPUT_DIR}/round-{rnd:03d}.json"))
        return found[0] if found else None

    def wait_for_round(self, rnd: int, admin: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.round_file(rnd) is None:
            if admin.poll() is not None:
                raise deploy.DeployError(f"the admin exited ({admin.returncode}) before round {rnd} ended; see "
                                         f"{self.log('admin')}")
            if time.monotonic() > deadline:
                raise deploy.DeployError(f"round {rnd} did not end within {timeout:.0f} s; see {self.workdir}/logs")
            time.sleep(0.5)


def admin_run(workdir: Path, kits: Path, data_root: Path, jobs: Sequence[Path], timeout: float) -> list[dict]:
    """On the admin's host: the admin session runs each job and downloads its result (deploy.Deployment)."""
    project = yaml.safe_load((workdir / "project.yml").read_text())
    system = deploy.Deployment(kits, project, workdir, data_root)
    system.session = system.login(kits / system.admin, timeout)
    try:
        system.wait_for_studios(timeout)
        summaries = [system.run_job(job, timeout) for job in jobs]
    finally:
        system.session.close()
    out = workdir / "output" / RESULT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summaries, indent=2) + "\n")
    return summaries


# ----------------------------------------------------------------------------------------------- scenario
def prepare(workdir: Path, grace: int, rounds: int) -> tuple[Path, dict, Path, Path]:
    """Provision the project as it is (server reached by its name), demo studios, and the plain job for the
    test profile with ``grace`` s of straggler grace; returns (kits, project, data root, job folder)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(deploy.PROJECT_TEMPLATE, workdir / "project.yml")
    project = yaml.safe_load((workdir / "project.yml").read_text())
    kits = deploy.provision(workdir / "project.yml", workdir / "workspace")
    data_root = workdir / "data"
    deploy.make_studio_data(data_root, [p["name"] for p in deploy.participants(project, "client")])
    cfg = profile("test").with_overrides({"fed.rounds": rounds, "fed.straggler_grace": grace,
                                          "fed.round_timeout": 10 * grace})
    build_job(cfg).export_job(str(workdir / "jobs"))
    return kits, project, data_root, workdir / "jobs" / "fedgai"


def network_for(project: dict) -> Network:
    server = deploy.participants(project, "server")[0]["name"]
    hosts = [p["name"] for p in project["participants"]]
    return Network(hosts, names={server: server})


def cut_round_trip(workdir: Path, cut: str = "studio-b", grace: int = 20, rounds: int = 3,
                   timeout: float = 300.0) -> tuple[dict, list[dict]]:
    """The whole scenario; returns (the job's summary entry, its round summaries)."""
    workdir = workdir.resolve()
    kits, project, data_root, job = prepare(workdir, grace, rounds)
    with network_for(project).running() as network, \
            MultiHostDeployment(kits, project, workdir, data_root, network) as system:
        system.start_sites(timeout)
        admin = system.submit_from_admin_host([job], timeout)
        system.wait_for_round(0, admin, timeout)
        network.cut(cut)
        system.wait_for_round(1, admin, timeout)
        network.restore(cut)
        if admin.wait(timeout=timeout) != 0:
            raise deploy.DeployError(f"the admin failed ({admin.returncode}); see {system.log('admin')}")
    summary = json.loads((workdir / "output" / RESULT_FILE).read_text())[0]
    return summary, read_round_summaries(Path(summary["result"]) / "workspace" / OUTPUT_DIR, rounds)


def aggregated(summary: Mapping) -> list[str]:
    """The studios whose update went into a round's global model."""
    return sorted(site for site, record in summary["contributions"].items() if record["accepted"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run FedGAI's provisioned system across network namespaces and "
                                "cut one studio's link for a round")
    sub = p.add_subparsers(dest="command")
    admin = sub.add_parser("admin", help="(internal) the admin's part, run on the admin's host")
    admin.add_argument("--workdir", type=Path, required=True)
    admin.add_argument("--kits", type=Path, required=True)
    admin.add_argument("--data-root", type=Path, required=True)
    admin.add_argument("--job", type=Path, action="append", required=True)
    admin.add_argument("--timeout", type=float, required=True)
    p.add_argument("--workdir", type=Path, default=Path("runs/multihost"), help="everything goes here")
    p.add_argument("--grace", type=int, default=20, help="fed.straggler_grace in seconds (default 20)")
    args = p.parse_args(argv)
    if args.command == "admin":
        admin_run(args.workdir, args.kits, args.data_root, args.job, args.timeout)
        return 0
    problem = netns_problem()
    if problem:
        p.error(problem)
    started = time.monotonic()
    summary, rounds = cut_round_trip(args.workdir, grace=args.grace)
    for r in rounds:
        print(f"round {r['round']}: aggregated {', '.join(aggregated(r)) or 'nothing'}; no result from "
              f"{', '.join(r['no_result']) or 'nobody'} ({r['wall_time_s']:.1f} s)")
    print(f"{summary['job']}: {summary['status']}; {time.monotonic() - started:.0f} s in all")
    return 0 if summary["status"] == deploy.COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
