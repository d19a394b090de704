"""The server under a hostile or confused federation: robust aggregation, untrusted inputs, resume, feature space."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from fedgai.config import ConfigError, FedgaiConfig, profile
from fedgai.federated import fingerprint as fp
from fedgai.federated.aggregation import capped_weights, clip_to_median_norm, trimmed_count
from fedgai.federated.round import initial_global
from fedgai.federated.server.controller import OUTPUT_DIR, FilteredFedAvg
from fedgai.models import RandomEncoder
from fedgai.round_summaries import SummaryError, read_round_summaries
from fedgai.wire import BUDGET_EXHAUSTED_KEY

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
SPACE = {"encoder": "random", "encoder_weights": "0" * 16, "clip": None, "image_size": 32,
         "discriminator": "gram 16x16, width 16, mode fedgai, dp none"}


class Offline(FilteredFedAvg):
    """FilteredFedAvg with NVFlare's messaging replaced by scripted replies ``replies(round, global params)``."""

    def __init__(self, cfg: FedgaiConfig, run_dir: Path, replies, sites, checkpoint_dir: str = "", job="job-1",
                 workspace: Path | None = None, job_name: str = "fedgai"):
        super().__init__(config=cfg.to_dict(), checkpoint_dir=checkpoint_dir)
        self.abort_signal = Signal()
        self.run_dir, self.replies, self.sites, self.job = run_dir, replies, list(sites), job
        self.workspace, self.job_name = workspace or run_dir.parent, job_name
        self.sent: list[FLModel] = []
        self.panics: list[str] = []

    def _identity(self):
        return {"job_id": self.job, "name": self.job_name, "submitter": "admin"}

    @property
    def _workspace_root(self):
        return str(self.workspace)

    def sample_clients(self, num_clients=None):
        return self.sites

    def broadcast_model(self, data=None, **kwargs):
        self.sent.append(data)
        return self.replies(data.current_round, data.params)

    def get_run_dir(self):
        return str(self.run_dir)

    def panic(self, reason):
        self.panics.append(reason)


def reply(site: str, params, n=48, space=SPACE, **meta) -> FLModel:
    return FLModel(params=params, params_type=ParamsType.DIFF, metrics={"loss_d": 1.0},
                   meta={"client_name": site, NUM_STEPS: n, fp.FINGERPRINT_META_KEY: space, **meta})


