"""A studio's own privacy policy: what any job must at least do with the studio's data, and where its ledger is.

The policy is a file in the studio's kit, ``<site workspace>/local/fedgai_privacy.json``: provisioning writes
it (``fedgai.federated.jobs.kits``), the studio edits it, no job can change it. (``local/privacy.json`` is NVFlare's
own file of privacy scopes, so the policy has its own name.) Every fedgai component that runs at the site
reads it: the studio trainer refuses a job that asks for less before it touches a pair (its DP settings, its
fed.mode, the weight files it names), the loaders check the bytes they load against the pinned hashes (the
prior, "auto" included) and ask no hub for weights unless the site allows it, the client-level DP filter checks
its own settings against it, and both charge the one ledger named here, in the site's workspace, so every job
on the studio's data draws on one budget. A job may always ask for more (more noise, a smaller clip norm, a
smaller target epsilon).

A site without the file (the simulator, POC) runs a job's privacy settings as the job states them; only a mode
that would send generator weights unprotected is refused there too (``studio_config``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgai.config import DP_MODES, RECORD_TRAINABLE, FedgaiConfig, PrivacyConfig
from fedgai.modes import D_ONLY_MODES, MODES, protection_problem

POLICY_FILE = "fedgai_privacy.json"
POLICY_FORMAT = "fedgai-site-privacy/1"
# Client-level DP implies record-level DP at the same epsilon (changing one pair changes the studio's data),
# so it is the stronger mode.
DP_STRENGTH = {"none": 0, "record": 1, "client": 2}
# One ledger for record- and client-level releases: both bound what one pair's presence changes (a client-level
# round is a Gaussian release of sensitivity 2C for any change of the studio's data, one pair included), so
# their composition in one accountant is an honest epsilon for the studio's pairs, and one budget caps both.
LEDGER_FILE = "site_ledger.json"
LEGACY_LEDGER_FILES = ("client_ledger.json", "record_ledger.json")  # one per unit, before issue 24
SHA256 = re.compile(r"[0-9a-f]{64}")


class SitePolicyError(RuntimeError):
    """A job asks for less privacy than the site's policy, or the policy file cannot be trusted."""


