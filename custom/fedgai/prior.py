"""A public prior: G and D pretrained on public data only, so that a studio's (private) steps start from
networks that already turn a garment photo into line drawings. It costs no privacy: no studio's data goes in.

What goes in, and nothing else:
- PRIOR_PAIRS garment photos from the demo garment renderer (data/garments.py geometry, data/photo_render.py
  painting) with a public taste: every garment kind, the whole demo palette and every print equally likely,
  on random streams [PRIOR_STREAM, item] that no demo studio uses (theirs are [seed, studio, item]);
- for each photo, an edge-detector sketch of that photo (data/sketchify.py): xdog for even items, contour for
  odd ones. No studio's designer line style (data/sketch_styles.py) is ever drawn.
Training: the studio trainer for PRIOR_EPOCHS epochs in the target config's architecture (model.*, and the
per-sample variant of record-level DP), fed.mode local, all public pairs trained on. For the per-sample variant
the record-level code path runs with sigma 0 and a clip that never binds: plain training, no privacy needed.

This module only finds, checks and loads a prior, so building a trainer or a server never trains anything: the
prior is built by prior_build.py (``fedgai prior build``, ``make prior``, and ``fedgai simulate`` before its job
starts), never downloaded, and cached per architecture in $FEDGAI_PRIOR_DIR (default ~/.cache/fedgai/priors):
the machine's folder, which no job setting names. A missing one is a PriorError that names the command which
builds it. At a site with a privacy policy a prior, "auto" or named, is loaded only if the policy's weight_files
pins the sha256 of the bytes loaded (privacy/policy.py), so a cache filled by another job or user cannot poison it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedgai.config import PROFILES, FedgaiConfig, profile
from fedgai.models import per_sample_networks, resolve_encoder
from fedgai.privacy.policy import SitePolicyError, pinned_content

PRIOR_FORMAT = "fedgai-prior/1"
PRIOR_PAIRS = 96
PRIOR_EPOCHS = 4
PRIOR_STREAM = 7_340_033  # first entry of every public garment's random stream
PRIOR_STYLES = ("xdog", "contour")  # public edge detectors (data/sketchify.py), alternating
ENV_DIR = "FEDGAI_PRIOR_DIR"
# model.generator styled: its prior must have followed many codes before any studio joins (issue 27 §1), so it is
# trained on STYLED_PRIOR_STYLES procedural public line styles (data/public_styles.py, families disjoint from the
# demo studios') x STYLED_PRIOR_PER_STYLE garments, each pair drawn with its own sketch's statistics, for
# STYLED_PRIOR_STEPS steps of STYLED_PRIOR_BATCH pairs (the §0 falsifier's recipe, docs/results.md).
STYLED_PRIOR_STYLES = 240
STYLED_PRIOR_PER_STYLE = 6
STYLED_PRIOR_STEPS = 1200
STYLED_PRIOR_BATCH = 16


class PriorError(ValueError):
    """A prior that this run cannot start from (no such file, another architecture, another format)."""


def prior_key(cfg: FedgaiConfig, encoder_name: str) -> str:
    """What a prior must match to be loaded: the architecture (model settings with the resolved encoder, the
    per-sample variant), the losses it was trained with and this recipe."""
    arch = {"model": {**dataclasses.asdict(cfg.model), "encoder": encoder_name},
            "per_sample": per_sample_networks(cfg), "loss": dataclasses.asdict(cfg.loss),
            "recipe": [PRIOR_FORMAT, PRIOR_PAIRS, PRIOR_EPOCHS, PRIOR_STREAM, PRIOR_STYLES]}
    if cfg.model.generator == "styled":
        arch["recipe"] = [PRIOR_FORMAT, STYLED_PRIOR_STYLES, STYLED_PRIOR_PER_STYLE, STYLED_PRIOR_STEPS,
                          STYLED_PRIOR_BATCH, PRIOR_STREAM, "public_styles"]
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where "auto" priors are cached: $FEDGAI_PRIOR_DIR, else ~/.cache/fedgai/priors."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "fedgai" / "priors")


def prior_path(cfg: FedgaiConfig, encoder_name: str) -> Path:
    """Where train.prior = "auto" finds the prior of this architecture (and prior_build writes it)."""
    return cache_dir() / f"prior-{prior_key(cfg, encoder_name)}.pt"


def resolve_prior(cfg: FedgaiConfig, encoder_name: str) -> Path | None:
    """The prior file train.prior names, which exists; None when off. A missing one is a PriorError naming the
    command that builds it: found, never built here (building is a GAN's training, not a constructor's job)."""
    if cfg.train.prior == "none":
        return None
    if cfg.train.prior != "auto":
        path = Path(cfg.train.prior)
        if not path.is_file():
            raise PriorError(f"train.prior {path} is not a file (build one there with `{build_command(cfg)} --out "
                             f"{shlex.quote(str(path))}`, or use 'auto')")
        return path
    path = prior_path(cfg, encoder_name)
    if not path.is_file():
        raise PriorError(f"train.prior auto: no public prior for this architecture in {path.parent} (looked for "
                         f"{path.name}); build it first with `{build_command(cfg)}` (`make prior` builds the "
                         f"quick profile's, plain and record-level), or set ${ENV_DIR} to where it was built")
    return path


def missing_auto_prior(cfg: FedgaiConfig) -> Path | None:
    """Where the prior train.prior = "auto" needs should be, when it is not there yet; None when cfg needs no
    build (prior off, a named file, or already cached). What a command that starts studios asks first."""
    if cfg.train.prior != "auto":
        return None
    path = prior_path(cfg, resolved_encoder_name(cfg))
    return None if path.is_file() else path


def build_command(cfg: FedgaiConfig) -> str:
    """The ``fedgai prior build`` command line that builds the prior ``cfg`` needs: the profile closest to cfg in
    the settings the prior's key reads (model, loss, per-sample networks), plus a --set for each that differs."""
    candidates = {name: _key_settings(cfg, profile(name)) for name in sorted(PROFILES)}
    name = min(candidates, key=lambda n: len(candidates[n]))
    sets = [f"--set {shlex.quote(f'{key}={_setting_text(value)}')}" for key, value in candidates[name].items()]
    return " ".join(["fedgai prior build --profile", name, *sets])


