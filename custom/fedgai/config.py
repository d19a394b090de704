"""The one typed place for every setting: jobs, CLI and tests read these defaults.

Profiles:
- ``paper``: the FedGAI schedule (11 rounds x 11 local epochs, 256 px) - a GPU-site job.
- ``quick``: the demo federation sized for a 2-core CPU (about 15 minutes for 8 studios).
- ``test``: tiny images and a few steps, for the test suite.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENCODERS = ("auto", "vgg16", "efficientnet-lite0", "random")
FED_MODES = ("fedgai", "local", "fedavg_full", "fedavg_bn")
DP_MODES = ("none", "client", "record")


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range."""


@dataclass
class ModelConfig:
    encoder: Literal["auto", "vgg16", "efficientnet-lite0", "random"] = "auto"
    # Local VGG-16 ImageNet weights (torchvision's vgg16-397923af.pth). None = torch hub cache only.
    vgg_weights: str | None = None
    image_size: int = 256
    # Channels of the first (coarsest) decoder stage; each MRFM block halves them.
    decoder_width: int = 256
    # Gram matrices are pooled to this many rows/cols before the discriminator (HAIGEN: 64 x 196).
    gram_rows: int = 64
    gram_cols: int = 196
    disc_width: int = 128

    def validate(self) -> None:
        _choice("model.encoder", self.encoder, ENCODERS)
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"model.image_size must be a multiple of 32 and >= 32, got {self.image_size}")
        _positive("model.decoder_width", self.decoder_width)
        _positive("model.disc_width", self.disc_width)
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
    clip_model: str = "ViT-B-16"
    # open_clip pretrained tag (e.g. "openai") or a local checkpoint path; "none" disables the term.
    clip_pretrained: str = "openai"

    def validate(self) -> None:
        for name in ("gram", "adversarial", "clip", "content", "pixel_l1", "feddecorr"):
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
    # Held-out pairs per studio (evaluation.split): test pairs are never trained on, val pairs give the
    # per-round held-out metric. The split depends only on split_seed and the file stems.
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    # torch CPU threads (None = all cores).
    num_threads: int | None = None
    grid_size: int = 4

    def validate(self) -> None:
        _positive("train.batch_size", self.batch_size)
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
    mode: Literal["fedgai", "local", "fedavg_full", "fedavg_bn"] = "fedgai"
    min_clients: int = 1
    # Seconds the server waits for a round's results before aggregating what arrived.
    round_timeout: int = 7200
    # Once min_clients studios have answered, wait at most this long for the rest (None = wait for all,
    # up to round_timeout): a studio that vanishes without an error then costs one grace period, not a timeout.
    straggler_grace: int | None = None
    # Contributions whose update L2 norm exceeds this are dropped (None = no bound).
    max_update_norm: float | None = 1000.0

    def validate(self) -> None:
        _positive("fed.rounds", self.rounds)
        _choice("fed.mode", self.mode, FED_MODES)
        _positive("fed.min_clients", self.min_clients)
        _positive("fed.round_timeout", self.round_timeout)
        if self.straggler_grace is not None and self.straggler_grace < 0:
            raise ConfigError(f"fed.straggler_grace must be >= 0, got {self.straggler_grace}")


@dataclass
class PrivacyConfig:
    dp: Literal["none", "client", "record"] = "none"
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: Literal["rdp", "prv"] = "rdp"
    he: bool = False

    def validate(self) -> None:
        _choice("privacy.dp", self.dp, DP_MODES)
        _choice("privacy.accountant", self.accountant, ("rdp", "prv"))
        if self.noise_multiplier < 0 or self.clip_norm <= 0:
            raise ConfigError("privacy.noise_multiplier must be >= 0 and privacy.clip_norm > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")


@dataclass
class FedgaiConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)

    def validate(self) -> FedgaiConfig:
        for part in (self.model, self.loss, self.train, self.fed, self.privacy):
            part.validate()
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


PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"model": {"image_size": 256}, "train": {"epochs": 11}, "fed": {"rounds": 11}},
    "quick": {
        "model": {"image_size": 128, "decoder_width": 128},
        "train": {"epochs": 3, "max_pairs": 48, "batch_size": 8, "lr_g": 1e-3, "lr_d": 2e-4},
        "fed": {"rounds": 5, "round_timeout": 1800, "min_clients": 2, "straggler_grace": 600},
    },
    "test": {
        "model": {"encoder": "random", "image_size": 32, "decoder_width": 32, "disc_width": 16,
                  "gram_rows": 16, "gram_cols": 16},
        "loss": {"clip_pretrained": "none"},
        "train": {"epochs": 1, "max_pairs": 8, "batch_size": 4, "lr_g": 1e-3, "num_threads": 1},
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
