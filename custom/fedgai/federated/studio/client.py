"""Studio side: the local GAN trainer as an NVFlare Client-API script (run by ScriptRunner).

Each round: receive the global discriminator entries -> load them into the local D (BatchNorm, spectral-norm
u/v and the whole generator stay as trained here) -> train G and D for the configured local epochs -> send
back only the shared entries as a DIFF, weighted by this studio's pair count, with the loss terms as metrics.
Photos, sketches, the generator and its AdaIN_SD sketch statistics never leave the site.

Where a site reads and writes is the site's choice, never the job's (issue 24 §2): its environment names the
studio folder ($FEDGAI_STUDIOS, a JSON object {site: folder}, else $FEDGAI_DATA_ROOT joined with the site name:
``ROOT/SITE`` or the one ``ROOT/SITE-*`` folder) and the output root ($FEDGAI_OUTPUT_ROOT, default
``fedgai_output`` in the site's working directory); the ledgers live in its workspace (privacy/policy.py). The
job's script arguments may name the device only (executor.check_script_args). Outputs go to
``OUTPUT_ROOT/<site>/<job id>``, so a new job never overwrites another's generator or metrics: checkpoints/last.pt
(resumable, holds the generator), grids/round-NNN.png, metrics.jsonl and a local TensorBoard log. A site that
sets $FEDGAI_OUTPUT_PER_JOB=0 (the simulator, whose workspace is one run) keeps ``OUTPUT_ROOT/<site>`` instead,
where the job's fed.resume rules decide which job's checkpoint continues.

The site decides its own privacy: with a policy in ``local/fedgai_privacy.json`` (privacy/policy.py) a job
that asks for less is refused before any pair is read, and the DP ledgers are the site's, in its workspace.
A checkpoint is resumed only as the server resumes its state: keyed by job id and config hash (fed.resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nvflare.client as flare
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.client.tracking import SummaryWriter

from fedgai.config import FedgaiConfig
from fedgai.federated.fingerprint import check_global_model, studio_feature_space
from fedgai.federated.round import Received, aggregation_weight, receive_global, studio_update
from fedgai.federated.studio.global_check import GlobalCheck, site_check_file
from fedgai.federated.studio.he_studio import sealing_problem
from fedgai.federated.studio.slots import SlotWait, training_slot
from fedgai.layout import ROUND_RECORDS
from fedgai.modes import mode as fed_mode
from fedgai.privacy import LEDGER_FILE, PrivacyBudgetExceeded, budget_allows_next_round
from fedgai.privacy.accountant import reported_epsilon
from fedgai.privacy.client_level import StudioClientDP
from fedgai.privacy.mechanism import UnsafeUpdateError
from fedgai.privacy.policy import SitePolicy, SitePolicyError, load_site_policy, studio_config
from fedgai.privacy.record import site_ledger
from fedgai.rundir import RunFolder
from fedgai.safe_paths import safe_name
from fedgai.trainer import StudioTrainer
from fedgai.wire import (
    BUDGET_EXHAUSTED_KEY,
    CONFIG_META_KEY,
    DP_EPSILON_META_KEY,
    FINGERPRINT_META_KEY,
    GLOBAL_REFUSED_META_KEY,
    TOOK_SHARED_STAGES_KEY,
    config_hash,
    release_meta,
)

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter as TensorBoardWriter

DATA_ROOT_ENV = "FEDGAI_DATA_ROOT"
OUTPUT_ROOT_ENV = "FEDGAI_OUTPUT_ROOT"
STUDIOS_ENV = "FEDGAI_STUDIOS"
PER_JOB_ENV = "FEDGAI_OUTPUT_PER_JOB"
RESUME_OWNER_KEY = "resume_owner"  # in the checkpoint's metadata: {"job_id", "config_hash"} of the job that wrote it


class StudioConfigChanged(RuntimeError):
    """A task carries another job config than the one the studio accepted at the job's first task."""


