"""Record-level DP for a studio's whole GAN: one photo-sketch pair is the unit of privacy.

Everything G and D learn from the studio's pairs goes through one of two mechanisms, and every release is
charged to one persistent ledger (so one epsilon bounds D, the only network that leaves the studio):

- DP-SGD steps (``step``): a Poisson-subsampled batch, the gradient of each pair's whole loss (for D:
  hinge(real) + hinge(fake) of the *same* pair, so removing a pair removes exactly one clipped gradient),
  clipped to L2 norm C, summed, plus N(0, (sigma C)^2), divided by the expected batch size. D steps and G
  steps draw their own batches, so each is one subsampled Gaussian mechanism and RDP composes them.
- AdaIN_SD's sketch statistics (``release_statistics``): per-sketch channel means and stds of the encoder
  taps, clipped per sketch, summed with a count coordinate and released once through a Gaussian mechanism.

Per-pair gradients come from torch.func (vmap over grad), so the networks must normalise each sample on its
own: models.per_sample_networks builds GroupNorm and no spectral norm in this mode.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from fedgai.config import PrivacyConfig
from fedgai.models import AdaINSD
from fedgai.privacy.accountant import (
    PrivacyBudgetExceeded,
    PrivacyLedger,
    Step,
    compute_epsilon,
    record_level_schedule,
)

log = logging.getLogger(__name__)

STATISTICS_SAMPLE_RATE = 1.0  # every sketch enters the statistics: no subsampling
MAX_PLANNED_NOISE = 100.0  # calibrate_record_noise searches sigma up to this
# The site's record-level ledger while a federated studio builds its trainer (site_ledger).
_SITE_LEDGER: ContextVar[Path | None] = ContextVar("fedgai_site_ledger", default=None)

# A per-pair loss: (the network as a function of its inputs, one pair's inputs with a batch dim of 1)
# -> (scalar loss, {name: scalar} for the local log). The function's keyword ``submodule`` calls a part of the
# network instead (e.g. D's structure critic), with the same per-pair parameters.
PairLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@contextmanager
def site_ledger(path: str | Path | None) -> Iterator[None]:
    """Charge every RecordLevelDP built inside to ``path`` (None: the trainer's own run-folder ledger).

    A studio site's ledger lives in its workspace and counts every job on the studio's data (site policy,
    privacy/policy.py); the trainer, which knows nothing of sites, names its run folder's ledger.
    """
    token = _SITE_LEDGER.set(Path(path) if path is not None else None)
    try:
        yield
    finally:
        _SITE_LEDGER.reset(token)


def fresh_noise_generator() -> torch.Generator:
    """A generator seeded from the OS's CSPRNG: DP noise must not be replayable from the run's seed."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def clip_per_pair(per_pair: dict[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """Scale each pair's gradient (over all parameters together) to L2 norm <= clip_norm; rows = pairs."""
    norms = torch.sqrt(sum(g.reshape(len(g), -1).pow(2).sum(1) for g in per_pair.values()))
    factor = (clip_norm / (norms + 1e-12)).clamp(max=1.0)
    return {k: g * factor.view(-1, *[1] * (g.dim() - 1)) for k, g in per_pair.items()}


def per_pair_gradients(module: nn.Module, loss: PairLoss, batch: Sequence) -> tuple[dict[str, torch.Tensor],
                                                                                        dict[str, torch.Tensor]]:
    """Gradient of ``loss`` w.r.t. the module's trainable parameters for every pair of ``batch`` (leading dim).

    ``batch`` items may be tensors or lists of tensors (e.g. one Gram matrix per encoder tap).
    """
    params = {k: p.detach() for k, p in module.named_parameters() if p.requires_grad}
    buffers = dict(module.named_buffers())

    def one_pair(theta: dict[str, torch.Tensor], *pair):
        def call(*inputs, submodule: str = ""):
            if not submodule:
                return functional_call(module, (theta, buffers), inputs)
            prefix = submodule + "."
            state = {k[len(prefix):]: v for k, v in {**theta, **buffers}.items() if k.startswith(prefix)}
            return functional_call(module.get_submodule(submodule), state, inputs)

        return loss(call, *tree_map(lambda t: t.unsqueeze(0), list(pair)))

    grads, logs = vmap(grad(one_pair, has_aux=True), in_dims=(None, *[0] * len(batch)))(params, *batch)
    return grads, logs


class RecordLevelDP:
    """DP-SGD on G and D plus the private sketch statistics of one studio, under one ledger."""

    def __init__(self, cfg: PrivacyConfig, num_pairs: int, batch_size: int, ledger_path: str | Path,
                 studio: str | None = None) -> None:
        self.cfg = cfg
        self.num_pairs = num_pairs
        self.sample_rate, self.steps_per_epoch = record_level_schedule(num_pairs, batch_size, 1)
        self.noise = fresh_noise_generator()  # train.seed must not make the noise replayable
        self.ledger = PrivacyLedger(_SITE_LEDGER.get() or ledger_path, studio, cfg.accountant)
        self.statistics_released = False

    # ------------------------------------------------------------------ accounting
    def epoch_steps(self, epochs: int = 1) -> int:
        """Releases per ``epochs``: every training step is one D step and one G step, each on its own batch."""
        return 2 * self.steps_per_epoch * epochs

    def epsilon(self) -> float:
        return self.ledger.epsilon(self.cfg.delta)

    def affordable(self, epochs: int) -> bool:
        """Whether ``epochs`` more epochs stay within privacy.target_epsilon (always, without a target).
        Never without the sketch statistics: G cannot train without them."""
        if not self.statistics_released:
            return False
        if self.cfg.target_epsilon is None:
            return True
        projected = self.ledger.projected_epsilon(self.cfg.noise_multiplier, self.sample_rate,
                                                  self.epoch_steps(epochs), self.cfg.delta)
        return projected <= self.cfg.target_epsilon

    def charge_epoch(self) -> None:
        """Record one epoch's releases before it runs (a crash can only over-count), or raise
        PrivacyBudgetExceeded if they would pass privacy.target_epsilon."""
        if not self.statistics_released:
            raise PrivacyBudgetExceeded("AdaIN_SD's sketch statistics were not released (budget), so G cannot train")
        self._charge(Step(self.cfg.noise_multiplier, self.sample_rate, self.epoch_steps()))

    def _charge(self, step: Step) -> None:
        self.ledger.charge(step.noise_multiplier, step.sample_rate, step.count, self.cfg.delta, self.cfg.target_epsilon)

    # ------------------------------------------------------------------ DP-SGD
    def sample(self) -> torch.Tensor:
        """Indices of a Poisson-subsampled batch: each pair joins independently with the sample rate."""
        return torch.nonzero(torch.rand(self.num_pairs, generator=self.noise) < self.sample_rate).flatten()

    def privatise(self, per_pair: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
        """Clip per pair, sum, add N(0, (sigma C)^2), divide by the expected batch size (q N).

        An empty batch still gets its noise: skipping the step would make the output depend on the sample.
        """
        c, sigma = self.cfg.clip_norm, self.cfg.noise_multiplier
        clipped = clip_per_pair(per_pair, c) if per_pair else {}
        expected = self.sample_rate * self.num_pairs
        out = {}
        for name, shape in shapes.items():
            total = clipped[name].sum(0) if name in clipped else torch.zeros(shape)
            noise = torch.normal(0.0, sigma * c, shape, generator=self.noise)  # CPU generator, CSPRNG-seeded
            out[name] = (total + noise.to(total.device)) / expected
        return out

    def step(self, module: nn.Module, optimizer: torch.optim.Optimizer, loss: PairLoss, batch: Sequence | None
             ) -> dict[str, float]:
        """One DP-SGD step of ``module`` on ``batch`` (pairs along dim 0; None = the sample was empty, a
        noise-only step); returns the mean per-pair log terms."""
        shapes = {k: p.shape for k, p in module.named_parameters() if p.requires_grad}
        grads, logs = per_pair_gradients(module, loss, batch) if batch is not None else ({}, {})
        noisy = self.privatise(grads, shapes)
        optimizer.zero_grad(set_to_none=True)
        for name, param in module.named_parameters():
            if name in noisy:
                param.grad = noisy[name].to(param.device)
        optimizer.step()
        return {k: float(v.detach().mean()) for k, v in logs.items()}

    # ------------------------------------------------------------------ sketch statistics
    def release_statistics(self, per_sketch: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Private mean of per-sketch statistic rows, charged to the ledger as one Gaussian release.

        Rows are centred on a data-independent ``reference`` row first (so the clip bounds only how far a
        sketch is from it, not the features' offset). Each centred row is clipped to L2 norm stats_clip_norm
        (C_s) and extended by a count coordinate of value C_s, so adding or removing one sketch moves the
        released sum by at most sqrt(2) C_s; the noise is N(0, (stats_noise_multiplier sqrt(2) C_s)^2). The
        mean is the noised sum over the noised count.
        """
        c, sigma = self.cfg.stats_clip_norm, self.cfg.stats_noise_multiplier
        self._charge(Step(sigma, STATISTICS_SAMPLE_RATE, 1))
        self.statistics_released = True
        return reference + noised_mean(per_sketch - reference, c, sigma, self.noise)

    @torch.no_grad()
    def fit_adain(self, adain: AdaINSD, tap_batches: list[list[torch.Tensor]], blank_taps: list[torch.Tensor]
                  ) -> None:
        """AdaIN_SD's target statistics from one private release (the non-private fit pools all sketches).

        ``blank_taps`` (the encoder's taps of an empty canvas, public) is the reference the rows are centred
        on. The target std is the mean of the per-sketch stds: a linear statistic, so clipping and noise act
        on the features' own scale; AdaIN also normalises each photo by its own per-image std.
        """
        rows = torch.cat([tap_statistics(taps) for taps in tap_batches]).cpu().double()
        try:
            released = self.release_statistics(rows, tap_statistics(blank_taps)[0].cpu().double()).float()
        except PrivacyBudgetExceeded as err:
            log.warning("%s: AdaIN_SD statistics not released, this studio cannot train", err)
            return
        for i, (mean, std) in enumerate(split_tap_statistics(released, [t.shape[1] for t in tap_batches[0]])):
            adain.set_tap(i, mean.to(adain.fitted.device), std.clamp(min=0).pow(2).to(adain.fitted.device))
        adain.fitted.fill_(True)


def style_head(generator: nn.Module, discriminator: nn.Module) -> dict[nn.Module, tuple[str, ...]]:
    """privacy.record_trainable = "style_head": the parameters closest to the drawn strokes - G's last decoder
    block, its upsampling stages and output head; D's heads (the Gram critic's and the structure critic's)."""
    last = f"blocks.{len(generator.blocks) - 1}."
    return {generator: (last, "upsample.", "head."), discriminator: ("head.", "patch.head.")}


TRAINABLE: dict[str, Callable[[nn.Module, nn.Module], dict[nn.Module, tuple[str, ...]]] | None] = {
    "all": None,
    "style_head": style_head,
}


def train_only(choice: str, generator: nn.Module, discriminator: nn.Module) -> int:
    """Freeze every parameter of G and D outside privacy.record_trainable's choice (requires_grad off: DP-SGD
    neither computes, clips nor noises a gradient for it, and the optimiser never moves it); returns how many
    parameter values are trained and noised."""
    select = TRAINABLE[choice]
    prefixes = select(generator, discriminator) if select else {generator: ("",), discriminator: ("",)}
    noised = 0
    for module, keep in prefixes.items():
        for name, param in module.named_parameters():
            param.requires_grad_(name.startswith(keep))
            noised += param.numel() if param.requires_grad else 0
    return noised


def noised_sum(rows: torch.Tensor, clip_norm: float, noise_multiplier: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The Gaussian mechanism of ``release_statistics`` (without the ledger): statistics_sum plus
    N(0, (noise_multiplier sqrt(2) clip_norm)^2) per coordinate."""
    total = statistics_sum(rows, clip_norm)
    std = noise_multiplier * math.sqrt(2) * clip_norm
    return total + torch.normal(0.0, std, total.shape, generator=generator, dtype=total.dtype)


def noised_mean(rows: torch.Tensor, clip_norm: float, noise_multiplier: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Post-processing of noised_sum: the noised sum over the noised count (at least 1)."""
    noisy = noised_sum(rows, clip_norm, noise_multiplier, generator)
    return noisy[:-1] / (noisy[-1] / clip_norm).clamp(min=1.0)


def statistics_sum(rows: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Sum over rows of [clip(row, C), C]: what release_statistics noises (its sensitivity is sqrt(2) C)."""
    clipped = clip_per_pair({"rows": rows.double()}, clip_norm)["rows"]
    return torch.cat([clipped.sum(0), clipped.new_tensor([clip_norm * len(rows)])])


def tap_statistics(taps: list[torch.Tensor]) -> torch.Tensor:
    """Per-sketch [mean_c, std_c] over H, W of every encoder tap, one row per sketch."""
    parts = []
    for f in taps:
        parts += [f.mean(dim=(2, 3)), f.std(dim=(2, 3), unbiased=False)]
    return torch.cat(parts, 1)


def split_tap_statistics(row: torch.Tensor, channels: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inverse of tap_statistics for one row: [(mean, std)] per tap."""
    out, start = [], 0
    for c in channels:
        out.append((row[start : start + c], row[start + c : start + 2 * c]))
        start += 2 * c
    return out


def record_level_steps(cfg: PrivacyConfig, num_pairs: int, batch_size: int, epochs: int) -> list[Step]:
    """Every release of a record-level run of ``epochs`` epochs: the statistics, then one D and one G step
    per training step (what RecordLevelDP charges)."""
    rate, steps = record_level_schedule(num_pairs, batch_size, epochs)
    return [Step(cfg.stats_noise_multiplier, STATISTICS_SAMPLE_RATE, 1), Step(cfg.noise_multiplier, rate, 2 * steps)]


def calibrate_record_noise(cfg: PrivacyConfig, num_pairs: int, batch_size: int, epochs: int,
                           target_epsilon: float, low: float = 0.3) -> float:
    """Smallest DP-SGD noise multiplier (to 0.01 or 1 %, whichever is coarser) whose whole run stays within
    target_epsilon at cfg.delta, the statistics release included; ValueError if even MAX_PLANNED_NOISE does
    not (the statistics alone cost more). ``low``: a sigma known to be too small (a bracket's lower end)."""
    def fits(sigma: float) -> bool:
        steps = record_level_steps(dataclasses.replace(cfg, noise_multiplier=sigma), num_pairs, batch_size, epochs)
        return compute_epsilon(steps, cfg.delta, cfg.accountant) <= target_epsilon

    high = min(2 * low, MAX_PLANNED_NOISE)
    while not fits(high):  # double until the bracket holds the answer: few evaluations near low
        if high >= MAX_PLANNED_NOISE:
            raise ValueError(f"target epsilon {target_epsilon} is below what the statistics release alone costs; "
                             f"raise privacy.stats_noise_multiplier")
        low, high = high, min(2 * high, MAX_PLANNED_NOISE)
    while high - low > max(0.01, 0.01 * low):
        mid = (low + high) / 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high
