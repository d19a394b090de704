"""Issue 24 §1-§3: the studio applies its privacy itself (noise, meta gate, encryption), whatever filters a job
installs; the site decides the modes; every BatchNorm tensor stays home; the site's one ledger is locked."""

from __future__ import annotations

import math
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FilterKey, FLContextKey, FLMetaKey
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor

from fedgai.config import profile
from fedgai.federated.he_keys import CLIENT_CONTEXT, make_contexts
from fedgai.federated.he_wire import decrypt_packed
from fedgai.federated.round import initial_global
from fedgai.federated.studio import executor
from fedgai.federated.studio.client import (
    SitePaths,
    Studio,
    StudioConfigChanged,
    check_same_config,
    local_round,
    open_trainer,
    parse_args,
    releasable,
    save_round,
    site_config,
)
from fedgai.federated.studio.executor import StudioExecutor
from fedgai.federated.studio.global_check import GlobalCheck, GlobalCheckStateError, site_check_file
from fedgai.federated.studio.he_studio import PackedHEModelEncryptor, ShapedHEModelDecryptor, is_sealed, seal_job
from fedgai.modes import D_ONLY_MODES, MODES
from fedgai.privacy import GaussianDPFilter, PrivacyLedger, Step, compute_epsilon
from fedgai.privacy.accountant import client_level_noise
from fedgai.privacy.client_level import StudioClientDP
from fedgai.privacy.mechanism import UnsafeUpdateError, update_norm
from fedgai.privacy.policy import SitePolicy, SitePolicyError, file_sha256, load_site_policy, write_site_policy
from fedgai.sharing import NORM_NAME_PATTERN, norm_keys
from fedgai.trainer import StudioTrainer
from fedgai.wire import (
    BUDGET_EXHAUSTED_KEY,
    CONFIG_META_KEY,
    DP_EPSILON_META_KEY,
    DP_NOISE_META_KEY,
    GLOBAL_REFUSED_META_KEY,
    config_hash,
)

NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
DELTA = 1e-5
CLIENT_DP = {"privacy.dp": "client", "privacy.noise_multiplier": 4.0, "privacy.target_epsilon": 50.0}


def _global(cfg) -> FLModel:
    return FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}, current_round=0)


@pytest.fixture(scope="module")
def dp_round(studio_dir, tmp_path_factory):
    """A client-level DP studio's trained round (its own record, before anything is released)."""
    cfg = profile("test").with_overrides(CLIENT_DP)
    trainer = StudioTrainer(cfg, studio_dir, tmp_path_factory.mktemp("studio"))
    return cfg, local_round(trainer, _global(cfg), tmp_path_factory.mktemp("ledger") / "ledger.json")


# ----------------------------------------------------------------------------------------------- §1 noise
def test_the_studio_noises_its_update_itself_without_any_filter(dp_round, tmp_path):
    """Old code: releasable returned the trained DIFF as is, and only a job-installed filter noised it."""
    cfg, result = dp_round
    ledger = tmp_path / "ledger.json"
    sent = releasable(result, cfg, StudioClientDP(cfg.privacy, ledger))
    arrays = {k: v.numpy() for k, v in sent.params.items()}
    noise = {k: arrays[k] - result.params[k].numpy() for k in arrays}
    d = sum(v.size for v in arrays.values())
    expected = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm * math.sqrt(d)
    assert update_norm(noise) > 0.5 * expected  # sigma C sqrt(d) of noise: nothing leaves as trained
    assert sent.meta[DP_NOISE_META_KEY] == cfg.privacy.noise_multiplier
    assert PrivacyLedger(ledger).steps == (Step(client_level_noise(4.0), 1.0, 1),)


def test_client_dp_without_the_studios_noise_refuses_to_release(dp_round):
    cfg, result = dp_round
    with pytest.raises(UnsafeUpdateError, match="nothing leaves"):
        releasable(result, cfg)


