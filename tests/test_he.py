"""Homomorphic encryption: keys, the encrypted aggregation against the plaintext mean, the server-side guard,
the committed job folder and a real 2-studio simulator run."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tenseal as ts
from he_records import received_records
from nvflare.apis.client import Client
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ServerCommandKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_serialize_filter import HEModelSerializeFilter
from nvflare.fuel.utils import fobs

from fedgai.config import profile
from fedgai.federated import fingerprint as fp
from fedgai.federated.he_keys import (
    CLIENT_CONTEXT,
    SERVER_CONTEXT,
    SIMULATOR_MARKER,
    SecretKeyFound,
    check_no_secret_key,
    layout_of,
    make_contexts,
    prepare_simulator_he,
)
from fedgai.federated.he_wire import PackedCiphertextLoader, decrypt_packed, encrypt_packed, packed_size
from fedgai.federated.jobs.he_job import HE_JOB_NAME, build_he_job, export_he, he_job_config
from fedgai.federated.round import initial_global
from fedgai.federated.server.he_server import (
    HE_OUTPUT_DIR,
    HE_STATE_FILE,
    PERSISTOR_ID,
    RECEIVED_DIR,
    CiphertextOnlyGuard,
    DiscriminatorPersistor,
    FeatureSpaceHEAggregator,
    FedgaiHEShareableGenerator,
    HESettingsRefused,
    PlaintextUpdate,
    ResumableScatterAndGather,
    ResumeRefused,
    ciphertext_problem,
)
from fedgai.federated.server.progress import RoundProgress
from fedgai.federated.studio.audit import AUDIT_DIR, LOG_FILE
from fedgai.federated.studio.he_studio import PackedHEModelEncryptor, ShapedHEModelDecryptor, load_encrypted_global
from fedgai.round_summaries import read_round_summaries
from fedgai.wire import CONFIG_META_KEY, DP_EPSILON_META_KEY, LAYOUT_META_KEY

REPO = Path(__file__).resolve().parent.parent
CKKS_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def contexts() -> tuple[ts.Context, ts.Context]:
    """(server, client) TenSEAL contexts, made as provisioning makes them."""
    server, client = make_contexts()
    return ts.context_from(server), ts.context_from(client)


@pytest.fixture(scope="module", autouse=True)
def _fresh_fobs():
    """These tests serialise with FOBS in-process, which leaves process-wide registrations behind that break
    a later admin login in the same process (the server certificate arrives as None); start and end clean."""
    fobs.reset()
    yield
    fobs.reset()


@pytest.fixture(scope="module")
def global_d() -> dict[str, np.ndarray]:
    return initial_global(profile("test"))


def fl_ctx(site: str = "studio-a", rnd: int = 0, run_root: Path | None = None,
           persistor: DiscriminatorPersistor | None = None, job: tuple[str, str] = ("job", "fedgai_he"),
           clients: tuple[str, ...] = (), components: dict | None = None) -> FLContext:
    """A bare FLContext as a filter, aggregator or persistor sees it: peer = the studio, round, and (with
    ``run_root``) a fake engine whose workspace root is ``run_root``, whose job ``job`` = (id, name) runs
    there, with ``persistor`` (default: a fresh one, test profile) as the federation's state and ``clients``."""
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, rnd, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    if run_root is not None:
        persistor = persistor or DiscriminatorPersistor(profile("test").to_dict())
        workspace = SimpleNamespace(get_run_dir=lambda job_id: str(run_root / job_id),
                                    get_root_dir=lambda: str(run_root))
        engine = SimpleNamespace(get_workspace=lambda: workspace,
                                 get_component={PERSISTOR_ID: persistor, **(components or {})}.get,
                                 get_clients=lambda: [SimpleNamespace(name=c) for c in clients],
                                 fire_event=lambda *args, **kwargs: None)
        ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
        ctx.set_prop(ReservedKey.RUN_NUM, job[0], private=False, sticky=False)
        ctx.set_prop(FLContextKey.JOB_META, {"name": job[1], "submitter_name": "admin@fedgai"}, private=False,
                     sticky=False)
    return ctx


def studio_space(weights: str = "w1") -> dict:
    """A test-profile studio's feature-space fingerprint with encoder weights ``weights``."""
    return fp.feature_space(profile("test"), "random", weights, clip_enabled=False)


