"""A federated round's local work at a studio: train.epochs epochs, or train.round_steps fixed steps so that a
10-pair studio trains as long as a 200-pair one; in a mode whose studios keep a head (modes.Mode.kept,
``fedgai_style``) FedRep's order (Collins et al. 2021): first the head with the shared body frozen, then the body
with the head frozen. ``trainer`` is a StudioTrainer (round.studio_update and prior_build call these)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from fedgai.modes import mode as fed_mode


def train_round(trainer, tag: str = "") -> dict[str, float]:
    """One round's local work; the head phase's losses carry ``head_``."""
    t = trainer.cfg.train
    head = head_parameters(trainer) if t.head_steps else []
    if not head:
        return _body_work(trainer, tag)
    fitted = fit_head(trainer, t.head_steps, tag)
    heads = {id(p) for p in head}
    body = [p for net in trainer.wire_networks().values() for p in net.parameters()
            if p.requires_grad and id(p) not in heads]
    with only_trainable(trainer.wire_networks().values(), body):
        trained = _body_work(trainer, tag)
    return trained | {f"head_{k}": v for k, v in fitted.items()}


def _body_work(trainer, tag: str) -> dict[str, float]:
    t = trainer.cfg.train
    return trainer.train_steps(t.round_steps, tag) if t.round_steps else trainer.train_epochs(t.epochs, tag)


def fit_head(trainer, steps: int, tag: str = "") -> dict[str, float]:
    """``steps`` steps that train only the studio's head, the shared body frozen: FedRep's first phase, and how a
    studio that joins after training fits itself to the shared renderer. ValueError in a mode without a head."""
    head = head_parameters(trainer)
    if not head:
        raise ValueError(f"fed.mode {trainer.cfg.fed.mode!r} keeps no head at the studio: nothing to fit")
    with only_trainable(trainer.wire_networks().values(), head):
        return trainer.train_steps(steps, f"{tag} head")


def head_parameters(trainer) -> list[torch.nn.Parameter]:
    """The trainable parameters of the shared networks that never leave in this mode (modes.Mode.kept): the
    studio's head. Empty in a mode that keeps none."""
    if not fed_mode(trainer.cfg.fed.mode).kept:
        return []
    shared = set(trainer.shared_state())
    return [p for net_name, net in trainer.wire_networks().items() for name, p in net.named_parameters()
            if p.requires_grad and f"{net_name}.{name}" not in shared]


@contextlib.contextmanager
def only_trainable(networks: Iterable[torch.nn.Module], trainable: list[torch.nn.Parameter]) -> Iterator[None]:
    """Within the block only ``trainable`` get gradients (the others keep requires_grad False, so the optimisers
    skip them); every flag is restored afterwards, FreezeD's included."""
    params = [p for net in networks for p in net.parameters()]
    before = [p.requires_grad for p in params]
    chosen = {id(p) for p in trainable}
    for p in params:
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