class StudioResumeRefused(RuntimeError):
    """The studio's checkpoint belongs to another job (or another configuration) than the one resuming."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's script arguments: the device only (folders are the site's, SitePaths)."""
    p = argparse.ArgumentParser(description="FedGAI studio trainer (an NVFlare Client-API script)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the job config's train.device)")
    return p.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class SitePaths:
    """Where this site's studio reads and writes, from the site's own environment."""

    studios: dict[str, Path]
    data_root: Path | None
    output_root: Path
    per_job: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SitePaths:
        return cls(studios=studio_map(environ.get(STUDIOS_ENV, "{}")),
                   data_root=Path(environ[DATA_ROOT_ENV]) if environ.get(DATA_ROOT_ENV) else None,
                   output_root=Path(environ.get(OUTPUT_ROOT_ENV) or "fedgai_output"),
                   per_job=environ.get(PER_JOB_ENV, "1") != "0")

    def output_dir(self, site: str, job_id: str | None) -> Path:
        """This site's outputs for this job (job id from NVFlare, a path component: safe_name)."""
        folder = self.output_root / site
        return folder / safe_name(job_id or "job") if self.per_job else folder


def studio_map(text: str) -> dict[str, Path]:
    """$FEDGAI_STUDIOS ({"site": "folder", ...}) -> {site: folder}."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"${STUDIOS_ENV} must be a JSON object {{site: folder}}: {err}") from err
    if not isinstance(data, dict) or not all(isinstance(v, str) and v for v in data.values()):
        raise ValueError(f"${STUDIOS_ENV} must be a JSON object {{site: folder}}, got {text!r}")
    return {site: Path(folder) for site, folder in data.items()}


def resolve_studio(site: str, studios: Mapping[str, Path], data_root: Path | None) -> Path:
    """This site's studio folder: an explicit mapping entry, else DATA_ROOT/SITE or the one DATA_ROOT/SITE-*."""
    if site in studios:
        return studios[site]
    if data_root is None:
        raise ValueError(f"site {site}: no studio folder configured; set ${DATA_ROOT_ENV} (or ${STUDIOS_ENV}) in "
                         "the site's environment")
    if (data_root / site).is_dir():
        return data_root / site
    matches = sorted(p for p in data_root.glob(f"{site}-*") if p.is_dir())
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise ValueError(f"site {site}: expected one studio folder {data_root}/{site} or {data_root}/{site}-*, "
                         f"found {found}")
    return matches[0]


def dp_enabled(cfg: FedgaiConfig) -> bool:
    return cfg.privacy.dp != "none"


def site_ledger_path(policy: SitePolicy | None = None) -> Path:
    """The site's ledger: the in-process script runs in the site's workspace root (NVFlare chdirs there in the
    simulator, POC and production); with a policy, the policy's one ledger there, else GaussianDPFilter's."""
    if policy is not None:
        return policy.ledger_path(Path.cwd())
    return Path.cwd() / LEDGER_FILE


def site_config(cfg: FedgaiConfig, policy: SitePolicy | None, job_id: str | None = None) -> FedgaiConfig:
    """The job's config as this site runs it (policy.studio_config: mode protection for every studio, the
    policy's consent and minimums, its budget as the target when the job sets none; under HE, StudioExecutor
    must be the one running job ``job_id``); SitePolicyError, printed, when the job asks for less."""
    try:
        problem = sealing_problem(cfg.privacy.he, job_id)
        if problem:
            raise SitePolicyError(f"this studio refuses the job: {problem}")
        return studio_config(cfg, policy)
    except SitePolicyError as err:
        print(f"refused: {err}", flush=True)
        raise


def can_afford_round(trainer: StudioTrainer, ledger_path: Path) -> bool:
    """Whether this studio's next round stays within privacy.target_epsilon (checked before training)."""
    cfg = trainer.cfg
    if trainer.record_dp is not None:
        return trainer.record_dp.affordable(cfg.train.epochs)
    return budget_allows_next_round(ledger_path, cfg.privacy, cfg.privacy.accountant)


