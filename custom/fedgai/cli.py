"""`fedgai` command line: data preparation, local training, sketching and the federation."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from fedgai.config import ENCODERS, FED_MODES, PROFILES, ConfigError, FedgaiConfig, TrainConfig, profile
from fedgai.data import DEMO_STYLES, SKETCH_STYLES, StudioDataError
from fedgai.data.demo import SMALL_STUDIOS
from fedgai.layout import CHECKPOINT, CONFIG, EPOCH_RECORDS, WORKSPACE_STATE
from fedgai.models import EncoderUnavailable
from fedgai.rundir import (
    prepare_train_run,
    record_run,
    remove_if_empty,
    resume_hint,
)

# Errors a user can fix; they are printed as one clear message instead of a stack trace (-v shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, StudioDataError, EncoderUnavailable, FileNotFoundError, FileExistsError, ValueError,
)


def load_config(args: argparse.Namespace, overrides: dict | None = None) -> FedgaiConfig:
    """Profile, then an optional JSON file, then the command's options, then --set: one with_overrides call,
    so the result is validated once."""
    cfg = FedgaiConfig.load(args.config) if getattr(args, "config", None) else profile(args.profile)
    return cfg.with_overrides((overrides or {}) | dict(getattr(args, "set", None) or ()))


def setting(text: str) -> tuple[str, Any]:
    """argparse type of --set: KEY=VALUE, the value read as JSON (numbers, true/false, null) or else as text."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE (e.g. train.lr_g=0.001), got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


@functools.cache
def settings_table() -> str:
    """Every setting --set reaches, with its value in each profile (the help's epilog)."""
    profiles = {name: profile(name).to_dict() for name in sorted(PROFILES)}
    rows = [(f"{section}.{key}", *(json.dumps(p[section][key]) for p in profiles.values()))
            for section, values in FedgaiConfig().to_dict().items() for key in values]
    header = ("setting", *profiles)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "settings (--set KEY=VALUE; the value in each profile):\n  " + "\n  ".join(lines)


