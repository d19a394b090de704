"""Cloud side: FedAvg over the shared discriminator entries only, screening every studio's update.

Per round: send the global entries (+ the federation's feature-space fingerprint) -> collect DIFF updates ->
drop bad ones with a reason -> cap weights, clip outsized updates, aggregate (aggregation.py) -> new global ->
save it (+ a JSON summary) -> save a resume state keyed by the job's identity and configuration. The server
builds the initial global model itself with the same builders the studios use, so it can exclude BatchNorm
by module type. Nothing here imports Opacus: the server never needs the DP machinery.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedgai.config import FedgaiConfig
from fedgai.federated import fingerprint as fp
from fedgai.federated.aggregation import (
    Weight,
    aggregate,
    capped_weights,
    clip_to_median_norm,
    update_norm,
)
from fedgai.federated.keys import (
    BUDGET_EXHAUSTED_KEY,
    CONFIG_META_KEY,
    DP_EPSILON_META_KEY,
    MODE_NETWORKS,
    shared_state,
)
from fedgai.federated.progress import RoundProgress
from fedgai.federated.validation import (
    clean_epsilon,
    clean_metrics,
    contribution_problem,
    sample_count,
    update_norm_bound,
)
from fedgai.models import build_discriminator, build_gan, per_sample_networks

OUTPUT_DIR = "fedgai"
STATE_FILE = "server_state.pt"
NO_RESULT = "no result before the round closed (timeout, straggler grace, or the studio's task failed: see the log)"
BUDGET_SPENT = "privacy budget exhausted: the studio sends no more updates"


class SummaryError(RuntimeError):
    """A run's round summaries are missing or incomplete."""


def apply_update(global_params: Mapping[str, np.ndarray], diff: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """global + diff, key by key (a DIFF never removes entries, unlike a partial FULL update)."""
    return {key: (value + diff[key]).astype(value.dtype) if key in diff else value
            for key, value in global_params.items()}


def initial_global(cfg: FedgaiConfig) -> dict[str, np.ndarray]:
    """The mode's shared entries of freshly built networks, seeded so every run starts alike.

    fedavg_full and fedbn also federate the generator, so the server needs the studios' encoder (for its
    channel counts) in those baselines only.
    """
    torch.manual_seed(cfg.train.seed)
    if "generator" in MODE_NETWORKS[cfg.fed.mode]:
        gan = build_gan(cfg)
        networks = {"generator": gan.generator, "discriminator": gan.discriminator}
    else:
        networks = {"discriminator": build_discriminator(cfg)}
    # Under DP-SGD build_discriminator already swaps BatchNorm for GroupNorm, which then stays local too.
    return {k: v.numpy() for k, v in shared_state(networks, cfg.fed.mode, per_sample_networks(cfg)).items()}


# ----------------------------------------------------------------------------------------------- summaries
def write_round_summary(out: Path, summary: Mapping[str, Any]) -> Path:
    """``out/round-NNN.json``; strict JSON (no NaN/Inf) - every value in it was validated and converted."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"round-{summary['round']:03d}.json"
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path


def read_round_summaries(out: Path, rounds: int, log: Path | None = None) -> list[dict]:
    """The round summaries of a finished run (plain or HE: one format), up to the round that ended it.

    Raises SummaryError naming the missing summaries (and the log to read) when the run stopped early.
    """
    summaries = []
    for rnd in range(rounds):
        path = out / f"round-{rnd:03d}.json"
        if not path.is_file():
            missing = ", ".join(f"round-{r:03d}.json" for r in range(rnd, rounds))
            raise SummaryError(f"the run stopped early: no {missing} in {out}" + (f"; see {log}" if log else ""))
        summaries.append(json.loads(path.read_text()))
        if summaries[-1].get("finished"):
            break
    return summaries


def unusable_reasons(summary: Mapping[str, Any]) -> dict[str, str]:
    """Every studio without a usable result this round -> why."""
    return {**{d["site"]: d["reason"] for d in summary["dropped"]}, **{s: NO_RESULT for s in summary["no_result"]}}


# ----------------------------------------------------------------------------------------------- resume
def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def job_identity(fl_ctx: FLContext | None) -> dict[str, str | None]:
    """The running job's id, name and submitter (from its meta): what a resume state belongs to."""
    if fl_ctx is None:
        return {"job_id": None, "name": None, "submitter": None}
    meta = fl_ctx.get_prop(FLContextKey.JOB_META) or {}
    return {"job_id": fl_ctx.get_job_id(), "name": meta.get("name"), "submitter": meta.get("submitter_name")}


def setting_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted settings that differ between two config dicts: ``train.lr_d: 0.0002 -> 0.001``."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += setting_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def resume_refusal(saved: Mapping[str, Any], identity: Mapping[str, Any], config: Mapping[str, Any],
                   policy: str) -> str | None:
    """Why an unfinished saved state must not be continued by this job under fed.resume = ``policy``, or None."""
    theirs = saved.get("identity") or {}
    if theirs.get("job_id") == identity["job_id"] and saved.get("config_hash") == config_hash(config):
        return None  # the same job, restarted
    owner = f"job {theirs.get('name')!r} (id {theirs.get('job_id')}, submitted by {theirs.get('submitter')})"
    if policy == "same_job":
        return f"it was left by another {owner}; fed.resume = same_job continues only this job's own state"
    differs = [f"{k}: {theirs.get(k)!r} -> {identity[k]!r}" for k in ("name", "submitter")
               if theirs.get(k) != identity[k]]
    differs += setting_differences(saved.get("config") or {}, config)
    if differs:
        return f"it was left by {owner}, which differs: {'; '.join(differs[:8])}"
    return None


