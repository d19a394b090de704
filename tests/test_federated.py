"""The federation: what may leave a studio, how the server screens and averages it, and real simulator runs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn.utils import spectral_norm

from fedgai.cli import main
from fedgai.config import FED_MODES, GUARANTEE_BREAKING_MODES, STYLED_MODES, profile
from fedgai.federated.aggregation import weighted_mean
from fedgai.federated.jobs.job import build_job
from fedgai.federated.round import apply_update, initial_global, receive_global
from fedgai.federated.server.controller import OUTPUT_DIR, FilteredFedAvg
from fedgai.federated.server.validation import contribution_problem, update_norm, update_norm_bound
from fedgai.federated.simulator.simulate import SimulationError, check_run, server_dir, simulate
from fedgai.federated.studio.audit import AUDIT_DIR, LOG_FILE
from fedgai.federated.studio.client import local_round, open_trainer, resolve_studio, save_round, studio_map
from fedgai.models import build_discriminator
from fedgai.privacy import clip_and_noise
from fedgai.sharing import MODE_NETWORKS, norm_keys, shared_keys, spectral_state_keys
from fedgai.trainer import StudioTrainer
from fedgai.wire import FINGERPRINT_META_KEY

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND


# ----------------------------------------------------------------------------------------------- keys
class Custom(nn.Module):
    """A norm layer the type check cannot know: only its name gives it away."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))


class TinyD(nn.Module):
    """BatchNorm inside Sequential (keys without "bn"), a named custom norm, GroupNorm and spectral norm."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4), nn.LeakyReLU())
        self.bn1 = Custom(4)
        self.group = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4, 1)


def test_modes_match_the_config():
    assert set(MODE_NETWORKS) == set(FED_MODES)


def test_fedgai_mode_shares_no_norm_layer_found_by_type_or_name():
    keys = shared_keys({"discriminator": TinyD()}, "fedgai")
    assert keys == sorted([
        "discriminator.body.0.bias", "discriminator.body.0.weight_orig",
        "discriminator.group.weight", "discriminator.group.bias",
        "discriminator.head.weight", "discriminator.head.bias",
    ])


def test_groupnorm_stays_local_when_dp_sgd_swapped_batchnorm():
    keys = shared_keys({"discriminator": TinyD()}, "fedgai", groupnorm_is_norm=True)
    assert not [k for k in keys if ".group." in k]
    assert norm_keys(TinyD(), groupnorm_is_norm=True) >= {"group.weight", "group.bias"}


def test_spectral_norm_power_iteration_state_never_shared():
    d = TinyD()
    assert spectral_state_keys(d) == {"body.0.weight_u", "body.0.weight_v"}
    for mode in ("fedgai", "fedavg_bn"):
        assert not [k for k in shared_keys({"discriminator": d}, mode) if k.endswith(("_u", "_v"))]


def test_fedavg_bn_no_longer_shares_batchnorm():
    """Issue 24: no BatchNorm tensor leaves in any mode; fedavg_bn used to send D's affine and running stats."""
    assert shared_keys({"discriminator": TinyD()}, "fedavg_bn") == shared_keys({"discriminator": TinyD()}, "fedgai")


def test_fedavg_full_shares_the_generator_but_never_its_sketch_statistics(test_cfg):
    from fedgai.models import build_gan

    gan = build_gan(test_cfg)
    nets = {"generator": gan.generator, "discriminator": gan.discriminator}
    keys = shared_keys(nets, "fedavg_full")
    assert [k for k in keys if k.startswith("generator.")]
    assert not [k for k in keys if ".adain." in k or k.endswith(("_u", "_v", "num_batches_tracked"))]
    assert shared_keys(nets, "local") == []
    assert not [k for k in shared_keys(nets, "fedgai") if k.startswith("generator.")]