def summary(run_dir: Path, rnd: int = 0) -> dict:
    """A round summary, parsed strictly: NaN/Infinity in it fail the test."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads((run_dir / OUTPUT_DIR / f"round-{rnd:03d}.json").read_text(), parse_constant=refuse)


def global_step(run_dir: Path, start: dict) -> np.ndarray:
    saved = torch.load(run_dir / OUTPUT_DIR / "global-round-000.pt", weights_only=True)["params"]
    return np.concatenate([(saved[k].numpy() - start[k]).ravel() for k in sorted(start)]).astype(np.float64)


# ----------------------------------------------------------------------------------------------- C1 robustness
@pytest.fixture(scope="module")
def honest() -> dict[str, dict[str, np.ndarray]]:
    """Five honest studios: a shared direction plus as much studio-specific noise."""
    start = initial_global(profile("test"))
    rng = np.random.default_rng(0)
    common = {k: rng.normal(0, 0.01, v.shape) for k, v in start.items()}
    return {f"h{i}": {k: (common[k] + rng.normal(0, 0.01, v.shape)).astype(np.float32) for k, v in start.items()}
            for i in range(5)}


def attacks(honest: dict) -> dict[str, tuple[dict, int]]:
    start = next(iter(honest.values()))
    rng = np.random.default_rng(1)
    direction = {k: rng.normal(0, 1, v.shape) for k, v in start.items()}
    scale = 900 / math.sqrt(sum(float(np.sum(v**2)) for v in direction.values()))  # under max_update_norm 1000
    own = honest["h0"]
    return {
        "1e9 pairs, norm 900": ({k: (v * scale).astype(np.float32) for k, v in direction.items()}, 10**9),
        "x100": ({k: v * 100 for k, v in own.items()}, 48),
        "reversed x100, 1e9 pairs": ({k: -v * 100 for k, v in own.items()}, 10**9),
        "reversed": ({k: -v for k, v in own.items()}, 48),
    }


def run_round(cfg, tmp_path: Path, updates: dict[str, tuple[dict, int]]) -> np.ndarray:
    run_dir = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    ctrl = Offline(cfg, run_dir, lambda rnd, g: [reply(s, u, n) for s, (u, n) in updates.items()], updates)
    ctrl.run()
    assert not ctrl.panics
    return global_step(run_dir, initial_global(cfg))


@pytest.mark.parametrize("aggregator, max_shift, min_cos", [("fedavg", 4.5, 0.3), ("trimmed_mean", 1.5, 0.9),
                                                            ("median", 1.5, 0.9)])
def test_one_studio_cannot_dominate_or_reverse_the_global_step(honest, tmp_path, aggregator, max_shift, min_cos):
    """The attacker shifts the global step by at most max_shift x what one honest studio does and never takes
    its direction (cosine to the honest mean stays above min_cos)."""
    cfg = profile("test").with_overrides({"fed.rounds": 1, "fed.aggregator": aggregator, "fed.min_clients": 3})
    fair = {s: (u, 48) for s, u in honest.items()}
    baseline = run_round(cfg, tmp_path, fair)
    one_honest = np.linalg.norm(baseline - run_round(cfg, tmp_path, {s: fair[s] for s in list(fair)[1:]}))
    honest_mean = np.mean([np.concatenate([u[k].ravel() for k in sorted(u)]) for u in honest.values()], axis=0)
    for name, attack in attacks(honest).items():
        step = run_round(cfg, tmp_path, {**fair, "attacker": attack})
        shift = np.linalg.norm(step - baseline)
        cos = step @ honest_mean / np.linalg.norm(step) / np.linalg.norm(honest_mean)
        assert shift <= max_shift * one_honest, (name, shift / one_honest)
        assert cos >= min_cos, (name, cos)


def test_weights_are_capped_by_site_config_first_seen_count_and_median(test_cfg):
    fed = test_cfg.with_overrides({"fed.site_max_samples": {"small": 10}, "fed.max_samples_per_site": 500}).fed
    weights = capped_weights({"a": 40, "b": 50, "c": 60, "small": 30, "liar": 10**9}, fed, {"c": 45})
    assert {s: w.value for s, w in weights.items()} == {"a": 40, "b": 45, "c": 45, "small": 10, "liar": 45}
    assert "first-seen 45" in weights["c"].note and "per site" in weights["small"].note
    assert "median" in weights["liar"].note and weights["a"].note is None


def test_outsized_updates_are_clipped_to_a_multiple_of_the_median_norm():
    updates = {s: {"w": np.full(4, v, np.float32)} for s, v in (("a", 1.0), ("b", 1.2), ("c", 50.0))}
    clipped, bound = clip_to_median_norm(updates, 3.0)
    assert bound == pytest.approx(3 * 2.4)
    assert np.linalg.norm(clipped["c"]["w"]) == pytest.approx(bound, rel=1e-5)
    assert clipped["a"] is updates["a"]
    assert [trimmed_count(n, 0.2) for n in (2, 3, 4, 10)] == [0, 1, 1, 2]


def test_a_studio_changing_its_count_keeps_its_first_weight(honest, tmp_path):
    cfg = profile("test").with_overrides({"fed.rounds": 2})
    counts = {0: {"h0": 40, "h1": 40}, 1: {"h0": 40, "h1": 4000}}
    ctrl = Offline(cfg, tmp_path, lambda rnd, g: [reply(s, honest[s], counts[rnd][s]) for s in ("h0", "h1")],
                   ("h0", "h1"))
    ctrl.run()
    record = summary(tmp_path, 1)["contributions"]["h1"]
    assert record["num_samples"] == 4000 and record["weight"] == 40
    assert "changed from the first-seen 40 to 4000" in record["weight_note"]


def test_aggregator_settings_are_validated(test_cfg):
    with pytest.raises(ConfigError, match="fed.aggregator"):
        test_cfg.with_overrides({"fed.aggregator": "krum"})
    with pytest.raises(ConfigError, match="fed.trim_fraction"):
        test_cfg.with_overrides({"fed.trim_fraction": 0.5})
    with pytest.raises(ConfigError, match="fed.site_max_samples.a must be > 0"):
        test_cfg.with_overrides({"fed.site_max_samples": {"a": 0}})


# ----------------------------------------------------------------------------------------------- C2 hostile input
HOSTILE_COUNTS = [np.int64(8), np.int32(8), 8.0, np.float64(8), "8", b"8", True, np.bool_(True), -8, 0, None,
                  10**400, [8], {"n": 8}, math.nan, math.inf]
HOSTILE_VALUES = [b"x", "x" * 100_000, math.nan, -math.inf, math.inf, np.float32(np.nan), np.int64(3), True,
                  -1.0, 10**400, {"nested": {"deep": [1, 2]}}, [1.0], None, 1 + 2j, np.complex64(1)]


def hostile_replies(global_params: dict) -> list[FLModel]:
    """One studio per hostile value in each field a studio controls, plus two honest studios."""
    good = {k: np.full_like(v, 0.001) for k, v in global_params.items()}
    first = sorted(good)[0]
    out = [reply("honest-1", good), reply("honest-2", good)]
    out += [reply(f"count-{i}", good, n) for i, n in enumerate(HOSTILE_COUNTS)]
    out += [reply(f"eps-{i}", good, dp_epsilon=v) for i, v in enumerate(HOSTILE_VALUES)]
    out += [FLModel(params=good, params_type=ParamsType.DIFF, metrics={"m": v, b"k": 1, "x" * 500: 1.0, 3: 2.0},
                    meta={"client_name": f"metric-{i}", NUM_STEPS: 48, fp.FINGERPRINT_META_KEY: SPACE})
            for i, v in enumerate(HOSTILE_VALUES)]
    out += [reply(f"space-{i}", good, space=v) for i, v in enumerate([*HOSTILE_VALUES, {**SPACE, "clip": b"x"}])]
    bad_params = [{}, b"x", [1, 2], {first: b"x"}, {first: good[first].astype(np.float64)},
                  {**good, first: good[first].reshape(1, -1)}, {**good, first: np.full_like(good[first], np.nan)},
                  {**good, first: good[first].astype(object)}, {**good, 7: good[first]}, {**good, "extra": b"x"}]
    out += [reply(f"params-{i}", p) for i, p in enumerate(bad_params)]
    out += [FLModel(params=good, params_type=t, meta={"client_name": f"type-{i}", NUM_STEPS: 48,
                                                     fp.FINGERPRINT_META_KEY: SPACE})
            for i, t in enumerate(["FULL"])]
    out += [reply(f"budget-{i}", good, **{BUDGET_EXHAUSTED_KEY: v}) for i, v in enumerate([b"x", np.bool_(True)])]
    return out


def test_hostile_values_never_break_the_round_or_its_json(tmp_path):
    cfg = profile("test").with_overrides({"fed.rounds": 1, "fed.min_clients": 2})
    sites = [r.meta["client_name"] for r in hostile_replies(initial_global(cfg))] + ["silent"]
    ctrl = Offline(cfg, tmp_path, lambda rnd, g: hostile_replies(g), sites)
    ctrl.run()
    assert not ctrl.panics
    result = summary(tmp_path)
    contributions = result["contributions"]
    accepted = {s for s, r in contributions.items() if r["accepted"]}
    # every studio without a usable result is named with a reason
    assert set(result["unusable"]) == set(sites) - accepted and all(result["unusable"].values())
    assert result["unusable"]["silent"].startswith("no result")
    assert {"honest-1", "honest-2", "count-0", "count-1", "eps-6", "eps-12"} <= accepted
    assert not {s for s in accepted if s.startswith(("space-", "params-", "type-"))}
    assert not accepted & {f"count-{i}" for i in range(2, len(HOSTILE_COUNTS)) if i != 11}
    assert contributions["count-11"]["weight"] == 48  # 10**400 pairs: a positive integer, capped
    assert contributions["count-0"]["num_samples"] == 8 and type(contributions["count-0"]["num_samples"]) is int
    assert contributions["eps-6"]["dp_epsilon"] == 3.0
    for i in range(len(HOSTILE_VALUES)):
        metrics = contributions[f"metric-{i}"]["metrics"]
        assert set(metrics) <= {"m"}
        if metrics and metrics["m"] is None:
            assert contributions[f"metric-{i}"]["nonfinite_metrics"] == ["m"]
    assert contributions["metric-2"]["metrics"] == {"m": None}
    assert result["aggregated"] == len(accepted)


# ----------------------------------------------------------------------------------------------- budget, summaries
def test_job_ends_normally_when_every_studio_has_spent_its_budget(test_cfg, tmp_path):
    def replies(rnd, g):
        if rnd == 0:  # client-level DP: each update carries the Gaussian noise (sigma C) the job asks for
            space = {**SPACE, **fp.config_expectations(cfg)}
            noise = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm
            rng = np.random.default_rng(rnd)
            return [reply(s, {k: rng.normal(0.01, noise, v.shape).astype(v.dtype) for k, v in g.items()}, space=space)
                    for s in ("a", "b")]
        return [FLModel(params={}, params_type=ParamsType.DIFF, metrics={"dp_budget_exhausted": 1.0},
                        meta={"client_name": s, BUDGET_EXHAUSTED_KEY: True, "dp_epsilon": 7.9}) for s in ("a", "b")]

    cfg = test_cfg.with_overrides({"fed.rounds": 4, "privacy.dp": "client"})
    ctrl = Offline(cfg, tmp_path, replies, ("a", "b"))
    ctrl.run()
    assert not ctrl.panics and len(ctrl.sent) == 2  # no third round, no panic
    summaries = read_round_summaries(tmp_path / OUTPUT_DIR, cfg.fed.rounds)
    assert [s["round"] for s in summaries] == [0, 1]
    assert "privacy budget is spent at a, b" in summaries[-1]["finished"]
    assert summaries[-1]["unusable"]["a"].startswith("privacy budget exhausted")
    with pytest.raises(SummaryError, match=r"no round-000.json, round-001.json in .*; see log.txt"):
        read_round_summaries(tmp_path / "nothing", 2, Path("log.txt"))


def test_server_does_not_import_opacus():
    code = "import sys, fedgai.federated.server.controller; print('opacus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- D resume
def _aborting(after_round: int, signal_owner: list):
    def replies(rnd, g):
        if rnd == after_round:
            signal_owner[0].abort_signal.trigger(True)
        return [reply("s1", {k: np.full_like(v, 0.01) for k, v in g.items()})]
    return replies


def _interrupted_run(cfg, tmp_path: Path, state: str, job="job-1") -> Offline:
    owner: list = []
    first = Offline(cfg, tmp_path / "run1", _aborting(0, owner), ("s1",), checkpoint_dir=state, job=job)
    owner.append(first)
    first.run()
    assert [m.current_round for m in first.sent] == [0]  # aborted after round 0 was saved
    return first


def _next_run(cfg, tmp_path: Path, state: str, job: str) -> Offline:
    run = Offline(cfg, tmp_path / f"run-{job}", lambda r, g: [reply("s1", {k: np.full_like(v, 0.01)
                                                                           for k, v in g.items()})],
                  ("s1",), checkpoint_dir=state, job=job)
    run.run()
    return run


def test_restarted_job_continues_after_its_last_saved_round(test_cfg, tmp_path):
    cfg, state = test_cfg.with_overrides({"fed.rounds": 3}), "state"
    _interrupted_run(cfg, tmp_path, state)
    after_first = torch.load(tmp_path / "run1" / OUTPUT_DIR / "global-round-000.pt", weights_only=True)["params"]
    for job in ("job-1", "job-2"):  # the server restarted, or the same job resubmitted (same_config)
        if job == "job-2":
            _interrupted_run(cfg, tmp_path, state)
        again = _next_run(cfg, tmp_path, state, job)
        assert [m.current_round for m in again.sent] == [1, 2] and not again.panics
        for key, value in after_first.items():
            np.testing.assert_array_equal(again.sent[0].params[key], value.numpy())
    assert [m.current_round for m in _next_run(cfg, tmp_path, state, "job-3").sent] == [0, 1, 2]  # finished


def test_another_configuration_never_continues_a_saved_state(test_cfg, tmp_path):
    cfg, state = test_cfg.with_overrides({"fed.rounds": 3}), "state"
    _interrupted_run(cfg, tmp_path, state)
    other = _next_run(cfg.with_overrides({"train.lr_d": 1e-3, "train.seed": 7}), tmp_path, state, "job-2")
    assert other.sent == [] and len(other.panics) == 1
    assert "train.lr_d: 0.001 -> 0.001" not in other.panics[0]
    assert "train.lr_d: 0.0002 -> 0.001" in other.panics[0] and "train.seed: 0 -> 7" in other.panics[0]
    assert "fed.resume to never" in other.panics[0]
    strict = _next_run(cfg.with_overrides({"fed.resume": "same_job"}), tmp_path, state, "job-3")
    assert "continues only this job's own state" in strict.panics[0]
    fresh = _next_run(cfg.with_overrides({"fed.resume": "never"}), tmp_path, state, "job-4")
    assert [m.current_round for m in fresh.sent] == [0, 1, 2] and not fresh.panics


# ----------------------------------------------------------------------------------------------- E feature space
def test_server_fixes_the_majority_feature_space_and_refuses_others(test_cfg, tmp_path):
    vgg_like = {**SPACE, "encoder_weights": "1" * 16}

    def replies(rnd, g):
        update = {k: np.full_like(v, 0.01) for k, v in g.items()}
        return [reply("a", update), reply("b", update), reply("c", update, space=vgg_like),
                reply("d", update, space={**SPACE, "image_size": 64})]

    ctrl = Offline(test_cfg, tmp_path, replies, "abcd")
    ctrl.run()
    first = summary(tmp_path, 0)
    assert first["feature_space"] == SPACE and first["aggregated"] == 2
    assert "encoder_weights: '1111111111111111' at the studio, '0000000000000000' in the federation" in \
        first["unusable"]["c"]
    assert "image_size: 64 at the studio, 32 in the federation" in first["unusable"]["d"]
    assert fp.FINGERPRINT_META_KEY not in ctrl.sent[0].meta and ctrl.sent[1].meta[fp.FINGERPRINT_META_KEY] == SPACE


def test_studio_refuses_a_global_model_from_another_feature_space(test_cfg):
    own = fp.feature_space(test_cfg, "efficientnet-lite0", "ab" * 8, clip_enabled=False)
    fp.check_global_model(own, None)  # round 0: nothing fixed yet
    fp.check_global_model(own, dict(own))
    with pytest.raises(fp.FeatureSpaceMismatch, match=r"encoder: 'efficientnet-lite0' here, 'vgg16' in the global"):
        fp.check_global_model(own, {**own, "encoder": "vgg16", "encoder_weights": "cd" * 8})
    with pytest.raises(fp.FeatureSpaceMismatch, match="malformed"):
        fp.check_global_model(own, {"encoder": "vgg16"})


def test_encoder_weights_hash_tells_weights_apart():
    a, b = RandomEncoder(), RandomEncoder()
    assert a.weights_hash() == b.weights_hash()
    c = RandomEncoder()
    with torch.no_grad():
        next(c.parameters()).add_(1e-3)
    assert c.weights_hash() != a.weights_hash()
