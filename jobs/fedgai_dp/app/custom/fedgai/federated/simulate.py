"""Run the FedGAI federation on this machine in NVFlare's simulator, then say where everything landed.

    fedgai simulate --studios 8 --rounds 3 --workspace runs/sim

Layout under the workspace: data/ (demo studios, if no data folder is given), studios/<site>/ (each
studio's checkpoints with its generator, per-round grids, metrics), server_state/ (resume state) and
nvflare/ (the simulator workspace: server logs, round summaries, global D, TensorBoard events).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedgai.config import FedgaiConfig
from fedgai.config import profile as load_profile
from fedgai.federated.controller import OUTPUT_DIR
from fedgai.federated.job import build_job

SIM_JOB_DIR = "simulate_job"


class SimulationError(RuntimeError):
    """The simulator did not produce a complete run."""


def studio_folders(data_dir: Path, studios: int) -> dict[str, Path]:
    """The first ``studios`` studio folders (those with photos/ and sketches/) as site studio-01, -02, ..."""
    folders = sorted(p for p in data_dir.iterdir() if (p / "photos").is_dir() and (p / "sketches").is_dir())
    if len(folders) < studios:
        raise SimulationError(f"{data_dir} holds {len(folders)} studio folder(s), {studios} requested")
    return {f"studio-{i:02d}": folder for i, folder in enumerate(folders[:studios], start=1)}


def server_dir(workspace: Path) -> Path:
    """The simulated server's run folder."""
    return workspace / "nvflare" / "server" / SIM_JOB_DIR


def check_run(workspace: Path, rounds: int) -> list[dict]:
    """Round summaries of a finished run, or a SimulationError naming what is missing and the log to read."""
    out = server_dir(workspace) / OUTPUT_DIR
    summaries = [out / f"round-{r:03d}.json" for r in range(rounds)]
    missing = [p.name for p in summaries if not p.is_file()]
    if missing:
        log = server_dir(workspace) / "log.txt"
        raise SimulationError(f"the run stopped early: no {', '.join(missing)} in {out}; see {log}")
    return [json.loads(p.read_text()) for p in summaries]


def check_he_run(workspace: Path, rounds: int, sites: list[str]) -> list[dict]:
    """Round summaries rebuilt from the HE server's records (it cannot read the updates it aggregates)."""
    from fedgai.federated.he import HE_OUTPUT_DIR, RECEIVED_DIR

    out = server_dir(workspace) / HE_OUTPUT_DIR
    missing = [f"global-round-{r:03d}.npz" for r in range(rounds) if not (out / f"global-round-{r:03d}.npz").is_file()]
    if missing:
        raise SimulationError(f"the run stopped early: no {', '.join(missing)} in {out}; "
                              f"see {server_dir(workspace) / 'log.txt'}")
    summaries = []
    for rnd in range(rounds):
        records = {site: json.loads(p.read_text()) for site in sites
                   if (p := out / RECEIVED_DIR / f"round-{rnd:03d}-{site}.json").is_file()}
        summaries.append({
            "round": rnd, "mode": "fedgai + HE",
            "aggregated": sum(r["accepted"] for r in records.values()),
            "dropped": [{"site": s, "reason": r["problem"]} for s, r in records.items() if not r["accepted"]],
            "no_result": sorted(set(sites) - set(records)),
        })
    return summaries


def simulate(
    studios: int,
    rounds: int | None,
    workspace: Path,
    profile: str | FedgaiConfig = "quick",
    data_dir: Path | None = None,
    mode: str | None = None,
    he: bool = False,
    *,
    save_outbound_arrays: bool = False,
) -> Path:
    """Simulate ``studios`` studios for ``rounds`` rounds (None = the profile's); returns the server's output
    folder (round summaries and the global discriminator; encrypted under HE).

    Without ``data_dir``, demo studios are generated in ``workspace/data`` (at the profile's resolution).
    ``save_outbound_arrays`` keeps a copy of every array each studio sent (see OutboundAudit).
    """
    threads = min(studios, os.cpu_count() or 1)
    base = load_profile(profile) if isinstance(profile, str) else profile
    cfg = base.with_overrides({"fed.rounds": rounds, "fed.mode": mode, "privacy.he": he or None})
    if cfg.train.num_threads is None:  # studios run side by side: share the cores instead of oversubscribing
        cfg = cfg.with_overrides({"train.num_threads": max(1, (os.cpu_count() or 1) // threads)})
    workspace = Path(workspace).resolve()
    if data_dir is None:
        data_dir = workspace / "data"
        if not data_dir.is_dir():
            from fedgai.data import make_demo

            make_demo(data_dir, studios=studios, size=max(64, cfg.model.image_size))
    sites = studio_folders(Path(data_dir), studios)
    sim_workspace = workspace / "nvflare"
    if cfg.privacy.he:
        from fedgai.federated.he import HE_OUTPUT_DIR, build_he_job, prepare_simulator_he

        job = build_he_job(cfg, sites, output_root=workspace / "studios", save_outbound_arrays=save_outbound_arrays)
        prepare_simulator_he(sim_workspace)
        out = server_dir(workspace) / HE_OUTPUT_DIR
    else:
        job = build_job(cfg, sites, output_root=workspace / "studios",
                        checkpoint_dir=str(workspace / "server_state"), save_outbound_arrays=save_outbound_arrays)
        out = server_dir(workspace) / OUTPUT_DIR
    code = job.simulator_run(str(sim_workspace), clients=list(sites), threads=threads)
    if code != 0:
        raise SimulationError(f"the NVFlare simulator exited with code {code}; see {server_dir(workspace)}/log.txt")
    if cfg.privacy.he:
        summaries = check_he_run(workspace, cfg.fed.rounds, list(sites))
    else:
        summaries = check_run(workspace, cfg.fed.rounds)
    print_summary(workspace, out, sites, summaries)
    return out


def print_summary(workspace: Path, out: Path, sites: dict[str, Path], summaries: list[dict]) -> None:
    last = summaries[-1]
    print(f"\nFedGAI simulation finished: {len(summaries)} round(s), mode {last['mode']}, "
          f"{len(sites)} studio(s), last round aggregated {last['aggregated']}")
    for summary in summaries:
        dropped = "; ".join(f"{d['site']}: {d['reason']}" for d in summary["dropped"]) or "none"
        took = f", {summary['wall_time_s']} s" if "wall_time_s" in summary else ""
        print(f"  round {summary['round']}: {summary['aggregated']} aggregated{took}, "
              f"dropped: {dropped}, no result: {', '.join(summary['no_result']) or 'none'}")
    if last["mode"] != "local":  # the local-only baseline has no global model
        print(f"  global discriminator: {out}/global-round-{last['round']:03d}.*")
    print(f"  round summaries: {out}")
    print(f"  TensorBoard (all studios' metrics): tensorboard --logdir {server_dir(workspace) / 'tb_events'}")
    print(f"  studios' generators: {workspace}/studios/<site>/checkpoints/last.pt")
    print(f"  studios' sample grids: {workspace}/studios/<site>/grids/round-NNN.png")
    print(f"  logs: {workspace}/nvflare/<server|site>/log.txt")