def test_fedbn_shares_the_generator_but_keeps_every_normalisation_layer_local(test_cfg):
    from fedgai.models import build_gan

    gan = build_gan(test_cfg)
    nets = {"generator": gan.generator, "discriminator": gan.discriminator}
    keys = set(shared_keys(nets, "fedbn"))
    norms = {f"{name}.{k}" for name, net in nets.items() for k in norm_keys(net)}
    assert norms and not keys & norms
    assert keys == set(shared_keys(nets, "fedavg_full"))  # issue 24: fedavg_full keeps BatchNorm local too


# ----------------------------------------------------------------------------------------------- screening
def _reference() -> dict[str, np.ndarray]:
    return {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}


def _good() -> dict[str, np.ndarray]:
    return {"a": np.full((2, 3), 0.1, np.float32), "b": np.full(4, -0.2, np.float32)}


def test_good_update_passes():
    assert contribution_problem(_good(), ParamsType.DIFF, 8, _reference(), 10.0) is None


@pytest.mark.parametrize("change, expected", [
    (lambda u, n: ({**u, "a": np.full((2, 3), np.nan, np.float32)}, n), r"a: contains NaN or Inf"),
    (lambda u, n: ({**u, "b": np.full(4, np.inf, np.float32)}, n), r"b: contains NaN or Inf"),
    (lambda u, n: ({**u, "a": np.zeros((3, 2), np.float32)}, n), r"a: shape \(3, 2\) != \(2, 3\)"),
    (lambda u, n: ({**u, "b": np.zeros(4, np.float64)}, n), r"b: dtype float64 != float32"),
    (lambda u, n: ({"a": u["a"]}, n), r"1 missing key\(s\): b"),
    (lambda u, n: ({**u, "bn.running_mean": np.zeros(4, np.float32)}, n), r"1 unexpected key\(s\): bn"),
    (lambda u, n: ({k: v * 1e6 for k, v in u.items()}, n), r"update norm .* exceeds fed.max_update_norm 10"),
    (lambda u, n: (u, None), r"sample count .* positive integer, got None"),
    (lambda u, n: (u, 0), r"positive integer, got 0"),
])
def test_bad_updates_are_rejected_with_the_reason(change, expected):
    params, num_samples = change(_good(), 8)
    problem = contribution_problem(params, ParamsType.DIFF, num_samples, _reference(), 10.0)
    assert problem is not None and re.search(expected, problem), problem


def test_full_partial_update_is_rejected():
    assert "expected DIFF" in contribution_problem(_good(), ParamsType.FULL, 8, _reference(), None)


def test_local_mode_accepts_metrics_only_and_refuses_weights():
    assert contribution_problem({}, ParamsType.DIFF, 8, {}, 10.0) is None
    assert "unexpected" in contribution_problem(_good(), ParamsType.DIFF, 8, {}, 10.0)


# ----------------------------------------------------------------------------------------------- aggregation
def test_norm_bound_makes_room_for_client_dp_noise_only():
    rng = np.random.default_rng(0)
    update = {"w": rng.normal(size=370_000).astype(np.float32)}
    cfg = profile("paper")
    assert update_norm_bound(cfg, 370_000) == cfg.fed.max_update_norm
    dp = cfg.with_overrides({"privacy.dp": "client", "privacy.noise_multiplier": 3.0, "privacy.clip_norm": 1.0})
    noised, _ = clip_and_noise(update, 1.0, 3.0, rng)
    bound = update_norm_bound(dp, 370_000)
    assert update_norm(noised) > cfg.fed.max_update_norm  # would be dropped without the widening
    assert contribution_problem(noised, "DIFF", 10, {"w": update["w"]}, bound) is None
    assert "exceeds" in contribution_problem({"w": update["w"] * 10}, "DIFF", 10, {"w": update["w"]}, bound)


