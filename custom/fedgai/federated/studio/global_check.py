"""A studio's check of each global model before it loads it: finite, and not moved further than a bound the
studio holds itself.

Why: a server (or, under HE, one studio scaling its encrypted update) can send a global that would wreck the
studio's D. The check runs in the studio's own script for every global (client.py), and in the HE decryptor
(he_studio.py) on what it decrypts.

The bound cannot be ratcheted (issue 24 §4): a change counts towards later bounds at most as much as the first
change the studio accepted (its anchor), so a global grown ~10x per round is refused from the third round on,
instead of passing for ever because each round's change was within 10x of the last (old code: 7 rounds of 9.9x
passed, ending at 1e7 x the norm).

Nor can it be reset by restarting the studio: a check with a ``state_file`` (``site_check_file``: the site's
own folder, one file per job and checker, never a path the job names) re-reads its memory under a lock before
every review and saves it after every accepted global, as the site's ledger does its spending. Old code kept it
in the process, so a studio that crashed (or was restarted by the simulator) met its next global with no
reference and the ratchet could start again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedgai.privacy.policy import SitePolicy, load_site_policy
from fedgai.safe_paths import safe_name

STATE_FOLDER = "global-checks"  # inside the site's ledger folder (the policy's ledger_dir)
STATE_FORMAT = "fedgai-global-check/1"


class GlobalCheckStateError(RuntimeError):
    """A studio's saved check cannot be read: the studio stops rather than check the next global without memory."""


def site_check_file(workspace_root: str | Path, job_id: str, checker: str) -> Path:
    """Where a studio keeps one checker's memory (``checker``: "script", "decryptor") of one job's globals: the
    site's ledger folder (its policy's ledger_dir, the default's without a policy), the job id as one file name."""
    policy = load_site_policy(workspace_root) or SitePolicy()
    return Path(workspace_root) / policy.ledger_dir / STATE_FOLDER / f"{safe_name(job_id)}-{safe_name(checker)}.npz"


@dataclass
class GlobalCheck:
    """Refused: any non-finite value; a change (L2 over all shared entries) larger than ``factor`` x the largest of
    the last ``history`` accepted changes, each counted at most as the first accepted change; or, before any
    change was seen, larger than ``first_factor`` x the last global's own norm. The bounds are loose on purpose
    (an honest round moves D by about as much as the previous one; the first round can move it by about its own
    norm): they stop a scaled or corrupted aggregate, not a small poisoned step inside it. A refused global does
    not become the reference."""

    factor: float = 10.0
    history: int = 3
    first_factor: float = 10.0
    last: dict[str, np.ndarray] | None = None
    changes: list[float] = field(default_factory=list)
    anchor: float | None = None  # the first accepted change (> 0)
    state_file: Path | None = None  # the memory kept across restarts (site_check_file); None: this process only

    def review(self, params: Mapping[str, np.ndarray]) -> str | None:
        """Why ``params`` must not be loaded, or None (then it is the new reference, saved before returning)."""
        if self.state_file is None:
            return self._review(params)
        with self._locked():
            reason = self._review(params)
            if reason is None:
                self._save()
            return reason

    def _review(self, params: Mapping[str, np.ndarray]) -> str | None:
        arrays = {key: np.asarray(value, dtype=np.float64) for key, value in params.items()}
        nonfinite = sorted(key for key, value in arrays.items() if not np.isfinite(value).all())
        if nonfinite:
            return f"{len(nonfinite)} entries hold non-finite values: {nonfinite[:3]}"
        if self.last is not None:
            if {k: v.shape for k, v in self.last.items()} != {k: v.shape for k, v in arrays.items()}:
                # Old code took such a global as a fresh reference, unbounded: two rounds reset the ratchet.
                return "its entries (keys or shapes) differ from the last global this studio accepted"
            change = float(np.sqrt(sum(np.sum((arrays[k] - self.last[k]) ** 2) for k in arrays)))
            bound, basis = self.bound()
            if change > bound:
                return f"it moved by {change:.3g} since the last global, more than the bound {bound:.3g} ({basis})"
            if change > 0:  # an unchanged global (a round without updates) says nothing about the next change
                self.anchor = change if self.anchor is None else self.anchor
                self.changes = [*self.changes, min(change, self.anchor)][-self.history:]
        self.last = arrays
        return None

    def bound(self) -> tuple[float, str]:
        """The largest change accepted now, and what it is derived from."""
        if self.changes:
            return self.factor * max(self.changes), (f"{self.factor:g} x the largest of the last {len(self.changes)} "
                                                     f"changes, each counted at most as the first, {self.anchor:.3g}")
        norm = float(np.sqrt(sum(np.sum(value ** 2) for value in (self.last or {}).values())))
        return self.first_factor * norm, f"{self.first_factor:g} x the last global's norm, before any change was seen"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock of the state's folder (the file is replaced on every save, so its own inode cannot carry
        one) and re-read the state: a restarted process continues from what the last one accepted."""
        folder = self.state_file.parent
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._load()
            yield
        finally:
            os.close(handle)  # releases the lock

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        try:
            with np.load(self.state_file, allow_pickle=False) as stored:
                meta = json.loads(str(stored["meta"]))
                if meta["format"] != STATE_FORMAT:
                    raise ValueError(f"format {meta['format']!r}, expected {STATE_FORMAT!r}")
                last = {key: stored[f"entry{i}"] for i, key in enumerate(meta["keys"])} if meta["has_last"] else None
                changes, anchor = [float(c) for c in meta["changes"]], meta["anchor"]
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:  # not a saved check
            raise GlobalCheckStateError(f"cannot read the studio's saved check of the global {self.state_file}: "
                                        f"{err}; move it away only if a check without memory is intended") from err
        self.last, self.changes, self.anchor = last, changes, None if anchor is None else float(anchor)

    def _save(self) -> None:
        """Temp file + fsync + rename over the state (atomic on POSIX): a crash leaves the old state or the new."""
        keys = sorted(self.last or {})
        meta = {"format": STATE_FORMAT, "keys": keys, "has_last": self.last is not None, "changes": self.changes,
                "anchor": self.anchor}
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=f".{self.state_file.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, meta=np.array(json.dumps(meta)),
                         **{f"entry{i}": self.last[key] for i, key in enumerate(keys)})
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.state_file)
        finally:
            Path(tmp).unlink(missing_ok=True)
