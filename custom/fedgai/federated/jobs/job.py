"""The FedGAI NVFlare jobs, built in Python (FedJob API) for both export and the simulator.

    fedgai job export --out jobs [--profile paper]    (or: make jobs)

writes ``jobs/fedgai/`` (meta.json, app/config/config_fed_{server,client}.json), its client-level DP variant
``jobs/fedgai_dp/`` and the homomorphic-encryption variant ``jobs/fedgai_he/`` (he_job.py, which also holds
``export_jobs``, the whole set). The jobs are configuration only: no ``app/custom`` folder, every class is
named by path from NVFlare or from the fedgai package installed at the server and the studios (``make wheel``;
docs/deployment.md). So studios can forbid custom code (BYOC) altogether and allow only the classes these
jobs name (allow_list.job_classes).
Each job records the fedgai version it was exported with (meta.json ``fedgai_version`` and the components'
``fedgai_version`` argument); a site with another version stops the job when it starts
(fedgai.federated.studio.executor).

Server: FilteredFedAvg (screened, BN-excluding FedAvg) + TensorBoard receiver for the studios' metrics.
Studios: client.py run in-process by StudioExecutor, analytics forwarded to the server, the client-level DP
filter when privacy.dp = "client", and OutboundAudit as the last result filter (a record of what left).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from fedgai.config import FedgaiConfig, generator_sharing_problem, profile
from fedgai.environment import scoped_env
from fedgai.federated.jobs.allow_list import allow_fedgai
from fedgai.federated.server.controller import FilteredFedAvg
from fedgai.federated.server.server_state import STATE_DIR_ENV
from fedgai.federated.studio.audit import OutboundAudit, OutboundEventAudit
from fedgai.federated.studio.client import OUTPUT_ROOT_ENV, PER_JOB_ENV, STUDIOS_ENV
from fedgai.federated.studio.executor import FedgaiVersionCheck, StudioExecutor, installed_version
from fedgai.privacy import GaussianDPFilter
from fedgai.safe_paths import relative_only
from fedgai.wire import VERSION_META_KEY

JOB_NAME = "fedgai"
DP_JOB_NAME = "fedgai_dp"
# The DP job: client-level DP at the operating point sized in docs/privacy.md (sigma 4 over the paper's 11
# rounds gives epsilon ~ 8.5 at delta 1e-5 for replacing a studio's data, sensitivity 2C); a studio stops
# contributing before epsilon would pass 10.
DP_JOB_SETTINGS = {"privacy.dp": "client", "privacy.noise_multiplier": 4.0, "privacy.clip_norm": 1.0,
                   "privacy.target_epsilon": 10.0}
TASK = "train"
DEFAULT_CHECKPOINT_DIR = "fedgai_state"


def required_version() -> str:
    """The installed fedgai version, which every exported job pins."""
    found = installed_version()
    if found is None:
        raise RuntimeError("fedgai is not installed (pip install -e . or the wheel from make wheel): a job pins "
                           "the installed fedgai version, which the sites must have too")
    return found


class FedgaiJob(FedJob):
    """A FedJob whose simulator sites allow what hardened kits allow (allow_list.py): the classes the shipped
    jobs name (both sides': the simulator has one ``local`` folder), enforced. Without that, NVFlare's default list
    refuses a config-only job's fedgai classes in the simulator too.

    ``site_env``: folders on this machine for a simulator run (studios' output root, server's resume folder),
    handed to the simulated sites through their environment, as a real site sets its own. A job never names
    absolute paths, so a job that has them is refused for export.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.site_env: dict[str, str] = {}

    def simulator_run(self, workspace: str, *args: Any, **kwargs: Any) -> int:
        local = Path(workspace) / "local"  # the simulator copies this folder into every site
        local.mkdir(parents=True, exist_ok=True)
        (local / "resources.json").write_text(json.dumps(allow_fedgai({"format_version": 2}), indent=2) + "\n")
        with contextlib.ExitStack() as stack:  # the simulated sites are started (and inherit it) in here
            for name, value in self.site_env.items():
                stack.enter_context(scoped_env(name, value))
            return super().simulator_run(workspace, *args, **kwargs)

    def export_job(self, job_root: str) -> None:
        if self.site_env:
            raise ValueError(f"this job names folders on this machine ({', '.join(sorted(self.site_env))}), "
                             "which only a simulator run may: export it without output_root and with a "
                             "relative checkpoint_dir; each site sets its own folders")
        super().export_job(job_root)


def new_job(name: str, cfg: FedgaiConfig) -> FedgaiJob:
    """An empty config-only job pinned to the installed fedgai: the server checks its version first."""
    pinned = required_version()
    job = FedgaiJob(name=name, min_clients=cfg.fed.min_clients, meta_props={VERSION_META_KEY: pinned})
    job.set_app_packages(["fedgai"])  # installed at the sites: never copied into app/custom
    job.to_server(FedgaiVersionCheck(fedgai_version=pinned), id="fedgai_version_check")
    return job


def site_folders(job: FedgaiJob, output_root: Path | None, checkpoint_dir: str,
                 studios: Mapping[str, Path] | None = None) -> str:
    """Hand this machine's folders to a simulator run's sites (FedgaiJob.site_env), as a real site sets its own
    (a job's script arguments never name folders: executor.check_script_args); returns the job's
    ``checkpoint_dir``: an absolute one becomes the simulated server's own resume folder, and the job keeps
    only the default relative name (which also keeps resuming on). A simulator workspace holds one run, so its
    studios write ``output_root/<site>`` (no job-id level)."""
    if studios:
        job.site_env[STUDIOS_ENV] = json.dumps({site: str(Path(folder).resolve()) for site, folder in studios.items()})
    if output_root is not None:
        job.site_env[OUTPUT_ROOT_ENV] = str(Path(output_root).resolve())
        job.site_env[PER_JOB_ENV] = "0"
    if checkpoint_dir and Path(checkpoint_dir).is_absolute():
        job.site_env[STATE_DIR_ENV] = checkpoint_dir
        return DEFAULT_CHECKPOINT_DIR
    return relative_only(checkpoint_dir, "checkpoint_dir") if checkpoint_dir else ""


def add_studio_trainer(job: FedJob) -> None:
    """The studios' executor (installed client.py, version-checked) and their metrics forwarding."""
    executor = StudioExecutor(fedgai_version=required_version())
    job.to_clients(executor, tasks=[TASK])
    job.to_clients(ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]), id="event_to_fed")
    job.to_clients(OutboundEventAudit(), id="outbound_event_audit")  # the event stream leaves the site too


