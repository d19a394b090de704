"""The FedGAI NVFlare job, built in Python (FedJob API) for both export and the simulator.

    fedgai job export --out jobs [--profile paper]    (or: make jobs)

writes ``jobs/fedgai/`` (meta.json, app/config/config_fed_{server,client}.json, app/custom/fedgai/...), a
folder an admin can submit as is, and its homomorphic-encryption variant ``jobs/fedgai_he/`` (he.py). A job
carries the whole fedgai package source in ``app/custom``, so sites need no fedgai install (only its
dependencies: torch, torchvision, ...).

Server: FilteredFedAvg (screened, BN-excluding FedAvg) + TensorBoard receiver for the studios' metrics.
Studios: client.py run in-process by ScriptRunner, analytics forwarded to the server, the client-level DP
filter when privacy.dp = "client", and OutboundAudit as the last result filter (a record of what left).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType
from nvflare.job_config.script_runner import FrameworkType, ScriptRunner

import fedgai
from fedgai.config import FedgaiConfig, profile
from fedgai.federated.audit import OutboundAudit
from fedgai.federated.controller import FilteredFedAvg
from fedgai.privacy import GaussianDPFilter

JOB_NAME = "fedgai"
DP_JOB_NAME = "fedgai_dp"
# The DP job: client-level DP at the operating point sized in docs/privacy.md (sigma 2 over the paper's 11
# rounds gives epsilon ~ 8.5 at delta 1e-5); a studio stops contributing before epsilon would pass 10.
DP_JOB_SETTINGS = {"privacy.dp": "client", "privacy.noise_multiplier": 2.0, "privacy.clip_norm": 1.0,
                   "privacy.target_epsilon": 10.0}
TASK = "train"
# The folder holding the fedgai package; the client script path is relative to it, as inside app/custom.
PACKAGE_ROOT = Path(fedgai.__file__).resolve().parent.parent
CLIENT_SCRIPT = "fedgai/federated/client.py"


def client_args(studios: Mapping[str, Path] | None, output_root: Path | None) -> str:
    """Script arguments; with neither, sites use $FEDGAI_DATA_ROOT/<site> and ./fedgai_output."""
    args = [f"--studio {site}={Path(folder).resolve()}" for site, folder in sorted((studios or {}).items())]
    if output_root is not None:
        args.append(f"--output-root {Path(output_root).resolve()}")
    text = " ".join(args)
    if any(" " in str(p) for p in [*(studios or {}).values(), output_root or ""]):
        raise ValueError(f"paths passed to the studios must not contain spaces: {text}")
    return text


def add_dp_filter(job: FedJob, cfg: FedgaiConfig) -> None:
    """Client-level DP: every studio clips and noises its result before it leaves (and before encryption)."""
    if cfg.privacy.dp != "client":
        return
    dp = cfg.privacy
    job.to_clients(GaussianDPFilter(clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier, delta=dp.delta,
                                    target_epsilon=dp.target_epsilon, accountant=dp.accountant),
                   tasks=[TASK], filter_type=FilterType.TASK_RESULT)


def ship_package(job: FedJob) -> None:
    """Copy every fedgai source file into the app's custom/ folder (server and studios)."""
    package = PACKAGE_ROOT / "fedgai"
    for source in sorted(package.rglob("*.py")):
        dest = str(source.parent.relative_to(PACKAGE_ROOT))
        job.add_file_to_server(str(source), dest_dir=dest)
        job.add_file_to_clients(str(source), dest_dir=dest)


def build_job(
    cfg: FedgaiConfig,
    studios: Mapping[str, Path] | None = None,
    *,
    output_root: Path | None = None,
    checkpoint_dir: str = "fedgai_state",
    save_outbound_arrays: bool = False,
    name: str = JOB_NAME,
) -> FedJob:
    """The FedGAI job for ``cfg``.

    Args:
        studios: site name -> studio folder, passed to the studios as script arguments (simulator, tests);
            None for a portable job whose sites find ``$FEDGAI_DATA_ROOT/<site>``.
        output_root: where studios write their outputs (default: ./fedgai_output at each site).
        checkpoint_dir: the server's resume-state folder (see FilteredFedAvg).
        save_outbound_arrays: also store every sent array at the studios (OutboundAudit; for tests).
        name: the job's name (its folder name when exported).
    """
    if cfg.privacy.he:  # never fall back to plaintext updates silently
        raise ValueError("privacy.he is set: build the encrypted job with fedgai.federated.he.build_he_job")
    job = FedJob(name=name, min_clients=cfg.fed.min_clients)
    job.to_server(FilteredFedAvg(config=cfg.to_dict(), checkpoint_dir=checkpoint_dir, task_name=TASK),
                  id="controller")
    job.to_server(TBAnalyticsReceiver(), id="tb_receiver")
    runner = ScriptRunner(script=CLIENT_SCRIPT, script_args=client_args(studios, output_root),
                          framework=FrameworkType.PYTORCH)
    # ScriptRunner checks the script path from the working directory; it must stay relative so that sites
    # find it inside app/custom, where ship_package puts it.
    with contextlib.chdir(PACKAGE_ROOT):
        job.to_clients(runner, tasks=[TASK])
    job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), id="event_to_fed")
    add_dp_filter(job, cfg)
    job.to_clients(OutboundAudit(save_arrays=save_outbound_arrays), tasks=[TASK],
                   filter_type=FilterType.TASK_RESULT)
    ship_package(job)
    return job


def export(out: Path, profile_name: str = "paper", dp: bool = False) -> Path:
    """Write the portable job folder ``out/fedgai`` (``out/fedgai_dp`` with client-level DP); returns it."""
    cfg = profile(profile_name)
    name = JOB_NAME
    if dp:
        cfg, name = cfg.with_overrides(DP_JOB_SETTINGS), DP_JOB_NAME
    build_job(cfg, name=name).export_job(str(out))
    return Path(out) / name


def export_jobs(out: Path, profile: str = "paper") -> list[Path]:
    """Write the three job folders for a profile: plain, client-level DP and encrypted (HE)."""
    from fedgai.federated.he import export_he  # he.py builds on this module

    return [export(out, profile), export(out, profile, dp=True), export_he(out, profile)]
