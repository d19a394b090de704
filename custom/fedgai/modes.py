"""Every ``fed.mode`` in one place: what it sends, what stays home, and what a studio demands before it runs it.

sharing.py turns a mode's networks and stages into wire keys, federated/round.py runs its style guard, the
studio's privacy policy (privacy/policy.py) reads its requirements. Each fact is written once, here, so a new
mode cannot be added to one reader and forgotten in another (issue 24 §1; issue 26 moves the remaining readers).

Since issue 24 no normalisation tensor (BatchNorm weight, bias, running statistics, its counter; GroupNorm under
record-level DP) leaves a studio in any mode: a BatchNorm layer's statistics are a summary of the studio's own
images. ``fedavg_bn`` therefore shares what ``fedgai`` shares, and ``fedavg_full`` what ``fedbn`` shares; the names
stay so that earlier configs and results keep their meaning as baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgai.config import FED_MODES, PrivacyConfig

# The fewest studios whose encrypted updates the server may sum when a mode sends generator weights under HE
# alone: with two, each studio subtracts its own update from the aggregate and holds the other's.
MIN_HE_STUDIOS = 3
# The generator's coarse decoder stages (models.CoarseToFineGenerator): ``start``, the conv on the deepest
# (stride-16) tap, and ``blocks.0``, the first fusion block. Later blocks, ``upsample`` and ``head`` draw the
# strokes at stride 4..1 and stay local.
STRUCTURE_STAGES = ("start.", "blocks.0.")
# fedgai_style (models.StyledSketchGenerator, ProjectionCritic): the studio's head is every FiLM layer (its code ->
# per-stage modulation); the critic shares its convolutions, its output and style projection are the studio's branch.
STYLED_HEAD = (".film.",)
STYLED_CRITIC_TRUNK = ("convs.",)


@dataclass(frozen=True)
class Mode:
    """One federation mode's facts.

    networks: the networks whose entries leave the studio; stages: per network, the state-dict prefixes it
    shares (a network not named shares every entry the rules allow); style_guard: the studio takes received
    generator entries only where they keep its val style (round.py); personal_generator: the studio draws with a
    generator that never leaves (features/ditto.py), and "generator" on the wire is its shared one;
    equal_weights: under fed.weighting auto every studio's update weighs the same (the styled modes: one renderer
    learns every studio's code, and each code counts the same; docs/results.md, issue 27 §3).
    """

    name: str
    networks: tuple[str, ...]
    summary: str
    stages: tuple[tuple[str, tuple[str, ...]], ...] = ()
    style_guard: bool = False
    personal_generator: bool = False
    norm_local: bool = True  # every mode since issue 24; kept as a fact the readers check, not a switch
    # Per network, name fragments of entries that stay home although the network is shared: the studio's head,
    # which trains first each round with the shared body frozen (features/fedrep.py, FedRep).
    kept: tuple[tuple[str, tuple[str, ...]], ...] = ()
    equal_weights: bool = False

    @property
    def federated(self) -> bool:
        """Whether anything leaves the studio (False: each studio trains alone and never loads a global)."""
        return bool(self.networks)

    @property
    def sends_generator(self) -> bool:
        """Whether any generator weight leaves: the site must consent and the server must never see it alone."""
        return "generator" in self.networks

    def network_stages(self, network: str) -> tuple[str, ...] | None:
        """The prefixes ``network`` shares in this mode, None for all of it."""
        return dict(self.stages).get(network)

    def keeps(self, network: str, key: str) -> bool:
        """Whether ``network``'s entry ``key`` is part of the studio's head in this mode (never sent)."""
        return any(fragment in key for fragment in dict(self.kept).get(network, ()))


MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("fedgai", ("discriminator",), "D's weights (the paper)"),
    Mode("fedavg_bn", ("discriminator",), "D's weights (BatchNorm stays local since issue 24: as fedgai)"),
    Mode("fedavg_full", ("generator", "discriminator"), "G and D (BatchNorm local since issue 24: as fedbn)"),
    Mode("fedbn", ("generator", "discriminator"), "G and D without normalisation layers (FedBN)"),
    Mode("fedgai_struct", ("generator", "discriminator"), "D plus G's coarse decoder stages",
         stages=(("generator", STRUCTURE_STAGES),), style_guard=True),
    Mode("fedgai_ditto", ("generator", "discriminator"), "D plus a shared G; the personal G stays home",
         personal_generator=True),
    Mode("fedgai_style", ("generator", "discriminator"),
         "the styled renderer (decoder trunk + mapping) and its critic's trunk; each studio's style statistics, "
         "per-stage modulation (FiLM) and critic branch stay home", stages=(("discriminator", STYLED_CRITIC_TRUNK),),
         kept=(("generator", STYLED_HEAD),), equal_weights=True),
    Mode("fedgai_style_code", ("generator", "discriminator"),
         "the whole styled renderer (FiLM layers included) and its critic; only the studio's statistics (its style "
         "code's input) stay home", equal_weights=True),
    Mode("local", (), "nothing: each studio trains alone"),
)}
if set(MODES) != set(FED_MODES):  # config.FedMode is the list users choose from; this is what each one means
    raise ImportError(f"modes.py and config.FedMode disagree: {sorted(set(MODES) ^ set(FED_MODES))}")
# What a studio allows when its policy names no modes: the modes in which no generator weight leaves.
D_ONLY_MODES: tuple[str, ...] = tuple(name for name, mode in MODES.items() if not mode.sends_generator)


def mode(name: str) -> Mode:
    """The facts of ``fed.mode`` ``name``; ValueError naming the choices for an unknown one."""
    if name not in MODES:
        raise ValueError(f"unknown federation mode {name!r}; choose one of {', '.join(MODES)}")
    return MODES[name]


def protection_problem(name: str, privacy: PrivacyConfig, min_clients: int) -> str | None:
    """Why mode ``name`` must not run with these settings at a studio (None: it may).

    A mode that sends generator weights needs the server never to see one studio's update: HE with at least
    MIN_HE_STUDIOS studios per aggregate (fed.min_clients), or client-level DP with noise (sigma > 0), which
    bounds what anyone learns from the update itself.
    """
    spec = mode(name)
    if not spec.sends_generator:
        return None
    if privacy.dp == "client" and privacy.noise_multiplier > 0:
        return None
    if privacy.he and min_clients >= MIN_HE_STUDIOS:
        return None
    return (f"fed.mode {name!r} sends generator weights ({spec.summary}): it needs privacy.he with "
            f"fed.min_clients >= {MIN_HE_STUDIOS} or privacy.dp 'client' with noise_multiplier > 0 (got "
            f"privacy.he={privacy.he}, fed.min_clients={min_clients}, privacy.dp={privacy.dp!r}, "
            f"noise_multiplier={privacy.noise_multiplier})")
