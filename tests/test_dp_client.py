"""Under any DP mode only noised tensors and epsilon bookkeeping leave a studio; the budget is checked first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import EventScope, FLContextKey, FLMetaKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.workspace import Workspace
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.utils.fl_model_utils import FLModelUtils

from fedgai.config import profile
from fedgai.federated.round import initial_global
from fedgai.federated.simulator.simulate import check_run, simulate
from fedgai.federated.studio.audit import AUDIT_DIR, EVENT_LOG_FILE, LOG_FILE, OutboundEventAudit
from fedgai.federated.studio.client import local_round, releasable
from fedgai.privacy import GaussianDPFilter, PrivacyLedger
from fedgai.privacy.accountant import reported_epsilon
from fedgai.privacy.client_level import StudioClientDP
from fedgai.trainer import StudioTrainer
from fedgai.wire import BUDGET_EXHAUSTED_KEY, DP_RELEASABLE_META

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
CLIENT_DP = {"privacy.dp": "client", "privacy.noise_multiplier": 2.0, "privacy.target_epsilon": 10.0}


def _global(cfg) -> FLModel:
    return FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}, current_round=0)


@pytest.fixture(scope="module")
def client_dp_studio(studio_dir, tmp_path_factory) -> StudioTrainer:
    return StudioTrainer(profile("test").with_overrides(CLIENT_DP), studio_dir, tmp_path_factory.mktemp("studio"))


def test_a_dp_result_carries_no_metrics_and_no_sample_count(client_dp_studio, tmp_path):
    """Old code sent 11 loss/quality metrics and the true pair count next to the noised update."""
    cfg = client_dp_studio.cfg
    result = local_round(client_dp_studio, _global(cfg), tmp_path / "ledger.json")
    assert {"loss_g", "val_l1"} <= set(result.metrics)  # the studio's own record keeps them
    sent = releasable(result, cfg, StudioClientDP(cfg.privacy, tmp_path / "ledger.json"))
    assert sent.metrics is None and set(sent.params) == set(result.params)
    assert all(not torch.equal(sent.params[k], result.params[k]) for k in result.params)  # noised by the studio
    assert set(sent.meta) <= DP_RELEASABLE_META and sent.meta[NUM_STEPS] == 1
    dxo = from_shareable(FLModelUtils.to_shareable(sent))
    assert dxo.data_kind == DataKind.WEIGHT_DIFF and MetaKey.INITIAL_METRICS not in dxo.meta


def test_without_dp_the_result_is_sent_as_is(studio_dir, tmp_path):
    cfg = profile("test")
    result = FLModel(params={"w": torch.ones(1)}, metrics={"loss_g": 1.0}, meta={NUM_STEPS: 24, "notes": "x"})
    sent = releasable(result, cfg)
    assert sent.params is result.params and sent.metrics == result.metrics
    assert sent.meta == {NUM_STEPS: 24}  # the studio's own meta gate: only wire.RELEASABLE_META leaves


def test_client_dp_budget_is_checked_before_training(client_dp_studio, tmp_path):
    """A studio that cannot afford the next round does not train; its notice passes the DP filter empty."""
    ledger = tmp_path / "ledger.json"
    PrivacyLedger(ledger).record(2.0, 1.0, count=20)  # epsilon ~ 12 > target 10
    epoch = client_dp_studio.epoch
    notice = releasable(local_round(client_dp_studio, _global(client_dp_studio.cfg), ledger), client_dp_studio.cfg)
    assert client_dp_studio.epoch == epoch  # nothing was trained
    assert notice.params is None and notice.metrics == {} and notice.meta[BUDGET_EXHAUSTED_KEY] is True
    out = from_shareable(GaussianDPFilter(clip_norm=1.0, noise_multiplier=2.0, delta=1e-5, target_epsilon=10.0,
                                          ledger_file=str(ledger)).process(FLModelUtils.to_shareable(notice),
                                                                           FLContext()))
    assert out.data_kind == DataKind.METRICS and out.data == {}
    assert out.meta[BUDGET_EXHAUSTED_KEY] is True and out.meta["dp_epsilon"] > 10.0


def test_record_dp_budget_is_checked_before_training(studio_dir, tmp_path):
    # sigma and batch as set (no plan, which would fit them to the target): one epoch costs more than 1.0
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.target_epsilon": 1.0,
                                          "privacy.plan": False})
    studio = StudioTrainer(cfg, studio_dir, tmp_path)
    spent = studio.record_dp.ledger.steps  # the statistics release only
    notice = releasable(local_round(studio, _global(cfg)), cfg)
    assert studio.epoch == 0 and studio.record_dp.ledger.steps == spent
    assert notice.params is None and notice.meta[BUDGET_EXHAUSTED_KEY] is True
    assert notice.meta["dp_epsilon"] == reported_epsilon(studio.dp_epsilon())  # rounded up: hides the pair count


class _SiteEngine:
    def __init__(self, root: Path) -> None:
        self._workspace = Workspace(str(root), "site-1")

    def get_workspace(self) -> Workspace:
        return self._workspace


def _event_ctx(tmp_path, scope: str) -> FLContext:
    for folder in ("startup", "local"):
        (tmp_path / folder).mkdir(exist_ok=True)
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, _SiteEngine(tmp_path), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, scope, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, Shareable({"tag": "loss_g", "value": 0.3}), private=True, sticky=False)
    return fl_ctx


def test_event_audit_records_federated_events_only(tmp_path):
    audit = OutboundEventAudit()
    audit.handle_event("analytix_log_stats", _event_ctx(tmp_path, EventScope.LOCAL))
    audit.handle_event("fed.analytix_log_stats", _event_ctx(tmp_path, EventScope.FEDERATION))
    [line] = [json.loads(x) for x in (tmp_path / "job-1" / AUDIT_DIR / EVENT_LOG_FILE).read_text().splitlines()]
    assert line["event_type"] == "fed.analytix_log_stats" and {"tag", "value"} <= set(line["keys"])


@pytest.mark.slow
def test_under_client_dp_only_noised_updates_and_epsilon_leave(demo_root, tmp_path):
    """Everything that left both studios, recorded by the last result filter and the event listener."""
    cfg = profile("test").with_overrides(CLIENT_DP)
    simulate(cfg.with_overrides({"fed.rounds": 2}), 2, tmp_path, demo_root)
    assert [s["aggregated"] for s in check_run(tmp_path, 2)] == [2, 2]
    for site in ("studio-01", "studio-02"):
        audit = tmp_path / "nvflare" / site / "simulate_job" / AUDIT_DIR
        lines = [json.loads(x) for x in (audit / LOG_FILE).read_text().splitlines()]
        assert [line["round"] for line in lines] == [0, 1]
        for line in lines:
            assert line["data_kind"] == DataKind.WEIGHT_DIFF
            # the DP filter's bookkeeping and NVFlare's list of the filters applied: nothing from the pairs
            bookkeeping = {"dp_delta", "dp_noise_multiplier", "dp_clip_norm", MetaKey.FILTER_HISTORY}
            assert set(line["meta"]) <= DP_RELEASABLE_META | bookkeeping
            assert line["meta_values"][NUM_STEPS] == 1 and line["meta_values"]["dp_epsilon"] > 0
        assert not (audit / EVENT_LOG_FILE).exists()  # no analytics stream: old code sent every metric here
    assert not list((tmp_path / "nvflare" / "server").rglob("events.out.tfevents.*"))
