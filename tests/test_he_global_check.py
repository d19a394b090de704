"""Under HE the server cannot see that one studio scaled its update by 1e9: each studio checks the decrypted
global before loading it (he_studio.GlobalCheck), refuses it with a logged reason and keeps its own D for
the round (client.local_round)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import tenseal as ts
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_opt.he.intime_accumulate_model_aggregator import HEInTimeAccumulateWeightedAggregator
from nvflare.fuel.utils import fobs

from fedgai.config import profile
from fedgai.federated.he_keys import make_contexts
from fedgai.federated.he_wire import PackedCiphertextLoader
from fedgai.federated.round import initial_global
from fedgai.federated.server.controller import Federation
from fedgai.federated.server.he_server import PERSISTOR_ID, FedgaiHEShareableGenerator
from fedgai.federated.studio.client import local_round
from fedgai.federated.studio.he_studio import GlobalCheck, PackedHEModelEncryptor, ShapedHEModelDecryptor
from fedgai.trainer import StudioTrainer
from fedgai.wire import GLOBAL_REFUSED_META_KEY

SITES = ("studio-a", "studio-b", "studio-c")


@pytest.fixture(scope="module", autouse=True)
def _fresh_fobs():
    """FOBS registrations are process-wide (see test_he.py): start and end clean."""
    fobs.reset()
    common_decomposers.register()  # numpy arrays through FOBS, as in a running job
    yield
    fobs.reset()


@pytest.fixture(scope="module")
def contexts() -> tuple[ts.Context, ts.Context]:
    server, client = make_contexts()
    return ts.context_from(server), ts.context_from(client)


def site_ctx(site: str, rnd: int = 0) -> FLContext:
    """A bare FLContext with the peer, the round and an engine whose persistor holds a fresh federation."""
    ctx = FLContext()
    ctx.set_prop(AppConstants.CURRENT_ROUND, rnd, private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    persistor = SimpleNamespace(federation=Federation())
    engine = SimpleNamespace(get_component={PERSISTOR_ID: persistor}.get, fire_event=lambda *args, **kwargs: None)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    return ctx


def he_round(contexts, global_d: dict[str, np.ndarray], scale_of_c: float) -> tuple[object, object]:
    """Round 0 of the HE job through its own filters: (the round-0 task, the round-1 task) as studios receive
    them; studio-c multiplies its update by ``scale_of_c`` before its filters weight and encrypt it."""
    server_ctx, client_ctx = contexts
    encryptor = PackedHEModelEncryptor()
    encryptor.tenseal_context, encryptor.encrypt_layers = client_ctx, [True]
    loader = PackedCiphertextLoader()
    loader.tenseal_context = server_ctx
    aggregator = HEInTimeAccumulateWeightedAggregator(weigh_by_local_iter=False)
    ctx = site_ctx("server")
    aggregator.handle_event(EventType.START_RUN, ctx)
    rng = np.random.default_rng(0)
    for site in SITES:
        diff = {k: rng.normal(0, 1e-3, v.shape).astype(np.float32) for k, v in global_d.items()}
        if site == "studio-c":
            diff = {k: v * np.float32(scale_of_c) for k, v in diff.items()}
        dxo = DXO(DataKind.WEIGHT_DIFF, data=diff, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 50})
        sent = fobs.loads(fobs.dumps(encryptor.process(dxo.to_shareable(), site_ctx(site))))
        received = loader.process(sent, ctx)
        received.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        received.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        assert aggregator.accept(received, ctx)
    generator = FedgaiHEShareableGenerator(profile("test").to_dict())
    generator.tenseal_context = server_ctx
    first = make_model_learnable({k: v.copy() for k, v in global_d.items()}, {})
    task0 = fobs.loads(fobs.dumps(generator.learnable_to_shareable(first, ctx)))
    ctx.set_prop(AppConstants.GLOBAL_MODEL, first, private=True, sticky=False)
    new_global = generator.shareable_to_learnable(aggregator.aggregate(ctx), ctx)
    task1 = fobs.loads(fobs.dumps(generator.learnable_to_shareable(new_global, ctx)))
    return task0, task1


def studio_decryptor(client_ctx: ts.Context) -> ShapedHEModelDecryptor:
    decryptor = ShapedHEModelDecryptor()
    decryptor.tenseal_context = client_ctx
    return decryptor


def test_an_honest_round_is_loaded(contexts):
    global_d = initial_global(profile("test"))
    task0, task1 = he_round(contexts, global_d, 1.0)
    decryptor = studio_decryptor(contexts[1])
    decryptor.process(task0, site_ctx("studio-a"))  # the plaintext seeded D: the first reference
    loaded = from_shareable(decryptor.process(task1, site_ctx("studio-a", 1)))
    assert loaded.get_meta_prop(GLOBAL_REFUSED_META_KEY) is None
    assert max(float(np.abs(loaded.data[k] - v).max()) for k, v in global_d.items()) > 1e-5  # it moved
    assert len(decryptor.check.changes) == 1


@pytest.mark.parametrize("scale", [1e9, 1e12])
def test_a_studio_scaling_its_update_is_refused_by_the_others(contexts, caplog, scale):
    global_d = initial_global(profile("test"))
    task0, task1 = he_round(contexts, global_d, scale)
    decryptor = studio_decryptor(contexts[1])
    decryptor.process(task0, site_ctx("studio-a"))
    with caplog.at_level(logging.WARNING):
        refused = from_shareable(decryptor.process(task1, site_ctx("studio-a", 1)))
    reason = refused.get_meta_prop(GLOBAL_REFUSED_META_KEY)
    assert reason and "more than the bound" in reason and "keeping this studio's own D" in reason
    assert any("refusing the decrypted global model" in r.getMessage() for r in caplog.records)
    for key, value in global_d.items():  # nothing of the refused global reaches the script
        np.testing.assert_array_equal(refused.data[key], value)
        assert refused.data[key].dtype == value.dtype
    assert decryptor.check.changes == []  # a refused global is not the new reference


def test_check_bounds_come_from_the_recent_changes():
    check = GlobalCheck(factor=10.0, history=2, first_factor=1.0)
    assert check.review({"w": np.ones(4)}) is None  # first global: the reference, norm 2
    assert "last global's norm" in check.review({"w": np.full(4, 3.0)})  # moved by 4 > 1 x 2
    assert check.review({"w": np.full(4, 1.5)}) is None  # moved by 1
    assert check.review({"w": np.full(4, 2.0)}) is None  # moved by 1
    assert "the largest of the last 2 changes" in check.review({"w": np.full(4, 8.0)})  # 12 > 10 x 1
    assert check.review({"w": np.full(4, 6.0)}) is None  # 8 <= 10, measured from the last accepted (2.0)
    assert "non-finite" in check.review({"w": np.array([0.0, np.inf, 0.0, 0.0])})


def test_a_studio_keeps_its_own_d_when_its_decryptor_refused_the_global(studio_dir, tmp_path):
    studio = StudioTrainer(profile("test"), studio_dir, tmp_path)
    own = studio.shared_state()
    poisoned = {k: torch.full_like(v, 1e9) for k, v in own.items()}
    result = local_round(studio, FLModel(params=poisoned, current_round=1,
                                         meta={GLOBAL_REFUSED_META_KEY: "refusing the decrypted global model"}))
    after = studio.shared_state()
    assert all(float(after[k].abs().max()) < 1e3 for k in after)
    for key, diff in result.params.items():  # the update is the studio's own round, from its own D
        torch.testing.assert_close(diff, after[key] - own[key])