def releasable(result: FLModel, cfg: FedgaiConfig, client_dp: StudioClientDP | None = None) -> FLModel:
    """What leaves the studio, decided here in the studio's own send path whatever result filters the job
    installs: only the meta wire.release_meta allows; under DP no metrics (computed on private pairs) and an
    equal weight; under client-level DP the update clipped and noised by ``client_dp`` (charged to the site's
    ledger), never as trained. A round the budget cannot pay for becomes a budget notice."""
    dp = dp_enabled(cfg)
    meta, _ = release_meta(dict(result.meta or {}), dp)
    params = result.params
    if params is not None and cfg.privacy.dp == "client":
        if client_dp is None:
            raise UnsafeUpdateError("client-level DP: the studio has no noise of its own to apply; nothing leaves")
        try:
            params, noise_meta = client_dp.release(params)
            meta.update(noise_meta)
        except PrivacyBudgetExceeded as err:  # another job spent the budget since this round was checked
            print(f"privacy budget exhausted at release ({err}); this studio stops contributing", flush=True)
            params, meta[BUDGET_EXHAUSTED_KEY] = None, True
    if params is None:  # a notice: an empty METRICS result with the budget flag and this job's epsilon
        if client_dp is not None:
            meta[DP_EPSILON_META_KEY] = client_dp.job_epsilon()
        return FLModel(metrics={} if dp else result.metrics, meta=meta, current_round=result.current_round)
    return FLModel(params=params, params_type=result.params_type, metrics=None if dp else result.metrics,
                   meta=meta, current_round=result.current_round)


def accept_global(trainer: StudioTrainer, received: FLModel, check: GlobalCheck | None) -> Received:
    """Load the round's global unless the HE decryptor or the studio's own ``check`` refuses it; a refused
    global is never loaded (so never saved in the studio's checkpoint): the round trains from the studio's own D,
    and the DIFF is taken from it. Only what this studio shares is accepted; fedgai_struct: after the guard."""
    reason = (received.meta or {}).get(GLOBAL_REFUSED_META_KEY)
    if not reason and check is not None:
        reason = check.review(received.params or {})
    if reason:
        print(f"{trainer.studio.name}: refusing the global model ({reason}); this round trains from the studio's "
              "own D", flush=True)
        return Received(trainer.shared_state())
    return receive_global(trainer, received.params or {})


def local_round(trainer: StudioTrainer, received: FLModel, ledger_path: Path | None = None,
                check: GlobalCheck | None = None) -> FLModel:
    """One federated round at a studio: load the global entries (``check``: the studio's GlobalCheck), train,
    return the DIFF update + metrics.

    The result is the studio's own record (metrics included); ``releasable`` decides what of it is sent.
    Under DP a round the budget cannot pay for is not trained: the result is a budget notice.
    """
    cfg = trainer.cfg
    if dp_enabled(cfg) and not can_afford_round(trainer, ledger_path or site_ledger_path()):
        return budget_exhausted_notice(trainer, "the next round would pass privacy.target_epsilon")
    federated = fed_mode(cfg.fed.mode).federated
    own_space = studio_feature_space(trainer)  # refuse a global D trained on another encoder's features
    if federated:
        check_global_model(own_space, (received.meta or {}).get(FINGERPRINT_META_KEY))
    loaded = accept_global(trainer, received, check) if federated else Received({})
    baseline, took_shared_stages = loaded.baseline, loaded.took_shared_stages
    started = time.perf_counter()
    try:
        update = studio_update(trainer, baseline if federated else None, tag=f" round {received.current_round}")
    except PrivacyBudgetExceeded as err:  # the trainer's own check, per epoch
        return budget_exhausted_notice(trainer, str(err))
    # train_seconds lets the server tell its own orchestration overhead from the studios' compute.
    metrics = {**update.losses, **trainer.quality(), "train_seconds": time.perf_counter() - started}
    meta = {FLMetaKey.NUM_STEPS_CURRENT_ROUND: aggregation_weight(trainer.cfg, trainer.num_samples),
            FINGERPRINT_META_KEY: own_space}
    if took_shared_stages is not None:  # the guard's one bit; its scores stay here (and in the studio's metrics)
        meta[TOOK_SHARED_STAGES_KEY] = took_shared_stages
    epsilon = trainer.dp_epsilon()  # record-level DP-SGD; client-level DP adds its own in releasable
    if epsilon is not None:
        meta[DP_EPSILON_META_KEY] = reported_epsilon(epsilon)
    return FLModel(params=update.diff, params_type=ParamsType.DIFF, metrics=metrics, meta=meta)


