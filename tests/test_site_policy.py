"""The site decides its own privacy (issue 16, section 3): the studio's policy file, the release gate, the
epsilon a record-level studio sends, and the studio side of resume."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import UnsafeComponentError
from nvflare.app_common.widgets.component_path_authorizer import ComponentPathAuthorizer

from fedgai.config import PrivacyConfig, profile
from fedgai.federated.jobs.allow_list import SIDES, allow_fedgai, config_classes, job_classes
from fedgai.federated.jobs.kits import harden_kit
from fedgai.federated.studio.audit import AUDIT_DIR, LOG_FILE, OutboundAudit
from fedgai.federated.studio.client import StudioResumeRefused, open_trainer, resume_owner, site_config
from fedgai.privacy import GaussianDPFilter, PrivacyBudgetExceeded, PrivacyLedger, Step, compute_epsilon
from fedgai.privacy.accountant import reported_epsilon
from fedgai.privacy.policy import (
    SitePolicy,
    SitePolicyError,
    load_site_policy,
    policy_path,
    write_site_policy,
)
from fedgai.privacy.record import record_level_steps
from fedgai.wire import FINGERPRINT_META_KEY

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
DELTA = 1e-5
STUDIO = "studio-a"
CLIENT = {"privacy.dp": "client", "privacy.noise_multiplier": 2.0}
POLICY = SitePolicy(min_dp="client", min_noise_multiplier=2.0, max_clip_norm=1.0, max_delta=DELTA,
                    epsilon_budget=8.0)


@pytest.fixture
def site(site_context) -> tuple[FLContext, Path]:
    """A studio's FLContext (engine -> real NVFlare workspace, identity, job id) and its workspace root."""
    return site_context


def _result(meta: dict | None = None):
    data = {"w": np.full(8, 0.1, dtype=np.float32)}
    return DXO(DataKind.WEIGHT_DIFF, data=data, meta=meta or {NUM_STEPS: 24}).to_shareable()


# ----------------------------------------------------------------------------------------------- the policy
@pytest.mark.parametrize(("job", "reason"), [
    ({"privacy.dp": "none"}, "privacy.dp = 'none' is weaker than the site's minimum 'client'"),
    ({"privacy.dp": "record", "privacy.noise_multiplier": 3.0}, "'record' is weaker"),
    ({**CLIENT, "privacy.noise_multiplier": 1.0}, "privacy.noise_multiplier 1.0 < the site's minimum 2.0"),
    ({**CLIENT, "privacy.clip_norm": 5.0}, "privacy.clip_norm 5.0 > the site's maximum 1.0"),
    ({**CLIENT, "privacy.delta": 1e-3}, "privacy.delta 0.001 > the site's maximum 1e-05"),
    ({**CLIENT, "privacy.target_epsilon": 20.0}, "privacy.target_epsilon 20.0 > the site's budget 8.0"),
])
def test_a_job_asking_for_less_than_the_sites_policy_is_refused_with_the_reason(job, reason, tmp_path):
    write_site_policy(tmp_path, POLICY)
    with pytest.raises(SitePolicyError, match=re.escape(reason)):
        site_config(profile("test").with_overrides(job), load_site_policy(tmp_path))


def test_a_job_may_ask_for_more_and_runs_under_the_sites_budget_without_its_own():
    more = profile("test").with_overrides({**CLIENT, "privacy.noise_multiplier": 5.0, "privacy.clip_norm": 0.5,
                                           "privacy.target_epsilon": 3.0})
    assert site_config(more, POLICY).privacy == more.privacy
    assert site_config(profile("test").with_overrides(CLIENT), POLICY).privacy.target_epsilon == 8.0
    # record-level DP gets the site's target too: a job cannot switch the budget off
    lenient = SitePolicy(min_dp="record", epsilon_budget=6.0)
    record = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 2.0})
    assert site_config(record, lenient).privacy.target_epsilon == 6.0


def test_a_site_without_a_policy_file_runs_the_job_as_stated(tmp_path):
    cfg = profile("test")
    assert load_site_policy(tmp_path) is None and site_config(cfg, None) is cfg


@pytest.mark.parametrize("text", [
    "{", '{"format": "other"}', '{"format": "fedgai-site-privacy/1", "min_dp": "strong"}',
    '{"format": "fedgai-site-privacy/1", "epsilon": 1.0}', '{"format": "fedgai-site-privacy/1", "ledger_dir": "../x"}',
    '{"format": "fedgai-site-privacy/1", "epsilon_budget": "inf"}',
])
def test_a_broken_policy_stops_jobs_instead_of_counting_as_none(text, tmp_path):
    policy_path(tmp_path).parent.mkdir(parents=True)
    policy_path(tmp_path).write_text(text)
    with pytest.raises(SitePolicyError):
        load_site_policy(tmp_path)


def test_the_dp_filter_refuses_settings_below_the_sites_policy(site):
    fl_ctx, root = site
    write_site_policy(root, POLICY)
    with pytest.raises(SitePolicyError, match="noise_multiplier 1.0 < the site's minimum 2.0"):
        GaussianDPFilter(clip_norm=1.0, noise_multiplier=1.0, delta=DELTA).process(_result(), fl_ctx)
    assert not (root / POLICY.ledger_dir).exists()