@dataclass(frozen=True)
class SitePolicy:
    """The least a job must do with this studio's data (``min_dp``, and when it uses DP: sigma, C, delta and a
    whole-budget epsilon), and where the ledgers live (relative to the site workspace root)."""

    min_dp: str = "none"
    min_noise_multiplier: float = 1.0
    max_clip_norm: float = 1.0
    max_delta: float = 1e-5
    epsilon_budget: float = 10.0
    ledger_dir: str = "fedgai_privacy"
    # The modes this studio consents to (modes.py); a mode that sends generator weights needs more besides.
    allowed_modes: tuple[str, ...] = D_ONLY_MODES
    # Record-level DP's one release of the AdaIN_SD sketch statistics (privacy.stats_*): its own minimum noise.
    min_stats_noise_multiplier: float = 5.0
    max_stats_clip_norm: float = 64.0
    # Which parameters record-level DP-SGD may train (privacy.record_trainable): the site's choice, not the job's.
    allowed_record_trainable: tuple[str, ...] = RECORD_TRAINABLE
    # The weight files a job may have this studio load (train.prior, model.vgg_weights, loss.clip_pretrained):
    # {path: sha256 of its content}. Any other file a job names is refused, and so is a listed one that changed.
    weight_files: dict[str, str] = dataclasses.field(default_factory=dict)
    # Whether a job may make this studio fetch weights from a hub (open_clip's CLIP tags; nothing else downloads):
    # off by default, so a job reaches no network from the studio and loads only what the site placed.
    allow_hub_downloads: bool = False

    def __post_init__(self) -> None:
        if self.min_dp not in DP_MODES:
            raise SitePolicyError(f"site policy: min_dp must be one of {', '.join(DP_MODES)}, got {self.min_dp!r}")
        modes = self.allowed_modes
        if isinstance(modes, str) or not isinstance(modes, list | tuple) or not set(modes) <= set(MODES):
            raise SitePolicyError(f"site policy: allowed_modes must be a list of {', '.join(MODES)}, got {modes!r}")
        object.__setattr__(self, "allowed_modes", tuple(modes))  # JSON gives a list; the policy is frozen
        trainable = self.allowed_record_trainable
        if isinstance(trainable, str) or not isinstance(trainable, list | tuple) or not set(trainable) <= set(
                RECORD_TRAINABLE):
            raise SitePolicyError(f"site policy: allowed_record_trainable must be a list of "
                                  f"{', '.join(RECORD_TRAINABLE)}, got {trainable!r}")
        object.__setattr__(self, "allowed_record_trainable", tuple(trainable))
        files = self.weight_files
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v)
                                                  for k, v in files.items()):
            raise SitePolicyError(f"site policy: weight_files must map file paths to their sha256 (64 hex digits), "
                                  f"got {files!r}")
        if not isinstance(self.allow_hub_downloads, bool):
            raise SitePolicyError(f"site policy: allow_hub_downloads must be true or false, "
                                  f"got {self.allow_hub_downloads!r}")
        for name in ("min_noise_multiplier", "max_clip_norm", "max_delta", "epsilon_budget",
                     "min_stats_noise_multiplier", "max_stats_clip_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise SitePolicyError(f"site policy: {name} must be a finite number >= 0, got {value!r}")
        if Path(self.ledger_dir).is_absolute() or ".." in Path(self.ledger_dir).parts:
            raise SitePolicyError(f"site policy: ledger_dir must stay inside the site workspace, "
                                  f"got {self.ledger_dir!r}")

    def refusal(self, privacy: PrivacyConfig) -> str | None:
        """Why a job with these privacy settings must not run on this studio's data, or None.

        Under a minimum of "record" only record-level DP-SGD runs: a job claiming client-level DP instead is
        refused, so DP-SGD runs at this site whenever a job runs at all (issue 24)."""
        if DP_STRENGTH[privacy.dp] < DP_STRENGTH[self.min_dp]:
            return f"the job's privacy.dp = {privacy.dp!r} is weaker than the site's minimum {self.min_dp!r}"
        if self.min_dp == "record" and privacy.dp != "record":
            return (f"this site trains only with record-level DP-SGD (min_dp 'record'); the job's privacy.dp = "
                    f"{privacy.dp!r} would switch it off")
        if privacy.dp == "none":
            return None
        problems = self._stats_problems(privacy) if privacy.dp == "record" else []
        if privacy.noise_multiplier < self.min_noise_multiplier:
            problems.append(f"privacy.noise_multiplier {privacy.noise_multiplier} < the site's minimum "
                            f"{self.min_noise_multiplier}")
        if privacy.clip_norm > self.max_clip_norm:
            problems.append(f"privacy.clip_norm {privacy.clip_norm} > the site's maximum {self.max_clip_norm}")
        if privacy.delta > self.max_delta:
            problems.append(f"privacy.delta {privacy.delta} > the site's maximum {self.max_delta}")
        if privacy.target_epsilon is not None and privacy.target_epsilon > self.epsilon_budget:
            problems.append(f"privacy.target_epsilon {privacy.target_epsilon} > the site's budget "
                            f"{self.epsilon_budget}")
        return "; ".join(problems) or None

    def _stats_problems(self, privacy: PrivacyConfig) -> list[str]:
        """Record-level DP's own settings (what DP-SGD trains, the release of the sketch statistics) against the
        site's."""
        problems = []
        if privacy.record_trainable not in self.allowed_record_trainable:
            problems.append(f"privacy.record_trainable {privacy.record_trainable!r} is not among the site's "
                            f"{', '.join(self.allowed_record_trainable)}")
        if privacy.stats_noise_multiplier < self.min_stats_noise_multiplier:
            problems.append(f"privacy.stats_noise_multiplier {privacy.stats_noise_multiplier} < the site's minimum "
                            f"{self.min_stats_noise_multiplier}")
        if privacy.stats_clip_norm > self.max_stats_clip_norm:
            problems.append(f"privacy.stats_clip_norm {privacy.stats_clip_norm} > the site's maximum "
                            f"{self.max_stats_clip_norm}")
        return problems

    def weights_refusal(self, named: Mapping[str, str]) -> str | None:
        """Why this studio must not load the files a job names ({setting: path}; only those that are files at
        this site count, as only those would be loaded), or None. A file is allowed when weight_files lists it
        (by resolved path) with the sha256 of its content now."""
        for setting, name in sorted(named.items()):
            path = Path(name).expanduser()
            if path.is_file():
                reason = self.pin_refusal(setting, path, file_sha256)
                if reason:
                    return reason
        return None

    def pin_refusal(self, setting: str, path: Path, digest: Callable[[Path], str]) -> str | None:
        """Why the file at ``path`` (named by ``setting``) must not be loaded here, or None: weight_files must
        list it (by resolved path) with ``digest``, the sha256 of its content (a loader passes the hash of the
        very bytes it loads)."""
        path = Path(path).expanduser().resolve()
        allowed = {Path(name).expanduser().resolve(): pinned for name, pinned in self.weight_files.items()}
        if path not in allowed:
            return f"{setting} names {path}, which is not among the site's weight_files"
        if digest(path) != allowed[path]:
            return f"{setting} names {path}, whose content is not the one the site's weight_files allows (sha256)"
        return None

    def mode_refusal(self, cfg: FedgaiConfig) -> str | None:
        """Why this studio must not run the job's fed.mode, or None: the site must consent to it (allowed_modes),
        and a mode that sends generator weights must be protected (modes.protection_problem, which a studio
        without a policy applies too: studio_refusal)."""
        if cfg.fed.mode not in self.allowed_modes:
            return (f"fed.mode {cfg.fed.mode!r} is not among the modes this site allows "
                    f"({', '.join(self.allowed_modes)}; allowed_modes in its policy)")
        return None

    def enforce_job(self, cfg: FedgaiConfig) -> FedgaiConfig:
        """The job's config as this site runs it (``enforce`` on its privacy), or SitePolicyError with the
        reason when its mode or privacy asks for less than the policy."""
        reason = self.mode_refusal(cfg) or self.weights_refusal(job_weight_files(cfg))
        if reason:
            raise SitePolicyError(f"this studio's privacy policy refuses the job: {reason}")
        return dataclasses.replace(cfg, privacy=self.enforce(cfg.privacy))


    def enforce(self, privacy: PrivacyConfig) -> PrivacyConfig:
        """The settings this site runs: the job's, with the site's budget as the target when the job sets none;
        SitePolicyError (with the reason) when the job asks for less than the policy."""
        reason = self.refusal(privacy)
        if reason:
            raise SitePolicyError(f"this studio's privacy policy refuses the job: {reason}")
        if privacy.dp == "none" or privacy.target_epsilon is not None:
            return privacy
        return dataclasses.replace(privacy, target_epsilon=self.epsilon_budget)

    def ledger_path(self, workspace_root: str | Path) -> Path:
        """The site's one ledger, charged by every job and both DP units at this site. SitePolicyError while the
        per-unit ledgers of earlier fedgai versions are there without it: starting the one ledger afresh beside
        them would reset the studio's budget."""
        folder = Path(workspace_root) / self.ledger_dir
        legacy = sorted(name for name in LEGACY_LEDGER_FILES if (folder / name).exists())
        if legacy and not (folder / LEDGER_FILE).exists():
            raise SitePolicyError(f"{folder} holds the per-unit ledgers {legacy} of an earlier fedgai; this version "
                                  f"keeps one ledger, {LEDGER_FILE}: merge their steps into it (or rename the one "
                                  "there is) before running a DP job, so that no spending is forgotten")
        return folder / LEDGER_FILE

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, **dataclasses.asdict(self), "allowed_modes": list(self.allowed_modes),
                "allowed_record_trainable": list(self.allowed_record_trainable)}


