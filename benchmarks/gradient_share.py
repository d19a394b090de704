"""Why sharing D can move a studio's generator only a little: the share of G's gradient each loss term carries.

FedGAI shares the discriminator only, so federation reaches a studio's generator only through the terms that
pass through D: the adversarial term and, when it is on, D-feature matching (loss.feature_matching). This
measures, for a studio's generator after some local training, the L2 norm of the gradient of each weighted loss
term with respect to G's parameters, and its cosine with the total gradient.

    python benchmarks/gradient_share.py --studio runs/bench-data/studio-02-marker --epochs 2 \
        --set 'model.image_size=64'

Prints one JSON object per loss setting: the config's weights, the paper's loss (no pixel L1), and the config
with D-feature matching at weight 10.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from fedgai.config import FedgaiConfig, profile
from fedgai.trainer import StudioTrainer


def term_gradients(trainer: StudioTrainer, photo: torch.Tensor, sketch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flattened gradient of each weighted generator term on one batch (D fixed)."""
    terms = trainer.generator_losses(photo, sketch)
    params = [p for p in trainer.generator.parameters() if p.requires_grad]
    grads = {}
    for name, value in terms.items():
        weight = getattr(trainer.cfg.loss, name)
        if weight == 0:
            continue
        g = torch.autograd.grad(weight * value, params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params,
                                                                                                          strict=True)])
    return grads


def shares(cfg: FedgaiConfig, studio: Path, epochs: int, batches: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = StudioTrainer(cfg, studio, Path(tmp) / "run", device="cpu")
        trainer.train_epochs(epochs)
        totals: dict[str, list[torch.Tensor]] = {}
        for i, (photo, sketch) in enumerate(trainer.loader()):
            if i == batches:
                break
            for name, g in term_gradients(trainer, photo, sketch).items():
                totals.setdefault(name, []).append(g)
        trainer.close()
    mean = {name: torch.stack(gs).mean(0) for name, gs in totals.items()}
    total = sum(mean.values())
    return {name: {"grad_norm": float(g.norm()), "share_of_norm_sum": float(g.norm() / sum(v.norm() for v in
                                                                                            mean.values())),
                   "cos_with_total": float(torch.nn.functional.cosine_similarity(g, total, dim=0))}
            for name, g in mean.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studio", type=Path, required=True)
    p.add_argument("--profile", default="quick")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON")
    p.add_argument("--epochs", type=int, default=2, help="local epochs before measuring")
    p.add_argument("--batches", type=int, default=4, help="batches averaged")
    args = p.parse_args(argv)
    cfg = profile(args.profile).with_overrides({k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)})
    settings = (("config loss", {}), ("paper loss (pixel_l1 = 0)", {"loss.pixel_l1": 0.0}),
                ("config + D-feature matching 10", {"loss.feature_matching": 10.0}))
    for label, overrides in settings:
        result = shares(cfg.with_overrides(overrides), args.studio, args.epochs, args.batches)
        print(json.dumps({"loss": label, "studio": args.studio.name, "terms": result}))


if __name__ == "__main__":
    main()
