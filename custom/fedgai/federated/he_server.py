"""The cloud side of the FedGAI job with homomorphic encryption (CKKS via TenSEAL): the server aggregates
ciphertexts only. he_job.py assembles these parts, he_studio.py's and he_keys.py's into the ``fedgai_he`` job.
Per round: studios decrypt the global discriminator entries (round 0 is the plaintext seeded initial D), train,
send their D DIFF encrypted and pre-multiplied by their pair count; the server sums the ciphertexts, multiplies
by 1/total pairs and adds the result to the (encrypted) global entries. The server's context has no secret
key, so it can neither read an update nor the global model.

Workflow: nvflare's ScatterAndGather, because HE ciphertexts (CKKSVector) cannot pass through
ModelController/FedAvg (those aggregate plaintext FLModel params). NVFlare HE parts used as they are:
HEModelEncryptor, HEModelSerializeFilter; subclassed or our own:
- ``FedgaiHEShareableGenerator``: also sends the job config and each entry's shape/dtype to the studios
  (the client script needs the config; ciphertexts are flat, so shapes must travel beside them);
- ``DiscriminatorPersistor``: the seeded initial D (same as FilteredFedAvg's), the encrypted global per round,
  the federation's state (first-seen counts, feature space), the resume state (FilteredFedAvg's keying rules)
  and the round summaries (FilteredFedAvg's format, read by ``read_round_summaries``);
- ``CiphertextOnlyGuard``: server-side result filter that refuses any update not made of public-key-only CKKS
  ciphertexts, or whose clear meta (count, epsilon, feature-space fingerprint) fails screening, and records
  what arrived (the evidence that the server never holds a plaintext update);
- ``FeatureSpaceHEAggregator``: holds round 0's contributions until all are in, adopts their majority
  feature space and aggregates only those that fit it (later rounds: the guard refuses the others);
- ``ResumableScatterAndGather``: starts at the round after the one the persistor resumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_shareable_generator import HEModelShareableGenerator

from fedgai.config import FedgaiConfig
from fedgai.federated import fingerprint as fp
from fedgai.federated.aggregation import site_cap
from fedgai.federated.controller import (
    Federation,
    config_hash,
    initial_global,
    job_identity,
    resume_refusal,
    save_params,
    state_folder_name,
    unusable_reasons,
    write_round_summary,
)
from fedgai.federated.he_keys import LAYOUT_META_KEY, SERVER_CONTEXT, layout_of
from fedgai.federated.he_wire import add_to_plain_global, packed_size
from fedgai.federated.keys import CONFIG_META_KEY, DP_EPSILON_META_KEY
from fedgai.federated.validation import clean_epsilon, clean_metrics, sample_count

# Server run-folder subfolder: encrypted global per round + one record per received contribution.
HE_OUTPUT_DIR = "fedgai_he"
RECEIVED_DIR = "received"
# Component id of the persistor, which holds the federation's state the guard and the aggregator share.
PERSISTOR_ID = "persistor"
HE_STATE_FILE = "he_server_state.pt"


class PlaintextUpdate(ValueError):
    """A studio's update reached the server not (only) as public CKKS ciphertexts, or its clear meta failed."""


class ResumeRefused(RuntimeError):
    """An unfinished saved HE state belongs to another job (or configuration) than the one starting."""


def federation_of(fl_ctx: FLContext) -> Federation:
    """The federation's state, kept (and saved for resume) by the persistor component."""
    return fl_ctx.get_engine().get_component(PERSISTOR_ID).federation


def he_state_path(fl_ctx: FLContext, checkpoint_dir: str, identity: Mapping[str, Any]) -> Path | None:
    """``<workspace root>/<checkpoint_dir>/<job name>/he_server_state.pt`` (None when resuming is off)."""
    if not checkpoint_dir:
        return None
    root = Path(checkpoint_dir)
    if not root.is_absolute():
        root = Path(fl_ctx.get_engine().get_workspace().get_root_dir()) / root
    return root / state_folder_name(identity) / HE_STATE_FILE


