"""A studio's local GAN training: the same trainer runs stand-alone (`fedgai train-local`) and inside
an NVFlare client site, which only swaps the discriminator weights between rounds."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fedgai.config import FedgaiConfig
from fedgai.data import PhotoDataset, SketchPairDataset, load_studio
from fedgai.data.split import StudioSplit, run_split
from fedgai.data.studio import Studio
from fedgai.device import amp_dtype, resolve_device
from fedgai.features import Feature, TrainStep, Updates
from fedgai.features.adain_sampling import AdainSampling
from fedgai.features.ditto import Ditto
from fedgai.features.public_mix import PublicMix
from fedgai.features.public_styles import PublicStyles, public_style_targets
from fedgai.features.record_dp import PrivateUpdates, record_level_dp
from fedgai.features.unpaired import UnpairedPhotos, unpaired_fakes
from fedgai.ink import ink_iou
from fedgai.layout import METADATA
from fedgai.losses import ClipStatus, gram_loss, load_clip
from fedgai.models import build_gan, gram_matrix, per_sample_networks
from fedgai.modes import mode as fed_mode
from fedgai.objective import Fakes, GanInputs, PairBatch, RealFeatures, Unpaired, build_objective
from fedgai.pair_features import PairFeatureCache
from fedgai.prior import load_prior
from fedgai.privacy.record import RecordLevelDP
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
    """Trains one studio's G and D: data, networks, optimisers and the one loop (D step, G step, then the optional
    features' hooks: fedgai/features/). Losses from objective.Objective; files written through rundir.RunFolder."""

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
        self.split, self.dataset, self.val, self.unpaired = _studio_data(cfg, self.studio, self.run_dir)
        self.num_samples = len(self.dataset)
        gan = build_gan(cfg)
        self.encoder = gan.encoder.to(self.device)
        self.generator = gan.generator.to(self.device)
        self.discriminator = gan.discriminator.to(self.device)
        # train.prior: G and D start from the public prior (prior.py); AdaIN_SD's statistics stay the studio's.
        self.prior = load_prior(cfg, self.encoder.name, self.generator, self.discriminator)
        clip, clip_status = load_clip(cfg.loss)
        self.clip = None if clip is None else clip.to(self.device)
        self.objective = build_objective(cfg, self.encoder, self.discriminator, self.clip)
        self.features = PairFeatureCache(self.dataset, self.objective.real_features, self.device, self._autocast)
        self.opt_g = make_optimizer(cfg, self.generator.parameters(), cfg.train.lr_g)
        self.opt_d = make_optimizer(cfg, _critic_parameters(self.discriminator, t.freeze_d), cfg.train.lr_d)
        self.epoch = 0
        self.adain_sampling = AdainSampling(t.adain_sample_p, self.encoder, self.device)
        self.unpaired_photos = UnpairedPhotos(self.unpaired, t.unpaired_batch)
        # train.public_mix: public line-style pairs in every batch (its own random stream, features/public_mix.py).
        self.public_mix = PublicMix(t.public_mix, cfg.model.image_size, t.seed, self.objective.real_features,
                                    self.device, self._autocast) if t.public_mix else None
        self.record_dp, self.updates = _schedule(self)
        self.metadata = _run_metadata(self, studio_dir, clip_status)
        self._writer: SummaryWriter | None = None
        self._fixed = _first_pairs(self.val, t.grid_size)  # what grids show
        self.fit_sketch_statistics()
        # fed.mode fedgai_ditto: the shared generator (features/ditto.py); self.generator is the personal one.
        self.ditto = _ditto(self) if fed_mode(cfg.fed.mode).personal_generator else None
        # The generator D trains with, whose entries cross the wire: Ditto's shared one, else the studio's.
        self.gan_generator = self.ditto.generator if self.ditto else self.generator
        self.gan_opt = self.ditto.opt if self.ditto else self.opt_g
        # train.public_styles: the studio's own training photos as public edge styles, one more G update a step.
        self.public_styles = _public_styles(self) if t.public_styles else None
        self.optional: list[Feature] = [f for f in (self.ditto, self.public_styles) if f is not None]
        self.folder.write_json(METADATA, self.metadata)

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

    def unpaired_batch(self) -> torch.Tensor | None:
        """train.unpaired_batch random unpaired photos (None when unused; features/unpaired.py)."""
        return self.unpaired_photos.draw()

    @torch.no_grad()
    def fit_sketch_statistics(self) -> None:
        """AdaIN_SD's per-tap statistics over this studio's whole sketch set (they never leave the site);
        under record-level DP, released to G through the Gaussian mechanism (features/record_dp.py)."""
        sketches = [self.dataset[i][1] for i in range(self.num_samples)]
        taps = [self.encoder(torch.stack(sketches[i : i + 32]).to(self.device))
                for i in range(0, len(sketches), 32)]
        self.updates.fit_statistics(self.generator.adain, taps, sketches)

    def _real_features(self, photo: torch.Tensor, sketch: torch.Tensor) -> RealFeatures:
        with self._autocast():
            return self.objective.real_features(photo, sketch)

    def _generate_unpaired(self, photo: torch.Tensor, generator: torch.nn.Module | None = None) -> Unpaired:
        """``generator``'s (default: the studio's) sketches of unpaired photos, for the critics' terms."""
        return unpaired_fakes(photo, generator or self.generator, self.encoder)

    def _draw(self, generator: torch.nn.Module, batch: PairBatch, unpaired: torch.Tensor | None,
              public: int = 0) -> GanInputs:
        """``generator``'s sketches of the batch (AdaIN_SD statistics per features/adain_sampling.py; the last
        ``public`` pairs, train.public_mix's, in their own) and of the unpaired photos: what D's and G's losses read."""
        stats = self.adain_sampling.stats(generator, batch.sketch, public)
        with record_function("G forward"):
            fake = generator(batch.real.photo_taps, stats)
        with record_function("encoder: generated sketch"):
            fakes = Fakes.of(fake, self.encoder(fake))
        unpaired_fakes = None if unpaired is None else self._generate_unpaired(unpaired, generator)
        return GanInputs(batch, fakes, unpaired_fakes, generator.adain.stats() if stats is None else stats)

    def generator_losses(self, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's unweighted loss terms on one batch, with their graphs: for analyses of what drives G (which
        term carries how much of its gradient) without a training step."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        batch = PairBatch(photo, sketch, self._real_features(photo, sketch))
        fake = self.generator(batch.real.photo_taps)
        return self.objective.generator_loss_terms(GanInputs(batch, Fakes.of(fake, self.encoder(fake))))

    # ------------------------------------------------------------------ training
    def step(self, photo: torch.Tensor, sketch: torch.Tensor, real: RealFeatures | None = None,
             unpaired: torch.Tensor | None = None, pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
             public: int = 0) -> dict[str, float]:
        """One D update on G's sketches of the batch (moved to the trainer's device), then one G update through
        the updated D, then the features' after-step updates. ``real``: the batch's encoder features when the
        caller has them (the cache); ``unpaired``: photos without a sketch, judged by the critics alongside the
        paired fakes; ``pairs``: the batch's (indices, flips) in the epoch's schedule (public styles need them);
        ``public``: how many of the batch's last pairs are train.public_mix's (drawn in their own statistics).
        fedgai_ditto: D and the shared generator take this step, the personal generator its own after it."""
        photo, sketch = photo.to(self.device), sketch.to(self.device)
        unpaired = None if unpaired is None else unpaired.to(self.device)
        batch = PairBatch(photo, sketch, self._real_features(photo, sketch) if real is None else real)
        with self._autocast():
            inputs = self._draw(self.gan_generator, batch, unpaired, public)
            with record_function("D loss (Gram + structure critic)"):
                loss_d, decorr = self.objective.discriminator_loss(inputs.detached())
        with record_function("D backward + optimiser"):
            _backward(self.opt_d, loss_d)
            self.opt_d.step()
        with self._autocast(), record_function("G loss terms"):
            terms = self.objective.generator_loss_terms(inputs)
            loss_g = self.objective.weighted(terms)
        with record_function("G backward"):  # labels benchmarks/train_step.py reads
            _backward(self.gan_opt, loss_g)
        with record_function("G optimiser"):
            self.gan_opt.step()
        out = {name: value.item() for name, value in terms.items()}
        out.update(loss_g=loss_g.item(), loss_d=loss_d.item(), feddecorr=decorr.item())
        for feature in self.optional:
            out |= feature.after_step(TrainStep(batch, unpaired, pairs))
        return out

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the forward passes on a GPU that has it (train.amp); a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def train_steps(self, steps: int, tag: str = "") -> dict[str, float]:
        """Train ``steps`` steps of the epoch schedule (train.round_steps), starting a new shuffled epoch where one
        runs out; the mean of each loss term (logged to TensorBoard per epoch)."""
        return self._train(tag, steps=steps)

    def train_epochs(self, epochs: int, tag: str = "") -> dict[str, float]:
        """Train ``epochs`` whole epochs; the mean of each loss term (logged to TensorBoard per epoch)."""
        return self._train(tag, epochs=epochs)

    def _train(self, tag: str, *, steps: int | None = None, epochs: int = 0) -> dict[str, float]:
        """The one training loop: whole epochs, or ``steps`` steps cut from as many epochs as they need."""
        self._train_mode()
        totals: Counter[str] = Counter()
        done = started = 0
        with tqdm(total=steps, desc=f"{self.studio.name}{tag}", unit="step", leave=False) as bar:
            while (done < steps) if steps is not None else (started < epochs):
                items = self.updates.epoch()
                if steps is not None and not items:
                    raise ValueError(f"studio {self.studio.name} has no training batch to step on")
                items = items if steps is None else items[: steps - done]
                epoch_totals: Counter[str] = Counter()
                for item in items:
                    losses = self.updates.step(item)
                    epoch_totals.update(losses)
                    bar.update()
                    bar.set_postfix(g=f"{losses.get('loss_g', 0):.3f}", d=f"{losses.get('loss_d', 0):.3f}")
                done, started, self.epoch = done + len(items), started + 1, self.epoch + 1
                for k, v in epoch_totals.items():
                    self.writer.add_scalar(f"loss/{k}", v / max(len(items), 1), self.epoch)
                totals.update(epoch_totals)
        return {k: v / max(done, 1) for k, v in totals.items()} | self.updates.summary()

    def _train_mode(self) -> None:
        for part in (self.generator, self.discriminator, *self.optional):
            part.train()

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
        prefix = "val" if self.val is not self.dataset else "train"
        return held_out_quality(self.generate(torch.stack(photos)), torch.stack(sketches), self.encoder, prefix)

    def save_grid(self, path: str | Path) -> Path:
        """One row per fixed pair: photo | generated | real sketch (run folders: ``self.folder.grid(label)``)."""
        photo, sketch = self._fixed
        return write_grid(path, photo, self.generate(photo), sketch)

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Everything needed to resume or to sketch: G (with AdaIN_SD statistics), D, optimisers, config."""
        return self.folder.save_checkpoint({
            **{name: part.state_dict() for name, part in _trained_parts(self).items()},
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "metadata": self.metadata,
            "torch_rng": torch.get_rng_state(),
            **{key: value for feature in self.optional for key, value in feature.state_to_save().items()},
        }, Path(path) if path else None)

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Continue from ``path`` (default: the run folder's checkpoint)."""
        path = Path(path) if path else self.folder.checkpoint
        # Tensors and plain containers only; CPU first because the RNG state must stay a CPU tensor.
        state = torch.load(path, map_location="cpu", weights_only=True)
        _check_encoder(state, path, self.encoder.name)
        for name, part in _trained_parts(self).items():
            part.load_state_dict(state[name])
        self.epoch = state["epoch"]
        for feature in self.optional:
            feature.load_state(state)
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ what crosses the wire (sharing.py)
    def shared_state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies of the entries this studio shares in its federation mode."""
        return shared_state(self.wire_networks(), self.cfg.fed.mode, per_sample_networks(self.cfg))

    def load_shared(self, params: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Load received global entries; exactly the entries this studio shares are accepted. fedgai_ditto: they
        go into the shared generator, which becomes the personal generator's new anchor."""
        load_shared(self.wire_networks(), params, self.cfg.fed.mode, per_sample_networks(self.cfg))
        for feature in self.optional:
            feature.received_global()

    def wire_networks(self) -> dict[str, torch.nn.Module]:
        """The networks whose entries may cross the wire (fedgai_ditto: the shared generator, never the personal)."""
        return {"generator": self.gan_generator, "discriminator": self.discriminator}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _studio_data(cfg: FedgaiConfig, studio: Studio, run_dir: Path
                 ) -> tuple[StudioSplit, SketchPairDataset, SketchPairDataset, PhotoDataset | None]:
    """The run's split and its pairs. Training pairs unaugmented: the loop draws each batch's flips itself, so
    that the encoder's view of every (pair, flip) can be cached. Held-out (val) pairs for grids and the per-round
    quality score (the train pairs when the split has no val side; the test side is never touched here). Photos
    without a sketch, for the critics' adversarial terms only (None unless train.unpaired_batch > 0)."""
    t, size = cfg.train, cfg.model.image_size
    split = run_split(studio, run_dir, t.split_seed, t.val_fraction, t.test_fraction)
    pairs = SketchPairDataset(studio, size, t.max_pairs, stems=split.train)
    val = SketchPairDataset(studio, size, stems=split.val) if split.val else pairs
    unpaired = PhotoDataset(studio.unpaired, size) if t.unpaired_batch and studio.unpaired else None
    return split, pairs, val, unpaired


