"""Many studios on one machine: NVFlare's simulator (`fedgai simulate`) with 8, 16 and 32 studios.

For each studio count, one simulator run at a profile (default: test) with the pool `fedgai simulate` picks
from this machine's memory (or --threads): peak memory (the sum of PSS and of RSS over the simulate process and
all its children, sampled every second) and that total per studio, round wall time and overhead share per
round (benchmarks/federation.py's definitions: round wall minus the studios' critical path, over the round wall).
All runs share one demo data folder, generated first and outside the measurement. The runs follow one another
in one process, so their ratios compare like with like even on a busy machine; absolute times move with load.

    python benchmarks/scale.py [--studios 8 16 32] [--rounds 3] [--profile test] [--threads N] [--set K=V ...]

With --server-step N [N ...] it runs no simulator: it times the server's round step (federated/round.py's
server_step: weights, median-norm bound, weighted mean, applied to the global D) on N random updates shaped like
the profile's shared D, and gives the bytes those updates hold: what a deployment's server does with N studios.

    python benchmarks/scale.py --profile quick --server-step 100 1000

--task-request-interval 2 0.5 runs each studio count with NVFlare's default task request interval (2 s) and
with the simulator's (0.5 s), one after the other.

Results: benchmarks/results/scale.json (one entry per --label) and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from federation import PeakRss, cpu_seconds, round_rows

import fedgai.federated.simulator.simulate as sim
from fedgai.cli import setting
from fedgai.config import profile
from fedgai.data import make_demo
from fedgai.federated.round import server_step
from fedgai.federated.simulator.simulate import check_run, pool_size, simulate
from fedgai.models import build_gan
from fedgai.polling import Poller
from fedgai.sharing import shared_state

RESULTS = Path(__file__).parent / "results" / "scale.json"
STUDIO_PROCESS = "simulator_worker"  # NVFlare's studio process (nvflare.private.fed.app.simulator.simulator_worker)


class SplitMemory(Poller):
    """Peak PSS of the studios' processes (NVFlare's simulator workers) and of everything else in this process
    tree (this process, the simulated server, NVFlare's manager), sampled every second, with the most studio
    processes seen at once."""

    def __init__(self) -> None:
        super().__init__(1.0, name="scale-memory")
        self.studios = self.rest = self.total = 0
        self.most_studios = 0

    def poll(self) -> None:
        me = psutil.Process()
        studios = rest = count = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                pss, studio = proc.memory_full_info().pss, STUDIO_PROCESS in " ".join(proc.cmdline())
            except psutil.NoSuchProcess:  # a studio process that just ended
                continue
            studios, rest, count = studios + pss * studio, rest + pss * (not studio), count + studio
        self.studios, self.rest = max(self.studios, studios), max(self.rest, rest)
        self.total, self.most_studios = max(self.total, studios + rest), max(self.most_studios, count)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studios", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--rounds", type=int, default=3, help="rounds per run (round 0 starts the processes)")
    p.add_argument("--profile", default="test")
    p.add_argument("--set", type=setting, action="append", metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--threads", type=int, help="studio processes at once (default: what fedgai simulate picks)")
    p.add_argument("--label", default="test profile, pool from memory")
    p.add_argument("--workspace", type=Path, help="where to run (default: a temporary folder)")
    p.add_argument("--server-step", type=int, nargs="+", metavar="N", help="time the server step for N studios")
    p.add_argument("--task-request-interval", type=float, nargs="+", metavar="S",
                   help="run each studio count with each of these simulator task request intervals (s), "
                   "side by side (default: simulate's)")
    return p.parse_args()


def server_step_cost(cfg, studios: int) -> dict:
    """Seconds of one server step on ``studios`` float32 updates of the shared D, and the bytes they hold."""
    nets = build_gan(cfg)
    shared = shared_state({"generator": nets.generator, "discriminator": nets.discriminator}, cfg.fed.mode)
    global_params = {k: v.detach().numpy().copy() for k, v in shared.items()}
    rng = np.random.default_rng(0)
    updates = {f"studio-{i:04d}": {k: rng.standard_normal(v.shape, dtype=np.float32) * 1e-3
                                   for k, v in global_params.items()} for i in range(studios)}
    counts = {site: 96 for site in updates}
    started = time.perf_counter()
    server_step(global_params, updates, counts, cfg, {})
    seconds = time.perf_counter() - started
    update_bytes = sum(v.nbytes for v in global_params.values())
    return {"studios": studios, "server_step_s": round(seconds, 2), "update_bytes": update_bytes,
            "updates_held_gb": round(studios * update_bytes / 1e9, 3)}


def run(cfg, studios: int, threads: int, data: Path, root: Path) -> dict:
    """One simulator run of ``studios`` studios, ``threads`` at a time, timed and its memory sampled."""
    workspace = root / f"studios-{studios}"
    shutil.rmtree(workspace, ignore_errors=True)
    load = os.getloadavg()[0]
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with PeakRss() as memory, SplitMemory() as split:
        simulate(cfg, studios, workspace, data, threads=threads)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    rows = round_rows(check_run(workspace, cfg.fed.rounds), threads, os.cpu_count() or 1)
    steady = rows[1:] or rows
    shutil.rmtree(workspace, ignore_errors=True)
    return {
        "studios": studios, "threads": threads, "rounds": cfg.fed.rounds, "load_average_at_start": round(load, 2),
        "run_wall_s": round(wall, 1), "run_cpu_s": round(cpu, 1),
        "peak_pss_gb": round(memory.peak_pss / 1e9, 2), "peak_rss_gb": round(memory.peak / 1e9, 2),
        "pss_per_studio_gb": round(memory.peak_pss / 1e9 / studios, 3),
        "studio_processes_peak_pss_gb": round(split.studios / 1e9, 2), "most_studio_processes": split.most_studios,
        "pss_per_studio_process_gb": round(split.studios / 1e9 / max(split.most_studios, 1), 3),
        "server_side_peak_pss_gb": round(split.rest / 1e9, 2),
        "steady_round_wall_s": round(sum(r["wall_s"] for r in steady) / len(steady), 1),
        "overhead_steady": round(sum(r["overhead"] for r in steady) / len(steady), 3),
        "rounds_detail": rows,
    }


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as benchmarks/federation.py: no hub retries per studio
    cfg = profile(args.profile).with_overrides({"fed.rounds": args.rounds} | dict(args.set or ()))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.server_step:
        steps = [server_step_cost(cfg, n) for n in args.server_step]
        print(json.dumps(steps))
        results[f"server step, {args.profile} profile"] = steps
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp)
        data = root / "data"
        if not data.is_dir():
            make_demo(data, studios=max(args.studios), size=max(64, cfg.model.image_size), progress=False,
                      unpaired=cfg.data.demo_unpaired)
        intervals = args.task_request_interval or [sim.SIMULATOR_TASK_REQUEST_INTERVAL_S]
        for studios in args.studios:
            threads = args.threads or pool_size(studios, cfg, psutil.virtual_memory().available)
            for interval in intervals:
                sim.SIMULATOR_TASK_REQUEST_INTERVAL_S = interval  # read by run_simulator when it starts a run
                rows.append({"task_request_interval_s": interval,
                             **run(cfg, studios, min(threads, studios), data, root)})
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds_detail"}), flush=True)
    results[args.label] = {"profile": args.profile, "settings": dict(args.set or ()), "cores": os.cpu_count(),
                           "memory_gb": round(psutil.virtual_memory().total / 1e9, 1), "runs": rows}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
