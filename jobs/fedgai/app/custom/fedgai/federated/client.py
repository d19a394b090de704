"""Studio side: the local GAN trainer as an NVFlare Client-API script (run by ScriptRunner).

Each round: receive the global discriminator entries -> load them into the local D (BatchNorm, spectral-norm
u/v and the whole generator stay as trained here) -> train G and D for the configured local epochs -> send
back only the shared entries as a DIFF, weighted by this studio's pair count, with the loss terms as metrics.
Photos, sketches, the generator and its AdaIN_SD sketch statistics never leave the site.

Where a site's studio folder is: ``--studio SITE=FOLDER`` (repeatable), else ``--data-root`` /
$FEDGAI_DATA_ROOT joined with the site name (``ROOT/SITE`` or the one ``ROOT/SITE-*`` folder).
Outputs go to ``--output-root`` / $FEDGAI_OUTPUT_ROOT (default ``fedgai_output`` in the site's working
directory), one folder per site: checkpoints/last.pt (resumable, holds the generator), grids/round-NNN.png,
metrics.jsonl and a local TensorBoard log.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nvflare.client as flare
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.client.tracking import SummaryWriter
from torch import nn

from fedgai.config import FedgaiConfig
from fedgai.federated.keys import CONFIG_META_KEY, DP_EPSILON_META_KEY, shared_keys, shared_state, split_key
from fedgai.privacy import BUDGET_EXHAUSTED_KEY, PrivacyBudgetExceeded
from fedgai.trainer import StudioTrainer

DATA_ROOT_ENV = "FEDGAI_DATA_ROOT"
OUTPUT_ROOT_ENV = "FEDGAI_OUTPUT_ROOT"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="FedGAI studio trainer (an NVFlare Client-API script)")
    p.add_argument("--studio", action="append", default=[], metavar="SITE=FOLDER",
                   help="studio folder of a site; repeat for several sites")
    p.add_argument("--data-root", type=Path, default=os.environ.get(DATA_ROOT_ENV),
                   help=f"folder holding one studio folder per site (default ${DATA_ROOT_ENV})")
    p.add_argument("--output-root", type=Path, default=os.environ.get(OUTPUT_ROOT_ENV, "fedgai_output"),
                   help=f"where each site writes its outputs (default ${OUTPUT_ROOT_ENV} or ./fedgai_output)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def studio_map(entries: Sequence[str]) -> dict[str, Path]:
    """["site=folder", ...] -> {site: folder}."""
    out = {}
    for entry in entries:
        site, sep, folder = entry.partition("=")
        if not sep or not site or not folder:
            raise ValueError(f"--studio expects SITE=FOLDER, got {entry!r}")
        out[site] = Path(folder)
    return out


def resolve_studio(site: str, studios: Mapping[str, Path], data_root: Path | None) -> Path:
    """This site's studio folder: an explicit mapping entry, else DATA_ROOT/SITE or the one DATA_ROOT/SITE-*."""
    if site in studios:
        return studios[site]
    if data_root is None:
        raise ValueError(f"site {site}: no studio folder configured; pass --studio {site}=FOLDER or "
                         f"--data-root, or set ${DATA_ROOT_ENV}")
    if (data_root / site).is_dir():
        return data_root / site
    matches = sorted(p for p in data_root.glob(f"{site}-*") if p.is_dir())
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise ValueError(f"site {site}: expected one studio folder {data_root}/{site} or {data_root}/{site}-*, "
                         f"found {found}")
    return matches[0]


def studio_networks(trainer: StudioTrainer) -> dict[str, nn.Module]:
    return {"generator": trainer.generator, "discriminator": trainer.discriminator}


def uses_groupnorm(cfg: FedgaiConfig) -> bool:
    """DP-SGD (privacy.dp = record) trains GroupNorm in place of BatchNorm; it stays local the same way."""
    return cfg.privacy.dp == "record"


