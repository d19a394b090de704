"""Privacy: the Gaussian mechanism, the accountant against theory, the NVFlare filter (record DP: test_dp_record.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FilterKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.task_utils import apply_filters

from fedgai.config import PrivacyConfig
from fedgai.privacy import (
    LEDGER_FILE,
    GaussianDPFilter,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    Step,
    UnsafeUpdateError,
    budget_allows_next_round,
    calibrate_noise,
    clip_and_noise,
    compute_epsilon,
    fresh_noise_generator,
    record_level_schedule,
    update_norm,
)
from fedgai.wire import BUDGET_EXHAUSTED_KEY

torch.set_num_threads(1)
DELTA = 1e-5
STUDIO = "studio-a"


# ---------------------------------------------------------------- mechanism


def _update(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": (rng.standard_normal((64, 32, 3, 3)) * scale).astype(np.float32),
        "head.bias": (rng.standard_normal(500) * scale).astype(np.float64),
    }


def _scaled_to(update: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    factor = norm / update_norm(update)
    return {k: (v * factor).astype(v.dtype) for k, v in update.items()}


def test_update_norm_is_global_l2_over_all_arrays():
    update = {"a": np.array([3.0, 0.0], dtype=np.float32), "b": np.array([[4.0]])}
    assert update_norm(update) == pytest.approx(5.0)


def test_norm_10_update_is_clipped_to_clip_norm_and_keeps_direction():
    update = _scaled_to(_update(), 10.0)
    out, info = clip_and_noise(update, clip_norm=1.0, noise_multiplier=0.0)
    assert update_norm(out) == pytest.approx(1.0, rel=1e-6)
    assert info == pytest.approx({"norm_before": 10.0, "clip_factor": 0.1, "noise_std": 0.0}, rel=1e-6)
    for key, value in update.items():
        np.testing.assert_allclose(out[key], value * 0.1, rtol=1e-5, atol=1e-7)


def test_update_within_clip_norm_is_not_scaled():
    update = _scaled_to(_update(), 0.5)
    out, info = clip_and_noise(update, clip_norm=1.0, noise_multiplier=0.0)
    assert info["clip_factor"] == 1.0
    for key, value in update.items():
        np.testing.assert_array_equal(out[key], value)


def test_noise_is_gaussian_with_std_sigma_times_clip_and_keeps_dtypes():
    update = _scaled_to(_update(), 0.25)
    out, info = clip_and_noise(update, clip_norm=0.5, noise_multiplier=2.0, rng=np.random.default_rng(1))
    noise = np.concatenate([(out[k].astype(np.float64) - update[k]).ravel() for k in update])
    assert info["noise_std"] == 1.0
    # 18 932 draws: the sample std is within 2% of 1.0 with overwhelming probability.
    assert noise.std() == pytest.approx(1.0, rel=0.02)
    assert abs(noise.mean()) < 0.05
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {k: (v.dtype, v.shape) for k, v in update.items()}


def test_default_noise_is_fresh_on_every_release():
    update = _update()
    first, _ = clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0)
    second, _ = clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0)
    assert not np.array_equal(first["head.bias"], second["head.bias"])


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"w": np.ones(3, dtype=np.int64)},
        {"w": np.ones(3, dtype=bool)},
        {"w": np.ones(3, dtype=np.complex64)},
        {"w": np.array([1.0, None], dtype=object)},
        {"w": np.array([1.0, np.nan], dtype=np.float32)},
        {"w": np.array([1.0, np.inf])},
        {"w": [1.0, 2.0]},
        {"w": torch.ones(3)},
    ],
    ids=["empty", "int", "bool", "complex", "object", "nan", "inf", "list", "torch"],
)
def test_unprivatisable_updates_are_refused(update):
    with pytest.raises(UnsafeUpdateError):
        clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0)


@pytest.mark.parametrize(("clip_norm", "noise_multiplier"), [(0.0, 1.0), (-1.0, 1.0), (1.0, -0.1), (1.0, math.nan)])
def test_meaningless_mechanism_settings_are_refused(clip_norm, noise_multiplier):
    with pytest.raises(ValueError):
        clip_and_noise(_update(), clip_norm, noise_multiplier)


# ---------------------------------------------------------------- accountant


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with mu = sensitivity/std (Balle & Wang 2018, Thm 8):
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2), solved for eps by bisection."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_of(eps: float) -> float:
        return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)

    low, high = 0.0, 200.0  # delta_of is decreasing in eps
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_of(mid) > delta else (low, mid)
    return high


def _client_level(sigma: float, rounds: int, accountant: str = "rdp") -> float:
    return compute_epsilon([Step(sigma, 1.0, rounds)], DELTA, accountant)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("rounds", [1, 11])
def test_rdp_bounds_and_prv_matches_the_exact_gaussian_mechanism(sigma, rounds):
    """With sample_rate 1, T Gaussian releases compose exactly to one Gaussian mechanism with mu = sqrt(T)/sigma.

    RDP's conversion to (eps, delta) is an upper bound, so it must be >= exact. Opacus' PRV accountant returns
    the upper end of Gopi et al.'s error bracket, whose width is at most 2 * eps_error (eps_error = 0.01 by
    default): exact <= prv <= exact + 0.02.
    """
    exact = _exact_gaussian_epsilon(math.sqrt(rounds) / sigma, DELTA)
    assert _client_level(sigma, rounds, "rdp") >= exact
    prv = _client_level(sigma, rounds, "prv")
    assert exact <= prv <= exact + 0.02


def test_client_level_reference_points():
    """sigma 2 -> eps ~ 8, sigma 3 -> eps ~ 5 over 11 rounds (values from opacus 1.6 pinned to 0.01)."""
    assert _client_level(2.0, 11, "rdp") == pytest.approx(8.552, abs=0.01)
    assert _client_level(2.0, 11, "prv") == pytest.approx(7.966, abs=0.01)
    assert _client_level(3.0, 11, "rdp") == pytest.approx(5.308, abs=0.01)
    assert _client_level(3.0, 11, "prv") == pytest.approx(4.929, abs=0.01)
    for accountant, tolerance in (("rdp", 0.6), ("prv", 0.1)):
        assert _client_level(2.0, 11, accountant) == pytest.approx(8.0, abs=tolerance)
        assert _client_level(3.0, 11, accountant) == pytest.approx(5.0, abs=tolerance)


def test_epsilon_decreases_with_noise_and_grows_with_rounds():
    by_sigma = [_client_level(s, 11) for s in (0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)]
    by_rounds = [_client_level(2.0, t) for t in (1, 2, 5, 11, 50)]
    assert by_sigma == sorted(by_sigma, reverse=True) and len(set(by_sigma)) == len(by_sigma)
    assert by_rounds == sorted(by_rounds) and len(set(by_rounds)) == len(by_rounds)


@pytest.mark.parametrize(
    ("num_samples", "sigma", "expected", "pinned"),
    [(100, 2.0, 8.7, 8.536), (250, 1.5, 7.6, 7.492)],
)
def test_record_level_reference_points(num_samples, sigma, expected, pinned):
    """Batch 8, 11 rounds x 11 epochs. The 8.7 / 7.6 figures use q = B/N and steps = epochs/q; Opacus' Poisson
    loader uses q = 1/ceil(N/B) and ceil(N/B) steps per epoch, which is what runs and is a little lower."""
    sample_rate, steps = record_level_schedule(num_samples, batch_size=8, epochs=121)
    epsilon = compute_epsilon([Step(sigma, sample_rate, steps)], DELTA, "rdp")
    assert epsilon == pytest.approx(pinned, abs=0.01)
    assert epsilon == pytest.approx(expected, abs=0.2)
    nominal_q = 8 / num_samples
    nominal = compute_epsilon([Step(sigma, nominal_q, int(121 / nominal_q))], DELTA, "rdp")
    assert nominal == pytest.approx(expected, abs=0.05)


def test_record_level_schedule_counts_loader_batches():
    assert record_level_schedule(100, 8, 121) == (1 / 13, 13 * 121)
    assert record_level_schedule(40, 8, 2) == (0.2, 10)


def test_calibrate_noise_reaches_target_from_below():
    sigma = calibrate_noise(8.0, DELTA, sample_rate=1.0, steps=11, accountant="rdp")
    assert 2.0 < sigma < 3.0
    assert 7.98 <= _client_level(sigma, 11) <= 8.0


def test_no_noise_means_no_privacy():
    assert compute_epsilon([Step(0.0, 1.0, 1)], DELTA) == math.inf
    assert compute_epsilon([], DELTA) == 0.0


def test_ledger_persists_merges_and_reloads(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, STUDIO)
    ledger.record(2.0, 1.0)
    ledger.record(2.0, 1.0)
    ledger.record(1.5, 0.1, count=30)
    reloaded = PrivacyLedger(path, STUDIO)
    assert reloaded.steps == (Step(2.0, 1.0, 2), Step(1.5, 0.1, 30))
    assert reloaded.epsilon(DELTA) == ledger.epsilon(DELTA) == compute_epsilon(reloaded.steps, DELTA)
    assert json.loads(path.read_text())["studio"] == STUDIO


def test_ledger_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path, STUDIO)
    ledger.record(2.0, 1.0)
    before = path.read_text()

    def crash(*_args):
        raise OSError("disk gone")

    monkeypatch.setattr("fedgai.privacy.accountant.os.replace", crash)
    with pytest.raises(OSError):
        ledger.record(3.0, 1.0)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


@pytest.mark.parametrize("content", ["{not json", '{"format": "other/9", "studio": null, "steps": []}', "[]"])
def test_unreadable_ledger_is_an_error_not_a_reset(tmp_path, content):
    path = tmp_path / "ledger.json"
    path.write_text(content)
    with pytest.raises(LedgerError):
        PrivacyLedger(path, STUDIO)


def test_ledger_of_another_studio_is_refused(tmp_path):
    path = tmp_path / "ledger.json"
    PrivacyLedger(path, "studio-b").record(2.0, 1.0)
    with pytest.raises(LedgerError, match="studio-b"):
        PrivacyLedger(path, STUDIO)


def test_check_budget_names_studio_and_numbers(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.json", STUDIO)
    ledger.record(2.0, 1.0, count=10)
    current, projected = ledger.epsilon(DELTA), ledger.projected_epsilon(2.0, 1.0, 1, DELTA)
    assert ledger.check_budget(projected, 2.0, 1.0, 1, DELTA) == projected
    with pytest.raises(PrivacyBudgetExceeded) as err:
        ledger.check_budget(8.0, 2.0, 1.0, 1, DELTA)
    message = str(err.value)
    assert STUDIO in message and f"{current:.3f}" in message and f"{projected:.3f}" in message and "8.0" in message
    assert ledger.steps == (Step(2.0, 1.0, 10),)


# ---------------------------------------------------------------- NVFlare filter


@pytest.fixture
def site(site_context) -> tuple[FLContext, Path]:
    """A studio's FLContext and the client-level ledger path in its workspace."""
    fl_ctx, root = site_context
    return fl_ctx, root / LEDGER_FILE