def load_he_state(path: Path | None, reference: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """A saved HE state (params as ciphertext bytes) holding exactly ``reference``'s entries, else None."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = {key: value.numpy().tobytes() for key, value in state["params"].items()}
    return {**state, "params": params} if set(params) == set(reference) else None


class DiscriminatorPersistor(ModelPersistor):
    """The global shared entries for ScatterAndGather, the federation's state and the round summaries.

    Loads the seeded initial D, or - as fed.resume allows, keyed like FilteredFedAvg's state - the encrypted
    global of the last saved round. Every round's global is written to ``<run dir>/fedgai_he/global-round-NNN.npz``
    (ciphertexts as uint8 arrays, see ``load_encrypted_global``; the server cannot decrypt it, a studio can) and,
    with the federation's state, to the resume state. At ROUND_DONE it writes ``<run dir>/fedgai_he/round-NNN.json``
    in FilteredFedAvg's format from the guard's records.
    """

    def __init__(self, config: dict, filter_id: str = "he_serialize_filter", checkpoint_dir: str = "fedgai_state"):
        super().__init__(filter_id=filter_id)
        self.config = config
        self.checkpoint_dir = checkpoint_dir
        self.federation = Federation()
        self.next_round = 0
        self._round_started: tuple[float, list[str]] = (time.time(), [])
        self._global_bytes = 0

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        cfg = FedgaiConfig.from_dict(self.config)
        reference = initial_global(cfg)
        identity = job_identity(fl_ctx)
        path = he_state_path(fl_ctx, self.checkpoint_dir, identity)
        saved = load_he_state(path, reference)
        if saved is None:
            return make_model_learnable(reference, {})
        if saved["round"] + 1 >= saved.get("total_rounds", cfg.fed.rounds):
            self.log_info(fl_ctx, f"{path} holds a finished run; starting a new one")
            return make_model_learnable(reference, {})
        if cfg.fed.resume == "never":
            self.log_info(fl_ctx, f"fed.resume is never: starting over (the state in {path} will be replaced)")
            return make_model_learnable(reference, {})
        refusal = resume_refusal(saved, identity, self.config, cfg.fed.resume)
        if refusal:
            raise ResumeRefused(f"refusing to continue the saved encrypted global model in {path}: {refusal}. Set "
                                "fed.resume to never to start over (the state is then replaced), or remove that folder")
        self.federation = Federation(**saved.get("federation", {}))
        self.next_round = saved["round"] + 1
        self.log_info(fl_ctx, f"resuming from {path}: round {saved['round']} was the last one saved")
        meta = {MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS, MetaKey.PROCESSED_KEYS: dict.fromkeys(reference, True)}
        return make_model_learnable(saved["params"], meta)

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        arrays = {key: np.frombuffer(value, dtype=np.uint8).copy() if isinstance(value, bytes) else np.asarray(value)
                  for key, value in model[ModelLearnableKey.WEIGHTS].items()}
        self._global_bytes = int(sum(a.nbytes for a in arrays.values()))
        np.savez(he_output_dir(fl_ctx) / f"global-round-{rnd:03d}.npz", **arrays)
        identity = job_identity(fl_ctx)
        path = he_state_path(fl_ctx, self.checkpoint_dir, identity)
        # Only an encrypted global is a resume state (the plaintext initial D is rebuilt from the config).
        if path is not None and all(isinstance(v, bytes) for v in model[ModelLearnableKey.WEIGHTS].values()):
            save_params(path, arrays, round=rnd, total_rounds=FedgaiConfig.from_dict(self.config).fed.rounds,
                        identity=identity, config=self.config, config_hash=config_hash(self.config),
                        federation=vars(self.federation))

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.ROUND_STARTED:
            self._round_started = (time.time(), sorted(c.name for c in fl_ctx.get_engine().get_clients()))
        elif event_type == AppEventType.ROUND_DONE:
            started, targets = self._round_started
            write_round_summary(he_output_dir(fl_ctx), round_summary(
                FedgaiConfig.from_dict(self.config), fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0), targets,
                round_records(fl_ctx), self.federation.feature_space, self._global_bytes, started))


def round_summary(cfg: FedgaiConfig, rnd: int, targets: Sequence[str], records: Mapping[str, dict[str, Any]],
                  feature_space: Mapping[str, Any] | None, global_bytes: int, started: float) -> dict[str, Any]:
    """A round summary in FilteredFedAvg's format; under HE only what the server sees in clear is in it."""
    summary: dict[str, Any] = {
        "round": rnd, "total_rounds": cfg.fed.rounds, "mode": cfg.fed.mode, "aggregator": "mean (HE)", "he": True,
        "started_at": started, "aggregated": sum(bool(r["accepted"]) for r in records.values()),
        "contributions": dict(records),
        "dropped": [{"site": s, "reason": r["reason"]} for s, r in records.items() if not r["accepted"]],
        "no_result": sorted(set(targets) - set(records)), "feature_space": feature_space,
        "bytes_sent_per_site": global_bytes, "finished": None, "ended_at": time.time(),
        "wall_time_s": round(time.time() - started, 3),
    }
    summary["unusable"] = unusable_reasons(summary)
    return summary


class FedgaiHEShareableGenerator(HEModelShareableGenerator):
    """HEModelShareableGenerator that adds the job config, the entries' layout and - once adopted - the
    federation's feature-space fingerprint to every task's meta (the studio refuses a global from another one)."""

    def __init__(self, config: dict, tenseal_context_file: str = SERVER_CONTEXT):
        super().__init__(tenseal_context_file=tenseal_context_file)
        self.config = config
        self._layout: dict[str, dict[str, Any]] | None = None

    def shareable_to_learnable(self, shareable: Shareable, fl_ctx: FLContext) -> ModelLearnable:
        """Round 0's global is the plaintext seeded D, to which TenSEAL cannot add a packed aggregate: he_wire
        adds it; later rounds take the stock ciphertext addition."""
        model, dxo = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL), from_shareable(shareable)
        if not add_to_plain_global(model[ModelLearnableKey.WEIGHTS], dxo.data, self.tenseal_context):
            return super().shareable_to_learnable(shareable, fl_ctx)
        model[ModelLearnableKey.META] = dxo.get_meta_props()
        return model

    def learnable_to_shareable(self, model_learnable: ModelLearnable, fl_ctx: FLContext) -> Shareable:
        if self._layout is None:
            self._layout = layout_of(initial_global(FedgaiConfig.from_dict(self.config)))
        shareable = super().learnable_to_shareable(model_learnable, fl_ctx)
        dxo = from_shareable(shareable)
        dxo.set_meta_prop(CONFIG_META_KEY, self.config)
        dxo.set_meta_prop(LAYOUT_META_KEY, self._layout)
        space = federation_of(fl_ctx).feature_space
        if space is not None:
            dxo.set_meta_prop(fp.FINGERPRINT_META_KEY, space)
        return dxo.update_shareable(shareable)


