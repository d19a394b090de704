"""Record-level DP's utility curve (issue 19 §3): FedGAI with record-level DP at several target epsilons and
without DP, each from scratch and from the public prior (prior.py), scored on the demo studios' held-out test
pairs. One command runs the grid and prints the curve; results and commands: docs/privacy.md, docs/results.md.

    python benchmarks/dp_curve.py --out runs/dpcurve --studios 2 --seeds 0

The runs use benchmarks/federation_value.py's harness (the product's in-process federation,
federated/simulator/inprocess.py; no NVFlare transport) and its evaluation (FD-EffNetLite0, SSIM, ink IoU, style
accuracy and FD-Style on each studio's test pairs, never trained on). DP runs plan sigma, batch and steps from their
target (privacy.plan); from the prior they train only the style head (privacy.record_trainable). dp_prior_nosteps is the
prior with the private AdaIN_SD statistics release and no DP-SGD step (what the private steps add to). The
federation starts from the server's initial global (round.initial_global), so with the prior its D starts from
the prior's too. Every run also records the membership-inference AUC of the final shared D on each studio's pairs
(membership(), written next to the run's fakes as SITE.mia.json) and the table shows it. The priors the grid
starts from are built before its first run (prior_build.py; a trainer only loads one) into $FEDGAI_PRIOR_DIR
(default OUT/priors).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import federation_value as fv
import numpy as np

from fedgai.cli import setting
from fedgai.config import FedgaiConfig
from fedgai.data import SketchPairDataset
from fedgai.evaluation.membership import hanley_mcneil_se, membership_auc
from fedgai.prior import ENV_DIR
from fedgai.prior_build import build_missing_prior

EPSILONS = (8.0, 1.0, 4.0)  # in the order they run: the budget a studio would pick first
# 64 px, no unpaired photos (refused under record-level DP, so off for every variant), few pairs and epochs:
# sized for a 2-core CPU, where a per-pair gradient through EfficientNet-Lite0 costs about a second.
BASE = {"model.image_size": 64, "train.unpaired_batch": 0, "train.max_pairs": 24, "fed.rounds": 2,
        "train.epochs": 2}
CURVE_METRICS = ("FD-EffNetLite0", "SSIM", "ink_IoU", "style_acc", "FD-Style")
# The prior with the studio's private AdaIN_SD statistics and no DP-SGD step: what the private steps add to.
PRIOR_ONLY = "dp_prior_nosteps"
MIA = "MIA AUC of shared D"


def membership_sets(trainer) -> tuple[SketchPairDataset, SketchPairDataset]:
    """Members: the pairs the studio trained on (the first train.max_pairs of its training split). Non-members:
    pairs it never trained on, test first, then val, then the training split's pairs beyond max_pairs (a small
    studio has fewer test pairs than members). Both sides cut to the same size, members in training order."""
    members = [photo.stem for photo, _ in trainer.dataset.pairs]
    trained = set(members)
    split = trainer.split
    others = [s for s in (*split.test, *split.val, *split.train) if s not in trained]
    n = min(len(members), len(others))
    size = trainer.cfg.model.image_size
    return (SketchPairDataset(trainer.studio, size, stems=members[:n]),
            SketchPairDataset(trainer.studio, size, stems=others[:n]))


def membership(trainer) -> dict[str, Any]:
    """Score-threshold MIA AUC (evaluation.membership_auc) of the studio's D as the federation left it: the final
    global D's shared parameters (loaded by the last receive) with the studio's local normalisation layers, the
    worst case for the studio (benchmarks/privacy_audit.py does the same); with its Hanley-McNeil SE."""
    members, nonmembers = (fv.stack_pairs(side) for side in membership_sets(trainer))
    auc = membership_auc(trainer.discriminator, trainer.encoder, members[1], nonmembers[1], members[0], nonmembers[0])
    n = len(members[1])
    return {"mia_auc": auc, "mia_se": hanley_mcneil_se(auc, n, n), "members": n, "nonmembers": n}


def save_fakes_and_membership(trainer, path: Path) -> None:
    """federation_value's save_test_fakes (called once per studio after the final receive, before the trainer
    closes), plus the studio's membership() next to it: the harness keeps no checkpoint to audit later."""
    fv.save_test_fakes(trainer, path)
    path.with_suffix(".mia.json").write_text(json.dumps(membership(trainer), indent=2) + "\n")