def _result(data: dict, kind: str = DataKind.WEIGHT_DIFF, meta: dict | None = None) -> Shareable:
    return DXO(data_kind=kind, data=data, meta=meta or {"NUM_STEPS_CURRENT_ROUND": 24}).to_shareable()


def _filter(**kwargs) -> GaussianDPFilter:
    return GaussianDPFilter(**{"clip_norm": 1.0, "noise_multiplier": 2.0, "delta": DELTA, **kwargs})


def test_filter_adds_calibrated_noise_and_reports_dp_meta(site):
    fl_ctx, _ = site
    update = _scaled_to(_update(), 0.5)
    out = from_shareable(_filter(clip_norm=1.0, noise_multiplier=1.5).process(_result(update), fl_ctx))
    assert out.data_kind == DataKind.WEIGHT_DIFF
    noise = np.concatenate([(out.data[k].astype(np.float64) - update[k]).ravel() for k in update])
    assert noise.std() == pytest.approx(1.5, rel=0.02)
    assert abs(noise.mean()) < 0.05
    assert out.meta["NUM_STEPS_CURRENT_ROUND"] == 24
    assert out.meta["dp_epsilon"] == pytest.approx(_client_level(1.5 / 2, 1))  # sensitivity 2C (replace)
    assert (out.meta["dp_delta"], out.meta["dp_noise_multiplier"], out.meta["dp_clip_norm"]) == (DELTA, 1.5, 1.0)
    assert not any("norm_before" in k for k in out.meta)  # the raw norm is data-dependent: never sent
    assert out.get_filter_history() == ["GaussianDPFilter"]