def load_global(trainer: StudioTrainer, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Load the received global entries into the local networks; returns them as the DIFF baseline.

    Only the entries this studio shares in the configured mode are accepted (anything else from the
    server is an error), so local BatchNorm statistics and spectral-norm u/v are never overwritten.
    """
    cfg = trainer.cfg
    networks = studio_networks(trainer)
    expected = set(shared_keys(networks, cfg.fed.mode, uses_groupnorm(cfg)))
    if set(params) != expected:
        extra, missing = sorted(set(params) - expected), sorted(expected - set(params))
        raise ValueError(f"global model does not match mode {cfg.fed.mode}: unexpected {extra[:3]}, "
                         f"missing {missing[:3]}")
    per_net: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in params.items():
        net, name = split_key(key)
        per_net.setdefault(net, {})[name] = torch.as_tensor(value)
    for net, state in per_net.items():
        networks[net].load_state_dict(state, strict=False)
    return {key: torch.as_tensor(value).detach().clone().cpu() for key, value in params.items()}


def local_round(trainer: StudioTrainer, received: FLModel) -> FLModel:
    """One federated round at a studio: load the global entries, train, return the DIFF update + metrics."""
    cfg = trainer.cfg
    federated = cfg.fed.mode != "local"
    baseline = load_global(trainer, received.params or {}) if federated else {}
    started = time.perf_counter()
    try:
        losses = trainer.train_epochs(cfg.train.epochs, tag=f" round {received.current_round}")
    except PrivacyBudgetExceeded as err:
        return budget_exhausted_notice(trainer, err)
    # train_seconds lets the server tell its own orchestration overhead from the studios' compute.
    metrics = {**losses, **trainer.quality(), "train_seconds": time.perf_counter() - started}
    after = shared_state(studio_networks(trainer), cfg.fed.mode, uses_groupnorm(cfg)) if federated else {}
    diff = {key: after[key] - baseline[key] for key in baseline}
    meta = {FLMetaKey.NUM_STEPS_CURRENT_ROUND: trainer.num_samples}
    epsilon = trainer.dp_epsilon()  # record-level DP-SGD; client-level DP adds its own in the filter
    if epsilon is not None:
        meta[DP_EPSILON_META_KEY] = epsilon
    return FLModel(params=diff, params_type=ParamsType.DIFF, metrics=metrics, meta=meta)


def budget_exhausted_notice(trainer: StudioTrainer, reason: PrivacyBudgetExceeded) -> FLModel:
    """Record-level DP-SGD would overrun privacy.target_epsilon: no update, only the flag and epsilon spent.

    (Client-level DP is enforced where the noise is added: GaussianDPFilter refuses the release.)
    """
    print(f"{trainer.studio.name}: {reason}; this studio stops contributing", flush=True)
    meta = {FLMetaKey.NUM_STEPS_CURRENT_ROUND: trainer.num_samples, BUDGET_EXHAUSTED_KEY: True,
            DP_EPSILON_META_KEY: trainer.dp_epsilon()}
    return FLModel(params={}, params_type=ParamsType.DIFF, metrics={"dp_budget_exhausted": 1.0}, meta=meta)


def open_trainer(cfg: FedgaiConfig, studio_dir: Path, out_dir: Path, resume: bool, device: str) -> StudioTrainer:
    """Build the studio's trainer; when the federation resumes, continue from the site's last checkpoint."""
    trainer = StudioTrainer(cfg, studio_dir, out_dir, device=device)
    last = out_dir / "checkpoints" / "last.pt"
    if resume and last.is_file():
        trainer.load_checkpoint(last)
    return trainer


def save_round(trainer: StudioTrainer, rnd: int, metrics: Mapping[str, float]) -> None:
    """Per-round site outputs: sample grid, resumable checkpoint, one metrics line."""
    trainer.save_grid(trainer.run_dir / "grids" / f"round-{rnd:03d}.png")
    trainer.save_checkpoint()
    with open(trainer.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"round": rnd, "epoch": trainer.epoch, **metrics}) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    flare.init()
    site = flare.get_site_name()
    studio_dir = resolve_studio(site, studio_map(args.studio), args.data_root)
    writer = SummaryWriter()
    trainer = None
    while flare.is_running():
        received = flare.receive()
        started = time.perf_counter()
        rnd = received.current_round
        if trainer is None:
            cfg = FedgaiConfig.from_dict(received.meta[CONFIG_META_KEY])
            trainer = open_trainer(cfg, studio_dir, args.output_root / site, resume=rnd > 0, device=args.device)
        result = local_round(trainer, received)
        save_round(trainer, rnd, result.metrics)
        # All the studio's own work this round (set-up, training, outputs): the rest of a round is NVFlare's.
        result.metrics["studio_seconds"] = time.perf_counter() - started
        for name, value in result.metrics.items():
            writer.add_scalar(name, value, global_step=rnd)
        flare.send(result)
    if trainer is not None:
        trainer.close()


if __name__ == "__main__":
    main()