def encrypted_update(encryptor: PackedHEModelEncryptor, diff: dict[str, np.ndarray], num_samples: int, site: str,
                     rnd: int = 0, space: dict | None = None, epsilon: float | None = None):
    """A studio's result as the server receives it: encrypted, through FOBS (the wire) and the server's first
    result filter (PackedCiphertextLoader), peer and round set."""
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: num_samples, fp.FINGERPRINT_META_KEY: space or studio_space(),
            DP_EPSILON_META_KEY: epsilon}
    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in diff.items()}, meta=meta)
    shareable = fobs.loads(fobs.dumps(encryptor.process(dxo.to_shareable(), fl_ctx(site))))
    shareable = server_loader(encryptor.tenseal_context).process(shareable, fl_ctx(site))
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, rnd)
    return authenticated(shareable, site)


def authenticated(shareable: Shareable, site: str, claimed: str | None = None) -> Shareable:
    """A result as NVFlare's server hands it on: the client it authenticated (by token) in the FL_CLIENT
    header, and the peer context the studio sent (which names ``claimed``, by default the same site)."""
    shareable.set_header(ServerCommandKey.FL_CLIENT, Client(site, "token"))
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: claimed or site})
    return shareable


def client_encryptor(client_ctx: ts.Context) -> PackedHEModelEncryptor:
    encryptor = PackedHEModelEncryptor(weigh_by_local_iter=True)
    encryptor.tenseal_context = client_ctx
    encryptor.encrypt_layers = [True]  # what START_RUN sets: encrypt every entry
    return encryptor


def server_loader(client_ctx: ts.Context) -> PackedCiphertextLoader:
    """The server's first result filter, with the client context less its secret key (the server's context)."""
    loader = PackedCiphertextLoader()
    loader.tenseal_context = ts.context_from(client_ctx.serialize(save_secret_key=False))
    return loader


def random_diffs(global_d: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0.0, 0.01, v.shape).astype(np.float32) for k, v in global_d.items()}


# ----------------------------------------------------------------------------------------------- keys
def test_simulator_contexts_are_marked_and_only_the_client_can_decrypt(tmp_path):
    prepare_simulator_he(tmp_path)
    startup = tmp_path / "startup"
    assert "NOT FOR PRODUCTION" in (startup / SIMULATOR_MARKER).read_text()
    check_no_secret_key(startup / SERVER_CONTEXT)
    with pytest.raises(SecretKeyFound):
        check_no_secret_key(startup / CLIENT_CONTEXT)

    client = ts.context_from((startup / CLIENT_CONTEXT).read_bytes())
    server = ts.context_from((startup / SERVER_CONTEXT).read_bytes())
    sent = ts.ckks_vector_from(server, ts.ckks_vector(client, [1.0, 2.0, 3.0]).serialize())
    total = (sent + sent) * 0.5  # the server's arithmetic on a ciphertext
    with pytest.raises(ValueError, match="secret"):
        total.decrypt()
    back = ts.ckks_vector_from(client, total.serialize()).decrypt()
    np.testing.assert_allclose(back, [1.0, 2.0, 3.0], atol=1e-5)


