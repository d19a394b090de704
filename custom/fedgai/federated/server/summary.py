"""The round summary (``round-NNN.json``): one format and one builder for the plain and the HE server.

A summary is the record people and tools (progress.py, ``fedgai simulate``, the tests) trust about a round, so
it states what the server did, not what the config asked for: which checks ran on every contribution, which
did not (under HE the server cannot read an update), and each studio's weight after the caps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedgai.config import FedgaiConfig
from fedgai.layout import round_summary_name

NO_RESULT = "no result before the round closed (timeout, straggler grace, or the studio's task failed: see the log)"
BUDGET_SPENT = "privacy budget exhausted: the studio sends no more updates"
HE_UNREADABLE = "the server cannot read encrypted updates"


def weight_caps(cfg: FedgaiConfig) -> list[str]:
    """The caps on a studio's self-reported pair count that both servers apply (aggregation.capped_weights)."""
    if cfg.privacy.dp != "none":
        return ["equal weights (DP studios send no pair count)"]
    fed = cfg.fed
    caps = ["first-seen count"]
    if fed.max_samples_per_site is not None or fed.site_max_samples:
        caps.append(f"per-site pairs (default {fed.max_samples_per_site}, listed sites {len(fed.site_max_samples)})")
    if fed.max_weight_factor is not None:
        caps.append(f"{fed.max_weight_factor:g} x the round's median weight")
    return caps


def defences(cfg: FedgaiConfig, he: bool, norm_bound: float | None = None) -> dict[str, Any]:
    """What the server checked on every contribution and how it bounded it; under HE also what it could not."""
    if he:
        checks = ["public-key CKKS ciphertexts of exactly the shared keys and sizes",
                  "sample count (positive, within the per-site cap, unchanged since first seen)",
                  "dp_epsilon", "feature space"]
        not_checked = [f"finite values ({HE_UNREADABLE})", f"update norm bound ({HE_UNREADABLE})",
                       f"norm clipping to the round's median ({HE_UNREADABLE})"]
        return {"checks": checks, "not_checked": not_checked, "weight_caps": weight_caps(cfg), "norm_clip": None}
    checks = ["exact shared keys, shapes and dtypes", "finite values"]
    if norm_bound is not None:
        checks.append(f"update norm <= {norm_bound:.6g}")
    if cfg.privacy.dp == "none":
        checks.append("sample count (positive integer)")
    checks += ["dp_epsilon", "feature space"]
    clip = None if cfg.fed.norm_bound_factor is None else f"{cfg.fed.norm_bound_factor:g} x the round's median norm"
    return {"checks": checks, "not_checked": [], "weight_caps": weight_caps(cfg), "norm_clip": clip}


def unusable_reasons(summary: Mapping[str, Any]) -> dict[str, str]:
    """Every studio without a usable result this round -> why."""
    return {**{d["site"]: d["reason"] for d in summary["dropped"]}, **{s: NO_RESULT for s in summary["no_result"]}}


def round_summary(cfg: FedgaiConfig, rnd: int, targets: Sequence[str], records: Mapping[str, Mapping[str, Any]],
                  *, started: float, he: bool, feature_space: Mapping[str, Any] | None, bytes_sent: int,
                  finished: str | None = None, norm_bound: float | None = None,
                  **aggregation: Any) -> dict[str, Any]:
    """One round's summary from the screened records (site -> record with ``accepted`` and ``reason``).

    ``aggregation``: what the aggregation measured (plain: ``global_update_norm``, the clipping bound).
    """
    summary: dict[str, Any] = {
        "round": rnd, "total_rounds": cfg.fed.rounds, "mode": cfg.fed.mode, "aggregator": cfg.fed.aggregator,
        "he": he, **defences(cfg, he, norm_bound), "started_at": started,
        "aggregated": sum(bool(r["accepted"]) for r in records.values()), "contributions": dict(records),
        "dropped": [{"site": s, "reason": r["reason"]} for s, r in records.items() if not r["accepted"]],
        "no_result": sorted(set(targets) - set(records)), "feature_space": feature_space,
        "bytes_sent_per_site": bytes_sent, "finished": finished, **aggregation,
        "ended_at": time.time(), "wall_time_s": round(time.time() - started, 3),
    }
    summary["unusable"] = unusable_reasons(summary)
    return summary


def write_round_summary(out: Path, summary: Mapping[str, Any]) -> Path:
    """``out/round-NNN.json``; strict JSON (no NaN/Inf) - every value in it was validated and converted."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / round_summary_name(summary["round"])
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path
