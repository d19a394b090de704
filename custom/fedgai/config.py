"""The one typed place for every setting: jobs, CLI and tests read these defaults.

Profiles:
- ``paper``: the FedGAI schedule (11 rounds x 11 local epochs, 256 px) - a GPU-site job.
- ``quick``: the demo federation sized for a 2-core CPU (about 9 minutes for 8 studios).
- ``test``: tiny images and a few steps, for the test suite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# Each choice list is written once, as the field's type; the tuples (for CLIs and messages) derive from it.
EncoderName = Literal["auto", "vgg16", "efficientnet-lite0", "random"]
FedMode = Literal["fedgai", "local", "fedavg_full", "fedavg_bn", "fedbn", "fedgai_struct", "fedgai_ditto",
                  "fedgai_style", "fedgai_style_code"]
GeneratorKind = Literal["mrfm", "styled"]
DpMode = Literal["none", "client", "record"]
RecordTrainable = Literal["all", "style_head"]
ENCODERS: tuple[str, ...] = typing.get_args(EncoderName)
FED_MODES: tuple[str, ...] = typing.get_args(FedMode)
DP_MODES: tuple[str, ...] = typing.get_args(DpMode)
RECORD_TRAINABLE: tuple[str, ...] = typing.get_args(RecordTrainable)
GENERATOR_KINDS: tuple[str, ...] = typing.get_args(GeneratorKind)


# The aggregators' robustness rule, here (not in federated/aggregation.py, which applies it) so that the config
# validates fed.min_clients without importing the federation code.
def robust_min_studios(aggregator: str, trim_fraction: float) -> int | None:
    """The fewest studios at which ``aggregator`` sets one hostile studio's values aside; None if it never does.

    fedavg weighs every studio by design; the median of two values and a trimmed mean that cuts nothing are
    the plain mean. From 3 studios on, the median and a trimmed mean with trim_fraction > 0 drop one studio's
    value at each end of every coordinate.
    """
    if aggregator == "fedavg" or (aggregator == "trimmed_mean" and trim_fraction == 0):
        return None
    return 3


def robust_count_problem(aggregator: str, trim_fraction: float, studios: int) -> str | None:
    """Why ``aggregator`` cannot be run as configured over ``studios`` studios, or None."""
    if aggregator == "fedavg":
        return None
    needed = robust_min_studios(aggregator, trim_fraction)
    if needed is None:
        return (f"fed.aggregator {aggregator} with fed.trim_fraction 0 cuts nothing: it is the plain mean; "
                "use fedavg, or a trim_fraction > 0")
    if studios < needed:
        return (f"fed.aggregator {aggregator} sets one hostile studio's values aside only with {needed} or more "
                f"studios, got {studios}: with fewer it is the plain mean (use fedavg and trust every studio, or "
                "federate more studios)")
    return None



class ConfigError(ValueError):
    """A setting is missing, unknown or out of range."""


@dataclass
class ModelConfig:
    encoder: EncoderName = "auto"
    # Local VGG-16 ImageNet weights (torchvision's vgg16-397923af.pth). None = torch hub cache only.
    vgg_weights: str | None = None
    image_size: int = 256
    # Channels of the first (coarsest) decoder stage; each MRFM block halves them.
    decoder_width: int = 256
    # "mrfm" (the paper's multi-resolution fusion) or "plain" (upsampling only: the MRFM ablation).
    decoder: Literal["mrfm", "plain"] = "mrfm"
    # Gram matrices are pooled to this many rows/cols before the discriminator (HAIGEN: 64 x 196).
    gram_rows: int = 64
    gram_cols: int = 196
    disc_width: int = 128
    # Width of a photo-conditioned PatchGAN critic added to D (models.PatchCritic); 0 = the paper's Gram
    # critic only. It is shared with D, so what studios learn about where lines go reaches every generator.
    structure_critic: int = 0
    # "mrfm": the paper's generator (AdaIN_SD on the encoder taps) with the Gram discriminator; "styled": the
    # style-conditioned renderer (models.StyledSketchGenerator: a style code from AdaIN_SD's statistics modulates
    # every decoder stage) with the per-style projection critic (issue 27; fed.mode fedgai_style shares it).
    # The styled renderer's widths: decoder_width for G, disc_width for its critic.
    generator: GeneratorKind = "mrfm"
    style_code: int = 64

    def validate(self) -> None:
        _choice("model.encoder", self.encoder, ENCODERS)
        _choice("model.decoder", self.decoder, ("mrfm", "plain"))
        _choice("model.generator", self.generator, GENERATOR_KINDS)
        _positive("model.style_code", self.style_code)
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"model.image_size must be a multiple of 32 and >= 32, got {self.image_size}")
        _positive("model.decoder_width", self.decoder_width)
        _positive("model.disc_width", self.disc_width)
        if self.structure_critic < 0:
            raise ConfigError(f"model.structure_critic must be >= 0 (0 = off), got {self.structure_critic}")
        if self.gram_cols != int(self.gram_cols**0.5) ** 2:
            raise ConfigError(f"model.gram_cols must be a square number, got {self.gram_cols}")


@dataclass
class LossConfig:
    # Relative Gram MSE (see losses.gram_loss), so not HAIGEN's 100 on raw Grams.
    gram: float = 10.0
    adversarial: float = 1.0
    clip: float = 1.0
    # (1 - cos) of pooled deepest encoder features, generated vs real sketch (HAIGEN's content term).
    content: float = 0.5
    # L1 to the paired sketch: a fedgai addition (pairs exist); 0 gives the paper's loss exactly.
    pixel_l1: float = 10.0
    feddecorr: float = 0.1
    # L1 between the critic's features of generated and real sketch (losses.feature_matching_loss): a path
    # from the shared D into each generator that is as dense as the Gram term. 0 = the paper's loss.
    feature_matching: float = 0.0
    # The structure critic's hinge term for G (used when model.structure_critic > 0).
    structure: float = 1.0
    # model.generator styled: AdaIN's style loss on the re-encoded output (losses.statistics_consistency), which
    # makes the renderer draw in the statistics it was given.
    statistics: float = 1.0
    clip_model: str = "ViT-B-16"
    # open_clip pretrained tag (e.g. "openai") or a local checkpoint path; "none" disables the term.
    clip_pretrained: str = "openai"

    def validate(self) -> None:
        weights = ("gram", "adversarial", "clip", "content", "pixel_l1", "feddecorr", "feature_matching", "structure")
        for name in weights:
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TrainConfig:
    batch_size: int = 8
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    epochs: int = 11
    seed: int = 0
    # Cap on training pairs used per studio (None = all); lets the quick profile fit a CPU.
    max_pairs: int | None = None
    # Held-out pairs per studio (data.split): test pairs are never trained on, val pairs give the
    # per-round held-out metric. The split depends only on split_seed and the file stems.
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    # torch CPU threads (None = all cores).
    num_threads: int | None = None
    grid_size: int = 4
    # Where to train: "auto" = CUDA when present, else CPU; or "cpu", "cuda", "cuda:N".
    device: str = "auto"
    # bf16 autocast of the forward passes: "auto" = on where the hardware computes bf16 natively (a CUDA GPU with
    # bf16; a CPU with AVX512-BF16 or AMX: ~1.6x faster steps, same held-out quality - docs/benchmarks.md); "off" =
    # float32; "bf16" = always. (No fp16: the 256 px Gram matrices overflow its range.)
    amp: Literal["auto", "off", "bf16"] = "auto"
    # Unpaired photos (photos-unpaired/, or photos without a sketch) per training step, drawn at random with a
    # flip; they enter only the critics' adversarial terms on G(photo), never a paired term. 0 = not used.
    unpaired_batch: int = 0
    # Start G and D from a public prior (prior.py: demo garments with edge-detector sketches, no studio's style):
    # "none", "auto" (this architecture's cached prior: `fedgai prior build`, `make prior`) or a prior file's path.
    prior: str = "none"
    # Style conditioning, so that G draws in the AdaIN_SD statistics it is given (fusion, issue 15 §3); with one
    # constant set of statistics G learns to ignore them. adain_sample_p: probability that a training pair's
    # sketch is generated with that real sketch's own statistics instead of the set's. public_styles: every step
    # also trains G on the public edge styles (data/sketchify.py) of the studio's own training photos, each drawn
    # with its target's statistics (paired terms only; D never sees them). No other studio's data either way.
    adain_sample_p: float = 0.0
    public_styles: bool = False
    # Local work per federated round: round_steps > 0 trains that many steps (batches) instead of train.epochs
    # epochs, so a 10-pair studio trains as long as a 200-pair one. head_steps: in a mode whose studios keep a head
    # (modes.Mode.kept, fedgai_style), the steps that first fit the head with the shared body frozen (FedRep).
    round_steps: int = 0
    head_steps: int = 0
    # The styled renderer's critic (model.generator styled): FreezeD keeps its first freeze_d convolutions at their
    # starting (prior) values; diff_augment applies DiffAugment's colour/translation/cutout to every critic input.
    freeze_d: int = 0
    diff_augment: bool = False
    # The styled renderer: public line-style pairs (the prior's procedural styles, made at the studio; no studio's
    # data) added to every step's batch, each drawn in its own sketch's statistics, so that every local step keeps
    # the renderer following many codes instead of drifting to the studio's one (0 = off; features/public_mix.py).
    public_mix: int = 0

    def validate(self) -> None:
        _positive("train.batch_size", self.batch_size)
        for name in ("round_steps", "head_steps", "freeze_d", "public_mix"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not 0 <= self.adain_sample_p <= 1:
            raise ConfigError(f"train.adain_sample_p must be in [0, 1] (0 = always the set's statistics), got "
                              f"{self.adain_sample_p}")
        if self.unpaired_batch < 0:
            raise ConfigError(f"train.unpaired_batch must be >= 0 (0 = unpaired photos unused), got "
                              f"{self.unpaired_batch}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _choice("train.amp", self.amp, ("auto", "off", "bf16"))
        _positive("train.epochs", self.epochs)
        _choice("train.optimizer", self.optimizer, ("adam", "sgd"))
        if self.lr_g <= 0 or self.lr_d <= 0:
            raise ConfigError("train.lr_g and train.lr_d must be > 0")
        if self.max_pairs is not None:
            _positive("train.max_pairs", self.max_pairs)
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 0.5:
                raise ConfigError(f"train.{name} must be in [0, 0.5), got {getattr(self, name)}")


@dataclass
class FedConfig:
    rounds: int = 11
    mode: FedMode = "fedgai"
    min_clients: int = 1
    # Seconds the server waits for a round's results before aggregating what arrived.
    round_timeout: int = 7200
    # Once min_clients studios have answered, wait at most this long for the rest (None = wait for all,
    # up to round_timeout): a studio that vanishes without an error then costs one grace period, not a timeout.
    straggler_grace: int | None = None
    # Contributions whose update L2 norm exceeds this are dropped (None = no bound).
    max_update_norm: float | None = 1000.0
    # Updates above this multiple of the round's median update norm are clipped to it (None = off).
    norm_bound_factor: float | None = 3.0
    # A studio's aggregation weight (its self-reported pair count) is capped here, per site if listed in
    # site_max_samples, at the count it first reported, and at max_weight_factor x the round's median weight
    # (1: no studio counts for more than the typical one; see docs/privacy.md "Robust aggregation").
    max_samples_per_site: int | None = 100_000
    site_max_samples: dict[str, int] = field(default_factory=dict)
    max_weight_factor: float | None = 1.0
    # What a studio's update weighs: "samples" (its pair count, FedAvg's) or "uniform" (1 each: every studio's
    # style counts the same, as the §0 falsifier's style-uniform batches did, and no pair count leaves the studio;
    # with train.round_steps every update is the same number of steps anyway); "auto": uniform in the styled modes
    # (modes.Mode.equal_weights: measured to pay the small studios, docs/results.md), samples otherwise. Under DP
    # every weight is 1.
    weighting: Literal["auto", "samples", "uniform"] = "auto"
    # fedavg (sample-weighted mean), trimmed_mean (coordinate-wise, trim_fraction cut at each end) or median.
    aggregator: Literal["fedavg", "trimmed_mean", "median"] = "fedavg"
    trim_fraction: float = 0.2
    # Continue a saved global model: never; same_job (only this job's own state, after a server restart);
    # same_config (also a resubmission of the same job name, submitter and full configuration).
    resume: Literal["never", "same_job", "same_config"] = "same_config"
    # fedgai_ditto only: strength of the proximal pull (lambda/2)*||personal G - last received shared G||^2 on each
    # studio's personal generator (features/ditto.py). 0 = the personal G trains as if alone; large = it follows the
    # shared G. Measured at 0.1, 1 and 10 (docs/results.md "Ditto-style personal generator"): none pays; 1 is the
    # value that left the large studios' FD unchanged, with the tightest spread.
    ditto_lambda: float = 1.0

    def validate(self) -> None:
        _positive("fed.rounds", self.rounds)
        _choice("fed.mode", self.mode, FED_MODES)
        if not math.isfinite(self.ditto_lambda) or self.ditto_lambda < 0:
            raise ConfigError(f"fed.ditto_lambda must be a finite number >= 0 (0 = no pull towards the shared "
                              f"generator), got {self.ditto_lambda}")
        _positive("fed.min_clients", self.min_clients)
        _positive("fed.round_timeout", self.round_timeout)
        if self.straggler_grace is not None and self.straggler_grace < 0:
            raise ConfigError(f"fed.straggler_grace must be >= 0, got {self.straggler_grace}")
        _choice("fed.aggregator", self.aggregator, ("fedavg", "trimmed_mean", "median"))
        _choice("fed.weighting", self.weighting, ("auto", "samples", "uniform"))
        _choice("fed.resume", self.resume, ("never", "same_job", "same_config"))
        for name in ("norm_bound_factor", "max_weight_factor"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"fed.{name} must be >= 1 (or null to disable), got {getattr(self, name)}")
        if self.max_samples_per_site is not None:
            _positive("fed.max_samples_per_site", self.max_samples_per_site)
        for site, cap in self.site_max_samples.items():
            _positive(f"fed.site_max_samples.{site}", cap)
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError(f"fed.trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        # A round aggregates as few as fed.min_clients studios: a robust aggregator must be robust with that many.
        problem = robust_count_problem(self.aggregator, self.trim_fraction, self.min_clients)
        if problem:
            raise ConfigError(f"{problem}; fed.min_clients ({self.min_clients}) is the fewest studios a round may "
                              "aggregate: raise it, or use fedavg")


@dataclass
class PrivacyConfig:
    dp: DpMode = "none"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: Literal["rdp", "prv"] = "rdp"
    he: bool = False
    # Record-level DP only: the one Gaussian release of AdaIN_SD's per-sketch statistics (channel mean and
    # std of each encoder tap, minus those of a blank canvas, clipped per sketch to stats_clip_norm; see
    # privacy/record.py). 64 covers EfficientNet-Lite0 on the demo sketches (distances 53-70).
    stats_noise_multiplier: float = 5.0
    stats_clip_norm: float = 64.0
    # Record-level DP only: plan sigma, the expected batch and the steps per epoch from privacy.target_epsilon
    # over fed.rounds x train.epochs epochs (privacy/planner.py, `fedgai dp plan`) instead of taking
    # noise_multiplier and train.batch_size as set; noise_multiplier is then the lowest sigma the plan may use
    # (a site policy's minimum holds). None (default): plan whenever a target epsilon is set - unplanned, sigma 1
    # at batch 8 on 24 pairs spends 6.9 in its first epoch, so at target 8 its budget stops it after 1 of 4 epochs
    # and at 4 before any (docs/privacy.md "Turning it on"); true: always (needs the target); false: never, sigma
    # and batch as set, the target only stops the run. plan_max_batch caps the expected batch (memory of the
    # per-pair gradients), plan_min_steps is the fewest training steps the plan may choose.
    plan: bool | None = None
    plan_max_batch: int = 64
    plan_min_steps: int = 20
    # Record-level DP only: which parameters DP-SGD trains and noises; the rest stay at their start (the prior,
    # train.prior). "all", or "style_head" (G's last decoder block, upsampling stages and output head; D's heads:
    # privacy/record.py TRAINABLE). The noise's norm grows with the square root of the noised parameters.
    record_trainable: RecordTrainable = "all"

    @property
    def planned(self) -> bool:
        """Whether a record-level run takes sigma and batch from the planner: privacy.plan where set, else
        whenever privacy.target_epsilon is set. An explicit plan = false is how a run keeps its own sigma and
        batch."""
        if self.dp != "record":
            return False
        return self.target_epsilon is not None if self.plan is None else self.plan

    def validate(self) -> None:
        _choice("privacy.dp", self.dp, DP_MODES)
        _choice("privacy.record_trainable", self.record_trainable, RECORD_TRAINABLE)
        _positive("privacy.plan_max_batch", self.plan_max_batch)
        _positive("privacy.plan_min_steps", self.plan_min_steps)
        if self.plan is True and self.dp == "record" and self.target_epsilon is None:
            raise ConfigError("privacy.plan needs privacy.target_epsilon: the plan spends that budget")
        _choice("privacy.accountant", self.accountant, ("rdp", "prv"))
        if self.noise_multiplier < 0 or self.clip_norm <= 0:
            raise ConfigError("privacy.noise_multiplier must be >= 0 and privacy.clip_norm > 0")
        if self.stats_noise_multiplier < 0 or self.stats_clip_norm <= 0:
            raise ConfigError("privacy.stats_noise_multiplier must be >= 0 and privacy.stats_clip_norm > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")


@dataclass
class EdgeConfig:
    """The compressed (depthwise-separable) generator distilled from a studio's full generator."""

    # Channels of the compressed decoder's first stage (halved per stage, like model.decoder_width).
    width: int = 64
    # 60: within 10 % of the full generator on FD, SSIM and ink IoU on a trained demo studio; 20 was not
    # (ink IoU -22 %, FD +44 %; docs/benchmarks.md "A trained generator, compressed").
    epochs: int = 60
    lr: float = 2e-3
    batch_size: int = 8
    # Loss weights: L1 to the full generator's sketch (distillation), L1 to the real sketch, Gram style term.
    distill: float = 1.0
    pixel_l1: float = 0.5
    gram: float = 1.0
    # Distil the studio's compressed generator at the end of a federated job (federated/studio/client.py).
    compress_after_training: bool = False

    def validate(self) -> None:
        _positive("edge.width", self.width)
        _positive("edge.epochs", self.epochs)
        _positive("edge.batch_size", self.batch_size)
        if self.lr <= 0:
            raise ConfigError(f"edge.lr must be > 0, got {self.lr}")
        for name in ("distill", "pixel_l1", "gram"):
            if getattr(self, name) < 0:
                raise ConfigError(f"edge.{name} must be >= 0, got {getattr(self, name)}")
        if self.distill + self.pixel_l1 + self.gram == 0:
            raise ConfigError("edge.distill, edge.pixel_l1 and edge.gram cannot all be 0")


