"""What the server remembers across rounds and jobs, for the plain and the HE server alike (no NVFlare here).

Both servers keep the same federation state, key their resume state by the same job identity and config,
decide with the same rules whether a saved state is continued, and put it in the same, checked place. Only the
entries differ: plaintext arrays on the plain server, ciphertext bytes (which the server cannot read) under HE.

Where a resume state lives: ``<workspace root>/<checkpoint_dir>/<job folder>/<file>``. ``checkpoint_dir`` comes
from the job, so it must be relative and stay inside the server's workspace; the server's own environment may
name the folder instead (``$FEDGAI_SERVER_STATE_DIR``, a site-local decision, which ``fedgai simulate`` uses
for its workspace). The job folder is made from the job's name, sanitised.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgai.safe_paths import UnsafePathError, inside, relative_only, safe_name
from fedgai.wire import config_hash

STATE_DIR_ENV = "FEDGAI_SERVER_STATE_DIR"


@dataclass
class Federation:
    """What the server remembers across rounds (and in its resume state)."""

    first_counts: dict[str, int] = field(default_factory=dict)
    exhausted: list[str] = field(default_factory=list)
    feature_space: dict[str, Any] | None = None


def job_identity(job_id: str | None, meta: Mapping[str, Any] | None) -> dict[str, str | None]:
    """The running job's id, name and submitter (from its meta): what a resume state belongs to."""
    meta = meta or {}
    return {"job_id": job_id, "name": meta.get("name"), "submitter": meta.get("submitter_name")}


def setting_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted settings that differ between two config dicts: ``train.lr_d: 0.0002 -> 0.001``."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += setting_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def resume_refusal(saved: Mapping[str, Any], identity: Mapping[str, Any], config: Mapping[str, Any],
                   policy: str) -> str | None:
    """Why an unfinished saved state must not be continued by this job under fed.resume = ``policy``, or None."""
    theirs = saved.get("identity") or {}
    if theirs.get("job_id") == identity["job_id"] and saved.get("config_hash") == config_hash(config):
        return None  # the same job, restarted
    owner = f"job {theirs.get('name')!r} (id {theirs.get('job_id')}, submitted by {theirs.get('submitter')})"
    if policy == "same_job":
        return f"it was left by another {owner}; fed.resume = same_job continues only this job's own state"
    differs = [f"{k}: {theirs.get(k)!r} -> {identity[k]!r}" for k in ("name", "submitter")
               if theirs.get(k) != identity[k]]
    differs += setting_differences(saved.get("config") or {}, config)
    if differs:
        return f"it was left by {owner}, which differs: {'; '.join(differs[:8])}"
    return None


@dataclass(frozen=True)
class Resume:
    """Where a job starts: round ``start`` (0 = a new run) from ``saved`` (None = the initial model); ``note``
    says why, for the log; ``refusal`` (start is then meaningless) why the job must stop instead."""

    start: int
    saved: Mapping[str, Any] | None
    note: str | None = None
    refusal: str | None = None


def resume_decision(saved: Mapping[str, Any] | None, where: Path | None, identity: Mapping[str, Any],
                    config: Mapping[str, Any], rounds: int, policy: str) -> Resume:
    """Whether this job continues ``saved`` (found at ``where``): only an unfinished state, as fed.resume allows."""
    if saved is None:
        return Resume(0, None)
    if saved.get("finished") or saved["round"] + 1 >= saved.get("total_rounds", rounds):
        return Resume(0, None, f"{where} holds a finished run; starting a new one")
    if policy == "never":
        return Resume(0, None, f"fed.resume is never: starting over (the unfinished state in {where} will be "
                               "replaced)")
    refusal = resume_refusal(saved, identity, config, policy)
    if refusal:
        return Resume(0, None, refusal=f"refusing to continue the saved global model in {where}: {refusal}. Set "
                                       "fed.resume to never to start over (the state is then replaced), or remove "
                                       "that folder")
    return Resume(saved["round"] + 1, saved, f"resuming from {where}: round {saved['round']} was the last one saved")


def state_folder_name(identity: Mapping[str, Any]) -> str:
    """A job's resume folder: its name (so other jobs never meet its state), made one safe path component.

    A name that leaves nothing usable ('..', '.') gets a folder named by its hash, so it can neither reach
    the folder above nor share a folder with another such name.
    """
    name = str(identity.get("name") or identity.get("job_id") or "job")
    try:
        return safe_name(name)
    except UnsafePathError:
        return "job-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def state_path(workspace_root: str | Path, checkpoint_dir: str, identity: Mapping[str, Any],
               file_name: str) -> Path | None:
    """``<workspace_root>/<checkpoint_dir>/<job folder>/<file_name>``, or ``$FEDGAI_SERVER_STATE_DIR/<job
    folder>/<file_name>`` when the server sets it; None when the job disables resuming (checkpoint_dir "").

    Raises UnsafePathError for an absolute ``checkpoint_dir`` or one with '..': a job must not choose where
    on the server's disk it writes.
    """
    if not checkpoint_dir:
        return None
    relative_only(checkpoint_dir, "checkpoint_dir")
    own = os.environ.get(STATE_DIR_ENV)
    if own:
        return inside(own, state_folder_name(identity), file_name)
    return inside(workspace_root, checkpoint_dir, state_folder_name(identity), file_name)


def save_params(path: Path, params: Mapping[str, np.ndarray], **info: Any) -> None:
    """torch file with {"params": wire key -> tensor, **info}; written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"params": {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}, **info}, tmp)
    tmp.replace(path)


def load_state(path: Path | None, reference: Mapping[str, np.ndarray], encrypted: bool = False
               ) -> dict[str, Any] | None:
    """A saved state holding exactly ``reference``'s entries, else None: plaintext arrays of the same shapes,
    or (``encrypted``) ciphertexts as bytes, whose shapes the server cannot see."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if encrypted:
        params: dict[str, Any] = {k: v.numpy().tobytes() for k, v in state["params"].items()}
        return {**state, "params": params} if set(params) == set(reference) else None
    params = {k: v.numpy() for k, v in state["params"].items()}
    if set(params) != set(reference) or any(params[k].shape != reference[k].shape for k in reference):
        return None
    return {**state, "params": params}


def save_state(path: Path | None, params: Mapping[str, np.ndarray], *, rnd: int, rounds: int, finished: bool,
               identity: Mapping[str, Any], config: Mapping[str, Any], federation: Federation) -> None:
    """The resume state after round ``rnd``: entries, identity and config it belongs to, federation state."""
    if path is not None:
        save_params(path, params, round=rnd, total_rounds=rounds, finished=finished, identity=dict(identity),
                    config=dict(config), config_hash=config_hash(config), federation=vars(federation))