def test_weighted_mean_equals_hand_computation():
    u1 = {"w": np.array([1.0, 2.0], np.float32)}
    u2 = {"w": np.array([5.0, -2.0], np.float32)}
    mean = weighted_mean([(u1, 1), (u2, 3)])
    np.testing.assert_allclose(mean["w"], [(1 + 15) / 4, (2 - 6) / 4])
    assert mean["w"].dtype == np.float32


def test_apply_update_adds_diff_and_keeps_other_entries():
    out = apply_update({"w": np.ones(2, np.float32), "x": np.zeros(1, np.float32)},
                       {"w": np.array([0.5, -1.0], np.float32)})
    np.testing.assert_allclose(out["w"], [1.5, 0.0])
    np.testing.assert_allclose(out["x"], [0.0])


# ----------------------------------------------------------------------------------------------- controller
class OfflineController(FilteredFedAvg):
    """FilteredFedAvg with NVFlare's messaging replaced by scripted studio replies."""

    def __init__(self, cfg, run_dir: Path, replies, sites=("s1", "s2"), checkpoint_dir: str = ""):
        super().__init__(config=cfg.to_dict(), checkpoint_dir=checkpoint_dir)
        self.abort_signal = Signal()
        self.run_dir, self.replies, self.sites = run_dir, replies, list(sites)
        self.sent: list[FLModel] = []
        self.panics: list[str] = []
        self.waits: list[tuple] = []

    def sample_clients(self, num_clients=None):
        return self.sites

    def broadcast_model(self, task_name="train", data=None, targets=None, min_responses=None, timeout=0,
                        wait_time_after_min_received=0, **kwargs):
        self.sent.append(data)
        self.waits.append((min_responses, wait_time_after_min_received))
        return self.replies(data)

    def get_run_dir(self):
        return str(self.run_dir)

    def panic(self, reason):
        self.panics.append(reason)


# The feature space of a test-profile studio (random encoder, no CLIP), as studios report it.
TEST_SPACE = {"encoder": "random", "encoder_weights": "0" * 16, "clip": None, "image_size": 32,
              "discriminator": "gram 16x16, width 16, mode fedgai, dp none"}


def _reply(site: str, params: dict, n: int, **meta) -> FLModel:
    return FLModel(params=params, params_type=ParamsType.DIFF, metrics={"loss_d": 1.0},
                   meta={"client_name": site, NUM_STEPS: n, FINGERPRINT_META_KEY: TEST_SPACE, **meta})


def _scaled(global_params: dict, scale: float) -> dict:
    return {k: np.full_like(v, scale) for k, v in global_params.items()}


def test_controller_round_is_the_weighted_mean_of_the_valid_updates(test_cfg, tmp_path, caplog):
    # weight caps and norm clipping out of reach: the plain sample-weighted mean (see test_federated_server.py)
    cfg = test_cfg.with_overrides({"fed.rounds": 1, "fed.max_weight_factor": 100, "fed.norm_bound_factor": 100})

    def replies(model):
        g = model.params
        nan = _scaled(g, 0.1)
        nan[sorted(nan)[0]][...] = np.nan
        return [
            _reply("s1", _scaled(g, 0.01), 8),
            _reply("s2", _scaled(g, -0.03), 24, dp_epsilon=2.5),
            _reply("s3", nan, 8),
            _reply("s4", {**_scaled(g, 0.01), "discriminator.body.1.running_mean": np.zeros(16, np.float32)}, 8),
        ]

    ctrl = OfflineController(cfg, tmp_path, replies, sites=("s1", "s2", "s3", "s4", "s5"))
    with caplog.at_level(logging.WARNING):
        ctrl.run()
    start = initial_global(cfg)
    saved = torch.load(tmp_path / OUTPUT_DIR / "global-round-000.pt", weights_only=True)["params"]
    for key, value in start.items():
        np.testing.assert_allclose(saved[key].numpy(), value + (8 * 0.01 + 24 * -0.03) / 32, atol=1e-6)
    summary = json.loads((tmp_path / OUTPUT_DIR / "round-000.json").read_text())
    assert summary["aggregated"] == 2 and summary["no_result"] == ["s5"]
    reasons = {d["site"]: d["reason"] for d in summary["dropped"]}
    assert "contains NaN or Inf" in reasons["s3"]
    assert "unexpected key(s): discriminator.body.1.running_mean" in reasons["s4"]
    assert summary["contributions"]["s2"]["dp_epsilon"] == 2.5
    assert summary["contributions"]["s1"]["bytes"] == sum(v.nbytes for v in start.values())
    assert summary["contributions"]["s1"]["metrics"] == {"loss_d": 1.0}
    assert "dropping the update of s3: " in caplog.text and "contains NaN" in caplog.text
    assert not ctrl.panics
    assert ctrl.waits == [(None, 0)]  # no straggler grace: wait for every studio (up to the timeout)