@dataclass
class EvalConfig:
    """`fedgai evaluate` settings. Not a section of FedgaiConfig: evaluation reads finished runs, whatever
    they were trained with."""

    # EfficientNet-Lite0 input side for FD/KD and the style classifier (224 = its ImageNet resolution).
    feature_size: int = 224
    # KD: mean polynomial-kernel MMD over this many random subsets of at most kid_subset_size pairs.
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    # A sketch pixel is ink where it is darker than this (0 = black, 1 = white paper).
    ink_threshold: float = 0.5
    # Studios with at most this many pairs are reported in the "small" size group.
    small_studio_pairs: int = 60
    # Real training sketches per studio that fit the studio-style classifier.
    style_pairs_per_studio: int = 64
    gallery_rows: int = 6
    batch_size: int = 16
    seed: int = 0
    # CLIP photo<->sketch similarity (open_clip tag or local checkpoint); reported "unavailable" offline.
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"
    # Inception-v3 FID/KID weights (torch-fidelity's file); None = the torch hub cache only, never downloaded.
    inception_weights: str | None = None
    # torch CPU threads (None = torch's default, all cores).
    num_threads: int | None = None

    def validate(self) -> EvalConfig:
        for name in ("feature_size", "kid_subsets", "small_studio_pairs", "style_pairs_per_studio",
                     "gallery_rows", "batch_size"):
            _positive(f"eval.{name}", getattr(self, name))
        if self.kid_subset_size < 2:
            raise ConfigError(f"eval.kid_subset_size must be >= 2, got {self.kid_subset_size}")
        if not 0 < self.ink_threshold < 1:
            raise ConfigError(f"eval.ink_threshold must be in (0, 1), got {self.ink_threshold}")
        if self.num_threads is not None:
            _positive("eval.num_threads", self.num_threads)
        return self


