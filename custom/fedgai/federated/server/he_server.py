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
  what arrived under the name NVFlare authenticated (the evidence that the server never holds a plaintext update);
- ``FeatureSpaceHEAggregator``: holds a round's contributions until all are in, adopts the majority feature
  space (round 0), caps the weights as the plain server does and sums the weighted ciphertexts.

What the plain server shares with this one (resume, state folder, summaries, clear-meta screening,
feature-space adoption) lives in server_state.py, summary.py and screening.py. What HE cannot do - read an
update to bound its norm, or aggregate with a trimmed mean or median - he_job.build_he_job refuses to configure,
and the server refuses again at run time (the persistor and the guard on their copies of the config, the
controller on components that are not fedgai's or configs that differ), so an edited job stops with the reason.
- ``ResumableScatterAndGather``: starts at the round after the one the persistor resumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.apis.client import Client
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode, ServerCommandKey
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
from fedgai.federated.aggregation import Weight, capped_weights, site_cap
from fedgai.federated.he_keys import SERVER_CONTEXT, layout_of
from fedgai.federated.he_wire import add_to_plain_global, packed_size
from fedgai.federated.round import initial_global
from fedgai.federated.server.screening import adopt_feature_space, screen_meta
from fedgai.federated.server.server_state import (
    Federation,
    job_identity,
    load_state,
    resume_decision,
    save_state,
    state_path,
)
from fedgai.federated.server.summary import round_summary, write_round_summary
from fedgai.layout import global_model_name
from fedgai.prior import PriorError
from fedgai.safe_paths import inside, safe_name
from fedgai.wire import CONFIG_META_KEY, DP_EPSILON_META_KEY, LAYOUT_META_KEY

# Server run-folder subfolder: encrypted global per round + one record per received contribution.
HE_OUTPUT_DIR = "fedgai_he"
RECEIVED_DIR = "received"
# Component id of the persistor, which holds the federation's state the guard and the aggregator share.
PERSISTOR_ID = "persistor"
HE_STATE_FILE = "he_server_state.pt"


class PlaintextUpdate(ValueError):
    """A studio's update reached the server not (only) as public CKKS ciphertexts, or its clear meta failed."""


class HESettingsRefused(RuntimeError):
    """The job's config asks for a defence an HE server cannot apply to updates it cannot read."""


def he_refusals(cfg: FedgaiConfig) -> list[str]:
    """The settings of ``cfg`` an HE server cannot honour, each with the reason (empty: none)."""
    fed, unreadable = cfg.fed, "the server cannot read encrypted updates"
    out = []
    if fed.aggregator != "fedavg":
        out.append(f"fed.aggregator = {fed.aggregator!r} needs every update's values coordinate by coordinate, and "
                   f"{unreadable}; use fedavg (the weight caps still apply)")
    if fed.max_update_norm is not None:
        out.append(f"fed.max_update_norm = {fed.max_update_norm:g} needs each update's norm, and {unreadable}; "
                   "set it to null")
    if fed.norm_bound_factor is not None:
        out.append(f"fed.norm_bound_factor = {fed.norm_bound_factor:g} clips updates to the round's median norm, "
                   f"and {unreadable}; set it to null")
    return out


class ResumeRefused(RuntimeError):
    """An unfinished saved HE state belongs to another job (or configuration) than the one starting."""


def federation_of(fl_ctx: FLContext) -> Federation:
    """The federation's state, kept (and saved for resume) by the persistor component."""
    return fl_ctx.get_engine().get_component(PERSISTOR_ID).federation


def he_state_path(fl_ctx: FLContext, checkpoint_dir: str) -> Path | None:
    """The HE resume state of the running job (server_state.state_path; None when resuming is off)."""
    root = fl_ctx.get_engine().get_workspace().get_root_dir()
    return state_path(root, checkpoint_dir, identity_of(fl_ctx), HE_STATE_FILE)


def identity_of(fl_ctx: FLContext) -> dict[str, str | None]:
    """The running job's identity (server_state.job_identity)."""
    return job_identity(fl_ctx.get_job_id(), fl_ctx.get_prop(FLContextKey.JOB_META))


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
        refusals = he_refusals(cfg)  # at run time too: a job edited after he_job.build_he_job must not run
        if refusals:
            raise HESettingsRefused("under HE these settings cannot be honoured: " + "; ".join(refusals))
        reference = initial_global(cfg)
        try:
            path = he_state_path(fl_ctx, self.checkpoint_dir)
        except ValueError as err:  # UnsafePathError: an absolute or escaping checkpoint_dir
            raise ResumeRefused(f"refusing the job's resume folder: {err}") from err
        decision = resume_decision(load_state(path, reference, encrypted=True), path, identity_of(fl_ctx),
                                   self.config, cfg.fed.rounds, cfg.fed.resume)
        if decision.refusal:
            raise ResumeRefused(decision.refusal)
        if decision.note:
            self.log_info(fl_ctx, decision.note)
        if decision.saved is None:
            return make_model_learnable(reference, {})
        self.federation = Federation(**decision.saved.get("federation", {}))
        self.next_round = decision.start
        meta = {MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS, MetaKey.PROCESSED_KEYS: dict.fromkeys(reference, True)}
        return make_model_learnable(decision.saved["params"], meta)

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext) -> None:
        rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        arrays = {key: np.frombuffer(value, dtype=np.uint8).copy() if isinstance(value, bytes) else np.asarray(value)
                  for key, value in model[ModelLearnableKey.WEIGHTS].items()}
        self._global_bytes = int(sum(a.nbytes for a in arrays.values()))
        np.savez(he_output_dir(fl_ctx) / global_model_name(rnd, ".npz"), **arrays)
        # Only an encrypted global is a resume state (the plaintext initial D is rebuilt from the config).
        if all(isinstance(v, bytes) for v in model[ModelLearnableKey.WEIGHTS].values()):
            rounds = FedgaiConfig.from_dict(self.config).fed.rounds
            save_state(he_state_path(fl_ctx, self.checkpoint_dir), arrays, rnd=rnd, rounds=rounds,
                       finished=rnd + 1 >= rounds, identity=identity_of(fl_ctx), config=self.config,
                       federation=self.federation)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == AppEventType.ROUND_STARTED:
            self._round_started = (time.time(), sorted(c.name for c in fl_ctx.get_engine().get_clients()))
        elif event_type == AppEventType.ROUND_DONE:
            started, targets = self._round_started
            write_round_summary(he_output_dir(fl_ctx), round_summary(
                FedgaiConfig.from_dict(self.config), fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0), targets,
                round_records(fl_ctx), started=started, he=True, feature_space=self.federation.feature_space,
                bytes_sent=self._global_bytes))


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
        # This copy of the job's config is checked too: a job edited after it was built must not screen under
        # settings (a median, a norm bound) that nothing here applies.
        refusals = he_refusals(self._cfg)
        self._settings = "under HE these settings cannot be honoured: " + "; ".join(refusals) if refusals else None

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return shareable
        if self._expected is None:
            self._expected = {key: packed_size(value.size) for key, value in initial_global(self._cfg).items()}
        site = authenticated_site(shareable)
        if site is None:
            raise PlaintextUpdate("a result without a client NVFlare authenticated is refused")
        federation = federation_of(fl_ctx)
        dxo = from_shareable(shareable)
        rnd = round_of(shareable)
        clear = screen_meta(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND), dxo.get_meta_prop(DP_EPSILON_META_KEY),
                            dxo.get_meta_prop(MetaKey.INITIAL_METRICS), dxo.get_meta_prop(fp.FINGERPRINT_META_KEY),
                            count_required=True)
        algorithm = dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM)
        record: dict[str, Any] = {"site": site, "round": rnd, "data_kind": str(dxo.data_kind),
                                  "algorithm": algorithm if isinstance(algorithm, str) else None,
                                  **clear.record, "feature_space": clear.feature_space}
        expected_space = federation.feature_space or fp.config_expectations(self._cfg)
        problem = (self._problem(dxo) or clear.problem or self._count_problem(site, clear.count, federation)
                   or fp.update_problem(clear.feature_space, expected_space))
        problem = self._settings or problem
        record.update(accepted=problem is None, reason=problem)
        if problem is None:
            record["entries"] = describe_ciphertexts(dxo.data)
            record.update(keys=len(dxo.data), bytes=sum(e["ciphertext_bytes"] for e in record["entries"].values()))
            federation.first_counts.setdefault(site, clear.count)
        write_record(fl_ctx, record)
        if problem is not None:
            refused = HESettingsRefused if self._settings else PlaintextUpdate
            raise refused(f"update of {site} in round {rnd} refused: {problem}")
        return shareable

    def _problem(self, dxo: DXO) -> str | None:
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            return f"data kind is {dxo.data_kind}, expected an encrypted {DataKind.WEIGHT_DIFF}"
        if dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) != HE_ALGORITHM_CKKS:
            return "the update is not marked as CKKS-encrypted"
        if not isinstance(dxo.data, Mapping):
            return f"the update is a {type(dxo.data).__name__}, expected a dict of ciphertexts"
        return ciphertext_problem(dxo.data, self._expected or {})

    def _count_problem(self, site: str, count: int, federation: Federation) -> str | None:
        """The ciphertext is pre-multiplied by this (valid) count: it must be capped and stable."""
        cap = site_cap(self._cfg.fed, site)
        if cap is not None and count > cap:
            return f"sample count {count} exceeds the cap of {cap} pairs per site"
        first = federation.first_counts.get(site, count)
        if count != first:
            return f"sample count changed from the first-seen {first} to {count}"
        return None


