"""Shared fixtures: the `test` profile (random encoder, 32 px) and a tiny demo studio."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgai.config import FedgaiConfig, profile


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores; one thread each keeps them predictable."""
    torch.set_num_threads(1)


@pytest.fixture
def test_cfg() -> FedgaiConfig:
    return profile("test")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """Two small demo studios (64 px), made once per session."""
    from fedgai.data import make_demo

    out = tmp_path_factory.mktemp("demo") / "studios"
    make_demo(out, studios=2, seed=0, size=64, progress=False)
    return out


@pytest.fixture(scope="session")
def studio_dir(demo_root) -> Path:
    return sorted(p for p in demo_root.iterdir() if p.is_dir())[0]
