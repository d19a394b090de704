"""Cloud side: FedAvg over the shared discriminator entries only, screening every studio's update.

Per round: send the global entries (+ the federation's feature-space fingerprint) -> collect DIFF updates ->
drop bad ones with a reason -> cap weights, clip outsized updates, aggregate (aggregation.py) -> new global ->
save it (+ a JSON summary) -> save a resume state keyed by the job's identity and configuration. The server
builds the initial global model itself with the same builders the studios use, so it can exclude BatchNorm
by module type, and from the public prior when train.prior is on (prior.py: the studios' D starts there, and
round 0's global D would otherwise replace it). Nothing here imports Opacus: the server never needs the DP
machinery.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedgai.config import FedgaiConfig
from fedgai.federated import fingerprint as fp
from fedgai.federated.aggregation import TooFewStudios
from fedgai.federated.round import initial_global, server_step
from fedgai.federated.server.progress import RoundProgress
from fedgai.federated.server.screening import adopt_feature_space, screen_meta
from fedgai.federated.server.server_state import (
    Federation,
    job_identity,
    load_state,
    resume_decision,
    save_params,
    save_state,
    state_path,
)
from fedgai.federated.server.summary import BUDGET_SPENT, round_summary, unusable_reasons, write_round_summary
from fedgai.federated.server.validation import contribution_problem, update_norm_bound, update_norm_floor
from fedgai.layout import global_model_name
from fedgai.prior import PriorError
from fedgai.wire import BUDGET_EXHAUSTED_KEY, CONFIG_META_KEY, DP_EPSILON_META_KEY

OUTPUT_DIR = "fedgai"
STATE_FILE = "server_state.pt"


# ----------------------------------------------------------------------------------------------- controller
@dataclass
class Screened:
    """One studio's result after screening: its summary record, and its update and claimed count if usable."""

    site: str
    record: dict[str, Any]
    params: dict[str, np.ndarray] | None = None
    count: int | None = None
    feature_space: dict[str, Any] | None = None

    def drop(self, reason: str) -> None:
        self.record.update(accepted=False, reason=reason)
        self.params = None


