"""One server core for plain and HE: names and folders a studio or a job sends stay where they belong, HE refuses
what it cannot honour, and the round summary says what the server did (issue 16 §1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from nvflare.apis.dxo import from_shareable
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_opt.he import decomposers
from test_federated_server import Offline, reply, summary
from test_he import (  # noqa: F401 - fixtures used by name
    _fresh_fobs,
    authenticated,
    client_encryptor,
    contexts,
    encrypted_update,
    fl_ctx,
    global_d,
    random_diffs,
    three_studio_aggregation,
    three_studio_round,
)

from fedgai.config import profile
from fedgai.federated.he_wire import decrypt_packed
from fedgai.federated.jobs.he_job import build_he_job, he_job_config
from fedgai.federated.jobs.job import build_job
from fedgai.federated.server.controller import STATE_FILE
from fedgai.federated.server.he_server import (
    HE_OUTPUT_DIR,
    RECEIVED_DIR,
    CiphertextOnlyGuard,
    DiscriminatorPersistor,
    PlaintextUpdate,
    ResumeRefused,
)
from fedgai.federated.studio.executor import StudioExecutor, UnsafeScriptArgs, installed_version
from fedgai.round_summaries import read_round_summaries
from fedgai.safe_paths import UnsafePathError


@pytest.fixture(scope="module", autouse=True)
def _he_wire(_fresh_fobs):  # noqa: F811
    """CKKS vectors through FOBS as the server's HE components register them, in a clean FOBS. nvflare's
    ``decomposers.register`` registers once per process, so its flag is cleared around this module: the next
    module's own FOBS reset and registration must work again."""
    decomposers.register.registered = False
    decomposers.register()
    yield
    decomposers.register.registered = False


# ----------------------------------------------------------------------------------------------- names from studios
def test_he_guard_records_the_authenticated_client_not_the_name_a_studio_claims(contexts, global_d,  # noqa: F811
                                                                                tmp_path):
    _, client_ctx = contexts
    guard = CiphertextOnlyGuard(he_job_config(profile("test")).to_dict())
    update = encrypted_update(client_encryptor(client_ctx), random_diffs(global_d, 1), 8, "studio-a")
    guard.process(authenticated(update, "studio-a", claimed="x/../../../escaped"), fl_ctx(run_root=tmp_path))
    received = tmp_path / "job" / HE_OUTPUT_DIR / RECEIVED_DIR
    assert json.loads((received / "round-000-studio-a.json").read_text())["site"] == "studio-a"
    assert not list(tmp_path.rglob("*escaped*"))

    odd = encrypted_update(client_encryptor(client_ctx), random_diffs(global_d, 2), 8, "studio-b")
    guard.process(authenticated(odd, "../../evil"), fl_ctx(run_root=tmp_path))  # even a provisioned odd name
    assert all(p.parent == received for p in tmp_path.rglob("*.json"))

    anonymous = encrypted_update(client_encryptor(client_ctx), random_diffs(global_d, 3), 8, "studio-c")
    anonymous.set_header("fl_client", None)
    with pytest.raises(PlaintextUpdate, match="authenticated"):
        guard.process(anonymous, fl_ctx(run_root=tmp_path))


# ----------------------------------------------------------------------------------------------- folders from jobs
def small_updates(rnd: int, global_params: dict) -> list:
    return [reply("s1", {k: np.full_like(v, 0.01) for k, v in global_params.items()})]


def test_a_job_named_dot_dot_keeps_its_resume_state_inside_the_state_folder(test_cfg, tmp_path):
    cfg = test_cfg.with_overrides({"fed.rounds": 1})
    ctrl = Offline(cfg, tmp_path / "run", small_updates, ("s1",), checkpoint_dir="state", workspace=tmp_path / "ws",
                   job_name="..")
    ctrl.run()
    assert not ctrl.panics
    assert not (tmp_path / "ws" / STATE_FILE).exists()
    [saved] = (tmp_path / "ws" / "state").rglob(STATE_FILE)
    assert saved.parent.parent == tmp_path / "ws" / "state"