def test_the_jobs_dp_filter_is_a_checked_no_op_on_the_studios_noise(dp_round, site_context):
    """Noise is applied once: the studio's. A job filter asking for more than the studio applied refuses."""
    fl_ctx, root = site_context
    cfg, result = dp_round
    sent = releasable(result, cfg, StudioClientDP(cfg.privacy, root / "ledger.json"))
    shareable = DXO(DataKind.WEIGHT_DIFF, data={k: v.numpy() for k, v in sent.params.items()},
                    meta=dict(sent.meta)).to_shareable()
    out = from_shareable(GaussianDPFilter(clip_norm=1.0, noise_multiplier=4.0, delta=DELTA).process(shareable, fl_ctx))
    assert all(np.array_equal(out.data[k], sent.params[k].numpy()) for k in out.data)
    assert not (root / "fedgai_dp_ledger.json").exists()  # charged once, by the studio
    with pytest.raises(UnsafeUpdateError, match="sigma >= 6.0"):
        GaussianDPFilter(clip_norm=1.0, noise_multiplier=6.0, delta=DELTA).process(shareable, fl_ctx)


def test_client_dp_sends_this_jobs_epsilon_not_the_sites_total(dp_round, tmp_path):
    cfg, result = dp_round
    ledger = tmp_path / "ledger.json"
    PrivacyLedger(ledger).record(client_level_noise(4.0), 1.0, count=20)  # another job's rounds
    sent = releasable(result, cfg, StudioClientDP(cfg.privacy, ledger))
    one_round = compute_epsilon([Step(client_level_noise(4.0), 1.0, 1)], DELTA)
    assert sent.meta[DP_EPSILON_META_KEY] == pytest.approx(one_round)
    assert PrivacyLedger(ledger).epsilon(DELTA) > 2 * one_round


def test_a_budget_spent_by_another_job_since_the_check_turns_the_release_into_a_notice(dp_round, tmp_path):
    cfg, result = dp_round
    ledger = tmp_path / "ledger.json"
    PrivacyLedger(ledger).record(client_level_noise(4.0), 1.0, count=2000)  # another job, in the meantime
    sent = releasable(result, cfg, StudioClientDP(cfg.privacy, ledger))
    assert sent.params is None and sent.metrics == {} and sent.meta[BUDGET_EXHAUSTED_KEY] is True
    assert sent.meta[DP_EPSILON_META_KEY] == 0.0  # this job released nothing
    assert PrivacyLedger(ledger).steps == (Step(client_level_noise(4.0), 1.0, 2000),)  # nothing charged


# ----------------------------------------------------------------------------------------------- §1 encryption
@pytest.fixture
def keyed_site(site_context, monkeypatch):
    """A studio with its client context in its startup kit (read as NVFlare reads it, minus the signature)."""
    fl_ctx, root = site_context
    _, client = make_contexts()
    (root / "startup" / CLIENT_CONTEXT).write_bytes(client)
    monkeypatch.setattr(executor, "load_tenseal_context_from_workspace",
                        lambda name, ctx: ts.context_from((root / "startup" / name).read_bytes()))
    return fl_ctx, ts.context_from(client)


def _task(he: bool):
    config = profile("test").with_overrides({"privacy.he": he}).to_dict()
    return DXO(DataKind.WEIGHTS, data={"w": np.zeros(3, np.float32)}, meta={CONFIG_META_KEY: config}).to_shareable()


def _trained() -> DXO:
    return DXO(DataKind.WEIGHT_DIFF, data={"w": np.array([0.5, -1.0, 2.0], np.float32)}, meta={NUM_STEPS: 4})


@pytest.mark.parametrize("he", [True, False])
def test_under_he_the_studio_encrypts_whatever_filters_the_job_installs(he, keyed_site, monkeypatch):
    """Old code: StudioExecutor returned the script's plaintext update; only the job's encryptor filter (which a
    job can leave out or bind to another task) encrypted it."""
    fl_ctx, client = keyed_site
    monkeypatch.setattr(ClientAPIExecutor, "execute", lambda *args: _trained().to_shareable())
    out = from_shareable(StudioExecutor(fedgai_version="x").execute("train", _task(he), fl_ctx, Signal()))
    assert is_sealed(out) is he
    if he:  # weighted by the pair count, as the server's aggregator expects
        np.testing.assert_allclose(decrypt_packed(client, out.data["w"], 3), [2.0, -4.0, 8.0], atol=1e-3)
        again = PackedHEModelEncryptor().process_dxo(out, out.to_shareable(), fl_ctx)
        assert again.data == out.data  # the job's encryptor finds it sealed: nothing to do, no double weighting