def job_weight_files(cfg: FedgaiConfig) -> dict[str, str]:
    """The settings with which a job can name a weight file for the studio to load ("none"/"auto" prior, no VGG
    file and "none" CLIP weights name none; an open_clip tag is no file at the site, so weights_refusal skips it)."""
    named = {"train.prior": cfg.train.prior, "model.vgg_weights": cfg.model.vgg_weights,
             "loss.clip_pretrained": cfg.loss.clip_pretrained}
    return {setting: value for setting, value in named.items() if value and value not in ("none", "auto")}


def file_sha256(path: Path) -> str:
    """The file's content hash, read in chunks (a CLIP checkpoint is ~600 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def studio_config(cfg: FedgaiConfig, policy: SitePolicy | None) -> FedgaiConfig:
    """The job's config as a studio runs it, or SitePolicyError with the reason. Every studio, with a policy
    file or without, refuses a mode that would send generator weights unprotected; one with a policy also
    applies its consent and minimums (SitePolicy.enforce_job)."""
    problem = protection_problem(cfg.fed.mode, cfg.privacy, cfg.fed.min_clients)
    if problem:
        raise SitePolicyError(f"this studio refuses the job: {problem}")
    return cfg if policy is None else policy.enforce_job(cfg)


def policy_path(workspace_root: str | Path) -> Path:
    return Path(workspace_root) / "local" / POLICY_FILE


def hub_download_refusal(workspace_root: str | Path | None = None) -> str | None:
    """Why this process must not download weights from a hub, or None. The site's policy decides, read from the
    site workspace a studio runs in (NVFlare starts it there: ``workspace_root`` defaults to the working
    directory); a process without a policy (the simulator, `fedgai train-local`) may, as documented."""
    root = Path.cwd() if workspace_root is None else Path(workspace_root)
    policy = load_site_policy(root)
    if policy is None or policy.allow_hub_downloads:
        return None
    return f"this site's privacy policy does not allow hub downloads (allow_hub_downloads in {policy_path(root)})"


def pinned_content(setting: str, path: Path, workspace_root: str | Path | None = None) -> bytes:
    """The file's bytes, read once, for a loader to load from; at a site with a policy (``workspace_root``, default
    the working directory, as hub_download_refusal) SitePolicyError unless its weight_files pins exactly these
    bytes. Hashing what is loaded, not the file beforehand, leaves no moment to swap the file in between."""
    content = Path(path).read_bytes()
    policy = load_site_policy(Path.cwd() if workspace_root is None else workspace_root)
    reason = policy and policy.pin_refusal(setting, path, lambda _: hashlib.sha256(content).hexdigest())
    if reason:
        raise SitePolicyError(f"this studio's privacy policy refuses the file: {reason}")
    return content


def load_site_policy(workspace_root: str | Path) -> SitePolicy | None:
    """The site's policy, None when the site has none; SitePolicyError when the file cannot be trusted
    (a broken policy must stop jobs, never silently become no policy)."""
    path = policy_path(workspace_root)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SitePolicyError(f"cannot read the site privacy policy {path}: {err}") from err
    if not isinstance(data, dict) or data.pop("format", None) != POLICY_FORMAT:
        raise SitePolicyError(f"site privacy policy {path}: expected an object with format {POLICY_FORMAT!r}")
    fields = {f.name for f in dataclasses.fields(SitePolicy)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SitePolicyError(f"site privacy policy {path}: unknown fields {unknown}; known: {sorted(fields)}")
    return SitePolicy(**data)


def write_site_policy(workspace_root: str | Path, policy: SitePolicy) -> Path:
    """Write the policy into a kit's ``local`` folder (provisioning); the studio may edit it afterwards."""
    path = policy_path(workspace_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(policy.to_dict(), indent=2) + "\n")
    return path