class FeatureSpaceHEAggregator(HEInTimeAccumulateWeightedAggregator):
    """The HE server's aggregation: the plain server's feature-space adoption and weight caps, on ciphertexts.

    Contributions (already screened by the guard) are held until the round closes. Then, as on the plain
    server: while the federation has no feature space, the majority of the fitting fingerprints is adopted and
    the others are dropped with the reason (screening.adopt_feature_space); every kept studio's weight is its
    count after ``capped_weights`` - per-site cap, first-seen count and fed.max_weight_factor x the round's
    median, computed on the counts the server sees in clear. A studio sent ``count x update``; it is multiplied
    by ``weight / (count x total weight)`` and the products are summed: the capped weighted mean with one
    plaintext multiplication per ciphertext, the depth the CKKS parameters allow. Each record gets the weight.
    """

    def __init__(self, expected_data_kind: str = DataKind.WEIGHT_DIFF, weigh_by_local_iter: bool = False):
        super().__init__(expected_data_kind=expected_data_kind, weigh_by_local_iter=weigh_by_local_iter)
        self._pending: dict[str, Shareable] = {}

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = site_of(shareable)
        if site in self._pending:
            self.log_warning(fl_ctx, f"a second result of {site} in round {round_of(shareable)} is ignored")
            return False
        self._pending[site] = shareable
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        pending, self._pending = self._pending, {}
        persistor = fl_ctx.get_engine().get_component(PERSISTOR_ID)
        cfg, federation = FedgaiConfig.from_dict(persistor.config), persistor.federation
        dxos = {site: from_shareable(s) for site, s in pending.items()}
        spaces = {site: dxo.get_meta_prop(fp.FINGERPRINT_META_KEY) for site, dxo in dxos.items()}
        for site, problem in adopt_feature_space(federation, spaces, cfg).items():
            update_record(fl_ctx, site, round_of(pending[site]), accepted=False, reason=problem)
            self.log_warning(fl_ctx, f"dropping the update of {site}: {problem}")
            del dxos[site]
        counts = {site: int(dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)) for site, dxo in dxos.items()}
        weights = he_weights(counts, cfg, federation)
        for site, weight in weights.items():
            update_record(fl_ctx, site, round_of(pending[site]), weight=weight.value, weight_note=weight.note)
        total = sum(w.value for w in weights.values())  # 0 only when nothing is left to aggregate
        factors = {site: weights[site].value / (counts[site] * total) for site in dxos}
        result = DXO(DataKind.WEIGHT_DIFF, data=weighted_sum({s: d.data for s, d in dxos.items()}, factors))
        result.set_meta_prop(MetaKey.PROCESSED_ALGORITHM, HE_ALGORITHM_CKKS)
        result.set_meta_prop(MetaKey.PROCESSED_KEYS, {key: isinstance(value, ts.CKKSVector)
                                                      for key, value in result.data.items()})
        return result.to_shareable()

    def reset(self, fl_ctx: FLContext) -> None:
        super().reset(fl_ctx)
        self._pending = {}