def test_every_job_at_a_site_charges_the_sites_one_ledger(site, tmp_path):
    """Today a job names its ledger file, so a new job could start a fresh budget on the same data."""
    fl_ctx, root = site
    write_site_policy(root, POLICY)
    for ledger_file in ("job-a.json", "job-b.json", str(tmp_path / "elsewhere.json")):
        GaussianDPFilter(clip_norm=1.0, noise_multiplier=4.0, delta=DELTA, ledger_file=ledger_file).process(
            _result(), fl_ctx)
    assert PrivacyLedger(POLICY.ledger_path(root)).steps == (Step(2.0, 1.0, 3),)
    assert not any(p.exists() for p in (root / "job-a.json", root / "job-b.json", tmp_path / "elsewhere.json"))


def test_the_sites_budget_stops_a_job_that_sets_no_target(site):
    fl_ctx, root = site
    one_round = compute_epsilon([Step(1.0, 1.0, 1)], DELTA)  # sigma 2 over sensitivity 2C
    write_site_policy(root, SitePolicy(min_dp="client", min_noise_multiplier=2.0, epsilon_budget=one_round + 0.1))
    dp_filter = GaussianDPFilter(clip_norm=1.0, noise_multiplier=2.0, delta=DELTA)
    dp_filter.process(_result(), fl_ctx)
    with pytest.raises(PrivacyBudgetExceeded):
        dp_filter.process(_result(), fl_ctx)


def test_record_level_dp_charges_the_sites_ledger_across_jobs(studio_dir, tmp_path):
    cfg = profile("test").with_overrides({"privacy.dp": "record", "privacy.noise_multiplier": 2.0})
    ledger = tmp_path / "site" / "fedgai_privacy" / "record_ledger.json"
    for job in ("job-1", "job-2"):  # each releases the sketch statistics once
        trainer = open_trainer(cfg, studio_dir, tmp_path / job, resume=False, device="cpu", ledger=ledger)
        assert trainer.record_dp.ledger.path == ledger
    stats = Step(cfg.privacy.stats_noise_multiplier, 1.0, 2)
    assert PrivacyLedger(ledger).steps == (stats,)


# ----------------------------------------------------------------------------------------------- the release gate
def _sent(fl_ctx: FLContext, root: Path, meta: dict) -> dict:
    out = from_shareable(OutboundAudit().process(_result(meta), fl_ctx))
    line = json.loads((root / "job-1" / AUDIT_DIR / LOG_FILE).read_text().splitlines()[-1])
    assert line["meta_values"] == {k: v for k, v in out.meta.items() if not isinstance(v, dict)}
    return out.meta


def test_the_last_filter_releases_only_listed_meta(site):
    fl_ctx, root = site
    metrics = {"loss_g": 1.0}
    meta = {NUM_STEPS: 24, MetaKey.INITIAL_METRICS: metrics, FINGERPRINT_META_KEY: "fp", "studio_notes": "secret",
            "num_pairs": 24}
    assert _sent(fl_ctx, root, meta) == {NUM_STEPS: 24, MetaKey.INITIAL_METRICS: metrics, FINGERPRINT_META_KEY: "fp"}


def test_under_dp_the_last_filter_sends_weight_one_and_no_metrics(site):
    fl_ctx, root = site
    meta = {NUM_STEPS: 24, MetaKey.INITIAL_METRICS: {"loss_g": 1.0}, "dp_epsilon": 2.0, "dp_delta": DELTA}
    assert _sent(fl_ctx, root, meta) == {NUM_STEPS: 1, "dp_epsilon": 2.0, "dp_delta": DELTA}
    # a job that claims no DP at a site whose policy demands it: still no count and no metrics
    write_site_policy(root, POLICY)
    assert _sent(fl_ctx, root, {NUM_STEPS: 24, MetaKey.INITIAL_METRICS: {"loss_g": 1.0}}) == {NUM_STEPS: 1}


def test_the_class_allow_lists_hold_exactly_the_shipped_jobs_classes(tmp_path):
    """Today every kit allows NVFlare's whole default list plus any class under "fedgai."."""
    authorizer = ComponentPathAuthorizer()
    for side, name in SIDES.items():
        resources = tmp_path / f"{side}.json"
        resources.write_text(json.dumps(allow_fedgai({"format_version": 2}, [side])))
        workspace = SimpleNamespace(get_resources_file_path=lambda path=resources: str(path))
        for job in (REPO / "jobs").iterdir():
            for path in config_classes(json.loads((job / "app" / "config" / name).read_text())):
                authorizer.authorize_component_config({"path": path, "args": {}}, workspace=workspace)
        unused = ["nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",  # NVFlare's default list
                  "nvflare.app_common.workflows.fedavg.FedAvg", "fedgai.federated.jobs.kits.KitError"]
        for path in unused:
            with pytest.raises(UnsafeComponentError, match="not in allow_list"):
                authorizer.authorize_component_config({"path": path, "args": {}}, workspace=workspace)
    assert "fedgai.federated.studio.executor.StudioExecutor" not in job_classes("server")
    assert "fedgai.federated.server.controller.FilteredFedAvg" not in job_classes("client")


