"""`fedgai evaluate`: every studio of every given run, on its held-out test pairs, side by side.

For each studio: regenerate its test sketches with the run's own generator (checkpoints/last.pt, its AdaIN_SD
statistics included), score them against the real sketches (metrics.py) and against a studio-style classifier
fitted on the real training sketches of all evaluated studios (style.py), and read what the run cost in
traffic and privacy from its round summaries and logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from fedgai.config import EvalConfig
from fedgai.data import SketchPairDataset, Studio, load_studio
from fedgai.device import resolve_device
from fedgai.edge.sketcher import Sketcher
from fedgai.evaluation.metrics import Metrics, MetricSuite
from fedgai.evaluation.runs import Run, StudioRun, find_studio_data, load_run, merge_runs
from fedgai.evaluation.style import StyleClassifier


@dataclass
class StudioResult:
    """One row of the report: a run's studio, its metrics and what it cost."""

    run: str
    studio: str
    site: str
    size_group: str
    n_pairs: int
    metrics: Metrics
    upload_bytes: int
    download_bytes: int
    dp_epsilon: float | None


@dataclass
class Gallery:
    """Test pairs of one studio with each run's sketch of the same photo."""

    stems: list[str]
    photos: torch.Tensor
    reals: torch.Tensor
    fakes: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Evaluation:
    runs: list[Run]
    results: list[StudioResult]
    galleries: dict[str, Gallery]
    notes: dict[str, str]


def resolve_data(runs: Sequence[Run], data: Path | None) -> dict[str, Studio]:
    """Every evaluated studio's validated data folder: from --data when given, else the studio folder the run
    recorded (metadata "studio_dir"), else the runs' own data/ folders (simulator workspaces)."""
    if data is not None and not data.is_dir():
        raise FileNotFoundError(f"--data {data} is not a folder")
    candidates = [data] if data is not None else [d for r in runs for d in r.default_data]
    studio_runs = {s.studio: s for r in runs for s in r.studios}
    return {name: load_studio(find_studio_data(name, candidates, None if data else s.recorded_data))
            for name, s in studio_runs.items()}


def traffic(run: Run, site: str) -> tuple[int, int, float | None]:
    """(bytes the studio uploaded, bytes it downloaded, latest DP epsilon) from the round summaries."""
    rounds = [r for r in run.rounds if site in r.get("contributions", {})]
    upload = sum(int(r["contributions"][site].get("bytes", 0)) for r in rounds)
    download = sum(int(r.get("bytes_sent_per_site", 0)) for r in rounds)
    epsilons = [r["contributions"][site].get("dp_epsilon") for r in rounds]
    return upload, download, next((e for e in reversed(epsilons) if e is not None), None)


def latest_epsilon(studio_run: StudioRun) -> float | None:
    """Record-level DP epsilon as logged by the studio itself (train-local runs have no round summaries)."""
    values = [h["dp_epsilon"] for h in studio_run.history() if h.get("dp_epsilon") is not None]
    return float(values[-1]) if values else None