def add_config_args(p: argparse.ArgumentParser, default_profile: str = "quick") -> None:
    p.add_argument("--profile", default=default_profile, choices=sorted(PROFILES),
                   help=f"settings profile (default {default_profile}; 'paper' = 11 x 11 at 256 px)")
    p.add_argument("--config", type=Path, help="JSON config file (see `fedgai config show`); replaces --profile")
    p.add_argument("--set", type=setting, action="append", metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.lr_g=0.001 (repeatable; all listed below)")
    p.add_argument("--seed", type=int, help="random seed (default from the profile)")
    p.add_argument("--image-size", type=int, help="training resolution in px (multiple of 32)")
    p.add_argument("--encoder", choices=ENCODERS,
                   help="feature encoder; auto = vgg16 if its weights are found, else efficientnet-lite0")
    p.epilog = settings_table()
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def common_overrides(args: argparse.Namespace) -> dict:
    return {"train.seed": args.seed, "model.image_size": args.image_size, "model.encoder": args.encoder,
            "train.device": getattr(args, "device", None)}


def device_setting(value: str) -> str:
    """argparse type of --device: the values train.device accepts."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def add_device_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """The --device option of every command that trains or infers (None = the config's train.device)."""
    where = f"default {default}" if default else "default: the config's train.device, auto"
    p.add_argument("--device", type=device_setting, default=default,
                   help=f"auto (CUDA when present, else CPU), cpu, cuda or cuda:N ({where})")


def add_follow_symlinks_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--follow-symlinks", action="store_true", default=None,
                   help="accept links that lead out of a studio folder (default: listed as problems)")


# ----------------------------------------------------------------------------------------------- commands
def cmd_data_demo(args: argparse.Namespace) -> None:
    from fedgai.data import make_demo
    from fedgai.data.demo import CrossStyle

    t = profile("quick").train  # the held-out split every profile uses, unless --split-seed says otherwise
    cross = CrossStyle(args.cross_style, args.split_seed, t.val_fraction, t.test_fraction) \
        if args.cross_style else None
    folders = make_demo(args.out, studios=args.studios, seed=args.seed, size=args.size, unpaired=args.unpaired,
                        cross_style=cross, small=args.small)
    print(f"{len(folders)} demo studios in {args.out}:")
    for folder in folders:
        extra = f", {args.unpaired} unpaired photos" if args.unpaired else ""
        print(f"  {folder.name}: {len(list((folder / 'sketches').iterdir()))} pairs{extra}")
    if cross:
        print(f"cross-style ground truth (test photos in every other studio's style; never train on it): "
              f"{args.cross_style}")


def cmd_data_sketchify(args: argparse.Namespace) -> None:
    from fedgai.data import sketchify_folder

    out = sketchify_folder(args.photos, args.style, args.out, size=args.size)
    print(f"studio written to {out} (photos/ + sketches/ in style '{args.style}')")


def cmd_data_check(args: argparse.Namespace) -> None:
    from fedgai.data import load_studio

    studio = load_studio(args.studio, follow_symlinks=bool(args.follow_symlinks))
    print(f"studio '{studio.name}' OK: {len(studio.pairs)} photo-sketch pairs, {len(studio.unpaired)} unpaired "
          "photos (photos-unpaired/ or photos/ without a sketch: used only by the terms that need no sketch)")


def cmd_train_local(args: argparse.Namespace) -> None:
    from fedgai.data import load_studio
    from fedgai.prior import resolve_prior, resolved_encoder_name
    from fedgai.trainer import StudioTrainer

    cfg = load_config(args, common_overrides(args) | {"train.max_pairs": args.max_pairs,
                                                      "data.follow_symlinks": args.follow_symlinks})
    if cfg.privacy.planned:  # a record-level plan spends its budget over this run's epochs
        cfg = cfg.with_overrides({"train.epochs": args.epochs, "fed.rounds": 1})
    # Every check before the run folder is touched: a bad studio never costs an earlier run (--overwrite).
    load_studio(args.studio, follow_symlinks=cfg.data.follow_symlinks, max_pixels=cfg.data.max_pixels)
    resolve_prior(cfg, resolved_encoder_name(cfg))  # a missing prior: refused with the command that builds it
    prepare_train_run(args.out, args.studio, cfg, resume=args.resume, overwrite=args.overwrite)
    trainer = StudioTrainer(cfg, args.studio, args.out)
    last = trainer.folder.checkpoint
    if args.resume:
        trainer.load_checkpoint()
        print(f"resumed from {last} at epoch {trainer.epoch}")
    cfg.save(trainer.run_dir / CONFIG)
    record_run(trainer.run_dir, args.studio)
    print(f"device {trainer.device}" + (", bf16 autocast" if trainer.amp else ""))
    print(f"studio {trainer.studio.name}: {trainer.num_samples} pairs, encoder {trainer.encoder.name}, "
          f"CLIP {'on' if trainer.metadata['clip_enabled'] else 'off: ' + trainer.metadata['clip_status']}")
    while trainer.epoch < args.epochs:
        losses = trainer.train_epochs(1)
        record = {"epoch": trainer.epoch, **losses, **trainer.quality()}
        trainer.folder.append_record(EPOCH_RECORDS, record)
        trainer.save_grid(trainer.folder.grid(f"epoch_{trainer.epoch:03d}"))
        trainer.save_checkpoint()
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    trainer.close()
    print(f"done: checkpoint {last}\n      grids {trainer.run_dir / 'grids'}\n"
          f"      TensorBoard: tensorboard --logdir {trainer.run_dir / 'tensorboard'}")


def cmd_sketch(args: argparse.Namespace) -> None:
    from fedgai.edge import open_runner, sketch_files

    written = sketch_files(open_runner(args.model, args.device), args.inputs, args.out, size=args.size)
    print(f"{len(written)} sketches written to {args.out}")


def cmd_compress(args: argparse.Namespace) -> None:
    from fedgai.edge.distill import compress_checkpoint
    from fedgai.edge.runtime import resolve_model

    edge = {"epochs": args.epochs, "width": args.width, "lr": args.lr}
    distiller = compress_checkpoint(resolve_model(args.model)[1], args.out, args.studio, args.device,
                                    {k: v for k, v in edge.items() if v is not None}, args.resume)
    if distiller.epoch:
        print(f"resuming {args.out} at epoch {distiller.epoch}/{distiller.cfg.edge.epochs}")
    for record in distiller.train():
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    print(f"compressed generator (width {distiller.cfg.edge.width}): {args.out}")


def cmd_export(args: argparse.Namespace) -> None:
    from fedgai.edge.export import export_model
    from fedgai.edge.runtime import resolve_model

    result = export_model(resolve_model(args.model)[1], args.out)
    print(f"TorchScript: {result.torchscript} (max |diff| vs eager {result.max_diff_torchscript:.2g})\n"
          f"ONNX:        {result.onnx} (max |diff| vs eager in onnxruntime {result.max_diff_onnx:.2g})")


def cmd_share_style(args: argparse.Namespace) -> None:
    from fedgai.edge.style_blend import share_style

    path = share_style(args.model, args.out)
    print(f"style statistics (AdaIN_SD channel means and stds only) written to {path}")


def cmd_fuse(args: argparse.Namespace) -> None:
    from fedgai.edge import expand_inputs
    from fedgai.edge.style_blend import fuse

    path = fuse(args.model, args.style, expand_inputs(args.photos), args.out, args.steps, args.device)
    print(f"style-fusion grid written to {path}")


def cmd_studio(args: argparse.Namespace) -> None:
    from fedgai.studio_page.app import PageSettings, serve

    serve(PageSettings(model=args.model, styles=args.styles, evaluation=args.evaluation, workspace=args.workspace,
                       host=args.host, port=args.port, size=args.size, max_upload_mb=args.max_upload_mb,
                       device=args.device))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fedgai.config import EvalConfig
    from fedgai.evaluation.evaluate import evaluate_runs
    from fedgai.evaluation.report import text_table, write_outputs

    options = {"feature_size": args.feature_size, "gallery_rows": args.gallery_rows,
               "style_pairs_per_studio": args.style_pairs, "inception_weights": args.inception_weights,
               "num_threads": args.threads}
    cfg = EvalConfig(**{k: v for k, v in options.items() if v is not None})
    evaluation = evaluate_runs(args.runs, data=args.data, labels=args.label or (), cfg=cfg.validate(),
                               device=args.device)
    print(text_table(evaluation.results))
    for name, note in evaluation.notes.items():
        print(f"{name}: {note}")
    paths = write_outputs(evaluation, args.out)
    print("written: " + ", ".join(str(p) for p in paths.values()))


def cmd_evaluate_fusion(args: argparse.Namespace) -> None:
    from fedgai.config import EvalConfig
    from fedgai.evaluation.cross_style import evaluate_fusion

    cfg = EvalConfig(**({"feature_size": args.feature_size} if args.feature_size else {})).validate()
    report = evaluate_fusion(args.runs, args.cross_style, data=args.data, steps=args.steps, cfg=cfg,
                             device=args.device)
    s = report["summary"]
    print("pair (A in B's style): share for B along alpha | chamfer ratio")
    for p in report["pairs"]:
        print(f"  {p['a']} -> {p['b']}: {' '.join(f'{v:.2f}' for v in p['share_b'])} | {p['chamfer_ratio']:.2f}")
    print(f"mean over pairs: share for B {' '.join(f'{v:.2f}' for v in s['share_curve'])} (B's real drawings: "
          f"{s['share_b_truth']:.2f}); chamfer ratio {s['chamfer_ratio']:.2f}; pixel change "
          f"{100 * s['pixel_change']:.2f} %")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written: {args.out}")


def cmd_simulate(args: argparse.Namespace) -> None:
    from fedgai.federated.simulator.simulate import SimulationError, simulate

    cfg = load_config(args, common_overrides(args) | {
        "data.follow_symlinks": args.follow_symlinks, "fed.rounds": args.rounds, "fed.mode": args.mode,
        "privacy.he": args.he or None})
    try:
        simulate(cfg, args.studios, args.workspace, args.data, resume=args.resume, overwrite=args.overwrite,
                 threads=args.threads, slots=args.slots)
    except SimulationError as err:  # the run failed: the message names the log to read
        raise SystemExit(f"error: {err}") from err


def cmd_job_export(args: argparse.Namespace) -> None:
    from fedgai.federated.jobs.he_job import export_jobs

    for path in export_jobs(args.out, profile=args.profile):
        print(f"job written: {path}")


def cmd_dp_plan(args: argparse.Namespace) -> None:
    import dataclasses

    from fedgai.privacy.planner import candidates, choose, run_epochs

    cfg = load_config(args)
    privacy = dataclasses.replace(cfg.privacy, delta=args.delta if args.delta is not None else cfg.privacy.delta)
    epochs = args.epochs or run_epochs(cfg)
    plans = candidates(privacy, args.pairs, epochs, args.epsilon)
    chosen = choose(plans, privacy.plan_min_steps)
    print(f"record-level DP plan: {args.pairs} training pairs, {epochs} epochs, target epsilon {args.epsilon} at "
          f"delta {privacy.delta} ({privacy.accountant}; statistics release at sigma_s "
          f"{privacy.stats_noise_multiplier}; sigma >= {privacy.noise_multiplier}; expected batch <= "
          f"{privacy.plan_max_batch}; >= {privacy.plan_min_steps} steps)")
    print("  batch  expected batch  steps  sigma    epsilon  score (sqrt(steps) x expected batch / sigma)")
    for plan in plans:
        mark = "  <- chosen" if plan == chosen else ""
        print(f"  {plan.batch_size:5d}  {plan.expected_batch:14.1f}  {plan.steps:5d}  {plan.noise_multiplier:6.2f}  "
              f"{plan.expected_epsilon:8.3f}  {plan.score:6.1f}{mark}")
    print(f"sigma {chosen.noise_multiplier:.2f}, batch {chosen.batch_size} (expected {chosen.expected_batch:.1f} "
          f"pairs per step, sample rate {chosen.sample_rate:.4g}), {chosen.steps} steps ({chosen.steps_per_epoch} "
          f"per epoch), expected epsilon {chosen.expected_epsilon:.3f}")
    print(f"train with it: --set privacy.dp=record --set privacy.target_epsilon={args.epsilon} (a record-level run "
          "with a target plans by default, the same from its own pair count and fed.rounds x train.epochs; "
          "privacy.plan=false keeps privacy.noise_multiplier and train.batch_size as set)")


def cmd_prior_build(args: argparse.Namespace) -> None:
    from fedgai.prior_build import build_prior

    print(f"public prior written to {build_prior(load_config(args), args.out)}")


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
    for add in (add_data_parsers, add_train_local_parser, add_sketch_parser, add_compress_parser,
                add_export_parser, add_style_parsers, add_studio_parser, add_evaluate_parser, add_simulate_parser,
                add_job_parsers, add_config_parsers, add_dp_parsers, add_prior_parsers):
        add(sub)
    return parser


def pair_counts(text: str) -> tuple[int, ...]:
    """--small's "10,20" (or "" for none) as counts."""
    try:
        return tuple(int(n) for n in text.replace(" ", "").split(",") if n)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated pair counts such as 10,20, got {text!r}") from err


def add_data_parsers(sub) -> None:
    data = sub.add_parser("data", help="make or check studio datasets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND")
    p = data.add_parser("demo", help="generate demo studios (garment photos + per-studio sketch styles)",
                        description=f"Generate demo studios; styles: {', '.join(DEMO_STYLES)}.")
    p.add_argument("--studios", type=int, default=8, help="number of studios (default 8)")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    p.add_argument("--unpaired", type=int, default=0, metavar="N",
                   help="N extra photos per studio without a sketch, in photos-unpaired/ (default 0)")
    p.add_argument("--cross-style", type=Path, metavar="DIR",
                   help="also draw each studio's test photos in every other studio's style into DIR (new, outside "
                   "--out): the ground truth of `fedgai evaluate-fusion`, never trained on")
    p.add_argument("--split-seed", type=int, default=TrainConfig().split_seed,
                   help="train.split_seed of the runs to score: whose test photos --cross-style draws (default 0)")
    p.add_argument("--small", type=pair_counts, default=SMALL_STUDIOS, metavar="N,N",
                   help="pair counts of the last studios when there are more studios than counts (default "
                   f"{','.join(map(str, SMALL_STUDIOS))}; '' for none: the demo before small studios)")
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
    add_follow_symlinks_arg(p)
    p.set_defaults(func=cmd_data_check)


def add_train_local_parser(sub) -> None:
    p = sub.add_parser("train-local", help="train one studio's GAN locally (no federation)")
    p.add_argument("--studio", type=Path, required=True, help="studio folder with photos/ and sketches/")
    p.add_argument("--epochs", type=int, default=5, help="train until this many epochs in total (default 5)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, grids, TensorBoard")
    p.add_argument("--max-pairs", type=int, help="use at most this many pairs (default from the profile)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (else refused)")
    add_follow_symlinks_arg(p)
    add_device_arg(p)
    add_config_args(p)
    p.set_defaults(func=cmd_train_local,
                   resumable=lambda args: (args.out / CHECKPOINT).is_file())


def add_sketch_parser(sub) -> None:
    p = sub.add_parser("sketch", help="turn photos into sketches with a trained studio generator",
                       description="Whole photos, never cropped: each sketch keeps its photo's aspect ratio.")
    p.add_argument("--model", type=Path, required=True,
                   help="run folder, checkpoint (full or compressed) or exported .onnx / .ts file")
    p.add_argument("inputs", type=Path, nargs="+", metavar="PHOTO_OR_DIR", help="photos or folders of photos")
    p.add_argument("--out", type=Path, required=True, help="folder for the sketches (<stem>.png, grayscale)")
    p.add_argument("--size", type=int, help="longer side of the sketch in px, at most the photo's "
                   "(default: the photo's longer side capped at 1024)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = GPU if available")
    p.set_defaults(func=cmd_sketch)


def add_compress_parser(sub) -> None:
    p = sub.add_parser("compress", help="distil a studio's compressed (edge) generator from its full one")
    p.add_argument("--model", type=Path, required=True, help="full generator: run folder or checkpoint")
    p.add_argument("--studio", type=Path, help="the studio folder the generator was trained on (default: the "
                   "folder the run recorded); only its training pairs (the run's split.json) are read")
    p.add_argument("--out", type=Path, required=True, help="compressed checkpoint to write (e.g. compressed.pt)")
    p.add_argument("--epochs", type=int, help="distillation epochs in total (default edge.epochs)")
    p.add_argument("--width", type=int, help="first decoder stage's channels (default edge.width)")
    p.add_argument("--lr", type=float, help="learning rate (default edge.lr)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = GPU if available")
    p.set_defaults(func=cmd_compress)


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a generator + its encoder as TorchScript and ONNX (verified)")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint (full or compressed)")
    p.add_argument("--out", type=Path, required=True, help="folder for sketcher.ts and sketcher.onnx")
    p.set_defaults(func=cmd_export)


