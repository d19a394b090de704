"""Reading the HE guard's per-contribution records of a finished run (what the HE tests check)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedgai.federated.server.he_server import HE_OUTPUT_DIR, RECEIVED_DIR, record_name
from fedgai.safe_paths import inside


def received_records(run_dir: Path, rounds: int, sites: Sequence[str]) -> list[dict[str, Any]]:
    """The guard's records of a finished HE run (server run folder), round by round; raises
    FileNotFoundError naming the missing ones (a studio that sent nothing, or a run that stopped early)."""
    folder = Path(run_dir) / HE_OUTPUT_DIR / RECEIVED_DIR
    paths = [inside(folder, record_name(rnd, site)) for rnd in range(rounds) for site in sites]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no record of {', '.join(missing)} in {folder}: the HE run is incomplete")
    return [json.loads(p.read_text()) for p in paths]
