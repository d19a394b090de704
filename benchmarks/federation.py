"""What the federation costs: bytes on the wire per mode, and everything a round spends outside the studios' work.

1. Upload per studio per round for each mode (fedgai = D without BN, fedavg_bn, fedavg_full = G + D), from
   the shared keys of the real networks at a profile's sizes: the D-only vs full G+D ratio.
2. Overhead of one simulator run (`fedgai simulate`, run here): per round, from the server's round
   timestamps and each studio's metrics. A studio's own work is its training and output writing (grid,
   checkpoint, metrics): `studio_seconds - setup_seconds` (set-up = building the trainer and loading data).
   - overhead = (round wall - studio critical path) / round wall, where the critical path is the shortest the
     round could be given the studios' own work with `threads` studios at a time: no shorter than the slowest
     studio's work, and no shorter than all studios' work spread evenly over the threads (when the simulator
     runs them a few at a time). What is left is dispatch, process start-up and swapping, trainer set-up,
     aggregation and saving. This is the target (<= 10 %). Round wall is from this round's start to the next's.
   - studio CPU share = sum of the studios' `studio_cpu_seconds` (set-up included) / (round wall x cores):
     how much of the machine's CPU went into studio work. It also drops when other programs use the cores,
     so it is read with the load average; what NVFlare itself burns shows in the whole run's CPU split
     (federation CPU - studios').

    python benchmarks/federation.py --profile quick --rounds 2 --studios 8 [--threads 2] [--slots 8] [--label before]

Each run is stored under its label in the results file (other labels are kept), so one file holds before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import psutil

from fedgai.config import profile
from fedgai.data import make_demo
from fedgai.federated.simulator.simulate import check_run, simulate, training_slots
from fedgai.models import build_gan
from fedgai.polling import Poller
from fedgai.sharing import shared_state

MODES = ("fedgai", "fedavg_bn", "fedavg_full")
RSS_POLL_S = 1.0


def wire_bytes(profile_name: str) -> dict[str, int]:
    """Bytes of the arrays one studio uploads per round, per mode (the encoder is never trained or sent)."""
    cfg = profile(profile_name)
    gan = build_gan(cfg)
    nets = {"generator": gan.generator, "discriminator": gan.discriminator}
    return {mode: int(sum(v.numel() * v.element_size() for v in shared_state(nets, mode).values()))
            for mode in MODES}


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished (waited-for) descendants."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class PeakRss(Poller):
    """Peak memory of this process and all its descendants together (the studios' processes too): the sum of
    their RSS, which counts the shared library pages (torch's alone are ~400 MB) once per process, and the sum
    of their PSS, which shares those pages out between the processes - the memory the run really takes."""

    def __init__(self) -> None:
        super().__init__(RSS_POLL_S)
        self.peak = 0
        self.peak_pss = 0

    def poll(self) -> None:
        me = psutil.Process()
        rss = pss = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except psutil.NoSuchProcess:  # a studio process that just ended
                continue
            rss, pss = rss + info.rss, pss + info.pss
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)


def round_rows(summaries: list[dict], threads: int, cores: int) -> list[dict]:
    """Per round: wall (start to next start), studio critical path, overhead, studio CPU share, set-up."""
    rows = []
    for i, s in enumerate(summaries):
        end = summaries[i + 1]["started_at"] if i + 1 < len(summaries) else s["ended_at"]
        wall = end - s["started_at"]
        metrics = [c["metrics"] for c in s["contributions"].values()]
        work = [m["studio_seconds"] - m["setup_seconds"] for m in metrics]
        slowest, per_thread = max(work), sum(work) / threads
        critical = max(slowest, per_thread)
        studio_cpu = sum(m["studio_cpu_seconds"] for m in metrics)
        rows.append({"round": s["round"], "aggregated": s["aggregated"], "wall_s": round(wall, 1),
                     "slowest_studio_s": round(slowest, 1), "studio_work_per_thread_s": round(per_thread, 1),
                     "overhead": round(max(wall - critical, 0.0) / wall, 3),
                     "studio_cpu_s": round(studio_cpu, 1), "studio_cpu_share": round(studio_cpu / (wall * cores), 3),
                     "setup_s": round(sum(m["setup_seconds"] for m in metrics), 1),
                     "train_s_max": round(max(m["train_seconds"] for m in metrics), 1)})
    return rows


def measure(profile_name: str, studios: int, rounds: int, threads: int | None, root: Path,
            slots: int | None = None) -> dict:
    """One simulator run, timed; demo data is generated first (outside the measurement) and reused."""
    cfg = profile(profile_name)
    cores = os.cpu_count() or 1
    slots = slots or training_slots(cfg, cores)
    data = root / "data"
    if not data.is_dir():
        make_demo(data, studios=studios, size=max(64, cfg.model.image_size), progress=False,
                  unpaired=cfg.data.demo_unpaired)
    workspace = root / f"run-threads-{threads or studios}"
    shutil.rmtree(workspace, ignore_errors=True)  # a fresh run: no resume state or checkpoints from an earlier one
    load = os.getloadavg()[0]
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with PeakRss() as rss:
        simulate(cfg.with_overrides({"fed.rounds": rounds}), studios, workspace, data, threads=threads, slots=slots)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    # Studios in parallel: the simulator's processes, of which only `slots` train at a time.
    rows = round_rows(check_run(workspace, rounds), min(threads or studios, slots), cores)
    steady = rows[1:] or rows  # round 0 also starts every studio's process and trainer
    studios_cpu = sum(r["studio_cpu_s"] for r in rows)
    return {
        "studios": studios, "rounds": rounds, "threads": threads or studios, "training_slots": slots, "cores": cores,
        "load_average_at_start": round(load, 2), "run_wall_s": round(wall, 1), "peak_rss_gb": round(rss.peak / 1e9, 2),
        "peak_pss_gb": round(rss.peak_pss / 1e9, 2),
        "rounds_detail": rows,
        "overhead_steady": round(sum(r["overhead"] for r in steady) / len(steady), 3),
        "studio_cpu_share_steady": round(sum(r["studio_cpu_share"] for r in steady) / len(steady), 3),
        "run_cpu_s": round(cpu, 1), "studios_cpu_s": round(studios_cpu, 1),
        "non_studio_cpu_share": round(1 - studios_cpu / cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--studios", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="studios run at once (default: one per studio; fewer swaps)")
    parser.add_argument("--slots", type=int, help="studios training at a time (default: fedgai simulate's, the "
                        "cores at one torch thread each; --slots equal to --studios: all at once)")
    parser.add_argument("--label", default="one process per studio", help="key of this run in the results file")
    parser.add_argument("--workspace", type=Path, help="where to run (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/federation.json"))
    args = parser.parse_args()
    # Offline machines: CLIP's load attempt then fails at once instead of retrying the hub for ~40 s in every
    # studio (cached weights still load). The studios' processes inherit it.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sizes = wire_bytes(args.profile)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update(profile=args.profile, upload_bytes_per_studio_round=sizes,
                  full_over_d_only=round(sizes["fedavg_full"] / sizes["fedgai"], 2))
    result.pop("rounds", None)  # the old format's single, unlabelled run
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workspace or Path(tmp)
        run = measure(args.profile, args.studios, args.rounds, args.threads, root, args.slots)
    result.setdefault("overhead", {})[args.label] = run
    print(json.dumps(run, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