def _first_pairs(pairs: SketchPairDataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` pairs (at most all), stacked: (photos, sketches)."""
    items = [pairs[i] for i in range(min(count, len(pairs)))]
    return torch.stack([p for p, _ in items]), torch.stack([s for _, s in items])


def _run_metadata(trainer: StudioTrainer, studio_dir: str | Path, clip_status: ClipStatus) -> dict[str, Any]:
    """What metadata.json records of a run: the studio, the networks, the privacy and the device."""
    return {
        "studio": trainer.studio.name,
        "studio_dir": str(Path(studio_dir).resolve()),
        "num_samples": trainer.num_samples,
        "unpaired_photos": len(trainer.unpaired) if trainer.unpaired is not None else 0,
        "encoder": trainer.encoder.name,
        "encoder_pretrained": trainer.encoder.pretrained,
        "clip_enabled": clip_status.enabled,
        "clip_status": clip_status.reason,
        "dp": trainer.cfg.privacy.dp,
        "prior": str(trainer.prior) if trainer.prior else None,
        **trainer.updates.metadata(),
        "device": str(trainer.device),
        "amp": "bf16" if trainer.amp else "off",
        "split": {side: len(getattr(trainer.split, side)) for side in ("train", "val", "test")},
    }


def _schedule(trainer: StudioTrainer) -> tuple[RecordLevelDP | None, Updates]:
    """The schedule of D and G updates: batched, or per pair under record-level DP (returned too), where every
    pair-dependent update of G and D (and AdaIN_SD's statistics) is private."""
    if trainer.cfg.privacy.dp != "record":
        return None, BatchUpdates(trainer)
    dp, details = record_level_dp(trainer.cfg, trainer.num_samples, trainer.generator, trainer.discriminator,
                                  trainer.folder.dp_ledger, trainer.studio.name)
    return dp, PrivateUpdates(dp, details, trainer.features, trainer.objective, trainer.generator, trainer.opt_g,
                              trainer.opt_d)


def _ditto(trainer: StudioTrainer) -> Ditto:
    """Ditto: a shared generator copied from the personal one after the prior and AdaIN_SD's fit, pulling exactly
    the entries it shares."""
    cfg = trainer.cfg
    pulled = network_shared_keys(trainer.generator, "generator", cfg.fed.mode, per_sample_networks(cfg))
    return Ditto(trainer.generator, trainer.opt_g, pulled, cfg.fed.ditto_lambda,
                 lambda params: make_optimizer(cfg, params, cfg.train.lr_g), trainer.objective, trainer._draw,
                 trainer._autocast)


def _public_styles(trainer: StudioTrainer) -> PublicStyles:
    """train.public_styles: every training photo in every public edge style, one more G update a step."""
    return PublicStyles(public_style_targets(trainer.dataset, trainer.num_samples), trainer.generator,
                        trainer.encoder, trainer.opt_g, trainer.cfg.loss, trainer._autocast, trainer.device)


@torch.no_grad()
def held_out_quality(fake: torch.Tensor, sketch: torch.Tensor, encoder: torch.nn.Module, prefix: str
                     ) -> dict[str, float]:
    """L1 of G's sketches to the real ones, Gram (style) distance and ink IoU of the strokes, named
    ``{prefix}_...``."""
    device = next(encoder.parameters()).device
    real_g = [gram_matrix(t) for t in encoder(sketch.to(device))]
    fake_g = [gram_matrix(t) for t in encoder(fake.to(device))]
    return {f"{prefix}_l1": float((fake - sketch).abs().mean()),
            f"{prefix}_gram": float(gram_loss(real_g, fake_g).cpu()),
            f"{prefix}_ink_iou": ink_iou(fake, sketch)}


def write_grid(path: str | Path, photo: torch.Tensor, fake: torch.Tensor, sketch: torch.Tensor) -> Path:
    """One row per pair: photo | generated | real sketch."""
    rows = torch.stack([photo, fake.expand(-1, 3, -1, -1), sketch.expand(-1, 3, -1, -1)], 1).flatten(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image  # torchvision costs ~160 MB per process; only grids need it

    save_image((rows + 1) / 2, path, nrow=3, padding=2, pad_value=1.0)
    return path


def _trained_parts(trainer: StudioTrainer) -> dict[str, torch.nn.Module | torch.optim.Optimizer]:
    """What a checkpoint holds the state of, by its key (the features add their own)."""
    return {"generator": trainer.generator, "discriminator": trainer.discriminator, "opt_g": trainer.opt_g,
            "opt_d": trainer.opt_d}


def _check_encoder(state: Mapping[str, Any], path: Path, encoder: str) -> None:
    """A checkpoint continues only a run in the same feature space (its encoder)."""
    if state["metadata"]["encoder"] != encoder:
        raise ValueError(f"checkpoint {path} was trained with encoder {state['metadata']['encoder']}, "
                         f"this run uses {encoder}")


def _critic_parameters(critic: torch.nn.Module, frozen: int) -> list[torch.nn.Parameter]:
    """What D's optimiser trains: all of it, or under train.freeze_d (FreezeD, styled critic) all but its first
    ``frozen`` convolutions, which keep their starting (prior) values and get no gradient."""
    return critic.freeze(frozen) if frozen else list(critic.parameters())


def _backward(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """``loss``'s gradient for ``optimizer``'s parameters, fresh: the previous step's are dropped first."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()


class BatchUpdates:
    """The ordinary schedule (features.Updates): each epoch the shuffled batches of pairs, one
    ``StudioTrainer.step`` each with that step's unpaired photos."""

    def __init__(self, trainer: StudioTrainer):
        self.trainer = trainer

    def epoch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(self.trainer.batches())

    def step(self, item: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        batch, mix = self.trainer.features.batch(*item), self.trainer.public_mix
        photo, sketch, real = mix.join(batch) if mix else batch
        return self.trainer.step(photo, sketch, real, unpaired=self.trainer.unpaired_batch(), pairs=item,
                                 public=mix.count if mix else 0)

    def fit_statistics(self, adain: torch.nn.Module, taps: list[list[torch.Tensor]],
                       sketches: list[torch.Tensor]) -> None:
        adain.fit(taps)

    def metadata(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, float]:
        return {}
