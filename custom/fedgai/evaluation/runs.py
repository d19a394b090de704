"""Finding what a finished run left behind: its studios' checkpoints and splits, training logs, round
summaries, and each studio's data folder.

A *studio run folder* holds checkpoints/last.pt and split.json. It is the folder itself for `fedgai
train-local`; WORKSPACE/studios/<site>/ for `fedgai simulate`; somewhere inside a POC or provisioned job's
downloaded result. Round summaries are the server's round-NNN.json files, wherever they are below the run.
A checkpoint file inside a studio run folder's checkpoints/ (e.g. the compressed generator `fedgai compress`
wrote there) is a run of its own: that generator, scored on its run folder's test pairs.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedgai.data.split import StudioSplit
from fedgai.layout import CHECKPOINT, CHECKPOINTS, EPOCH_RECORDS, ROUND_RECORDS, SPLIT_FILE, WORKSPACE_DATA
from fedgai.modes import mode as fed_mode
from fedgai.round_summaries import round_summaries_below


class RunLayoutError(ValueError):
    """A folder is not a fedgai run, or a studio's data cannot be found."""


@dataclass(frozen=True)
class StudioRun:
    """One studio's outputs in a run: where they are, what it is, and how its pairs were split."""

    folder: Path
    studio: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    split: StudioSplit
    checkpoint: Path

    @property
    def recorded_data(self) -> Path | None:
        """The studio folder the trainer recorded (absolute), if the run is recent enough to have one."""
        recorded = self.metadata.get("studio_dir")
        return Path(recorded) if isinstance(recorded, str) and recorded else None

    def history(self) -> list[dict[str, Any]]:
        """Per-round (metrics.jsonl, federated) or per-epoch (history.jsonl, train-local) training records."""
        for name in (ROUND_RECORDS, EPOCH_RECORDS):
            path = self.folder / name
            if path.is_file():
                return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return []


@dataclass
class Run:
    """A run to evaluate: a label for the report, its studios and (federated runs) its round summaries.
    Several folders make one run when they are one mode's runs of different studios (train-local per studio)."""

    roots: list[Path]
    label: str
    mode: str
    studios: list[StudioRun]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def default_data(self) -> list[Path]:
        """WORKSPACE/data, where `fedgai simulate` generates its demo studios."""
        return [root / WORKSPACE_DATA for root in self.roots if (root / WORKSPACE_DATA).is_dir()]

    def studio(self, name: str) -> StudioRun | None:
        return next((s for s in self.studios if s.studio == name), None)


def find_studio_folders(root: Path) -> list[Path]:
    """Studio run folders at or below `root` (a checkpoint with a split.json beside its checkpoints/)."""
    if (root / CHECKPOINT).is_file():
        return [root]
    return sorted(p.parent.parent for p in root.rglob(str(CHECKPOINT)) if (p.parent.parent / SPLIT_FILE).is_file())


def load_studio_run(folder: Path, checkpoint: Path | None = None) -> StudioRun:
    """Read a studio run folder's checkpoint header (checkpoints/last.pt, or `checkpoint`) and split; errors
    say which file is wrong."""
    checkpoint = folder / CHECKPOINT if checkpoint is None else checkpoint
    if not (folder / SPLIT_FILE).is_file():
        raise RunLayoutError(f"{folder} has a checkpoint but no {SPLIT_FILE}: it was trained without a held-out "
                             "split, so there are no test pairs to evaluate on")
    try:  # weights_only: a checkpoint is data; unpickling arbitrary objects would run the code they name
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise RunLayoutError(f"{checkpoint} is not a fedgai studio checkpoint "
                             f"({str(err).splitlines()[0]})") from err
    if not isinstance(state, dict) or "config" not in state or "metadata" not in state:
        raise RunLayoutError(f"{checkpoint} is not a fedgai studio checkpoint (no config/metadata)")
    split = StudioSplit.load(folder / SPLIT_FILE)
    studio = state["metadata"].get("studio", split.studio)
    if split.studio != studio:
        raise RunLayoutError(f"{folder / SPLIT_FILE} is for studio {split.studio!r}, the checkpoint for {studio!r}")
    return StudioRun(folder=folder, studio=studio, config=state["config"], metadata=state["metadata"], split=split,
                     checkpoint=checkpoint)