def test_straggler_grace_waits_only_that_long_once_min_clients_answered(test_cfg, tmp_path):
    cfg = test_cfg.with_overrides({"fed.rounds": 1, "fed.min_clients": 2, "fed.straggler_grace": 30})
    ctrl = OfflineController(cfg, tmp_path, lambda m: [_reply(s, _scaled(m.params, 0.01), 8) for s in ("a", "b")],
                             sites=("a", "b", "c"))
    ctrl.run()
    assert ctrl.waits == [(2, 30)] and not ctrl.panics


def test_controller_sends_only_shared_discriminator_entries_and_the_config(test_cfg, tmp_path):
    ctrl = OfflineController(test_cfg, tmp_path, lambda m: [_reply("s1", _scaled(m.params, 0.01), 4)])
    ctrl.run()
    d = build_discriminator(test_cfg)
    expected = shared_keys({"discriminator": d}, "fedgai")
    for model in ctrl.sent:
        assert sorted(model.params) == expected
        assert model.meta["fedgai_config"] == test_cfg.to_dict()
    assert [m.current_round for m in ctrl.sent] == [0, 1]


def test_controller_panics_when_too_few_usable_results(test_cfg, tmp_path):
    ctrl = OfflineController(test_cfg, tmp_path, lambda m: [_reply("s1", {"bogus": np.zeros(1)}, 4)])
    ctrl.run()
    assert len(ctrl.panics) == 1
    assert "round 0: only 0 usable result(s), fed.min_clients is 1" in ctrl.panics[0]
    assert "unexpected key(s): bogus" in ctrl.panics[0] and "'s2'" in ctrl.panics[0]
    assert len(ctrl.sent) == 1  # the run stops instead of going on with nothing
    assert (tmp_path / OUTPUT_DIR / "round-000.json").is_file()


# ----------------------------------------------------------------------------------------------- studio side
def test_resolve_studio(tmp_path):
    (tmp_path / "studio-01-fine").mkdir()
    (tmp_path / "studio-02").mkdir()
    (tmp_path / "studio-03-a").mkdir()
    (tmp_path / "studio-03-b").mkdir()
    explicit = studio_map('{"studio-09": "/data/x"}')
    assert resolve_studio("studio-09", explicit, tmp_path) == Path("/data/x")
    assert resolve_studio("studio-01", {}, tmp_path) == tmp_path / "studio-01-fine"
    assert resolve_studio("studio-02", {}, tmp_path) == tmp_path / "studio-02"
    with pytest.raises(ValueError, match="found studio-03-a, studio-03-b"):
        resolve_studio("studio-03", {}, tmp_path)
    with pytest.raises(ValueError, match="no studio folder configured"):
        resolve_studio("studio-01", {}, None)
    with pytest.raises(ValueError, match="JSON object"):
        studio_map("nonsense")


@pytest.fixture(scope="module")
def trainer(studio_dir, tmp_path_factory) -> StudioTrainer:
    return StudioTrainer(profile("test"), studio_dir, tmp_path_factory.mktemp("studio"))