def test_a_server_cannot_switch_encryption_off_mid_job(keyed_site, monkeypatch):
    fl_ctx, _ = keyed_site
    monkeypatch.setattr(ClientAPIExecutor, "execute", lambda *args: _trained().to_shareable())
    studio = StudioExecutor(fedgai_version="x")
    assert is_sealed(from_shareable(studio.execute("train", _task(True), fl_ctx, Signal())))
    assert is_sealed(from_shareable(studio.execute("train", _task(False), fl_ctx, Signal())))


def test_a_studio_stops_when_a_later_task_carries_another_config():
    """The policy's decisions were taken on the first task's config; a server must not change it mid-job."""
    cfg = profile("test").with_overrides(CLIENT_DP)
    studio = Studio(trainer=None, writer=None, ledger=None, config_hash=config_hash(cfg.to_dict()))
    check_same_config(studio, FLModel(params={}, current_round=1, meta={CONFIG_META_KEY: cfg.to_dict()}))
    weaker = cfg.with_overrides({"privacy.noise_multiplier": 0.1}).to_dict()
    with pytest.raises(StudioConfigChanged, match="round 2: the job's config changed"):
        check_same_config(studio, FLModel(params={}, current_round=2, meta={CONFIG_META_KEY: weaker}))


def test_a_job_cannot_bind_the_decryptor_to_what_the_studio_sends(keyed_site):
    fl_ctx, _ = keyed_site
    fl_ctx.set_prop(FLContextKey.FILTER_DIRECTION, FilterKey.OUT, private=True, sticky=False)
    with pytest.raises(UnsafeUpdateError, match="never what it sends"):
        ShapedHEModelDecryptor().process_dxo(_trained(), _trained().to_shareable(), fl_ctx)


def test_under_he_a_result_with_data_that_is_not_an_update_is_refused(keyed_site, monkeypatch):
    fl_ctx, _ = keyed_site
    metrics = DXO(DataKind.METRICS, data={"loss_g": 1.0}).to_shareable()
    monkeypatch.setattr(ClientAPIExecutor, "execute", lambda *args: metrics)
    with pytest.raises(UnsafeUpdateError, match="only encrypted updates"):
        StudioExecutor(fedgai_version="x").execute("train", _task(True), fl_ctx, Signal())


# ----------------------------------------------------------------------------------------------- §1 modes, policy
GENERATOR_MODES = sorted(name for name, spec in MODES.items() if spec.sends_generator)
# What a mode needs besides fed.mode to be a valid config (config.styled_problem).
MODE_SETTINGS = {"fedgai_style": {"model.generator": "styled"}, "fedgai_style_code": {"model.generator": "styled"}}


def test_the_default_policy_allows_exactly_the_d_only_modes():
    assert set(D_ONLY_MODES) == {"fedgai", "fedavg_bn", "local"}
    assert SitePolicy().allowed_modes == D_ONLY_MODES
    assert set(GENERATOR_MODES) == {"fedavg_full", "fedbn", "fedgai_struct", "fedgai_ditto", "fedgai_style",
                                    "fedgai_style_code"}


@pytest.mark.parametrize("mode", GENERATOR_MODES)
def test_a_generator_mode_needs_the_sites_consent(mode):
    cfg = profile("test").with_overrides({"fed.mode": mode, **MODE_SETTINGS.get(mode, {}), **CLIENT_DP})
    with pytest.raises(SitePolicyError, match=f"fed.mode '{mode}' is not among the modes this site allows"):
        site_config(cfg, SitePolicy())
    assert site_config(cfg, SitePolicy(allowed_modes=(mode,), epsilon_budget=50.0)).fed.mode == mode


@pytest.mark.parametrize("mode", ["fedavg_full", "fedbn"])
def test_every_studio_refuses_a_generator_mode_without_protection(mode):
    """Old code ran fedavg_full and fedbn (the whole generator) with no HE and no DP."""
    with pytest.raises(SitePolicyError, match=f"fed.mode '{mode}' sends generator weights"):
        site_config(profile("test").with_overrides({"fed.mode": mode}), None)


