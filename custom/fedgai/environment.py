"""Process environment settings that libraries read (Hugging Face hub, tqdm), set for one block of work only."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping


def scoped_env(name: str, value: str) -> contextlib.AbstractContextManager[None]:
    """Set ``name`` to ``value`` inside the block and restore what was there (or its absence) afterwards."""
    return scoped_environ({name: value})


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """scoped_env for several variables at once (for processes started inside the block)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
