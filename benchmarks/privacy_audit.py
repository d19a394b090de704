"""Membership-inference audit of the shared discriminator D: no DP, record-level DP-SGD, client-level DP.

One demo studio's pairs are split at random into members (the only pairs the studio trains on) and held-out
non-members of equal size. Every setting trains from the same seed for the same number of local epochs:

- no DP, and record-level DP (``privacy.dp = "record"``: per-pair clipped, noised G and D steps and the
  private AdaIN_SD statistics, one ledger) at each ``--record-epsilons`` (the DP-SGD noise is calibrated so
  that the whole run, statistics included, spends that epsilon) and each ``--record-sigmas``;
- client-level DP, modelled on the no-DP run: what the server holds after one round is
  D_init + clip_and_noise(D_local - D_init) over the shared (non-normalisation) keys, with C = the update's
  norm x ``--client-clip-fraction``, re-drawn ``--client-draws`` times; epsilon is that of ``--rounds`` such
  releases at sample rate 1. The generator never sees this noise in a one-studio audit.

The attacker scores member and held-out sketches with the released D and is given the studio's own
normalisation layers (which never leave the site): a worst case for the studio. Per setting: the
score-threshold MIA AUC (evaluation.membership_auc; members assumed to score higher) with its Hanley-McNeil
standard error, a bootstrap 95% interval and a two-sided p-value against 0.5, the hinge-loss threshold
variant, D's real-vs-generated AUC on held-out pairs (is D still a useful critic?), G's held-out L1 and Gram
distance (sample quality) and G's own L1 membership AUC (G never leaves the site).

    TQDM_DISABLE=1 python benchmarks/privacy_audit.py [--seeds 0 1 2] [--epochs 20] [--out FILE] [--doc FILE]

Every seed draws its own split and trains every setting. Prints a markdown table of the per-seed results and
their mean +- sd over seeds (or writes it to --doc). Defaults take about 12 minutes on 2 shared cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from fedgai.config import FedgaiConfig, profile
from fedgai.data import SketchPairDataset, Studio, load_studio, make_demo
from fedgai.data.demo import studio_sizes
from fedgai.evaluation import discriminator_scores, roc_auc
from fedgai.evaluation.membership import hanley_mcneil_se
from fedgai.losses import gram_loss
from fedgai.models import gram_matrix
from fedgai.privacy import Step, clip_and_noise, compute_epsilon
from fedgai.privacy.accountant import client_level_noise
from fedgai.privacy.record import calibrate_record_noise
from fedgai.sharing import shared_keys, split_key
from fedgai.trainer import StudioTrainer, ink_iou


@dataclass(frozen=True)
class Split:
    """The member-only studio folder the trainer reads, and both halves as (photos, sketches) tensors."""

    member_dir: Path
    members: tuple[torch.Tensor, torch.Tensor]
    nonmembers: tuple[torch.Tensor, torch.Tensor]


@dataclass
class Released:
    """What the attacker holds: a D, the D_init it started from, and the run that produced them."""

    discriminator: nn.Module
    init: nn.Module
    trainer: StudioTrainer


# ------------------------------------------------------------------------------------------------ data
def demo_seed(needed: int, start: int) -> int:
    """First seed >= start whose one-studio demo has at least ``needed`` pairs (no rendering needed)."""
    for seed in range(start, start + 1000):
        if studio_sizes(1, seed)[0] >= needed:
            return seed
    raise ValueError(f"no one-studio demo with {needed} pairs; lower --members")


def pair_tensors(root: Path, pairs: tuple[tuple[Path, Path], ...], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded (photos, sketches) of ``pairs``, without augmentation."""
    dataset = SketchPairDataset(Studio(root=root, name=root.name, designer=None, licence=None, pairs=pairs), size)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])


