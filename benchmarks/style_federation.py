"""Issue 27 §3: does the fedgai_style federation pay a small studio, in its own style, against its strong local twin?

Every arm runs the product: StudioTrainer with model.generator styled (models.StyledSketchGenerator + ProjectionCritic,
objective.RendererObjective), started from the public line-style prior (prior_build.build_prior), through the
in-process federation driver (federated/simulator/inprocess.py: the product's round, HE packing with the product's CKKS
parameters and the HE server's sum). Per seed:

- federated: fed.mode fedgai_style under privacy.he over the first ``--studios`` demo studios; each round every
  studio first fits its head (FiLM layers, critic branch) with the shared body frozen for train.head_steps steps,
  then trains the body for train.round_steps steps (FedRep); the renderer and critic trunk are summed under HE.
  Scored twice: "federated" draws with the round's global (after the studio received it), "personal" with the
  studio's own renderer after that round's local steps, before the average: what the product's studio holds (an
  NVFlare studio saves its checkpoint after its local work, and no global follows the last round);
- local: each studio's strong local twin: the same prior, DiffAugment, FreezeD (the critic's first 2
  convolutions frozen), the same number of steps (rounds x (head_steps + round_steps)), nothing sent;
- joiner: a studio outside the federation (the next demo studio) with n = 10 training pairs. "joiner_stats" draws
  with the final shared renderer, the prior's head and only its sketches' statistics (nothing trained);
  "joiner_head" also fits its head on its 10 pairs (FedRep's new-client step); against its local twin at n = 10.
Every studio keeps its best round by its val FD-Style-reject (the same rule for every arm) and is scored on the
evaluator's held-out pairs (new garments of the studio's taste and style, never in a studio folder):
FD-Style-reject, FD-Style and style accuracy (a classifier fitted on every studio's evaluator sketches, with the
reject classes that keep an untrained renderer's noise from scoring), FD-EffNetLite0, SSIM, ink IoU.

    fedgai data demo --studios 8 --seed 15 --size 128 --out runs/style-fed-data
    python benchmarks/style_federation.py --data runs/style-fed-data --out runs/style-fed --workers 2
    python benchmarks/style_federation.py --data runs/style-fed-data --out runs/style-fed --report

The variants of docs/results.md by --set: fed.mode=fedgai_style_code train.head_steps=0 train.round_steps=40
(everything shared but the statistics), fed.weighting=uniform (every studio's update weighs the same),
train.public_mix=8 (public line-style pairs in every batch, both arms), train.round_steps=10 fed.rounds=40.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _pool import run_spawned, write_table
from PIL import Image

from fedgai.cli import setting
from fedgai.config import FedgaiConfig
from fedgai.evaluation.style import StyleClassifier

BASE: dict[str, Any] = {
    "model": {"encoder": "efficientnet-lite0", "image_size": 64, "generator": "styled", "decoder_width": 64,
              "disc_width": 32, "style_code": 64},
    "loss": {"clip_pretrained": "none"},
    "train": {"batch_size": 16, "lr_g": 2e-4, "lr_d": 2e-4, "round_steps": 30, "head_steps": 10,
              "diff_augment": True, "max_pairs": None, "num_threads": 1, "amp": "off", "grid_size": 4},
    "fed": {"rounds": 10, "mode": "fedgai_style", "min_clients": 3},
    "privacy": {"he": True},
}
LARGE = 3
JOINER_PAIRS = 10
SMALL = 20  # training-folder pairs at or below which a studio is "small" (issue 27 §3)
# Report rows: the local twin; the federated renderer (the last global kept by val); each studio's own renderer
# after a round's local steps (personal, also kept by val); the late joiner with its statistics / its fitted head.
ARMS = ("local", "federated", "personal", "joiner_stats", "joiner_head")
REPORTED = ("FD-Style-reject", "FD-Style", "FD-EffNetLite0", "style_acc", "not_sketch_share", "SSIM", "ink_IoU")


def choose_studios(data: Path, large: int) -> tuple[list[Path], Path]:
    """Every small studio (<= SMALL pairs) and the first ``large`` others federate; the next other one joins late."""
    folders = sorted(p for p in data.iterdir() if (p / "photos").is_dir())
    small = [f for f in folders if len(list((f / "photos").iterdir())) <= SMALL]
    others = [f for f in folders if f not in small]
    if not small or len(others) <= large:
        raise SystemExit(f"{data} needs a studio of <= {SMALL} pairs and {large} + 1 larger ones (fedgai data demo "
                         "--studios 8 makes them)")
    return [*others[:large], *small], others[large]


def base_config(sets: list[tuple[str, Any]]) -> FedgaiConfig:
    """The grid's config with the command's --set overrides (parsed by the CLI's own ``setting``)."""
    return FedgaiConfig.from_dict(BASE).with_overrides(dict(sets))


def arm_config(base: FedgaiConfig, arm: str, seed: int, prior: Path) -> FedgaiConfig:
    """The federated arm is the base; the local twin spends the same steps per round alone, with FreezeD."""
    t = base.train
    common = {"train.seed": seed, "train.prior": str(prior)}
    if arm == "federated":
        return base.with_overrides(common)
    return base.with_overrides({**common, "fed.mode": "local", "privacy.he": False, "fed.min_clients": 1,
                                "train.freeze_d": 2, "train.head_steps": 0,
                                "train.round_steps": t.round_steps + t.head_steps})


def build_prior(base: FedgaiConfig, out: Path) -> Path:
    from fedgai.prior_build import build_prior as build

    path = out / "prior.pt"
    if not path.is_file():
        started = time.perf_counter()
        build(base.with_overrides({"fed.mode": "local", "privacy.he": False, "fed.min_clients": 1}), path)
        print(f"prior: {time.perf_counter() - started:.0f} s -> {path}", flush=True)
    return path


# ----------------------------------------------------------------------------------------------- scoring
# The evaluator's pairs per studio: new garments of the studio's own taste and style on its own random stream
# ([demo seed, studio, item], items far beyond any folder's), never in a studio folder. A 10-pair studio's own split
# holds 1 val and 2 test pairs, too few for a Fréchet distance; these are what every arm is judged on.
EVAL_ITEMS = {"classifier": 200_000, "val": 100_000, "test": 100_000 + 1_000}
EVAL_PAIRS = {"classifier": 32, "val": 16, "test": 32}


def evaluation_pairs(folder: Path, demo_seed: int, side: str, size: int, cache: Path) -> tuple[torch.Tensor, ...]:
    """(photos, sketches) of ``side`` for demo studio ``folder`` (studio-NN-style), written once under ``cache`` and
    read back through the product's loader (so they are resized exactly as a studio's pairs are)."""
    from fedgai.data import SketchPairDataset, load_studio
    from fedgai.data.demo import render_pair, studio_taste

    target = cache / side / folder.name
    if not (target / "studio.json").is_file():
        index, render_size = int(folder.name.split("-")[1]) - 1, Image.open(next((folder / "photos").iterdir())).width
        (target / "photos").mkdir(parents=True, exist_ok=True)
        (target / "sketches").mkdir(exist_ok=True)
        for j in range(EVAL_PAIRS[side]):
            item = EVAL_ITEMS[side] + j
            photo, sketch = render_pair(studio_taste(index, demo_seed), np.random.default_rng([demo_seed, index, item]),
                                        render_size)
            photo.save(target / "photos" / f"{item}.png")
            sketch.save(target / "sketches" / f"{item}.png")
        (target / "studio.json").write_text(json.dumps({"name": folder.name, "evaluation": side}) + "\n")
    data = SketchPairDataset(load_studio(target), size)
    photos, sketches = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack(photos), torch.stack(sketches)


class Scorer:
    """The product's metrics per studio on the evaluator's pairs; the style classifier fitted on every scored
    studio's classifier pairs (the evaluator's knowledge, the same for every arm).

    ``style``: that classifier, fitted by a Scorer of the same studios before. Its reject-class features take
    minutes, so main fits it once and hands it to every job (a plain object of tensors: it pickles to the spawned
    processes) instead of each job fitting the same classifier again."""

    def __init__(self, folders: list[Path], size: int, demo_seed: int, cache: Path,
                 style: StyleClassifier | None = None):
        from fedgai.evaluation.metrics import MetricSuite
        self.suite = MetricSuite()
        self.style = style if style is not None else self.fit_style(folders, size, demo_seed, cache)
        self.sides = {f.name: {side: evaluation_pairs(f, demo_seed, side, size, cache) for side in ("val", "test")}
                      for f in folders}
        self.real = {s: {side: self.suite.features(t[1]) for side, t in sides.items()}
                     for s, sides in self.sides.items()}

    def fit_style(self, folders: list[Path], size: int, demo_seed: int, cache: Path) -> StyleClassifier:
        """The style classifier with the reject classes ("not a line sketch", "another line style"): it gives
        FD-Style-reject, which an untrained renderer's noise cannot win (docs/results.md, the floor check), beside
        the old FD-Style."""
        known = {f.name: evaluation_pairs(f, demo_seed, "classifier", size, cache)[1] for f in folders}
        return self.suite.style_classifier(torch.cat(list(known.values())),
                                           [s for s in known for _ in range(len(known[s]))])

    def val_fd_style(self, studio: str, trainer) -> float:
        """FD-Style-reject on the studio's val pairs: the rule every arm picks its best round by."""
        from fedgai.evaluation.metrics import style_fd_reject

        fakes = trainer.generate(self.sides[studio]["val"][0])
        return style_fd_reject(self.style, self.real[studio]["val"], self.suite.features(fakes))

    def test(self, studio: str, trainer) -> tuple[dict[str, float], torch.Tensor]:
        photos, sketches = self.sides[studio]["test"]
        fakes = trainer.generate(photos)
        scores = self.suite.evaluate(photos, fakes, sketches, self.style, studio,
                                     real_features=self.real[studio]["test"])
        return {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}, fakes


class BestRound:
    """Each studio's generator at its best round by val FD-Style (an after_round hook of the driver)."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.best = scorer, {}

    def __call__(self, rnd: int, trainers: dict) -> None:
        for site, trainer in trainers.items():
            value = self.scorer.val_fd_style(site, trainer)
            if site not in self.best or value < self.best[site][0]:
                self.best[site] = (value, rnd, copy.deepcopy(trainer.generator.state_dict()))

    def restore(self, site: str, trainer) -> int:
        trainer.generator.load_state_dict(self.best[site][2])
        return self.best[site][1]


# ----------------------------------------------------------------------------------------------- fusion, IP cost
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
PUBLIC_CODES = 8  # public line styles an outsider draws with when it wants B's style without B's statistics
FUSION_PHOTOS = 16  # A's first test photos, drawn at every blend and code


@torch.no_grad()
def draw_in(trainer, photos: torch.Tensor, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    trainer.generator.eval()
    return trainer.generator(trainer.encoder(photos), stats)


def public_codes(encoder, size: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """The statistics of PUBLIC_CODES public line styles (4 public garments each): codes anyone can make."""
    from fedgai.data.public_styles import public_photo, public_style, render_line_style
    from fedgai.models import AdaINSD
    from fedgai.prior import PRIOR_STREAM

    codes = []
    for index in range(10_000, 10_000 + PUBLIC_CODES):  # style numbers the prior never trained on
        style, rng = public_style(index), np.random.default_rng(index)
        sketches = []
        for j in range(4):
            photo = public_photo(PRIOR_STREAM, 900_000 + 4 * index + j, 2 * size)
            sketch = Image.fromarray(render_line_style(np.asarray(photo), style, rng), "L").resize((size, size))
            sketches.append(torch.from_numpy(np.asarray(sketch, dtype=np.float32) / 127.5 - 1)[None])
        adain = AdaINSD(encoder.channels)
        with torch.no_grad():
            adain.fit([encoder(torch.stack(sketches))])
        codes.append(adain.stats())
    return codes


def fusion_and_ip(scorer: Scorer, trainers: dict) -> dict[str, Any]:
    """Every ordered pair (A, B): the share of A's test photos the classifier files as B's when A's renderer draws
    in a blend of A's and B's statistics (ALPHAS, 0 = A's own), and, without B's statistics, the mean and best
    share for B over the public codes (what A can draw "in B's style" without B's code: the IP cost)."""
    from fedgai.edge.style_blend import blend_stats

    some = next(iter(trainers.values()))
    codes = public_codes(some.encoder, some.cfg.model.image_size)
    stats = {site: t.generator.adain.stats() for site, t in trainers.items()}
    out: dict[str, Any] = {"fusion": {}, "public_code_share": {}}
    for a, trainer in trainers.items():
        photos = scorer.sides[a]["test"][0][:FUSION_PHOTOS]
        public = [scorer.suite.features(draw_in(trainer, photos, code)) for code in codes]
        for b in trainers:
            if b == a:
                continue
            pair = f"{a} -> {b}"
            out["fusion"][pair] = [scorer.style.accuracy(scorer.suite.features(
                draw_in(trainer, photos, blend_stats(stats[a], stats[b], alpha))), b) for alpha in ALPHAS]
            shares = [scorer.style.accuracy(features, b) for features in public]
            out["public_code_share"][pair] = {"mean": float(np.mean(shares)), "max": float(np.max(shares))}
    return out


# ----------------------------------------------------------------------------------------------- one job
def run_job(job: tuple) -> str:
    arm, seed, folders, joiner, out, sets, demo_seed, style = job
    path = out / f"{arm}-seed{seed}.json"
    if path.is_file():
        return f"{path.name}: done before"
    from fedgai.federated.simulator.inprocess import run_federation

    torch.set_num_threads(1)
    started = time.perf_counter()
    base = base_config(sets)
    cfg = arm_config(base, arm, seed, out / "prior.pt")
    scorer = Scorer([*folders, joiner], cfg.model.image_size, demo_seed, out / "evaluation", style)
    scratch = out / "scratch" / f"{arm}-seed{seed}"
    record: dict[str, Any] = {"arm": arm, "seed": seed, "studios": {}, "config": cfg.to_dict()}
    fakes: dict[str, torch.Tensor] = {}

    def score(run, best: BestRound, key: str, label: str = "") -> None:
        for site, trainer in run.trainers.items():
            rnd = best.restore(site, trainer)
            scores, fakes[site + label] = scorer.test(site, trainer)
            record.setdefault(key, {})[site] = {"scores": scores, "best_round": rnd, "n_train": trainer.num_samples}

    best, personal = BestRound(scorer), BestRound(scorer)
    run = run_federation(cfg, folders, scratch, tag=f" {arm} s{seed}", after_round=best,
                         after_train=personal if arm == "federated" else None)
    record["bytes_up_per_studio_round"] = run.bytes_up_per_studio_round
    score(run, best, "studios")
    record |= fusion_and_ip(scorer, run.trainers)
    if arm == "federated":  # each studio's own renderer after its local steps, before the average
        score(run, personal, "personal", " (personal)")
    run.close()
    joiner_cfg = cfg.with_overrides({"train.max_pairs": JOINER_PAIRS})
    if arm == "federated":
        record["joiner"] = join_late(joiner_cfg, joiner, scratch, run.global_params, scorer, fakes)
    else:
        best = BestRound(scorer)
        run = run_federation(joiner_cfg, [joiner], scratch / "joiner", tag=f" {arm} s{seed} joiner",
                             after_round=best)
        score(run, best, "studios")
        run.close()
    save_grid(path.with_suffix(".png"), scorer, fakes)
    record["seconds"] = time.perf_counter() - started
    path.write_text(json.dumps(record, indent=2) + "\n")
    return f"{path.name}: {record['seconds']:.0f} s"


def join_late(cfg: FedgaiConfig, joiner: Path, scratch: Path, global_params: dict[str, np.ndarray], scorer: Scorer,
              fakes: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A studio that joins after training: the final global renderer with the prior's head and its own n-sketch
    statistics (joiner_stats), then with its head fitted on its n pairs (joiner_head: head_steps x rounds steps)."""
    from fedgai.features.fedrep import fit_head, head_parameters
    from fedgai.trainer import StudioTrainer

    trainer = StudioTrainer(cfg, joiner, scratch / "joiner")
    trainer.load_shared({k: torch.as_tensor(v) for k, v in global_params.items()})
    out = {}
    stats, fakes[f"{joiner.name} (stats)"] = scorer.test(joiner.name, trainer)
    out["joiner_stats"] = {"scores": stats, "n_train": trainer.num_samples}
    if head_parameters(trainer):  # fedgai_style_code keeps no head: its joiner has only its statistics
        fit_head(trainer, cfg.train.head_steps * cfg.fed.rounds, " joiner")
        head, fakes[f"{joiner.name} (head)"] = scorer.test(joiner.name, trainer)
        out["joiner_head"] = {"scores": head, "n_train": trainer.num_samples}
    trainer.close()
    return out


def save_grid(path: Path, scorer: Scorer, fakes: dict[str, torch.Tensor]) -> None:
    """Per studio: 6 test photos (grey), their real sketches, the arm's sketches."""
    rows = []
    for name, fake in fakes.items():
        photos, sketches = scorer.sides[name.split(" ")[0]]["test"]
        k = min(6, len(fake))
        for row in (photos[:k].mean(1, keepdim=True), sketches[:k], fake[:k]):
            rows.append(torch.cat([*row, torch.ones(6 - k, 1, *row.shape[2:])], 2)[0] if k < 6
                        else torch.cat(list(row), 2)[0])
    tiles = torch.cat(rows, 0)
    Image.fromarray(((tiles.clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), "L").save(path)


# ----------------------------------------------------------------------------------------------- report
def collect(out: Path) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(arm, studio) -> metric -> per-seed values; the joiner's arms under the joiner studio's name."""
    table: dict[tuple[str, str], dict[str, list[float]]] = {}
    for path in sorted(out.glob("*-seed*.json")):
        run = json.loads(path.read_text())
        entries = [(run["arm"], s, r) for s, r in run["studios"].items()]
        entries += [("personal", s, r) for s, r in run.get("personal", {}).items()]
        entries += [(arm, "joiner", r) for arm, r in run.get("joiner", {}).items()]
        for arm, studio, result in entries:
            cell = table.setdefault((arm, studio), {"n_train": [result["n_train"]]})
            for metric, value in result["scores"].items():
                cell.setdefault(metric, []).append(value)
    return table


def report(out: Path) -> str:
    table = collect(out)
    joiner = next((s for (a, s) in table if a == "local" and s not in {st for (b, st) in table if b == "federated"}),
                  None)
    if joiner:  # the joiner's local twin sits under its own name
        table.update({(arm, joiner): cell for (arm, s), cell in list(table.items()) if s == "joiner"})
    lines = ["| studio | n train | arm | " + " | ".join(REPORTED) + " | seeds |", "|---" * (len(REPORTED) + 4) + "|"]
    studios = sorted({s for (_, s) in table if s != "joiner"})
    for studio in studios:
        for arm in ARMS:
            cell = table.get((arm, studio))
            if cell:
                lines.append(f"| {studio} | {cell['n_train'][0]} | {arm} | " + " | ".join(
                    f"{statistics.fmean(cell[m]):.3f} ± {statistics.pstdev(cell[m]):.3f}" for m in REPORTED
                    if m in cell) + f" | {len(cell[REPORTED[0]])} |")
    lines.append("")
    for studio in studios:
        local = table.get(("local", studio))
        for arm in ARMS[1:]:
            cell = table.get((arm, studio))
            if not (local and cell):
                continue
            gain = {m: 1 - statistics.fmean(cell[m]) / statistics.fmean(local[m])
                    for m in ("FD-Style-reject", "FD-Style", "FD-EffNetLite0")}
            acc = 100 * (statistics.fmean(cell["style_acc"]) - statistics.fmean(local["style_acc"]))
            size = "small" if local["n_train"][0] <= SMALL else "large"
            lines.append(f"- {studio} ({size}, {local['n_train'][0]} train pairs), {arm} vs local: "
                         + ", ".join(f"{m} {g:+.1%}" for m, g in gain.items()) + f", style accuracy {acc:+.0f} points")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="demo studios (fedgai data demo)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--large", type=int, default=LARGE, help="large studios that federate beside every small one")
    parser.add_argument("--demo-seed", type=int, default=15, help="the --seed the demo studios were made with")
    parser.add_argument("--arms", nargs="+", choices=("federated", "local"), default=["federated", "local"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="sets", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every arm, as `fedgai --set` reads it (e.g. fed.rounds=5)")
    parser.add_argument("--report", action="store_true", help="only print the table of what is saved")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        folders, joiner = choose_studios(args.data, args.large)
        print(f"federating {', '.join(f.name for f in folders)}; late joiner {joiner.name}", flush=True)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        build_prior(base_config(args.sets), args.out)
        # once, before any job: the evaluation pairs every job reads, and the style classifier every job scores with
        style = Scorer([*folders, joiner], base_config(args.sets).model.image_size, args.demo_seed,
                       args.out / "evaluation").style
        jobs = [(arm, seed, folders, joiner, args.out, args.sets, args.demo_seed, style)
                for seed in args.seeds for arm in args.arms]
        run_spawned(run_job, jobs, args.workers)
    write_table(args.out, report(args.out))


if __name__ == "__main__":
    main()