def _global_for(trainer: StudioTrainer, scale: float) -> dict[str, torch.Tensor]:
    return {k: torch.full(v.shape, scale) for k, v in initial_global(trainer.cfg).items()}


def test_studio_loads_the_global_d_but_keeps_its_bn_and_spectral_state(trainer):
    d = trainer.discriminator
    before = {k: v.clone() for k, v in d.state_dict().items()}
    receive_global(trainer, _global_for(trainer, 0.5))
    after = d.state_dict()
    local = norm_keys(d) | spectral_state_keys(d)
    for key in before:
        if key in local:
            assert torch.equal(after[key], before[key]), key
        else:
            assert torch.all(after[key] == 0.5), key


def test_studio_refuses_entries_it_does_not_share(trainer):
    params = {**_global_for(trainer, 0.0), "discriminator.body.1.running_var": torch.ones(16)}
    with pytest.raises(ValueError, match="unexpected .*running_var"):
        receive_global(trainer, params)


@pytest.mark.parametrize("mode", FED_MODES)
def test_studio_round_sends_a_diff_of_the_mode_keys(studio_dir, tmp_path, mode):
    # A mode that shares generator stages runs only under secure aggregation or client-level DP.
    # The styled modes share the style-conditioned renderer (model.generator styled; 64 px: its minimum taps).
    styled = {"model.generator": "styled", "model.image_size": 64} if mode in STYLED_MODES[1:] else {}
    cfg = profile("test").with_overrides({"fed.mode": mode, "privacy.he": mode in GUARANTEE_BREAKING_MODES, **styled})
    studio = StudioTrainer(cfg, studio_dir, tmp_path)
    received = {k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}
    if mode == "local":  # whatever a server sends, the local-only baseline never loads it
        received = {k: torch.full(v.shape, 0.5) for k, v in initial_global(profile("test")).items()}
    result = local_round(studio, FLModel(params=received, current_round=0))
    nets = studio.wire_networks()  # fedgai_ditto: the shared generator, not the studio's personal one
    assert sorted(result.params) == shared_keys(nets, mode)
    assert result.params_type == ParamsType.DIFF
    # its pair count; in the styled modes every studio weighs 1 (fed.weighting auto: modes.Mode.equal_weights)
    assert result.meta[NUM_STEPS] == (1 if mode in STYLED_MODES[1:] else studio.num_samples)
    assert {"loss_g", "loss_d", "pixel_l1", "val_l1"} <= set(result.metrics)
    after = {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}
    for key, diff in result.params.items():
        torch.testing.assert_close(diff, after[key] - received[key])
    if mode == "local":
        assert result.params == {}
        assert not any(torch.all(after[k] == 0.5) for k in received)


@pytest.mark.parametrize("dp", ["none", "record"])
def test_structure_critic_travels_with_d_and_its_norm_layers_stay_local(studio_dir, tmp_path, dp):
    cfg = profile("test").with_overrides({"model.structure_critic": 4, "loss.feature_matching": 1.0,
                                          "privacy.dp": dp})
    received = {k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}  # what the server builds
    assert any(k.startswith("discriminator.patch.") for k in received)
    studio = StudioTrainer(cfg, studio_dir, tmp_path)
    result = local_round(studio, FLModel(params=received, current_round=0))
    assert sorted(result.params) == sorted(received)
    patch_norms = {f"discriminator.patch.{k}" for k in norm_keys(studio.discriminator.patch, dp == "record")}
    assert patch_norms and not patch_norms & set(result.params)


def test_dp_sgd_studio_reports_epsilon_and_keeps_groupnorm_local(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "record"})
    studio = StudioTrainer(cfg, studio_dir, tmp_path)
    received = {k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}
    result = local_round(studio, FLModel(params=received, current_round=0))
    assert result.meta["dp_epsilon"] > 0
    assert sorted(result.params) == sorted(received)
    groupnorm = {f"discriminator.{k}" for k in norm_keys(studio.discriminator, groupnorm_is_norm=True)}
    assert groupnorm and not groupnorm & set(result.params)