def _client_kit(folder: Path) -> Path:
    (folder / "startup").mkdir(parents=True)
    (folder / "startup" / "fed_client.json").write_text("{}")
    (folder / "local").mkdir()
    default = {"format_version": 2, "allow_log_streaming": True, "class_allow_list": ["nvflare."]}
    (folder / "local" / "resources.json.default").write_text(json.dumps(default))
    return folder


def test_a_hardened_studio_kit_streams_no_logs_and_carries_its_editable_policy(tmp_path):
    kit = harden_kit(_client_kit(tmp_path / STUDIO))
    resources = json.loads((kit / "local" / "resources.json").read_text())
    assert resources["allow_log_streaming"] is False
    assert resources["class_allow_list"] == sorted(job_classes("client"))
    assert resources["class_list_enforcement_mode"] == "enforce"
    assert load_site_policy(kit) == SitePolicy()
    write_site_policy(kit, POLICY)  # the studio's own edit survives hardening again
    harden_kit(kit)
    assert load_site_policy(kit) == POLICY


def test_the_provisioned_studios_do_not_stream_logs():
    project = yaml.safe_load((REPO / "provisioning" / "project.yml").read_text())
    studios = [p for p in project["participants"] if p["type"] == "client"]
    assert studios and all(p.get("allow_log_streaming") is False for p in studios)


# ----------------------------------------------------------------------------------------------- what epsilon says
def test_the_epsilon_a_record_level_studio_sends_does_not_reveal_its_pair_count():
    """Exact epsilon depends on ceil(N/B): 40, 41-48 and 49-56 pairs are told apart today."""
    cfg = PrivacyConfig(dp="record", noise_multiplier=2.0)
    exact = {n: compute_epsilon(record_level_steps(cfg, n, 8, 15), DELTA) for n in (40, 48, 56, 100)}
    assert len(set(exact.values())) == 4
    sent = {reported_epsilon(e) for e in exact.values()}
    assert sent == {8.0} and all(e <= 8.0 for e in exact.values())  # one value, still an upper bound


# ----------------------------------------------------------------------------------------------- resume
def test_a_studio_resumes_only_its_own_jobs_checkpoint(studio_dir, tmp_path, test_cfg):
    """Keyed as the server keys its state: job id and config hash (fed.resume = same_job), or the config hash
    alone (same_config, the default; the server also matches name and submitter). Today any job resumes it."""
    strict = test_cfg.with_overrides({"fed.resume": "same_job"})
    mine = resume_owner("job-1", strict.to_dict())
    first = open_trainer(strict, studio_dir, tmp_path, resume=False, device="cpu", owner=mine)
    first.epoch = 3
    first.save_checkpoint()
    with pytest.raises(StudioResumeRefused, match="written by job 'job-1'.*this is job 'job-2'"):
        open_trainer(strict, studio_dir, tmp_path, resume=True, device="cpu",
                     owner=resume_owner("job-2", strict.to_dict()))
    changed = strict.with_overrides({"train.lr_d": 1e-3})
    with pytest.raises(StudioResumeRefused):
        open_trainer(changed, studio_dir, tmp_path, resume=True, device="cpu",
                     owner=resume_owner("job-1", changed.to_dict()))
    assert open_trainer(strict, studio_dir, tmp_path, resume=True, device="cpu", owner=mine).epoch == 3

    # same_config: another job with the very same config continues, another config does not
    first = open_trainer(test_cfg, studio_dir, tmp_path, resume=False, device="cpu",
                         owner=resume_owner("job-1", test_cfg.to_dict()))
    first.save_checkpoint()
    again = open_trainer(test_cfg, studio_dir, tmp_path, resume=True, device="cpu",
                         owner=resume_owner("job-2", test_cfg.to_dict()))
    assert again.epoch == first.epoch
    changed = test_cfg.with_overrides({"train.lr_d": 1e-3})
    with pytest.raises(StudioResumeRefused):
        open_trainer(changed, studio_dir, tmp_path, resume=True, device="cpu",
                     owner=resume_owner("job-3", changed.to_dict()))


# ----------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_in_the_simulator_a_studio_with_a_policy_refuses_a_job_without_dp(demo_root, tmp_path):
    """The simulator copies ``<workspace>/local`` to every site: both studios carry the policy, the plain job
    stops at them before any pair is read, with the reason in their logs."""
    from fedgai.federated.simulator.simulate import SimulationError, simulate

    write_site_policy(tmp_path / "nvflare", POLICY)
    with pytest.raises(SimulationError):
        simulate(profile("test").with_overrides({"fed.rounds": 1}), 2, tmp_path, demo_root)
    for site in ("studio-01", "studio-02"):
        log = (tmp_path / "nvflare" / site / "log.txt").read_text()
        assert "this studio's privacy policy refuses the job: the job's privacy.dp = 'none' is weaker" in log
        assert not (tmp_path / "studios" / site / "checkpoints").exists()
