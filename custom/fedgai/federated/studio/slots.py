"""Studios that share one machine take turns: at most N of them do their round's work at once.

In NVFlare's simulator every studio is a process on the same machine, and all of them train at the same time.
On a 2-core laptop that buys no speed (the cores are shared either way) but costs memory: every studio holds a
training step's activations at once. `fedgai simulate` therefore sets ``SLOTS_ENV`` = "<folder>:<N>" for its
studio processes; a studio takes one of N lock files for its round's work (trainer set-up, training, outputs)
and afterwards hands its freed heap back to the operating system, so a waiting studio holds only its networks
and data. Waiting studios queue largest first (their round's work, e.g. training pairs; every studio queues
SETTLE_S before its first try, so the studios whose tasks arrive together are all in the queue): the longest
jobs start first, so the round does not end with one large studio training alone on a machine of idle cores.
The locks are ``flock``s and the queue's tickets carry the process id: a studio process that dies releases its
slot and its place. A real deployment (one machine per studio) sets nothing, and every studio trains as soon as
its task arrives.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import gc
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SLOTS_ENV = "FEDGAI_TRAINING_SLOTS"
POLL_S = 0.2  # how often a waiting studio looks for a free slot; small against a round's minutes
# How long a studio queues before its first try: the round's tasks reach the studios within about a second
# (the simulator's task poll is 0.5 s), and without this the first to arrive, not the largest, would train first.
SETTLE_S = 2.0


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
def training_slot(spec: str | None = None, work: float = 0.0) -> Iterator[SlotWait]:
    """Hold one of the machine's training slots (``spec``, else ``SLOTS_ENV``; none set: no waiting) for the
    block, then release the memory the block freed. Of the studios waiting, those with the most ``work`` go
    first."""
    spec = os.environ.get(SLOTS_ENV) if spec is None else spec
    slot = _take_slot(*parse_slots(spec), work) if spec else contextlib.nullcontext()
    started = time.perf_counter()
    try:
        with slot:
            yield SlotWait(time.perf_counter() - started if spec else 0.0)
    finally:
        release_memory()


@contextlib.contextmanager
def _take_slot(folder: Path, count: int, work: float) -> Iterator[int]:
    queue = folder / "waiting"
    queue.mkdir(parents=True, exist_ok=True)
    ticket = queue / f"{os.getpid()}_{uuid.uuid4().hex[:8]}_{work:g}"  # one per waiter, threads included
    ticket.touch()
    try:
        time.sleep(SETTLE_S)
        while True:
            if _queue_rank(queue, ticket) < count:  # among the `count` largest waiting: try every slot
                for index in range(count):
                    with open(folder / f"slot-{index}.lock", "a") as handle:
                        try:
                            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        except BlockingIOError:
                            continue
                        ticket.unlink()
                        try:
                            yield index
                        finally:
                            fcntl.flock(handle, fcntl.LOCK_UN)
                        return
            time.sleep(POLL_S)
    finally:
        ticket.unlink(missing_ok=True)


def ticket_key(path: Path) -> tuple[float, int, str] | None:
    """A ticket's place in the queue (more work first, then the lower process id), or None for anything in the
    queue folder that is not a ticket (a stray or malformed file, a folder): it must not stop the queue."""
    parts = path.name.split("_")
    if len(parts) != 3 or not parts[0].isdigit() or not path.is_file():
        return None
    pid, token, work = parts
    try:
        amount = float(work)
    except ValueError:
        return None
    return None if math.isnan(amount) else (-amount, int(pid), token)


def _queue_rank(queue: Path, ticket: Path) -> int:
    """How many live waiting studios go before ``ticket``. A ticket whose process is gone is removed; anything
    that is not a ticket is ignored."""
    mine = ticket_key(ticket)
    ahead = 0
    for other in queue.iterdir():
        key = ticket_key(other)
        if other != ticket and key is not None and key < mine:
            if _alive(key[1]):
                ahead += 1
            else:
                other.unlink(missing_ok=True)
    return ahead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


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