def budget_exhausted_notice(trainer: StudioTrainer, reason: str) -> FLModel:
    """No update, only the flag and the epsilon spent (client-level DP: GaussianDPFilter adds its epsilon)."""
    print(f"{trainer.studio.name}: privacy budget exhausted ({reason}); this studio stops contributing", flush=True)
    meta: dict = {BUDGET_EXHAUSTED_KEY: True}
    if trainer.dp_epsilon() is not None:
        meta[DP_EPSILON_META_KEY] = reported_epsilon(trainer.dp_epsilon())
    return FLModel(metrics={}, meta=meta)


def resume_owner(job_id: str | None, job_config: Mapping) -> dict[str, str | None]:
    """What a studio's checkpoint belongs to: the job's id and the hash of its config, as the server keys its
    own resume state (federated/server/server_state.py)."""
    return {"job_id": job_id, "config_hash": config_hash(job_config)}


def check_resume_owner(checkpoint: Path, owner: Mapping[str, str | None], policy: str) -> None:
    """Refuse to continue a checkpoint that another job (or this job with another config) left behind.

    As the server decides (server_state.resume_refusal): the same job id and config hash always continue;
    under fed.resume = same_config another job with the same config hash does too (the server also checks
    the job's name and submitter, which a studio does not see), under same_job it does not.
    """
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["metadata"].get(RESUME_OWNER_KEY) or {}
    same_config = policy == "same_config" and saved.get("config_hash") == owner.get("config_hash")
    if saved != owner and not same_config:
        raise StudioResumeRefused(
            f"refusing to resume the studio's checkpoint {checkpoint}: it was written by job "
            f"{saved.get('job_id')!r} (config {saved.get('config_hash')!r}), this is job {owner.get('job_id')!r} "
            f"(config {owner.get('config_hash')!r}); move it away to start this job afresh")


def open_trainer(cfg: FedgaiConfig, studio_dir: Path, out_dir: Path, resume: bool, device: str | None = None,
                 owner: Mapping[str, str | None] | None = None, ledger: Path | None = None) -> StudioTrainer:
    """Build the studio's trainer; when the federation resumes, continue from the site's last checkpoint if
    ``owner`` (resume_owner; the site's job always passes one) wrote it. ``ledger``: the site's record-level
    ledger (None: the run folder's)."""
    owner = dict(owner or {})
    checkpoint = RunFolder(out_dir).checkpoint
    resuming = resume and checkpoint.is_file()
    if resuming:
        check_resume_owner(checkpoint, owner, cfg.fed.resume)  # before the trainer exists: it releases the
        # sketch statistics
    with site_ledger(ledger):
        trainer = StudioTrainer(cfg, studio_dir, out_dir, device=device)
    if resuming:
        trainer.load_checkpoint()
    trainer.metadata[RESUME_OWNER_KEY] = owner  # saved with every checkpoint
    return trainer


def save_round(trainer: StudioTrainer, rnd: int, metrics: Mapping[str, float]) -> None:
    """Per-round site outputs: sample grid, resumable checkpoint, one metrics line."""
    trainer.save_grid(trainer.folder.grid(f"round-{rnd:03d}"))
    trainer.save_checkpoint()
    trainer.folder.append_record(ROUND_RECORDS, {"round": rnd, "epoch": trainer.epoch, **metrics})


@dataclasses.dataclass
class Studio:
    """What a studio process keeps from its first round to the last: trainer (with its data), metric writer,
    the site's own DP ledger (None: the run's), under client-level DP the noise the studio applies itself, and
    its check of every global it receives."""

    trainer: StudioTrainer
    writer: SummaryWriter | TensorBoardWriter
    ledger: Path | None
    config_hash: str  # of the job config the studio checked against its policy and built its trainer from
    client_dp: StudioClientDP | None = None
    global_check: GlobalCheck = dataclasses.field(default_factory=GlobalCheck)


