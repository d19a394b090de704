"""The in-process federation (federated/simulator/inprocess.py) runs the product's round: its plain server step on
the studios' DIFFs, the HE job's packed sum under the product's CKKS parameters, the studio's own client-level DP
release, and nothing sent in the local mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from fedgai.config import profile
from fedgai.federated.aggregation import capped_weights, update_norm
from fedgai.federated.he_keys import HE_PARAMS
from fedgai.federated.round import initial_global, server_step
from fedgai.federated.server.validation import update_norm_floor
from fedgai.federated.simulator import inprocess
from fedgai.privacy import LEDGER_FILE, client_level


@pytest.fixture(scope="module")
def studios(demo_root) -> list[Path]:
    """conftest's two tiny demo studios (trained at the test profile's 32 px)."""
    return sorted(p for p in demo_root.iterdir() if (p / "photos").is_dir())


@pytest.fixture
def updates(monkeypatch) -> list[tuple[str, dict | None, dict]]:
    """Every round.studio_update the driver makes: (studio, the baseline it got, the DIFF it trained)."""
    seen = []

    def spy(trainer, baseline, tag=""):
        update = real(trainer, baseline, tag)
        seen.append((trainer.studio.name, baseline, {k: v.numpy().copy() for k, v in update.diff.items()}))
        return update

    real = inprocess.studio_update
    monkeypatch.setattr(inprocess, "studio_update", spy)
    return seen


def one_round(**overrides):
    return profile("test").with_overrides({"fed.rounds": 1, "train.max_pairs": 6, **overrides})


def test_a_plain_round_is_the_server_step_of_the_studios_diffs(studios, updates, tmp_path):
    cfg = one_round()
    run = inprocess.run_federation(cfg, studios, tmp_path)
    start = initial_global(cfg)
    assert all(set(baseline) == set(start) and all(np.array_equal(baseline[k].numpy(), start[k]) for k in start)
               for _, baseline, _ in updates)  # every studio starts from the server's initial global
    diffs = {site: diff for site, _, diff in updates}
    counts = {site: trainer.num_samples for site, trainer in run.trainers.items()}
    expected = server_step(start, diffs, counts, cfg, {}, update_norm_floor(cfg, start)).params
    assert set(run.global_params) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(run.global_params[key], value)
    for trainer in run.trainers.values():  # each studio loaded the new global
        loaded = trainer.shared_state()
        assert all(np.array_equal(loaded[k].numpy(), expected[k]) for k in expected)
    sent = sum(v.nbytes for diff in diffs.values() for v in diff.values())
    assert run.bytes_up_per_studio_round == sent / 2
    assert len(run.rounds) == 1 and set(run.rounds[0]) == set(counts) and run.dropped == [{}]
    run.close()


def test_under_he_the_global_is_the_weighted_mean_summed_under_the_products_ckks_parameters(
        studios, updates, tmp_path, monkeypatch):
    from fedgai.federated import he_keys

    made = []

    def contexts(params=HE_PARAMS):
        made.append(real(params))
        return made[-1]

    real = he_keys.make_contexts
    monkeypatch.setattr(he_keys, "make_contexts", contexts)
    cfg = one_round(**{"privacy.he": True})
    run = inprocess.run_federation(cfg, studios, tmp_path)
    assert run.cfg.fed.norm_bound_factor is None and run.cfg.fed.max_update_norm is None  # the HE job's config
    server = ts.context_from(made[0][0])
    parms = server.seal_context().data.key_context_data().parms()
    assert parms.poly_modulus_degree() == 4096
    assert [m.bit_count() for m in parms.coeff_modulus()] == [50, 40, 19]
    assert not server.has_secret_key()

    start = initial_global(cfg)
    diffs = {site: diff for site, _, diff in updates}
    counts = {site: trainer.num_samples for site, trainer in run.trainers.items()}
    weights = {site: w.value for site, w in capped_weights(counts, cfg.fed, counts).items()}
    total = sum(weights.values())
    for key, value in start.items():
        mean = sum(weights[site] * diffs[site][key] for site in diffs) / total
        np.testing.assert_allclose(run.global_params[key], value + mean, rtol=0, atol=1e-5)
        assert run.global_params[key].dtype == value.dtype and run.global_params[key].shape == value.shape
    plain = sum(v.nbytes for v in start.values())
    assert 0 < run.bytes_up_per_studio_round != plain  # ciphertext bytes, not the plaintext's
    run.close()


def test_under_client_dp_each_studio_sends_its_update_clipped_and_noised(studios, updates, tmp_path, monkeypatch):
    released = []

    def spy(update, clip_norm, noise_multiplier, rng=None):
        out = real(update, clip_norm, noise_multiplier, rng)
        released.append((update, out[0], out[1]))
        return out

    real = client_level.clip_and_noise
    monkeypatch.setattr(client_level, "clip_and_noise", spy)
    clip = 1e-3  # below any trained DIFF's norm: every update is clipped
    cfg = one_round(**{"privacy.dp": "client", "privacy.clip_norm": clip, "privacy.noise_multiplier": 1.0})
    run = inprocess.run_federation(cfg, studios, tmp_path)
    assert len(released) == 2
    for (site, _, diff), (sent_in, noised, info) in zip(updates, released, strict=True):
        assert all(np.array_equal(sent_in[k], diff[k]) for k in diff)  # the DIFF the studio trained, and nothing else
        assert info["clip_factor"] == pytest.approx(min(1.0, clip / update_norm(diff)))
        assert update_norm({k: v * info["clip_factor"] for k, v in diff.items()}) <= clip * (1 + 1e-6)
        assert not any(np.allclose(noised[k], diff[k] * info["clip_factor"]) for k in diff if diff[k].size > 8)
        assert (tmp_path / site / LEDGER_FILE).is_file()  # the round was charged to the studio's ledger
    start = initial_global(cfg)
    expected = server_step(start, {site: out for (site, _, _), (_, out, _) in zip(updates, released, strict=True)},
                           None, cfg, {}, update_norm_floor(cfg, start)).params  # equal weights under DP
    for key, value in expected.items():
        np.testing.assert_array_equal(run.global_params[key], value)
    run.close()


def test_the_local_mode_sends_nothing(studios, updates, tmp_path):
    run = inprocess.run_federation(one_round(**{"fed.mode": "local"}), studios, tmp_path)
    assert [baseline for _, baseline, _ in updates] == [None, None]
    assert run.bytes_up_per_studio_round == 0 and run.global_params == {}
    assert run.took_shared_stages == {s.name: [] for s in studios}
    assert len(run.rounds) == 1
    run.close()


@pytest.mark.parametrize("weighting", ["samples", "uniform", "auto"])
def test_a_studio_weighs_its_update_by_its_pair_count_or_one_under_uniform_weighting(studios, tmp_path, weighting):
    import torch
    from nvflare.app_common.abstract.fl_model import FLMetaKey, FLModel

    from fedgai.federated.studio.client import local_round
    from fedgai.trainer import StudioTrainer

    cfg = one_round(**{"fed.weighting": weighting, "train.epochs": 1})
    trainer = StudioTrainer(cfg, studios[0], tmp_path / "run")
    expected = 1 if weighting == "uniform" else trainer.num_samples  # auto: the paper's mode weighs by pairs
    assert trainer.num_samples > 1
    received = FLModel(params={k: torch.from_numpy(v) for k, v in initial_global(cfg).items()}, current_round=0)
    sent = local_round(trainer, received, tmp_path / "ledger.json")
    assert sent.meta[FLMetaKey.NUM_STEPS_CURRENT_ROUND] == expected  # what crosses the wire
    studio = inprocess.Studio(trainer, None, tmp_path / "ledger.json", None)
    assert studio.weight() == expected  # what the in-process driver weighs it by
    trainer.close()


def test_the_styled_modes_weigh_every_studio_the_same_unless_told_otherwise():
    from fedgai.federated.round import aggregation_weight

    for mode in ("fedgai_style", "fedgai_style_code"):
        cfg = profile("test").with_overrides({"model.generator": "styled", "model.image_size": 64, "fed.mode": mode,
                                              "privacy.he": True, "fed.min_clients": 3})
        assert aggregation_weight(cfg, 150) == 1
        assert aggregation_weight(cfg.with_overrides({"fed.weighting": "samples"}), 150) == 150
    assert aggregation_weight(profile("test"), 150) == 150