def curve_variants(epsilons: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    """name -> overrides: no DP and record-level DP at each epsilon, from scratch and from the prior (style head
    only), and at the first epsilon from the prior with every parameter, and with less noisy AdaIN_SD statistics."""
    out: dict[str, dict[str, Any]] = {"nodp": {"fed.mode": "fedgai"},
                                      "nodp_prior": {"fed.mode": "fedgai", "train.prior": "auto"}}
    for eps in epsilons:
        dp = {"fed.mode": "fedgai", "privacy.dp": "record", "privacy.plan": True, "privacy.target_epsilon": eps}
        out[f"dp{eps:g}_prior"] = {**dp, "train.prior": "auto", "privacy.record_trainable": "style_head"}
        out[f"dp{eps:g}"] = dp
    # How many parameters are worth noising: from the prior, every parameter trained (at the first epsilon).
    out[f"dp{epsilons[0]:g}_prior_all"] = {**out[f"dp{epsilons[0]:g}_prior"], "privacy.record_trainable": "all"}
    # What limits it: AdaIN_SD's private statistics, released once with sigma_s 5 whatever the target; at sigma_s 2
    # they cost more of the same budget (the plan gives DP-SGD the rest) and carry less noise.
    out[f"dp{epsilons[0]:g}_prior_stats2"] = {**out[f"dp{epsilons[0]:g}_prior"], "privacy.stats_noise_multiplier": 2.0}
    return out


def prior_only(seed: int, base: dict[str, Any], studios: list[Path], out: Path) -> dict[str, Any]:
    """PRIOR_ONLY: each studio's generator as the prior leaves it, after the private statistics release only."""
    from fedgai.trainer import StudioTrainer

    cfg = FedgaiConfig.from_dict(base).with_overrides({"privacy.dp": "record", "train.prior": "auto",
                                                       "train.seed": seed})
    name = f"{PRIOR_ONLY}-seed{seed}"
    started = time.perf_counter()
    trainers = {s.name: StudioTrainer(cfg, s, out / "scratch" / name / s.name) for s in studios}
    (out / name).mkdir(parents=True, exist_ok=True)
    for site, trainer in trainers.items():
        save_fakes_and_membership(trainer, out / name / f"{site}.npz")
    record = {"variant": PRIOR_ONLY, "seed": seed, "seconds": time.perf_counter() - started, "rounds": [],
              "n_train": {site: t.num_samples for site, t in trainers.items()},
              "dp_epsilon": {site: t.dp_epsilon() for site, t in trainers.items()}}
    (out / name / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_priors(base: dict[str, Any], variants: list[str]) -> None:
    """Every prior the chosen variants start from, built (where not cached) before any of them runs."""
    for variant in variants:
        overrides = {"privacy.dp": "record", "train.prior": "auto"} if variant == PRIOR_ONLY else fv.VARIANTS[variant]
        build_missing_prior(FedgaiConfig.from_dict(base).with_overrides(overrides), announce=print)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", nargs="?", default="all", choices=("all", "train", "evaluate"))
    p.add_argument("--out", type=Path, default=Path("runs/dpcurve"))
    p.add_argument("--data", type=Path, default=Path("runs/dpcurve-data"), help="demo studios (made if missing)")
    p.add_argument("--studios", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS))
    p.add_argument("--variants", nargs="+", help="a subset of the grid's names (default: all)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--set", type=setting, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, parsed as `fedgai --set` parses them (repeatable)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def train(args: argparse.Namespace, base: dict[str, Any], variants: list[str]) -> None:
    studios = fv.demo_studios(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(base, indent=2) + "\n")
    fv.save_splits(FedgaiConfig.from_dict(base), studios, args.out / "splits")
    build_priors(base, variants)
    for seed in args.seeds:
        for variant in variants:
            if (args.out / f"{variant}-seed{seed}" / "run.json").is_file():
                continue
            if variant == PRIOR_ONLY:
                record = prior_only(seed, base, studios, args.out)
            else:
                # every run audits its D before its trainers close
                record = fv.run_federation(variant, seed, base, studios, args.out, args.out / "scratch", args.device,
                                           save_fakes=save_fakes_and_membership)
            print(f"{variant}-seed{seed}: {record['seconds']:.0f} s, epsilon {record['dp_epsilon']}", flush=True)


def membership_summary(out: Path) -> dict[str, dict[str, Any]]:
    """variant -> per seed the mean over studios of the MIA AUC and of its SE, and their mean ± std over seeds
    (runs trained before the audit existed have no SITE.mia.json and are left out)."""
    per_variant: dict[str, dict[str, Any]] = {}
    for run_json in sorted(out.glob("*/run.json")):
        files = sorted(run_json.parent.glob("*.mia.json"))
        if not files:
            continue
        record = json.loads(run_json.read_text())
        studios = {f.name.removesuffix(".mia.json"): json.loads(f.read_text()) for f in files}
        row = per_variant.setdefault(record["variant"], {"seeds": {}})
        row["seeds"][record["seed"]] = {"studios": studios,
                                        "auc": float(np.mean([s["mia_auc"] for s in studios.values()])),
                                        "se": float(np.mean([s["mia_se"] for s in studios.values()]))}
    for row in per_variant.values():
        aucs = [s["auc"] for s in row["seeds"].values()]
        row.update(mean=float(np.mean(aucs)), std=float(np.std(aucs)),  # population std, as the other columns
                   se=float(np.mean([s["se"] for s in row["seeds"].values()])))
    return per_variant


def curve_table(report: dict[str, Any]) -> str:
    """Markdown: every metric over all studios (mean ± std over seeds), the epsilon spent, the shared D's MIA
    AUC (mean ± std over seeds, and the mean per-studio SE), and each DP run against the non-DP run from the
    same start."""
    summary = report["summary"]
    mia = report.get("membership", {})
    spent: dict[str, float] = {}
    for res in report["results"]:
        eps = [e for e in res["dp_epsilon"].values() if e is not None]
        spent[res["variant"]] = max([spent.get(res["variant"], 0.0), *eps])
    header = ["variant", "epsilon spent (max over studios)", *CURVE_METRICS, f"{MIA} (SE)", "FD vs no-DP",
              "SSIM vs no-DP",
              "style acc vs no-DP (points)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in summary["FD-EffNetLite0"]:
        cells = [f"{summary[m][variant]['all']['mean']:.4g} ± {summary[m][variant]['all']['std']:.2g}"
                 for m in CURVE_METRICS]
        twin = "nodp_prior" if "_prior" in variant else "nodp"
        rel = ["-", "-", "-"]
        if variant != twin and twin in summary["FD-EffNetLite0"]:
            fd, ssim, acc = (summary[m] for m in ("FD-EffNetLite0", "SSIM", "style_acc"))
            rel = [f"{fd[variant]['all']['mean'] / fd[twin]['all']['mean'] - 1:+.0%}",
                   f"{ssim[variant]['all']['mean'] / ssim[twin]['all']['mean'] - 1:+.0%}",
                   f"{100 * (acc[variant]['all']['mean'] - acc[twin]['all']['mean']):+.1f}"]
        eps = f"{spent[variant]:.3g}" if spent.get(variant) else "- (no DP)"
        m = mia.get(variant)
        cells.append(f"{m['mean']:.2f} ± {m['std']:.2f} ({m['se']:.2f})" if m else "-")
        lines.append(f"| {variant} | {eps} | " + " | ".join(cells) + " | " + " | ".join(rel) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault(ENV_DIR, str((args.out / "priors").resolve()))
    grid = curve_variants(tuple(args.epsilons))
    fv.VARIANTS.update(grid)  # run_federation looks variants up by name
    variants = args.variants or [*grid, PRIOR_ONLY]
    unknown = sorted(set(variants) - set(grid) - {PRIOR_ONLY})
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; the grid has {', '.join(grid)}")
    args.set = [*BASE.items(), *args.set]
    base = fv.base_config(args)
    if args.stage in ("all", "train"):
        train(args, base, variants)
    if args.stage in ("all", "evaluate"):
        report = fv.evaluate_dir(args.out, args.data, args.device)
        report["membership"] = membership_summary(args.out)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        table = curve_table(report)
        (args.out / "curve.md").write_text(table)
        print(table)


if __name__ == "__main__":
    main()