# ----------------------------------------------------------------------------------------------- arithmetic
def test_he_aggregate_equals_the_plaintext_weighted_mean(contexts, global_d, capsys, tmp_path):
    """Encryptor -> wire -> NVFlare HE aggregator -> shareable generator (server context) -> wire -> decryptor."""
    server_ctx, client_ctx = contexts
    encryptor = client_encryptor(client_ctx)
    studios = {"studio-a": (random_diffs(global_d, 1), 8), "studio-b": (random_diffs(global_d, 2), 203)}
    ctx = fl_ctx(run_root=tmp_path)
    aggregator = HEInTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHT_DIFF,
                                                      weigh_by_local_iter=False)
    aggregator.handle_event(EventType.START_RUN, ctx)
    for site, (diff, n) in studios.items():
        received = encrypted_update(encryptor, diff, n, site)
        data = from_shareable(received).data
        expected = {k: packed_size(v.size) for k, v in global_d.items()}
        assert ciphertext_problem(data, expected) is None  # public ciphertexts only
        assert aggregator.accept(received, ctx)
    aggregated = aggregator.aggregate(ctx)

    config = profile("test").to_dict()
    generator = FedgaiHEShareableGenerator(config)
    generator.tenseal_context = server_ctx
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable({k: v.copy() for k, v in global_d.items()}, {}),
                 private=True, sticky=False)
    new_global = generator.shareable_to_learnable(aggregated, ctx)
    task = fobs.loads(fobs.dumps(generator.learnable_to_shareable(new_global, ctx)))
    assert all(isinstance(v, bytes) for v in from_shareable(task).data.values())

    decryptor = ShapedHEModelDecryptor()
    decryptor.tenseal_context = client_ctx
    decrypted = from_shareable(decryptor.process(task, ctx))
    assert decrypted.get_meta_prop(CONFIG_META_KEY) == config

    total = sum(n for _, n in studios.values())
    errors = []
    for key, start in global_d.items():
        expected = start.astype(np.float64) + sum(d[key].astype(np.float64) * n for d, n in studios.values()) / total
        got = decrypted.data[key]
        assert got.shape == start.shape and got.dtype == start.dtype
        errors.append(float(np.abs(got - expected).max()))
    with capsys.disabled():
        print(f"\nHE vs plaintext weighted mean: max abs error {max(errors):.2e}")
    assert max(errors) < CKKS_TOLERANCE


def test_stock_decryptor_fails_on_partial_models_and_ours_does_not(contexts, global_d):
    """One entry stays plaintext (not in PROCESSED_KEYS): nvflare's filter raises KeyError, ours restores all."""
    _, client_ctx = contexts
    keys = sorted(global_d)
    data = {k: encrypt_packed(client_ctx, global_d[k]) for k in keys[1:]}
    data[keys[0]] = global_d[keys[0]].copy()
    meta = {MetaKey.PROCESSED_KEYS: {k: True for k in keys[1:]}, MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS,
            LAYOUT_META_KEY: layout_of(global_d)}

    def task():
        return DXO(DataKind.WEIGHTS, data=dict(data), meta=dict(meta)).to_shareable()

    stock = HEModelDecryptor()
    stock.tenseal_context = client_ctx
    with pytest.raises(KeyError):
        stock.process(task(), fl_ctx())
    ours = ShapedHEModelDecryptor()
    ours.tenseal_context = client_ctx
    out = from_shareable(ours.process(task(), fl_ctx())).data
    for key, value in global_d.items():
        assert out[key].shape == value.shape and out[key].dtype == np.float32
        np.testing.assert_allclose(out[key], value, atol=1e-5)


# ----------------------------------------------------------------------------------------------- server guard
def test_guard_passes_public_ciphertexts_and_records_them(contexts, global_d, tmp_path):
    _, client_ctx = contexts
    received = encrypted_update(client_encryptor(client_ctx), random_diffs(global_d, 3), 8, "studio-a")
    guard = CiphertextOnlyGuard(he_job_config(profile("test")).to_dict())
    assert guard.process(received, fl_ctx(run_root=tmp_path)) is received
    record = json.loads((tmp_path / "job" / HE_OUTPUT_DIR / RECEIVED_DIR / "round-000-studio-a.json").read_text())
    assert record["accepted"] and record["algorithm"] == HE_ALGORITHM_CKKS and record["num_samples"] == 8
    assert {e["type"] for e in record["entries"].values()} == {"CKKSVector"}
    assert set(record["entries"]) == set(global_d)
    assert received_records(tmp_path / "job", 1, ["studio-a"]) == [record]
    with pytest.raises(FileNotFoundError, match="round-000-studio-z"):
        received_records(tmp_path / "job", 1, ["studio-a", "studio-z"])


