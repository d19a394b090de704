"""A studio's local GAN training: the same trainer runs stand-alone (`fedgai train-local`) and inside
an NVFlare client site, which only swaps the discriminator weights between rounds."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import SketchPairDataset, load_studio
from fedgai.device import amp_dtype, resolve_device
from fedgai.evaluation.ink import ink_iou
from fedgai.evaluation.split import run_split
from fedgai.federated.keys import load_shared, shared_state
from fedgai.losses import (
    content_loss,
    feature_matching_loss,
    feddecorr_loss,
    gram_loss,
    hinge_d_loss,
    hinge_g_loss,
    load_clip,
)
from fedgai.models import build_gan, gram_matrix, per_sample_networks
from fedgai.privacy.record import RecordLevelDP

log = logging.getLogger(__name__)


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


class StudioTrainer:
    """Trains one studio's generator and discriminator; owns its checkpoints, grids and TensorBoard log."""

    def __init__(self, cfg: FedgaiConfig, studio_dir: str | Path, run_dir: str | Path, device: str | None = None):
        """``device`` overrides cfg.train.device (None = the config's setting, "auto" by default)."""
        self.cfg = cfg
        self.device = resolve_device(device or cfg.train.device)
        # No autocast under record-level DP: per-pair clipping is checked in float32 only.
        self.amp = amp_dtype(cfg.train.amp, self.device) if cfg.privacy.dp != "record" else None
        set_determinism(cfg.train.seed, cfg.train.num_threads)
        self.studio = load_studio(studio_dir, follow_symlinks=cfg.data.follow_symlinks,
                                  max_pixels=cfg.data.max_pixels)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
        if self.clip is not None:
            self.clip = self.clip.to(self.device)
        self.opt_g = make_optimizer(cfg, self.generator.parameters(), cfg.train.lr_g)
        self.opt_d = make_optimizer(cfg, self.discriminator.parameters(), cfg.train.lr_d)
        self.epoch = 0
        # Record-level DP: every pair-dependent update of G and D (and AdaIN_SD's statistics) is private.
        self.record_dp = RecordLevelDP(cfg.privacy, self.num_samples, t.batch_size, self.run_dir / "dp_ledger.json",
                                       self.studio.name) if cfg.privacy.dp == "record" else None
        self.metadata = {
            "studio": self.studio.name,
            "studio_dir": str(Path(studio_dir).resolve()),
            "num_samples": self.num_samples,
            "encoder": self.encoder.name,
            "encoder_pretrained": self.encoder.pretrained,
            "clip_enabled": clip_status.enabled,
            "clip_status": clip_status.reason,
            "dp": cfg.privacy.dp,
            "device": str(self.device),
            "amp": "bf16" if self.amp else "off",
            "split": {side: len(getattr(self.split, side)) for side in ("train", "val", "test")},
        }
        self._writer: SummaryWriter | None = None
        self._fixed = self._fixed_batch()
        self.fit_sketch_statistics()
        (self.run_dir / "metadata.json").write_text(json.dumps(self.metadata, indent=2) + "\n")

    def dp_epsilon(self) -> float | None:
        """epsilon spent so far under record-level DP (None when it is off)."""
        return None if self.record_dp is None else self.record_dp.epsilon()

    # ------------------------------------------------------------------ data
    def loader(self) -> DataLoader:
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
        """AdaIN_SD's per-tap statistics over this studio's whole sketch set (they never leave the site);
        under record-level DP, released to G through the Gaussian mechanism of RecordLevelDP."""
        sketches = [self.plain[i][1] for i in range(self.num_samples)]
        taps = [self.encoder(torch.stack(sketches[i : i + 32]).to(self.device))
                for i in range(0, len(sketches), 32)]
        if self.record_dp is None:
            self.generator.adain.fit(taps)
        else:
            blank = self.encoder(torch.ones_like(sketches[0]).unsqueeze(0).to(self.device))  # white paper
            self.record_dp.fit_adain(self.generator.adain, taps, blank)

    def _pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The (augmented) training pairs at ``indices`` on the device; None for an empty sample."""
        if len(indices) == 0:
            return None
        items = [self.dataset[int(i)] for i in indices]
        return (torch.stack([p for p, _ in items]).to(self.device),
                torch.stack([s for _, s in items]).to(self.device))

    @torch.no_grad()
    def _real_features(self, photo: torch.Tensor, sketch: torch.Tensor
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Encoder taps of the photos and sketches, and the sketches' Gram matrices (no gradient needed)."""
        with self._autocast():
            photo_taps, real_taps = self.encoder(photo), self.encoder(sketch)
            return photo_taps, real_taps, [gram_matrix(t) for t in real_taps]

    def generator_losses(self, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's unweighted loss terms on one batch, with their graphs: for analyses of what drives G (which
        term carries how much of its gradient) without a training step."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        photo_taps, real_taps, real_grams = self._real_features(photo, sketch)
        fake = self.generator(photo_taps)
        return self._generator_terms(fake, self.encoder(fake), sketch, real_taps, real_grams, photo)

    def _generator_terms(self, fake: torch.Tensor, fake_taps: list[torch.Tensor], sketch: torch.Tensor,
                         real_taps: list[torch.Tensor], real_grams: list[torch.Tensor],
                         photo: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's loss terms for generated sketches against their real pairs (through the current D; the
        structure critic, where it is on, also sees the photos)."""
        d, fm = self.discriminator, self.cfg.loss.feature_matching > 0
        fake_grams = [gram_matrix(t) for t in fake_taps]
        fake_critic = d.features(fake_grams)
        terms = {
            "gram": gram_loss(real_grams, fake_grams),
            "adversarial": hinge_g_loss(d.score(fake_critic)),
            "content": content_loss(real_taps[-1], fake_taps[-1]),
            "pixel_l1": (fake - sketch).abs().mean(),
        }
        if fm:
            with torch.no_grad():
                real_critic = d.features(real_grams)
            terms["feature_matching"] = feature_matching_loss(real_critic, fake_critic)
        if d.patch is not None:
            fake_patch = d.patch.features(photo, fake)
            terms["structure"] = hinge_g_loss(d.patch.score(fake_patch))
            if fm:
                with torch.no_grad():
                    real_patch = d.patch.features(photo, sketch)
                terms["feature_matching"] = terms["feature_matching"] + feature_matching_loss(real_patch, fake_patch)
        if self.clip is not None:
            terms["clip"] = self.clip(sketch, fake)
        return terms

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(getattr(self.cfg.loss, name) * value for name, value in terms.items())

    # ------------------------------------------------------------------ training
    def step(self, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, float]:
        """One discriminator update then one generator update on a batch (moved to the trainer's device)."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        photo_taps, real_taps, real_grams = self._real_features(photo, sketch)
        with self._autocast():
            fake = self.generator(photo_taps)
            fake_taps = self.encoder(fake)
            fake_grams = [gram_matrix(t) for t in fake_taps]
            loss_d, decorr = self._discriminator_loss(real_grams, [g.detach() for g in fake_grams], photo, sketch,
                                                      fake.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        with self._autocast():
            terms = self._generator_terms(fake, fake_taps, sketch, real_taps, real_grams, photo)
            loss_g = self._weighted(terms)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        self.opt_g.step()
        out = {name: value.item() for name, value in terms.items()}
        out.update(loss_g=loss_g.item(), loss_d=loss_d.item(), feddecorr=decorr.item())
        return out

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward passes on a GPU that has it (train.amp); a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def _discriminator_loss(self, real: list[torch.Tensor], fake: list[torch.Tensor], photo: torch.Tensor,
                            sketch: torch.Tensor, fake_sketch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hinge + FedDecorr on the real features (real and fake share one BatchNorm batch), plus the structure
        critic's hinge on (photo, sketch) pairs where it is on."""
        n = real[0].shape[0]
        logits, feats = self.discriminator([torch.cat([r, f]) for r, f in zip(real, fake, strict=True)])
        decorr = feddecorr_loss(feats[:n])
        loss = hinge_d_loss(logits[:n], logits[n:]) + self.cfg.loss.feddecorr * decorr
        patch = self.discriminator.patch
        if patch is not None:
            scores = patch.score(patch.features(torch.cat([photo, photo]), torch.cat([sketch, fake_sketch])))
            loss = loss + hinge_d_loss(scores[:n], scores[n:])
        return loss, decorr

    def private_step(self) -> dict[str, float]:
        """Record-level DP: one D step, then one G step, each on its own Poisson sample of pairs.

        D's per-pair loss is hinge(D(real_i)) + hinge(D(G(photo_i))): the pair is the unit, one clipped
        gradient. FedDecorr couples the pairs of a batch, so it has no place here.
        """
        dp = self.record_dp
        batch = self._pairs(dp.sample())
        d_inputs = None
        if batch is not None:
            photo, sketch = batch
            photo_taps, _, real_grams = self._real_features(photo, sketch)
            with torch.no_grad():
                fake = self.generator(photo_taps)
                fake_grams = [gram_matrix(t) for t in self.encoder(fake)]
            d_inputs = [real_grams, fake_grams, photo, sketch, fake]
        out = dp.step(self.discriminator, self.opt_d, self._discriminator_pair_loss, d_inputs)
        batch = self._pairs(dp.sample())
        g_inputs = None if batch is None else [*self._real_features(*batch), batch[1], batch[0]]
        return out | dp.step(self.generator, self.opt_g, self._generator_pair_loss, g_inputs)

    def _discriminator_pair_loss(self, critic, real_grams: list[torch.Tensor], fake_grams: list[torch.Tensor],
                                 photo: torch.Tensor, sketch: torch.Tensor, fake: torch.Tensor
                                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = hinge_d_loss(critic(real_grams)[0], critic(fake_grams)[0])
        if self.discriminator.patch is not None:
            loss = loss + hinge_d_loss(critic(photo, sketch, submodule="patch"),
                                       critic(photo, fake, submodule="patch"))
        return loss, {"loss_d": loss}

    def _generator_pair_loss(self, generate, photo_taps: list[torch.Tensor], real_taps: list[torch.Tensor],
                             real_grams: list[torch.Tensor], sketch: torch.Tensor, photo: torch.Tensor
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fake = generate(photo_taps)
        terms = self._generator_terms(fake, self.encoder(fake), sketch, real_taps, real_grams, photo)
        loss = self._weighted(terms)
        return loss, {**terms, "loss_g": loss}

    def train_epochs(self, epochs: int, tag: str = "") -> dict[str, float]:
        """Train `epochs` epochs; returns the mean of each loss term and logs them to TensorBoard."""
        self.generator.train()
        self.discriminator.train()
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            if self.record_dp is not None:
                self.record_dp.charge_epoch()  # before it runs: refused epochs cost nothing
            batches = self.loader() if self.record_dp is None else range(self.record_dp.steps_per_epoch)
            bar = tqdm(batches, desc=f"{self.studio.name}{tag} epoch {self.epoch + 1}", leave=False)
            epoch_totals: dict[str, float] = {}
            for batch in bar:
                if self.record_dp is None:
                    losses = self.step(batch[0].to(self.device), batch[1].to(self.device))
                else:
                    losses = self.private_step()
                for k, v in losses.items():
                    epoch_totals[k] = epoch_totals.get(k, 0.0) + v
                steps += 1
                bar.set_postfix(g=f"{losses.get('loss_g', 0):.3f}", d=f"{losses.get('loss_d', 0):.3f}")
            self.epoch += 1
            n = max(len(bar), 1)
            for k, v in epoch_totals.items():
                self.writer.add_scalar(f"loss/{k}", v / n, self.epoch)
                totals[k] = totals.get(k, 0.0) + v
        means = {k: v / max(steps, 1) for k, v in totals.items()}
        if self.record_dp is not None:
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
        # Tensors and plain containers only; CPU first because the RNG state must stay a CPU tensor.
        state = torch.load(path, map_location="cpu", weights_only=True)
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

    # ------------------------------------------------------------------ what crosses the wire (federated.keys)
    def shared_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the entries this studio shares in its federation mode."""
        return shared_state(self._networks(), self.cfg.fed.mode, per_sample_networks(self.cfg))

    def load_shared(self, params: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Load received global entries; exactly the entries this studio shares are accepted."""
        load_shared(self._networks(), params, self.cfg.fed.mode, per_sample_networks(self.cfg))

    def _networks(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