def run_mode(studios: list[StudioRun]) -> str:
    """How the run was trained: local-only (train-local, or the simulator's local baseline) or the federated
    mode, with DP/HE where used. Read from the first studio's checkpoint config."""
    first = studios[0]
    cfg = first.config
    name = cfg["fed"]["mode"]
    mode = "local-only" if (first.folder / EPOCH_RECORDS).is_file() or not fed_mode(name).federated else name
    privacy = cfg.get("privacy", {})
    if privacy.get("dp", "none") != "none":
        mode += f"+dp-{privacy['dp']}"
    return mode + "+he" if privacy.get("he") else mode


def load_checkpoint_run(checkpoint: Path, label: str | None = None) -> Run:
    """One generator checkpoint in a studio run folder's checkpoints/ (e.g. compressed.pt): scored on that run
    folder's test pairs, labelled by its training mode and, for `fedgai compress` output, "compressed"."""
    folder = checkpoint.parent.parent
    if checkpoint.parent.name != CHECKPOINTS or not (folder / SPLIT_FILE).is_file():
        raise RunLayoutError(f"{checkpoint} is not inside a studio run folder's {CHECKPOINTS}/ with a {SPLIT_FILE} "
                             "beside it, so there are no test pairs to score it on; pass a run folder")
    studio_run = load_studio_run(folder, checkpoint)
    mode = run_mode([studio_run]) + (" compressed" if studio_run.metadata.get("compressed") else "")
    return Run(roots=[checkpoint], label=label or mode, mode=mode, studios=[studio_run])


def load_run(root: Path, label: str | None = None) -> Run:
    """A run folder of any kind (train-local, simulator workspace, downloaded job result), or one checkpoint
    file inside a studio run folder."""
    root = Path(root)
    if root.is_file():
        return load_checkpoint_run(root, label)
    if not root.is_dir():
        raise RunLayoutError(f"run folder {root} does not exist")
    folders = find_studio_folders(root)
    if not folders:
        raise RunLayoutError(f"{root} holds no studio run (no checkpoints/last.pt with a {SPLIT_FILE} beside it); "
                             "pass a train-local run folder, a simulator workspace or a downloaded job result")
    studios = [load_studio_run(f) for f in folders]
    names = [s.studio for s in studios]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RunLayoutError(f"{root} holds several runs of studio(s) {', '.join(duplicates)}; "
                             "evaluate each run folder separately")
    mode = run_mode(studios)
    return Run(roots=[root], label=label or mode, mode=mode, studios=studios, rounds=round_summaries_below(root))


def mergeable(a: Run, b: Run) -> bool:
    """One mode's runs of different studios, at most one with round summaries (their site names would clash)."""
    return (a.label == b.label and not {s.studio for s in a.studios} & {s.studio for s in b.studios}
            and not (a.rounds and b.rounds))


def merge_runs(runs: list[Run]) -> list[Run]:
    """Runs with the same label become one (e.g. one train-local folder per studio: "local-only"); labels
    still shared after that get the folder name appended, so every column of the report is one run."""
    merged: list[Run] = []
    for run in runs:
        target = next((m for m in merged if mergeable(m, run)), None)
        if target is None:
            merged.append(run)
        else:
            target.roots += run.roots
            target.studios += run.studios
            target.rounds += run.rounds
    for run in merged:
        if sum(r.label == run.label for r in merged) > 1:
            run.label = f"{run.label} ({', '.join(root.name for root in run.roots)})"
    return merged


def studio_folder_name(folder: Path) -> str:
    """A studio folder's name as fedgai.data.load_studio reports it: studio.json's "name", else the folder's."""
    meta = folder / "studio.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text(encoding="utf-8")).get("name")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return folder.resolve().name


def is_studio_folder(folder: Path) -> bool:
    return (folder / "photos").is_dir() and (folder / "sketches").is_dir()


def find_studio_data(studio: str, candidates: list[Path], recorded: Path | None = None) -> Path:
    """The studio folder the run recorded when it is still there and still that studio, else the folder of
    `studio` in the first candidate folder of studio folders that has it."""
    if recorded is not None and is_studio_folder(recorded) and studio_folder_name(recorded) == studio:
        return recorded
    for data in candidates:
        for folder in sorted(p for p in data.iterdir() if is_studio_folder(p)):
            if studio_folder_name(folder) == studio:
                return folder
    searched = [*([f"{recorded} (recorded by the run: moved, removed or another studio now)"] if recorded else []),
                *map(str, candidates)]
    where = ", ".join(searched) or "nowhere (no --data given and the run has no data/ folder)"
    raise RunLayoutError(f"no data folder for studio {studio!r}: looked in {where}. Pass --data DIR, the "
                         f"folder holding the studio folders (matched by studio.json name or folder name)")
