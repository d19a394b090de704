"""A studio's local GAN training: the same trainer runs stand-alone (`fedgai train-local`) and inside
an NVFlare client site, which only swaps the discriminator weights between rounds."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import PhotoDataset, SketchPairDataset, load_studio
from fedgai.data.sketchify import SKETCH_STYLES, sketchify_image
from fedgai.data.split import run_split
from fedgai.device import amp_dtype, resolve_device
from fedgai.ink import ink_iou
from fedgai.layout import METADATA
from fedgai.losses import content_loss, gram_loss, load_clip
from fedgai.models import build_gan, gram_matrix, per_sample_networks
from fedgai.objective import Objective, RealFeatures, Unpaired
from fedgai.pair_features import PairFeatureCache
from fedgai.personal import SharedGenerator
from fedgai.prior import load_prior
from fedgai.privacy.planner import planned_record_dp
from fedgai.privacy.record import RecordLevelDP, train_only
from fedgai.rundir import RunFolder
from fedgai.sharing import load_shared, network_shared_keys, shared_state

log = logging.getLogger(__name__)


def set_determinism(seed: int, num_threads: int | None) -> None:
    """Seed every RNG and pin CPU threads so that one seed gives one run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def make_optimizer(cfg: FedgaiConfig, params, lr: float) -> torch.optim.Optimizer:
    """SGD (the paper's HAIGEN code) or Adam; both fused (one kernel over all parameters, not one Python
    loop of small ops per parameter), which is the same update at a fraction of the optimiser's time."""
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, fused=True)
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), fused=True)


