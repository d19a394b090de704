"""A studio's gate and record of exactly what it sends: the last filter on every outgoing task result, and a
listener on every federated event the site fires (the other way out: NVFlare's analytics stream, for one).

The gate (``wire.release_meta``, which the studio script applies too): a result's meta keeps only the keys
listed in RELEASABLE_META, whatever put others there (the trainer, a job's filter, NVFlare). Under DP - the
result carries DP bookkeeping, or the site's policy (privacy/policy.py) demands DP - the metrics go too and the
sample count becomes 1: no component before this one can make a DP studio send its pair count or its losses.

Every outgoing result adds one line to ``<site run dir>/fedgai_outbound/outbound.jsonl``: its round, return
code, every array's key, shape, dtype and size, the type of every meta entry and the value of every scalar
one, as they are about to be transmitted (after any DP filter). With ``save_arrays`` the arrays themselves go
to ``msg-NNN.npz`` (NNN = the line's ``seq``), which is how the tests check that the server's aggregate is
the weighted mean of what really crossed the wire. Every outgoing federated event adds a line to
``events.jsonl`` in the same folder: its type and its payload's keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from fedgai.privacy.policy import load_site_policy
from fedgai.wire import release_meta

AUDIT_DIR = "fedgai_outbound"
LOG_FILE = "outbound.jsonl"
EVENT_LOG_FILE = "events.jsonl"
SCALARS = (bool, int, float, str)


def describe(data: dict) -> dict[str, dict]:
    """{key: {"type", "shape", "dtype", "nbytes"}} for arrays, {key: {"type"}} for anything else."""
    out = {}
    for key, value in data.items():
        entry = {"type": type(value).__name__}
        if isinstance(value, np.ndarray):
            entry.update(shape=list(value.shape), dtype=str(value.dtype), nbytes=int(value.nbytes))
        out[key] = entry
    return out


def site_requires_dp(fl_ctx: FLContext) -> bool:
    """Whether this site's privacy policy demands DP of every job (False outside a site or without a policy)."""
    if fl_ctx.get_engine() is None:
        return False
    policy = load_site_policy(fl_ctx.get_workspace().get_root_dir())
    return policy is not None and policy.min_dp != "none"


def append_record(fl_ctx: FLContext, record: dict, name: str = LOG_FILE) -> tuple[Path, int]:
    """Append one line (with its ``seq``) to the site's log ``name``; returns the log's folder and the seq."""
    out = Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())) / AUDIT_DIR
    out.mkdir(parents=True, exist_ok=True)
    log = out / name
    seq = len(log.read_text().splitlines()) if log.is_file() else 0
    with open(log, "a") as f:
        f.write(json.dumps({"seq": seq, **record}) + "\n")
    return out, seq


class OutboundAudit(Filter):
    """Task-result filter, the last before the wire: keeps only the releasable meta and records what leaves."""

    def __init__(self, save_arrays: bool = False):
        super().__init__()
        self.save_arrays = save_arrays

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        record = {
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),  # None on error replies
            "site": fl_ctx.get_identity_name(),
            "return_code": shareable.get_return_code(),
        }
        data = {}
        if record["return_code"] == ReturnCode.OK:  # error replies carry no payload
            dxo = from_shareable(shareable)
            dxo.meta, dropped = release_meta(dxo.meta, site_requires_dp(fl_ctx))
            if dropped:
                self.log_info(fl_ctx, f"meta not released: {dropped}")
            shareable = dxo.update_shareable(shareable)
            data = dxo.data or {}
            record.update(data_kind=dxo.data_kind, data=describe(data),
                          meta={key: type(value).__name__ for key, value in dxo.meta.items()},
                          meta_values={k: v for k, v in dxo.meta.items() if isinstance(v, SCALARS)}, dropped=dropped)
        out, seq = append_record(fl_ctx, record)
        if self.save_arrays and data:
            np.savez(out / f"msg-{seq:03d}.npz", **{k: v for k, v in data.items() if isinstance(v, np.ndarray)})
        return shareable


class OutboundEventAudit(FLComponent):
    """Records every federated event this site sends (scope FEDERATION, direction out), e.g. the analytics
    that ConvertToFedEvent streams to the server's TensorBoard receiver: result filters never see these."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if fl_ctx.get_prop(FLContextKey.EVENT_SCOPE, EventScope.LOCAL) != EventScope.FEDERATION:
            return
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA, None)
        if isinstance(data, Shareable) and data.get_header(FedEventHeader.DIRECTION, "out") != "out":
            return  # an event received from the server
        keys = sorted(str(k) for k in data) if isinstance(data, Shareable) else []
        append_record(fl_ctx, {"event_type": event_type, "site": fl_ctx.get_identity_name(), "keys": keys},
                      EVENT_LOG_FILE)
