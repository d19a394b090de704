"""A studio's local GAN training: the same trainer runs stand-alone (`fedgai train-local`) and inside
an NVFlare client site, which only swaps the discriminator weights between rounds."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from opacus import GradSampleModule
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import SketchPairDataset, load_studio
from fedgai.evaluation.split import run_split
from fedgai.losses import (
    content_loss,
    feddecorr_loss,
    gram_loss,
    hinge_d_loss,
    hinge_g_loss,
    load_clip,
)
from fedgai.models import build_gan, gram_matrix
from fedgai.privacy import PrivacyLedger, attach_dpsgd, fresh_noise_generator, record_level_schedule

log = logging.getLogger(__name__)

INK_THRESHOLD = 0.0  # sketches live in [-1, 1]: below mid-grey is ink

LOSS_TERMS = ("loss_g", "loss_d", "gram", "adversarial", "clip", "content", "pixel_l1", "feddecorr")


def set_determinism(seed: int, num_threads: int | None) -> None:
    """Seed every RNG and pin CPU threads so that one seed gives one run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def make_optimizer(cfg: FedgaiConfig, params, lr: float) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))


def ink_iou(fake: torch.Tensor, real: torch.Tensor) -> float:
    """Intersection over union of the inked pixels (dark strokes) of generated and real sketches."""
    a, b = fake < INK_THRESHOLD, real < INK_THRESHOLD
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


