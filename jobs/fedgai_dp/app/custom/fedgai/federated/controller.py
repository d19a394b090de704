"""Cloud side: FedAvg over the shared discriminator entries only, screening every studio's update.

Per round: send the global entries -> collect DIFF updates -> drop bad ones with a reason -> sample-weighted
mean -> new global -> save it (+ a JSON summary) -> save a resume state. The server builds the initial
global model itself with the same builders the studios use, so it can exclude BatchNorm by module type.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.model_controller import ModelController

from fedgai.config import FedgaiConfig
from fedgai.federated.keys import CONFIG_META_KEY, DP_EPSILON_META_KEY, MODE_NETWORKS, shared_state
from fedgai.federated.validation import contribution_problem, update_norm, update_norm_bound
from fedgai.models import build_discriminator, build_gan
from fedgai.privacy import BUDGET_EXHAUSTED_KEY

OUTPUT_DIR = "fedgai"
STATE_FILE = "server_state.pt"


def weighted_mean(updates: Sequence[tuple[Mapping[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of DIFF updates (computed in float64, returned in each entry's dtype)."""
    total = float(sum(weight for _, weight in updates))
    if not updates or total <= 0:
        raise ValueError("weighted_mean needs at least one update with a positive weight")
    first = updates[0][0]
    return {
        key: (sum(params[key].astype(np.float64) * weight for params, weight in updates) / total).astype(
            first[key].dtype
        )
        for key in first
    }


def apply_update(global_params: Mapping[str, np.ndarray], diff: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """global + diff, key by key (a DIFF never removes entries, unlike a partial FULL update)."""
    return {key: (value + diff[key]).astype(value.dtype) if key in diff else value
            for key, value in global_params.items()}


def scalar_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The numeric metrics of a result (anything else a studio sends is left out of the JSON summary)."""
    return {k: float(v) for k, v in (metrics or {}).items()
            if isinstance(v, int | float | np.number) and not isinstance(v, bool)}


def initial_global(cfg: FedgaiConfig) -> dict[str, np.ndarray]:
    """The mode's shared entries of freshly built networks, seeded so every run starts alike.

    fedavg_full also federates the generator, so the server needs the studios' encoder (for its channel
    counts) in that baseline only.
    """
    torch.manual_seed(cfg.train.seed)
    if "generator" in MODE_NETWORKS[cfg.fed.mode]:
        gan = build_gan(cfg)
        networks = {"generator": gan.generator, "discriminator": gan.discriminator}
    else:
        networks = {"discriminator": build_discriminator(cfg)}
    # Under DP-SGD build_discriminator already swaps BatchNorm for GroupNorm, which then stays local too.
    groupnorm = cfg.privacy.dp == "record"
    return {k: v.numpy() for k, v in shared_state(networks, cfg.fed.mode, groupnorm).items()}


def fingerprint(cfg: FedgaiConfig) -> str:
    """Identifies what the global model is (architecture + mode), so a resume never loads a foreign state."""
    blob = json.dumps({"model": cfg.to_dict()["model"], "mode": cfg.fed.mode, "dp": cfg.privacy.dp},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_params(path: Path, params: Mapping[str, np.ndarray], **info: Any) -> None:
    """torch file with {"params": wire key -> tensor, **info}; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"params": {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}, **info}, tmp)
    tmp.replace(path)


