"""Studios that share one machine take turns: at most N of them do their round's work at once.

In NVFlare's simulator every studio is a process on the same machine, and all of them train at the same time.
On a 2-core laptop that buys no speed (the cores are shared either way) but costs memory: every studio holds a
training step's activations at once. `fedgai simulate` therefore sets ``SLOTS_ENV`` = "<folder>:<N>" for its
studio processes; a studio takes one of N lock files for its round's work (trainer set-up, training, outputs)
and afterwards hands its freed heap back to the operating system, so a waiting studio holds only its networks
and data. The locks are ``flock``s: a studio process that dies releases its slot. A real deployment (one
machine per studio) sets nothing, and every studio trains as soon as its task arrives.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SLOTS_ENV = "FEDGAI_TRAINING_SLOTS"
POLL_S = 0.2  # how often a waiting studio looks for a free slot; small against a round's minutes


@dataclass
class SlotWait:
    """How long the studio waited for its slot (0 without slots), for the round's metrics."""

    seconds: float = 0.0


def slots_spec(folder: Path, count: int) -> str:
    """The ``SLOTS_ENV`` value for ``count`` slots in ``folder``."""
    if count < 1:
        raise ValueError(f"training slots must be at least 1, got {count}")
    return f"{folder}:{count}"


def parse_slots(spec: str) -> tuple[Path, int]:
    """("<folder>:<N>") -> (folder, N), with a clear error for anything else."""
    folder, _, count = spec.rpartition(":")
    if not folder or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{SLOTS_ENV} must be '<folder>:<N>' with N >= 1, got {spec!r}")
    return Path(folder), int(count)


@contextlib.contextmanager
def training_slot(spec: str | None = None) -> Iterator[SlotWait]:
    """Hold one of the machine's training slots (``spec``, else ``SLOTS_ENV``; none set: no waiting) for the
    block, then release the memory the block freed."""
    spec = os.environ.get(SLOTS_ENV) if spec is None else spec
    wait = SlotWait()
    try:
        if spec:
            started = time.perf_counter()
            with _take_slot(*parse_slots(spec)):
                wait.seconds = time.perf_counter() - started
                yield wait
        else:
            yield wait
    finally:
        release_memory()


@contextlib.contextmanager
def _take_slot(folder: Path, count: int) -> Iterator[int]:
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(count):
            with open(folder / f"slot-{index}.lock", "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield index
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                return
        time.sleep(POLL_S)


def release_memory() -> None:
    """Give freed heap back to the OS. glibc keeps what a training step freed (hundreds of MB at 128 px) for
    reuse; between rounds a studio only waits, so that memory is better returned. No-op without glibc."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