def test_guard_refuses_plaintext_partial_and_secret_key_carrying_updates(contexts, global_d, tmp_path):
    _, client_ctx = contexts
    guard = CiphertextOnlyGuard(he_job_config(profile("test")).to_dict())
    plain = DXO(DataKind.WEIGHT_DIFF, data=random_diffs(global_d, 4), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 8})
    half = {k: ts.ckks_vector(client_ctx, v.ravel()) for k, v in random_diffs(global_d, 5).items()}
    half[sorted(half)[0]] = np.zeros(3, dtype=np.float32)  # one entry left in plaintext
    half_dxo = DXO(DataKind.WEIGHT_DIFF, data=half,
                   meta={MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS, MetaKey.NUM_STEPS_CURRENT_ROUND: 8})
    # a ciphertext still bound to the studio's private context (not what FOBS sends, but must never pass)
    private = {k: ts.ckks_vector(client_ctx, v.ravel()) for k, v in random_diffs(global_d, 6).items()}
    private_dxo = DXO(DataKind.WEIGHT_DIFF, data=private, meta=dict(half_dxo.meta))
    for dxo, reason in ((plain, "not marked as CKKS"), (half_dxo, "not as a CKKS ciphertext"),
                        (private_dxo, "secret key")):
        shareable = authenticated(dxo.to_shareable(), "studio-b")
        with pytest.raises(PlaintextUpdate, match=reason):
            guard.process(shareable, fl_ctx(run_root=tmp_path))
        record = json.loads((tmp_path / "job" / HE_OUTPUT_DIR / RECEIVED_DIR / "round-000-studio-b.json").read_text())
        assert not record["accepted"] and reason in record["reason"]


# ----------------------------------------------------------------------------------------------- summaries
PLAIN_SUMMARY_FIELDS = {"round", "total_rounds", "mode", "aggregator", "started_at", "aggregated", "contributions",
                        "dropped", "no_result", "feature_space", "bytes_sent_per_site", "finished", "ended_at",
                        "wall_time_s", "unusable"}


def three_studio_round(tmp_path: Path) -> tuple[dict, DiscriminatorPersistor, FLContext]:
    """The test profile's HE server state with round 0 started for studios a, b and c."""
    config = he_job_config(profile("test")).to_dict()
    persistor = DiscriminatorPersistor(config)
    ctx = fl_ctx(run_root=tmp_path, persistor=persistor, clients=("studio-a", "studio-b", "studio-c"))
    persistor.handle_event(AppEventType.ROUND_STARTED, ctx)
    return config, persistor, ctx


def test_he_round_summary_has_the_plain_format_and_is_read_by_the_one_checker(contexts, global_d, tmp_path):
    _, client_ctx = contexts
    encryptor = client_encryptor(client_ctx)
    config, persistor, ctx = three_studio_round(tmp_path)
    guard = CiphertextOnlyGuard(config)
    guard.process(encrypted_update(encryptor, random_diffs(global_d, 8), 8, "studio-a", epsilon=1.5), ctx)
    with pytest.raises(PlaintextUpdate):
        guard.process(encrypted_update(encryptor, random_diffs(global_d, 9), -3, "studio-b"), ctx)
    persistor.handle_event(AppEventType.ROUND_DONE, ctx)

    [summary] = read_round_summaries(tmp_path / "job" / HE_OUTPUT_DIR, 1)
    assert set(summary) >= PLAIN_SUMMARY_FIELDS
    assert (summary["round"], summary["aggregated"], summary["no_result"]) == (0, 1, ["studio-c"])
    [dropped] = summary["dropped"]
    assert dropped["site"] == "studio-b" and "positive integer" in dropped["reason"]
    assert set(summary["unusable"]) == {"studio-b", "studio-c"}
    accepted = summary["contributions"]["studio-a"]
    assert (accepted["num_samples"], accepted["dp_epsilon"], accepted["keys"]) == (8, 1.5, len(global_d))
    assert RoundProgress().line(summary).startswith("round 0 [1/2]: aggregated 1/3")


def three_studio_aggregation(client_ctx, global_d, tmp_path: Path):
    """Round 0 of the HE server for studios a, b and c, ready to accept: (a studio's encryptor, config,
    persistor, FLContext, guard, aggregator, one random DIFF per studio)."""
    encryptor = client_encryptor(client_ctx)
    config, persistor, ctx = three_studio_round(tmp_path)
    guard, aggregator = CiphertextOnlyGuard(config), FeatureSpaceHEAggregator()
    aggregator.handle_event(EventType.START_RUN, ctx)
    diffs = {site: random_diffs(global_d, seed) for seed, site in enumerate(("studio-a", "studio-b", "studio-c"))}
    return encryptor, config, persistor, ctx, guard, aggregator, diffs


