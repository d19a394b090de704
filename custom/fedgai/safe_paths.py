"""File names built from what a studio or a job sends: sanitised, and checked to stay inside their folder.

A site name, a job name or a path in a job's configuration comes from another party; used as is in a file
name, ``x/../../escaped`` or ``..`` writes outside the folder meant for it.
"""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UnsafePathError(ValueError):
    """A name or path from another party that would leave its folder."""


def safe_name(name: str) -> str:
    """One path component made from ``name``: only letters, digits, '.', '_' and '-'; never '', '.' or '..'."""
    cleaned = _UNSAFE.sub("_", str(name)).strip(".")
    if not cleaned:
        raise UnsafePathError(f"{name!r} gives no usable file name")
    return cleaned


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder/parts...`` after checking that it resolves inside ``folder`` (symbolic links followed)."""
    root = Path(folder).resolve()
    target = root.joinpath(*parts).resolve()
    if target != root and not target.is_relative_to(root):
        raise UnsafePathError(f"{'/'.join(parts)!r} leaves {root}")
    return target


def relative_only(path: str, what: str) -> str:
    """A path a job names for a site's files: relative and without '..', so it stays in the site's workspace."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts:
        raise UnsafePathError(f"{what} {path!r} must be a relative path inside the workspace (no leading '/', "
                              "no '..')")
    return path
