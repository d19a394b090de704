"""A studio's run folder (its file names: layout.py): the one writer of its outputs, and the rules for the
folders the CLI writes: never inside a studio, never silently over an earlier run.

`fedgai train-local` (one record per epoch, history.jsonl) and a federated studio (one per round,
metrics.jsonl) write through the same ``RunFolder``.

A rerun either continues (``--resume``: same studio, same model settings, a checkpoint to continue from)
or starts over (``--overwrite``: the earlier run's files are removed first); anything else is refused, so
history.jsonl, metrics.jsonl and TensorBoard steps never interleave two runs.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedgai.config import FedgaiConfig
from fedgai.layout import (
    CHECKPOINT,
    CHECKPOINTS,
    CONFIG,
    DP_LEDGER,
    EPOCH_RECORDS,
    GRIDS,
    METADATA,
    RUN_RECORD,
    SPLIT_FILE,
    TENSORBOARD,
    WORKSPACE_NVFLARE,
    WORKSPACE_STATE,
    WORKSPACE_STUDIOS,
)

# What `fedgai train-local` writes into a run folder. The DP ledger is not listed: privacy spent on a
# studio's data is not undone by starting over.
TRAIN_FILES = (CHECKPOINTS, GRIDS, TENSORBOARD, EPOCH_RECORDS, METADATA, CONFIG, RUN_RECORD, SPLIT_FILE)
# What `fedgai simulate` writes into a workspace. Kept by --overwrite: data/ (generated demo studios, reused) and
# nvflare/local/ (site configuration the user put there, e.g. a studio privacy policy: the simulator copies it to
# every site).
SIMULATE_FILES = (WORKSPACE_STUDIOS, WORKSPACE_STATE, WORKSPACE_NVFLARE)
SIMULATOR_CONFIG = "local"


class RunFolderError(ValueError):
    """An output folder that cannot be written as asked."""


class RunFolder:
    """The files of one studio run; every write is whole (a crash never leaves a torn file)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def dp_ledger(self) -> Path:
        return self.root / DP_LEDGER

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    def grid(self, label: str) -> Path:
        """``grids/<label>.png`` (label: ``epoch_NNN`` for train-local, ``round-NNN`` for a federated studio)."""
        return self.root / GRIDS / f"{label}.png"

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.root / name
        _replace(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
        return path

    def append_record(self, name: str, record: Mapping[str, Any]) -> None:
        """One JSON line in ``name`` (EPOCH_RECORDS or ROUND_RECORDS)."""
        with (self.root / name).open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def save_checkpoint(self, state: Mapping[str, Any], path: Path | None = None) -> Path:
        import torch

        path = path or self.checkpoint
        _replace(path, lambda tmp: torch.save(dict(state), tmp))
        return path


def _replace(path: Path, write) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path`` (atomic on one file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    write(tmp)
    tmp.replace(path)


def refuse_inside_studio(out: Path, studio: Path) -> None:
    """A run folder inside (or equal to) the studio folder would mix outputs into training data."""
    target, source = Path(out).resolve(), Path(studio).resolve()
    if target == source or target.is_relative_to(source):
        raise RunFolderError(f"--out {out} is inside the studio folder {studio}: fedgai never writes into a "
                             "studio folder; choose a run folder outside it")


def prepare_train_run(out: Path, studio: Path, cfg: FedgaiConfig, resume: bool, overwrite: bool) -> None:
    """Check that ``out`` may be written by this train-local call (and clear it for --overwrite)."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; pass one")
    refuse_inside_studio(out, studio)
    existing = _present(out, TRAIN_FILES)
    if resume:
        check_resume(out, studio, cfg)
    elif existing and overwrite:
        _remove(out, existing)
    elif existing:
        raise RunFolderError(f"{out} already holds a training run; pass --resume to continue it, --overwrite to "
                             "start over, or choose a new --out")
    elif out.exists() and (not out.is_dir() or any(p.name != DP_LEDGER for p in out.iterdir())):
        raise RunFolderError(f"{out} exists and is not a fedgai run folder; choose a new --out")


def check_resume(out: Path, studio: Path, cfg: FedgaiConfig) -> None:
    """--resume needs a checkpoint trained on this studio with these model settings."""
    import torch

    last = out / CHECKPOINT
    if not last.is_file():
        raise RunFolderError(f"--resume: no checkpoint at {last}; drop --resume to start a new run")
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = state["config"]["model"]
    changed = [f"{key} {saved[key]} -> {value}" for key, value in cfg.to_dict()["model"].items()
               if key in saved and saved[key] != value]
    if changed:
        raise RunFolderError(f"--resume: the run in {out} was trained with other model settings "
                             f"({', '.join(changed)}); resume with its settings or start a new --out")
    record = out / RUN_RECORD
    trained_on = json.loads(record.read_text())["studio"] if record.is_file() else None
    if trained_on is not None and Path(trained_on) != Path(studio).resolve():
        raise RunFolderError(f"--resume: the run in {out} was trained on studio {trained_on}, not "
                             f"{Path(studio).resolve()}; resume with that studio or start a new --out")


def record_run(out: Path, studio: Path) -> None:
    """What a later --resume checks the studio against."""
    (out / RUN_RECORD).write_text(json.dumps({"studio": str(Path(studio).resolve())}, indent=2) + "\n")


def prepare_workspace(workspace: Path, resume: bool, overwrite: bool) -> None:
    """A simulator workspace is continued (--resume), cleared (--overwrite) or must hold no earlier run."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; pass one")
    existing = _simulation_outputs(workspace)
    if resume and not (workspace / WORKSPACE_STATE).is_dir():
        raise RunFolderError(f"--resume: {workspace} holds no saved federation state (server_state/); drop "
                             "--resume to start a new run")
    if existing and overwrite:
        _remove(workspace, existing)
    elif existing and not resume:
        raise RunFolderError(f"{workspace} already holds a simulation; pass --resume to continue an interrupted "
                             "one, --overwrite to start over, or choose a new --workspace")


def _simulation_outputs(workspace: Path) -> list[Path]:
    """What an earlier simulation left in ``workspace`` (the simulator's site configuration is not an output)."""
    outputs = _present(workspace, SIMULATE_FILES[:-1])
    nvflare = workspace / SIMULATE_FILES[-1]
    if nvflare.is_dir():
        outputs += sorted(p for p in nvflare.iterdir() if p.name != SIMULATOR_CONFIG)
    return outputs


def resume_hint(argv: Sequence[str], resumable: bool) -> str:
    """The command line that continues an interrupted run (or says how to start over)."""
    kept = [arg for arg in argv if arg not in ("--resume", "--overwrite")]
    if not resumable:
        return f"nothing was saved yet; start again with: fedgai {shlex.join([*kept, '--overwrite'])}"
    return f"resume with: fedgai {shlex.join([*kept, '--resume'])}"


def remove_if_empty(path: Path) -> None:
    """Remove a folder this command created if it holds no file (only, possibly, empty sub-folders)."""
    if path.is_dir() and not any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        shutil.rmtree(path)


def _present(folder: Path, names: Sequence[str]) -> list[Path]:
    return [folder / name for name in names if (folder / name).exists()]


def _remove(folder: Path, paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    print(f"--overwrite: removed the earlier run's {', '.join(p.name for p in paths)} from {folder}")
