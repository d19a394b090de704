"""The one line per round that people watching a federation read (server log, `fedgai simulate`'s console).

    round 2 [3/5]: aggregated 8/8, val_gram 0.146, val_ink_iou 0.412, val_l1 0.156; 41.3 s; ETA 0:01:24

Built from a round summary alone (controller.py writes them), so the server and the simulator's console print
the same line: studios aggregated of those asked, the mean of each held-out metric (``val_*``) over the
aggregated studios where they send one, the round's wall time and the time left for the whole run.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

HELD_OUT_PREFIX = "val_"


def held_out_means(summary: Mapping[str, Any]) -> dict[str, float]:
    """Mean of each ``val_*`` metric over the aggregated studios that sent it (non-finite ones arrive as None)."""
    accepted = [c.get("metrics") or {} for c in summary.get("contributions", {}).values() if c.get("accepted")]
    names = sorted({name for metrics in accepted for name in metrics if name.startswith(HELD_OUT_PREFIX)})
    means = {}
    for name in names:
        values = [m[name] for m in accepted if m.get(name) is not None]
        if values:
            means[name] = sum(values) / len(values)
    return means


class RoundProgress:
    """Turns each round summary of one run into its progress line; remembers when the run's first round began."""

    def __init__(self) -> None:
        self.first_started: float | None = None
        self.first_round: int | None = None

    def eta_seconds(self, summary: Mapping[str, Any]) -> float:
        """Time left: the mean round time so far (dispatch and saving between rounds included) x rounds left."""
        if self.first_started is None or self.first_round is None:
            self.first_started, self.first_round = summary["started_at"], summary["round"]
        done = summary["round"] - self.first_round + 1
        left = summary["total_rounds"] - summary["round"] - 1
        return (summary["ended_at"] - self.first_started) / done * left

    def line(self, summary: Mapping[str, Any]) -> str:
        rnd, total = summary["round"], summary["total_rounds"]
        asked = len(summary.get("contributions", {})) + len(summary.get("no_result", []))
        metrics = "".join(f", {name} {value:.3f}" for name, value in held_out_means(summary).items())
        eta = self.eta_seconds(summary)
        end = "done" if summary.get("finished") or eta <= 0 else f"ETA {timedelta(seconds=round(eta))}"
        return (f"round {rnd} [{rnd + 1}/{total}]: aggregated {summary['aggregated']}/{asked}{metrics}; "
                f"{summary['wall_time_s']:.1f} s; {end}")