def add_dp_filter(job: FedJob, cfg: FedgaiConfig) -> None:
    """Client-level DP: every studio clips and noises its result before it leaves (and before encryption)."""
    if cfg.privacy.dp != "client":
        return
    dp = cfg.privacy
    job.to_clients(GaussianDPFilter(clip_norm=dp.clip_norm, noise_multiplier=dp.noise_multiplier, delta=dp.delta,
                                    target_epsilon=dp.target_epsilon, accountant=dp.accountant),
                   tasks=[TASK], filter_type=FilterType.TASK_RESULT)


def build_job(
    cfg: FedgaiConfig,
    studios: Mapping[str, Path] | None = None,
    *,
    output_root: Path | None = None,
    checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR,
    save_outbound_arrays: bool = False,
    name: str = JOB_NAME,
) -> FedJob:
    """The FedGAI job for ``cfg``.

    Args:
        studios: site name -> studio folder, handed to a simulator run's sites in their environment
            (FedgaiJob.site_env; tests); None for a portable job whose sites find ``$FEDGAI_DATA_ROOT/<site>``.
        output_root: where the studios of a simulator run write their outputs (FedgaiJob.site_env; an
            exported job leaves it to each site: $FEDGAI_OUTPUT_ROOT, else ./fedgai_output).
        checkpoint_dir: the server's resume-state folder, relative to its workspace (see FilteredFedAvg);
            an absolute one is for a simulator run (site_folders).
        save_outbound_arrays: also store every sent array at the studios (OutboundAudit; for tests).
        name: the job's name (its folder name when exported).
    """
    if cfg.privacy.he:  # never fall back to plaintext updates silently
        raise ValueError("privacy.he is set: build the encrypted job with fedgai.federated.jobs.he_job.build_he_job")
    problem = generator_sharing_problem(cfg.fed, cfg.privacy)  # also for a config changed after validation
    if problem:
        raise ValueError(problem)
    job = new_job(name, cfg)
    checkpoint_dir = site_folders(job, output_root, checkpoint_dir, studios)
    job.to_server(FilteredFedAvg(config=cfg.to_dict(), checkpoint_dir=checkpoint_dir, task_name=TASK),
                  id="controller")
    job.to_server(TBAnalyticsReceiver(), id="tb_receiver")
    add_studio_trainer(job)
    add_dp_filter(job, cfg)
    job.to_clients(OutboundAudit(save_arrays=save_outbound_arrays), tasks=[TASK],
                   filter_type=FilterType.TASK_RESULT)
    return job


def export(out: Path, profile_name: str = "paper", dp: bool = False) -> Path:
    """Write the portable job folder ``out/fedgai`` (``out/fedgai_dp`` with client-level DP); returns it."""
    cfg = profile(profile_name)
    name = JOB_NAME
    if dp:
        cfg, name = cfg.with_overrides(DP_JOB_SETTINGS), DP_JOB_NAME
    build_job(cfg, name=name).export_job(str(out))
    return Path(out) / name
