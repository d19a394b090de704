"""Issue 27 §0, the experiment that could kill the style-conditioned federation before it is built.

Does one renderer that follows a style code, trained on the POOLED pairs of 4 demo studios (an upper bound for any
federation of them), draw a small studio's style better than that studio's STRONG local twin? One studio (the
target) is subsampled to n training pairs; every arm starts from the same public prior (a style-conditioned
renderer trained on hundreds of procedural public line styles, data/public_styles.py, no studio's data):

- untrained: a randomly initialised renderer (grey noise): the metric's floor check. If it scores better than the
          prior on FD-Style, the style classifier cannot tell noise from the target's style and FD-Style says nothing
          for that target (so it is for studio-03-hatching: noise scores FD-Style 0.001 and style accuracy 1.0);
- prior:  the prior alone, drawing with the statistics of the target's n sketches (nothing trained);
- local:  the strong local twin: the prior fine-tuned on the target's n pairs, with DiffAugment (kornia: colour,
          translation, cutout) on the critic's inputs, the critic's lower layers frozen (FreezeD), best step by val;
- local_plain: the local twin without DiffAugment and FreezeD (is the strong recipe stronger?);
- pooled: the prior fine-tuned on the target's n pairs plus the other 3 studios' training pairs, style-mixed
          batches, the same augmentation, best step by val;
- loso:   leave-one-studio-out: the prior fine-tuned on the other 3 studios only, drawing with the statistics of
          the target's n sketches (its best step by val, per n).
Every arm is scored on the target's held-out test pairs with the product's metrics (FD-Style, FD-EffNetLite0,
style accuracy from a classifier fitted on the 4 studios' real training sketches, SSIM, ink IoU).

    fedgai data demo --studios 8 --seed 15 --size 128 --out runs/style-data
    python benchmarks/style_pooling.py --data runs/style-data --out runs/style-pool --workers 2
    python benchmarks/style_pooling.py --data runs/style-data --out runs/style-pool --report   # tables only

The issue's kill rule: pooled must beat the strong local twin by >= 10 % on FD-Style at n = 10.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from _pool import run_spawned, write_table
from PIL import Image

SIZE = 64
NS = (5, 10, 20, 40)
ARMS = ("untrained", "prior", "local", "local_plain", "pooled", "loso")
PER_N = ("local", "local_plain", "pooled")  # the arms trained once per n
TARGET = "studio-01-fine"
STUDIOS = 4
METRICS = ("FD-Style", "FD-EffNetLite0", "style_acc", "SSIM", "ink_IoU")
KILL_N, KILL_GAIN = 10, 0.10


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch: int = 16
    lr: float = 2e-4
    l1: float = 10.0
    stats: float = 1.0
    adv: float = 1.0
    augment: bool = True
    freeze_d: int = 0  # FreezeD: the critic's first convolutions kept at the prior's values
    eval_every: int = 50


PRIOR = Recipe(steps=1200, eval_every=0)
FINETUNE = Recipe(steps=300)


@dataclass
class StyleSet:
    """The pairs of one style, with the frozen encoder's view of each photo and the set's AdaIN_SD statistics."""

    name: str
    photos: torch.Tensor
    sketches: torch.Tensor
    taps: list[torch.Tensor]
    stats: list[tuple[torch.Tensor, torch.Tensor]]

    def subset(self, index: np.ndarray, encoder) -> StyleSet:
        sketches = self.sketches[index]
        return StyleSet(self.name, self.photos[index], sketches, [t[index] for t in self.taps],
                        set_statistics(encoder, sketches))


@torch.no_grad()
def encode(encoder, images: torch.Tensor, batch: int = 64) -> list[torch.Tensor]:
    chunks = [encoder(x) for x in images.split(batch)]
    return [torch.cat(taps) for taps in zip(*chunks, strict=True)]


def set_statistics(encoder, sketches: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """AdaIN_SD's statistics of the set: pooled channel (mean, std) of each tap over every sketch."""
    from fedgai.models import AdaINSD

    adain = AdaINSD(encoder.channels)
    adain.fit([encode(encoder, sketches)])
    return adain.stats()


def style_set(name: str, photos: torch.Tensor, sketches: torch.Tensor, encoder) -> StyleSet:
    return StyleSet(name, photos, sketches, encode(encoder, photos), set_statistics(encoder, sketches))