@dataclass
class DataConfig:
    """How studio folders are read."""

    # Follow symbolic links that lead out of a studio folder (off: each is listed as a problem).
    follow_symlinks: bool = False
    # Images declaring more pixels are refused before decoding (40 MP as float RGB is ~480 MB).
    max_megapixels: float = 40.0
    # Unpaired photos per studio in the demo studios `fedgai simulate` generates (fedgai data demo --unpaired).
    demo_unpaired: int = 0

    def validate(self) -> None:
        if self.demo_unpaired < 0:
            raise ConfigError(f"data.demo_unpaired must be >= 0, got {self.demo_unpaired}")
        if self.max_megapixels <= 0:
            raise ConfigError(f"data.max_megapixels must be > 0, got {self.max_megapixels}")

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)


@dataclass
class FedgaiConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> FedgaiConfig:
        for part in (self.model, self.loss, self.train, self.fed, self.privacy, self.edge, self.data):
            part.validate()
        if self.train.unpaired_batch and self.privacy.dp == "record":
            # Its per-pair argument (privacy/record.py) has no unit for a photo without a sketch yet.
            raise ConfigError("train.unpaired_batch > 0 is refused under record-level DP: its accounting is per "
                              "pair, and unpaired photos would reach the released D through G(photo) unaccounted "
                              "(docs/privacy.md); set train.unpaired_batch to 0 or privacy.dp to none/client")
        if (self.train.adain_sample_p or self.train.public_styles) and self.privacy.dp == "record":
            raise ConfigError("train.adain_sample_p and train.public_styles are refused under record-level DP: "
                              "one sketch's own statistics would reach G outside the per-pair accounting; set "
                              "them to 0/false or privacy.dp to none/client")
        problem = generator_sharing_problem(self.fed, self.privacy) or styled_problem(self)
        if problem:
            raise ConfigError(problem)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FedgaiConfig:
        return _build(cls, data, "").validate()

    @classmethod
    def load(cls, path: str | Path) -> FedgaiConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> FedgaiConfig:
        """Apply dotted overrides such as {"train.epochs": 2}; None values are skipped."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            if section not in data or key not in data[section]:
                raise ConfigError(f"unknown setting {dotted!r}")
            data[section][key] = value
        return FedgaiConfig.from_dict(data)


# Modes in which generator weights leave a studio although FedGAI promises they do not (opt-in, issue 15 §4).
GUARANTEE_BREAKING_MODES = ("fedgai_struct", "fedgai_ditto", "fedgai_style", "fedgai_style_code")
# The modes the styled renderer runs in, and the one mode that needs it.
STYLED_MODES = ("local", "fedgai_style", "fedgai_style_code")


def styled_problem(cfg: FedgaiConfig) -> str | None:
    """Why the styled renderer (model.generator styled) and these settings do not go together, or None.

    It trains with its own objective (objective.RendererObjective): no per-pair path for record-level DP, no
    Ditto, public-style or unpaired-photo hooks, and its critic is not the Gram discriminator the D-only modes
    share. fedgai_style and fedgai_style_code share parts of it, so they need it."""
    styled = cfg.model.generator == "styled"
    if cfg.fed.mode in STYLED_MODES[1:] and not styled:
        return f"fed.mode {cfg.fed.mode!r} shares the style-conditioned renderer: set model.generator to 'styled'"
    if cfg.train.freeze_d and not styled:
        return "train.freeze_d freezes the styled renderer's critic layers: it needs model.generator 'styled'"
    if cfg.train.public_mix and not styled:
        return "train.public_mix feeds the styled renderer public style codes: it needs model.generator 'styled'"
    if not styled:
        return None
    if cfg.fed.mode not in STYLED_MODES:
        return (f"model.generator 'styled' runs in fed.mode {' or '.join(STYLED_MODES)}, got {cfg.fed.mode!r} "
                "(the other modes share the paper's Gram discriminator)")
    if cfg.privacy.dp == "record":
        return "model.generator 'styled' has no record-level DP path yet: use privacy.dp 'client' or privacy.he"
    for name in ("unpaired_batch", "public_styles"):
        if getattr(cfg.train, name):
            return f"train.{name} is a hook of the paper's generator; model.generator 'styled' does not use it"
    if cfg.train.freeze_d > 3:
        return f"train.freeze_d must be <= 3 (the styled critic's convolutions), got {cfg.train.freeze_d}"
    return None


def generator_sharing_problem(fed: FedConfig, privacy: PrivacyConfig) -> str | None:
    """Why ``fed.mode`` may not run with these privacy settings (None: it may).

    fedgai_struct sends generator stages, fedgai_ditto its shared generator; the server must never see one studio's
    generator update, so they run only under secure aggregation (privacy.he) or client-level DP with noise
    (docs/privacy.md). fedgai_ditto is also refused under record-level DP: its shared generator's update would
    leave outside the per-pair accounting, which covers the one generator record DP trains."""
    if fed.mode not in GUARANTEE_BREAKING_MODES:
        return None
    if fed.mode == "fedgai_ditto" and privacy.dp == "record":
        return ("fed.mode 'fedgai_ditto' is refused under record-level DP: the shared generator it trains and sends "
                "is outside the per-pair accounting; use privacy.dp 'client' (with noise) or privacy.he")
    if privacy.he or (privacy.dp == "client" and privacy.noise_multiplier > 0):
        return None
    return (f"fed.mode {fed.mode!r} shares generator weights, so the server must never see one studio's update: "
            f"set privacy.he to true (the encrypted job) or privacy.dp to 'client' with privacy.noise_multiplier "
            f"> 0 (got privacy.he={privacy.he}, privacy.dp={privacy.dp!r}, "
            f"privacy.noise_multiplier={privacy.noise_multiplier})")


PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"model": {"image_size": 256}, "train": {"epochs": 11}, "fed": {"rounds": 11}},
    "quick": {
        # The structure critic and D-feature matching: the best FedGAI setting measured (docs/results.md).
        "model": {"image_size": 128, "decoder_width": 128, "structure_critic": 32},
        "loss": {"feature_matching": 10.0},
        # Unpaired photos: 200 per demo studio, 8 per step (FD-Style -16 % for small studios, alone or federated:
        # docs/results.md).
        "train": {"epochs": 3, "max_pairs": 96, "batch_size": 8, "lr_g": 1e-3, "lr_d": 2e-4, "unpaired_batch": 8},
        "data": {"demo_unpaired": 200},
        "fed": {"rounds": 5, "round_timeout": 1800, "min_clients": 2, "straggler_grace": 600},
    },
    "test": {
        "model": {"encoder": "random", "image_size": 32, "decoder_width": 32, "disc_width": 16,
                  "gram_rows": 16, "gram_cols": 16},
        "loss": {"clip_pretrained": "none"},
        # float32: tests compare exact values across code paths (bf16 has its own test).
        "train": {"epochs": 1, "max_pairs": 8, "batch_size": 4, "lr_g": 1e-3, "num_threads": 1, "amp": "off"},
        "fed": {"rounds": 2, "round_timeout": 300},
    },
}


def profile(name: str) -> FedgaiConfig:
    """The named profile's config; unknown names list the choices."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return FedgaiConfig.from_dict(PROFILES[name])


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where or 'config'}: {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, path)
        else:
            kwargs[name] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """Check a JSON value against a field's type hint (ints are accepted for floats)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is Literal:
        _choice(path, value, typing.get_args(hint))
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a JSON object, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {_coerce(key_hint, k, path): _coerce(value_hint, v, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path} must be {hint.__name__}, got {value!r}")


def _choice(path: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{path} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _positive(path: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{path} must be > 0, got {value}")
