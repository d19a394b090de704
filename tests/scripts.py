"""Loading the repository's scripts (provisioning/*.py) as modules: they are run as scripts, not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script(relative: str) -> ModuleType:
    """The script at REPO/relative, imported under the name fedgai_<stem>."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"fedgai_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