def test_dp_sgd_studio_over_budget_sends_a_notice_and_no_update(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.target_epsilon": 0.01})
    studio = StudioTrainer(cfg, studio_dir, tmp_path)
    before = {k: v.clone() for k, v in studio.discriminator.state_dict().items()}
    received = {k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}
    result = local_round(studio, FLModel(params=received, current_round=0))
    assert not result.params and result.meta["dp_budget_exhausted"] is True
    assert result.meta["dp_epsilon"] == 0  # nothing was spent: the epoch was refused before it ran
    trained = studio.discriminator.state_dict()
    assert all(torch.equal(trained[k], before[k]) for k in before if f"discriminator.{k}" not in received)


def test_studio_resumes_from_its_checkpoint(studio_dir, tmp_path, test_cfg):
    first = open_trainer(test_cfg, studio_dir, tmp_path, resume=False, device="cpu")
    local_round(first, FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(test_cfg).items()},
                               current_round=0))
    save_round(first, 0, {"loss_g": 1.0})
    assert (tmp_path / "grids" / "round-000.png").is_file()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["round"] == 0
    resumed = open_trainer(test_cfg, studio_dir, tmp_path, resume=True, device="cpu")
    fresh = open_trainer(test_cfg, studio_dir, tmp_path, resume=False, device="cpu")
    assert resumed.epoch == first.epoch == 1 and fresh.epoch == 0
    for key, value in first.generator.state_dict().items():
        assert torch.equal(resumed.generator.state_dict()[key], value)


# ----------------------------------------------------------------------------------------------- simulator runs
def error_lines(log: Path) -> list[str]:
    """ERROR and traceback lines of one NVFlare log."""
    return [line for line in log.read_text().splitlines() if " ERROR " in line or "Traceback" in line]


@pytest.mark.slow
def test_simulated_federation_trains_d_and_sends_only_allowed_entries(demo_root, tmp_path, capsys):
    cfg = profile("test")
    out = simulate(profile("test").with_overrides({"fed.rounds": 2}), 2, tmp_path, demo_root,
                   save_outbound_arrays=True)
    printed = capsys.readouterr().out
    assert "FedGAI simulation finished: 2 round(s)" in printed and "global discriminator" in printed
    for log in ("server", "studio-01", "studio-02"):
        assert error_lines(tmp_path / "nvflare" / log / "log.txt") == []
    summaries = check_run(tmp_path, 2)
    assert [s["aggregated"] for s in summaries] == [2, 2]

    # What crossed the wire: every message of both studios, as recorded after the last result filter.
    d = build_discriminator(cfg)
    allowed = set(shared_keys({"discriminator": d}, "fedgai"))
    sent: dict[tuple[str, int], dict] = {}
    for site in ("studio-01", "studio-02"):
        audit = tmp_path / "nvflare" / site / "simulate_job" / AUDIT_DIR
        lines = [json.loads(x) for x in (audit / LOG_FILE).read_text().splitlines()]
        assert [line["round"] for line in lines] == [0, 1]
        for line in lines:
            assert line["return_code"] == "OK" and line["data_kind"] == "WEIGHT_DIFF"
            assert set(line["data"]) == allowed
            assert not [k for k in line["data"] if "generator" in k or "adain" in k or "running" in k]
            for entry in line["data"].values():
                assert entry["type"] == "ndarray" and max(entry["shape"][2:], default=0) <= 4  # no image/feature map
            assert set(line["meta"].values()) <= {"int", "float", "dict"}
            with np.load(audit / f"msg-{line['seq']:03d}.npz") as npz:
                sent[site, line["round"]] = dict(npz)
    # The server's global D moved by exactly the sample-weighted mean of what was sent.
    weights = {site: s["contributions"][site]["num_samples"] for s in summaries[:1] for site in s["contributions"]}
    previous = initial_global(cfg)
    for rnd in (0, 1):
        saved = torch.load(out / f"global-round-{rnd:03d}.pt", weights_only=True)["params"]
        mean = weighted_mean([(sent[site, rnd], weights[site]) for site in weights])
        for key in allowed:
            np.testing.assert_allclose(saved[key].numpy(), previous[key] + mean[key], rtol=1e-5, atol=1e-6)
        assert any(not np.array_equal(saved[k].numpy(), previous[k]) for k in allowed)
        previous = {k: v.numpy() for k, v in saved.items()}

    studios = tmp_path / "studios"
    for site in ("studio-01", "studio-02"):
        assert sorted(p.name for p in (studios / site / "grids").iterdir()) == ["round-000.png", "round-001.png"]
        assert (studios / site / "checkpoints" / "last.pt").is_file()
        [events] = (server_dir(tmp_path) / "tb_events" / site).glob("events.out.tfevents.*")
        tb = EventAccumulator(str(events))
        tb.Reload()
        for tag in ("loss_g", "loss_d", "gram", "val_l1"):
            assert [e.step for e in tb.Scalars(tag)] == [0, 1]

    # The finished simulator run is what `fedgai evaluate` scores: both studios on their held-out test pairs.
    report = tmp_path / "report"
    assert main(["evaluate", str(tmp_path), "--data", str(demo_root), "--out", str(report), "--feature-size", "64",
                 "--style-pairs", "12", "--gallery-rows", "2", "--threads", "1"]) == 0
    rows = json.loads((report / "metrics.json").read_text())
    text = json.dumps(rows)
    assert "studio-01" in text and "studio-02" in text and "FD-EffNetLite0" in text
    assert (report / "report.html").stat().st_size > 10_000 and (report / "metrics.csv").is_file()


