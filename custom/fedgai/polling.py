"""A background poller for long runs: progress lines, memory peaks."""

from __future__ import annotations

import threading
from typing import Self


class Poller:
    """Calls ``poll()`` every ``poll_s`` seconds on a daemon thread while its ``with`` block runs, and once
    more on exit, so that what landed after the last tick is not missed."""

    def __init__(self, poll_s: float, name: str = "fedgai-poller"):
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        raise NotImplementedError