@pytest.mark.parametrize("checkpoint_dir", ["/tmp/anywhere", "../outside"])
def test_a_job_cannot_choose_where_the_server_writes(test_cfg, tmp_path, checkpoint_dir):
    ctrl = Offline(test_cfg, tmp_path / "run", lambda rnd, g: [], ("s1",), checkpoint_dir=checkpoint_dir,
                   workspace=tmp_path / "ws")
    ctrl.run()
    assert ctrl.sent == [] and "checkpoint_dir" in ctrl.panics[0]

    persistor = DiscriminatorPersistor(he_job_config(test_cfg).to_dict(), checkpoint_dir=checkpoint_dir)
    with pytest.raises(ResumeRefused, match="checkpoint_dir"):
        persistor.load_model(fl_ctx(run_root=tmp_path, persistor=persistor))


def test_machine_folders_run_in_the_simulator_but_never_go_into_an_exported_job(test_cfg, tmp_path):
    job = build_job(test_cfg, output_root=tmp_path / "studios", checkpoint_dir=str(tmp_path / "state"))
    assert set(job.site_env.values()) == {str(tmp_path / "studios"), str(tmp_path / "state"), "0"}  # + flat outputs
    with pytest.raises(ValueError, match="only a simulator run may"):
        job.export_job(str(tmp_path / "export"))
    with pytest.raises(UnsafePathError, match="checkpoint_dir"):
        build_job(test_cfg, checkpoint_dir="../outside")
    version = installed_version() or "0"
    for args in ("--output-root /etc", "--output=/etc", "--studio a=/d --output-root ../../x"):
        with pytest.raises(UnsafeScriptArgs, match="may pass only '--device"):
            StudioExecutor(fedgai_version=version, task_script_args=args)
    StudioExecutor(fedgai_version=version, task_script_args="--device cpu")


# ----------------------------------------------------------------------------------------------- HE limits
def test_he_job_refuses_settings_it_cannot_honour():
    with pytest.raises(ValueError, match=r"fed.aggregator = 'trimmed_mean'.*cannot read encrypted updates"):
        build_he_job(he_job_config(profile("test").with_overrides({"fed.aggregator": "trimmed_mean",
                                                                     "fed.min_clients": 3})))
    with pytest.raises(ValueError, match=r"fed.max_update_norm = 1000.*fed.norm_bound_factor = 3"):
        build_he_job(profile("test"))
    build_he_job(he_job_config(profile("test")))


# ----------------------------------------------------------------------------------------------- honest summaries
def test_he_summary_states_what_was_checked_and_caps_weights_at_the_median(contexts, global_d,  # noqa: F811
                                                                          tmp_path):
    """A studio claiming 10x the pairs of the others counts as the median studio (max_weight_factor 1), the
    aggregate is the equal mean, and the summary says so - and says which checks HE could not run."""
    _, client_ctx = contexts
    encryptor, config, persistor, ctx, guard, aggregator, diffs = three_studio_aggregation(client_ctx, global_d,
                                                                                          tmp_path)
    counts = {"studio-a": 8, "studio-b": 8, "studio-c": 80}
    for site, diff in diffs.items():
        assert aggregator.accept(guard.process(encrypted_update(encryptor, diff, counts[site], site), ctx), ctx)
    aggregated = from_shareable(aggregator.aggregate(ctx)).data
    persistor.handle_event(AppEventType.ROUND_DONE, ctx)

    for key, value in aggregated.items():
        got = decrypt_packed(client_ctx, value.serialize(), global_d[key].size)
        np.testing.assert_allclose(got, sum(d[key] for d in diffs.values()).ravel() / 3, atol=1e-5)
    [result] = read_round_summaries(tmp_path / "job" / HE_OUTPUT_DIR, 1)
    assert result["he"] and result["aggregator"] == "fedavg" and result["norm_clip"] is None
    assert any("update norm" in item for item in result["not_checked"])
    assert not any("norm" in item for item in result["checks"])
    capped = result["contributions"]["studio-c"]
    assert (capped["num_samples"], capped["weight"]) == (80, 8) and "median" in capped["weight_note"]


def test_plain_summary_states_the_checks_it_ran(test_cfg, tmp_path):
    ctrl = Offline(test_cfg.with_overrides({"fed.rounds": 1}), tmp_path / "run", small_updates, ("s1",))
    ctrl.run()
    result = summary(tmp_path / "run")
    assert not result["he"] and result["not_checked"] == []
    assert "update norm <= 1000" in result["checks"] and result["norm_clip"] == "3 x the round's median norm"