def test_filter_clips_a_norm_10_update_to_norm_1(site):
    fl_ctx, _ = site
    out = from_shareable(_filter(noise_multiplier=0.0).process(_result(_scaled_to(_update(), 10.0)), fl_ctx))
    assert update_norm(out.data) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    "result",
    [
        _result(_update(), kind=DataKind.WEIGHTS),
        _result({"w": np.arange(4)}),
        _result({"w": np.array([0.1, np.nan], dtype=np.float32)}),
        _result({}),
        _result({"w": torch.ones(4)}),
        _result({"loss": 0.3}, kind=DataKind.METRICS),
        DXO(DataKind.COLLECTION, data={"d": DXO(DataKind.WEIGHT_DIFF, data=_update())}).to_shareable(),
        Shareable({"raw": np.ones(4)}),
    ],
    ids=["weights", "int", "nan", "empty", "torch", "metrics", "collection", "not-a-dxo"],
)
def test_filter_fails_closed_and_records_nothing(site, result):
    fl_ctx, ledger_file = site
    with pytest.raises((UnsafeUpdateError, ValueError)):
        _filter().process(result, fl_ctx)
    assert not ledger_file.exists()


def test_a_refusal_propagates_through_nvflare_filter_chain(site):
    """apply_filters is what ClientRunner calls; it must not swallow the error (the runner then replies
    TASK_RESULT_FILTER_ERROR with no payload)."""
    fl_ctx, _ = site
    chain = {"train" + FilterKey.DELIMITER + FilterKey.OUT: [_filter()]}
    with pytest.raises(UnsafeUpdateError, match="WEIGHTS"):
        apply_filters(
            "task_result_filters", _result(_update(), kind=DataKind.WEIGHTS), fl_ctx, chain, "train", FilterKey.OUT
        )