def open_studio(received: FLModel, site: str, studio_dir: Path, args: argparse.Namespace,
                paths: SitePaths) -> Studio:
    """The trainer on the job's config under the site's policy, in this job's output folder, resumed past
    round 0."""
    policy = load_site_policy(Path.cwd())
    job_config = received.meta[CONFIG_META_KEY]
    job_id = flare.get_job_id()  # (5) what a resumed checkpoint must belong to; whose results are encrypted
    cfg = site_config(FedgaiConfig.from_dict(job_config), policy, job_id)
    ledger = site_ledger_path(policy) if dp_enabled(cfg) else None
    trainer = open_trainer(cfg, studio_dir, paths.output_dir(site, job_id), resume=received.current_round > 0,
                           owner=resume_owner(job_id, job_config), device=args.device,
                           ledger=ledger if policy and cfg.privacy.dp == "record" else None)
    # Under DP the scalars stay in the studio's own TensorBoard log: NVFlare's writer streams them to the server
    # as events, past every result filter.
    writer = trainer.writer if dp_enabled(cfg) else SummaryWriter()  # (6) NVFlare's metric streaming
    client_dp = StudioClientDP(cfg.privacy, ledger) if cfg.privacy.dp == "client" else None
    # The check of every global keeps its memory in the site's folder: restarting the studio cannot reset it.
    check = GlobalCheck(state_file=site_check_file(Path.cwd(), job_id, "script") if job_id else None)
    return Studio(trainer, writer, ledger, config_hash(job_config), client_dp, check)


def check_same_config(studio: Studio, received: FLModel) -> None:
    """Raise StudioConfigChanged when a later task carries another config than the one the studio checked: its
    policy decisions (mode, DP, HE) were taken on the first, and a server must not switch them mid-job."""
    sent = config_hash((received.meta or {}).get(CONFIG_META_KEY) or {})
    if sent != studio.config_hash:
        raise StudioConfigChanged(f"round {received.current_round}: the job's config changed (hash {sent}, the "
                                  f"studio accepted {studio.config_hash}); this studio stops taking part")


def studio_round(studio: Studio | None, received: FLModel, site: str, studio_dir: Path,
                 args: argparse.Namespace, paths: SitePaths, waited: SlotWait) -> tuple[Studio, FLModel]:
    """One round's work (the studio is opened in the first): train, save, log; returns the result to send."""
    started, cpu_started = time.perf_counter(), time.process_time()
    setup_seconds = 0.0  # stays 0 after the first round: the trainer and its data live as long as the run
    if studio is None:
        studio = open_studio(received, site, studio_dir, args, paths)
        setup_seconds = time.perf_counter() - started
    else:
        check_same_config(studio, received)
    result = local_round(studio.trainer, received, studio.ledger, studio.global_check)
    save_round(studio.trainer, received.current_round, result.metrics)
    # All the studio's own work this round (set-up, training, outputs), in wall and in this process's CPU
    # seconds: the rest of a round is NVFlare's (benchmarks/federation.py). The wait for a slot is neither.
    result.metrics.update(studio_seconds=time.perf_counter() - started,
                          studio_cpu_seconds=time.process_time() - cpu_started, setup_seconds=setup_seconds,
                          slot_wait_seconds=waited.seconds)
    for name, value in result.metrics.items():
        studio.writer.add_scalar(name, value, global_step=received.current_round)
    return studio, result


def main(argv: Sequence[str] | None = None) -> None:
    """The studio's loop; the numbered lines are its only contact with NVFlare (as in NVFlare's examples)."""
    args, paths = parse_args(argv), SitePaths.from_env()
    flare.init()  # (1) join the job
    site = flare.get_site_name()  # (2) the site's authenticated name: which studio folder to train on
    studio_dir = resolve_studio(site, paths.studios, paths.data_root)
    studio, rnd = None, 0
    while flare.is_running():  # (3) until the server ends the job
        received = flare.receive()  # (4) the global D entries and the job's config
        rnd = received.current_round
        # Studios sharing one machine (the simulator) take turns, largest first, and return freed memory after
        # (slots.py); a studio's size is known once its trainer is built.
        with training_slot(work=studio.trainer.num_samples if studio else 0) as waited:
            studio, result = studio_round(studio, received, site, studio_dir, args, paths, waited)
        flare.send(releasable(result, studio.trainer.cfg, studio.client_dp))  # (7) noised, gated, then filtered
    if studio is not None:
        if studio.trainer.cfg.edge.compress_after_training:  # the site's compressed generator, after the last round
            from fedgai.edge.distill import compress_after_federation

            compress_after_federation(studio.trainer, rnd)
        studio.trainer.close()


if __name__ == "__main__":
    main()
