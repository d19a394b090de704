"""What the federation costs: bytes on the wire per mode, and NVFlare's orchestration overhead per round.

1. Upload per studio per round for each mode (fedgai = D without BN, fedavg_bn, fedavg_full = G + D), from
   the shared keys of the real networks at a profile's sizes: the D-only vs full G+D ratio.
2. Overhead, read from a finished simulator workspace (`fedgai simulate ... --workspace WS`): round wall time
   against the studios' own training time (`train_seconds` in each studio's metrics) spread over the
   simulator's threads; what is left is NVFlare's share (task dispatch, serialisation, start-up of a round).

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
    """Per round: wall time, studio compute (sum of train_seconds / threads) and NVFlare's remaining share."""
    rounds = sorted((workspace / "nvflare").rglob("round-*.json"))
    summaries = check_run(workspace, len(rounds))
    rows = []
    for s in summaries:
        train = [c["metrics"].get("train_seconds", 0.0) for c in s["contributions"].values()]
        compute = sum(train) / threads
        rows.append({"round": s["round"], "wall_s": s["wall_time_s"], "studio_compute_s": round(compute, 1),
                     "overhead_fraction": round(max(s["wall_time_s"] - compute, 0.0) / s["wall_time_s"], 3),
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