class FilteredFedAvg(ModelController):
    """FedGAI's BN-excluding FedAvg with per-contribution screening, robust aggregation, round summaries and resume.

    Args:
        config: a FedgaiConfig as a dict (the job's single source of settings; sent to studios each round).
        checkpoint_dir: where resume states live (one folder per job name), relative to the server's workspace
            root (it must outlive a job's run folder; server_state.state_path). An absolute path or one with
            '..' is refused: the job does not choose where the server writes. fed.resume decides whether an
            unfinished state there is continued. "" disables resuming.
        task_name: the NVFlare task the studios' executor serves.
    """

    def __init__(self, config: dict, checkpoint_dir: str = "fedgai_state", task_name: str = "train"):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.task_name = task_name
        self.federation = Federation()
        self.progress = RoundProgress()

    def run(self) -> None:
        cfg = FedgaiConfig.from_dict(self.config)
        try:
            reference = initial_global(cfg)
        except PriorError as err:
            self.panic(f"cannot make the initial global model: {err}")
            return
        identity = self._identity()
        try:
            path = self._state_path(identity)
        except ValueError as err:  # UnsafePathError: an absolute or escaping checkpoint_dir
            self.panic(f"refusing the job's resume folder: {err}")
            return
        start, global_params = self._resume(cfg, path, identity, reference)
        if start is None:
            return
        for rnd in range(start, cfg.fed.rounds):
            if self.abort_signal.triggered:
                return
            outcome = self._round(cfg, rnd, global_params, reference)
            if outcome is None:
                return
            global_params, finished = outcome
            save_state(path, global_params, rnd=rnd, rounds=cfg.fed.rounds, finished=finished, identity=identity,
                       config=self.config, federation=self.federation)
            if finished:
                return

    def _identity(self) -> dict[str, str | None]:
        """The running job's identity (server_state.job_identity), None values outside a running job."""
        fl_ctx = getattr(self, "fl_ctx", None)
        if fl_ctx is None:
            return job_identity(None, None)
        return job_identity(fl_ctx.get_job_id(), fl_ctx.get_prop(FLContextKey.JOB_META))

    @property
    def _workspace_root(self) -> str:
        return self.engine.get_workspace().get_root_dir()

    def _state_path(self, identity: Mapping[str, Any]) -> Path | None:
        """This job's resume state (server_state.state_path); None, without asking the engine, when disabled."""
        if not self.checkpoint_dir:
            return None
        return state_path(self._workspace_root, self.checkpoint_dir, identity, STATE_FILE)

    def _resume(self, cfg: FedgaiConfig, path: Path | None, identity: Mapping[str, Any],
                reference: dict[str, np.ndarray]) -> tuple[int | None, dict[str, np.ndarray]]:
        """(first round, global entries): continue a saved state only as fed.resume allows; None after refusing."""
        decision = resume_decision(load_state(path, reference), path, identity, self.config, cfg.fed.rounds,
                                   cfg.fed.resume)
        if decision.refusal:
            self.panic(decision.refusal)
            return None, {}
        if decision.note:
            self.info(decision.note)
        if decision.saved is None:
            return 0, dict(reference)
        self.federation = Federation(**decision.saved.get("federation", {}))
        return decision.start, decision.saved["params"]

    def _round(self, cfg: FedgaiConfig, rnd: int, global_params: dict[str, np.ndarray],
               reference: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool] | None:
        """One round: (new global entries, whether the job ends here), or None after a panic."""
        started = time.time()
        targets = self.sample_clients()
        meta = {CONFIG_META_KEY: self.config}
        if self.federation.feature_space is not None:
            meta[fp.FINGERPRINT_META_KEY] = self.federation.feature_space
        model = FLModel(params=global_params, params_type=ParamsType.FULL, current_round=rnd,
                        total_rounds=cfg.fed.rounds, meta=meta)
        grace = cfg.fed.straggler_grace
        results = self.broadcast_model(
            task_name=self.task_name, data=model, targets=targets, timeout=cfg.fed.round_timeout,
            min_responses=None if grace is None else min(cfg.fed.min_clients, len(targets)),
            wait_time_after_min_received=grace or 0,
        )
        screened = [self._screen(result, reference, cfg) for result in results]
        if reference:
            self._check_feature_space(screened, cfg)
        usable = {s.site: s for s in screened if s.params is not None}
        measured: dict[str, Any] = {}
        if reference and usable:
            try:
                global_params = self._aggregate(usable, global_params, cfg, measured)
            except TooFewStudios as err:
                self.panic(f"round {rnd}: {err}")
                return None
        finished = self._end_reason(targets, screened, cfg)
        summary = round_summary(
            cfg, rnd, targets, {s.site: s.record for s in screened}, started=started, he=False,
            feature_space=self.federation.feature_space, finished=finished,
            bytes_sent=int(sum(v.nbytes for v in global_params.values())),
            norm_bound=update_norm_bound(cfg, sum(v.size for v in reference.values())), **measured)
        out = Path(self.get_run_dir()) / OUTPUT_DIR
        write_round_summary(out, summary)
        if finished:
            self.info(f"round {rnd}: {finished}; the job ends normally")
        elif len(usable) < cfg.fed.min_clients:
            self.panic(f"round {rnd}: only {len(usable)} usable result(s), fed.min_clients is "
                       f"{cfg.fed.min_clients}; unusable: {unusable_reasons(summary)}")
            return None
        if reference:
            save_params(out / global_model_name(rnd, ".pt"), global_params, round=rnd, mode=cfg.fed.mode,
                        config=self.config, feature_space=self.federation.feature_space)
        self.info(self.progress.line(summary))
        return global_params, finished is not None

    def _end_reason(self, targets: list[str], screened: list[Screened], cfg: FedgaiConfig) -> str | None:
        """Why the job ends normally after this round (too few studios have privacy budget left), or None."""
        spent = {s.site for s in screened if s.record.get("budget_exhausted")}
        self.federation.exhausted = sorted(spent | set(self.federation.exhausted))
        able = set(targets) - set(self.federation.exhausted)
        if len(able) >= cfg.fed.min_clients:
            return None
        return (f"no more rounds: the privacy budget is spent at {', '.join(self.federation.exhausted)}; "
                f"{len(able)} studio(s) can still contribute, fed.min_clients is {cfg.fed.min_clients}")

    def _screen(self, result: FLModel, reference: Mapping[str, np.ndarray], cfg: FedgaiConfig) -> Screened:
        """Check one result; everything kept of it is converted to plain JSON values here.

        The site is ``meta["client_name"]``, which ModelController sets from the client NVFlare authenticated.
        """
        meta = result.meta if isinstance(result.meta, Mapping) else {}
        site = str(meta.get("client_name"))
        params = result.params if isinstance(result.params, Mapping) else {}
        clear = screen_meta(meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), meta.get(DP_EPSILON_META_KEY),
                            result.metrics, meta.get(fp.FINGERPRINT_META_KEY), count_required=False,
                            space_required=bool(reference))
        record: dict[str, Any] = {
            "accepted": True, "reason": None, **clear.record, "keys": len(params),
            "bytes": int(sum(v.nbytes for v in params.values() if isinstance(v, np.ndarray))),
        }
        screened = Screened(site, record, params=dict(params), count=clear.count, feature_space=clear.feature_space)
        if meta.get(BUDGET_EXHAUSTED_KEY) is True:
            record["budget_exhausted"] = True
            screened.drop(BUDGET_SPENT)
            return screened
        problem = contribution_problem(
            result.params, result.params_type, meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), reference,
            update_norm_bound(cfg, sum(v.size for v in reference.values())),
            count_required=cfg.privacy.dp == "none", min_update_norm=update_norm_floor(cfg, reference),
        ) or clear.problem
        if problem is not None:
            screened.drop(problem)
            self.warning(f"dropping the update of {site}: {problem}")
        return screened

    def _check_feature_space(self, screened: list[Screened], cfg: FedgaiConfig) -> None:
        """Drop updates from another feature space; the first round's majority fixes the federation's."""
        usable = {s.site: s for s in screened if s.params is not None}
        problems = adopt_feature_space(self.federation, {site: s.feature_space for site, s in usable.items()}, cfg)
        for site, problem in problems.items():
            usable[site].drop(problem)
            self.warning(f"dropping the update of {site}: {problem}")

    def _aggregate(self, usable: Mapping[str, Screened], global_params: dict[str, np.ndarray], cfg: FedgaiConfig,
                   measured: dict[str, Any]) -> dict[str, np.ndarray]:
        """The server's step (federated/round.py) over the screened updates; notes what was capped or clipped
        into each record and what the aggregation measured into ``measured``."""
        counts = {s.site: s.count for s in usable.values()} if cfg.privacy.dp == "none" else None
        step = server_step(global_params, {site: s.params for site, s in usable.items()}, counts, cfg,
                           self.federation.first_counts, update_norm_floor(cfg, global_params))
        self.federation.first_counts = step.first_counts
        for site, s in usable.items():
            s.record.update(weight=step.weights[site].value, weight_note=step.weights[site].note,
                            update_norm=step.norms[site], clipped=step.clipped[site])
        measured.update(clip_bound=step.clip_bound, global_update_norm=step.step_norm)
        return step.params
