"""What one hostile studio can do to the global step with 2, 3, 5 and 8 studios, under each aggregator.

Not a test: numbers go to docs/privacy.md ("A hostile studio in a small federation"). It runs the server's own
screening and step (validation.contribution_problem, then federated/round.server_step: capped weights, median-norm
clip and aggregator, with the product's norm bound and floor) and the studios' own client-level DP mechanism
(privacy/mechanism.clip_and_noise) on synthetic update vectors of the paper D's size, so it takes seconds. n - 1
honest studios send a shared direction plus as much studio-specific noise; one studio attacks. Measured against
the same federation with that studio honest:

- shift: how far the attack moves the global step, in units of one honest studio's share of the plain mean
  (its update's norm / n). Under client-level DP the honest share is its clipped signal (norm C) / n and the
  shift is measured against the honest mean's direction (positive: pushed backwards), so the noise every
  studio adds does not count as steering.
- cos: cosine of the global step to the honest studios' mean update (under DP: to their mean clipped signal,
  which the noise keeps near 0 even without an attack).

    python benchmarks/hostile.py [--out benchmarks/results/hostile.json]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedgai.config import FedgaiConfig, profile
from fedgai.federated.aggregation import TooFewStudios
from fedgai.federated.jobs.job import DP_JOB_SETTINGS
from fedgai.federated.round import server_step as round_step
from fedgai.federated.server.validation import contribution_problem, update_norm_bound, update_norm_floor
from fedgai.privacy.mechanism import clip_and_noise

STUDIOS = (2, 3, 5, 8)
AGGREGATORS = ("fedavg", "trimmed_mean", "median")
PARAMS = 369_857  # the paper profile's shared D entries
HONEST_NORM = 0.5
PAIRS = 48
# An attack: (its own honest update, the other studios' mean update, config, rng) -> (what it sends, pair count).
# It knows the others' mean: with two studios a studio reads the other's update off the global (docs/privacy.md),
# with more it approximates the mean from the last global step; this is the worst case.
Attack = Callable[[np.ndarray, np.ndarray, FedgaiConfig, np.random.Generator], tuple[np.ndarray, int]]


def config(aggregator: str, dp: bool) -> FedgaiConfig:
    """The paper profile with ``aggregator``; min_clients 3 where a robust aggregator requires it."""
    overrides = {"fed.aggregator": aggregator, "fed.min_clients": 1 if aggregator == "fedavg" else 3}
    return profile("paper").with_overrides({**overrides, **(DP_JOB_SETTINGS if dp else {})})


def honest_updates(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n updates of norm ~HONEST_NORM: a shared direction plus as much studio-specific noise."""
    common = rng.normal(0, 1, PARAMS)
    scale = HONEST_NORM / np.sqrt(2 * PARAMS)
    return [((common + rng.normal(0, 1, PARAMS)) * scale).astype(np.float32) for _ in range(n)]


def reference() -> dict[str, np.ndarray]:
    """A global model of the paper D's size and initial norm (~8): what the empty-update floor is relative to."""
    return {"w": np.full(PARAMS, 8.0 / np.sqrt(PARAMS), np.float32)}