def link_studio(pairs: tuple[tuple[Path, Path], ...], out: Path, name: str) -> Path:
    """A studio folder at ``out`` holding symlinks to ``pairs`` only (the source folder is not touched)."""
    for kind in ("photos", "sketches"):
        (out / kind).mkdir(parents=True)
    for photo, sketch in pairs:
        (out / "photos" / photo.name).symlink_to(photo.resolve())
        (out / "sketches" / sketch.name).symlink_to(sketch.resolve())
    (out / "studio.json").write_text(json.dumps({"name": name}) + "\n")
    return out


def make_split(tmp: Path, members: int, size: int, seed: int) -> tuple[Split, dict]:
    """Render one demo studio, split its pairs at random into members and as many held-out non-members."""
    data_seed = demo_seed(2 * members, seed)
    studio = load_studio(make_demo(tmp / "demo", studios=1, seed=data_seed, size=size, progress=False)[0])
    order = np.random.default_rng(seed).permutation(len(studio.pairs))
    member_pairs = tuple(studio.pairs[i] for i in order[:members])
    held_out = tuple(studio.pairs[i] for i in order[members : 2 * members])
    member_dir = link_studio(member_pairs, tmp / "members", f"{studio.name}-members")
    split = Split(member_dir, pair_tensors(member_dir, member_pairs, size),
                  pair_tensors(studio.root, held_out, size))
    info = {"demo_seed": data_seed, "studio": studio.name, "studio_pairs": len(studio.pairs),
            "members": len(member_pairs), "nonmembers": len(held_out)}
    return split, info


# ------------------------------------------------------------------------------------------------ training
def build_config(args: argparse.Namespace, dp: str, sigma: float) -> FedgaiConfig:
    """The audit's config: the chosen profile, resized, with the given DP mode (clip norm 1 per pair). The
    trainer's own held-out split is off: the members are exactly the pairs it trains on."""
    return profile(args.profile).with_overrides({
        "train.val_fraction": 0.0, "train.test_fraction": 0.0, "data.follow_symlinks": True,
        "model.encoder": args.encoder, "model.image_size": args.size, "model.disc_width": args.disc_width,
        "model.gram_rows": args.gram[0], "model.gram_cols": args.gram[1],
        "model.structure_critic": args.structure_critic,
        "train.max_pairs": args.members, "train.batch_size": args.batch, "train.seed": args.seed,
        "train.num_threads": args.threads, "train.epochs": args.epochs,
        "privacy.dp": dp, "privacy.noise_multiplier": sigma, "privacy.clip_norm": args.record_clip,
        "privacy.delta": args.delta,
    })


def train(cfg: FedgaiConfig, split: Split, run_dir: Path) -> Released:
    """Train one studio from the config's seed; keeps a copy of D as it was before training."""
    trainer = StudioTrainer(cfg, split.member_dir, run_dir)
    init = copy.deepcopy(trainer.discriminator)
    trainer.train_epochs(cfg.train.epochs)
    trainer.close()
    return Released(trainer.discriminator, init, trainer)


# ------------------------------------------------------------------------------------------------ client-level DP
def refresh_spectral_norm(net: nn.Module, iterations: int = 50) -> None:
    """Re-converge spectral norm's power iteration on the released weights (the next round's training forwards
    would do the same); with the trained u, v a noised weight would be divided by a stale sigma estimate."""
    with torch.no_grad():
        for module in net.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    for _ in range(iterations):
                        hook.compute_weight(module, do_power_iteration=True)


def shared_diff(local: nn.Module, init: nn.Module) -> tuple[dict[str, np.ndarray], list[str]]:
    """D_local - D_init over the keys a studio sends in fedgai mode, as float64 arrays by state-dict key."""
    keys = [split_key(k)[1] for k in shared_keys({"discriminator": local}, "fedgai")]
    now, before = local.state_dict(), init.state_dict()
    return {k: (now[k] - before[k]).double().numpy() for k in keys}, keys