def held_out_pairs(studio: Studio, studio_run: StudioRun, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(photos, real sketches) of the run's test split at the generator's resolution."""
    dataset = SketchPairDataset(studio, image_size, stems=studio_run.split.test)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])


@torch.no_grad()
def generate(sketcher: Sketcher, photos: torch.Tensor, batch: int) -> torch.Tensor:
    """The run's generated sketches for `photos` (already at its resolution)."""
    return torch.cat([sketcher(chunk) for chunk in photos.split(batch)])


def generator_size(studio_run: StudioRun) -> int:
    return int(studio_run.config["model"]["image_size"])


def fit_style(suite: MetricSuite, studios: dict[str, Studio], runs: Sequence[Run], image_size: int,
              progress: bool) -> StyleClassifier | None:
    """The studio-style classifier at one resolution, with its reject-aware regression (FD-Style-reject); None with
    fewer than two studios."""
    if len(studios) < 2:
        return None
    sketches, labels = [], []
    for name, studio in tqdm(studios.items(), desc=f"style classifier ({image_size}px)", disable=not progress):
        split = next(r.studio(name).split for r in runs if r.studio(name) is not None)
        stems = split.train[: suite.cfg.style_pairs_per_studio]
        dataset = SketchPairDataset(studio, image_size, stems=stems)
        sketches.append(torch.stack([dataset[i][1] for i in range(len(dataset))]))
        labels += [name] * len(dataset)
    return suite.style_classifier(torch.cat(sketches), labels)


def evaluate_runs(paths: Sequence[Path], data: Path | None = None, labels: Sequence[str] = (),
                  cfg: EvalConfig | None = None, device: str = "cpu", progress: bool = True) -> Evaluation:
    """Evaluate each run folder; `labels` name the runs in order (default: their training mode).
    device: "cpu", "cuda[:N]" or "auto" (the GPU when there is one)."""
    if labels and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} --label value(s) for {len(paths)} run folder(s); give one per run")
    runs = merge_runs([load_run(p, labels[i] if labels else None) for i, p in enumerate(paths)])
    studios = resolve_data(runs, data)
    device = str(resolve_device(device))
    suite = MetricSuite(cfg, device)
    if suite.cfg.num_threads:
        torch.set_num_threads(suite.cfg.num_threads)
    sizes = sorted({generator_size(s) for r in runs for s in r.studios})
    styles = {size: fit_style(suite, studios, runs, size, progress) for size in sizes}
    results, galleries = [], {}
    jobs = [(run, s) for run in runs for s in run.studios]
    for run, studio_run in tqdm(jobs, desc="evaluating studios", disable=not progress):
        studio = studios[studio_run.studio]
        photos, reals = held_out_pairs(studio, studio_run, generator_size(studio_run))
        sketcher = Sketcher(studio_run.checkpoint, device=device)
        fakes = generate(sketcher, photos, suite.cfg.batch_size)
        metrics = suite.evaluate(photos, fakes, reals, styles[sketcher.image_size], studio_run.studio,
                                 encoder=sketcher.encoder)
        results.append(studio_result(run, studio_run, studio, metrics, suite.cfg))
        add_to_gallery(galleries, run.label, studio_run, photos, reals, fakes, suite.cfg.gallery_rows)
    notes = {"CLIP": suite.clip_status, "Inception FID/KID": suite.inception_status,
             "style classifier": "trained on the real training sketches of: " + ", ".join(studios)
             if len(studios) > 1 else "unavailable: needs at least two studios"}
    return Evaluation(runs=runs, results=results, galleries=galleries, notes=notes)


def studio_result(run: Run, studio_run: StudioRun, studio: Studio, metrics: Metrics, cfg: EvalConfig
                  ) -> StudioResult:
    site = studio_run.folder.name
    upload, download, epsilon = traffic(run, site)
    n_pairs = len(studio.pairs)
    return StudioResult(
        run=run.label, studio=studio_run.studio, site=site, n_pairs=n_pairs,
        size_group="small" if n_pairs <= cfg.small_studio_pairs else "large", metrics=metrics,
        upload_bytes=upload, download_bytes=download,
        dp_epsilon=epsilon if epsilon is not None else latest_epsilon(studio_run),
    )


def add_to_gallery(galleries: dict[str, Gallery], label: str, studio_run: StudioRun, photos: torch.Tensor,
                   reals: torch.Tensor, fakes: torch.Tensor, rows: int) -> None:
    """The first runs' test pairs fix a studio's gallery; later runs add their sketch where they share a stem."""
    stems = sorted(studio_run.split.test)  # the order SketchPairDataset yields them in (studio pairs are sorted)
    gallery = galleries.setdefault(studio_run.studio, Gallery(stems[:rows], photos[:rows], reals[:rows]))
    index = {stem: i for i, stem in enumerate(stems)}
    if all(stem in index for stem in gallery.stems):
        gallery.fakes[label] = fakes[[index[stem] for stem in gallery.stems]]
