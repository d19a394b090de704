"""What the federation costs: bytes on the wire per mode, and NVFlare's orchestration overhead per round.

1. Upload per studio per round for each mode (fedgai = D without BN, fedavg_bn, fedavg_full = G + D), from
   the shared keys of the real networks at a profile's sizes: the D-only vs full G+D ratio.
2. Overhead, read from a finished simulator workspace (`fedgai simulate ... --workspace WS`): round wall time
   against the studios' own work spread over the simulator's threads - training (`train_seconds`) and all
   studio-side work (`studio_seconds`: trainer set-up, training, grid, checkpoint); what is left is NVFlare's
   share (task dispatch, client swap-in, serialisation, aggregation).

    python benchmarks/federation.py [--profile quick] [--workspace runs/demo] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedgai.config import profile
from fedgai.federated.keys import shared_state
from fedgai.federated.simulate import check_run
from fedgai.models import build_gan

MODES = ("fedgai", "fedavg_bn", "fedavg_full")


def wire_bytes(profile_name: str) -> dict[str, int]:
    """Bytes of the arrays one studio uploads per round, per mode (the encoder is never trained or sent)."""
    cfg = profile(profile_name)
    gan = build_gan(cfg)
    nets = {"generator": gan.generator, "discriminator": gan.discriminator}
    return {mode: int(sum(v.numel() * v.element_size() for v in shared_state(nets, mode).values()))
            for mode in MODES}


def overhead(workspace: Path, threads: int) -> list[dict]:
    """Per round: wall time, training and all studio work (summed over studios / threads), NVFlare's share."""
    rounds = sorted((workspace / "nvflare").rglob("round-*.json"))
    summaries = check_run(workspace, len(rounds))
    rows = []
    for s in summaries:
        wall = s["wall_time_s"]
        train, studio = (sum(c["metrics"][key] for c in s["contributions"].values()) / threads
                         for key in ("train_seconds", "studio_seconds"))
        rows.append({"round": s["round"], "wall_s": wall, "training_s": round(train, 1),
                     "studio_work_s": round(studio, 1), "training_fraction": round(train / wall, 3),
                     "nvflare_fraction": round(max(wall - studio, 0.0) / wall, 3),
                     "bytes_sent_per_site": s["bytes_sent_per_site"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--workspace", type=Path, help="a finished `fedgai simulate` workspace")
    parser.add_argument("--threads", type=int, default=2, help="simulator threads used for that run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/federation.json"))
    args = parser.parse_args()
    sizes = wire_bytes(args.profile)
    result = {"profile": args.profile, "upload_bytes_per_studio_round": sizes,
              "full_over_d_only": round(sizes["fedavg_full"] / sizes["fedgai"], 2)}
    if args.workspace:
        result["rounds"] = overhead(args.workspace, args.threads)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