def noised(signal: np.ndarray, cfg: FedgaiConfig, rng: np.random.Generator) -> np.ndarray:
    """What a studio sends under client-level DP (StudioClientDP's mechanism): clipped to C plus N(0, (sigma C)^2)."""
    p = cfg.privacy
    return clip_and_noise({"w": signal}, p.clip_norm, p.noise_multiplier, rng)[0]["w"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


PLAIN_ATTACKS: dict[str, Attack] = {
    "-100 x the honest mean, claims 1e9 pairs": lambda own, others, cfg, rng: (
        (-100 * others).astype(np.float32), 10**9),
    "random direction, norm 900 (< fed.max_update_norm), 1e9 pairs": lambda own, others, cfg, rng: (
        (unit(rng.normal(0, 1, PARAMS)) * 900).astype(np.float32), 10**9),
    "zero update": lambda own, others, cfg, rng: (np.zeros_like(own), PAIRS),
    "its own update x 1e-3": lambda own, others, cfg, rng: (own * 1e-3, PAIRS),
}
DP_ATTACKS: dict[str, Attack] = {
    "against the honest mean at the widened bound, no noise": lambda own, others, cfg, rng: (
        (-unit(others) * 0.999 * update_norm_bound(cfg, PARAMS)).astype(np.float32), 1),
    "-100 C against the honest mean, no noise": lambda own, others, cfg, rng: (
        (-100 * cfg.privacy.clip_norm * unit(others)).astype(np.float32), 1),
    "-100 C against the honest mean + noise like the job's": lambda own, others, cfg, rng: (
        (-100 * cfg.privacy.clip_norm * unit(others)
         + rng.normal(0, cfg.privacy.noise_multiplier * cfg.privacy.clip_norm, PARAMS)).astype(np.float32), 1),
    "zero update": lambda own, others, cfg, rng: (np.zeros_like(own), 1),
}


def server_step(cfg: FedgaiConfig, sent: dict[str, tuple[np.ndarray, int]]) -> tuple[np.ndarray | None, str]:
    """The server's round on what the studios sent (the controller's screening, then round.server_step from a zero
    global, so the new global is the step): (global step or None when refused, what was refused)."""
    floor = update_norm_floor(cfg, reference())
    dropped, usable = [], {}
    for site, (vector, count) in sent.items():
        problem = contribution_problem({"w": vector}, "DIFF", count, reference(), update_norm_bound(cfg, PARAMS),
                                       count_required=cfg.privacy.dp == "none", min_update_norm=floor)
        if problem:
            dropped.append(f"{site}: {problem.split(' (')[0]}")
        else:
            usable[site] = ({"w": vector}, count)
    counts = {s: c for s, (_, c) in usable.items()} if cfg.privacy.dp == "none" else None
    try:
        step = round_step({"w": np.zeros(PARAMS, np.float64)}, {s: p for s, (p, _) in usable.items()}, counts, cfg, {},
                          floor)
    except TooFewStudios as err:
        return None, str(err)
    return step.params["w"], "; ".join(dropped)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def measure(n: int, aggregator: str, name: str, attack: Attack, dp: bool, seed: int = 0) -> dict:
    """One cell: the attacked round against the same round with the attacker's studio honest."""
    rng = np.random.default_rng(seed)
    cfg = config(aggregator, dp)
    updates = honest_updates(n, rng)
    sent = {f"h{i}": (noised(u, cfg, rng) if dp else u, 1 if dp else PAIRS) for i, u in enumerate(updates)}
    others = np.mean(updates[1:], axis=0)
    vector, count = attack(updates[0], others, cfg, rng)
    attacked, note = server_step(cfg, {**sent, "h0": (vector, count)})
    honest, _ = server_step(cfg, sent)
    row = {"studios": n, "aggregator": aggregator, "dp": "client" if dp else "none", "attack": name,
           "refused": note or None, "shift": None, "cos": None}
    if attacked is None or honest is None:
        return row
    if dp:
        clip = cfg.privacy.clip_norm
        signals = [u * min(1.0, clip / float(np.linalg.norm(u))) for u in updates[1:]]
        row["shift"] = float((attacked - honest) @ -unit(others.astype(np.float64))) / (clip / n)
        row["cos"] = cosine(attacked, np.mean(signals, axis=0))
    else:
        share = float(np.mean([np.linalg.norm(u) for u in updates])) / n
        row["shift"] = float(np.linalg.norm(attacked - honest)) / share
        row["cos"] = cosine(attacked, others)
    return row


def run() -> list[dict]:
    rows = []
    for dp, attacks in ((False, PLAIN_ATTACKS), (True, DP_ATTACKS)):
        for name, attack in attacks.items():
            for n in STUDIOS:
                for aggregator in AGGREGATORS:
                    rows.append(measure(n, aggregator, name, attack, dp))
    return rows


def cell(row: dict) -> str:
    """'shift, cos'; 'refused' where the round is not aggregated; 'dropped' where screening refused the attack."""
    if row["shift"] is None:
        return "refused"
    if not (row["refused"] and row["refused"].startswith("h0:")):
        return f"{row['shift']:.2f}, {row['cos']:.2f}"
    # Under DP what is left is the missing studio's own noise, not steering: the step is noise either way.
    return "dropped" if row["dp"] == "client" else f"dropped: {row['shift']:.2f}, {row['cos']:.2f}"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (DP, attack, studios), one column per aggregator."""
    lines = ["| DP | attack | studios | " + " | ".join(AGGREGATORS) + " |",
             "|---|---|---|" + "---|" * len(AGGREGATORS)]
    keys = dict.fromkeys((r["dp"], r["attack"], r["studios"]) for r in rows)
    for dp, attack, n in keys:
        cells = {r["aggregator"]: cell(r) for r in rows if (r["dp"], r["attack"], r["studios"]) == (dp, attack, n)}
        lines.append(f"| {dp} | {attack} | {n} | " + " | ".join(cells[a] for a in AGGREGATORS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hostile.json"))
    args = parser.parse_args()
    rows = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    dp = config("fedavg", dp=True)
    print(f"{PARAMS} shared entries; client-level DP as jobs/fedgai_dp: sigma {dp.privacy.noise_multiplier:g}, "
          f"C {dp.privacy.clip_norm:g}, norm window [{update_norm_floor(dp, reference()):.0f}, "
          f"{update_norm_bound(dp, PARAMS):.0f}]")
    print(table(rows))
    for row in rows:
        if row["refused"]:
            print(f"{row['dp']}, {row['attack']}, {row['studios']} studios, {row['aggregator']}: {row['refused']}")


if __name__ == "__main__":
    main()
