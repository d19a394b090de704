"""Does sharing the discriminator help? Federation modes and loss ablations on the demo studios, several seeds,
judged on each studio's held-out test pairs (issue 8 §3). Exact commands and results: docs/results.md.

    python benchmarks/federation_value.py train --out runs/fedvalue --seeds 0 1 2 --device cuda --workers 8
    python benchmarks/federation_value.py evaluate --out runs/fedvalue

`train` runs every (variant, seed) federation in one process each through the product's in-process federation
(federated/simulator/inprocess.py): a StudioTrainer per studio, the studio's check, style guard and own client-level DP
release, the server's screening and step (federated/round.py), and under privacy.he the HE job's packed CKKS sum
with the product's parameters. Only NVFlare's transport differs from `fedgai simulate`, so the numbers measure the
method, not NVFlare. Each studio's generated test sketches are saved (uint8 PNG bytes in one .npz per run), so
`evaluate` can score them anywhere with fedgai.evaluation (FD/KD on EfficientNet-Lite0 features, SSIM, PSNR, ink
IoU and the cross-studio style classifier) without the checkpoints.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _pool import run_spawned
from PIL import Image

from fedgai.cli import load_config, setting
from fedgai.config import FedgaiConfig

SMALL_STUDIO = 60  # pairs in the studio folder: the "small studio" bound
DEMO_SEED = 15  # 8 studios of 44-215 pairs (985 in all, like the paper's ~1000): three hold <= 60 pairs

# name -> config overrides; how updates reach the server follows the config (privacy.he, privacy.dp). "guard": False
# is a benchmark-only ablation (inprocess.run_federation's guard).
VARIANTS: dict[str, dict[str, Any]] = {
    "local": {"fed.mode": "local"},
    "fedavg_full": {"fed.mode": "fedavg_full"},
    "fedavg_bn": {"fed.mode": "fedavg_bn"},
    "fedbn": {"fed.mode": "fedbn"},  # G and D shared, every normalisation layer local (not FedGAI's guarantee)
    "fedgai": {"fed.mode": "fedgai", "loss.feddecorr": 0.0},
    "fedgai_feddecorr": {"fed.mode": "fedgai", "loss.feddecorr": 0.1},
    "fedgai_client_dp": {"fed.mode": "fedgai", "privacy.dp": "client", "privacy.noise_multiplier": 1.0,
                         "privacy.clip_norm": 1.0},
    "fedgai_record_dp": {"fed.mode": "fedgai", "privacy.dp": "record", "privacy.noise_multiplier": 1.0},
    "fedgai_he": {"fed.mode": "fedgai", "privacy.he": True},
    # Loss ablations, each with its local-only twin so the federation's gain is measured under that loss.
    "local_paper_loss": {"fed.mode": "local", "loss.pixel_l1": 0.0},
    "fedgai_paper_loss": {"fed.mode": "fedgai", "loss.pixel_l1": 0.0},
    "local_no_gram": {"fed.mode": "local", "loss.gram": 0.0},
    "fedgai_no_gram": {"fed.mode": "fedgai", "loss.gram": 0.0},
    "local_no_mrfm": {"fed.mode": "local", "model.decoder": "plain"},
    # Without feature matching, D's only way into a generator is the adversarial term (gradient_share.py): give it a
    # large share of G's gradient, and D a faster optimiser.
    "local_strong_adv": {"fed.mode": "local", "loss.adversarial": 16.0, "train.lr_d": 1e-3},
    "fedgai_strong_adv": {"fed.mode": "fedgai", "loss.adversarial": 16.0, "train.lr_d": 1e-3},
    "fedgai_no_mrfm": {"fed.mode": "fedgai", "model.decoder": "plain"},
    # A dense path from the shared D into each generator: L1 between D's features of generated and real sketch.
    "local_fm": {"fed.mode": "local", "loss.feature_matching": 10.0},
    "fedgai_fm": {"fed.mode": "fedgai", "loss.feature_matching": 10.0},
    # What studios share is where lines go (fedavg_full's gain): a photo-conditioned PatchGAN critic in D that
    # learns it from every studio's pairs, and reaches each generator densely through feature matching.
    "local_structure": {"fed.mode": "local", "model.structure_critic": 32, "loss.feature_matching": 10.0},
    "fedgai_structure": {"fed.mode": "fedgai", "model.structure_critic": 32, "loss.feature_matching": 10.0},
    # Photos without sketches (issue 15 §2): the critics' adversarial terms also judge G(unpaired photo), where a
    # shared critic is the only teacher. Needs demo data with photos-unpaired/ (fedgai data demo --unpaired N).
    "local_unpaired": {"fed.mode": "local", "train.unpaired_batch": 8},
    "fedgai_unpaired": {"fed.mode": "fedgai", "train.unpaired_batch": 8},
    # Sharing structure, not style (issue 15 §4): D plus the generator's coarse decoder stages, summed under CKKS
    # (the mode runs only with HE or client-level DP), each studio's style guard deciding whether it takes them.
    # "guard": False is a benchmark-only ablation (the product always guards): every studio takes the stages.
    "fedgai_struct": {"fed.mode": "fedgai_struct", "privacy.he": True},
    "fedgai_struct_noguard": {"fed.mode": "fedgai_struct", "privacy.he": True, "guard": False},
    # Ditto (issue 15 §4's other half): D plus a shared generator summed under CKKS as above; each studio evaluates
    # its personal generator, pulled towards the received shared one with strength fed.ditto_lambda.
    "fedgai_ditto_l0.1": {"fed.mode": "fedgai_ditto", "fed.ditto_lambda": 0.1, "privacy.he": True},
    "fedgai_ditto_l1": {"fed.mode": "fedgai_ditto", "fed.ditto_lambda": 1.0, "privacy.he": True},
    "fedgai_ditto_l10": {"fed.mode": "fedgai_ditto", "fed.ditto_lambda": 10.0, "privacy.he": True},
}


# ----------------------------------------------------------------------------------------------- train
def studio_dirs(data: Path, count: int) -> list[Path]:
    return sorted(p for p in data.iterdir() if (p / "photos").is_dir())[:count]


def png_bytes(sketch: torch.Tensor) -> bytes:
    array = ((sketch[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(array, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_test_fakes(trainer, path: Path) -> None:
    """The studio's generated sketch for each of its test pairs, as PNG bytes keyed by stem."""
    from fedgai.data import SketchPairDataset

    test = SketchPairDataset(trainer.studio, trainer.cfg.model.image_size, stems=trainer.split.test)
    stems = [p.stem for p, _ in test.pairs]
    fakes = trainer.generate(torch.stack([test[i][0] for i in range(len(test))]))
    np.savez_compressed(path, stems=np.array(stems),
                        pngs=np.array([np.frombuffer(png_bytes(f), np.uint8) for f in fakes], dtype=object))


