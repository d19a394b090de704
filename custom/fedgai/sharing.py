"""Which state-dict entries leave a studio, per federation mode - the one place that decides it.

The wire key of an entry is ``<network>.<state-dict key>`` (``discriminator.body.0.weight_orig``), as if the
studio's networks were children of one module. The same selection runs on both sides: studios pick what to
send, the server what to expect, so an entry can only cross the wire if both agree it may.

Never shared, in any mode:
- spectral-norm power-iteration state (``weight_u``/``weight_v``): each site's running estimate of the top
  singular vector of its own weights; averaging estimates from different sites can cancel them out, and
  one power-iteration step per forward re-converges ``u`` on the averaged ``weight_orig`` (which is shared);
- every normalisation tensor: BatchNorm's weight, bias, running statistics and ``num_batches_tracked``, and
  GroupNorm's under record-level DP (its stand-in for BatchNorm): a studio's image statistics (issue 24);
- the generator's AdaIN_SD sketch-set statistics: a summary of the studio's private drawings.

``fedgai_struct`` (opt-in) also shares the generator's coarse decoder stages (modes.STRUCTURE_STAGES): where a garment's
outline and large shapes are decided, from the deepest encoder taps; the fine stages that draw the strokes stay
local. It needs secure aggregation or client-level DP (config.py refuses it otherwise), and a studio takes the
received stages only where they do not worsen its own val style (federated/round.py, the style guard).

``fedgai_ditto`` (opt-in, same refusal) shares D plus a second, shared generator (all of it but normalisation
layers and AdaIN_SD); the studio's personal generator stays local and is pulled towards the received shared one
only by the proximal term (features/ditto.py). Its style guard is that personal generator itself: with
``fed.ditto_lambda`` near 0 it ignores the shared one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from fedgai.models import AdaINSD
from fedgai.modes import MODES
from fedgai.modes import mode as fed_mode

# Names that mark normalisation state even when the module type is hidden (e.g. a state dict from elsewhere).
NORM_NAME_PATTERN = re.compile(
    r"(^|\.)(bn\d*|batch_?norm\d*|norm\d*)\.|(^|\.)(running_mean|running_var|num_batches_tracked)$"
)
SPECTRAL_STATE_PATTERN = re.compile(r"(^|\.)(weight_u|weight_v|_u|_v)$")
PRIVATE_STATS_PATTERN = re.compile(r"(^|\.)adain\.")

# Every mode's facts (networks, stages, style guard) live in modes.py; these names are its readers' view.
MODE_NETWORKS: dict[str, tuple[str, ...]] = {name: spec.networks for name, spec in MODES.items()}


def _module_entries(module: nn.Module, prefix: str) -> list[str]:
    """Own (non-recursive) parameter and persistent-buffer names of a submodule, as state-dict keys."""
    names = [name for name, _ in module.named_parameters(recurse=False)]
    names += [name for name, _ in module.named_buffers(recurse=False)
              if name not in module._non_persistent_buffers_set]
    return [f"{prefix}{name}" for name in names]


def norm_layer_types(groupnorm_is_norm: bool) -> tuple[type[nn.Module], ...]:
    """Module types whose parameters stay at the studio (FedBN); GroupNorm replaces BatchNorm under record DP."""
    if groupnorm_is_norm:
        return (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
    return (nn.modules.batchnorm._BatchNorm,)


def norm_keys(net: nn.Module, groupnorm_is_norm: bool = False) -> set[str]:
    """State-dict keys of normalisation layers, found by module type and by name.

    ``groupnorm_is_norm`` covers record-level DP runs, where GroupNorm replaces BatchNorm (BatchNorm has no
    per-sample gradient); those GroupNorm layers then stay local exactly like the BatchNorm they replace.
    """
    return _keys_by_type_and_name(net, norm_layer_types(groupnorm_is_norm), NORM_NAME_PATTERN)


def spectral_state_keys(net: nn.Module) -> set[str]:
    """Spectral-norm power-iteration buffers (u, v), found by the hook type and by name."""
    keys = set()
    for name, module in net.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                prefix = f"{name}." if name else ""
                keys.update({f"{prefix}{hook.name}_u", f"{prefix}{hook.name}_v"})
    keys.update(k for k in net.state_dict() if SPECTRAL_STATE_PATTERN.search(k))
    return keys


def private_stats_keys(net: nn.Module) -> set[str]:
    """AdaIN_SD sketch-set statistics: buffers of AdaINSD modules, found by type and by name."""
    return _keys_by_type_and_name(net, (AdaINSD,), PRIVATE_STATS_PATTERN)


def _keys_by_type_and_name(net: nn.Module, types: tuple[type, ...], pattern: re.Pattern) -> set[str]:
    """Entries of modules of ``types`` plus any key matching ``pattern``: two independent nets over one rule."""
    keys = set()
    for name, module in net.named_modules():
        if isinstance(module, types):
            keys.update(_module_entries(module, f"{name}." if name else ""))
    keys.update(k for k in net.state_dict() if pattern.search(k))
    return keys


def shared_keys(networks: Mapping[str, nn.Module], mode: str, groupnorm_is_norm: bool = False) -> list[str]:
    """Sorted wire keys a studio sends (and the server aggregates) in ``mode``.

    fedgai and fedavg_bn: discriminator; fedavg_full and fedbn: generator and discriminator; fedgai_struct: D plus
    the generator's coarse stages (modes.STRUCTURE_STAGES); fedgai_ditto: D and the studio's shared generator,
    never its personal one; local: nothing. In every mode without normalisation layers (modes.py).
    """
    return sorted(f"{net_name}.{k}" for net_name in fed_mode(mode).networks
                  for k in network_shared_keys(networks[net_name], net_name, mode, groupnorm_is_norm))


def network_shared_keys(net: nn.Module, net_name: str, mode: str, groupnorm_is_norm: bool = False) -> list[str]:
    """The state-dict keys (without the network prefix) that ``net``, playing ``net_name``, shares in ``mode``;
    also what Ditto's proximal term pulls (features/ditto.py), so pulled and shared entries are the same by
    construction."""
    state = net.state_dict()
    spec = fed_mode(mode)
    never = spectral_state_keys(net) | private_stats_keys(net)
    never |= {k for k in state if k.endswith("num_batches_tracked")}
    if spec.norm_local:
        never |= norm_keys(net, groupnorm_is_norm)
    stages = spec.network_stages(net_name)
    return [k for k in state if k not in never and state[k].is_floating_point()
            and (stages is None or k.startswith(stages)) and not spec.keeps(net_name, k)]


def style_guarded_keys(keys: list[str], mode: str) -> list[str]:
    """The received entries a studio may decline in ``mode`` (the generator's), after its style guard."""
    if not fed_mode(mode).style_guard:
        return []
    return [key for key in keys if split_key(key)[0] == "generator"]


def split_key(key: str) -> tuple[str, str]:
    """``discriminator.body.0.bias`` -> (``discriminator``, ``body.0.bias``)."""
    net, _, name = key.partition(".")
    return net, name


def shared_state(networks: Mapping[str, nn.Module], mode: str, groupnorm_is_norm: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the shared entries, keyed by wire key."""
    states = {name: net.state_dict() for name, net in networks.items()}
    out = {}
    for key in shared_keys(networks, mode, groupnorm_is_norm):
        net, name = split_key(key)
        out[key] = states[net][name].detach().cpu().clone()
    return out


def load_shared(networks: Mapping[str, nn.Module], params: Mapping[str, torch.Tensor], mode: str,
                groupnorm_is_norm: bool = False) -> None:
    """Load received global entries into a studio's networks. Exactly the entries the studio shares in
    ``mode`` are accepted (anything else is an error), so local BatchNorm statistics and spectral-norm u/v
    are never overwritten."""
    expected = set(shared_keys(networks, mode, groupnorm_is_norm))
    if set(params) != expected:
        extra, missing = sorted(set(params) - expected), sorted(expected - set(params))
        raise ValueError(f"global model does not match mode {mode}: unexpected {extra[:3]}, missing {missing[:3]}")
    per_net: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in params.items():
        net, name = split_key(key)
        per_net.setdefault(net, {})[name] = torch.as_tensor(value)
    for net, state in per_net.items():
        networks[net].load_state_dict(state, strict=False)
