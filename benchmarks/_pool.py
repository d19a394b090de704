"""The benchmarks' job pool and result table, written once (imported as a sibling: `from _pool import ...`).

Jobs run in spawned processes, never forked ones: a fork copies a parent that has already used torch (its thread
pools, locks and, on a GPU machine, its CUDA context) into a child that cannot use them safely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

Job = TypeVar("Job")


def run_spawned(worker: Callable[[Job], str], jobs: Sequence[Job], workers: int,
                failed: Callable[[Job], str] | None = None) -> None:
    """Run ``worker`` on every job in ``workers`` spawned processes and print each job's message in job order.

    With ``failed`` (a job's name) a failed job prints "NAME: FAILED error" and the others go on, for grids whose
    evaluation skips a run that left no result. Without it the first failure is raised once the jobs before it are
    printed, and the jobs not yet started are cancelled (as ``Executor.map`` does), so no table follows a failure."""
    with ProcessPoolExecutor(workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(worker, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            error = future.exception()
            if error is not None and failed is None:
                for rest in futures:
                    rest.cancel()
                raise error
            print(future.result() if error is None else f"{failed(job)}: FAILED {error!r}", flush=True)


def write_table(out: Path, text: str) -> None:
    """Save a grid's markdown table as OUT/table.md and print it: the file keeps the table beside the runs' JSON."""
    (out / "table.md").write_text(text + "\n")
    print(text)
