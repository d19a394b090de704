""""What joining gave me": the studio's latest `fedgai evaluate` results and its federation's round progress,
read with the product's own readers (evaluation/runs.py, round_summaries.py) and put in a designer's terms.

A studio run folder is where the page looks first: WORKSPACE/studios/<site> for `fedgai simulate` (the
workspace then also holds the server's round summaries and `make demo`'s evaluation/), or a train-local run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgai.evaluation.runs import RunLayoutError, load_studio_run
from fedgai.layout import CHECKPOINTS, ROUND_RECORDS, SPLIT_FILE, WORKSPACE_NVFLARE, WORKSPACE_STUDIOS
from fedgai.round_summaries import round_summaries_below

EVALUATION = "evaluation"
METRICS_JSON, REPORT_HTML = "metrics.json", "report.html"
LOCAL_LABEL = "local-only"  # the label `fedgai evaluate` gives a run that trained alone (evaluation/runs.run_mode)


@dataclass(frozen=True)
class Places:
    """Where the page looks: the studio's run folder, the simulator workspace around it, the evaluation."""

    run_folder: Path | None
    workspace: Path | None
    evaluation: Path | None


def run_folder_of(model: Path) -> Path | None:
    """The studio run folder a --model lies in (the folder itself, or the one around checkpoints/)."""
    folder = model if model.is_dir() else model.parent.parent if model.parent.name == CHECKPOINTS else None
    return folder if folder is not None and (folder / SPLIT_FILE).is_file() else None


def find_places(model: Path, evaluation: Path | None = None, workspace: Path | None = None) -> Places:
    """Given folders win; else the simulator workspace around the run folder and the newest metrics.json of
    `<workspace>/evaluation` (what `make demo` writes) and `<run folder>/evaluation`."""
    run_folder = run_folder_of(model)
    if workspace is None and run_folder is not None and run_folder.parent.name == WORKSPACE_STUDIOS:
        workspace = run_folder.parent.parent
    if evaluation is None:
        found = [d / EVALUATION / METRICS_JSON for d in (workspace, run_folder) if d is not None]
        found = [p for p in found if p.is_file()]
        evaluation = max(found, key=lambda p: p.stat().st_mtime).parent if found else None
    elif evaluation.is_file():
        evaluation = evaluation.parent
    return Places(run_folder, workspace, evaluation)


def pct(new: float, old: float) -> float | None:
    return 100.0 * (new - old) / abs(old) if old and math.isfinite(old) and math.isfinite(new) else None


def evaluation_view(folder: Path | None, studio: str, site: str) -> dict[str, Any]:
    """This studio's rows of the latest evaluation, each run's change against training alone, and a note."""
    path = folder / METRICS_JSON if folder is not None else None
    if path is None or not path.is_file():
        return {"note": "No evaluation yet. Run `fedgai evaluate RUN_DIR --out RUN_DIR/evaluation` (make demo does) "
                        "to see how your generator scores on your own held-out pairs."}
    from fedgai.evaluation.report import METRICS, TABLE_COLUMNS, fmt  # matplotlib: only when there is one

    data = json.loads(path.read_text())
    rows = [r for r in data.get("results", []) if r.get("studio") == studio or r.get("site") == site]
    if not rows:
        return {"note": f"The evaluation in {folder} has no results for this studio ({studio or site})."}
    columns = [{"name": name, "better": METRICS[key][1], "meaning": METRICS[key][0]} for name, key, _ in TABLE_COLUMNS]
    table = [{"run": r["run"], "values": [fmt(r["metrics"].get(key), pattern) for _, key, pattern in TABLE_COLUMNS]}
             for r in rows]
    written = datetime.fromtimestamp(path.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {"source": str(folder), "written": written, "columns": columns, "rows": table,
            "gains": gains(rows), "report": (folder / REPORT_HTML).is_file()}


def gains(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each non-local run's change in percent against the local-only run of the same studio (if evaluated)."""
    from fedgai.evaluation.report import METRICS, TABLE_COLUMNS

    local = next((r for r in rows if r["run"].startswith(LOCAL_LABEL)), None)
    if local is None:
        return []
    out = []
    for row in (r for r in rows if r is not local):
        changes = []
        for name, key, _ in TABLE_COLUMNS:
            new, old = row["metrics"].get(key), local["metrics"].get(key)
            change = pct(new, old) if isinstance(new, int | float) and isinstance(old, int | float) else None
            if change is not None:
                better = (change < 0) == (METRICS.get(key, ("", "lower"))[1] == "lower")
                changes.append({"name": name, "percent": round(change, 1), "better": better and change != 0})
        out.append({"run": row["run"], "vs": local["run"], "changes": changes})
    return out


def rounds_view(places: Places, site: str, planned: int | None = None) -> dict[str, Any]:
    """The studio's own per-round records and, where the server's summaries are here too (simulator), how many
    studios each round aggregated and whether this studio's update was accepted."""
    own = studio_rounds(places.run_folder)
    nvflare = places.workspace / WORKSPACE_NVFLARE if places.workspace is not None else None
    summaries = round_summaries_below(nvflare) if nvflare is not None and nvflare.is_dir() else []
    if not own and not summaries:
        alone = places.run_folder is not None and not (places.run_folder / ROUND_RECORDS).is_file()
        return {"note": "This generator was trained alone (train-local): no federation rounds." if alone else
                "No federation rounds found next to this model."}
    by_round = {s["round"]: s for s in summaries}
    records = []
    for rnd in sorted({r["round"] for r in own} | set(by_round)):
        summary = by_round.get(rnd, {})
        contribution = summary.get("contributions", {}).get(site)
        records.append({"round": rnd + 1, "aggregated": summary.get("aggregated"),
                        "accepted": None if contribution is None else bool(contribution.get("accepted"))})
    total = max((s.get("total_rounds") or 0 for s in summaries), default=0) or planned
    return {"done": len(records), "total": total, "records": records}


def studio_rounds(run_folder: Path | None) -> list[dict[str, Any]]:
    """The studio's metrics.jsonl records (one per federated round); none for a train-local run."""
    if run_folder is None:
        return []
    try:
        history = load_studio_run(run_folder).history()
    except RunLayoutError:
        return []
    return [r for r in history if "round" in r]


def joining_view(places: Places, studio: str, planned_rounds: int | None = None) -> dict[str, Any]:
    """Everything the page's third section shows; `planned_rounds`: the run config's fed.rounds."""
    site = places.run_folder.name if places.run_folder is not None else ""
    return {"evaluation": evaluation_view(places.evaluation, studio, site),
            "rounds": rounds_view(places, site, planned_rounds)}
