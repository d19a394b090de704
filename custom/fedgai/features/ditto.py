"""Ditto's second generator at a studio (``fed.mode: fedgai_ditto``; Li et al., "Ditto: Fair and Robust Federated
Learning Through Personalization", ICML 2021).

A studio in this mode keeps two generators. The *shared* one (``Ditto.generator``) trains exactly as in FedAvg, with
D, and only its update leaves the studio. The *personal* one is the trainer's ``generator``: what the studio
evaluates, saves and sketches with. It trains on the same batches with the usual loss plus a proximal pull
``(fed.ditto_lambda / 2) * ||theta_personal - theta_shared_received||^2`` towards the shared generator as last
received from the server (the anchor), never towards the studio's own locally trained copy. The pull covers exactly
the entries the shared generator sends (sharing.network_shared_keys): normalisation layers and the AdaIN_SD
statistics are the studio's own in both generators and are never pulled. So the personal generator is its own style
guard: at lambda 0 it ignores the shared one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from fedgai.features import Feature, TrainStep
from fedgai.objective import GanInputs, Objective, PairBatch

# Builds an optimiser over parameters (trainer.make_optimizer with the config and lr_g bound).
OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
# The trainer's drawing of a batch: (generator, batch, unpaired photos) -> what the losses read.
Draw = Callable[[nn.Module, PairBatch, torch.Tensor | None], GanInputs]


class Ditto(Feature):
    """The shared generator, its optimiser and the anchor the personal generator is pulled towards; after each
    GAN step (which trains the shared generator with D), the personal generator's update."""

    def __init__(self, personal: nn.Module, personal_opt: torch.optim.Optimizer, pulled: list[str], lam: float,
                 optimizer: OptimizerFactory, objective: Objective, draw: Draw, autocast: Callable):
        """Starts as a copy of ``personal`` (same initialisation, same AdaIN_SD statistics); ``pulled``: the
        state-dict keys the proximal term covers (the parameters among the shared entries)."""
        self.personal, self.personal_opt = personal, personal_opt
        self.objective, self.draw, self.autocast = objective, draw, autocast
        self.generator = copy.deepcopy(personal)
        self.opt = optimizer(self.generator.parameters())
        self.lam = lam
        params = dict(self.generator.named_parameters())
        self.pulled = [name for name in pulled if name in params]
        self.anchor: dict[str, torch.Tensor] = {}
        self.anchor_to_shared()

    def anchor_to_shared(self) -> None:
        """Take the shared generator's current parameters as the anchor: called when a global has been loaded
        into it, so the pull is towards what the federation sent, not towards this studio's local steps."""
        params = dict(self.generator.named_parameters())
        self.anchor = {name: params[name].detach().clone() for name in self.pulled}

    def proximal(self, personal: nn.Module) -> torch.Tensor:
        """(lambda / 2) * squared L2 distance of the personal generator's pulled parameters to the anchor."""
        return 0.5 * self.lam * self._squared_distance(personal)

    @torch.no_grad()
    def distance(self, personal: nn.Module) -> float:
        """L2 distance of the personal generator's pulled parameters to the anchor (logged per epoch)."""
        return float(self._squared_distance(personal).sqrt())

    def _squared_distance(self, personal: nn.Module) -> torch.Tensor:
        params = dict(personal.named_parameters())
        return torch.stack([(params[name] - anchor).pow(2).sum() for name, anchor in self.anchor.items()]).sum()

    def personal_step(self, batch: PairBatch, unpaired_photos: torch.Tensor | None) -> dict[str, float]:
        """The personal update: the usual G loss through the current D (which it does not train) plus
        (lambda/2)*||personal - received shared||^2; at lambda 0 exactly the plain G update."""
        with self.autocast(), record_function("personal G step"):
            inputs = self.draw(self.personal, batch, unpaired_photos)
            loss = self.objective.weighted(self.objective.generator_loss_terms(inputs))
        proximal = self.proximal(self.personal)
        self.personal_opt.zero_grad(set_to_none=True)
        (loss + proximal).backward()
        self.personal_opt.step()
        return {"personal_loss_g": loss.item(), "ditto_proximal": proximal.item(),
                "ditto_distance": self.distance(self.personal)}

    # ------------------------------------------------------------------ Feature hooks
    def train(self) -> None:
        self.generator.train()

    def after_step(self, step: TrainStep) -> dict[str, float]:
        return self.personal_step(step.batch, step.unpaired_photos)

    def received_global(self) -> None:
        self.anchor_to_shared()

    def state_to_save(self) -> dict[str, Any]:
        """The shared generator, its optimiser and anchor ("generator" is the personal one)."""
        return {"ditto": self.state_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["ditto"])

    def state_dict(self) -> dict[str, dict]:
        """What a checkpoint needs to resume: the shared generator, its optimiser and the anchor."""
        return {"generator": self.generator.state_dict(), "opt": self.opt.state_dict(), "anchor": self.anchor}

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["opt"])
        device = next(self.generator.parameters()).device
        self.anchor = {name: value.to(device) for name, value in state["anchor"].items()}
