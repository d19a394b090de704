"""The parts of the FedGAI job with homomorphic encryption (CKKS via TenSEAL): the cloud aggregates ciphertexts
only. he_job.py assembles them into the ``fedgai_he`` job. Per round: studios decrypt the global discriminator
entries (round 0 is the plaintext seeded initial D), train, send their D DIFF encrypted and pre-multiplied by
their pair count; the server sums the ciphertexts, multiplies by 1/total pairs and adds the result to the
(encrypted) global entries. The server's context has no secret key, so it can neither read an update nor the
global model.

Workflow: nvflare's ScatterAndGather, because HE ciphertexts (CKKSVector) cannot pass through
ModelController/FedAvg (those aggregate plaintext FLModel params). NVFlare HE parts used as they are:
HEInTimeAccumulateWeightedAggregator, HEModelEncryptor, HEModelSerializeFilter; subclassed or our own:
- ``FedgaiHEShareableGenerator``: also sends the job config and each entry's shape/dtype to the studios
  (the client script needs the config; ciphertexts are flat, so shapes must travel beside them);
- ``ShapedHEModelDecryptor``: restores shape and dtype and tolerates entries the server did not encrypt
  (the stock decryptor returns flat lists and raises KeyError on partial models);
- ``DiscriminatorPersistor``: the seeded initial D (same as FilteredFedAvg's) and the encrypted global per round;
- ``CiphertextOnlyGuard``: server-side result filter that refuses any update not made of public-key-only CKKS
  ciphertexts and records what arrived (the evidence that the server never holds a plaintext update).

Keys: in production the TenSEAL contexts come from provisioning (``HEBuilder``) inside each startup kit; for
the simulator ``prepare_simulator_he`` writes throw-away contexts - NOT FOR PRODUCTION.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.homomorphic_encrypt import deserialize_nested_dict
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator
from nvflare.lighter.constants import ProvFileName
from nvflare.lighter.impl.he import HEBuilder

from fedgai.config import FedgaiConfig
from fedgai.federated.aggregation import site_cap
from fedgai.federated.controller import initial_global
from fedgai.federated.keys import CONFIG_META_KEY
from fedgai.federated.validation import sample_count

# Server run-folder subfolder: encrypted global per round + one record per received contribution.
HE_OUTPUT_DIR = "fedgai_he"
RECEIVED_DIR = "received"
# DXO meta key (server -> studio): {wire key: {"shape": [...], "dtype": "float32"}} of the global entries.
LAYOUT_META_KEY = "fedgai_layout"
SERVER_CONTEXT = ProvFileName.SERVER_CONTEXT_TENSEAL
CLIENT_CONTEXT = ProvFileName.CLIENT_CONTEXT_TENSEAL
# nvflare's HEBuilder defaults, written out so provisioning (project.yml) and the simulator use the same.
HE_PARAMS: dict[str, Any] = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}
SIMULATOR_MARKER = "NOT_FOR_PRODUCTION.txt"

logger = logging.getLogger(__name__)


class SecretKeyFound(ValueError):
    """A TenSEAL context that must be public (the server's) holds a secret key."""


class PlaintextUpdate(ValueError):
    """A studio's update reached the server not (only) as public CKKS ciphertexts."""


# ----------------------------------------------------------------------------------------------- keys
def check_no_secret_key(context_file: str | Path) -> None:
    """Raise SecretKeyFound if the context file could decrypt; the server's must not be able to."""
    context = ts.context_from(Path(context_file).read_bytes())
    if context.is_private() or context.has_secret_key():
        raise SecretKeyFound(f"{context_file} holds a TenSEAL secret key; a server context must be public")


def make_contexts() -> tuple[bytes, bytes]:
    """(server context, client context) made exactly as provisioning makes them (nvflare's HEBuilder)."""
    builder = HEBuilder(**HE_PARAMS)
    # HEBuilder.initialize only creates the TenSEAL context; it reads neither the project nor the provision ctx.
    builder.initialize(None, None)
    return builder.get_serialized_context(is_client=False), builder.get_serialized_context(is_client=True)


def prepare_simulator_he(workspace: Path) -> None:
    """Write throw-away HE contexts into ``<workspace>/startup/`` for NVFlare's simulator. NOT FOR PRODUCTION.

    The simulator copies that folder to every site, so every simulated site (the server too) can read the
    client context with its secret key; only provisioned startup kits keep it away from the server.
    """
    startup = Path(workspace) / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    server, client = make_contexts()
    (startup / SERVER_CONTEXT).write_bytes(server)
    (startup / CLIENT_CONTEXT).write_bytes(client)
    (startup / SIMULATOR_MARKER).write_text(
        "NOT FOR PRODUCTION: throw-away TenSEAL contexts for NVFlare's simulator, written by\n"
        "fedgai.federated.he.prepare_simulator_he. In the simulator every site sees the secret key.\n"
        "Real deployments get their contexts from `nvflare provision` (HEBuilder), see docs/deployment.md.\n"
    )
    check_no_secret_key(startup / SERVER_CONTEXT)
    logger.warning("HE contexts for the simulator written to %s - NOT FOR PRODUCTION", startup)


# ----------------------------------------------------------------------------------------------- layout
def layout_of(params: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{key: {"shape", "dtype"}}: what a studio needs to turn a flat decrypted vector back into the entry."""
    return {key: {"shape": list(value.shape), "dtype": str(value.dtype)} for key, value in params.items()}


def restore_layout(params: Mapping[str, Any], layout: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Reshape and cast decrypted entries to their layout; entries without a layout must already be arrays."""
    out = {}
    for key, value in params.items():
        if key in layout:
            out[key] = np.asarray(value, dtype=layout[key]["dtype"]).reshape(layout[key]["shape"])
        elif isinstance(value, np.ndarray):
            out[key] = value
        else:
            raise ValueError(f"{key}: decrypted to {type(value).__name__} but the server sent no shape for it")
    return out


# ----------------------------------------------------------------------------------------------- server
class DiscriminatorPersistor(ModelPersistor):
    """The global shared entries for ScatterAndGather: the seeded initial D, then the encrypted global.

    Every round's global is written to ``<run dir>/fedgai_he/global-round-NNN.npz`` (ciphertexts as uint8
    arrays, see ``load_encrypted_global``); the server cannot decrypt it, a studio can.
    """

    def __init__(self, config: dict, filter_id: str = "he_serialize_filter"):
        super().__init__(filter_id=filter_id)
        self.config = config

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        return make_model_learnable(initial_global(FedgaiConfig.from_dict(self.config)), {})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        out = he_output_dir(fl_ctx) / f"global-round-{rnd:03d}.npz"
        arrays = {key: np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else np.asarray(value)
                  for key, value in model[ModelLearnableKey.WEIGHTS].items()}
        np.savez(out, **arrays)


class FedgaiHEShareableGenerator(HEModelShareableGenerator):
    """HEModelShareableGenerator that adds the job config and the entries' layout to every task's meta."""

    def __init__(self, config: dict, tenseal_context_file: str = SERVER_CONTEXT):
        super().__init__(tenseal_context_file=tenseal_context_file)
        self.config = config
        self._layout: dict[str, dict[str, Any]] | None = None

    def learnable_to_shareable(self, model_learnable: ModelLearnable, fl_ctx: FLContext) -> Shareable:
        if self._layout is None:
            self._layout = layout_of(initial_global(FedgaiConfig.from_dict(self.config)))
        shareable = super().learnable_to_shareable(model_learnable, fl_ctx)
        dxo = from_shareable(shareable)
        dxo.set_meta_prop(CONFIG_META_KEY, self.config)
        dxo.set_meta_prop(LAYOUT_META_KEY, self._layout)
        return dxo.update_shareable(shareable)


def ciphertext_problem(data: Mapping[str, Any], expected: Mapping[str, int]) -> str | None:
    """Why an update's entries are not exactly the expected keys as public CKKS ciphertexts of the expected
    sizes (``expected``: key -> number of values), or None."""
    expected_keys = set(expected)
    if set(data) != expected_keys:
        missing, extra = sorted(expected_keys - set(data)), sorted(set(data) - expected_keys)
        return f"keys differ from the shared D entries: missing {missing[:3]}, unexpected {extra[:3]}"
    plain = sorted(key for key, value in data.items() if not isinstance(value, ts.CKKSVector))
    if plain:
        return f"{len(plain)} entries arrived not as a CKKS ciphertext: {plain[:3]}"
    private = sorted(key for key, value in data.items() if value.context().has_secret_key())
    if private:
        return f"{len(private)} entries arrived with a context that holds a secret key: {private[:3]}"
    wrong = sorted(key for key, value in data.items() if value.size() != expected[key])
    if wrong:
        return f"{len(wrong)} ciphertexts hold the wrong number of values: {wrong[:3]}"
    return None


def describe_ciphertexts(data: Mapping[str, ts.CKKSVector]) -> dict[str, dict[str, Any]]:
    """{key: {"type", "values", "ciphertext_bytes"}} of an accepted encrypted update."""
    return {key: {"type": type(value).__name__, "values": value.size(), "ciphertext_bytes": len(value.serialize())}
            for key, value in data.items()}


class CiphertextOnlyGuard(Filter):
    """Server-side task-result filter: only public CKKS ciphertexts of the shared D entries get through.

    What a server that cannot read the updates can still screen is screened: vector counts and sizes, and the
    sample count each studio weighs its ciphertext by (a positive integer, within fed.max_samples_per_site /
    fed.site_max_samples, and the same every round: the server cannot clamp a weight inside a ciphertext, so a
    changed count is refused). Anything else raises, which NVFlare turns into a TASK_RESULT_FILTER_ERROR result
    that ScatterAndGather drops (or panics on, if too few studios remain). Every contribution is recorded in
    ``<run dir>/fedgai_he/received/round-NNN-<site>.json`` (validated values only).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self._cfg = FedgaiConfig.from_dict(config)
        self._expected: dict[str, int] | None = None
        self._first_counts: dict[str, int] = {}

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        if self._expected is None:
            self._expected = {key: value.size for key, value in initial_global(self._cfg).items()}
        dxo = from_shareable(shareable)
        site = str(shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "unknown"))
        rnd = int(shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND, 0))
        count, count_problem = sample_count(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND))
        algorithm = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
        record: dict[str, Any] = {"site": site, "round": rnd, "data_kind": str(dxo.data_kind),
                                  "algorithm": algorithm if isinstance(algorithm, str) else None,
                                  "num_samples": count}
        problem = self._problem(dxo) or self._count_problem(site, count, count_problem)
        record.update(accepted=problem is None, problem=problem)
        if problem is None:
            record["entries"] = describe_ciphertexts(dxo.data)
            self._first_counts.setdefault(site, count)
        out = he_output_dir(fl_ctx) / RECEIVED_DIR
        out.mkdir(parents=True, exist_ok=True)
        (out / f"round-{rnd:03d}-{site}.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        if problem is not None:
            raise PlaintextUpdate(f"update of {site} in round {rnd} refused: {problem}")
        return shareable

    def _problem(self, dxo: DXO) -> str | None:
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            return f"data kind is {dxo.data_kind}, expected an encrypted {DataKind.WEIGHT_DIFF}"
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) != HE_ALGORITHM_CKKS:
            return "the update is not marked as CKKS-encrypted"
        if not isinstance(dxo.data, Mapping):
            return f"the update is a {type(dxo.data).__name__}, expected a dict of ciphertexts"
        return ciphertext_problem(dxo.data, self._expected or {})

    def _count_problem(self, site: str, count: int | None, problem: str | None) -> str | None:
        """The ciphertext is pre-multiplied by this count: it must be valid, capped and stable."""
        if problem:
            return problem
        cap = site_cap(self._cfg.fed, site)
        if cap is not None and count > cap:
            return f"sample count {count} exceeds the cap of {cap} pairs per site"
        first = self._first_counts.get(site, count)
        if count != first:
            return f"sample count changed from the first-seen {first} to {count}"
        return None


def received_records(run_dir: Path, rounds: int, sites: Sequence[str]) -> list[dict[str, Any]]:
    """The guard's records of a finished HE run (server run folder), round by round; raises
    FileNotFoundError naming the missing ones (a studio that sent nothing, or a run that stopped early)."""
    folder = Path(run_dir) / HE_OUTPUT_DIR / RECEIVED_DIR
    paths = [folder / f"round-{rnd:03d}-{site}.json" for rnd in range(rounds) for site in sites]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no record of {', '.join(missing)} in {folder}: the HE run is incomplete")
    return [json.loads(p.read_text()) for p in paths]


def he_output_dir(fl_ctx: FLContext) -> Path:
    """``<server run dir>/fedgai_he`` (created)."""
    run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
    out = run_dir / HE_OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------------------------- studio
class ShapedHEModelDecryptor(HEModelDecryptor):
    """HEModelDecryptor that gives the client script arrays of the right shape and dtype.

    Why a subclass: the stock filter returns flat Python lists (ciphertexts are flat vectors) and looks every
    key of the global model up in PROCESSED_KEYS, which raises KeyError when only some entries were
    aggregated. Here entries not marked encrypted pass unchanged and the layout sent by
    ``FedgaiHEShareableGenerator`` restores each entry.
    """

    def decryption(self, params: dict, encrypted_layers: dict, fl_ctx: FLContext) -> dict:
        deserialize_nested_dict(params, context=self.tenseal_context)
        for key, value in params.items():
            if isinstance(value, ts.CKKSVector):
                params[key] = np.asarray(value.decrypt(secret_key=self.tenseal_context.secret_key()))
            elif encrypted_layers.get(key, False):
                raise ValueError(f"{key} is marked encrypted but arrived as {type(value).__name__}")
        self.log_info(fl_ctx, f"decrypted {sum(map(bool, encrypted_layers.values()))} of {len(params)} entries")
        return params

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        layout = dxo.get_meta_prop(LAYOUT_META_KEY) or {}
        result = super().process_dxo(dxo, shareable, fl_ctx)
        if result is None:
            return None
        result.data = restore_layout(result.data, layout)
        result.update_shareable(shareable)
        return result


def load_encrypted_global(npz_file: str | Path, client_context: str | Path, cfg: FedgaiConfig
                          ) -> dict[str, np.ndarray]:
    """Decrypt a ``global-round-NNN.npz`` written by DiscriminatorPersistor (needs a studio's context)."""
    context = ts.context_from(Path(client_context).read_bytes())
    layout = layout_of(initial_global(cfg))
    with np.load(npz_file) as stored:
        vectors = {key: ts.ckks_vector_from(context, stored[key].tobytes()) for key in stored.files}
    return restore_layout({key: vector.decrypt() for key, vector in vectors.items()}, layout)