# ----------------------------------------------------------------------------------------------- feature space
def test_round_zero_majority_feature_space_is_adopted_sent_and_enforced(contexts, global_d, tmp_path):
    server_ctx, client_ctx = contexts
    encryptor, config, persistor, ctx, guard, aggregator, diffs = three_studio_aggregation(client_ctx, global_d,
                                                                                          tmp_path)
    spaces = {"studio-a": studio_space("w1"), "studio-b": studio_space("w1"), "studio-c": studio_space("w2")}
    for site, diff in diffs.items():
        update = encrypted_update(encryptor, diff, 8, site, space=spaces[site])
        assert aggregator.accept(guard.process(update, ctx), ctx)
    aggregated = from_shareable(aggregator.aggregate(ctx)).data
    persistor.handle_event(AppEventType.ROUND_DONE, ctx)

    assert persistor.federation.feature_space == studio_space("w1")
    [summary] = read_round_summaries(tmp_path / "job" / HE_OUTPUT_DIR, 1)
    assert summary["aggregated"] == 2 and summary["feature_space"] == studio_space("w1")
    [dropped] = summary["dropped"]
    assert dropped["site"] == "studio-c" and "encoder_weights: 'w2' at the studio" in dropped["reason"]
    for key, value in aggregated.items():  # the mean of the two fitting updates only
        got = decrypt_packed(client_ctx, value.serialize(), global_d[key].size)
        expected = (diffs["studio-a"][key] + diffs["studio-b"][key]).ravel() / 2
        np.testing.assert_allclose(got, expected, atol=1e-5)

    generator = FedgaiHEShareableGenerator(config)
    generator.tenseal_context = server_ctx
    task = generator.learnable_to_shareable(make_model_learnable({k: v.copy() for k, v in global_d.items()}, {}), ctx)
    assert from_shareable(task).get_meta_prop(fp.FINGERPRINT_META_KEY) == studio_space("w1")

    later = encrypted_update(encryptor, diffs["studio-c"], 8, "studio-c", rnd=1, space=studio_space("w2"))
    with pytest.raises(PlaintextUpdate, match="feature space differs from the federation's"):
        guard.process(later, fl_ctx(rnd=1, run_root=tmp_path, persistor=persistor))


def test_under_dp_the_he_server_weighs_every_studio_the_same_whatever_count_it_claims(contexts, global_d, tmp_path):
    """Issue 24 §4: as the plain server does under DP (old code weighed the claimed counts, capped)."""
    _, client_ctx = contexts
    encryptor, config, persistor, ctx, guard, aggregator, diffs = three_studio_aggregation(client_ctx, global_d,
                                                                                          tmp_path)
    persistor.config = profile("test").with_overrides({"privacy.dp": "client", "privacy.noise_multiplier": 1.0}
                                                      ).to_dict()
    for site, count in (("studio-a", 1), ("studio-b", 1), ("studio-c", 40)):  # c claims 40 pairs under DP
        assert aggregator.accept(guard.process(encrypted_update(encryptor, diffs[site], count, site), ctx), ctx)
    aggregated = from_shareable(aggregator.aggregate(ctx)).data
    for key, value in aggregated.items():
        got = decrypt_packed(client_ctx, value.serialize(), global_d[key].size)
        np.testing.assert_allclose(got, sum(d[key] for d in diffs.values()).ravel() / 3, atol=1e-5)


def test_the_he_server_refuses_at_run_time_a_setting_it_cannot_honour(tmp_path):
    """A job edited after build_he_job (its config asks for a norm bound again) stops with the reason."""
    config = profile("test").with_overrides({"fed.max_update_norm": 10.0, "fed.norm_bound_factor": None}).to_dict()
    persistor = DiscriminatorPersistor(config)
    with pytest.raises(HESettingsRefused, match="fed.max_update_norm = 10 needs each update's norm"):
        persistor.load_model(fl_ctx(run_root=tmp_path, persistor=persistor))


