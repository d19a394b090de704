"""Record-level DP-SGD for the local discriminator with Opacus.

Two changes make the Gram-style discriminator trainable with per-sample clipping:

- BatchNorm -> GroupNorm (Opacus' ModuleValidator.fix, groups = gcd(32, C)). BatchNorm mixes the samples of
  a batch, so a per-sample gradient is not defined and one sketch influences every other sample's output;
  GroupNorm normalises each sample on its own. The FedBN rule "normalisation layers stay local" then covers
  GroupNorm's affine parameters too, see ``norm_layer_types``.
- Spectral norm is removed, keeping the current normalised weight. Opacus 1.6's GradSampleModule refuses both
  ``torch.nn.utils.spectral_norm`` and ``torch.nn.utils.parametrizations.spectral_norm`` convolutions
  ("trainable layer with buffers"; checked with the hooks, functorch and expanded-weights modes), and
  ModuleValidator.fix cannot even clone a parametrized module. Privacy does not need spectral norm: per-sample
  clipping already bounds each sketch's influence. What is lost is spectral norm's Lipschitz control of D
  (GAN stability).

Both changes alter the discriminator's state_dict keys (weight_orig/weight_u/weight_v -> weight; running stats
disappear), so in record-level mode every studio and the server must build D through ``make_dp_compatible``.
"""

from __future__ import annotations

import copy
import secrets

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn.utils import parametrize, remove_spectral_norm
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.optim import Optimizer
from torch.utils.data import DataLoader


def norm_layer_types(dp_sgd: bool) -> tuple[type[nn.Module], ...]:
    """Module types whose parameters stay at the studio (FedBN); GroupNorm replaces BatchNorm under DP-SGD."""
    if dp_sgd:
        return (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    return (nn.modules.batchnorm._BatchNorm,)


def strip_spectral_norm(module: nn.Module) -> nn.Module:
    """Remove spectral norm (hook or parametrization style) in place, keeping the current normalised weight.

    Uses torch internals (the SpectralNorm pre-hook, _SpectralNorm parametrization) because torch offers no
    public "is this spectral norm?" query; both are the types torch's own removal functions look for.
    """
    for sub in module.modules():
        for hook in list(sub._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                remove_spectral_norm(sub, hook.name)
        if parametrize.is_parametrized(sub):
            for name, plist in list(sub.parametrizations.items()):
                if any(isinstance(p, _SpectralNorm) for p in plist):
                    parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    return module


def make_dp_compatible(module: nn.Module) -> nn.Module:
    """A copy of ``module`` that Opacus accepts: spectral norm removed, BatchNorm replaced by GroupNorm."""
    fixed = ModuleValidator.fix(strip_spectral_norm(copy.deepcopy(module)))
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"module still not DP-SGD compatible: {errors}")
    return fixed


def attach_dpsgd(
    module: nn.Module,
    optimizer: Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    accountant: str = "rdp",
    noise_generator: torch.Generator | None = None,
) -> tuple[GradSampleModule, DPOptimizer, DataLoader, PrivacyEngine]:
    """Wrap D, its optimiser and the real-sketch loader for per-sample clipping + Gaussian noise.

    The engine's accountant sees sample_rate = 1/len(data_loader) per step, the same schedule as
    ``record_level_schedule``; copy ``engine.accountant.history`` into a PrivacyLedger after each round.
    Noise comes from ``noise_generator``, else torch's default generator (secure_mode needs torchcsprng,
    which is not installed); a run seeded for reproducibility should pass an unseeded one, see
    ``fresh_noise_generator``.
    """
    engine = PrivacyEngine(accountant=accountant)
    dp_module, dp_optimizer, dp_loader = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson_sampling,
        noise_generator=noise_generator,
    )
    return dp_module, dp_optimizer, dp_loader, engine


def fresh_noise_generator() -> torch.Generator:
    """A generator seeded from the OS's CSPRNG: DP noise must not be replayable from the run's seed."""
    return torch.Generator().manual_seed(secrets.randbits(63))
