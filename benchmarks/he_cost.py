"""What homomorphic encryption costs per round for the real (paper-profile) discriminator update.

Not a test: numbers go to docs. For 2 and 8 studios it runs the job's own HE path on random D DIFFs (the
values do not change the cost): NVFlare's HEModelEncryptor at each studio, FOBS serialisation (the wire),
HEInTimeAccumulateWeightedAggregator + the HE shareable generator on the server (server context: no
secret key), and the job's ShapedHEModelDecryptor at a studio. Reports seconds per step, bytes per message
(ciphertext vs the float32 plaintext) and the max abs error of the decrypted global against numpy;
timings are the median of ``--repeats`` runs.

    python benchmarks/he_cost.py [--studios 2 8] [--repeats 3] [--out benchmarks/results/he_cost.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor
from nvflare.fuel.utils import fobs

from fedgai.config import profile
from fedgai.federated.controller import initial_global
from fedgai.federated.he_keys import HE_PARAMS, make_contexts
from fedgai.federated.he_server import FedgaiHEShareableGenerator
from fedgai.federated.he_studio import ShapedHEModelDecryptor

RESULTS = Path(__file__).resolve().parent / "results" / "he_cost.json"


def context_for(site: str) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    return ctx


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def studio_update(global_d: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], int]:
    rng = np.random.default_rng(seed)
    diff = {k: rng.normal(0.0, 0.01, v.shape).astype(np.float32) for k, v in global_d.items()}
    return diff, int(rng.integers(40, 251))


def encrypt(encryptor: HEModelEncryptor, diff: dict[str, np.ndarray], n: int, site: str) -> Shareable:
    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in diff.items()},
              meta={MetaKey.NUM_STEPS_CURRENT_ROUND: n})
    return encryptor.process(dxo.to_shareable(), context_for(site))


def measure(studios: int, global_d: dict[str, np.ndarray], server_ctx: ts.Context, client_ctx: ts.Context) -> dict:
    encryptor = HEModelEncryptor(weigh_by_local_iter=True)
    encryptor.tenseal_context, encryptor.encrypt_layers = client_ctx, [True]
    updates = {f"studio-{i}": studio_update(global_d, i) for i in range(studios)}
    plain_bytes = len(fobs.dumps(DXO(DataKind.WEIGHT_DIFF, data=updates["studio-0"][0]).to_shareable()))
    encrypt_s, receive_s, upload_bytes, ciphertext_bytes, received = [], [], [], [], []
    for site, (diff, n) in updates.items():
        sent, seconds = timed(encrypt, encryptor, diff, n, site)
        encrypt_s.append(seconds)
        ciphertext_bytes.append(sum(len(v.serialize()) for v in from_shareable(sent).data.values()))
        wire = fobs.dumps(sent)
        upload_bytes.append(len(wire))
        shareable, seconds = timed(fobs.loads, wire)
        receive_s.append(seconds)
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        received.append(shareable)

    ctx = context_for("server")
    aggregator = HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHT_DIFF,
                                                      weigh_by_local_iter=False)
    aggregator.handle_event(EventType.START_RUN, ctx)
    generator = FedgaiHEShareableGenerator(profile("paper").to_dict())
    generator.tenseal_context = server_ctx
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in global_d.items()}, {}),
                 private=True, sticky=False)
    start = time.perf_counter()
    for shareable in received:
        aggregator.accept(shareable, ctx)
    new_global = generator.shareable_to_learnable(aggregator.aggregate(ctx), ctx)
    aggregate_s = time.perf_counter() - start
    task = fobs.dumps(generator.learnable_to_shareable(new_global, ctx))

    decryptor = ShapedHEModelDecryptor()
    decryptor.tenseal_context = client_ctx
    decrypted, decrypt_s = timed(decryptor.process, fobs.loads(task), ctx)
    total = sum(n for _, n in updates.values())
    error = max(float(np.abs(from_shareable(decrypted).data[k] - (v + sum(d[k] * n for d, n in updates.values())
                                                                    / total)).max())
                for k, v in global_d.items())
    return {
        "studios": studios,
        "encrypt_s_per_studio": round(float(np.mean(encrypt_s)), 3),
        "receive_s_server": round(float(np.sum(receive_s)), 3),
        "aggregate_s_server": round(aggregate_s, 3),
        "decrypt_s_per_studio": round(decrypt_s, 3),
        "plaintext_update_bytes": int(sum(v.nbytes for v in global_d.values())),
        "plaintext_message_bytes": plain_bytes,
        "ciphertext_bytes_per_update": int(np.mean(ciphertext_bytes)),
        "upload_message_bytes": int(np.mean(upload_bytes)),
        "download_message_bytes": len(task),
        "max_abs_error": error,
    }


def median_row(runs: list[dict]) -> dict:
    """Per-field median of repeated runs (timings vary on a shared machine; sizes do not)."""
    return {key: type(runs[0][key])(np.median([run[key] for run in runs])) for key in runs[0]}


def table(rows: list[dict]) -> str:
    """Markdown table for docs/deployment.md."""
    mb = 1e6
    lines = ["| studios | encrypt s/studio | receive s (server) | aggregate s (server) | decrypt s/studio "
             "| plaintext update MB | ciphertexts MB | upload msg MB | download msg MB | max abs error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['studios']} | {r['encrypt_s_per_studio']} | {r['receive_s_server']} "
                     f"| {r['aggregate_s_server']} "
                     f"| {r['decrypt_s_per_studio']} | {r['plaintext_update_bytes'] / mb:.2f} "
                     f"| {r['ciphertext_bytes_per_update'] / mb:.1f} | {r['upload_message_bytes'] / mb:.1f} "
                     f"| {r['download_message_bytes'] / mb:.1f} | {r['max_abs_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studios", type=int, nargs="+", default=[2, 8])
    p.add_argument("--repeats", type=int, default=3, help="runs per studio count; timings are their median")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    # Outside a running job NVFlare logs "no engine in fl_ctx" and default-weight notices; real failures still raise.
    logging.disable(logging.ERROR)
    common_decomposers.register()  # numpy arrays through FOBS, as in a running job
    global_d = initial_global(profile("paper"))
    server, client = make_contexts()
    server_ctx, client_ctx = ts.context_from(server), ts.context_from(client)
    rows = [median_row([measure(n, global_d, server_ctx, client_ctx) for _ in range(args.repeats)])
            for n in args.studios]
    report = {
        "what": "one FedGAI round under HE, paper-profile discriminator update (shared, non-BatchNorm entries)",
        "parameters": int(sum(v.size for v in global_d.values())),
        "entries": len(global_d),
        "he_params": HE_PARAMS,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
