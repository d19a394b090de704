"""`fedgai` command line: data preparation, local training, sketching and the federation."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedgai.config import PROFILES, ConfigError, FedgaiConfig, profile
from fedgai.data import DEMO_STYLES, SKETCH_STYLES, StudioDataError
from fedgai.models import EncoderUnavailable

# Errors a user can fix; they are printed as one clear message instead of a stack trace (-v shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, StudioDataError, EncoderUnavailable, FileNotFoundError, FileExistsError, ValueError,
)


def load_config(args: argparse.Namespace, overrides: dict | None = None) -> FedgaiConfig:
    """Profile, then an optional JSON file, then command-line overrides."""
    cfg = FedgaiConfig.load(args.config) if getattr(args, "config", None) else profile(args.profile)
    return cfg.with_overrides(overrides or {})


def add_config_args(p: argparse.ArgumentParser, default_profile: str = "quick") -> None:
    p.add_argument("--profile", default=default_profile, choices=sorted(PROFILES),
                   help=f"settings profile (default {default_profile}; 'paper' = 11 x 11 at 256 px)")
    p.add_argument("--config", type=Path, help="JSON config file (see `fedgai config show`); replaces --profile")
    p.add_argument("--seed", type=int, help="random seed (default from the profile)")
    p.add_argument("--image-size", type=int, help="training resolution in px (multiple of 32)")
    p.add_argument("--encoder", choices=("auto", "vgg16", "efficientnet-lite0", "random"),
                   help="feature encoder; auto = vgg16 if its weights are found, else efficientnet-lite0")


def common_overrides(args: argparse.Namespace) -> dict:
    return {"train.seed": args.seed, "model.image_size": args.image_size, "model.encoder": args.encoder}


# ----------------------------------------------------------------------------------------------- commands
def cmd_data_demo(args: argparse.Namespace) -> None:
    from fedgai.data import make_demo

    folders = make_demo(args.out, studios=args.studios, seed=args.seed, size=args.size)
    print(f"{len(folders)} demo studios in {args.out}:")
    for folder in folders:
        print(f"  {folder.name}: {len(list((folder / 'sketches').iterdir()))} pairs")


def cmd_data_sketchify(args: argparse.Namespace) -> None:
    from fedgai.data import sketchify_folder

    out = sketchify_folder(args.photos, args.style, args.out, size=args.size)
    print(f"studio written to {out} (photos/ + sketches/ in style '{args.style}')")


def cmd_data_check(args: argparse.Namespace) -> None:
    from fedgai.data import load_studio

    studio = load_studio(args.studio)
    print(f"studio '{studio.name}' OK: {len(studio.pairs)} photo-sketch pairs")


def cmd_train_local(args: argparse.Namespace) -> None:
    from fedgai.trainer import StudioTrainer

    cfg = load_config(args, common_overrides(args) | {"train.max_pairs": args.max_pairs})
    trainer = StudioTrainer(cfg, args.studio, args.out)
    last = trainer.run_dir / "checkpoints" / "last.pt"
    if args.resume and last.is_file():
        trainer.load_checkpoint(last)
        print(f"resumed from {last} at epoch {trainer.epoch}")
    elif args.resume:
        print(f"--resume: no checkpoint at {last}, starting fresh")
    cfg.save(trainer.run_dir / "config.json")
    print(f"studio {trainer.studio.name}: {trainer.num_samples} pairs, encoder {trainer.encoder.name}, "
          f"CLIP {'on' if trainer.metadata['clip_enabled'] else 'off: ' + trainer.metadata['clip_status']}")
    history_path = trainer.run_dir / "history.jsonl"
    while trainer.epoch < args.epochs:
        losses = trainer.train_epochs(1)
        record = {"epoch": trainer.epoch, **losses, **trainer.quality()}
        with history_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        trainer.save_grid(trainer.run_dir / "grids" / f"epoch_{trainer.epoch:03d}.png")
        trainer.save_checkpoint()
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    trainer.close()
    print(f"done: checkpoint {last}\n      grids {trainer.run_dir / 'grids'}\n"
          f"      TensorBoard: tensorboard --logdir {trainer.run_dir / 'tensorboard'}")


def cmd_sketch(args: argparse.Namespace) -> None:
    from fedgai.edge import Sketcher

    written = Sketcher(args.model).sketch_files(args.inputs, args.out)
    print(f"{len(written)} sketches written to {args.out}")


def cmd_simulate(args: argparse.Namespace) -> None:
    from fedgai.federated.simulate import simulate

    simulate(studios=args.studios, rounds=args.rounds, workspace=args.workspace, profile=load_config(args),
             data_dir=args.data, mode=args.mode, he=args.he)


def cmd_job_export(args: argparse.Namespace) -> None:
    from fedgai.federated.job import export_jobs

    for path in export_jobs(args.out, profile=args.profile):
        print(f"job written: {path}")


def cmd_config_show(args: argparse.Namespace) -> None:
    print(json.dumps(profile(args.profile).to_dict(), indent=2))


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedgai",
        description="Federated style learning for fashion studios: each studio trains a photo-to-sketch GAN "
        "on its own data; only the discriminator's non-BatchNorm weights are shared (NVIDIA FLARE).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="make or check studio datasets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data.add_parser("demo", help="generate demo studios (garment photos + per-studio sketch styles)",
                        description=f"Generate demo studios; styles: {', '.join(DEMO_STYLES)}.")
    p.add_argument("--studios", type=int, default=8, help="number of studios (default 8)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.set_defaults(func=cmd_data_demo)

    styles = "; ".join(f"{k}: {v}" for k, v in SKETCH_STYLES.items())
    p = data.add_parser("sketchify", help="turn a folder of garment photos into photo-sketch pairs",
                        description=f"Edge-detected sketches for your own photos. Styles - {styles}.")
    p.add_argument("photos", type=Path, help="folder of photos (png/jpg/jpeg/webp); never written to")
    p.add_argument("--style", default="xdog", choices=sorted(SKETCH_STYLES), help="line style (default xdog)")
    p.add_argument("--out", type=Path, required=True, help="studio folder to create")
    p.add_argument("--size", type=int, help="resize so the short side is SIZE px")
    p.set_defaults(func=cmd_data_sketchify)

    p = data.add_parser("check", help="validate a studio folder and list every problem")
    p.add_argument("studio", type=Path, help="studio folder with photos/ and sketches/")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("train-local", help="train one studio's GAN locally (no federation)")
    p.add_argument("--studio", type=Path, required=True, help="studio folder with photos/ and sketches/")
    p.add_argument("--epochs", type=int, default=5, help="train until this many epochs in total (default 5)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, grids, TensorBoard")
    p.add_argument("--max-pairs", type=int, help="use at most this many pairs (default from the profile)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    add_config_args(p)
    p.set_defaults(func=cmd_train_local)

    p = sub.add_parser("sketch", help="turn photos into sketches with a trained studio generator")
    p.add_argument("--model", type=Path, required=True, help="checkpoint (RUN_DIR/checkpoints/last.pt)")
    p.add_argument("inputs", type=Path, nargs="+", metavar="PHOTO_OR_DIR", help="photos or folders of photos")
    p.add_argument("--out", type=Path, required=True, help="folder for the sketches (<stem>.png)")
    p.set_defaults(func=cmd_sketch)

    p = sub.add_parser("simulate", help="run the federation in NVFlare's simulator (demo studios by default)")
    p.add_argument("--studios", type=int, default=8, help="number of studios (default 8)")
    p.add_argument("--rounds", type=int, help="federated rounds (default from the profile)")
    p.add_argument("--workspace", type=Path, required=True, help="simulator workspace (outputs land here)")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="settings profile")
    p.add_argument("--config", type=Path, help="JSON config file (e.g. with privacy.dp); replaces --profile")
    p.add_argument("--data", type=Path, help="folder of studio folders (default: generate demo studios)")
    p.add_argument("--mode", choices=("fedgai", "local", "fedavg_full", "fedavg_bn"),
                   help="fedgai (D without BN, default) or a baseline")
    p.add_argument("--he", action="store_true", help="secure aggregation with CKKS (simulator keys)")
    p.set_defaults(func=cmd_simulate)

    job = sub.add_parser("job", help="NVFlare job folders").add_subparsers(
        dest="job_command", required=True, metavar="JOB_COMMAND")
    p = job.add_parser("export", help="(re)generate the job folders under jobs/ from the code")
    p.add_argument("--out", type=Path, default=Path("jobs"), help="where to write (default jobs/)")
    p.add_argument("--profile", default="paper", choices=sorted(PROFILES), help="settings (default paper)")
    p.set_defaults(func=cmd_job_export)

    cfg = sub.add_parser("config", help="settings").add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND")
    p = cfg.add_parser("show", help="print a profile's settings as JSON (a starting point for --config)")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    p.set_defaults(func=cmd_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
