"""Reading the servers' round summaries (``round-NNN.json``, written by federated/server/summary.py): of a finished run,
of a running one being polled, and of a run of unknown layout.

Torch-free and free of the federation's code, next to layout.py, so that every reader (``fedgai simulate``,
``fedgai evaluate``, the studio page, the deployment scripts) reads them the same way without importing the
server it summarises.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedgai.layout import ROUND_SUMMARY_GLOB, round_summary_name


class SummaryError(RuntimeError):
    """A run's round summaries are missing or incomplete."""


def round_summaries_below(root: Path) -> list[dict[str, Any]]:
    """Every round summary at or below ``root`` (a workspace or a downloaded job result), in round order; for
    readers of a run of unknown layout (`fedgai evaluate`). Files that are not summaries are skipped."""
    summaries = [json.loads(p.read_text()) for p in root.rglob(ROUND_SUMMARY_GLOB)]
    return sorted((s for s in summaries if isinstance(s, dict) and "round" in s), key=lambda s: s["round"])


def new_round_summaries(out: Path, seen: set[str], started_after: float) -> list[dict[str, Any]]:
    """The summaries in ``out`` of rounds started after ``started_after`` and not in ``seen`` (file names,
    updated), for a reader that polls a running job: an earlier run's file (resume) is skipped until rewritten,
    and reading stops at a file being written (read next time)."""
    found = []
    for path in sorted(out.glob(ROUND_SUMMARY_GLOB)):
        if path.name in seen:
            continue
        try:
            summary = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            break
        if summary.get("started_at", 0.0) >= started_after:
            seen.add(path.name)
            found.append(summary)
    return found


def read_round_summaries(out: Path, rounds: int, log: Path | None = None) -> list[dict]:
    """The round summaries of a finished run (plain or HE: one format), up to the round that ended it.

    Raises SummaryError naming the missing summaries (and the log to read) when the run stopped early.
    """
    summaries = []
    for rnd in range(rounds):
        path = out / round_summary_name(rnd)
        if not path.is_file():
            missing = ", ".join(round_summary_name(r) for r in range(rnd, rounds))
            raise SummaryError(f"the run stopped early: no {missing} in {out}" + (f"; see {log}" if log else ""))
        summaries.append(json.loads(path.read_text()))
        if summaries[-1].get("finished"):
            break
    return summaries