def save_params(path: Path, params: Mapping[str, np.ndarray], **info: Any) -> None:
    """torch file with {"params": wire key -> tensor, **info}; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"params": {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}, **info}, tmp)
    tmp.replace(path)


def load_state(path: Path, reference: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """A saved server state whose entries match ``reference``'s keys and shapes (params as numpy), else None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = {k: v.numpy() for k, v in state["params"].items()}
    if set(params) != set(reference) or any(params[k].shape != reference[k].shape for k in reference):
        return None
    return {**state, "params": params}


def state_folder_name(identity: Mapping[str, Any]) -> str:
    """A job's resume folder: its name (so other jobs never meet its state), made filesystem-safe."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", identity.get("name") or identity.get("job_id") or "job")


# ----------------------------------------------------------------------------------------------- controller
@dataclass
class Federation:
    """What the server remembers across rounds (and in its resume state)."""

    first_counts: dict[str, int] = field(default_factory=dict)
    exhausted: list[str] = field(default_factory=list)
    feature_space: dict[str, Any] | None = None


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
        checkpoint_dir: where resume states live (one folder per job name); relative paths are under the
            server's workspace root (it must outlive a job's run folder). fed.resume decides whether an
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
        reference = initial_global(cfg)
        identity = job_identity(getattr(self, "fl_ctx", None))
        state_path = self._state_path(identity)
        start, global_params = self._resume(cfg, state_path, identity, reference)
        if start is None:
            return
        for rnd in range(start, cfg.fed.rounds):
            if self.abort_signal.triggered:
                return
            outcome = self._round(cfg, rnd, global_params, reference)
            if outcome is None:
                return
            global_params, finished = outcome
            if state_path:
                save_params(state_path, global_params, round=rnd, total_rounds=cfg.fed.rounds, finished=finished,
                            identity=identity, config=self.config, config_hash=config_hash(self.config),
                            federation=vars(self.federation))
            if finished:
                return

    def _resume(self, cfg: FedgaiConfig, state_path: Path | None, identity: Mapping[str, Any],
                reference: dict[str, np.ndarray]) -> tuple[int | None, dict[str, np.ndarray]]:
        """(first round, global entries): continue a saved state only as fed.resume allows; None after refusing."""
        saved = load_state(state_path, reference) if state_path else None
        if saved is None:
            return 0, dict(reference)
        if saved.get("finished") or saved["round"] + 1 >= saved.get("total_rounds", cfg.fed.rounds):
            self.info(f"{state_path} holds a finished run; starting a new one")
            return 0, dict(reference)
        if cfg.fed.resume == "never":
            self.info(f"fed.resume is never: starting over (the unfinished state in {state_path} will be replaced)")
            return 0, dict(reference)
        refusal = resume_refusal(saved, identity, self.config, cfg.fed.resume)
        if refusal:
            self.panic(f"refusing to continue the saved global model in {state_path}: {refusal}. Set fed.resume to "
                       "never to start over (the state is then replaced), or remove that folder")
            return None, {}
        self.federation = Federation(**saved.get("federation", {}))
        self.info(f"resuming from {state_path}: round {saved['round']} was the last one saved")
        return saved["round"] + 1, saved["params"]

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
        summary: dict[str, Any] = {"round": rnd, "total_rounds": cfg.fed.rounds, "mode": cfg.fed.mode,
                                   "aggregator": cfg.fed.aggregator, "started_at": started}
        if reference and usable:
            global_params = self._aggregate(usable, global_params, cfg, summary)
        finished = self._end_reason(targets, screened, cfg)
        contributions = {s.site: s.record for s in screened}
        summary.update(
            aggregated=len(usable), contributions=contributions,
            dropped=[{"site": s, "reason": r["reason"]} for s, r in contributions.items() if not r["accepted"]],
            no_result=sorted(set(targets) - set(contributions)), feature_space=self.federation.feature_space,
            bytes_sent_per_site=int(sum(v.nbytes for v in global_params.values())), finished=finished,
            ended_at=time.time(), wall_time_s=round(time.time() - started, 3),
        )
        summary["unusable"] = unusable_reasons(summary)
        out = Path(self.get_run_dir()) / OUTPUT_DIR
        write_round_summary(out, summary)
        if finished:
            self.info(f"round {rnd}: {finished}; the job ends normally")
        elif len(usable) < cfg.fed.min_clients:
            self.panic(f"round {rnd}: only {len(usable)} usable result(s), fed.min_clients is "
                       f"{cfg.fed.min_clients}; unusable: {summary['unusable']}")
            return None
        if reference:
            save_params(out / f"global-round-{rnd:03d}.pt", global_params, round=rnd, mode=cfg.fed.mode,
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
        """Check one result; everything kept of it is converted to plain JSON values here."""
        meta = result.meta if isinstance(result.meta, Mapping) else {}
        site = str(meta.get("client_name"))
        params = result.params if isinstance(result.params, Mapping) else {}
        metrics, nonfinite = clean_metrics(result.metrics)
        count, _ = sample_count(meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND))
        epsilon, epsilon_problem = clean_epsilon(meta.get(DP_EPSILON_META_KEY))
        record: dict[str, Any] = {
            "accepted": True, "reason": None, "num_samples": count, "metrics": metrics,
            "nonfinite_metrics": nonfinite, "dp_epsilon": epsilon, "keys": len(params),
            "bytes": int(sum(v.nbytes for v in params.values() if isinstance(v, np.ndarray))),
        }
        screened = Screened(site, record, params=dict(params), count=count)
        if meta.get(BUDGET_EXHAUSTED_KEY) is True:
            record["budget_exhausted"] = True
            screened.drop(BUDGET_SPENT)
            return screened
        problem = contribution_problem(
            result.params, result.params_type, meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND), reference,
            update_norm_bound(cfg, sum(v.size for v in reference.values())),
            count_required=cfg.privacy.dp == "none",
        ) or epsilon_problem
        if problem is None and reference:
            screened.feature_space, problem = fp.parse(meta.get(fp.FINGERPRINT_META_KEY))
        if problem is not None:
            screened.drop(problem)
            self.warning(f"dropping the update of {site}: {problem}")
        return screened

    def _check_feature_space(self, screened: list[Screened], cfg: FedgaiConfig) -> None:
        """Drop updates from another feature space; the first round's majority fixes the federation's."""
        usable = [s for s in screened if s.params is not None]
        if self.federation.feature_space is None:
            fitting = {s.site: s.feature_space for s in usable
                       if fp.update_problem(s.feature_space, fp.config_expectations(cfg)) is None}
            if fitting:
                self.federation.feature_space = fp.majority(fitting)
        expected = self.federation.feature_space or fp.config_expectations(cfg)
        for s in usable:
            problem = fp.update_problem(s.feature_space, expected)
            if problem:
                s.drop(problem)
                self.warning(f"dropping the update of {s.site}: {problem}")

    def _aggregate(self, usable: Mapping[str, Screened], global_params: dict[str, np.ndarray], cfg: FedgaiConfig,
                   summary: dict[str, Any]) -> dict[str, np.ndarray]:
        """Cap weights, clip outsized updates, aggregate; notes what was capped into each record."""
        if cfg.privacy.dp == "none":
            for s in usable.values():
                self.federation.first_counts.setdefault(s.site, s.count)
            weights = capped_weights({s.site: s.count for s in usable.values()}, cfg.fed,
                                     self.federation.first_counts)
        else:  # DP studios send no pair count: equal weights
            weights = {site: Weight(1.0) for site in usable}
        updates = {site: s.params for site, s in usable.items()}
        clipped, bound = clip_to_median_norm(updates, cfg.fed.norm_bound_factor)
        for site, s in usable.items():
            s.record.update(weight=weights[site].value, weight_note=weights[site].note,
                            update_norm=update_norm(updates[site]),
                            clipped=clipped[site] is not updates[site])
        diff = aggregate(clipped, weights, cfg.fed)
        summary.update(norm_bound=bound, global_update_norm=update_norm(diff))
        return apply_update(global_params, diff)

    def _state_path(self, identity: Mapping[str, Any]) -> Path | None:
        if not self.checkpoint_dir:
            return None
        root = Path(self.checkpoint_dir)
        if not root.is_absolute():
            root = Path(self.engine.get_workspace().get_root_dir()) / root
        return root / state_folder_name(identity) / STATE_FILE
