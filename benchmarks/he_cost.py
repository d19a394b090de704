"""What homomorphic encryption costs per round for the real (paper-profile) discriminator update.

Not a test: numbers go to docs. For 2 and 8 studios it runs the job's own HE path on random D DIFFs (the
values do not change the cost): the job's PackedHEModelEncryptor at each studio, FOBS serialisation (the
wire), the job's PackedCiphertextLoader, NVFlare's HEInTimeAccumulateWeightedAggregator and the job's HE shareable
generator on the server (server context: no secret key; the global already encrypted, as in every round after
the first), and the job's ShapedHEModelDecryptor at a studio. Reports seconds per step, bytes per message
(ciphertext vs the float32 plaintext) and the max abs error of the decrypted global against numpy;
timings are the median of ``--repeats`` runs.

A second table compares ciphertext settings on the same updates (issue 17 §4): ring degree, coefficient
moduli, two reals per complex slot or one, seeded symmetric or public-key upload (he_wire.py). Per setting:
upload and download bytes per studio against the float32 plaintext, encrypt / aggregate / decrypt seconds and
the error of the decrypted new global against numpy, absolute and relative to the mean update.

    python benchmarks/he_cost.py [--studios 2 8] [--repeats 3] [--settings-studios 8] [--profile paper]
                                 [--out benchmarks/results/he_cost.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from types import SimpleNamespace

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
from nvflare.fuel.utils import fobs

from fedgai.config import profile
from fedgai.federated.he_keys import HE_PARAMS, make_contexts
from fedgai.federated.he_wire import (
    PackedCiphertextLoader,
    decrypt_packed,
    encrypt_packed,
)
from fedgai.federated.round import initial_global
from fedgai.federated.server.he_server import PERSISTOR_ID, FedgaiHEShareableGenerator
from fedgai.federated.server.server_state import Federation
from fedgai.federated.studio.he_studio import PackedHEModelEncryptor, ShapedHEModelDecryptor

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


def encrypt(encryptor: PackedHEModelEncryptor, diff: dict[str, np.ndarray], n: int, site: str) -> Shareable:
    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in diff.items()},
              meta={MetaKey.NUM_STEPS_CURRENT_ROUND: n})
    return encryptor.process(dxo.to_shareable(), context_for(site))


def measure(studios: int, global_d: dict[str, np.ndarray], server_ctx: ts.Context, client_ctx: ts.Context,
            profile_name: str = "paper") -> dict:
    encryptor = PackedHEModelEncryptor(weigh_by_local_iter=True)
    encryptor.tenseal_context, encryptor.encrypt_layers = client_ctx, [True]
    loader = PackedCiphertextLoader()
    loader.tenseal_context = server_ctx
    updates = {f"studio-{i}": studio_update(global_d, i) for i in range(studios)}
    plain_bytes = len(fobs.dumps(DXO(DataKind.WEIGHT_DIFF, data=updates["studio-0"][0]).to_shareable()))
    encrypt_s, receive_s, upload_bytes, ciphertext_bytes, received = [], [], [], [], []
    ctx = context_for("server")
    for site, (diff, n) in updates.items():
        sent, seconds = timed(encrypt, encryptor, diff, n, site)
        encrypt_s.append(seconds)
        ciphertext_bytes.append(sum(len(v) for v in from_shareable(sent).data.values()))
        wire = fobs.dumps(sent)
        upload_bytes.append(len(wire))
        start = time.perf_counter()
        shareable = loader.process(fobs.loads(wire), ctx)
        receive_s.append(time.perf_counter() - start)
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        received.append(shareable)

    # The generator reads the federation's state from the persistor component; a fresh one has none adopted.
    persistor = SimpleNamespace(federation=Federation())
    engine = SimpleNamespace(get_component={PERSISTOR_ID: persistor}.get, fire_event=lambda *args, **kwargs: None)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    aggregator = HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHT_DIFF,
                                                      weigh_by_local_iter=False)
    aggregator.handle_event(EventType.START_RUN, ctx)
    generator = FedgaiHEShareableGenerator(profile(profile_name).to_dict())
    generator.tenseal_context = server_ctx
    encrypted_global = {k: ts.ckks_vector_from(server_ctx, encrypt_packed(client_ctx, v)) for k, v in global_d.items()}
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(encrypted_global, {}), private=True, sticky=False)
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


def median_setting(runs: list[dict]) -> dict:
    """Median timings of repeated runs of one setting; everything else from the first run."""
    timings = ("encrypt_s_per_studio", "aggregate_s_server", "decrypt_s_per_studio")
    return {**runs[0], **{key: round(float(np.median([run[key] for run in runs])), 3) for key in timings}}


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


NVFLARE_DEFAULT = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}
TIGHTER = {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [40, 30, 39], "scale_bits": 30}
# (name, CKKS parameters, two reals per slot, seeded upload, context sent with every entry as NVFlare's CKKSVector
# decomposer does). Contexts as NVFlare's HEBuilder makes them (symmetric). The job's: the fifth (he_wire.py).
SETTINGS: list[tuple[str, dict, bool, bool, bool]] = [
    ("before: 8192 [60,40,40] 2^40, real, context per entry (NVFlare's stock path)", NVFLARE_DEFAULT,
     False, False, True),
    ("8192 [60,40,40] 2^40, real", NVFLARE_DEFAULT, False, False, False),
    ("4096 [50,40,19] 2^40, real", HE_PARAMS, False, False, False),
    ("4096 [50,40,19] 2^40, complex-packed", HE_PARAMS, True, False, False),
    ("**job: 4096 [50,40,19] 2^40, complex-packed, seeded**", HE_PARAMS, True, True, False),
    ("4096 [40,30,39] 2^30, complex-packed, seeded", TIGHTER, True, True, False),
]


def encrypt_entry(client: ts.Context, values: np.ndarray, packed: bool, seeded: bool) -> bytes:
    """One entry as the studio sends it under a setting."""
    if packed:
        return encrypt_packed(client, values, seeded)
    return ts.ckks_vector(client, values.ravel()).serialize()


def wire_form(msg: dict[str, bytes], client: ts.Context, with_context: bool) -> dict[str, object]:
    """What FOBS sends: the bytes, or (NVFlare's stock path) CKKSVectors, which its decomposer sends with their
    context (public key and relinearisation keys; the studio's secret key is not serialised)."""
    return {k: ts.ckks_vector_from(client, v) for k, v in msg.items()} if with_context else msg


def decrypt_entry(client: ts.Context, data: bytes, size: int, packed: bool) -> np.ndarray:
    if packed:
        return decrypt_packed(client, data, size)
    return np.asarray(ts.ckks_vector_from(client, data).decrypt())


def measure_setting(name: str, params: dict, packed: bool, seeded: bool, with_context: bool, studios: int,
                    global_d: dict[str, np.ndarray]) -> dict:
    """One round under a ciphertext setting: studios encrypt, the server sums, scales and adds to the encrypted
    global, one studio decrypts; bytes, seconds and error against the plaintext computation."""
    server, client = (ts.context_from(c) for c in make_contexts(params))
    updates = [studio_update(global_d, seed) for seed in range(studios)]
    total = sum(n for _, n in updates)
    start = time.perf_counter()
    sent = [{k: encrypt_entry(client, d[k] * n, packed, seeded) for k in global_d} for d, n in updates]
    encrypt_s = (time.perf_counter() - start) / studios
    upload = int(np.mean([len(fobs.dumps(DXO(DataKind.WEIGHT_DIFF, data=wire_form(msg, client, with_context))
                                          .to_shareable())) for msg in sent]))
    encrypted_global = {k: ts.ckks_vector_from(server, encrypt_entry(client, v, packed, seeded))
                        for k, v in global_d.items()}
    start = time.perf_counter()
    new_global = {}
    for key, value in encrypted_global.items():
        summed = ts.ckks_vector_from(server, sent[0][key])
        for msg in sent[1:]:
            summed = summed + ts.ckks_vector_from(server, msg[key])
        new_global[key] = (summed * (1.0 / total) + value).serialize()
    aggregate_s = time.perf_counter() - start
    download = len(fobs.dumps(DXO(DataKind.WEIGHTS, data=new_global).to_shareable()))
    start = time.perf_counter()
    decrypted = {k: decrypt_entry(client, v, global_d[k].size, packed) for k, v in new_global.items()}
    decrypt_s = time.perf_counter() - start
    mean = {k: sum(d[k].astype(np.float64) * n for d, n in updates).ravel() / total for k in global_d}
    error = np.concatenate([decrypted[k] - (global_d[k].ravel() + mean[k]) for k in global_d])
    update = np.concatenate(list(mean.values()))
    plain = int(sum(v.nbytes for v in global_d.values()))
    return {
        "setting": name, "params": params, "packed": packed, "seeded": seeded, "studios": studios,
        "plaintext_bytes": plain, "upload_bytes": upload, "download_bytes": download,
        "upload_x": round(upload / plain, 2), "download_x": round(download / plain, 2),
        "encrypt_s_per_studio": round(encrypt_s, 3), "aggregate_s_server": round(aggregate_s, 3),
        "decrypt_s_per_studio": round(decrypt_s, 3), "max_abs_error": float(np.abs(error).max()),
        "relative_error": float(np.linalg.norm(error) / np.linalg.norm(update)),
        "relative_max_error": float(np.abs(error).max() / np.abs(update).max()),
    }


def settings_table(rows: list[dict]) -> str:
    """Markdown table of the ciphertext settings for docs/benchmarks.md."""
    lines = ["| setting | upload (× plaintext) | download (× plaintext) | encrypt s/studio | aggregate s "
             "| decrypt s/studio | max abs error | error / update (L2) | max error / max update |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['upload_bytes'] / 1e6:.2f} MB ({r['upload_x']}×) "
                     f"| {r['download_bytes'] / 1e6:.2f} MB ({r['download_x']}×) | {r['encrypt_s_per_studio']} "
                     f"| {r['aggregate_s_server']} | {r['decrypt_s_per_studio']} | {r['max_abs_error']:.1e} "
                     f"| {r['relative_error']:.1e} | {r['relative_max_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studios", type=int, nargs="+", default=[2, 8])
    p.add_argument("--repeats", type=int, default=3, help="runs per studio count; timings are their median")
    p.add_argument("--settings-studios", type=int, default=8, help="studios in the ciphertext-settings table")
    p.add_argument("--profile", default="paper", help="whose discriminator update (paper or quick)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    # Outside a running job NVFlare logs "no engine in fl_ctx" and default-weight notices; real failures still raise.
    logging.disable(logging.ERROR)
    common_decomposers.register()  # numpy arrays through FOBS, as in a running job
    global_d = initial_global(profile(args.profile))
    server, client = make_contexts()
    server_ctx, client_ctx = ts.context_from(server), ts.context_from(client)
    rows = [median_row([measure(n, global_d, server_ctx, client_ctx, args.profile) for _ in range(args.repeats)])
            for n in args.studios]
    report = {
        "what": f"one FedGAI round under HE, {args.profile}-profile discriminator update (shared, non-BatchNorm "
                "entries)",
        "parameters": int(sum(v.size for v in global_d.values())),
        "entries": len(global_d),
        "he_params": HE_PARAMS,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "rows": rows,
        "settings": [median_setting([measure_setting(*setting, args.settings_studios, global_d)
                                     for _ in range(args.repeats)]) for setting in SETTINGS],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(settings_table(report["settings"]))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