def add_style_parsers(sub) -> None:
    p = sub.add_parser("share-style", help="write a studio's style statistics (what it may share for fusion)",
                       description="Write the studio's AdaIN_SD statistics - per encoder tap, the channel means and "
                       "standard deviations of its sketch set's features - to a JSON file. Nothing else is in it: no "
                       "sketch, no photo, no generator weight. Hand it to another studio only if you want it to draw "
                       "in (a blend of) your style with `fedgai fuse`.")
    p.add_argument("--model", type=Path, required=True, help="run folder or checkpoint of the sharing studio")
    p.add_argument("--out", type=Path, required=True, help="the style file to write (.json)")
    p.set_defaults(func=cmd_share_style)

    p = sub.add_parser("fuse", help="blend your studio's style with shared styles: an interpolation grid PNG",
                       description="Run your own generator with AdaIN_SD statistics interpolated between your "
                       "studio's and each shared style file's. Rows: each photo x each style; columns: the photo, "
                       "then your style (left) to the other studio's (right).")
    p.add_argument("--model", type=Path, required=True, help="your run folder or checkpoint")
    p.add_argument("--style", type=Path, action="append", required=True,
                   help="a style file from `fedgai share-style` (repeat for several)")
    p.add_argument("--steps", type=int, default=5, help="columns from your style to the other (>= 2, default 5)")
    p.add_argument("--out", type=Path, required=True, help="the grid PNG to write")
    p.add_argument("photos", type=Path, nargs="+", help="photo files or folders")
    add_device_arg(p, "auto")
    p.set_defaults(func=cmd_fuse)


