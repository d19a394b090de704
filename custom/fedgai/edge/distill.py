"""`fedgai compress`: distil a studio's compressed generator from its full one, on the studio's training pairs.

It runs where the studio's data is and never leaves it, like the full generator: the student copies the
teacher's AdaIN_SD statistics and learns to reproduce the teacher's sketches (L1), helped by the paired real
sketch (L1) and the Gram style term. It reads only the run's training split (split.json), so the test pairs
stay unseen by both generators. Under record-level DP it reads no sketch at all: it learns from the private
teacher on the training photos alone, and its Gram target is the teacher's own drawing, so the student is
post-processing of the private generator (docs/edge.md says what that covers). Progress is saved every epoch,
so an interrupted run resumes.

A styled renderer (model.generator styled) is a teacher like the paper's generator: it draws at the studio's own
statistics, and the student - the same depthwise decoder, without mapping network or FiLM head - learns that one
style, its code folded into its weights. It does not follow other statistics (the studio page offers no blend
for it); blending stays with the full styled checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import SketchPairDataset, load_studio
from fedgai.data.split import StudioSplit
from fedgai.data.studio import read_image
from fedgai.device import resolve_device
from fedgai.edge.lite import build_compressed
from fedgai.edge.sketcher import COMPRESSED_FORMAT, StudioModel, load_studio_model, read_checkpoint
from fedgai.layout import CHECKPOINTS, SPLIT_FILE
from fedgai.losses import gram_loss
from fedgai.models import gram_matrix

COMPRESSED_FILE = "compressed.pt"


class Distiller:
    """Trains the compressed generator against a frozen teacher; `out` is its (resumable) checkpoint."""

    def __init__(self, teacher: StudioModel, studio_dir: Path, train_stems: Sequence[str], out: Path,
                 device: str = "auto", edge: dict[str, Any] | None = None, resume: bool = False):
        """train_stems: the teacher's training pairs (its split's train side); nothing else is read."""
        self.device = resolve_device(device)
        self.out = Path(out)
        state = self._previous(resume)
        base = FedgaiConfig.from_dict(state["config"]) if state else teacher.cfg
        self.cfg = base.with_overrides({f"edge.{key}": value for key, value in (edge or {}).items()})
        self.teacher = teacher.generator.to(self.device).eval()
        self.encoder = teacher.encoder.to(self.device)
        self.metadata = {**teacher.metadata, "compressed": True}
        # Record-level DP protects each pair; reading a sketch here would bypass it.
        self.photos_only = self.cfg.privacy.dp == "record"
        # Exactly the pairs the teacher trained on (train split, train.max_pairs): val and test stay held out.
        pairs = SketchPairDataset(load_studio(studio_dir), self.cfg.model.image_size, self.cfg.train.max_pairs,
                                  augment=True, stems=train_stems)
        self.dataset: Dataset = PhotoDataset(pairs) if self.photos_only else pairs
        torch.manual_seed(self.cfg.train.seed)
        self.student = build_compressed(self.cfg, self.encoder).to(self.device)
        self.student.adain.load_state_dict(self.teacher.adain.state_dict())
        self.opt = torch.optim.Adam(self.student.parameters(), lr=self.cfg.edge.lr, betas=(0.5, 0.999))
        self.epoch = 0
        if state:
            self._restore(state)

    def _previous(self, resume: bool) -> dict[str, Any] | None:
        if not self.out.exists():
            return None
        if not resume:
            raise FileExistsError(f"{self.out} exists: pass --resume to continue it, or choose another --out")
        state = read_checkpoint(self.out)
        if state.get("format") != COMPRESSED_FORMAT:
            raise ValueError(f"{self.out} is not a compressed generator checkpoint; cannot resume it")
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        if state["metadata"].get("studio") != self.metadata.get("studio"):
            raise ValueError(f"{self.out} was distilled for studio {state['metadata'].get('studio')!r}, "
                             f"not {self.metadata.get('studio')!r}")
        self.student.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])
        self.epoch = state["epoch"]

    def step(self, photo: torch.Tensor, sketch: torch.Tensor | None) -> dict[str, float]:
        """One student update: distillation L1 + real-sketch L1 + Gram style, weighted by cfg.edge.
        sketch None (photos only): no real-sketch term, and the Gram target is the teacher's sketch."""
        w = self.cfg.edge
        with torch.no_grad():
            taps = self.encoder(photo)
            target = self.teacher(taps)
        fake = self.student(taps)
        terms = {"distill": F.l1_loss(fake, target)}
        if sketch is not None:
            terms["pixel_l1"] = F.l1_loss(fake, sketch)
        if w.gram > 0:
            with torch.no_grad():
                style_grams = [gram_matrix(t) for t in self.encoder(target if sketch is None else sketch)]
            terms["gram"] = gram_loss(style_grams, [gram_matrix(t) for t in self.encoder(fake)])
        loss = sum(getattr(w, name) * value for name, value in terms.items())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}

    def train(self, progress: bool = True) -> list[dict[str, float]]:
        """Train up to cfg.edge.epochs in total, saving after every epoch; returns each new epoch's mean losses."""
        history = []
        while self.epoch < self.cfg.edge.epochs:
            self.student.train()
            loader = DataLoader(self.dataset, batch_size=self.cfg.edge.batch_size, shuffle=True,
                                generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch))
            totals: dict[str, float] = {}
            bar = tqdm(loader, desc=f"distilling epoch {self.epoch + 1}/{self.cfg.edge.epochs}", leave=False,
                       disable=not progress)
            for batch in bar:
                photo, sketch = (batch, None) if self.photos_only else batch
                losses = self.step(photo.to(self.device), None if sketch is None else sketch.to(self.device))
                totals = {k: totals.get(k, 0.0) + v for k, v in losses.items()}
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
            self.epoch += 1
            self.save()
            history.append({"epoch": self.epoch, **{k: v / len(loader) for k, v in totals.items()}})
        self.student.eval()
        return history

    def save(self) -> Path:
        """Atomically write the student (with the studio's AdaIN_SD statistics), optimiser and config."""
        state = {
            "format": COMPRESSED_FORMAT,
            "generator": self.student.state_dict(),
            "opt": self.opt.state_dict(),
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "metadata": self.metadata,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out)
        return self.out


