"""Issue 24, end to end: a hostile job - the DP or HE job with its protecting filters removed, or bound to another
task - runs in NVFlare's simulator with a wiretap at each studio (OutboundAudit, the last result filter, keeping
every array it passes on). Nothing un-noised or unencrypted leaves: the studio applies both itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.fl_constant import FLMetaKey

from fedgai.config import profile
from fedgai.federated.he_keys import prepare_simulator_he
from fedgai.federated.jobs.allow_list import job_classes
from fedgai.federated.jobs.he_job import build_he_job, he_job_config
from fedgai.federated.jobs.job import FedgaiJob, build_job
from fedgai.federated.round import initial_global
from fedgai.federated.studio.audit import AUDIT_DIR, LOG_FILE
from fedgai.federated.studio.he_studio import PackedHEModelEncryptor
from fedgai.privacy import GaussianDPFilter
from fedgai.privacy.mechanism import update_norm

PROTECTIONS = (GaussianDPFilter, PackedHEModelEncryptor)
NUM_STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
SIGMA = 4.0


def hostile(how: str):
    """FedgaiJob.to_clients as a hostile job author would write the job: every DP and HE result filter left out
    ("removed") or bound to a task the studios never run ("other task"). The studios' class allow-list is taken
    from the shipped jobs first, as a real site's is."""
    job_classes("client")
    original = FedgaiJob.to_clients

    def to_clients(job, obj, *args, **kwargs):
        if isinstance(obj, PROTECTIONS):
            if how == "removed":
                return None
            kwargs["tasks"] = ["validate"]
        return original(job, obj, *args, **kwargs)

    return to_clients


def _client_filters(workspace: Path, site: str) -> dict[str, list[str]]:
    """The result filters the job really installed at ``site``, per task."""
    config = json.loads(next((workspace / site).rglob("config_fed_client.json")).read_text())
    return {task: [f["path"].rsplit(".", 1)[-1] for f in chain["filters"]]
            for chain in config.get("task_result_filters", []) for task in chain["tasks"]}


def _sent(workspace: Path, site: str) -> list[tuple[dict, Path]]:
    """Each message the wiretap saw leave ``site``: its record and the file of its arrays."""
    audit = workspace / site / "simulate_job" / AUDIT_DIR
    lines = [json.loads(x) for x in (audit / LOG_FILE).read_text().splitlines()]
    return [(line, audit / f"msg-{line['seq']:03d}.npz") for line in lines]


def _run(job, workspace: Path, sites: dict[str, Path]) -> None:
    assert job.simulator_run(str(workspace), clients=list(sites), threads=2) == 0


@pytest.fixture
def sites(demo_root) -> dict[str, Path]:
    folders = sorted(p for p in demo_root.iterdir() if p.is_dir())
    return {"studio-a": folders[0], "studio-b": folders[1]}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "other task"])
def test_a_dp_job_without_its_filter_still_sends_only_noised_updates(how, sites, tmp_path, monkeypatch):
    cfg = profile("test").with_overrides({"privacy.dp": "client", "privacy.noise_multiplier": SIGMA,
                                          "fed.rounds": 1})
    monkeypatch.setattr(FedgaiJob, "to_clients", hostile(how))
    job = build_job(cfg, sites, output_root=tmp_path / "studios", checkpoint_dir=str(tmp_path / "state"),
                    save_outbound_arrays=True)
    workspace = tmp_path / "nvflare"
    _run(job, workspace, sites)
    d = sum(v.size for v in initial_global(cfg).values())
    for site in sites:
        assert "GaussianDPFilter" not in _client_filters(workspace, site).get("train", [])  # the job is hostile
        sent = _sent(workspace, site)
        assert len(sent) == cfg.fed.rounds
        for line, arrays in sent:
            assert line["meta_values"]["dp_noise_multiplier"] == SIGMA and line["meta_values"][NUM_STEPS] == 1
            with np.load(arrays) as update:  # a trained DIFF has norm <= C after clipping; the noise sigma C sqrt(d)
                assert update_norm(dict(update)) > 0.5 * SIGMA * cfg.privacy.clip_norm * math.sqrt(d)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["removed", "other task"])
def test_an_he_job_without_its_encryptor_still_sends_only_ciphertexts(how, sites, tmp_path, monkeypatch):
    cfg = he_job_config(profile("test").with_overrides({"fed.rounds": 1}))
    monkeypatch.setattr(FedgaiJob, "to_clients", hostile(how))
    job = build_he_job(cfg, sites, output_root=tmp_path / "studios", checkpoint_dir=str(tmp_path / "state"),
                       save_outbound_arrays=True)
    workspace = tmp_path / "nvflare"
    prepare_simulator_he(workspace)
    _run(job, workspace, sites)
    for site in sites:
        assert "PackedHEModelEncryptor" not in _client_filters(workspace, site).get("train", [])
        sent = _sent(workspace, site)
        assert len(sent) == cfg.fed.rounds
        for line, arrays in sent:
            assert line["return_code"] == "OK" and line["data"]
            assert {entry["type"] for entry in line["data"].values()} == {"bytes"}  # he_wire's ciphertexts
            with np.load(arrays) as kept:
                assert not kept.files  # the wiretap found no plaintext array to keep