# ----------------------------------------------------------------------------------------------- data
def public_sets(encoder, styles: int, per_style: int) -> list[StyleSet]:
    """``styles`` public line styles, each drawing its own ``per_style`` public garments (rendered at 2x, reduced)."""
    from fedgai.data.public_styles import public_photo, public_style, render_line_style
    from fedgai.prior import PRIOR_STREAM

    sets = []
    for s in range(styles):
        style, rng = public_style(s), np.random.default_rng(s)
        photos, sketches = [], []
        for j in range(per_style):
            photo = public_photo(PRIOR_STREAM, 10_000 + s * per_style + j, 2 * SIZE)
            sketch = Image.fromarray(render_line_style(np.asarray(photo), style, rng), "L")
            photos.append(to_tensor(photo.resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
            sketches.append(to_tensor(sketch.resize((SIZE, SIZE), Image.Resampling.LANCZOS)))
        sets.append(style_set(f"public-{s}", torch.stack(photos), torch.stack(sketches), encoder))
    return sets


def to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())


def studio_sides(folder: Path, encoder) -> dict[str, StyleSet]:
    """The studio's product split (seed 0, 10 % val, 20 % test) as train/val/test style sets."""
    from fedgai.data import SketchPairDataset, load_studio
    from fedgai.data.split import split_studio

    studio = load_studio(folder)
    split = split_studio(studio, 0, 0.1, 0.2)
    sides = {}
    for side in ("train", "val", "test"):
        data = SketchPairDataset(studio, SIZE, stems=getattr(split, side))
        photos, sketches = (torch.stack(t) for t in zip(*(data[i] for i in range(len(data))), strict=True))
        sides[side] = style_set(folder.name, photos, sketches, encoder)
    return sides


# ----------------------------------------------------------------------------------------------- training
def build_networks(encoder) -> tuple[torch.nn.Module, torch.nn.Module]:
    from fedgai.models import ProjectionCritic, StyledSketchGenerator

    gen = StyledSketchGenerator(encoder.channels, encoder.strides[0], width=64)
    return gen, ProjectionCritic(32, 2 * sum(encoder.channels))


def batch_of(sets: list[StyleSet], rng: np.random.Generator, size: int):
    """A style-mixed batch: each row's style uniform over the sets, then a pair of that style."""
    picks = [(s, int(rng.integers(len(sets[s].photos)))) for s in rng.integers(len(sets), size=size)]
    photo = torch.stack([sets[s].photos[i] for s, i in picks])
    sketch = torch.stack([sets[s].sketches[i] for s, i in picks])
    taps = [torch.stack([sets[s].taps[t][i] for s, i in picks]) for t in range(len(sets[0].taps))]
    stats = [(torch.cat([sets[s].stats[t][0] for s, _ in picks]), torch.cat([sets[s].stats[t][1] for s, _ in picks]))
             for t in range(len(sets[0].taps))]
    return photo, sketch, taps, stats


def train(gen, critic, encoder, sets: list[StyleSet], recipe: Recipe, seed: int,
          criteria: dict[str, Callable[[torch.nn.Module], float]]) -> dict[str, dict]:
    """The GAN loop on style-mixed pooled batches: hinge D step, then G step (L1 + statistics consistency +
    adversarial, the product's RendererObjective). Returns, per criterion, the generator state with the lowest value
    over the evaluations (every ``eval_every`` steps), or the final state under "final"."""
    from fedgai.config import LossConfig
    from fedgai.objective import Fakes, GanInputs, PairBatch, RealFeatures, RendererObjective

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt_g = torch.optim.Adam(gen.parameters(), recipe.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(critic.freeze(recipe.freeze_d), recipe.lr, betas=(0.5, 0.999))
    # The product's losses (objective.RendererObjective, augment.diff_augment); only the pooled batches are this
    # benchmark's.
    weights = LossConfig(pixel_l1=recipe.l1, statistics=recipe.stats, adversarial=recipe.adv)
    objective = RendererObjective(weights, encoder, critic, recipe.augment)
    best = {name: (float("inf"), None) for name in criteria}
    for step in range(1, recipe.steps + 1):
        gen.train()
        photo, sketch, taps, stats = batch_of(sets, rng, recipe.batch)
        fake = gen(taps, stats)
        real = RealFeatures(taps, torch.empty(0), [])  # the renderer's terms read no real-sketch features
        inputs = GanInputs(PairBatch(photo, sketch, real), Fakes.of(fake, encoder(fake)), None, stats)
        d_loss, _ = objective.discriminator_loss(inputs.detached())
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = objective.weighted(objective.generator_loss_terms(inputs))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        if recipe.eval_every and step % recipe.eval_every == 0:
            for name, criterion in criteria.items():
                value = criterion(gen)
                if value < best[name][0]:
                    best[name] = (value, copy.deepcopy(gen.state_dict()))
    out = {name: state for name, (_, state) in best.items()}
    out["final"] = copy.deepcopy(gen.state_dict())
    return out


@torch.no_grad()
def draw(gen, target: StyleSet, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    gen.eval()
    return torch.cat([gen([t[i: i + 32] for t in target.taps], stats) for i in range(0, len(target.photos), 32)])


# ----------------------------------------------------------------------------------------------- one job
class Scorer:
    """The product's metrics for the target studio; the style classifier fitted on the 4 studios' real training
    sketches (the evaluator's knowledge, the same for every arm)."""

    def __init__(self, studios: dict[str, dict[str, StyleSet]], target: str):
        from fedgai.evaluation.metrics import MetricSuite
        from fedgai.evaluation.style import StyleClassifier

        self.suite = MetricSuite()
        feats = {s: self.suite.features(sides["train"].sketches) for s, sides in studios.items()}
        self.style = StyleClassifier().fit(torch.cat(list(feats.values())),
                                           [s for s in feats for _ in range(len(feats[s]))])
        self.target = target
        self.real = {side: self.suite.features(studios[target][side].sketches) for side in ("val", "test")}
        self.sets = studios[target]

    def val_fd_style(self, fakes: torch.Tensor) -> float:
        from fedgai.evaluation.metrics import style_frechet_distance

        return style_frechet_distance(self.style, self.real["val"], self.suite.features(fakes))

    def test(self, fakes: torch.Tensor) -> dict[str, float]:
        test = self.sets["test"]
        scores = self.suite.evaluate(test.photos, fakes, test.sketches, self.style, self.target,
                                     real_features=self.real["test"])
        return {m: float(scores[m]) for m in METRICS}


def load_all(data: Path, encoder) -> dict[str, dict[str, StyleSet]]:
    folders = sorted(p for p in data.iterdir() if (p / "photos").is_dir())[:STUDIOS]
    return {f.name: studio_sides(f, encoder) for f in folders}


def target_subset(studios, target: str, encoder, n: int, seed: int) -> StyleSet:
    train = studios[target]["train"]
    index = np.sort(np.random.default_rng([seed, n]).choice(len(train.photos), n, replace=False))
    return train.subset(index, encoder)


def run_job(job: tuple) -> str:
    """One (arm, seed, ns) job, scores written to OUT/ARM-seedS-nN.json (loso: one training serves every n)."""
    arm, seed, ns, target, data, out, threads, finetune = job
    path = out / f"{arm}-seed{seed}-n{'-'.join(map(str, ns))}.json"
    if path.is_file():
        return f"{path.name}: done before"
    torch.set_num_threads(threads)
    started = time.perf_counter()
    from fedgai.config import ModelConfig
    from fedgai.models import build_encoder

    encoder = build_encoder(ModelConfig(encoder="efficientnet-lite0"))
    studios = load_all(data, encoder)
    scorer = Scorer(studios, target)
    prior = torch.load(out / "prior.pt", weights_only=True)
    subsets = {n: target_subset(studios, target, encoder, n, seed) for n in ns}
    val = studios[target]["val"]
    others = [sides["train"] for name, sides in studios.items() if name != target]
    results, grids = {}, {}

    def fresh() -> tuple[torch.nn.Module, torch.nn.Module]:
        gen, critic = build_networks(encoder)
        if arm == "untrained":
            return gen, critic
        gen.load_state_dict(prior["generator"])
        critic.load_state_dict(prior["critic"])
        return gen, critic

    def criterion(stats):
        return lambda gen: scorer.val_fd_style(draw(gen, val, stats))

    if arm == "loso":
        gen, critic = fresh()
        states = train(gen, critic, encoder, others, finetune, seed,
                       {str(n): criterion(subsets[n].stats) for n in ns})
    for n in ns:
        gen, critic = fresh()
        if arm == "local":
            gen.load_state_dict(train(gen, critic, encoder, [subsets[n]], replace(finetune, freeze_d=2), seed,
                                      {"val": criterion(subsets[n].stats)})["val"])
        elif arm == "local_plain":
            gen.load_state_dict(train(gen, critic, encoder, [subsets[n]], replace(finetune, augment=False), seed,
                                      {"val": criterion(subsets[n].stats)})["val"])
        elif arm == "pooled":
            gen.load_state_dict(train(gen, critic, encoder, [*others, subsets[n]], finetune, seed,
                                      {"val": criterion(subsets[n].stats)})["val"])
        elif arm == "loso":
            gen.load_state_dict(states[str(n)])
        fakes = draw(gen, studios[target]["test"], subsets[n].stats)
        results[str(n)] = scorer.test(fakes)
        grids[n] = fakes[:8]
    save_grid(path.with_suffix(".png"), studios[target]["test"], grids)
    path.write_text(json.dumps({"arm": arm, "seed": seed, "target": target, "scores": results,
                                "recipe": finetune.__dict__,
                                "seconds": time.perf_counter() - started}, indent=2) + "\n")
    return f"{path.name}: {time.perf_counter() - started:.0f} s"


def save_grid(path: Path, test: StyleSet, grids: dict[int, torch.Tensor]) -> None:
    """Rows: test photos (grey), real sketches, then the arm's sketches at each n."""
    rows = [test.photos[:8].mean(1, keepdim=True), test.sketches[:8], *grids.values()]
    tiles = torch.cat([torch.cat(list(r), 2) for r in rows], 1)[0]
    Image.fromarray(((tiles.clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), "L").save(path)


def build_prior(out: Path, styles: int, per_style: int, recipe: Recipe) -> None:
    """The public prior: the style-conditioned renderer and critic trained on public styles only."""
    from fedgai.config import ModelConfig
    from fedgai.models import build_encoder

    if (out / "prior.pt").is_file():
        return
    started = time.perf_counter()
    encoder = build_encoder(ModelConfig(encoder="efficientnet-lite0"))
    sets = public_sets(encoder, styles, per_style)
    gen, critic = build_networks(encoder)
    state = train(gen, critic, encoder, sets, recipe, 0, {})["final"]
    torch.save({"generator": state, "critic": critic.state_dict(), "styles": styles, "per_style": per_style,
                "recipe": recipe.__dict__, "seconds": time.perf_counter() - started}, out / "prior.pt")
    print(f"prior: {styles} public styles x {per_style} garments, {time.perf_counter() - started:.0f} s", flush=True)


# ----------------------------------------------------------------------------------------------- report
def report(out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*-seed*.json"))]
    table = {}
    for run in runs:
        for n, scores in run["scores"].items():
            for m, v in scores.items():
                table.setdefault((run["arm"], int(n)), {}).setdefault(m, []).append(v)
    lines = [f"| n | arm | {' | '.join(METRICS)} | seeds |", "|---" * (len(METRICS) + 3) + "|"]
    for n in NS:
        for arm in ARMS:
            cell = table.get((arm, n))
            if cell:
                lines.append(f"| {n} | {arm} | " + " | ".join(
                    f"{statistics.fmean(cell[m]):.3f} ± {statistics.pstdev(cell[m]):.3f}" for m in METRICS)
                    + f" | {len(cell[METRICS[0]])} |")
    lines.append("")
    for n in NS:
        if ("local", n) not in table:
            continue
        local = statistics.fmean(table[("local", n)]["FD-Style"])
        gains = [f"{arm} {1 - statistics.fmean(table[(arm, n)]['FD-Style']) / local:+.1%}"
                 for arm in ARMS if arm != "local" and (arm, n) in table]
        lines.append(f"- n = {n}: FD-Style gain over the strong local twin: {', '.join(gains)}")
    return "\n".join(lines)


def plan(arms: list[str], seeds: list[int], ns: tuple[int, ...] = NS) -> list[tuple[str, int, tuple[int, ...]]]:
    """(arm, seed, ns) jobs, the kill rule's n first. The arms that train per n (local, pooled) get one job per n;
    the others draw every n from one network (loso: one training; untrained, prior: none)."""
    def per_n(ns: list[int]) -> list[tuple[str, int, tuple[int, ...]]]:
        return [(arm, seed, (n,)) for n in ns for seed in seeds for arm in arms if arm in PER_N]

    once = [(arm, seed, ns) for arm in arms if arm not in PER_N for seed in seeds]
    return per_n([n for n in ns if n == KILL_N]) + once + per_n([n for n in ns if n != KILL_N])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="demo studios (fedgai data demo --seed 15)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--target", default=TARGET, help="the studio subsampled to n pairs (a folder name)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS), help="training pairs of the target")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prior-styles", type=int, default=240)
    parser.add_argument("--prior-per-style", type=int, default=6)
    parser.add_argument("--steps", type=int, default=FINETUNE.steps, help="fine-tuning steps per run")
    parser.add_argument("--prior-steps", type=int, default=PRIOR.steps)
    parser.add_argument("--report", action="store_true", help="only print the table of what is saved")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        build_prior(args.out, args.prior_styles, args.prior_per_style, replace(PRIOR, steps=args.prior_steps))
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        finetune = replace(FINETUNE, steps=args.steps, eval_every=min(FINETUNE.eval_every, args.steps))
        jobs = [(arm, seed, ns, args.target, args.data, args.out, threads, finetune)
                for arm, seed, ns in plan(args.arms, args.seeds, tuple(args.ns))]
        run_spawned(run_job, jobs, args.workers)
    write_table(args.out, report(args.out))


if __name__ == "__main__":
    main()
