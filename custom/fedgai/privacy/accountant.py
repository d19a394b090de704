"""Privacy accounting on top of Opacus' accountants, plus a crash-safe per-studio ledger.

A *step* is one release of a (Poisson-subsampled) Gaussian mechanism: ``(noise_multiplier, sample_rate)``,
the noise std in units of the release's sensitivity.
- Client-level DP (DP-FedAvg with the noise added at the studio): one step per round with sample_rate 1.0 -
  every studio joins every round, so there is no amplification by client sampling. The neighbouring relation
  is *replace*: the studio's data set against any other data set of that studio. Two clipped updates then
  differ by up to 2C while the noise std is sigma*C, so a round is charged as noise multiplier sigma/2
  (``client_level_noise``).
- Record-level DP-SGD: one step per optimiser step with sample_rate = 1 / len(loader) (Opacus' Poisson
  loader).

The ledger is the only memory of spent budget, so it is written atomically after every release and read back
on start: a crashed or resumed run keeps counting, and an unreadable ledger is an error, never a silent reset.
Every charge holds a lock on the ledger's folder (``fcntl.flock``) and re-reads the ledger first: a site's ledger is
shared by every job on its data (NVFlare runs up to 4 at once), and a charge written from a stale copy would
drop the other jobs' releases.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant

# Opacus (and the SciPy it pulls in, ~120 MB per process) is imported only when epsilon is computed:
# every studio process imports this module for its budget check, most never run DP.
ACCOUNTANTS = ("rdp", "prv")
CLIENT_LEVEL_SAMPLE_RATE = 1.0
# Client-level sensitivity in units of the clip norm C: replacing a studio's data moves its clipped update by
# up to 2C (add/remove would be C, but a studio always sends an update, so only replacement is meaningful).
CLIENT_LEVEL_SENSITIVITY = 2.0
LEDGER_FORMAT = "fedgai-dp-ledger/1"


class PrivacyBudgetExceeded(RuntimeError):
    """Releasing more would push a studio's epsilon past its target."""


class LedgerError(RuntimeError):
    """The ledger cannot be trusted (unreadable, malformed, another studio's); never reset it silently."""


@dataclass(frozen=True)
class Step:
    """``count`` releases of a Gaussian mechanism with the same noise multiplier and sample rate."""

    noise_multiplier: float
    sample_rate: float
    count: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ValueError(f"count must be an int >= 1, got {self.count!r}")


def _accountant(name: str) -> IAccountant:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[name]()