def test_the_he_guard_refuses_at_run_time_a_setting_it_cannot_honour_with_the_reason_in_the_record(
        contexts, global_d, tmp_path):
    """Old code: only the persistor's copy of the config was checked when the job started; the guard's own copy
    (a job edited after build_he_job) could ask for a median and a norm bound that nothing applied, and every
    update passed as if they had been."""
    _, client_ctx = contexts
    config = he_job_config(profile("test")).with_overrides(
        {"fed.aggregator": "median", "fed.min_clients": 3, "fed.max_update_norm": 10.0}).to_dict()
    update = encrypted_update(client_encryptor(client_ctx), random_diffs(global_d, 3), 8, "studio-a")
    with pytest.raises(HESettingsRefused, match="fed.aggregator = 'median' needs every update's values"):
        CiphertextOnlyGuard(config).process(update, fl_ctx(run_root=tmp_path))
    record = json.loads((tmp_path / "job" / HE_OUTPUT_DIR / RECEIVED_DIR / "round-000-studio-a.json").read_text())
    assert not record["accepted"] and "fed.max_update_norm = 10 needs each update's norm" in record["reason"]


def _controller_start(tmp_path: Path, persistor_config: dict, studio_config: dict,
                      aggregator: object | None = None) -> list[str]:
    """Start the HE controller on these components; the reasons it stopped the job for (none: it started)."""
    persistor = DiscriminatorPersistor(persistor_config)
    components = {"aggregator": aggregator or FeatureSpaceHEAggregator(),
                  "shareable_generator": FedgaiHEShareableGenerator(studio_config),
                  "he_serialize_filter": HEModelSerializeFilter()}
    ctx = fl_ctx(run_root=tmp_path, persistor=persistor, components=components)
    sag = ResumableScatterAndGather(num_rounds=1, persistor_id=PERSISTOR_ID)
    sag._engine = ctx.get_engine()
    panics: list[str] = []
    sag.system_panic = lambda reason, fl_ctx: panics.append(reason)
    sag.start_controller(ctx)
    return panics


def test_the_he_server_refuses_at_run_time_components_that_disagree_or_skip_its_screening(tmp_path):
    """Old code started a job whose studios were sent one config (the shareable generator's) while the server
    aggregated under another (the persistor's), or whose aggregator was NVFlare's stock one (no weight caps)."""
    config = he_job_config(profile("test")).to_dict()
    assert _controller_start(tmp_path / "same", config, config) == []
    told = he_job_config(profile("test").with_overrides({"privacy.dp": "client"})).to_dict()
    [reason] = _controller_start(tmp_path / "differ", config, told)
    assert "the config sent to the studios differs from the one the server aggregates under" in reason
    [reason] = _controller_start(tmp_path / "stock", config, config, HEInTimeAccumulateWeightedAggregator())
    assert "HEInTimeAccumulateWeightedAggregator" in reason and "weight caps" in reason
    [reason] = _controller_start(tmp_path / "bound", profile("test").to_dict(), profile("test").to_dict())
    assert "fed.norm_bound_factor = 3 clips updates" in reason  # the persistor's refusal, stopped with the reason


# ----------------------------------------------------------------------------------------------- resume
def test_restarted_he_server_continues_from_the_last_saved_round(contexts, global_d, tmp_path):
    server_ctx, client_ctx = contexts
    config = he_job_config(profile("test").with_overrides({"fed.rounds": 3})).to_dict()
    persistor = DiscriminatorPersistor(config)
    persistor.federation.feature_space = studio_space()
    persistor.federation.first_counts["studio-a"] = 8
    encrypted = {k: ts.ckks_vector(client_ctx, v.ravel()).serialize() for k, v in global_d.items()}
    persistor.save_model(make_model_learnable(dict(encrypted), {}), fl_ctx(rnd=1, run_root=tmp_path,
                                                                           persistor=persistor))

    restarted = DiscriminatorPersistor(config)
    serialize_filter = HEModelSerializeFilter()
    serialize_filter.tenseal_context = server_ctx
    sag = ResumableScatterAndGather(num_rounds=3, persistor_id=PERSISTOR_ID)
    components = {"aggregator": FeatureSpaceHEAggregator(), "shareable_generator": FedgaiHEShareableGenerator(config),
                  "he_serialize_filter": serialize_filter}
    ctx = fl_ctx(run_root=tmp_path, persistor=restarted, components=components)
    sag._engine = ctx.get_engine()
    sag.start_controller(ctx)
    assert ctx.get_prop(AppConstants.START_ROUND) == 2 and restarted.next_round == 2
    assert restarted.federation.feature_space == studio_space() and restarted.federation.first_counts == {
        "studio-a": 8}
    loaded = restarted.load_model(ctx)
    assert loaded["weights"] == encrypted
    assert loaded["meta"][MetaKey.PROCESSED_KEYS] == dict.fromkeys(global_d, True)
    key = sorted(global_d)[0]
    np.testing.assert_allclose(ts.ckks_vector_from(client_ctx, loaded["weights"][key]).decrypt(),
                               global_d[key].ravel(), atol=1e-5)


