"""Issue 24 §2: a prior, "auto" included, is loaded at a site with a policy only with the sha256 the site pinned in
its weight_files, checked on the very bytes that are loaded: the cache cannot be poisoned by whichever job or user
writes it first, and a file swapped after the job was accepted is refused where it is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fedgai.prior as prior
from fedgai.config import profile
from fedgai.federated.studio.client import site_config
from fedgai.models import build_discriminator
from fedgai.privacy.policy import SitePolicy, file_sha256, write_site_policy


@pytest.fixture
def site_here(tmp_path, monkeypatch) -> Path:
    """A studio's workspace root, the working directory NVFlare runs the studio in (its policy in local/)."""
    root = tmp_path / "studio-a"
    (root / "local").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def _write_prior(cfg, path: Path, seed: int) -> Path:
    """A prior of ``cfg``'s architecture (its format and key, a seeded D) as a build or another writer leaves it."""
    torch.manual_seed(seed)
    state = {"format": prior.PRIOR_FORMAT, "key": prior.prior_key(cfg, "random"), "generator": {},
             "discriminator": build_discriminator(cfg).state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _load(cfg) -> Path | None:
    return prior.load_prior(cfg, "random", None, build_discriminator(cfg))


def test_the_auto_prior_is_loaded_only_with_the_hash_the_site_pinned(site_here, tmp_path, monkeypatch):
    """Old code: train.prior = "auto" loaded whatever file of that name the cache held, i.e. what the first job or
    user to write it put there, with no hash the site had pinned."""
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "cache"))
    cfg = profile("test").with_overrides({"train.prior": "auto"})
    cached = _write_prior(cfg, prior.prior_path(cfg, "random"), seed=0)
    write_site_policy(site_here, SitePolicy())
    with pytest.raises(prior.PriorError, match="train.prior = auto names .* not among the site's weight_files"):
        _load(cfg)

    write_site_policy(site_here, SitePolicy(weight_files={str(cached): file_sha256(cached)}))  # the site pins it
    assert _load(cfg) == cached
    _write_prior(cfg, cached, seed=1)  # another writer replaces the cached prior
    with pytest.raises(prior.PriorError, match="whose content is not the one the site's weight_files allows"):
        _load(cfg)


def test_a_named_prior_swapped_after_the_job_was_checked_is_refused_where_it_is_loaded(site_here, tmp_path):
    """The hash is checked on the bytes that are loaded, not only when the job is accepted (old code: a file
    replaced between site_config and the trainer's load was loaded)."""
    named = _write_prior(profile("test"), tmp_path / "priors" / "public.pt", seed=0)
    cfg = profile("test").with_overrides({"train.prior": str(named)})
    policy = SitePolicy(weight_files={str(named): file_sha256(named)})
    write_site_policy(site_here, policy)
    assert site_config(cfg, policy).train.prior == str(named)
    _write_prior(cfg, named, seed=1)
    with pytest.raises(prior.PriorError, match="train.prior names .* whose content is not the one"):
        _load(cfg)


def test_without_a_policy_a_prior_loads_as_before(site_here, tmp_path, monkeypatch):
    monkeypatch.setenv(prior.ENV_DIR, str(tmp_path / "cache"))
    cfg = profile("test").with_overrides({"train.prior": "auto"})
    cached = _write_prior(cfg, prior.prior_path(cfg, "random"), seed=0)
    assert _load(cfg) == cached