@pytest.mark.parametrize(("settings", "ok"), [
    ({"privacy.he": True, "fed.min_clients": 2}, False),  # two studios: each holds the other's update
    ({"privacy.he": True, "fed.min_clients": 3}, True),
    ({"privacy.dp": "client", "privacy.noise_multiplier": 0.0}, False),  # clipping only
    ({"privacy.dp": "client", "privacy.noise_multiplier": 1.0}, True),
])
def test_a_generator_mode_needs_he_with_three_studios_or_noised_client_dp(settings, ok):
    cfg = profile("test").with_overrides({"fed.mode": "fedbn", **settings})
    policy = SitePolicy(allowed_modes=("fedbn",), min_noise_multiplier=0.0)
    seal_job("job-1")  # StudioExecutor runs the job: it encrypts under HE
    if ok:
        assert site_config(cfg, policy, "job-1").fed.mode == "fedbn"
    else:
        with pytest.raises(SitePolicyError, match="sends generator weights"):
            site_config(cfg, policy, "job-1")


def test_an_he_job_runs_only_where_the_studios_executor_encrypts_it():
    """An unhardened kit lets a job name NVFlare's plain ClientAPIExecutor for the studio script: under HE the
    script refuses, as that executor would send its update in clear."""
    cfg = profile("test").with_overrides({"privacy.he": True})
    with pytest.raises(SitePolicyError, match="StudioExecutor, which does not run job 'job-9'"):
        site_config(cfg, None, "job-9")
    seal_job("job-9")
    assert site_config(cfg, None, "job-9").privacy.he


def test_a_record_level_site_is_not_switched_off_dp_sgd_by_a_client_level_job():
    """Old code: a job claiming client-level DP passed a min_dp = record policy, and DP-SGD did not run."""
    policy = SitePolicy(min_dp="record")
    with pytest.raises(SitePolicyError, match="only with record-level DP-SGD"):
        site_config(profile("test").with_overrides(CLIENT_DP), policy)
    record = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 1.0})
    assert site_config(record, policy).privacy.dp == "record"


@pytest.mark.parametrize(("setting", "reason"), [
    ({"privacy.stats_noise_multiplier": 1.0}, "stats_noise_multiplier 1.0 < the site's minimum 5.0"),
    ({"privacy.stats_clip_norm": 500.0}, "stats_clip_norm 500.0 > the site's maximum 64.0"),
    ({"privacy.record_trainable": "all"}, "privacy.record_trainable 'all' is not among the site's style_head"),
])
def test_the_policy_covers_the_released_sketch_statistics_and_what_dp_sgd_trains(setting, reason):
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 1.0, **setting})
    with pytest.raises(SitePolicyError, match=re.escape(reason)):
        site_config(cfg, SitePolicy(min_dp="record", allowed_record_trainable=("style_head",)))


def test_the_policy_file_round_trips_its_modes(tmp_path):
    policy = SitePolicy(allowed_modes=("fedgai", "fedgai_struct"), allowed_record_trainable=["style_head"])
    write_site_policy(tmp_path, policy)
    assert load_site_policy(tmp_path) == policy
    with pytest.raises(SitePolicyError, match="allowed_modes"):
        SitePolicy(allowed_modes=("fedgai", "everything"))