def client_release(released: Released, sigma: float, clip_fraction: float, rng: np.random.Generator
                   ) -> tuple[nn.Module, dict[str, float]]:
    """D_init + clip_and_noise(D_local - D_init) on the shared keys; local norm layers kept (worst case)."""
    diff, keys = shared_diff(released.discriminator, released.init)
    norm = math.sqrt(sum(float(np.sum(a * a)) for a in diff.values()))
    clip = max(norm * clip_fraction, 1e-12)
    noised, info = clip_and_noise(diff, clip, sigma, rng=rng)
    out = copy.deepcopy(released.discriminator)
    state, before = out.state_dict(), released.init.state_dict()
    for k in keys:
        state[k] = before[k] + torch.from_numpy(noised[k]).to(before[k].dtype)
    out.load_state_dict(state)
    refresh_spectral_norm(out)
    init_norm = math.sqrt(sum(float(torch.sum(before[k].double() ** 2)) for k in keys))
    info.update(clip_norm=clip, shared_parameters=sum(a.size for a in diff.values()), init_norm=init_norm)
    return out, info


# ------------------------------------------------------------------------------------------------ metrics
def bootstrap_ci(members: np.ndarray, nonmembers: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of the AUC, resampling members and non-members independently."""
    rng = np.random.default_rng(seed)
    aucs = [roc_auc(rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size))
            for _ in range(reps)]
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def null_p_value(auc: float, n_pos: int, n_neg: int) -> float:
    """Two-sided p-value of AUC != 0.5 under no membership signal (normal approximation to Mann-Whitney)."""
    se0 = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
    return math.erfc(abs(auc - 0.5) / se0 / math.sqrt(2))


def hinge_membership_score(scores: np.ndarray) -> np.ndarray:
    """Minus D's hinge loss on a real sketch, relu(1 - score): the loss-threshold attack's score."""
    return -np.maximum(0.0, 1.0 - scores)


def attack(disc: nn.Module, trainer: StudioTrainer, split: Split, reps: int, seed: int) -> dict:
    """Membership AUC of D on member vs held-out sketches (score threshold), with its uncertainty, and the
    hinge-loss threshold variant (low loss = member)."""
    (member_photos, members), (nonmember_photos, nonmembers) = split.members, split.nonmembers
    s_m = discriminator_scores(disc, trainer.encoder, members, member_photos)
    s_n = discriminator_scores(disc, trainer.encoder, nonmembers, nonmember_photos)
    auc = roc_auc(s_m, s_n)
    low, high = bootstrap_ci(s_m, s_n, reps, seed)
    return {
        "mia_auc": auc,
        "mia_se": hanley_mcneil_se(auc, s_m.size, s_n.size),
        "mia_ci95": [low, high],
        "mia_p_value": null_p_value(auc, s_m.size, s_n.size),
        "mia_auc_hinge_loss": roc_auc(hinge_membership_score(s_m), hinge_membership_score(s_n)),
        "member_score_mean": float(s_m.mean()),
        "nonmember_score_mean": float(s_n.mean()),
    }


@torch.no_grad()
def utility(disc: nn.Module, trainer: StudioTrainer, split: Split) -> dict[str, float]:
    """G's held-out sample quality (L1, Gram distance), D's real-vs-generated AUC and G's own L1 MIA AUC."""
    photos, sketches = split.nonmembers
    fake = trainer.generate(photos)
    real_g = [gram_matrix(t) for t in trainer.encoder(sketches)]
    fake_g = [gram_matrix(t) for t in trainer.encoder(fake)]
    member_l1 = (trainer.generate(split.members[0]) - split.members[1]).abs().mean(dim=(1, 2, 3))
    heldout_l1 = (fake - sketches).abs().mean(dim=(1, 2, 3))
    return {
        "heldout_l1": float(heldout_l1.mean()),
        "heldout_ink_iou": ink_iou(fake, sketches),
        "heldout_gram": float(gram_loss(real_g, fake_g)),
        "d_real_vs_fake_auc": roc_auc(discriminator_scores(disc, trainer.encoder, sketches, photos),
                                      discriminator_scores(disc, trainer.encoder, fake, photos)),
        "g_l1_mia_auc": roc_auc(-member_l1.numpy(), -heldout_l1.numpy()),
    }


def mean_metrics(rows: list[dict]) -> dict:
    """Mean over noise draws of each numeric metric, plus its draw-to-draw standard deviation."""
    out: dict = {}
    for key, value in rows[0].items():
        if isinstance(value, list):
            out[key] = [float(np.mean([r[key][i] for r in rows])) for i in range(len(value))]
        else:
            values = [r[key] for r in rows]
            out[key] = float(np.mean(values))
            if len(rows) > 1:
                out[f"{key}_draw_sd"] = float(np.std(values, ddof=1))
    return out


# ------------------------------------------------------------------------------------------------ settings
def evaluate(disc: nn.Module, released: Released, split: Split, args: argparse.Namespace) -> dict:
    """Attack and utility metrics of one released D."""
    return {**attack(disc, released.trainer, split, args.bootstrap, args.seed),
            **utility(disc, released.trainer, split)}


def record_sigma(args: argparse.Namespace, split: Split, epsilon: float) -> float:
    """DP-SGD noise multiplier for which the whole record-level run (statistics included) spends ``epsilon``."""
    cfg = build_config(args, "record", 1.0)
    return calibrate_record_noise(cfg.privacy, len(split.members[0]), args.batch, args.epochs, epsilon)


def trained_row(args: argparse.Namespace, split: Split, tmp: Path, dp: str, sigma: float | None
                ) -> tuple[dict, Released]:
    """Train one setting (no DP or record-level DP) and audit its local D."""
    start = time.perf_counter()
    cfg = build_config(args, dp, sigma if sigma is not None else 1.0)
    released = train(cfg, split, tmp / f"run-{dp}-{sigma}")
    eps = released.trainer.dp_epsilon()
    row = {"setting": "no DP" if dp == "none" else "record-level DP", "dp": dp, "sigma": sigma,
           "clip_norm": args.record_clip if dp == "record" else None,
           "epsilon": None if eps is None or math.isinf(eps) else eps,
           **evaluate(released.discriminator, released, split, args),
           "train_seconds": round(time.perf_counter() - start, 1)}
    return row, released


def client_rows(args: argparse.Namespace, split: Split, base: Released) -> list[dict]:
    """Client-level DP releases of the no-DP run's D, ``args.client_draws`` noise draws per sigma."""
    rows = []
    for sigma in args.client_sigmas:
        draws, infos = [], []
        for draw in range(args.client_draws if sigma > 0 else 1):
            rng = np.random.default_rng([args.seed, draw, int(sigma * 1000)])
            disc, info = client_release(base, sigma, args.client_clip_fraction, rng)
            draws.append(evaluate(disc, base, split, args))
            infos.append(info)
        eps = compute_epsilon([Step(client_level_noise(sigma), 1.0, args.rounds)], args.delta)  # replace: 2C
        d = infos[0]["shared_parameters"]
        stats = mean_metrics(draws)
        n_pos, n_neg = len(split.members[1]), len(split.nonmembers[1])
        # SE and p of the draws' mean AUC: the member sample is shared by all draws, so n stays n.
        stats["mia_se"] = hanley_mcneil_se(stats["mia_auc"], n_pos, n_neg)
        stats["mia_p_value"] = null_p_value(stats["mia_auc"], n_pos, n_neg)
        rows.append({"setting": "client-level DP (server view, 1 round)", "dp": "client", "sigma": sigma,
                     "clip_norm": infos[0]["clip_norm"], "update_norm": infos[0]["norm_before"],
                     "shared_parameters": d, "noise_to_signal": sigma * math.sqrt(d),
                     "noise_to_init_weights": sigma * infos[0]["clip_norm"] * math.sqrt(d) / infos[0]["init_norm"],
                     "epsilon": None if math.isinf(eps) else eps, "draws": len(draws), **stats})
    return rows


# ------------------------------------------------------------------------------------------------ report
def fmt(value: float | None, digits: int = 2) -> str:
    """A number, or a dash for None."""
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(result: dict) -> str:
    """Per-seed rows and the mean +- sd over seeds, for docs/privacy.md's membership-inference section."""
    a = result["args"]
    lines = [
        "| seed | setting | σ | ε (δ=1e-5) | MIA AUC ± SE | D real-vs-fake AUC | held-out L1 | held-out ink IoU | "
        "G L1 MIA AUC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        eps = "∞ (no noise)" if r["dp"] != "none" and r["epsilon"] is None else fmt(r["epsilon"], 2)
        lines.append(
            f"| {r['seed']} | {r['setting']} | {fmt(r['sigma'], 2)} | {eps} | {r['mia_auc']:.2f} ± {r['mia_se']:.2f} | "
            f"{r['d_real_vs_fake_auc']:.2f} | {r['heldout_l1']:.3f} | {r['heldout_ink_iou']:.3f} | "
            f"{r['g_l1_mia_auc']:.2f} |")
    lines += ["", "| setting | seeds | ε | MIA AUC | D real-vs-fake AUC | held-out L1 | held-out ink IoU |",
              "|---|---|---|---|---|---|---|"]
    for name, s in summarise(result["rows"]).items():
        lines.append(f"| {name} | {s['n']} | {s['epsilon']} | {s['mia_auc']} | {s['d_real_vs_fake_auc']} | "
                     f"{s['heldout_l1']} | {s['heldout_ink_iou']} |")
    d = result["data"][0]
    setup = (f"Set-up: one-studio demo ({d['studio_pairs']} pairs, {a['size']} px) per seed, {d['members']} "
             f"members + {d['nonmembers']} held-out; profile `{a['profile']}` with encoder `{a['encoder']}`, D width "
             f"{a['disc_width']}, Gram {a['gram'][0]}×{a['gram'][1]}; {a['epochs']} local epochs, batch {a['batch']}, "
             f"seeds {a['seeds']}. Record-level: per-pair clip {a['record_clip']}, ε from the trainer's ledger "
             f"(G, D and statistics). Wall time {result['wall_seconds'] / 60:.1f} min "
             f"({result['machine']['threads']} torch thread(s), load average {result['machine']['load_average']}).")
    return "\n".join([setup, "", *lines, ""])


def summarise(rows: list[dict]) -> dict[str, dict[str, str]]:
    """Mean ± sd over seeds of each setting's key metrics, as formatted strings."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['setting']} (target ε {r.get('target_epsilon') or '—'})", []).append(r)

    def spread(values: list, digits: int) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "—"
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"

    return {name: {"n": str(len(g)), "epsilon": spread([r["epsilon"] for r in g], 2),
                   "mia_auc": spread([r["mia_auc"] for r in g], 2),
                   "d_real_vs_fake_auc": spread([r["d_real_vs_fake_auc"] for r in g], 2),
                   "heldout_l1": spread([r["heldout_l1"] for r in g], 3),
                   "heldout_ink_iou": spread([r["heldout_ink_iou"] for r in g], 3)} for name, g in groups.items()}


def seed_rows(args: argparse.Namespace, tmp: Path, seed: int) -> tuple[list[dict], dict]:
    """Every setting on one seed's split: no DP, record-level per target epsilon and per sigma, client-level."""
    seeded = argparse.Namespace(**{**vars(args), "seed": seed})
    split, data = make_split(tmp / f"seed-{seed}", args.members, args.size, seed)
    base_row, base = trained_row(seeded, split, tmp / f"seed-{seed}", "none", None)
    rows = [base_row]
    log(base_row)
    record = [(eps, record_sigma(seeded, split, eps)) for eps in args.record_epsilons]
    record += [(None, sigma) for sigma in args.record_sigmas]
    for target, sigma in record:
        rows.append({**trained_row(seeded, split, tmp / f"seed-{seed}", "record", sigma)[0], "target_epsilon": target})
        log(rows[-1])
    for row in client_rows(seeded, split, base):
        rows.append(row)
        log(row)
    return [{**r, "seed": seed} for r in rows], data


def run(args: argparse.Namespace) -> dict:
    """Every setting on every seed."""
    start = time.perf_counter()
    load = round(os.getloadavg()[0], 1)  # other jobs on the machine slow the run down
    torch.set_num_threads(args.threads)
    rows, data = [], []
    with tempfile.TemporaryDirectory(prefix="fedgai-audit-") as tmp_name:
        for seed in args.seeds:
            seed_result, seed_data = seed_rows(args, Path(tmp_name), seed)
            rows += seed_result
            data.append(seed_data)
    return {"args": {k: v for k, v in vars(args).items() if k not in ("out", "doc")}, "data": data,
            "machine": {"threads": args.threads, "cpu_count": os.cpu_count(), "load_average": load,
                        "platform": platform.platform(), "torch": torch.__version__},
            "wall_seconds": round(time.perf_counter() - start, 1), "rows": rows,
            "summary": summarise(rows)}


def log(row: dict) -> None:
    """One progress line per setting."""
    print(f"{row['setting']} sigma={row['sigma']} eps={fmt(row['epsilon'])} AUC={row['mia_auc']:.3f}"
          f"±{row['mia_se']:.3f} p={row['mia_p_value']:.3f} D-rf={row['d_real_vs_fake_auc']:.3f} "
          f"L1={row['heldout_l1']:.3f} gram={row['heldout_gram']:.3f} G-MIA={row['g_l1_mia_auc']:.3f}")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=24, help="member pairs (as many held out)")
    parser.add_argument("--size", type=int, default=64, help="image size in px (demo and training)")
    parser.add_argument("--epochs", type=int, default=20, help="local epochs per setting")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--profile", default="test", help="config profile the audit starts from")
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--disc-width", type=int, default=128, help="D width (paper size: 128)")
    parser.add_argument("--structure-critic", type=int, default=0,
                        help="width of D's structure critic (0 = the paper's Gram critic only; the quick profile: 32)")
    parser.add_argument("--gram", type=int, nargs=2, default=[64, 196], metavar=("ROWS", "COLS"),
                        help="pooled Gram size D sees (COLS a square number; paper size: 64 196)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="training seeds; each also draws its own split and demo studio")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    parser.add_argument("--record-epsilons", type=float, nargs="*", default=[8.0],
                        help="record-level runs whose noise is calibrated to spend this epsilon")
    parser.add_argument("--record-sigmas", type=float, nargs="*", default=[], help="record-level runs at fixed sigma")
    parser.add_argument("--record-clip", type=float, default=1.0, help="record-level per-pair clip norm")
    parser.add_argument("--client-sigmas", type=float, nargs="*", default=[],
                        help="client-level releases of the no-DP D (e.g. 0 0.5 1 2)")
    parser.add_argument("--client-clip-fraction", type=float, default=0.5, help="client C = update norm x this")
    parser.add_argument("--client-draws", type=int, default=5, help="noise draws per client-level sigma")
    parser.add_argument("--rounds", type=int, default=11, help="rounds the client-level epsilon is composed over")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUC interval")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/privacy_audit.json"))
    parser.add_argument("--doc", type=Path, default=None,
                        help="also write the markdown table here (default: print it)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    if args.doc is None:
        print(table)
    else:
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        args.doc.write_text(table)
    print(f"written {args.out} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