def he_weights(counts: Mapping[str, int], cfg: FedgaiConfig, federation: Federation) -> dict[str, Weight]:
    """Each studio's weight, as the plain server weighs it (round.server_step): under DP every studio weighs the
    same whatever count it claims (a count is not noised, so a DP studio sends 1 and the server trusts none);
    otherwise the capped counts."""
    if cfg.privacy.dp != "none":
        return {site: Weight(1.0, "DP: equal weights") for site in counts}
    return capped_weights(counts, cfg.fed, federation.first_counts)


def weighted_sum(updates: Mapping[str, Mapping[str, Any]], factors: Mapping[str, float]) -> dict[str, Any]:
    """sum over studios of ``factor x update``, key by key (ciphertexts or arrays alike)."""
    out: dict[str, Any] = {}
    for site, data in updates.items():
        for key, value in data.items():
            term = value * factors[site]
            out[key] = term if key not in out else out[key] + term
    return out


class ResumableScatterAndGather(ScatterAndGather):
    """ScatterAndGather that continues at the round after the one the persistor resumed, and stops with the
    persistor's reason (no traceback) when it refuses a saved state or settings HE cannot honour. Before that it
    checks the job's server components: fedgai's own (whose screening, weight caps and refusals the HE job
    promises), and one config for what the studios are told and what the server aggregates under."""

    def start_controller(self, fl_ctx: FLContext) -> None:
        problem = self._components_problem()
        if problem:  # a job edited after he_job.build_he_job
            self.system_panic(f"this HE job cannot run as configured: {problem}", fl_ctx)
            return
        try:
            super().start_controller(fl_ctx)
        except (ResumeRefused, HESettingsRefused, PriorError) as err:  # PriorError: no usable train.prior
            self.system_panic(str(err), fl_ctx)
            return
        resumed = getattr(self.persistor, "next_round", 0)
        if resumed:
            self._start_round, self._num_rounds = resumed, self._num_rounds - resumed
            fl_ctx.set_prop(AppConstants.START_ROUND, resumed, private=True, sticky=True)

    def _components_problem(self) -> str | None:
        """Why the job's persistor, shareable generator and aggregator cannot give the HE job's guarantees, or
        None."""
        required = {self.persistor_id: (DiscriminatorPersistor, "refuses settings HE cannot honour and keeps the "
                                                                "federation's state"),
                    self.shareable_generator_id: (FedgaiHEShareableGenerator, "sends the studios the job's config"),
                    self.aggregator_id: (FeatureSpaceHEAggregator, "applies the plain server's weight caps and "
                                                                   "feature-space adoption to ciphertexts")}
        components = {cid: self._engine.get_component(cid) for cid in required}
        for cid, (cls, role) in required.items():
            if not isinstance(components[cid], cls):
                return (f"component {cid!r} is a {type(components[cid]).__name__}, not fedgai's {cls.__name__}, "
                        f"which {role}")
        if components[self.shareable_generator_id].config != components[self.persistor_id].config:
            return (f"the config sent to the studios differs from the one the server aggregates under (components "
                    f"{self.shareable_generator_id!r} and {self.persistor_id!r}); build the job again with "
                    "fedgai job export")
        return None