def _key_settings(cfg: FedgaiConfig, base: FedgaiConfig) -> dict[str, Any]:
    """The settings --set must change in ``base`` so that it builds cfg's prior (the same prior_key)."""
    out = {f"{section}.{key}": value
           for section in ("model", "loss")
           for key, value in dataclasses.asdict(getattr(cfg, section)).items()
           if value != getattr(getattr(base, section), key)}
    if per_sample_networks(cfg) != per_sample_networks(base):
        out["privacy.dp"] = cfg.privacy.dp
        if base.train.unpaired_batch:  # refused under record-level DP; the prior trains on none anyway
            out["train.unpaired_batch"] = 0
    return out


def _setting_text(value: Any) -> str:
    """A value as --set reads it back (cli.setting: JSON, else text)."""
    return value if isinstance(value, str) else json.dumps(value)


def resolved_encoder_name(cfg: FedgaiConfig) -> str:
    """The encoder models.build_encoder picks ("auto": VGG-16 where its weights are found, else EfficientNet-Lite0),
    without building it: the server needs only the prior's key, and this machine's weights decide "auto" as they
    do for a studio on it."""
    # A named encoder is taken as named: the server needs no VGG-16 weights of its own.
    return cfg.model.encoder if cfg.model.encoder != "auto" else resolve_encoder(cfg.model)[0]


def site_pinned(cfg: FedgaiConfig, path: Path) -> bytes:
    """The prior's bytes, read once. At a site with a policy they must be the ones its weight_files pins for this
    file: an "auto" prior included, so whoever filled the cache first cannot choose what the studio starts from,
    and a named file swapped after the job was accepted is refused where it is loaded (issue 24 §2)."""
    setting = "train.prior = auto" if cfg.train.prior == "auto" else "train.prior"
    try:
        return pinned_content(setting, path)
    except SitePolicyError as err:
        raise PriorError(f"{err}; list the prior you built or accept, with its sha256 (sha256sum), in the site "
                         f"policy's weight_files") from err


def load_prior(cfg: FedgaiConfig, encoder_name: str, generator: nn.Module | None,
               discriminator: nn.Module) -> Path | None:
    """Start G and D from the prior train.prior names (G's AdaIN_SD statistics stay the studio's own). The
    server passes no G where its mode shares only D (federated/round.initial_global)."""
    path = resolve_prior(cfg, encoder_name)
    if path is None:
        return None
    state = torch.load(io.BytesIO(site_pinned(cfg, path)), map_location="cpu", weights_only=True)
    if state.get("format") != PRIOR_FORMAT or state.get("key") != prior_key(cfg, encoder_name):
        raise PriorError(f"prior {path} was built for another architecture or recipe (key {state.get('key')}, "
                         f"this run needs {prior_key(cfg, encoder_name)}); build one with `{build_command(cfg)}`")
    if generator is not None:
        missing, unexpected = generator.load_state_dict(state["generator"], strict=False)
        if unexpected or any(not k.startswith("adain.") for k in missing):  # only AdaIN_SD's statistics may be absent
            raise PriorError(f"prior {path}: generator entries do not match (missing {missing}, "
                             f"unexpected {unexpected})")
    discriminator.load_state_dict(state["discriminator"])
    return path