def load_resume_state(path: Path, reference: Mapping[str, np.ndarray]) -> tuple[int, dict[str, np.ndarray]] | None:
    """(last finished round, params) from a resume state that matches ``reference``'s keys and shapes."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = {k: v.numpy() for k, v in state["params"].items()}
    if set(params) != set(reference) or any(params[k].shape != reference[k].shape for k in reference):
        return None
    return int(state["round"]), params


class FilteredFedAvg(ModelController):
    """FedGAI's BN-excluding FedAvg with per-contribution screening, round summaries and resume.

    Args:
        config: a FedgaiConfig as a dict (the job's single source of settings; sent to studios each round).
        checkpoint_dir: where the resume state lives; relative paths are under the server's workspace root
            (it must outlive a job's run folder). A job finds an unfinished state of the same model and mode
            there and continues after its last saved round. "" disables resuming.
        task_name: the NVFlare task the studios' executor serves.
    """

    def __init__(self, config: dict, checkpoint_dir: str = "fedgai_state", task_name: str = "train"):
        super().__init__(persistor_id="", ignore_result_error=True)
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.task_name = task_name

    def run(self) -> None:
        cfg = FedgaiConfig.from_dict(self.config)
        global_params = initial_global(cfg)
        reference = dict(global_params)
        state_path = self._state_path(cfg)
        start = 0
        resumed = load_resume_state(state_path, reference) if state_path else None
        if resumed and resumed[0] + 1 < cfg.fed.rounds:
            start, global_params = resumed[0] + 1, resumed[1]
            self.info(f"resuming from {state_path}: round {resumed[0]} was the last one saved")
        elif resumed:
            self.info(f"{state_path} holds a finished run; starting a new one")
        for rnd in range(start, cfg.fed.rounds):
            if self.abort_signal.triggered:
                return
            global_params = self._round(cfg, rnd, global_params, reference)
            if global_params is None:
                return
            if state_path:
                save_params(state_path, global_params, round=rnd, fingerprint=fingerprint(cfg))

    def _round(self, cfg: FedgaiConfig, rnd: int, global_params: dict[str, np.ndarray],
               reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """One round; returns the new global entries, or None after a panic (too few usable results)."""
        started = time.monotonic()
        targets = self.sample_clients()
        model = FLModel(params=global_params, params_type=ParamsType.FULL, current_round=rnd,
                        total_rounds=cfg.fed.rounds, meta={CONFIG_META_KEY: self.config})
        grace = cfg.fed.straggler_grace
        results = self.broadcast_model(
            task_name=self.task_name, data=model, targets=targets, timeout=cfg.fed.round_timeout,
            min_responses=None if grace is None else min(cfg.fed.min_clients, len(targets)),
            wait_time_after_min_received=grace or 0,
        )
        summary = self._screen(results, reference, cfg)
        summary["no_result"] = sorted(set(targets) - set(summary["contributions"]))
        accepted = [(r.params or {}, r.meta[FLMetaKey.NUM_STEPS_CURRENT_ROUND]) for r in results
                    if summary["contributions"][r.meta["client_name"]]["accepted"]]
        if reference and accepted:
            diff = weighted_mean(accepted)
            global_params = apply_update(global_params, diff)
            summary["global_update_norm"] = update_norm(diff)
        summary.update(round=rnd, total_rounds=cfg.fed.rounds, mode=cfg.fed.mode, aggregated=len(accepted),
                       bytes_sent_per_site=int(sum(v.nbytes for v in global_params.values())),
                       wall_time_s=round(time.monotonic() - started, 3))
        out = Path(self.get_run_dir()) / OUTPUT_DIR
        out.mkdir(parents=True, exist_ok=True)
        (out / f"round-{rnd:03d}.json").write_text(json.dumps(summary, indent=2) + "\n")
        if len(accepted) < cfg.fed.min_clients:
            self.panic(f"round {rnd}: only {len(accepted)} usable result(s), fed.min_clients is "
                       f"{cfg.fed.min_clients}; dropped: {summary['dropped']}, no result: {summary['no_result']}")
            return None
        if reference:
            save_params(out / f"global-round-{rnd:03d}.pt", global_params, round=rnd, mode=cfg.fed.mode,
                        config=self.config)
        self.info(f"round {rnd}: aggregated {len(accepted)} of {len(targets)} studios "
                  f"({len(summary['dropped'])} dropped) in {summary['wall_time_s']} s")
        return global_params

    def _screen(self, results: list[FLModel], reference: Mapping[str, np.ndarray],
                cfg: FedgaiConfig) -> dict[str, Any]:
        """Check every result; log and record each dropped one with its reason."""
        contributions: dict[str, dict[str, Any]] = {}
        dropped = []
        for result in results:
            site = result.meta["client_name"]
            num_samples = result.meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
            problem = contribution_problem(result.params, result.params_type, num_samples, reference,
                                           update_norm_bound(cfg, sum(v.size for v in reference.values())))
            if result.meta.get(BUDGET_EXHAUSTED_KEY) is True:
                problem = "privacy budget exhausted: the studio sends no more updates"
            params = result.params or {}
            contributions[site] = {
                "accepted": problem is None,
                "num_samples": num_samples,
                "bytes": int(sum(getattr(v, "nbytes", 0) for v in params.values())),
                "keys": len(params),
                "metrics": scalar_metrics(result.metrics),
                "dp_epsilon": result.meta.get(DP_EPSILON_META_KEY),
            }
            if problem is None and reference:
                contributions[site]["update_norm"] = update_norm(params)
            if problem is not None:
                self.warning(f"dropping the update of {site}: {problem}")
                dropped.append({"site": site, "reason": problem})
        return {"contributions": contributions, "dropped": dropped}

    def _state_path(self, cfg: FedgaiConfig) -> Path | None:
        if not self.checkpoint_dir:
            return None
        root = Path(self.checkpoint_dir)
        if not root.is_absolute():
            root = Path(self.engine.get_workspace().get_root_dir()) / root
        return root / fingerprint(cfg) / STATE_FILE