def add_studio_parser(sub) -> None:
    from fedgai.studio_page import DEFAULT_PORT, MAX_UPLOAD_MB  # constants only: fastapi and torch load on start

    p = sub.add_parser("studio", help="the studio page: sketch, blend and see your results in a web browser",
                       description="A local web page for designers: drop photos to sketch them in the studio's "
                       "style, blend towards shared styles, see the latest evaluation and round progress. It "
                       "listens on 127.0.0.1 (this machine only) unless --host says otherwise; then it prints a "
                       "link with a token, once. It writes no file.")
    p.add_argument("--model", type=Path, required=True,
                   help="run folder, checkpoint (full or compressed) or exported .onnx / .ts file")
    p.add_argument("--styles", type=Path, help="folder of shared style files (*.style.json from `fedgai share-style`)")
    p.add_argument("--evaluation", type=Path, help="`fedgai evaluate --out` folder (default: the newest one in "
                   "the run folder's or its simulator workspace's evaluation/)")
    p.add_argument("--workspace", type=Path, help="simulator workspace with the round summaries (default: the one "
                   "around the run folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs "
                   "the printed token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--size", type=int, help="longer side of the sketches in px (default: the photo's, at most 1024)")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                   help=f"largest photo file accepted, MB (default {MAX_UPLOAD_MB}; and at most data.max_megapixels)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto = GPU if available")
    p.set_defaults(func=cmd_studio)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="held-out quality of finished runs, compared side by side, with an HTML report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Regenerate every studio's TEST pairs (split.json in its run folder; never trained on) with "
        "the run's own generator and score them against the real sketches:\n"
        "  FD/KD-EffNetLite0  Frechet / kernel distance of ImageNet EfficientNet-Lite0 features (not FID)\n"
        "  SSIM, PSNR         pixel agreement with the paired real sketch\n"
        "  ink IoU, chamfer   stroke overlap / stroke distance in px\n"
        "  style acc          share of generated sketches a classifier trained on the studios' real\n"
        "                     training sketches attributes to their own studio\n"
        "  FD-Style           Frechet distance of that classifier's studio probabilities (own style)\n"
        "  Gram               paired Gram-matrix distance at the run encoder's taps (stroke texture)\n"
        "  FID/KID, CLIP      only when their weights are already on this machine, else 'unavailable'\n"
        "RUN_DIR: a train-local run folder, a `fedgai simulate` workspace or a downloaded job result\n"
        "(any folder holding studio run folders). Several RUN_DIRs are compared studio by studio; folders\n"
        "of one mode (e.g. a train-local folder per studio) are merged into one run.\n"
        "Writes OUT/metrics.csv, OUT/metrics.json and OUT/report.html (self-contained: galleries,\n"
        "tables, training curves, bytes sent and DP epsilon).")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders to evaluate and compare")
    p.add_argument("--out", type=Path, required=True, help="folder for metrics.csv, metrics.json, report.html")
    p.add_argument("--data", type=Path, help="folder of studio folders (matched by studio.json name or folder "
                   "name); default: the studio folder each run recorded, else RUN_DIR/data of a simulator workspace")
    p.add_argument("--label", action="append", metavar="LABEL",
                   help="name of each run in the report, one per RUN_DIR in order (default: its training mode)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N], or auto = GPU when available")
    p.add_argument("--feature-size", type=int, help="EfficientNet-Lite0 input side in px (default 224)")
    p.add_argument("--gallery-rows", type=int, help="test pairs shown per studio in the report (default 6)")
    p.add_argument("--style-pairs", type=int, help="real training sketches per studio that fit the style "
                   "classifier (default 64)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--inception-weights", help="local torch-fidelity Inception-v3 file for real FID/KID "
                   "(default: looked up in the torch hub cache; never downloaded)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "evaluate-fusion", help="score style fusion of a run against the demo's cross-style ground truth",
        description="For every ordered pair of the run's studios (A, B): A's generator with AdaIN_SD statistics "
        "from A's own (alpha 0) to B's shared ones (alpha 1, what `fedgai share-style` hands over) on A's test "
        "photos, against B's drawings of those photos (`fedgai data demo --cross-style`). Scores: the share the "
        "style classifier (of `fedgai evaluate`) attributes to B, FD-Style to B's drawings, and the ink chamfer "
        "ratio (B-end sketch vs B's drawing, over A's own-style sketch vs A's real sketch).")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR",
                   help="one run: a `fedgai simulate` workspace, or one mode's train-local folders")
    p.add_argument("--cross-style", type=Path, required=True, metavar="DIR",
                   help="the folder `fedgai data demo --cross-style DIR` wrote")
    p.add_argument("--data", type=Path, help="folder of studio folders (default: as `fedgai evaluate`)")
    p.add_argument("--steps", type=int, default=5, help="grid points from A's style to B's (>= 2, default 5)")
    p.add_argument("--out", type=Path, required=True, help="the JSON report to write")
    p.add_argument("--feature-size", type=int, help="EfficientNet-Lite0 input side in px (default 224)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda[:N], or auto = GPU when available")
    p.set_defaults(func=cmd_evaluate_fusion)