def test_he_server_refuses_another_jobs_state_and_never_starts_over(contexts, global_d, tmp_path):
    _, client_ctx = contexts
    config = he_job_config(profile("test").with_overrides({"fed.rounds": 3})).to_dict()
    persistor = DiscriminatorPersistor(config)
    encrypted = {k: ts.ckks_vector(client_ctx, v.ravel()).serialize() for k, v in global_d.items()}
    persistor.save_model(make_model_learnable(encrypted, {}), fl_ctx(rnd=0, run_root=tmp_path, persistor=persistor))

    changed = he_job_config(profile("test").with_overrides({"fed.rounds": 3, "train.lr_d": 0.001})).to_dict()
    other = DiscriminatorPersistor(changed)
    with pytest.raises(ResumeRefused, match=r"differs: .*train.lr_d: 0.0002 -> 0.001.*Set fed.resume to never"):
        other.load_model(fl_ctx(run_root=tmp_path, persistor=other, job=("job-2", "fedgai_he")))
    same_job_only = DiscriminatorPersistor(he_job_config(profile("test").with_overrides(
        {"fed.rounds": 3, "fed.resume": "same_job"})).to_dict())
    with pytest.raises(ResumeRefused, match="same_job continues only this job's own state"):
        same_job_only.load_model(fl_ctx(run_root=tmp_path, persistor=same_job_only, job=("job-2", "fedgai_he")))
    fresh = DiscriminatorPersistor(he_job_config(profile("test").with_overrides({"fed.rounds": 3,
                                                                                "fed.resume": "never"})).to_dict())
    start = fresh.load_model(fl_ctx(run_root=tmp_path, persistor=fresh, job=("job-2", "fedgai_he")))
    assert fresh.next_round == 0 and all(isinstance(v, np.ndarray) for v in start["weights"].values())


# ----------------------------------------------------------------------------------------------- job
def test_committed_job_folder_is_a_fresh_export(tmp_path):
    fresh = export_he(tmp_path, "paper")
    committed = REPO / "jobs" / HE_JOB_NAME
    assert committed.is_dir(), "jobs/fedgai_he is missing: run make jobs"
    mismatches = compare_trees(committed, fresh)
    assert not mismatches, f"jobs/fedgai_he is stale ({mismatches[:5]}): run make jobs"