def ciphertext_problem(data: Mapping[str, Any], expected: Mapping[str, int]) -> str | None:
    """Why an update's entries are not exactly the expected keys as public CKKS ciphertexts of the expected
    sizes (``expected``: key -> number of slots, he_wire.packed_size), or None."""
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

    What a server that cannot read the updates can still screen is screened: vector counts and sizes, the
    sample count each studio weighs its ciphertext by (a positive integer, within fed.max_samples_per_site /
    fed.site_max_samples, and the same every round: the server cannot clamp a weight inside a ciphertext, so a
    changed count is refused), the epsilon bookkeeping, and the feature-space fingerprint (well formed, fitting
    the config, then the federation's once adopted). Anything else raises, which NVFlare turns into a
    TASK_RESULT_FILTER_ERROR result that ScatterAndGather drops (or panics on, if too few studios remain). Every
    contribution is recorded in ``<run dir>/fedgai_he/received/round-NNN-<site>.json`` (validated values only).
    """

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self._cfg = FedgaiConfig.from_dict(config)
        self._expected: dict[str, int] | None = None

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        if self._expected is None:
            self._expected = {key: packed_size(value.size) for key, value in initial_global(self._cfg).items()}
        federation = federation_of(fl_ctx)
        dxo = from_shareable(shareable)
        site, rnd = site_of(shareable), round_of(shareable)
        count, count_problem = sample_count(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND))
        epsilon, epsilon_problem = clean_epsilon(dxo.get_meta_prop(DP_EPSILON_META_KEY))
        space, space_problem = fp.parse(dxo.get_meta_prop(fp.FINGERPRINT_META_KEY))
        metrics, nonfinite = clean_metrics(dxo.get_meta_prop(MetaKey.INITIAL_METRICS))
        algorithm = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
        record: dict[str, Any] = {"site": site, "round": rnd, "data_kind": str(dxo.data_kind),
                                  "algorithm": algorithm if isinstance(algorithm, str) else None,
                                  "num_samples": count, "dp_epsilon": epsilon, "metrics": metrics,
                                  "nonfinite_metrics": nonfinite, "feature_space": space}
        problem = (self._problem(dxo) or self._count_problem(site, count, count_problem, federation)
                   or epsilon_problem or space_problem
                   or fp.update_problem(space, federation.feature_space or fp.config_expectations(self._cfg)))
        record.update(accepted=problem is None, reason=problem)
        if problem is None:
            record["entries"] = describe_ciphertexts(dxo.data)
            record.update(keys=len(dxo.data), bytes=sum(e["ciphertext_bytes"] for e in record["entries"].values()))
            federation.first_counts.setdefault(site, count)
        write_record(fl_ctx, record)
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

    def _count_problem(self, site: str, count: int | None, problem: str | None,
                       federation: Federation) -> str | None:
        """The ciphertext is pre-multiplied by this count: it must be valid, capped and stable."""
        if problem:
            return problem
        cap = site_cap(self._cfg.fed, site)
        if cap is not None and count > cap:
            return f"sample count {count} exceeds the cap of {cap} pairs per site"
        first = federation.first_counts.get(site, count)
        if count != first:
            return f"sample count changed from the first-seen {first} to {count}"
        return None


class FeatureSpaceHEAggregator(HEInTimeAccumulateWeightedAggregator):
    """HEInTimeAccumulateWeightedAggregator that fixes the federation's feature space from round 0's majority.

    Until the feature space is adopted, contributions (already screened by the guard) are held back; at
    aggregation the majority of their fingerprints is adopted and only the fitting ones are accumulated, the
    others are recorded as dropped with the reason. From then on the guard refuses other feature spaces itself.
    """

    def __init__(self, expected_data_kind: str = DataKind.WEIGHT_DIFF, weigh_by_local_iter: bool = False):
        super().__init__(expected_data_kind=expected_data_kind, weigh_by_local_iter=weigh_by_local_iter)
        self._pending: list[Shareable] = []

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        if federation_of(fl_ctx).feature_space is None:
            self._pending.append(shareable)
            return True
        return super().accept(shareable, fl_ctx)

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        if self._pending:
            self._adopt_and_accept(fl_ctx)
        return super().aggregate(fl_ctx)

    def reset(self, fl_ctx: FLContext) -> None:
        super().reset(fl_ctx)
        self._pending = []

    def _adopt_and_accept(self, fl_ctx: FLContext) -> None:
        federation = federation_of(fl_ctx)
        spaces = {site_of(s): from_shareable(s).get_meta_prop(fp.FINGERPRINT_META_KEY) for s in self._pending}
        federation.feature_space = fp.majority(spaces)
        for shareable in self._pending:
            problem = fp.update_problem(spaces[site_of(shareable)], federation.feature_space)
            if problem:
                drop_record(fl_ctx, site_of(shareable), round_of(shareable), problem)
                self.log_warning(fl_ctx, f"dropping the update of {site_of(shareable)}: {problem}")
            else:
                super().accept(shareable, fl_ctx)
        self._pending = []


class ResumableScatterAndGather(ScatterAndGather):
    """ScatterAndGather that continues at the round after the one the persistor resumed, and stops with the
    persistor's reason (no traceback) when it refuses a saved state."""

    def start_controller(self, fl_ctx: FLContext) -> None:
        try:
            super().start_controller(fl_ctx)
        except ResumeRefused as err:
            self.system_panic(str(err), fl_ctx)
            return
        resumed = getattr(self.persistor, "next_round", 0)
        if resumed:
            self._start_round, self._num_rounds = resumed, self._num_rounds - resumed
            fl_ctx.set_prop(AppConstants.START_ROUND, resumed, private=True, sticky=True)


def site_of(shareable: Shareable) -> str:
    return str(shareable.get_peer_prop(ReservedKey.IDENTITY_NAME, "unknown"))


def round_of(shareable: Shareable) -> int:
    """The round a contribution answers (ScatterAndGather's cookie)."""
    return int(shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND, 0))


def record_path(fl_ctx: FLContext, rnd: int, site: str) -> Path:
    return he_output_dir(fl_ctx) / RECEIVED_DIR / f"round-{rnd:03d}-{site}.json"


def write_record(fl_ctx: FLContext, record: Mapping[str, Any]) -> None:
    path = record_path(fl_ctx, record["round"], record["site"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def drop_record(fl_ctx: FLContext, site: str, rnd: int, reason: str) -> None:
    """Mark a recorded contribution as dropped after the guard let it through."""
    record = json.loads(record_path(fl_ctx, rnd, site).read_text())
    record.update(accepted=False, reason=reason)
    write_record(fl_ctx, record)


def round_records(fl_ctx: FLContext) -> dict[str, dict[str, Any]]:
    """The guard's records of the current round, by site."""
    rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
    folder = he_output_dir(fl_ctx) / RECEIVED_DIR
    records = [json.loads(p.read_text()) for p in sorted(folder.glob(f"round-{rnd:03d}-*.json"))]
    return {r["site"]: r for r in records}


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
