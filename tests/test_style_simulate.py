"""fed.mode fedgai_style end to end in NVFlare's simulator under HE (issue 27 §4): three tiny studios, one round,
through `fedgai simulate`'s own path. What crossed the wire - each studio's outbound record and the HE server's
record of every contribution - holds the shared renderer body and critic trunk as ciphertexts, never a studio's
FiLM head or its AdaIN_SD statistics; each studio keeps a styled generator."""

from __future__ import annotations

import json
import shutil

import pytest
from he_records import received_records

from fedgai.config import profile
from fedgai.edge.sketcher import load_studio_model
from fedgai.federated.server.he_server import HE_OUTPUT_DIR
from fedgai.federated.simulator.simulate import check_run, server_dir, simulate
from fedgai.federated.studio.audit import AUDIT_DIR, LOG_FILE
from fedgai.layout import CHECKPOINT, WORKSPACE_NVFLARE, WORKSPACE_STUDIOS
from fedgai.models import StyledSketchGenerator

SITES = ("studio-01", "studio-02", "studio-03")


def local_to_the_studio(key: str) -> bool:
    """A FiLM layer (the studio's head) or AdaIN_SD statistics (its style): what must never cross the wire."""
    return ".film." in key or "adain." in key


@pytest.mark.slow
def test_fedgai_style_under_he_in_the_simulator_keeps_each_studios_head_and_statistics_home(demo_root, tmp_path):
    data = tmp_path / "data"
    for folder in sorted(p for p in demo_root.iterdir() if p.is_dir()):
        shutil.copytree(folder, data / folder.name)
    shutil.copytree(data / folder.name, data / "zz-third-studio")
    cfg = profile("test").with_overrides({
        "model.generator": "styled", "fed.mode": "fedgai_style", "privacy.he": True, "fed.min_clients": 3,
        "fed.rounds": 1, "train.round_steps": 2, "train.head_steps": 1, "train.max_pairs": 6})
    workspace = tmp_path / "ws"
    simulate(cfg, 3, workspace, data)

    (summary,) = check_run(workspace, 1, HE_OUTPUT_DIR)
    assert summary["mode"] == "fedgai_style" and summary["aggregated"] == 3 and not summary["dropped"]
    for site in SITES:
        model = load_studio_model(workspace / WORKSPACE_STUDIOS / site / CHECKPOINT)
        assert isinstance(model.generator, StyledSketchGenerator)
        assert any(".film." in k for k in model.generator.state_dict())  # the head stayed, with the studio

    for site in SITES:  # the wiretap at each studio: every message that left it
        sent = [json.loads(line) for line in
                (workspace / WORKSPACE_NVFLARE / site / "simulate_job" / AUDIT_DIR / LOG_FILE).read_text().splitlines()]
        keys = {k for message in sent for k in message["data"]}
        assert {k.partition(".")[0] for k in keys} == {"generator", "discriminator"}  # the body did cross
        assert not [k for k in keys if local_to_the_studio(k)], site
        assert {e["type"] for message in sent for e in message["data"].values()} == {"bytes"}  # ciphertexts
    records = received_records(server_dir(workspace), 1, list(SITES))  # what the server received
    entries = {k: e for record in records for k, e in record["entries"].items()}
    assert any(k.startswith("generator.mapping.") for k in entries)
    assert not [k for k in entries if local_to_the_studio(k)]
    assert {e["type"] for e in entries.values()} == {"CKKSVector"}