def run_federation(variant: str, seed: int, base: dict[str, Any], studios: list[Path], out: Path,
                   scratch: Path, device: str, save_fakes: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """One federation (or local-only run) of every studio through the product's in-process federation; returns
    per-round val metrics and timings. ``save_fakes`` (default save_test_fakes) writes each studio's outputs after
    the final receive, before its trainer closes: where a caller adds its own audit of the final networks."""
    from fedgai.federated.simulator.inprocess import run_federation as federate

    overrides = dict(VARIANTS[variant])
    guard = overrides.pop("guard", True)
    cfg = FedgaiConfig.from_dict(base).with_overrides({**overrides, "train.seed": seed})
    name = f"{variant}-seed{seed}"
    started = time.perf_counter()
    run = federate(cfg, studios, scratch / name, device=device, tag=f" {name}", guard=guard)
    (out / name).mkdir(parents=True, exist_ok=True)
    for site, trainer in run.trainers.items():
        (save_fakes or save_test_fakes)(trainer, out / name / f"{site}.npz")
    run.close()
    record = {"variant": variant, "seed": seed, "seconds": time.perf_counter() - started, "rounds": run.rounds,
              "bytes_up_per_studio_round": run.bytes_up_per_studio_round,
              "n_train": {s: t.num_samples for s, t in run.trainers.items()},
              "dp_epsilon": {s: t.dp_epsilon() for s, t in run.trainers.items()},
              "took_shared_stages": run.took_shared_stages,  # per studio and round: its style guard's decision
              "dropped": run.dropped}  # per round: the studios whose update the server did not aggregate, and why
    (out / name / "run.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _train_worker(job: tuple) -> str:
    variant, seed, base, studios, out, device, threads = job
    torch.set_num_threads(threads)
    if (out / f"{variant}-seed{seed}" / "run.json").is_file():
        return f"{out.name}/{variant}-seed{seed}: done before"
    rec = run_federation(variant, seed, base, studios, out, out / "scratch", device)
    return f"{out.name}/{variant}-seed{seed}: {rec['seconds']:.0f} s"


def plan_jobs(out: Path, base: dict[str, Any], variants: list[str], seeds: list[int], studios: list[Path],
              device: str, workers: int) -> list[tuple]:
    """One plan's (variant, seed) jobs, after writing the folder's config and splits (which `evaluate` reads)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(base, indent=2) + "\n")
    save_splits(FedgaiConfig.from_dict(base), studios, out / "splits")
    return [(v, s, base, studios, out, device, max(1, (os.cpu_count() or 1) // workers))
            for s in seeds for v in variants]


def train_all(plans: list[tuple[Path, dict[str, Any], list[str], list[int]]], studios: list[Path], device: str,
              workers: int) -> None:
    """Train every (folder, config, variants, seeds) plan in one process pool."""
    run_jobs([job for plan in plans for job in plan_jobs(*plan, studios, device, workers)], workers)


def run_jobs(jobs: list[tuple], workers: int) -> None:
    """Every job in one process pool, in order; a failed run is reported and the others go on (its folder then
    has no run.json and `evaluate` skips it)."""
    run_spawned(_train_worker, jobs, workers, failed=lambda job: f"{job[4].name}/{job[0]}-seed{job[1]}")


# ----------------------------------------------------------------------------------------------- evaluate
def load_fakes(path: Path) -> dict[str, torch.Tensor]:
    data = np.load(path, allow_pickle=True)
    return {str(stem): torch.from_numpy(np.array(Image.open(io.BytesIO(png.tobytes())))).float()[None] / 127.5 - 1
            for stem, png in zip(data["stems"], data["pngs"], strict=True)}


def stack_pairs(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    photos, sketches = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(photos), torch.stack(sketches)


def evaluate_runs(out: Path, data: Path, image_size: int, device: str) -> list[dict[str, Any]]:
    """Every saved run's scores on its studios' test pairs: kept scores where they are current, the others
    scored now (so that adding runs rescores nothing else, and a folder scored before costs no model)."""
    runs = sorted(p for p in out.iterdir() if (p / "run.json").is_file())
    records = {run: kept_scores(run) for run in runs}
    todo = [run for run, record in records.items() if record is None]
    if todo:
        records.update(score_runs(todo, out, data, image_size, device))
    return [records[run] for run in runs]


def kept_scores(run: Path) -> dict[str, Any] | None:
    """The run's metrics.json when newer than its run.json and holding every metric (else None: score it)."""
    cached = run / "metrics.json"
    if not cached.is_file() or cached.stat().st_mtime < (run / "run.json").stat().st_mtime:
        return None
    record = json.loads(cached.read_text())
    complete = all(m in scores for scores in record["studios"].values() for m in METRICS)  # else: older scores
    return record if complete else None


def score_runs(runs: list[Path], out: Path, data: Path, image_size: int, device: str) -> dict[Path, dict[str, Any]]:
    """Score runs on their studios' test pairs (saved as each run's metrics.json); the style classifier is
    fitted once, on all studios' real training sketches."""
    from fedgai.data import SketchPairDataset, load_studio
    from fedgai.data.split import StudioSplit
    from fedgai.evaluation.metrics import MetricSuite
    from fedgai.evaluation.style import StyleClassifier
    from fedgai.models import build_encoder

    encoder = build_encoder(FedgaiConfig.from_dict(json.loads((out / "config.json").read_text())).model)
    sites = list(json.loads((runs[0] / "run.json").read_text())["n_train"])
    studios = {s: load_studio(data / s) for s in sites}
    splits = {s: StudioSplit.load(out / "splits" / f"{s}.json") for s in sites}
    test_sets = {s: SketchPairDataset(studios[s], image_size, stems=splits[s].test) for s in sites}
    test = {s: stack_pairs(d) for s, d in test_sets.items()}
    suite = MetricSuite(device=device)
    train_feats = {s: suite.features(stack_pairs(SketchPairDataset(studios[s], image_size,
                                                                   stems=splits[s].train))[1]) for s in sites}
    style = StyleClassifier().fit(torch.cat(list(train_feats.values())),
                                  [s for s in sites for _ in range(len(train_feats[s]))])
    real_feats = {s: suite.features(test[s][1]) for s in sites}
    scored = {}
    for run in runs:
        record = json.loads((run / "run.json").read_text())
        record["studios"] = {}
        for site in sites:
            fakes = load_fakes(run / f"{site}.npz")
            photos, reals = test[site]
            fake = torch.stack([fakes[photo.stem] for photo, _ in test_sets[site].pairs])
            metrics = suite.evaluate(photos, fake, reals, style, site, real_features=real_feats[site], encoder=encoder)
            record["studios"][site] = {**metrics, "n_pairs": len(studios[site].pairs)}
        (run / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        scored[run] = record
        print(f"evaluated {run.name}", flush=True)
    return scored


def summarise(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Per variant and studio-size group: mean and std over seeds of the group's mean metric."""
    table: dict[str, dict[str, list[float]]] = {}
    for res in results:
        groups: dict[str, list[float]] = {"small": [], "large": [], "all": []}
        for m in res["studios"].values():
            value = m.get(metric)
            if not isinstance(value, float):  # "unavailable"
                continue
            groups["small" if m["n_pairs"] <= SMALL_STUDIO else "large"].append(value)
            groups["all"].append(value)
        for group, values in groups.items():
            if values:
                table.setdefault(res["variant"], {}).setdefault(group, []).append(float(np.mean(values)))
    return {v: {g: {"mean": statistics.fmean(x), "std": statistics.pstdev(x), "seeds": len(x)}
                for g, x in groups.items()} for v, groups in table.items()}


# ----------------------------------------------------------------------------------------------- tune
# Settings tried before the comparison, each as local-only vs FedGAI (+FedDecorr, the paper's method). Same
# compute in each (15 local epochs per studio). Picked on a different split (train.split_seed 1) from the one
# the comparison reports on (0), so the reported gain is not the selection's own noise.
CANDIDATES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "paper_loss": {"loss.pixel_l1": 0.0},
    "paper_loss_strong_d": {"loss.pixel_l1": 0.0, "loss.adversarial": 4.0, "train.lr_d": 1e-3},
    "strong_d": {"loss.adversarial": 4.0, "train.lr_d": 1e-3},
    "wide_d": {"loss.pixel_l1": 1.0, "loss.adversarial": 2.0, "train.lr_d": 5e-4, "model.disc_width": 256},
    "frequent_sync": {"loss.pixel_l1": 0.0, "loss.adversarial": 4.0, "train.lr_d": 1e-3, "train.epochs": 1,
                      "fed.rounds": 15},
}
TUNE_PAIR = ("local", "fedgai_feddecorr")
SELECTION_SPLIT = 1
TARGET_SMALL_GAIN, MAX_LARGE_LOSS, MAX_STYLE_DROP = 0.10, 0.05, 0.05


def gains(results: list[dict[str, Any]], fed: str, local: str = "local") -> dict[str, float]:
    """FedGAI vs local-only: relative FD gain for small studios, relative FD change for large ones, style-accuracy
    drop (points / 100). Means over seeds of group means."""
    fd, style = summarise(results, "FD-EffNetLite0"), summarise(results, "style_acc")
    fd_style = summarise(results, "FD-Style")
    return {"small_fd_gain": 1 - fd[fed]["small"]["mean"] / fd[local]["small"]["mean"],
            "large_fd_change": fd[fed]["large"]["mean"] / fd[local]["large"]["mean"] - 1,
            "small_fd_style_gain": 1 - fd_style[fed]["small"]["mean"] / fd_style[local]["small"]["mean"],
            "style_drop": style[local]["all"]["mean"] - style[fed]["all"]["mean"]}


def pick(scores: dict[str, dict[str, float]]) -> str:
    """The candidate meeting the large-studio and style limits with the largest small-studio gain (or, if
    none meets them, the largest gain net of how far it breaks them)."""
    def meets(g: dict[str, float]) -> bool:
        return g["large_fd_change"] <= MAX_LARGE_LOSS and g["style_drop"] <= MAX_STYLE_DROP

    def net(g: dict[str, float]) -> float:
        return g["small_fd_gain"] - max(0.0, g["large_fd_change"] - MAX_LARGE_LOSS) - max(0.0, g["style_drop"]
                                                                                         - MAX_STYLE_DROP)

    feasible = {name: g for name, g in scores.items() if meets(g)}
    pool = feasible or scores
    return max(pool, key=lambda name: net(pool[name]))


def tune(args: argparse.Namespace, studios: list[Path]) -> dict[str, Any]:
    base = base_config(args)
    plans = [(args.out / "tune" / name, FedgaiConfig.from_dict(base).with_overrides(
        {**overrides, "train.split_seed": SELECTION_SPLIT}).to_dict(), list(TUNE_PAIR), [args.seeds[0]])
        for name, overrides in CANDIDATES.items() if name in args.candidates]
    train_all(plans, studios, args.device, args.workers)
    scores = {}
    for out, *_ in plans:
        report = evaluate_dir(out, args.data, args.device)
        scores[out.name] = gains(report["results"], TUNE_PAIR[1])
    choice = {"scores": scores, "selected": pick(scores), "overrides": CANDIDATES[pick(scores)]}
    (args.out / "tune" / "selected.json").write_text(json.dumps(choice, indent=2) + "\n")
    print(json.dumps(choice, indent=2), flush=True)
    return choice


# ----------------------------------------------------------------------------------------------- unpaired grid
# Issue 15 §2: local-only against the paper's D-only mode (FedDecorr on) at several counts N of unpaired photos per
# studio. Each level has its own demo folder DATA-uN; the pairs are the same in every level (unpaired photos come
# from their own random stream), so levels differ only in the photos nobody has drawn.
GRID_VARIANTS = {False: ("local", "fedgai_feddecorr"), True: ("local_unpaired", "fedgai_unpaired")}
GRID_METRICS = ("FD-EffNetLite0", "FD-Style", "Gram_dist", "style_acc", "SSIM")
GRID_POINTS = {"style_acc", "SSIM"}  # compared as differences (points), the others as relative changes


def grid_level(text: str) -> tuple[int, list[int] | None]:
    """An --unpaired level: "400", or "100:0,1" to train that level on seeds 0 and 1 only (default: --seeds)."""
    count, _, seeds = text.partition(":")
    try:
        level = (int(count), [int(s) for s in seeds.split(",")] if seeds else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N:SEED,SEED,... got {text!r}") from None
    if level[0] < 0:
        raise argparse.ArgumentTypeError(f"unpaired photos per studio must be >= 0, got {level[0]}")
    return level


def level_data(data: Path, count: int) -> Path:
    return data.with_name(f"{data.name}-u{count}")


def level_studios(args: argparse.Namespace, count: int) -> list[Path]:
    """The level's demo studios, made if missing (fedgai data demo --seed 15 --size 128 --unpaired N)."""
    data = level_data(args.data, count)
    if not data.exists():
        from fedgai.data import make_demo

        make_demo(data, studios=args.studios, seed=DEMO_SEED, size=128, unpaired=count, progress=False)
    return studio_dirs(data, args.studios)


def train_grid(args: argparse.Namespace, base: dict[str, Any]) -> None:
    """Every level's local-only and FedGAI runs in one pool, seed by seed across levels, each federation next to
    its local twin: a grid cut short still holds whole (level, seed) pairs."""
    jobs = []
    for seed in sorted({s for _, seeds in args.unpaired for s in seeds or args.seeds}):
        for count, seeds in args.unpaired:
            if seed in (seeds or args.seeds):
                level = FedgaiConfig.from_dict(base).with_overrides({} if count else {"train.unpaired_batch": 0})
                jobs += plan_jobs(args.out / f"unpaired-{count}", level.to_dict(), list(GRID_VARIANTS[count > 0]),
                                  [seed], level_studios(args, count), args.device, args.workers)
    run_jobs(jobs, args.workers)


def group_mean(record: dict[str, Any], metric: str, group: str) -> float:
    return float(np.mean([m[metric] for m in record["studios"].values()
                          if (m["n_pairs"] <= SMALL_STUDIO) == (group == "small")]))


def twin_changes(results: list[dict[str, Any]], fed: str, local: str) -> dict[str, dict[str, float]]:
    """Each seed's federation against the same seed's local twin, per size group; positive = the federation is
    better (relative for distances, points x 100 for style accuracy and SSIM). Mean and std over seeds."""
    runs = {(r["variant"], r["seed"]): r for r in results}
    seeds = sorted(s for v, s in runs if v == fed and (local, s) in runs)
    changes: dict[str, list[float]] = {}
    for seed in seeds:
        for group in ("small", "large"):
            for metric in GRID_METRICS:
                f, lo = group_mean(runs[fed, seed], metric, group), group_mean(runs[local, seed], metric, group)
                change = 100 * (f - lo) if metric in GRID_POINTS else 1 - f / lo
                changes.setdefault(f"{group} {metric}", []).append(change)
    return {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v), "seeds": len(v)} for k, v in changes.items()}


def meets_target(change: dict[str, dict[str, float]]) -> bool:
    """The issue's target: small studios >= 10 % better on FD-EffNetLite0 and FD-Style, large ones <= 5 % worse on
    FD-EffNetLite0, style accuracy within 5 points for both groups (means over seeds)."""
    m = {k: v["mean"] for k, v in change.items()}
    return (m["small FD-EffNetLite0"] >= TARGET_SMALL_GAIN and m["small FD-Style"] >= TARGET_SMALL_GAIN
            and m["large FD-EffNetLite0"] >= -MAX_LARGE_LOSS
            and all(m[f"{g} style_acc"] >= -100 * MAX_STYLE_DROP for g in ("small", "large")))


def evaluate_grid(args: argparse.Namespace) -> dict[str, Any]:
    """Score every level (evaluate_dir) and gather what docs/results.md reports: per level and size group the
    scores of both variants, and the federation against its local twin."""
    levels = {}
    for count, _ in args.unpaired:
        report = evaluate_dir(args.out / f"unpaired-{count}", level_data(args.data, count), args.device)
        local, fed = GRID_VARIANTS[count > 0]
        change = twin_changes(report["results"], fed, local)
        levels[str(count)] = {
            "variants": [local, fed],
            "summary": {m: report["summary"][m] for m in GRID_METRICS},
            "against_local": change, "target_met": meets_target(change),
            "runs": [{k: r[k] for k in ("variant", "seed", "seconds", "n_train", "studios")}
                     for r in report["results"]]}
    grid = {"config": json.loads((args.out / f"unpaired-{args.unpaired[0][0]}" / "config.json").read_text()),
            "small_studio_pairs": SMALL_STUDIO, "levels": levels}
    (args.out / "grid.json").write_text(json.dumps(grid, indent=2) + "\n")
    (args.out / "grid.md").write_text(grid_markdown(grid))
    return grid


def grid_markdown(grid: dict[str, Any]) -> str:
    """Per level a table of both variants' scores per size group, then one table of every level's changes."""
    def cell(stat: dict[str, float], metric: str) -> str:
        if metric == "style_acc":
            return f"{100 * stat['mean']:.0f} ± {100 * stat['std']:.0f} %"
        return f"{stat['mean']:.4g} ± {stat['std']:.2g}"

    lines = []
    for count, level in grid["levels"].items():
        lines += [f"#### {count} unpaired photos per studio", "",
                  "| variant | studios | " + " | ".join(GRID_METRICS) + " | seeds |", "|---|---|" + "---|" * 6]
        for group in ("small", "large"):
            for v in level["variants"]:
                stats = [level["summary"][m][v][group] for m in GRID_METRICS]
                lines.append(f"| {v} | {group} | " + " | ".join(cell(s, m) for s, m in zip(stats, GRID_METRICS,
                                                                                       strict=True))
                             + f" | {stats[0]['seeds']} |")
        lines.append("")
    keys = [f"{g} {m}" for g in ("small", "large") for m in GRID_METRICS]
    lines += ["#### FedGAI against its local twin (per seed, positive = the federation is better; % for distances, "
              "points for style accuracy and SSIM x 100)", "",
              "| unpaired | " + " | ".join(keys) + " | target met |", "|---|" + "---|" * (len(keys) + 1)]
    for count, level in grid["levels"].items():
        c = level["against_local"]
        cells = [f"{c[k]['mean']:+.1f} ± {c[k]['std']:.1f}" if k.split()[1] in GRID_POINTS
                 else f"{100 * c[k]['mean']:+.1f} ± {100 * c[k]['std']:.1f} %" for k in keys]
        lines.append(f"| {count} | " + " | ".join(cells) + f" | {'yes' if level['target_met'] else 'no'} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("all", "tune", "train", "evaluate"),
                   help="all = tune, then train and evaluate the comparison with the selected setting")
    p.add_argument("--data", type=Path, default=Path("runs/bench-data"),
                   help=f"demo studios (made with --seed {DEMO_SEED} at 128 px if missing)")
    p.add_argument("--studios", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES), metavar="NAME",
                   help="settings the tune stage tries")
    p.add_argument("--unpaired", nargs="+", type=grid_level, metavar="N[:SEEDS]",
                   help="the unpaired-photo grid instead of --variants (issue 15 §2): local-only and FedGAI with N "
                        "unpaired photos per studio, on DATA-uN (made if missing), into OUT/unpaired-N; e.g. "
                        "0 100:0,1 400 (seeds 0 and 1 only at 100)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--set", type=setting, nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every run, parsed as `fedgai --set` parses them (repeatable)")
    p.add_argument("--workers", type=int, default=1, help="federations trained in parallel processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=Path("runs/fedvalue"))
    return p.parse_args(argv)


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The profile with --set applied as the CLI applies it (cli.load_config); a null is applied too (e.g.
    train.max_pairs=null for every pair), where FedgaiConfig.with_overrides would skip it."""
    data = load_config(args).to_dict()
    for key, value in args.set:
        if value is None:
            section, _, name = key.partition(".")
            data[section][name] = None
    return FedgaiConfig.from_dict(data).to_dict()


def demo_studios(args: argparse.Namespace) -> list[Path]:
    if not args.data.exists():
        from fedgai.data import make_demo

        make_demo(args.data, studios=args.studios, seed=DEMO_SEED, size=128)
    return studio_dirs(args.data, args.studios)


def save_splits(cfg: FedgaiConfig, studios: list[Path], folder: Path) -> None:
    from fedgai.data import load_studio
    from fedgai.data.split import split_studio

    folder.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    for s in studios:
        split_studio(load_studio(s), t.split_seed, t.val_fraction, t.test_fraction).save(folder / f"{s.name}.json")


METRICS = ("FD-EffNetLite0", "KD-EffNetLite0", "SSIM", "PSNR", "ink_IoU", "style_acc", "FD-Style", "Gram_dist")
LOWER_IS_BETTER = {"FD-EffNetLite0", "KD-EffNetLite0", "FD-Style", "Gram_dist"}


def evaluate_dir(out: Path, data: Path, device: str) -> dict[str, Any]:
    base = json.loads((out / "config.json").read_text())
    results = evaluate_runs(out, data, base["model"]["image_size"], device)
    report = {"config": base, "results": results, "summary": {m: summarise(results, m) for m in METRICS}}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    return report


def local_twin(variant: str, variants: list[str]) -> str:
    """The local-only run under the same loss: fedgai_no_gram -> local_no_gram; plain "local" otherwise."""
    twin = "local_" + variant.partition("_")[2]
    return twin if twin in variants else "local"


def guard_lines(results: list[dict[str, Any]]) -> list[str]:
    """Per guarded variant and studio: how many rounds' shared generator stages its style guard took."""
    taken: dict[str, dict[str, list[bool]]] = {}
    for res in results:
        for site, decisions in res.get("took_shared_stages", {}).items():
            kept = [d for d in decisions if d is not None]
            if kept:
                taken.setdefault(res["variant"], {}).setdefault(site, []).extend(kept)
    if not taken:
        return []
    sites = sorted({site for per_site in taken.values() for site in per_site})
    lines = ["", "#### Style guard: receives in which a studio took the shared generator stages (all seeds)", "",
             "| variant | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
    for variant, per_site in taken.items():
        cells = [f"{sum(per_site[s])}/{len(per_site[s])}" if s in per_site else "-" for s in sites]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """Tables for docs/results.md: every metric per variant and size group (mean ± std over seeds), FedGAI's
    gains over local-only, and per-studio FD."""
    summary = report["summary"]
    variants = list(summary["FD-EffNetLite0"])
    lines = []
    for metric in METRICS:
        arrow = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        lines += [f"#### {metric} ({arrow})", "", "| variant | small studios (<= 60 pairs) | large studios | all |",
                  "|---|---|---|---|"]
        for v in variants:
            cells = [f"{g['mean']:.4g} ± {g['std']:.2g} (n={g['seeds']})" if (g := summary[metric][v].get(grp))
                     else "-" for grp in ("small", "large", "all")]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["#### Federated variants against their local-only twin", "",
              "| variant | vs | small FD gain | small FD-Style gain | large FD change | style-acc drop (points) |",
              "|---|---|---|---|---|---|"]
    for v in variants:
        if v.startswith("local"):
            continue
        twin = local_twin(v, variants)
        if twin not in variants:
            continue
        g = gains(report["results"], v, twin)
        lines.append(f"| {v} | {twin} | {g['small_fd_gain']:+.1%} | {g['small_fd_style_gain']:+.1%} | "
                     f"{g['large_fd_change']:+.1%} | {100 * g['style_drop']:+.1f} |")
    lines += guard_lines(report["results"])
    lines += ["", "#### FD-EffNetLite0 per studio (mean ± std over seeds)", ""]
    studios = sorted(report["results"][0]["studios"], key=lambda s: report["results"][0]["studios"][s]["n_pairs"])
    lines += ["| variant | " + " | ".join(f"{s} ({report['results'][0]['studios'][s]['n_pairs']})" for s in studios)
              + " |", "|---|" + "---|" * len(studios)]
    for v in variants:
        runs = [r for r in report["results"] if r["variant"] == v]
        cells = []
        for s in studios:
            values = [r["studios"][s]["FD-EffNetLite0"] for r in runs]
            cells.append(f"{statistics.fmean(values):.1f} ± {statistics.pstdev(values):.1f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.unpaired:
        if args.stage == "tune":
            raise SystemExit("--unpaired runs the grid (stages train, evaluate, all); it has no tune stage")
        if args.stage in ("all", "train"):
            train_grid(args, base_config(args))
        if args.stage in ("all", "evaluate"):
            print(grid_markdown(evaluate_grid(args)))
        return
    studios = demo_studios(args)
    overrides: dict[str, Any] = {}
    if args.stage in ("all", "tune"):
        overrides = tune(args, studios)["overrides"]
        if args.stage == "tune":
            return
    if args.stage in ("all", "train"):
        base = FedgaiConfig.from_dict(base_config(args)).with_overrides(overrides).to_dict()
        train_all([(args.out / "compare", base, args.variants, args.seeds)], studios, args.device, args.workers)
        if args.stage == "train":
            return
    report = evaluate_dir(args.out / "compare", args.data, args.device)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
