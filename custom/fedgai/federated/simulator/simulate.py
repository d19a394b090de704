"""Run the FedGAI federation on this machine in NVFlare's simulator, then say where everything landed.

Every studio runs in its own simulator thread (process) for the whole run when the machine's memory holds them
all (else a bounded pool: pool_size); the console shows one progress line per round (progress.py) while
NVFlare's full log goes to the log files.

    fedgai simulate --studios 8 --rounds 3 --workspace runs/sim

Layout under the workspace: data/ (demo studios, if no data folder is given), studios/<site>/ (each
studio's checkpoints with its generator, per-round grids, metrics), server_state/ (resume state) and
nvflare/ (the simulator workspace: server logs, round summaries, global D, TensorBoard events).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path

import psutil
from nvflare.apis.fl_constant import WorkspaceConstants
from nvflare.fuel.utils import log_utils

from fedgai.config import FedgaiConfig
from fedgai.environment import scoped_env, scoped_environ
from fedgai.federated.jobs.job import build_job
from fedgai.federated.server.controller import OUTPUT_DIR
from fedgai.federated.server.progress import RoundProgress
from fedgai.federated.simulator import log_filters
from fedgai.federated.studio.slots import SLOTS_ENV, slots_spec
from fedgai.layout import (
    WORKSPACE_DATA,
    WORKSPACE_NVFLARE,
    WORKSPACE_SLOTS,
    WORKSPACE_STATE,
    WORKSPACE_STUDIOS,
)
from fedgai.losses import clip_preflight
from fedgai.models import resolve_encoder
from fedgai.modes import mode as fed_mode
from fedgai.polling import Poller
from fedgai.prior_build import build_missing_prior
from fedgai.round_summaries import SummaryError, new_round_summaries, read_round_summaries
from fedgai.rundir import prepare_workspace

SIM_JOB_DIR = "simulate_job"

log = logging.getLogger(__name__)
LOG_CONFIG = "nvflare_log_config.json"
PROGRESS_POLL_S = 0.5


# What one studio's simulator process takes (PSS, MB): a fixed part (Python, torch, NVFlare, fedgai, the encoder)
# and a part that grows with the pixels of a step's batch (activations, the feature cache). Calibrated on two
# measurements (docs/benchmarks.md): the test profile (32 px; benchmarks/scale.py: 459-508 MB per studio process
# with 8-20 of them) and the quick profile (128 px, batch 8 + 8 unpaired; benchmarks/federation.py: ~1.44 GB).
STUDIO_BASE_MB = 520
STUDIO_MB_PER_BATCH_MPIXEL = 3500
# Share of the memory available at start that the studios' processes may take (the server, ~0.9 GB measured,
# and the rest of the machine keep the remainder).
POOL_MEMORY_SHARE = 0.8
# How long a studio with no task waits before asking again (NVFlare's default: 2 s, most of a steady round's
# fixed cost in the simulator, where asking is a local message).
SIMULATOR_TASK_REQUEST_INTERVAL_S = 0.5


class SimulationError(RuntimeError):
    """The simulator did not produce a complete run."""


def studio_memory_mb(cfg: FedgaiConfig, training: bool = True) -> float:
    """Estimated peak memory of one studio's simulator process at these settings; ``training=False``: while it
    waits for its training slot (slots.py returns a step's memory after the round)."""
    pixels = (cfg.train.batch_size + cfg.train.unpaired_batch) * cfg.model.image_size ** 2
    return STUDIO_BASE_MB + (STUDIO_MB_PER_BATCH_MPIXEL * pixels / 1e6 if training else 0.0)


def training_slots(cfg: FedgaiConfig, cores: int) -> int:
    """Studios that train at once on this machine: as many as the cores hold at train.num_threads torch threads
    each (more would only share the cores, each holding a step's memory)."""
    return max(1, cores // (cfg.train.num_threads or 1))


def pool_size(studios: int, cfg: FedgaiConfig, available_bytes: int, slots: int | None = None) -> int:
    """Studio processes to run at once: one per studio when they all fit in POOL_MEMORY_SHARE of the available
    memory (each studio keeps its process, trainer and data: no per-round restarts), else as many as fit
    (at least one). Only ``slots`` of them (default: all) train at a time and hold a step's memory. Cores do not
    bound the pool: a waiting studio costs memory, not CPU, while a swapped-out one restarts its process every
    round."""
    budget = POOL_MEMORY_SHARE * available_bytes / 1e6
    waiting, training = studio_memory_mb(cfg, training=False), studio_memory_mb(cfg)
    for pool in range(studios, 0, -1):
        active = min(pool, slots or pool)
        if active * training + (pool - active) * waiting <= budget:
            return pool
    return 1


def choose_pool(studios: int, cfg: FedgaiConfig, slots: int) -> int:
    """pool_size for this machine's available memory, and one line that says what was chosen and why."""
    available = psutil.virtual_memory().available
    threads = pool_size(studios, cfg, available, slots)
    how = "one process per studio" if threads == studios else \
        f"studios swapped through {threads} processes, each restarting every round: fewer than the studios fit"
    print(f"simulator pool: {threads} of {studios} studios at once, {min(slots, threads)} training at a time "
          f"({how}; ~{studio_memory_mb(cfg) / 1e3:.1f} GB each while training, "
          f"{studio_memory_mb(cfg, training=False) / 1e3:.1f} GB waiting; {available / 1e9:.1f} GB available, "
          f"{os.cpu_count()} cores; --threads N / --slots N to choose)", flush=True)
    return threads


def resolve_auto_encoder(cfg: FedgaiConfig) -> FedgaiConfig:
    """model.encoder auto, resolved once for every studio on this machine (they all share it): one console line
    instead of one warning per studio."""
    if cfg.model.encoder != "auto":
        return cfg
    name, _, note = resolve_encoder(cfg.model)
    if note:
        print(note, flush=True)
    return cfg.with_overrides({"model.encoder": name})


def check_request(cfg: FedgaiConfig, studios: int, data_dir: Path | None) -> None:
    """Refuse, before anything is written, a federation the settings cannot run or a --data that is no
    folder of studios; one studio (allowed by fed.min_clients = 1) is run with a loud warning."""
    if studios < cfg.fed.min_clients:
        raise ValueError(f"--studios {studios}: every round needs at least fed.min_clients = {cfg.fed.min_clients} "
                         f"studios; pass --studios {cfg.fed.min_clients} or more, or a --config with a lower "
                         "fed.min_clients")
    if studios == 1:
        log.warning("ONE studio is not a federation: nothing is shared or aggregated with anyone "
                    "(compare with `fedgai train-local`)")
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        raise ValueError(f"--data {data_dir}: no such folder")
    if (Path(data_dir) / "photos").is_dir() or (Path(data_dir) / "sketches").is_dir():
        raise ValueError(f"--data {data_dir} looks like one studio; pass the folder that holds the studios")
    studio_folders(Path(data_dir), studios)


def studio_folders(data_dir: Path, studios: int) -> dict[str, Path]:
    """The first ``studios`` studio folders (those with photos/ and sketches/) as site studio-01, -02, ..."""
    folders = sorted(p for p in data_dir.iterdir() if (p / "photos").is_dir() and (p / "sketches").is_dir())
    if len(folders) < studios:
        raise ValueError(f"{data_dir} holds {len(folders)} studio folder(s), {studios} requested")
    return {f"studio-{i:02d}": folder for i, folder in enumerate(folders[:studios], start=1)}


def server_dir(workspace: Path) -> Path:
    """The simulated server's run folder."""
    return workspace / WORKSPACE_NVFLARE / "server" / SIM_JOB_DIR


def check_run(workspace: Path, rounds: int, output_dir: str = OUTPUT_DIR) -> list[dict]:
    """Round summaries of a finished run (plain: ``fedgai/``, HE: ``fedgai_he/``; one format), or a
    SimulationError naming what is missing and the log to read."""
    out = server_dir(workspace) / output_dir
    try:  # the controller's reader: it also accepts a run that ended normally early (privacy budget spent)
        return read_round_summaries(out, rounds, server_dir(workspace) / "log.txt")
    except SummaryError as err:
        raise SimulationError(str(err)) from err


def quiet_console_log_config(path: Path) -> Path:
    """NVFlare's default log config with the console at WARNING: every site's log.txt keeps the full INFO
    log, while the console shows problems and one progress line per round instead of hundreds of lines."""
    config = json.loads((Path(log_utils.__file__).parent / WorkspaceConstants.LOGGING_CONFIG).read_text())
    config["handlers"]["consoleHandler"]["level"] = "WARNING"
    # A filter class in a module that imports only the standard library: NVFlare's processes load it first thing.
    config.setdefault("filters", {})["more_results"] = {"()": f"{log_filters.__name__}.MoreResultsThanRequired"}
    config["handlers"]["consoleHandler"].setdefault("filters", []).append("more_results")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def no_progress_bars() -> contextlib.AbstractContextManager[None]:
    """Studios' per-epoch progress bars off (tqdm reads TQDM_DISABLE): eight interleaved bars are unreadable."""
    return scoped_env("TQDM_DISABLE", "1")


class ProgressPrinter(Poller):
    """Prints each round's progress line (progress.py) as its summary lands in ``out``, while the simulator runs.

    Summaries from an earlier run in the same workspace (started before this printer) are ignored.
    """

    def __init__(self, out: Path, poll_s: float = PROGRESS_POLL_S):
        super().__init__(poll_s, name="fedgai-progress")
        self.out = out
        self.since = time.time()
        self.progress = RoundProgress()
        self.printed: set[str] = set()

    def poll(self) -> None:
        for summary in new_round_summaries(self.out, self.printed, self.since):
            print(self.progress.line(summary), flush=True)


def simulate(
    cfg: FedgaiConfig,
    studios: int,
    workspace: Path,
    data_dir: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    save_outbound_arrays: bool = False,
    threads: int | None = None,
    slots: int | None = None,
) -> Path:
    """Simulate ``studios`` studios with the finished config ``cfg`` (profile, file and overrides already applied:
    `fedgai simulate`'s load_config, or ``profile(...).with_overrides(...)``); returns the server's output folder
    (round summaries and the global discriminator; encrypted under HE).

    The request is checked here, once, before the workspace is touched; ``resume``/``overwrite`` as
    rundir.prepare_workspace. Without ``data_dir``, demo studios are generated in ``workspace/data`` (at the
    profile's resolution). ``save_outbound_arrays`` keeps a copy of every array each studio sent (see
    OutboundAudit). ``threads``: studios run at once (default: as many as this machine's memory holds, see
    pool_size). With fewer threads than studios, NVFlare's simulator swaps studios in and out, restarting each
    studio's process - and its trainer - every round; with one thread per studio, every studio keeps its
    process, trainer and data for the whole run. ``slots``: studios that train at a time (default: the cores
    at train.num_threads each, see training_slots); the others wait holding only their networks and data.
    """
    if threads is not None and not 1 <= threads <= studios:
        raise ValueError(f"threads must be between 1 and the number of studios ({studios}), got {threads}")
    if slots is not None and slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    check_request(cfg, studios, data_dir)
    cores = os.cpu_count() or 1
    slots = slots or training_slots(cfg, cores)
    threads = threads or choose_pool(studios, cfg, slots)
    prepare_workspace(Path(workspace), resume=resume, overwrite=overwrite)
    studio_env = clip_preflight(cfg.loss)
    cfg = resolve_auto_encoder(cfg)
    build_missing_prior(cfg, announce=functools.partial(print, flush=True))  # studios and server only load it
    if cfg.train.num_threads is None:  # the training studios split the cores (at least one torch thread each)
        split = max(1, cores // min(threads, slots))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=split))
    workspace = Path(workspace).resolve()
    if slots < threads:
        studio_env[SLOTS_ENV] = slots_spec(workspace / WORKSPACE_SLOTS, slots)
    if data_dir is None:
        data_dir = workspace / WORKSPACE_DATA
        if not data_dir.is_dir():
            from fedgai.data import make_demo

            make_demo(data_dir, studios=studios, size=max(64, cfg.model.image_size), unpaired=cfg.data.demo_unpaired)
    sites = studio_folders(Path(data_dir), studios)
    sim_workspace = workspace / WORKSPACE_NVFLARE
    if cfg.privacy.he:
        from fedgai.federated.he_keys import prepare_simulator_he
        from fedgai.federated.jobs.he_job import HE_UNREADABLE_BOUNDS, build_he_job, he_job_config
        from fedgai.federated.server.he_server import HE_OUTPUT_DIR

        log.warning("HE: the server cannot read updates, so fed.%s are off", " and fed.".join(HE_UNREADABLE_BOUNDS))
        job = build_he_job(he_job_config(cfg), sites, output_root=workspace / WORKSPACE_STUDIOS,
                           checkpoint_dir=str(workspace / WORKSPACE_STATE), save_outbound_arrays=save_outbound_arrays)
        prepare_simulator_he(sim_workspace)
        out = server_dir(workspace) / HE_OUTPUT_DIR
    else:
        job = build_job(cfg, sites, output_root=workspace / WORKSPACE_STUDIOS,
                        checkpoint_dir=str(workspace / WORKSPACE_STATE), save_outbound_arrays=save_outbound_arrays)
        out = server_dir(workspace) / OUTPUT_DIR
    with scoped_environ(studio_env):  # the studio processes inherit it
        run_simulator(job, workspace, list(sites), threads, out)
    summaries = check_run(workspace, cfg.fed.rounds, out.name)
    print_summary(workspace, out, sites, summaries)
    return out


def run_simulator(job, workspace: Path, sites: list[str], threads: int, out: Path) -> None:
    """NVFlare's simulator on ``job`` in ``workspace/nvflare``, one progress line per round from ``out``."""
    job.to_server({"server": {"task_request_interval": SIMULATOR_TASK_REQUEST_INTERVAL_S}})
    log_config = quiet_console_log_config(workspace / LOG_CONFIG)
    with no_progress_bars(), ProgressPrinter(out):
        code = job.simulator_run(str(workspace / WORKSPACE_NVFLARE), clients=sites, threads=threads,
                                 log_config=str(log_config))
    if code != 0:
        raise SimulationError(f"the NVFlare simulator exited with code {code}; see {server_dir(workspace)}/log.txt")


def print_summary(workspace: Path, out: Path, sites: dict[str, Path], summaries: list[dict]) -> None:
    last = summaries[-1]
    print(f"\nFedGAI simulation finished: {len(summaries)} round(s), mode {last['mode']}, "
          f"{len(sites)} studio(s), last round aggregated {last['aggregated']}")
    for summary in summaries:
        dropped = "; ".join(f"{d['site']}: {d['reason']}" for d in summary["dropped"]) or "none"
        took = f", {summary['wall_time_s']} s" if "wall_time_s" in summary else ""
        print(f"  round {summary['round']}: {summary['aggregated']} aggregated{took}, "
              f"dropped: {dropped}, no result: {', '.join(summary['no_result']) or 'none'}")
    if fed_mode(last["mode"]).federated:  # the local-only baseline has no global model
        print(f"  global discriminator: {out}/global-round-{last['round']:03d}.*")
    print(f"  round summaries: {out}")
    print(f"  TensorBoard (all studios' metrics): tensorboard --logdir {server_dir(workspace) / 'tb_events'}")
    print(f"  studios' generators: {workspace}/studios/<site>/checkpoints/last.pt")
    print(f"  studios' sample grids: {workspace}/studios/<site>/grids/round-NNN.png")
    print(f"  logs: {workspace}/nvflare/<server|site>/log.txt")