@pytest.mark.slow
def test_failing_studios_do_not_stop_the_federation(demo_root, tmp_path):
    """studio-02 raises in round 2 (its grid path is blocked), studio-03's folder is broken from the start."""
    broken = tmp_path / "broken-studio"
    (broken / "photos").mkdir(parents=True)
    (broken / "sketches").mkdir()
    (tmp_path / "studios" / "studio-02" / "grids" / "round-001.png").mkdir(parents=True)
    good = sorted(p for p in demo_root.iterdir() if p.is_dir())
    cfg = profile("test").with_overrides({"fed.min_clients": 1})
    sites = {"studio-01": good[0], "studio-02": good[1], "studio-03": broken}
    job = build_job(cfg, sites, output_root=tmp_path / "studios", checkpoint_dir="")
    assert job.simulator_run(str(tmp_path / "nvflare"), clients=list(sites), threads=3) == 0
    summaries = check_run(tmp_path, cfg.fed.rounds)
    assert [(s["aggregated"], s["no_result"]) for s in summaries] == [
        (2, ["studio-03"]), (1, ["studio-02", "studio-03"])]
    logs = tmp_path / "nvflare"
    assert error_lines(logs / "server" / "log.txt") == []
    assert error_lines(logs / "studio-01" / "log.txt") == []
    assert error_lines(logs / "studio-02" / "log.txt")
    assert re.search(r"IsADirectoryError.*round-001\.png", (logs / "studio-02" / "log.txt").read_text())
    assert f"studio folder {broken} cannot be used" in (logs / "studio-03" / "log.txt").read_text()


def test_check_run_names_what_is_missing(tmp_path):
    with pytest.raises(SimulationError, match=r"no round-000.json, round-001.json .* see .*log.txt"):
        check_run(tmp_path, 2)


def test_update_norm_is_the_l2_norm_over_all_entries():
    assert update_norm({"a": np.array([3.0], np.float32), "b": np.array([[4.0]], np.float32)}) == 5.0