def compare_trees(left: Path, right: Path) -> list[str]:
    """Relative paths that differ in content or exist on one side only (ignoring __pycache__)."""
    files = {p.relative_to(root) for root in (left, right) for p in root.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    return sorted(str(f) for f in files if not ((left / f).is_file() and (right / f).is_file()
                                                and filecmp.cmp(left / f, right / f, shallow=False)))


def test_job_refuses_a_mode_that_shares_nothing():
    with pytest.raises(ValueError, match="nothing to encrypt"):
        build_he_job(profile("test").with_overrides({"fed.mode": "local"}))


def test_studios_noise_then_encrypt_then_record(tmp_path):
    """Filter order on the way out with client-level DP: DP on the plaintext DIFF, HE, the outbound record."""
    build_he_job(he_job_config(profile("test").with_overrides({"privacy.dp": "client"}))).export_job(str(tmp_path))
    config = json.loads((tmp_path / HE_JOB_NAME / "app" / "config" / "config_fed_client.json").read_text())
    (chain,) = config["task_result_filters"]
    assert [f["path"].rsplit(".", 1)[-1] for f in chain["filters"]] == [
        "GaussianDPFilter", "PackedHEModelEncryptor", "OutboundAudit"]
    (incoming,) = config["task_data_filters"]
    assert [f["path"].rsplit(".", 1)[-1] for f in incoming["filters"]] == ["ShapedHEModelDecryptor"]


# ----------------------------------------------------------------------------------------------- simulator
@pytest.mark.slow
@pytest.mark.parametrize("dp", ["none", "client"])
def test_two_studio_he_simulation_aggregates_ciphertexts_only(demo_root, tmp_path, dp):
    cfg = he_job_config(profile("test").with_overrides({"privacy.dp": dp, "privacy.noise_multiplier": 0.1}))
    folders = sorted(p for p in demo_root.iterdir() if p.is_dir())
    sites = {"studio-a": folders[0], "studio-b": folders[1]}
    workspace = tmp_path / "nvflare"
    prepare_simulator_he(workspace)
    job = build_he_job(cfg, sites, output_root=tmp_path / "studios", checkpoint_dir=str(tmp_path / "state"))
    assert job.simulator_run(str(workspace), clients=list(sites), threads=2) == 0

    run_dir = workspace / "server" / "simulate_job"
    summaries = read_round_summaries(run_dir / HE_OUTPUT_DIR, cfg.fed.rounds)
    assert [(s["aggregated"], s["dropped"], s["no_result"]) for s in summaries] == [(2, [], [])] * cfg.fed.rounds
    assert summaries[-1]["feature_space"]["encoder"] == cfg.model.encoder  # adopted in round 0, then sent
    assert (tmp_path / "state" / HE_JOB_NAME / HE_STATE_FILE).is_file()
    records = received_records(run_dir, cfg.fed.rounds, list(sites))
    assert {e["type"] for r in records for e in r["entries"].values()} == {"CKKSVector"}
    for site in sites:  # what left each studio: ciphertexts only
        sent = [json.loads(line) for line in
                (workspace / site / "simulate_job" / AUDIT_DIR / LOG_FILE).read_text().splitlines()]
        assert len(sent) == cfg.fed.rounds
        assert {e["type"] for msg in sent for e in msg["data"].values()} == {"bytes"}  # he_wire's format
        assert all(("dp_noise_multiplier" in msg["meta"]) == (dp == "client") for msg in sent)  # DP ran first

    out = run_dir / HE_OUTPUT_DIR

    context = workspace / "startup" / CLIENT_CONTEXT
    start = initial_global(cfg)
    first = load_encrypted_global(out / "global-round-000.npz", context, cfg)
    last = load_encrypted_global(out / f"global-round-{cfg.fed.rounds - 1:03d}.npz", context, cfg)
    moved = max(float(np.abs(last[k] - first[k]).max()) for k in start)
    assert moved > 10 * CKKS_TOLERANCE
    assert max(float(np.abs(first[k] - start[k]).max()) for k in start) > 10 * CKKS_TOLERANCE
    assert all(np.isfinite(v).all() and v.shape == start[k].shape for k, v in last.items())
    assert (tmp_path / "studios" / "studio-a" / "checkpoints" / "last.pt").is_file()


def test_guard_screens_counts_and_sizes_it_can_see_without_decrypting(contexts, global_d, tmp_path):
    _, client_ctx = contexts
    encryptor = client_encryptor(client_ctx)
    config = he_job_config(profile("test").with_overrides({"fed.site_max_samples": {"studio-c": 100}})).to_dict()
    guard = CiphertextOnlyGuard(config)
    diffs = random_diffs(global_d, 7)
    ok = encrypted_update(encryptor, diffs, 40, "studio-c")
    ctx = fl_ctx(run_root=tmp_path)  # one federation: it remembers the first-seen count
    assert guard.process(ok, ctx) is ok
    record = json.loads((tmp_path / "job" / HE_OUTPUT_DIR / RECEIVED_DIR / "round-000-studio-c.json").read_text())
    assert record["accepted"] and record["num_samples"] == 40
    short = {**diffs, sorted(diffs)[0]: diffs[sorted(diffs)[0]].ravel()[:1]}
    for update, reason in ((encrypted_update(encryptor, diffs, 41, "studio-c"), "changed from the first-seen 40"),
                           (encrypted_update(encryptor, diffs, 101, "studio-c"), "exceeds the cap of 100"),
                           (encrypted_update(encryptor, diffs, -40, "studio-c"), "positive integer"),
                           (encrypted_update(encryptor, short, 40, "studio-c"), "wrong number of values")):
        with pytest.raises(PlaintextUpdate, match=reason):
            guard.process(update, ctx)