def test_error_replies_lose_their_payload(site):
    fl_ctx, _ = site
    reply = _result(_update())
    reply.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
    out = _filter().process(reply, fl_ctx)
    assert out.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert "DXO" not in out


def test_epsilon_grows_per_round_and_ledger_survives_new_filter_instances(site):
    fl_ctx, ledger_file = site
    first = _filter()
    epsilons = [from_shareable(first.process(_result(_update()), fl_ctx)).meta["dp_epsilon"] for _ in range(2)]
    epsilons.append(from_shareable(_filter().process(_result(_update()), fl_ctx)).meta["dp_epsilon"])
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert epsilons == pytest.approx([_client_level(1.0, t) for t in (1, 2, 3)])  # sigma 2 over sensitivity 2C
    assert PrivacyLedger(ledger_file, STUDIO).steps == (Step(1.0, 1.0, 3),)


def test_budget_refusal_once_the_next_round_would_cross_the_target(site):
    fl_ctx, ledger_file = site
    target = (_client_level(1.0, 2) + _client_level(1.0, 3)) / 2
    cfg = PrivacyConfig(dp="client", noise_multiplier=2.0, delta=DELTA, target_epsilon=target)
    dp_filter = _filter(target_epsilon=target)
    for _ in range(2):
        assert budget_allows_next_round(ledger_file, cfg)
        dp_filter.process(_result(_update()), fl_ctx)
    assert not budget_allows_next_round(ledger_file, cfg)
    with pytest.raises(PrivacyBudgetExceeded, match=STUDIO):
        dp_filter.process(_result(_update()), fl_ctx)
    assert PrivacyLedger(ledger_file, STUDIO).steps == (Step(1.0, 1.0, 2),)


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_client_level_epsilon_is_for_replacing_a_studios_data(site, sigma):
    """docs/privacy.md claims the replace relation: a studio's data against any other data of that studio.
    Two clipped updates then differ by up to 2C (the norm-C update and its opposite), the noise std is sigma*C,
    so T rounds are exactly a Gaussian mechanism with mu = 2 sqrt(T) / sigma; the filter's epsilon (PRV, within
    0.02 of exact) must be that one, not the add/remove value for mu = sqrt(T) / sigma."""
    fl_ctx, _ = site
    update = _scaled_to(_update(), 5.0)
    opposite = {k: -v for k, v in update.items()}
    apart = {k: clip_and_noise(update, 1.0, 0.0)[0][k] - clip_and_noise(opposite, 1.0, 0.0)[0][k] for k in update}
    assert update_norm(apart) == pytest.approx(2.0, rel=1e-5)
    dp_filter = _filter(noise_multiplier=sigma, accountant="prv")
    epsilons = [from_shareable(dp_filter.process(_result(update), fl_ctx)).meta["dp_epsilon"] for _ in range(3)]
    exact = _exact_gaussian_epsilon(2 * math.sqrt(3) / sigma, DELTA)
    assert exact <= epsilons[-1] <= exact + 0.02
    assert epsilons[-1] > _exact_gaussian_epsilon(math.sqrt(3) / sigma, DELTA) + 0.5