class StudioTrainer:
    """Trains one studio's generator and discriminator: data, networks, optimisers and the loop. The loss
    composition is objective.Objective's; the run folder's files are written through rundir.RunFolder."""

    def __init__(self, cfg: FedgaiConfig, studio_dir: str | Path, run_dir: str | Path, device: str | None = None):
        """``device`` overrides cfg.train.device (None = the config's setting, "auto" by default)."""
        self.cfg = cfg
        self.device = resolve_device(device or cfg.train.device)
        # No autocast under record-level DP: per-pair clipping is checked in float32 only.
        self.amp = amp_dtype(cfg.train.amp, self.device) if cfg.privacy.dp != "record" else None
        set_determinism(cfg.train.seed, cfg.train.num_threads)
        self.studio = load_studio(studio_dir, follow_symlinks=cfg.data.follow_symlinks,
                                  max_pixels=cfg.data.max_pixels)
        self.folder = RunFolder(run_dir)
        self.run_dir = self.folder.root
        t = cfg.train
        self.split = run_split(self.studio, self.run_dir, t.split_seed, t.val_fraction, t.test_fraction)
        size = cfg.model.image_size
        # The training pairs, unaugmented: the loop draws each batch's flips itself, so that the encoder's
        # view of every (pair, flip) can be cached.
        self.dataset = SketchPairDataset(self.studio, size, t.max_pairs, stems=self.split.train)
        # Held-out pairs for grids and the per-round quality score (the test side is never touched here).
        self.val = SketchPairDataset(self.studio, size, stems=self.split.val) if self.split.val else self.dataset
        self.num_samples = len(self.dataset)
        # Photos without a sketch, for the critics' adversarial terms only (train.unpaired_batch > 0).
        self.unpaired = PhotoDataset(self.studio.unpaired, size) if t.unpaired_batch and self.studio.unpaired \
            else None
        gan = build_gan(cfg)
        self.encoder = gan.encoder.to(self.device)
        self.generator = gan.generator.to(self.device)
        self.discriminator = gan.discriminator.to(self.device)
        # train.prior: G and D start from the public prior (prior.py); AdaIN_SD's statistics stay the studio's.
        self.prior = load_prior(cfg, self.encoder.name, self.generator, self.discriminator)
        self.clip, clip_status = load_clip(cfg.loss)
        if self.clip is not None:
            self.clip = self.clip.to(self.device)
        self.objective = Objective(cfg.loss, self.encoder, self.discriminator, self.clip)
        self.features = PairFeatureCache(self.dataset, self.objective.real_features, self.device, self._autocast)
        self.opt_g = make_optimizer(cfg, self.generator.parameters(), cfg.train.lr_g)
        self.opt_d = make_optimizer(cfg, self.discriminator.parameters(), cfg.train.lr_d)
        self.epoch = 0
        # Record-level DP: every pair-dependent update of G and D (and AdaIN_SD's statistics) is private.
        self.dp_details: dict = {}
        self.record_dp = self._record_dp() if cfg.privacy.dp == "record" else None
        self.metadata = {
            "studio": self.studio.name,
            "studio_dir": str(Path(studio_dir).resolve()),
            "num_samples": self.num_samples,
            "unpaired_photos": len(self.unpaired) if self.unpaired is not None else 0,
            "encoder": self.encoder.name,
            "encoder_pretrained": self.encoder.pretrained,
            "clip_enabled": clip_status.enabled,
            "clip_status": clip_status.reason,
            "dp": cfg.privacy.dp,
            "prior": str(self.prior) if self.prior else None,
            **self.dp_details,
            "device": str(self.device),
            "amp": "bf16" if self.amp else "off",
            "split": {side: len(getattr(self.split, side)) for side in ("train", "val", "test")},
        }
        self._writer: SummaryWriter | None = None
        self._fixed = self._fixed_batch()
        self.fit_sketch_statistics()
        # fed.mode fedgai_ditto: the shared generator (personal.py); self.generator is then the studio's personal one.
        self.ditto = self._shared_generator() if cfg.fed.mode == "fedgai_ditto" else None
        # (pairs, public styles, 1, H, W): the studio's own training photos as public edge styles (train.public_styles)
        self.public_targets = self._public_targets() if t.public_styles else None
        self.folder.write_json(METADATA, self.metadata)

    def _shared_generator(self) -> SharedGenerator:
        """Ditto's shared generator: a copy of the personal one after the prior and AdaIN_SD's fit, pulling
        exactly the entries it shares."""
        pulled = network_shared_keys(self.generator, "generator", self.cfg.fed.mode, per_sample_networks(self.cfg))
        return SharedGenerator(self.generator, pulled, self.cfg.fed.ditto_lambda,
                               lambda params: make_optimizer(self.cfg, params, self.cfg.train.lr_g))

    def _record_dp(self) -> RecordLevelDP:
        """Record-level DP as configured: the planned schedule when privacy.plan is on (privacy/planner.py), and
        DP-SGD on privacy.record_trainable's parameters only (the rest stay where they started)."""
        privacy, batch, plan = planned_record_dp(self.cfg, self.num_samples)
        noised = train_only(self.cfg.privacy.record_trainable, self.generator, self.discriminator)
        self.dp_details = {"dp_noised_parameters": noised, "dp_noise_multiplier": privacy.noise_multiplier,
                           "dp_batch_size": batch, "dp_plan": dataclasses.asdict(plan) if plan else None}
        return RecordLevelDP(privacy, self.num_samples, batch, self.folder.dp_ledger, self.studio.name)

    def dp_epsilon(self) -> float | None:
        """epsilon spent so far under record-level DP (None when it is off)."""
        return None if self.record_dp is None else self.record_dp.epsilon()

    # ------------------------------------------------------------------ data
    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (pair indices, flips): shuffled by (seed, epoch); each pair flipped with probability 1/2."""
        n, b = self.num_samples, self.cfg.train.batch_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + self.epoch))
        stop = n - n % b if n > b else n  # drop the last short batch (BatchNorm needs more than one pair)
        for i in range(0, stop, b):
            indices = order[i : i + b]
            yield indices, torch.rand(len(indices)) < 0.5

    def loader(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of augmented (photo, sketch) batches, as the training loop sees them."""
        for indices, flips in self.batches():
            yield self.features.images(indices, flips)

    def _fixed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first held-out (val) pairs: what grids show."""
        n = min(self.cfg.train.grid_size, len(self.val))
        items = [self.val[i] for i in range(n)]
        return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])

    @torch.no_grad()
    def fit_sketch_statistics(self) -> None:
        """AdaIN_SD's per-tap statistics over this studio's whole sketch set (they never leave the site);
        under record-level DP, released to G through the Gaussian mechanism of RecordLevelDP."""
        sketches = [self.dataset[i][1] for i in range(self.num_samples)]
        taps = [self.encoder(torch.stack(sketches[i : i + 32]).to(self.device))
                for i in range(0, len(sketches), 32)]
        if self.record_dp is None:
            self.generator.adain.fit(taps)
        else:
            blank = self.encoder(torch.ones_like(sketches[0]).unsqueeze(0).to(self.device))  # white paper
            self.record_dp.fit_adain(self.generator.adain, taps, blank)

    def _public_targets(self) -> torch.Tensor:
        """Every training photo drawn in every public edge style (data/sketchify.py): style targets made from the
        studio's own photos only, so teaching G to follow its statistics needs no other studio's sketch."""
        targets = []
        for i in range(self.num_samples):
            rgb = ((self.dataset[i][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            targets.append(torch.stack([torch.from_numpy(sketchify_image(rgb, style)).float()[None] / 127.5 - 1
                                        for style in SKETCH_STYLES]))
        return torch.stack(targets)

    def _training_stats(self, generator: torch.nn.Module, sketch: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """AdaIN_SD statistics for a batch (train.adain_sample_p): each pair's own sketch statistics with that
        probability, the set's otherwise; None (the set's for all) when no pair drew them."""
        pick = torch.rand(len(sketch)) < self.cfg.train.adain_sample_p
        if not pick.any():
            return None
        adain = generator.adain
        with torch.no_grad():
            own = adain.sample_stats(self.encoder(sketch))
        pick = pick.to(self.device).view(-1, 1, 1, 1)
        return [(torch.where(pick, m, getattr(adain, f"mean{i}")), torch.where(pick, s, getattr(adain, f"std{i}")))
                for i, (m, s) in enumerate(own)]

    def public_style_step(self, photo_taps: list[torch.Tensor], indices: torch.Tensor, flips: torch.Tensor
                          ) -> dict[str, float]:
        """One G update towards the batch's photos in a random public edge style each, drawn with that target's
        own AdaIN_SD statistics: the paired terms only (gram, content, pixel L1), D neither trains nor judges."""
        styles = torch.randint(self.public_targets.shape[1], (len(indices),))
        target = self.public_targets[indices, styles]
        target = torch.where(flips.view(-1, 1, 1, 1), target.flip(-1), target).to(self.device)
        w = self.cfg.loss
        with self._autocast():
            with torch.no_grad():
                target_taps = self.encoder(target)
            fake = self.generator(photo_taps, self.generator.adain.sample_stats(target_taps))
            fake_taps = self.encoder(fake)
            loss = (w.gram * gram_loss([gram_matrix(t) for t in target_taps], [gram_matrix(t) for t in fake_taps])
                    + w.content * content_loss(target_taps[-1], fake_taps[-1])
                    + w.pixel_l1 * (fake - target).abs().mean())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"public_style": loss.item()}

    def _real_features(self, photo: torch.Tensor, sketch: torch.Tensor) -> RealFeatures:
        with self._autocast():
            return self.objective.real_features(photo, sketch)

    def generator_losses(self, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's unweighted loss terms on one batch, with their graphs: for analyses of what drives G (which
        term carries how much of its gradient) without a training step."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        real = self._real_features(photo, sketch)
        fake = self.generator(real.photo_taps)
        return self.objective.generator_terms(fake, self.encoder(fake), sketch, real.sketch_deep, real.sketch_grams,
                                              photo)

    # ------------------------------------------------------------------ training
    def step(self, photo: torch.Tensor, sketch: torch.Tensor, real: RealFeatures | None = None,
             unpaired: torch.Tensor | None = None) -> dict[str, float]:
        """One discriminator update then one generator update on a batch (moved to the trainer's device).
        ``real``: the batch's encoder features when the caller has them (the cache); computed otherwise.
        ``unpaired``: photos without a sketch, judged by the critics alongside the paired fakes.
        fedgai_ditto: D and the shared generator take that step (FedAvg's model), then the personal generator one
        G update against the same D, with the proximal pull (personal.py)."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        unpaired = None if unpaired is None else unpaired.to(self.device)
        if real is None:
            real = self._real_features(photo, sketch)
        if self.ditto is None:
            return self._gan_step(self.generator, self.opt_g, photo, sketch, real, unpaired)
        shared = self._gan_step(self.ditto.generator, self.ditto.opt, photo, sketch, real, unpaired)
        return shared | self._personal_step(photo, sketch, real, unpaired)

    def _gan_step(self, generator: torch.nn.Module, opt_g: torch.optim.Optimizer, photo: torch.Tensor,
                  sketch: torch.Tensor, real: RealFeatures, unpaired: torch.Tensor | None) -> dict[str, float]:
        """D's update on ``generator``'s fakes, then ``generator``'s update through the updated D."""
        with self._autocast():
            with record_function("G forward"):
                fake = self._fake(generator, real, sketch)
            with record_function("encoder: generated sketch"):
                fake_taps = self.encoder(fake)
            extra = None if unpaired is None else self._generate_unpaired(unpaired, generator)
            with record_function("D loss (Gram + structure critic)"):
                fake_grams = [gram_matrix(t) for t in fake_taps]
                loss_d, decorr = self.objective.discriminator_loss(
                    real.sketch_grams, [g.detach() for g in fake_grams], photo, sketch, fake.detach(),
                    None if extra is None else extra.detached())
        with record_function("D backward + optimiser"):
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()

        with self._autocast():
            with record_function("G loss terms"):
                terms = self.objective.generator_terms(fake, fake_taps, sketch, real.sketch_deep, real.sketch_grams,
                                                       photo, extra)
                loss_g = self.objective.weighted(terms)
            with record_function("G backward"):
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
        with record_function("G optimiser"):
            opt_g.step()
        out = {name: value.item() for name, value in terms.items()}
        out.update(loss_g=loss_g.item(), loss_d=loss_d.item(), feddecorr=decorr.item())
        return out

    def _personal_step(self, photo: torch.Tensor, sketch: torch.Tensor, real: RealFeatures,
                       unpaired: torch.Tensor | None) -> dict[str, float]:
        """Ditto's personal update: the usual G loss through the current D (which it does not train) plus
        (lambda/2)*||personal - received shared||^2; at lambda 0 exactly the plain G update."""
        with self._autocast(), record_function("personal G step"):
            fake = self._fake(self.generator, real, sketch)
            extra = None if unpaired is None else self._generate_unpaired(unpaired)
            terms = self.objective.generator_terms(fake, self.encoder(fake), sketch, real.sketch_deep,
                                                   real.sketch_grams, photo, extra)
            loss = self.objective.weighted(terms)
        proximal = self.ditto.proximal(self.generator)
        self.opt_g.zero_grad(set_to_none=True)
        (loss + proximal).backward()
        self.opt_g.step()
        return {"personal_loss_g": loss.item(), "ditto_proximal": proximal.item(),
                "ditto_distance": self.ditto.distance(self.generator)}

    def _fake(self, generator: torch.nn.Module, real: RealFeatures, sketch: torch.Tensor) -> torch.Tensor:
        """``generator``'s sketches of the batch's photos (with per-pair AdaIN_SD statistics, train.adain_sample_p)."""
        return generator(real.photo_taps, self._training_stats(generator, sketch) if self.cfg.train.adain_sample_p
                         else None)

    def _generate_unpaired(self, photo: torch.Tensor, generator: torch.nn.Module | None = None) -> Unpaired:
        """``generator``'s (default: the studio's) sketches of unpaired photos, for the critics' terms."""
        with torch.no_grad():
            taps = self.encoder(photo)
        fake = (generator or self.generator)(taps)
        return Unpaired(photo, fake, [gram_matrix(t) for t in self.encoder(fake)])

    def unpaired_batch(self) -> torch.Tensor | None:
        """train.unpaired_batch random unpaired photos, each flipped with probability 1/2 (None when unused)."""
        if self.unpaired is None:
            return None
        picks = torch.randint(len(self.unpaired), (self.cfg.train.unpaired_batch,))
        flips = torch.rand(len(picks)) < 0.5
        return torch.stack([self.unpaired[int(i)].flip(-1) if f else self.unpaired[int(i)]
                            for i, f in zip(picks, flips, strict=True)])

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward passes on a GPU that has it (train.amp); a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def private_step(self) -> dict[str, float]:
        """Record-level DP: one D step, then one G step, each on its own Poisson sample of pairs (the pair is
        the unit: one clipped gradient each; see Objective's per-pair losses)."""
        dp = self.record_dp
        d_inputs = None
        batch = self._sampled(dp.sample())
        if batch is not None:
            photo, sketch, real = batch
            with torch.no_grad():
                fake = self.generator(real.photo_taps)
                fake_grams = [gram_matrix(t) for t in self.encoder(fake)]
            d_inputs = [real.sketch_grams, fake_grams, photo, sketch, fake]
        out = dp.step(self.discriminator, self.opt_d, self.objective.discriminator_pair_loss, d_inputs)
        batch = self._sampled(dp.sample())
        g_inputs = None if batch is None else [*batch[2].as_inputs(), batch[1], batch[0]]
        return out | dp.step(self.generator, self.opt_g, self.objective.generator_pair_loss, g_inputs)

    def _sampled(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RealFeatures] | None:
        """A Poisson sample's (randomly flipped) pairs and features; None for an empty sample."""
        if len(indices) == 0:
            return None
        return self.features.batch(indices, torch.rand(len(indices)) < 0.5)

    def train_epochs(self, epochs: int, tag: str = "") -> dict[str, float]:
        """Train `epochs` epochs; returns the mean of each loss term and logs them to TensorBoard."""
        self.generator.train()
        self.discriminator.train()
        if self.ditto is not None:
            self.ditto.generator.train()
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(epochs):
            if self.record_dp is not None:
                self.record_dp.charge_epoch()  # before it runs: refused epochs cost nothing
            batches = list(self.batches()) if self.record_dp is None else range(self.record_dp.steps_per_epoch)
            bar = tqdm(batches, desc=f"{self.studio.name}{tag} epoch {self.epoch + 1}", leave=False)
            epoch_totals: dict[str, float] = {}
            for batch in bar:
                if self.record_dp is None:
                    photo, sketch, real = self.features.batch(*batch)
                    losses = self.step(photo, sketch, real, unpaired=self.unpaired_batch())
                    if self.public_targets is not None:
                        losses |= self.public_style_step(real.photo_taps, *batch)
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
            self._writer = SummaryWriter(str(self.folder.tensorboard))
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
        prefix = "val" if self.val is not self.dataset else "train"
        return {f"{prefix}_l1": float((fake - sketch).abs().mean()),
                f"{prefix}_gram": float(gram_loss(real_g, fake_g).cpu()),
                f"{prefix}_ink_iou": ink_iou(fake, sketch)}

    def save_grid(self, path: str | Path) -> Path:
        """One row per fixed pair: photo | generated | real sketch (run folders: ``self.folder.grid(label)``)."""
        photo, sketch = self._fixed
        fake = self.generate(photo)
        rows = torch.stack([photo, fake.expand(-1, 3, -1, -1), sketch.expand(-1, 3, -1, -1)], 1).flatten(0, 1)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from torchvision.utils import save_image  # torchvision costs ~160 MB per process; only grids need it

        save_image((rows + 1) / 2, path, nrow=3, padding=2, pad_value=1.0)
        return path

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Everything needed to resume or to sketch: G (with AdaIN_SD statistics), D, optimisers, config."""
        return self.folder.save_checkpoint({
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "metadata": self.metadata,
            "torch_rng": torch.get_rng_state(),
            # fedgai_ditto: the shared generator, its optimiser and anchor ("generator" is the personal one)
            **({"ditto": self.ditto.state_dict()} if self.ditto is not None else {}),
        }, Path(path) if path else None)

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default: the run folder's checkpoint)."""
        path = Path(path) if path else self.folder.checkpoint
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
        if self.ditto is not None:
            self.ditto.load_state_dict(state["ditto"])
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ what crosses the wire (sharing.py)
    def shared_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the entries this studio shares in its federation mode."""
        return shared_state(self.wire_networks(), self.cfg.fed.mode, per_sample_networks(self.cfg))

    def load_shared(self, params: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Load received global entries; exactly the entries this studio shares are accepted. fedgai_ditto: they
        go into the shared generator, which becomes the personal generator's new anchor."""
        load_shared(self.wire_networks(), params, self.cfg.fed.mode, per_sample_networks(self.cfg))
        if self.ditto is not None:
            self.ditto.anchor_to_shared()

    def wire_networks(self) -> dict[str, torch.nn.Module]:
        """The networks whose entries may cross the wire: in fedgai_ditto the shared generator, never the
        personal one."""
        generator = self.generator if self.ditto is None else self.ditto.generator
        return {"generator": generator, "discriminator": self.discriminator}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
