"""Every file name of a studio run folder and of the server's round outputs, in one place (and importable
without torch, so the torch-free edge runtime reads the same names).

A studio run folder (`fedgai train-local --out`, or `<output root>/<site>` in a federation)::

    checkpoints/last.pt   G (with AdaIN_SD statistics), D, optimisers, config, metadata: resume and sketch
    split.json            the held-out split (train / val / test stems)
    metadata.json         studio, its folder, encoder, CLIP status, DP mode, device
    config.json           the config of a train-local run
    history.jsonl         train-local: one record per epoch
    metrics.jsonl         federated studio: one record per round
    grids/                epoch_NNN.png (train-local), round-NNN.png (federated)
    tensorboard/          the studio's own TensorBoard log
    dp_ledger.json        record-level DP: every release charged on this studio's data
    run.json              the studio folder a train-local --resume must match

The server writes ``round-NNN.json`` (one summary per round) and ``global-round-NNN.*`` (the global model).

A `fedgai simulate` workspace::

    data/           generated demo studios (kept by --overwrite, reused)
    studios/<site>  each studio's run folder (above)
    server_state/   the server's resume state
    nvflare/        NVFlare's simulator workspace (server/simulate_job/ holds the round summaries; local/ is
                    site configuration the simulator copies to every site)
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"
CHECKPOINT = Path(CHECKPOINTS) / "last.pt"
SPLIT_FILE = "split.json"
METADATA = "metadata.json"
CONFIG = "config.json"
EPOCH_RECORDS = "history.jsonl"
ROUND_RECORDS = "metrics.jsonl"
GRIDS = "grids"
TENSORBOARD = "tensorboard"
DP_LEDGER = "dp_ledger.json"
RUN_RECORD = "run.json"
ROUND_SUMMARY_GLOB = "round-[0-9][0-9][0-9].json"
WORKSPACE_DATA = "data"
WORKSPACE_STUDIOS = "studios"
WORKSPACE_STATE = "server_state"
WORKSPACE_NVFLARE = "nvflare"
WORKSPACE_SLOTS = "training_slots"  # lock files: studios on one machine take turns (federated/studio/slots.py)


def round_summary_name(rnd: int) -> str:
    """The server's summary of round ``rnd``."""
    return f"round-{rnd:03d}.json"


def global_model_name(rnd: int, suffix: str) -> str:
    """The global model after round ``rnd`` (``.pt`` plain, ``.npz`` encrypted)."""
    return f"global-round-{rnd:03d}{suffix}"
