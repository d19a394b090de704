"""Shared fixtures: the `test` profile (random encoder, 32 px) and a tiny demo studio."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fedgai.config import FedgaiConfig, profile

SITE = "studio-a"
# Modules that log an NVFlare admin in from this process (Session API against a provisioned system). They run
# last: NVFlare keeps process-wide state (class-level caches such as ConfigService, CommConfigurator, the cell
# registry), and when these modules ran first, later in-process simulator tests failed (2026-11-26). Run last,
# the whole suite passes in one process (2026-12-03), so `make test` needs no second pytest process.
ADMIN_LOGIN_MODULES = ("test_byoc_refused.py", "test_provisioning.py")


def pytest_collection_modifyitems(config, items):
    """The admin-login modules after everything else; every other test keeps its order."""
    items.sort(key=lambda item: item.path.name in ADMIN_LOGIN_MODULES)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores; one thread each keeps them predictable."""
    torch.set_num_threads(1)


@pytest.fixture
def fresh_clip_checks():
    """losses' once-per-process CLIP decisions (hub reachable, checkpoint found, model loaded) forgotten before
    and after the test, so that it sees its own environment and leaves none behind."""
    from fedgai import losses

    caches = (losses.hub_reachable, losses.clip_checkpoint, losses._clip_visual)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


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


class _SiteEngine:
    """What a studio-side filter needs from the client engine: the site workspace, somewhere to fire events."""

    def __init__(self, workspace) -> None:
        self._workspace = workspace

    def get_workspace(self):
        return self._workspace

    def fire_event(self, event_type: str, fl_ctx) -> None:
        pass


@pytest.fixture
def site_context(tmp_path):
    """An FLContext as NVFlare's client runner builds it for studio SITE (engine -> a real NVFlare Workspace with
    startup/ and local/, site identity, job id "job-1"), and the site's workspace root."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.workspace import Workspace

    root = tmp_path / SITE
    for folder in ("startup", "local"):
        (root / folder).mkdir(parents=True)
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, _SiteEngine(Workspace(str(root), SITE)), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, SITE, private=False, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=False)
    return fl_ctx, root


def headless_chromium(*flags: str):
    """Headless Chromium via Selenium (a generator for module fixtures: yields the session, quits after); the
    test is skipped only where Chromium or its driver is not installed (.ci/run installs both)."""
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *flags):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()