class StudioTrainer:
    """Trains one studio's generator and discriminator; owns its checkpoints, grids and TensorBoard log."""

    def __init__(self, cfg: FedgaiConfig, studio_dir: str | Path, run_dir: str | Path, device: str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        set_determinism(cfg.train.seed, cfg.train.num_threads)
        self.studio = load_studio(studio_dir)
        t = cfg.train
        self.split = run_split(self.studio, self.run_dir, t.split_seed, t.val_fraction, t.test_fraction)
        size = cfg.model.image_size
        self.dataset = SketchPairDataset(self.studio, size, t.max_pairs, augment=True, stems=self.split.train)
        # The same pairs without augmentation: for the sketch statistics.
        self.plain = SketchPairDataset(self.studio, size, t.max_pairs, stems=self.split.train)
        # Held-out pairs for grids and the per-round quality score (the test side is never touched here).
        self.val = SketchPairDataset(self.studio, size, stems=self.split.val) if self.split.val else self.plain
        self.num_samples = len(self.dataset)
        gan = build_gan(cfg)
        self.encoder = gan.encoder.to(self.device)
        self.generator = gan.generator.to(self.device)
        self.discriminator = gan.discriminator.to(self.device)
        self.clip, clip_status = load_clip(cfg.loss)
        self.opt_g = make_optimizer(cfg, self.generator.parameters(), cfg.train.lr_g)
        self.opt_d = make_optimizer(cfg, self.discriminator.parameters(), cfg.train.lr_d)
        self.epoch = 0
        self._dp_loader: DataLoader | None = None
        self._dp_module: GradSampleModule | None = None
        self.ledger: PrivacyLedger | None = None
        if cfg.privacy.dp == "record":
            self._attach_dpsgd()
        self.metadata = {
            "studio": self.studio.name,
            "num_samples": self.num_samples,
            "encoder": self.encoder.name,
            "encoder_pretrained": self.encoder.pretrained,
            "clip_enabled": clip_status.enabled,
            "clip_status": clip_status.reason,
            "dp": cfg.privacy.dp,
            "split": {side: len(getattr(self.split, side)) for side in ("train", "val", "test")},
        }
        self._writer: SummaryWriter | None = None
        self._fixed = self._fixed_batch()
        self.fit_sketch_statistics()
        (self.run_dir / "metadata.json").write_text(json.dumps(self.metadata, indent=2) + "\n")

    def _attach_dpsgd(self) -> None:
        """Record-level DP-SGD on D: per-sketch clipping + noise; steps are written to a persistent ledger."""
        p = self.cfg.privacy
        plain_loader = DataLoader(self.dataset, batch_size=self.cfg.train.batch_size,
                                  generator=torch.Generator().manual_seed(self.cfg.train.seed))
        self._dp_module, self.opt_d, self._dp_loader, _ = attach_dpsgd(
            self.discriminator, self.opt_d, plain_loader, p.noise_multiplier, p.clip_norm, accountant=p.accountant,
            noise_generator=fresh_noise_generator())  # train.seed must not make the noise replayable
        self.ledger = PrivacyLedger(self.run_dir / "dp_ledger.json", self.studio.name, p.accountant)

    def dp_epsilon(self) -> float | None:
        """epsilon spent so far by record-level DP-SGD (None when it is off)."""
        return None if self.ledger is None else self.ledger.epsilon(self.cfg.privacy.delta)

    def _spend_epoch_budget(self) -> None:
        """Refuse an epoch that would overrun privacy.target_epsilon, else record its steps."""
        p = self.cfg.privacy
        rate, steps = record_level_schedule(self.num_samples, self.cfg.train.batch_size, 1)
        if p.target_epsilon is not None:
            self.ledger.check_budget(p.target_epsilon, p.noise_multiplier, rate, steps, p.delta)
        self.ledger.record(p.noise_multiplier, rate, count=steps)

    # ------------------------------------------------------------------ data
    def loader(self) -> DataLoader:
        if self._dp_loader is not None:
            return self._dp_loader  # Poisson sampling, as the accountant assumes
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch)
        return DataLoader(
            self.dataset, batch_size=self.cfg.train.batch_size, shuffle=True, drop_last=len(self.dataset) >
            self.cfg.train.batch_size, generator=generator,
        )

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first held-out (val) pairs: what grids show."""
        n = min(self.cfg.train.grid_size, len(self.val))
        items = [self.val[i] for i in range(n)]
        return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])

    @torch.no_grad()
    def fit_sketch_statistics(self) -> None:
        """AdaIN_SD's per-tap statistics over this studio's whole sketch set (they never leave the site)."""
        sketches = [self.plain[i][1] for i in range(self.num_samples)]
        taps = [self.encoder(torch.stack(sketches[i : i + 32]).to(self.device))
                for i in range(0, len(sketches), 32)]
        self.generator.adain.fit(taps)

    # ------------------------------------------------------------------ training
    def step(self, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, float]:
        """One discriminator update then one generator update on a batch."""
        w = self.cfg.loss
        with torch.no_grad():
            photo_taps = self.encoder(photo)
            real_taps = self.encoder(sketch)
            real_grams = [gram_matrix(t) for t in real_taps]
        fake = self.generator(photo_taps)
        fake_taps = self.encoder(fake)
        fake_grams = [gram_matrix(t) for t in fake_taps]

        loss_d, decorr = self._discriminator_loss(real_grams, [g.detach() for g in fake_grams])
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        with self._generator_pass():
            terms = {
                "gram": gram_loss(real_grams, fake_grams),
                "adversarial": hinge_g_loss(self.discriminator(fake_grams)[0]),
                "content": content_loss(real_taps[-1], fake_taps[-1]),
                "pixel_l1": (fake - sketch).abs().mean(),
            }
            if self.clip is not None:
                terms["clip"] = self.clip(sketch, fake)
            loss_g = sum(getattr(w, name) * value for name, value in terms.items())
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        self.opt_g.step()
        out = {name: value.item() for name, value in terms.items()}
        out.update(loss_g=loss_g.item(), loss_d=loss_d.item(), feddecorr=decorr.item())
        return out

    def _discriminator_loss(self, real: list[torch.Tensor], fake: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hinge + FedDecorr. Real and fake go through D as one batch so that DP-SGD clips per row in one
        step; FedDecorr couples the rows of a batch, so it is off under record-level DP."""
        n = real[0].shape[0]
        logits, feats = self.discriminator([torch.cat([r, f]) for r, f in zip(real, fake, strict=True)])
        loss = hinge_d_loss(logits[:n], logits[n:])
        if self.ledger is not None:
            return loss, torch.zeros(())
        decorr = feddecorr_loss(feats[:n])
        return loss + self.cfg.loss.feddecorr * decorr, decorr

    @contextlib.contextmanager
    def _generator_pass(self) -> Iterator[None]:
        """The G update's forward and backward through D: no per-sample DP-SGD hooks (it is no D step)."""
        if self._dp_module is None:
            yield
            return
        self._dp_module.disable_hooks()
        try:
            yield
        finally:
            self._dp_module.enable_hooks()

    def train_epochs(self, epochs: int, tag: str = "") -> dict[str, float]:
        """Train `epochs` epochs; returns the mean of each loss term and logs them to TensorBoard."""
        self.generator.train()
        self.discriminator.train()
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            bar = tqdm(self.loader(), desc=f"{self.studio.name}{tag} epoch {self.epoch + 1}", leave=False)
            epoch_totals: dict[str, float] = {}
            if self.ledger is not None:
                self._spend_epoch_budget()
            for photo, sketch in bar:
                if len(photo) == 0:
                    continue  # Poisson sampling can draw an empty batch
                losses = self.step(photo.to(self.device), sketch.to(self.device))
                for k, v in losses.items():
                    epoch_totals[k] = epoch_totals.get(k, 0.0) + v
                steps += 1
                bar.set_postfix(g=f"{losses['loss_g']:.3f}", d=f"{losses['loss_d']:.3f}")
            self.epoch += 1
            n = max(len(bar), 1)
            for k, v in epoch_totals.items():
                self.writer.add_scalar(f"loss/{k}", v / n, self.epoch)
                totals[k] = totals.get(k, 0.0) + v
        means = {k: v / max(steps, 1) for k, v in totals.items()}
        if self.ledger is not None:
            means["dp_epsilon"] = self.dp_epsilon()
        return means

    @property
    def writer(self) -> SummaryWriter:
        if self._writer is None:
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def generate(self, photos: torch.Tensor) -> torch.Tensor:
        self.generator.eval()
        return self.generator(self.encoder(photos.to(self.device))).cpu()

    @torch.no_grad()
    def quality(self) -> dict[str, float]:
        """Held-out quality on the val pairs (train pairs when the split has no val side): L1 to the real
        sketch, Gram (style) distance and ink IoU of the strokes. Cheap enough to run every round."""
        photos, sketches = zip(*(self.val[i] for i in range(len(self.val))), strict=True)
        fake = self.generate(torch.stack(photos))
        sketch = torch.stack(sketches)
        real_g = [gram_matrix(t) for t in self.encoder(sketch.to(self.device))]
        fake_g = [gram_matrix(t) for t in self.encoder(fake.to(self.device))]
        prefix = "val" if self.val is not self.plain else "train"
        return {f"{prefix}_l1": float((fake - sketch).abs().mean()),
                f"{prefix}_gram": float(gram_loss(real_g, fake_g).cpu()),
                f"{prefix}_ink_iou": ink_iou(fake, sketch)}

    def save_grid(self, path: str | Path) -> Path:
        """One row per fixed pair: photo | generated | real sketch."""
        photo, sketch = self._fixed
        fake = self.generate(photo)
        rows = torch.stack([photo, fake.expand(-1, 3, -1, -1), sketch.expand(-1, 3, -1, -1)], 1).flatten(0, 1)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image((rows + 1) / 2, path, nrow=3, padding=2, pad_value=1.0)
        return path

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Everything needed to resume or to sketch: G (with AdaIN_SD statistics), D, optimisers, config."""
        path = Path(path) if path else self.run_dir / "checkpoints" / "last.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "metadata": self.metadata,
            "torch_rng": torch.get_rng_state(),
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a crash mid-save never leaves a torn checkpoint
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["metadata"]["encoder"] != self.encoder.name:
            raise ValueError(
                f"checkpoint {path} was trained with encoder {state['metadata']['encoder']}, "
                f"this run uses {self.encoder.name}"
            )
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.epoch = state["epoch"]
        torch.set_rng_state(state["torch_rng"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