def add_simulate_parser(sub) -> None:
    p = sub.add_parser("simulate", help="run the federation in NVFlare's simulator (demo studios by default)")
    p.add_argument("--studios", type=int, default=8, help="number of studios (default 8)")
    p.add_argument("--rounds", type=int, help="federated rounds (default from the profile)")
    p.add_argument("--workspace", type=Path, required=True, help="simulator workspace (outputs land here)")
    p.add_argument("--data", type=Path, help="folder of studio folders (default: generate demo studios)")
    p.add_argument("--mode", choices=FED_MODES,
                   help="fedgai (D without BN, default) or a baseline")
    p.add_argument("--he", action="store_true", help="secure aggregation with CKKS (simulator keys)")
    p.add_argument("--threads", type=int, help="studio processes at once (default: one per studio while the "
                   "machine's memory holds them, else as many as fit; a swapped studio restarts every round)")
    p.add_argument("--slots", type=int, help="studios that train at a time; the others wait holding only their "
                   "networks and data (default: the cores at train.num_threads torch threads each)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --workspace")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --workspace (keeps data/)")
    add_follow_symlinks_arg(p)
    add_device_arg(p)
    add_config_args(p)
    p.set_defaults(func=cmd_simulate, resumable=lambda args: (args.workspace / WORKSPACE_STATE).is_dir())