@pytest.mark.parametrize(
    "bad",
    [{"clip_norm": 0.0}, {"noise_multiplier": -1.0}, {"delta": 1.0}, {"target_epsilon": 0.0}, {"accountant": "gdp"}],
)
def test_filter_rejects_bad_settings_at_construction(bad):
    with pytest.raises(ValueError):
        _filter(**bad)


def test_budget_helper_ignores_runs_without_a_target(tmp_path):
    assert budget_allows_next_round(tmp_path / "none.json", PrivacyConfig(dp="client", target_epsilon=None))
    assert budget_allows_next_round(tmp_path / "none.json", PrivacyConfig(dp="none", target_epsilon=0.1))


def test_budget_notice_is_forwarded_without_metric_values(site):
    fl_ctx, _ = site
    notice = _result({"loss_d": 0.7}, kind=DataKind.METRICS, meta={BUDGET_EXHAUSTED_KEY: True})
    out = from_shareable(_filter().process(notice, fl_ctx))
    assert out.data_kind == DataKind.METRICS and out.data == {}
    assert out.meta[BUDGET_EXHAUSTED_KEY] is True and out.meta["dp_epsilon"] == 0.0


def test_filter_exports_into_a_job_config_as_plain_values(tmp_path):
    from nvflare.app_common.workflows.fedavg import FedAvg
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.defs import FilterType

    job = FedJob(name="dp")
    job.to_server(FedAvg(num_clients=1, num_rounds=1))
    job.to_clients(_filter(target_epsilon=8.0, accountant="prv"), tasks=["train"], filter_type=FilterType.TASK_RESULT)
    job.export_job(str(tmp_path))
    config = json.loads((tmp_path / "dp" / "app" / "config" / "config_fed_client.json").read_text())
    (entry,) = config["task_result_filters"][0]["filters"]
    assert entry["path"] == "fedgai.privacy.filter.GaussianDPFilter"
    assert entry["args"] == {
        "clip_norm": 1.0,
        "noise_multiplier": 2.0,
        "delta": DELTA,
        "target_epsilon": 8.0,
        "accountant": "prv",
    }
    assert isinstance(GaussianDPFilter(**entry["args"]), GaussianDPFilter)


# ---------------------------------------------------------------- randomness


def test_dp_noise_is_not_replayable_from_the_run_seed():
    torch.manual_seed(0)
    first = torch.normal(0, 1, (4,), generator=fresh_noise_generator())
    torch.manual_seed(0)
    second = torch.normal(0, 1, (4,), generator=fresh_noise_generator())
    assert not torch.equal(first, second)