# ----------------------------------------------------------------------------------------------- §1 BatchNorm
@pytest.mark.parametrize("mode", [name for name in MODES if name != "local"])
def test_no_batchnorm_tensor_leaves_in_any_mode(mode, studio_dir, tmp_path):
    """On the wire: the DIFF a studio sends. Old code sent D's BatchNorm in fedavg_bn and G's and D's (weights,
    biases, running statistics) in fedavg_full."""
    cfg = profile("test").with_overrides({"fed.mode": mode, **MODE_SETTINGS.get(mode, {}), "privacy.he": True,
                                          "fed.min_clients": 3})
    trainer = StudioTrainer(cfg, studio_dir, tmp_path)
    sent = releasable(local_round(trainer, _global(cfg)), cfg)
    networks = trainer.wire_networks()
    norms = {f"{name}.{key}" for name, net in networks.items() for key in norm_keys(net)}
    batchnorms = [m for net in networks.values() for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms or not batchnorms  # fedgai_style's renderer and critic hold no BatchNorm: none to send
    assert not set(sent.params) & norms
    assert not [key for key in sent.params if NORM_NAME_PATTERN.search(key.partition(".")[2])]


# ----------------------------------------------------------------------------------------------- §3 ledgers
def test_a_charge_rereads_the_ledger_so_concurrent_jobs_lose_no_release(tmp_path):
    """Old code: two jobs holding the ledger each saved their own copy, and the second erased the first's."""
    path = tmp_path / "ledger.json"
    job_a, job_b = PrivacyLedger(path), PrivacyLedger(path)
    job_a.record(2.0, 1.0)
    job_b.record(3.0, 1.0)
    job_a.charge(2.0, 1.0, 1, DELTA, None)
    assert PrivacyLedger(path).steps == (Step(2.0, 1.0, 1), Step(3.0, 1.0, 1), Step(2.0, 1.0, 1))


def _charge_many(path: str, times: int) -> None:
    ledger = PrivacyLedger(path)
    for _ in range(times):
        ledger.charge(2.0, 1.0, 1, DELTA, None)


def test_four_processes_charging_one_ledger_lose_nothing(tmp_path):
    path = str(tmp_path / "ledger.json")
    workers = [multiprocessing.get_context("fork").Process(target=_charge_many, args=(path, 10)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert PrivacyLedger(path).steps == (Step(2.0, 1.0, 40),)


def test_record_and_client_level_spending_draw_on_one_site_budget(studio_dir, tmp_path, dp_round):
    """A record-level job and a client-level job at one site charge the policy's one ledger, whose budget
    then holds both (old code: one ledger per unit, each with the whole budget)."""
    ledger = SitePolicy().ledger_path(tmp_path / "site")
    record = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 2.0})
    open_trainer(record, studio_dir, tmp_path / "job-1", resume=False, device="cpu", ledger=ledger)
    stats = PrivacyLedger(ledger).steps
    cfg, result = dp_round
    releasable(result, cfg, StudioClientDP(cfg.privacy, ledger))
    assert PrivacyLedger(ledger).steps == (*stats, Step(client_level_noise(4.0), 1.0, 1))


# ----------------------------------------------------------------------------------------------- §2 site paths
@pytest.mark.parametrize("args", [
    "--studio studio-a=/etc",  # a folder the job chose
    "--output-root /tmp/elsewhere", "--output-root=../../x", "--data-root /", "--output x",
    "--device cpu --output-root /etc", "--device 'cpu --output-root /etc'", '--device "cpu"',
    "--device ${secret:HOME}", "--device=${secret:FEDGAI_OUTPUT_ROOT}", "--device cuda:0/../..",
    "--device cpu extra", "'--device cpu'",
])
def test_a_job_can_pass_the_studio_nothing_but_a_device(args):
    """Old code accepted --studio and a relative --output-root from the job (and any path NVFlare's whitespace
    splitting or ${secret:...} expansion made of them after the check)."""
    with pytest.raises(executor.UnsafeScriptArgs, match="may pass only '--device"):
        executor.check_script_args(args)


@pytest.mark.parametrize("args", ["", "--device cpu", "--device=cuda:1", "  --device auto "])
def test_a_device_is_all_a_job_may_choose(args):
    executor.check_script_args(args)


def test_the_studio_script_takes_no_folder_from_its_arguments():
    with pytest.raises(SystemExit):
        parse_args(["--output-root", "/etc"])
    assert parse_args(["--device", "cpu"]).device == "cpu"


def test_folders_come_from_the_sites_environment_and_outputs_are_kept_per_job(tmp_path):
    env = {"FEDGAI_DATA_ROOT": str(tmp_path / "data"), "FEDGAI_OUTPUT_ROOT": str(tmp_path / "out")}
    paths = SitePaths.from_env(env)
    assert paths.data_root == tmp_path / "data" and paths.studios == {}
    assert paths.output_dir("studio-a", "job-1") == tmp_path / "out" / "studio-a" / "job-1"
    assert paths.output_dir("studio-a", "job-2") != paths.output_dir("studio-a", "job-1")
    assert paths.output_dir("studio-a", "../../etc").parent == tmp_path / "out" / "studio-a"  # one component
    assert SitePaths.from_env({}).output_root == Path("fedgai_output")  # the site's working directory
    flat = SitePaths.from_env({**env, "FEDGAI_OUTPUT_PER_JOB": "0"})  # the site opts in (the simulator)
    assert flat.output_dir("studio-a", "job-1") == tmp_path / "out" / "studio-a"


# ----------------------------------------------------------------------------------------------- §4 globals
def test_a_global_grown_tenfold_every_round_cannot_ratchet_the_bound():
    """Old code: each round's change was within 10x of the last accepted one, so 7 rounds of 9.9x growth passed
    and the global ended at ~1e7 x its norm."""
    check, rng = GlobalCheck(), np.random.default_rng(0)
    start = {"w": rng.normal(0, 1, 1000)}
    assert check.review(start) is None
    current, step, refused = dict(start), 0.05, []
    for _ in range(7):
        step *= 9.9
        proposed = {"w": current["w"] + step * rng.normal(0, 1, 1000) / math.sqrt(1000)}
        reason = check.review(proposed)
        refused.append(reason is not None)
        current = current if reason else proposed
    assert refused[:2] == [False, False] and all(refused[2:])
    assert update_norm(current) < 20 * update_norm(start)


def test_an_honest_run_of_shrinking_changes_is_accepted():
    check = GlobalCheck()
    w = np.ones(100)
    for step in (0.5, 0.6, 0.3, 0.2, 0.25, 0.1):
        w = w + step / 10
        assert check.review({"w": w}) is None


def _ratchet(steps: int) -> list[dict[str, np.ndarray]]:
    """A start and ``steps`` globals, each change 9.9 x the last: the ratchet a hostile aggregate tries."""
    rng = np.random.default_rng(0)
    out, step = [{"w": rng.normal(0, 1, 1000)}], 0.05
    for _ in range(steps):
        step *= 9.9
        out.append({"w": out[-1]["w"] + step * rng.normal(0, 1, 1000) / math.sqrt(1000)})
    return out


def test_a_restarted_studio_keeps_its_check_of_the_global(tmp_path):
    """Old code: the check lived as long as the studio's process, so a hostile aggregate that crashed the studio
    (or a studio restarted for any reason) met a check with no reference, and the ratchet started again."""
    state = site_check_file(tmp_path, "job-1", "script")
    globals_ = _ratchet(3)
    check = GlobalCheck(state_file=state)
    assert [check.review(g) for g in globals_[:3]] == [None, None, None]
    restarted = GlobalCheck(state_file=state)  # a new process of the same studio, same job
    assert "more than the bound" in restarted.review(globals_[3])
    assert restarted.changes == check.changes and restarted.anchor == check.anchor


def test_a_global_with_other_entries_cannot_reset_the_reference():
    """Old code took a global whose keys differed from the reference as a fresh, unbounded reference: one round
    without an entry and the next round's global passed whatever its size."""
    check = GlobalCheck()
    assert check.review({"a": np.ones(4), "b": np.ones(4)}) is None
    for other in ({"a": np.ones(4)}, {"a": np.ones(4), "b": np.ones(1)}):
        assert "differ from the last global" in check.review(other)
    assert "more than the bound" in check.review({"a": np.ones(4), "b": np.full(4, 1e6)})


def test_the_checks_memory_is_in_the_sites_own_folder_per_job(tmp_path):
    policy = SitePolicy(ledger_dir="site-private")
    write_site_policy(tmp_path, policy)
    state = site_check_file(tmp_path, "../../elsewhere", "decryptor")
    assert state.parent == tmp_path / "site-private" / "global-checks"  # a job id is one file name, never a path
    assert site_check_file(tmp_path, "job-2", "script") != site_check_file(tmp_path, "job-1", "script")
    assert site_check_file(tmp_path, "job-1", "decryptor") != site_check_file(tmp_path, "job-1", "script")
    state.parent.mkdir(parents=True)
    state.write_bytes(b"not a saved check")
    with pytest.raises(GlobalCheckStateError, match="cannot read"):  # never silently a check without memory
        GlobalCheck(state_file=state).review({"w": np.zeros(3)})


def test_a_restarted_studio_keeps_its_check_of_the_decrypted_global(site_context):
    """The HE decryptor's check too: its memory is kept per job in the site's folder (old code: per process)."""
    fl_ctx, root = site_context

    def refusal(decryptor: ShapedHEModelDecryptor, params: dict) -> str | None:
        dxo = DXO(DataKind.WEIGHTS, data={k: v.astype(np.float32) for k, v in params.items()})
        return decryptor.process_dxo(dxo, dxo.to_shareable(), fl_ctx).get_meta_prop(GLOBAL_REFUSED_META_KEY)

    def started() -> ShapedHEModelDecryptor:
        decryptor = ShapedHEModelDecryptor()
        decryptor.tenseal_context = "unused: these globals arrive in plaintext, as round 0's does"
        return decryptor

    globals_ = _ratchet(3)
    first = started()
    assert [refusal(first, g) for g in globals_[:3]] == [None, None, None]
    assert "more than the bound" in refusal(started(), globals_[3])
    assert site_check_file(root, "job-1", "decryptor").is_file()


def _shifted(trainer, value: float) -> FLModel:
    return FLModel(params={k: torch.full_like(v, value) for k, v in trainer.shared_state().items()},
                   current_round=1)


def test_a_plain_studio_refuses_a_global_out_of_bounds_and_keeps_it_out_of_its_checkpoint(studio_dir, tmp_path):
    """Old code loaded whatever a plain server sent (only the HE decryptor checked) and saved it."""
    trainer = StudioTrainer(profile("test"), studio_dir, tmp_path)
    check = GlobalCheck()
    local_round(trainer, _global(trainer.cfg), check=check)  # the first global: the studio's reference
    for poisoned in (1e9, float("nan")):
        own = trainer.shared_state()
        result = local_round(trainer, _shifted(trainer, poisoned), check=check)
        save_round(trainer, 1, result.metrics)
        saved = torch.load(trainer.folder.checkpoint, weights_only=True)
        assert all(float(v.abs().max()) < 1e3 for v in saved["discriminator"].values() if v.is_floating_point())
        for key, diff in result.params.items():  # the DIFF is the studio's own round, from its own D
            torch.testing.assert_close(diff, trainer.shared_state()[key] - own[key])


# ----------------------------------------------------------------------------------------------- §2 weight files
def test_a_job_named_weight_file_is_loaded_only_if_the_site_lists_it_with_its_hash(tmp_path):
    """Old code loaded any prior, VGG or CLIP file a job named, from anywhere on the studio's disk."""
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"weights")
    cfg = profile("test").with_overrides({"model.vgg_weights": str(weights)})
    with pytest.raises(SitePolicyError, match="model.vgg_weights names .* not among the site's weight_files"):
        site_config(cfg, SitePolicy())
    listed = SitePolicy(weight_files={str(weights): file_sha256(weights)})
    assert site_config(cfg, listed).model.vgg_weights == str(weights)
    weights.write_bytes(b"swapped")  # the same path, other content
    with pytest.raises(SitePolicyError, match="whose content is not the one"):
        site_config(cfg, listed)
    tag = profile("test").with_overrides({"loss.clip_pretrained": "openai", "train.prior": "none"})
    assert site_config(tag, SitePolicy()) is not None  # an open_clip tag names no file at the site
    with pytest.raises(SitePolicyError, match="sha256"):
        SitePolicy(weight_files={str(weights): "not-a-hash"})


def test_an_earlier_versions_per_unit_ledgers_are_never_silently_replaced(tmp_path):
    folder = tmp_path / SitePolicy().ledger_dir
    PrivacyLedger(folder / "client_ledger.json").record(2.0, 1.0, 5)
    with pytest.raises(SitePolicyError, match="merge their steps"):
        SitePolicy().ledger_path(tmp_path)
    (folder / "client_ledger.json").rename(folder / "site_ledger.json")
    assert PrivacyLedger(SitePolicy().ledger_path(tmp_path)).steps == (Step(2.0, 1.0, 5),)