def authenticated_site(shareable: Shareable) -> str | None:
    """The name of the client NVFlare authenticated for this result (from its token, set by the server on the
    message: ``ServerCommandKey.FL_CLIENT``), or None. Never the studio-sent peer context, which a studio
    fills in itself."""
    client = shareable.get_header(ServerCommandKey.FL_CLIENT)
    return client.name if isinstance(client, Client) and isinstance(client.name, str) and client.name else None


def site_of(shareable: Shareable) -> str:
    """The authenticated site of a result the guard let through (it refuses results without one)."""
    site = authenticated_site(shareable)
    if site is None:
        raise PlaintextUpdate("a result without a client NVFlare authenticated reached the aggregator")
    return site


def round_of(shareable: Shareable) -> int:
    """The round a contribution answers (ScatterAndGather's cookie)."""
    return int(shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND, 0))


def record_name(rnd: int, site: str) -> str:
    """``round-NNN-<site>.json`` with the site name sanitised (safe_paths.safe_name): one path component."""
    return f"round-{rnd:03d}-{safe_name(site)}.json"


def record_path(fl_ctx: FLContext, rnd: int, site: str) -> Path:
    return inside(he_output_dir(fl_ctx), RECEIVED_DIR, record_name(rnd, site))


def write_record(fl_ctx: FLContext, record: Mapping[str, Any]) -> None:
    path = record_path(fl_ctx, record["round"], record["site"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")


def update_record(fl_ctx: FLContext, site: str, rnd: int, **fields: Any) -> None:
    """Add what aggregation decided (dropped and why, the weight) to a contribution the guard recorded."""
    record = json.loads(record_path(fl_ctx, rnd, site).read_text())
    record.update(fields)
    write_record(fl_ctx, record)


def round_records(fl_ctx: FLContext) -> dict[str, dict[str, Any]]:
    """The guard's records of the current round, by site."""
    rnd = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
    folder = he_output_dir(fl_ctx) / RECEIVED_DIR
    records = [json.loads(p.read_text()) for p in sorted(folder.glob(f"round-{rnd:03d}-*.json"))]
    return {r["site"]: r for r in records}


def he_output_dir(fl_ctx: FLContext) -> Path:
    """``<server run dir>/fedgai_he`` (created)."""
    run_dir = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))
    out = run_dir / HE_OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    return out