def add_job_parsers(sub) -> None:
    job = sub.add_parser("job", help="NVFlare job folders").add_subparsers(
        dest="job_command", required=True, metavar="JOB_COMMAND")
    p = job.add_parser("export", help="(re)generate the job folders under jobs/ from the code")
    p.add_argument("--out", type=Path, default=Path("jobs"), help="where to write (default jobs/)")
    p.add_argument("--profile", default="paper", choices=sorted(PROFILES), help="settings (default paper)")
    p.set_defaults(func=cmd_job_export)


def add_dp_parsers(sub) -> None:
    dp = sub.add_parser("dp", help="differential privacy tools").add_subparsers(
        dest="dp_command", required=True, metavar="DP_COMMAND")
    p = dp.add_parser("plan", help="record-level DP: sigma, batch and steps that spend a target epsilon well",
                      description="Plan record-level DP from the RDP accountant (privacy/planner.py): for each "
                      "candidate batch, the smallest sigma within the target; the one with the fewest steps whose "
                      "signal-to-noise is within 5 % of the best is chosen. The trainer runs this plan by default "
                      "whenever privacy.dp is record and privacy.target_epsilon is set (privacy.plan unset or "
                      "true); privacy.noise_multiplier is then the lowest sigma it may use, and train.batch_size "
                      "is replaced by the plan's. Set privacy.plan=false to train with your own sigma and batch "
                      "(the target then only stops the run when its ledger would pass it).")
    p.add_argument("--pairs", type=int, required=True, help="the studio's training pairs")
    p.add_argument("--epsilon", type=float, required=True, help="target epsilon of the whole run")
    p.add_argument("--delta", type=float, help="delta (default: the config's privacy.delta)")
    p.add_argument("--epochs", type=int, help="epochs of the whole run (default: fed.rounds x train.epochs)")
    add_config_args(p)
    p.set_defaults(func=cmd_dp_plan)


