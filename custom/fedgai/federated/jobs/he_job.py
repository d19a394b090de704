"""The FedGAI job with homomorphic encryption (``fedgai_he``), and the export of all three jobs.

    fedgai job export --out jobs [--profile paper]    (writes jobs/fedgai, jobs/fedgai_dp and jobs/fedgai_he)

Builds the HE job from the components in he_server.py, he_studio.py and he_keys.py and the shared job parts
in job.py. It is a module of its own so that the imports go one way: he_job -> (he_*, job), never
job -> he_* -> job. For the same reason ``export_jobs`` (the whole job set) lives here, above both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nvflare.apis.dxo import DataKind
from nvflare.app_opt.he.model_serialize_filter import HEModelSerializeFilter
from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from fedgai.config import FedgaiConfig, profile
from fedgai.federated.he_keys import CLIENT_CONTEXT, SERVER_CONTEXT
from fedgai.federated.he_wire import PackedCiphertextLoader
from fedgai.federated.jobs.job import (
    DEFAULT_CHECKPOINT_DIR,
    TASK,
    add_dp_filter,
    add_studio_trainer,
    export,
    new_job,
    site_folders,
)
from fedgai.federated.server.he_server import (
    PERSISTOR_ID,
    CiphertextOnlyGuard,
    DiscriminatorPersistor,
    FeatureSpaceHEAggregator,
    FedgaiHEShareableGenerator,
    ResumableScatterAndGather,
    he_refusals,
)
from fedgai.federated.studio.audit import OutboundAudit
from fedgai.federated.studio.he_studio import PackedHEModelEncryptor, ShapedHEModelDecryptor
from fedgai.modes import mode as fed_mode

HE_JOB_NAME = "fedgai_he"
# The fed.* defences the server cannot apply to updates it cannot read: switched off by he_job_config (the
# exported HE job, ``fedgai simulate --he``); build_he_job refuses a config that still asks for them.
HE_UNREADABLE_BOUNDS = ("max_update_norm", "norm_bound_factor")


def he_job_config(cfg: FedgaiConfig) -> FedgaiConfig:
    """``cfg`` with the norm bounds an HE server cannot apply switched off (set to null, as the job then says)."""
    data = cfg.to_dict()
    data["fed"].update(dict.fromkeys(HE_UNREADABLE_BOUNDS))
    return FedgaiConfig.from_dict(data)


def build_he_job(
    cfg: FedgaiConfig,
    studios: Mapping[str, Path] | None = None,
    *,
    output_root: Path | None = None,
    checkpoint_dir: str = DEFAULT_CHECKPOINT_DIR,
    save_outbound_arrays: bool = False,
) -> FedJob:
    """The FedGAI job with HE for ``cfg`` (privacy.he is set to true in what the studios receive).

    Raises ValueError for a mode that shares nothing (local) and for settings an HE server cannot honour
    (he_refusals; apply he_job_config to switch off the norm bounds).

    Args:
        studios: site name -> studio folder (simulator, tests); None for a portable job whose sites find
            ``$FEDGAI_DATA_ROOT/<site>``.
        output_root: where the studios of a simulator run write their outputs (as job.build_job's).
        checkpoint_dir: where the server keeps resume states (as job.build_job's; "" disables resuming).
        save_outbound_arrays: passed to OutboundAudit (it stores plaintext arrays only; under HE none leave).
    """
    if not fed_mode(cfg.fed.mode).federated:
        raise ValueError(f"fed.mode {cfg.fed.mode!r} shares nothing, so there is nothing to encrypt; use the plain job")
    refusals = he_refusals(cfg)
    if refusals:  # a defence the config asks for must never be skipped silently
        raise ValueError("under HE these settings cannot be honoured: " + "; ".join(refusals))
    config = cfg.with_overrides({"privacy.he": True}).to_dict()
    job = new_job(HE_JOB_NAME, cfg)  # config only, pinned to the installed fedgai (see job.py)
    _add_server(job, cfg, config, site_folders(job, output_root, checkpoint_dir, studios))
    add_studio_trainer(job)
    job.to_clients(ShapedHEModelDecryptor(tenseal_context_file=CLIENT_CONTEXT), tasks=[TASK],
                   filter_type=FilterType.TASK_DATA)
    # Result filters run in order: client-level DP on the plaintext DIFF (if configured), encrypt (weighted by
    # NUM_STEPS_CURRENT_ROUND), then record what leaves.
    add_dp_filter(job, cfg)
    job.to_clients(PackedHEModelEncryptor(tenseal_context_file=CLIENT_CONTEXT, weigh_by_local_iter=True),
                   tasks=[TASK], filter_type=FilterType.TASK_RESULT)
    job.to_clients(OutboundAudit(save_arrays=save_outbound_arrays), tasks=[TASK],
                   filter_type=FilterType.TASK_RESULT)
    return job


def _add_server(job: FedJob, cfg: FedgaiConfig, config: dict, checkpoint_dir: str) -> None:
    job.to_server(HEModelSerializeFilter(tenseal_context_file=SERVER_CONTEXT), id="he_serialize_filter")
    job.to_server(DiscriminatorPersistor(config=config, filter_id="he_serialize_filter",
                                         checkpoint_dir=checkpoint_dir), id=PERSISTOR_ID)
    job.to_server(FedgaiHEShareableGenerator(config=config), id="shareable_generator")
    # Studios multiply by their pair count before encrypting; the aggregator caps the weights and sums.
    job.to_server(FeatureSpaceHEAggregator(expected_data_kind=DataKind.WEIGHT_DIFF, weigh_by_local_iter=False),
                  id="aggregator")
    job.to_server(TBAnalyticsReceiver(), id="tb_receiver")
    # The compact ciphertexts arrive as bytes: read them under the server's context, then screen them.
    job.to_server(PackedCiphertextLoader(tenseal_context_file=SERVER_CONTEXT), tasks=[TASK],
                  filter_type=FilterType.TASK_RESULT)
    job.to_server(CiphertextOnlyGuard(config=config), tasks=[TASK], filter_type=FilterType.TASK_RESULT)
    # Like FilteredFedAvg: wait for every studio up to the round timeout, or fed.straggler_grace after min_clients.
    grace = cfg.fed.round_timeout if cfg.fed.straggler_grace is None else cfg.fed.straggler_grace
    job.to_server(ResumableScatterAndGather(min_clients=cfg.fed.min_clients, num_rounds=cfg.fed.rounds,
                                            wait_time_after_min_received=grace, aggregator_id="aggregator",
                                            persistor_id=PERSISTOR_ID, shareable_generator_id="shareable_generator",
                                            train_task_name=TASK, train_timeout=cfg.fed.round_timeout),
                  id="controller")


def export_he(out: Path, profile_name: str = "paper") -> Path:
    """Write the portable HE job folder ``out/fedgai_he``; returns it."""
    build_he_job(he_job_config(profile(profile_name))).export_job(str(out))
    return Path(out) / HE_JOB_NAME


def export_jobs(out: Path, profile: str = "paper") -> list[Path]:
    """Write the three job folders for a profile: plain, client-level DP and encrypted (HE)."""
    return [export(out, profile), export(out, profile, dp=True), export_he(out, profile)]