class PhotoDataset(Dataset):
    """The photos of a pair set alone, flipped at random like the pairs; the sketch files are never opened."""

    def __init__(self, pairs: SketchPairDataset):
        self.photos = [photo for photo, _ in pairs.pairs]
        self.image_size = pairs.image_size
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            self._cache[index] = read_image(self.photos[index], 3, self.image_size)
        photo = self._cache[index]
        return photo.flip(-1) if torch.rand(()) < 0.5 else photo.clone()


def run_folder_split(checkpoint: Path) -> StudioSplit:
    """The split stored in the checkpoint's run folder (RUN/checkpoints/last.pt -> RUN/split.json)."""
    path = checkpoint.parent.parent / SPLIT_FILE
    if checkpoint.parent.name != CHECKPOINTS or not path.is_file():
        raise FileNotFoundError(f"no {SPLIT_FILE} for {checkpoint}: compress distils on the run's training pairs "
                                f"only, so pass the run folder (or its checkpoints/last.pt) that holds {SPLIT_FILE}")
    return StudioSplit.load(path)


def recorded_studio(teacher: StudioModel, checkpoint: Path) -> Path:
    """The studio folder the run recorded (metadata studio_dir), while it is still there."""
    recorded = teacher.metadata.get("studio_dir")
    if not isinstance(recorded, str) or not recorded:
        raise FileNotFoundError(f"{checkpoint} records no studio folder; pass --studio DIR")
    if not Path(recorded).is_dir():
        raise FileNotFoundError(f"the studio folder {recorded} recorded by {checkpoint} is gone (moved or "
                                f"removed); pass --studio DIR")
    return Path(recorded)


def compress_checkpoint(checkpoint: Path, out: Path, studio_dir: Path | None = None, device: str = "auto",
                        edge: dict[str, Any] | None = None, resume: bool = False) -> Distiller:
    """A Distiller for a full-generator checkpoint (a compressed one cannot be a teacher), on its run's training
    split; studio_dir None = the studio folder the run recorded."""
    teacher = load_studio_model(checkpoint, resolve_device(device))
    if teacher.compressed:
        raise ValueError(f"{checkpoint} is already a compressed generator; pass the full generator's checkpoint")
    split = run_folder_split(checkpoint)
    studio_dir = recorded_studio(teacher, checkpoint) if studio_dir is None else studio_dir
    studio = load_studio(studio_dir).name
    if studio != split.studio:
        raise ValueError(f"{studio_dir} is studio {studio!r}, but the run at {checkpoint.parent.parent} trained on "
                         f"{split.studio!r}")
    return Distiller(teacher, studio_dir, split.train, out, device, edge, resume)


def compress_after_federation(trainer: Any, current_round: int) -> Path | None:
    """edge.compress_after_training: after the job's last round (fed.rounds), distil next to the site's last.pt.

    `trainer` is the site's StudioTrainer; a restarted site resumes the distillation instead of redoing it.
    """
    if current_round != trainer.cfg.fed.rounds - 1:
        return None
    teacher = StudioModel(trainer.cfg, trainer.metadata, trainer.encoder, trainer.generator, compressed=False)
    out = trainer.run_dir / CHECKPOINTS / COMPRESSED_FILE
    Distiller(teacher, trainer.studio.root, trainer.split.train, out, str(trainer.device),
              resume=True).train(progress=False)
    return out