def add_prior_parsers(sub) -> None:
    prior = sub.add_parser("prior", help="the public prior (pretrained G and D, public data only)").add_subparsers(
        dest="prior_command", required=True, metavar="PRIOR_COMMAND")
    p = prior.add_parser("build", help="train the public prior for a config's architecture and cache it",
                         description="Demo garments (public taste, own random streams) with xdog/contour edge "
                         "sketches, no studio's data or line style (prior_build.py); cached where train.prior=auto "
                         "looks ($FEDGAI_PRIOR_DIR, default ~/.cache/fedgai/priors). fedgai simulate builds a "
                         "missing one itself; train-local and the job's sites only load it.")
    p.add_argument("--out", type=Path, help="prior file (default: the cache, where train.prior=auto finds it)")
    add_config_args(p)
    p.set_defaults(func=cmd_prior_build)


def add_config_parsers(sub) -> None:
    cfg = sub.add_parser("config", help="settings").add_subparsers(
        dest="config_command", required=True, metavar="CONFIG_COMMAND")
    p = cfg.add_parser("show", help="print a profile's settings as JSON (a starting point for --config)")
    p.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    p.set_defaults(func=cmd_config_show)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    # Output folders this call creates; a failed call removes them again if they are still empty.
    created = [path for name in ("out", "workspace") if isinstance(path := getattr(args, name, None), Path)
               and not path.exists()]
    failed = True
    try:
        args.func(args)
        failed = False
    except USER_ERRORS as err:
        if args.verbose:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = resume_hint(argv, args.resumable(args)) if hasattr(args, "resumable") else "nothing to resume"
        print(f"\ninterrupted; {hint}", file=sys.stderr)
        return 130
    finally:
        if failed:
            for path in created:
                remove_if_empty(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