def compute_epsilon(steps: Sequence[Step], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of ``steps`` at ``delta``; inf if any release had no noise."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    _accountant(accountant)
    return _epsilon(tuple(steps), delta, accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(steps: tuple[Step, ...], delta: float, accountant: str) -> float:
    """compute_epsilon's arithmetic, remembered: a pure function of its arguments that the planner and the
    ledger ask about the same schedules again (each answer costs the accountant ~0.1-1 s on a CPU)."""
    acc = _accountant(accountant)
    if not steps:
        return 0.0
    if any(s.noise_multiplier == 0 for s in steps):
        return math.inf
    acc.history = [(s.noise_multiplier, s.sample_rate, s.count) for s in steps]
    # PRV at sample_rate 1 takes log(1 - q) = log(0) inside a masked branch; the warning is harmless.
    with np.errstate(divide="ignore"):
        return float(acc.get_epsilon(delta=delta))


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """Smallest noise multiplier (to 0.01 in epsilon) whose ``steps`` releases stay within target_epsilon."""
    _accountant(accountant)
    from opacus.accountants.utils import get_noise_multiplier

    with np.errstate(divide="ignore"):
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )


def client_level_noise(noise_multiplier: float) -> float:
    """The noise multiplier a client-level round is charged with: sigma*C of noise over a sensitivity of 2C."""
    return noise_multiplier / CLIENT_LEVEL_SENSITIVITY


def reported_epsilon(epsilon: float) -> float:
    """The epsilon a studio sends under record-level DP: rounded up to the next power of two.

    The exact value depends on the pair count only through ceil(N/B), so sending it would reveal N to within
    one batch. An upper bound stays a valid guarantee; a power-of-two grid leaves only which octave the spend
    is in (docs/privacy.md). 0 and inf are sent as they are.
    """
    if epsilon <= 0 or math.isinf(epsilon):
        return float(epsilon)
    return float(2.0 ** math.ceil(math.log2(epsilon)))


def record_level_schedule(num_samples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample_rate, steps) of DP-SGD as Opacus runs it: q = 1/len(loader), len(loader) steps per epoch.

    Assumes the DataLoader handed to Opacus has drop_last=False, so len(loader) = ceil(N / B).
    """
    if min(num_samples, batch_size, epochs) < 1:
        raise ValueError("num_samples, batch_size and epochs must be >= 1")
    batches = math.ceil(num_samples / batch_size)
    return 1.0 / batches, batches * epochs


class PrivacyLedger:
    """One studio's released steps, persisted as JSON at ``path`` and reloaded on construction."""

    def __init__(self, path: str | Path, studio: str | None = None, accountant: str = "rdp") -> None:
        _accountant(accountant)
        self.path = Path(path)
        self.accountant = accountant
        self.studio, self._steps = self._load(studio)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    def record(self, noise_multiplier: float, sample_rate: float, count: int = 1) -> None:
        """Add releases and persist before returning, so a crash can only over-count, never under-count."""
        with self._locked():
            self._append(Step(float(noise_multiplier), float(sample_rate), count))

    def charge(self, noise_multiplier: float, sample_rate: float, count: int, delta: float,
               target_epsilon: float | None) -> float:
        """Check the budget and record the releases as one step under the lock, against the ledger as it is on
        disk now; returns the epsilon after them. PrivacyBudgetExceeded (nothing recorded) past the target."""
        with self._locked():
            if target_epsilon is not None:
                self.check_budget(target_epsilon, noise_multiplier, sample_rate, count, delta)
            self._append(Step(float(noise_multiplier), float(sample_rate), count))
            return self.epsilon(delta)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock of the ledger's folder (the ledger itself is replaced on every save, so its own inode
        cannot carry a lock) and re-read the ledger: every charge sees every other job's."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            self.studio, self._steps = self._load(self.studio)
            yield
        finally:
            os.close(folder)  # releases the lock

    def _append(self, step: Step) -> None:
        """Add ``step`` (merged into the last one when it has the same noise and rate) and persist."""
        last = self._steps[-1] if self._steps else None
        if last and (last.noise_multiplier, last.sample_rate) == (step.noise_multiplier, step.sample_rate):
            self._steps[-1] = Step(last.noise_multiplier, last.sample_rate, last.count + step.count)
        else:
            self._steps.append(step)
        self._save()

    def epsilon(self, delta: float) -> float:
        return compute_epsilon(self._steps, delta, self.accountant)

    def projected_epsilon(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        """Epsilon if ``steps`` more releases were added (nothing is recorded)."""
        extra = Step(float(noise_multiplier), float(sample_rate), steps)
        return compute_epsilon([*self._steps, extra], delta, self.accountant)

    def check_budget(
        self, target_epsilon: float, noise_multiplier: float, sample_rate: float, steps: int, delta: float
    ) -> float:
        """Return the projected epsilon, or raise PrivacyBudgetExceeded if it would pass target_epsilon."""
        projected = self.projected_epsilon(noise_multiplier, sample_rate, steps, delta)
        if projected > target_epsilon:
            raise PrivacyBudgetExceeded(
                f"studio {self.studio or '?'}: privacy budget exhausted - current epsilon "
                f"{self.epsilon(delta):.3f}, after {steps} more release(s) epsilon would be {projected:.3f} "
                f"> target {target_epsilon} (delta={delta}, accountant={self.accountant}, ledger {self.path})"
            )
        return projected

    def _load(self, studio: str | None) -> tuple[str | None, list[Step]]:
        if not self.path.exists():
            return studio, []
        try:
            data = json.loads(self.path.read_text())
            if data["format"] != LEDGER_FORMAT:
                raise LedgerError(f"ledger {self.path} has format {data['format']!r}, expected {LEDGER_FORMAT}")
            steps = [Step(float(s["noise_multiplier"]), float(s["sample_rate"]), s["count"]) for s in data["steps"]]
            owner = data["studio"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise LedgerError(f"cannot read privacy ledger {self.path}: {err}") from err
        if studio is not None and owner is not None and owner != studio:
            raise LedgerError(f"ledger {self.path} belongs to studio {owner!r}, not {studio!r}")
        return owner if owner is not None else studio, steps

    def _save(self) -> None:
        """Write a temp file in the same directory, fsync, rename it over the ledger (atomic on POSIX)."""
        data = {"format": LEDGER_FORMAT, "studio": self.studio, "steps": [asdict(s) for s in self._steps]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
