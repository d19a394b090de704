"""The studio side of the FedGAI job with homomorphic encryption: the studio's own encryption of its update in
the compact format (he_wire.py; ``seal``, applied by StudioExecutor whatever filters the job installs, and the
job's filter, which then only checks it), the filter that decrypts the global discriminator entries the server
sends and checks them before the studio loads them, and decrypting a saved encrypted global with a studio's
context.

Why the studio checks the global: each studio multiplies its own update by its own pair count before
encrypting, and the server cannot look inside a ciphertext, so one studio can put 1e9 x its update (or 1e12,
which also corrupts every other slot through CKKS precision) into the aggregate. Only the studios can see the
result: ``GlobalCheck`` (global_check.py) refuses a decrypted global that is not finite or that moved too far;
the studio then keeps its own D for that round. The studio's script checks every global again with its own
GlobalCheck (client.py), so the check holds where a job leaves this filter out. Both keep their memory in the
site's own folder, per job, so restarting a studio does not reset them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.apis.dxo import DXO, MetaKey
from nvflare.apis.fl_constant import FilterKey, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.constant import HE_ALGORITHM_CKKS
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor

from fedgai.config import FedgaiConfig
from fedgai.federated.he_keys import CLIENT_CONTEXT, layout_of, restore_layout
from fedgai.federated.he_wire import decrypt_packed, encrypt_packed
from fedgai.federated.round import initial_global
from fedgai.federated.studio.global_check import GlobalCheck, site_check_file
from fedgai.privacy.mechanism import UnsafeUpdateError
from fedgai.wire import GLOBAL_REFUSED_META_KEY, LAYOUT_META_KEY

# DXO meta key (decryptor -> client script): why the studio refused the decrypted global; absent when loaded.

logger = logging.getLogger(__name__)


# The jobs whose results StudioExecutor encrypts, in this (the studio's) process: registered when it starts a job.
# The studio script runs an HE job only if its job is here, so a job that names another executor (an unhardened
# kit allows NVFlare's plain ClientAPIExecutor) cannot have the script send its update in clear.
_SEALED_JOBS: set[str] = set()


def seal_job(job_id: str) -> None:
    """StudioExecutor will encrypt every result of ``job_id``."""
    _SEALED_JOBS.add(job_id)


def sealing_problem(he: bool, job_id: str | None) -> str | None:
    """Why the studio script must not run this job (privacy.he = ``he``) under the executor it has, or None."""
    if he and job_id not in _SEALED_JOBS:
        return ("privacy.he: this studio encrypts its update in fedgai's StudioExecutor, which does not run job "
                f"{job_id!r}; under any other executor the update would leave in clear")
    return None


def encrypt_entries(context: ts.Context, params: Mapping[str, Any], weight: float) -> dict[str, bytes]:
    """Every entry times ``weight`` (the studio's pair count, or 1 under DP), in the compact format."""
    return {key: encrypt_packed(context, np.asarray(value, dtype=np.float64) * np.float64(weight))
            for key, value in params.items()}


def is_sealed(dxo: DXO) -> bool:
    """Whether every entry of a result is a compact ciphertext and its meta records CKKS encryption of each."""
    processed = dxo.get_meta_prop(MetaKey.PROCESSED_KEYS) or {}
    return (dxo.get_meta_prop(MetaKey.PROCESSED_ALGORITHM) == HE_ALGORITHM_CKKS and bool(dxo.data)
            and all(isinstance(value, bytes) and processed.get(key) is True for key, value in dxo.data.items()))


def seal(dxo: DXO, context: ts.Context) -> DXO:
    """The studio's own encryption of its update (issue 24 §1: privacy.he holds only where the studio produced
    the ciphertexts), weighted by its NUM_STEPS_CURRENT_ROUND as the server's aggregator expects."""
    weight = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
    if not isinstance(weight, int | float) or isinstance(weight, bool):
        raise ValueError(f"the result carries no sample count to weigh by before encryption (got {weight!r})")
    data = encrypt_entries(context, dxo.data, float(weight))
    meta = {**dxo.meta, MetaKey.PROCESSED_KEYS: dict.fromkeys(data, True),
            MetaKey.PROCESSED_ALGORITHM: HE_ALGORITHM_CKKS}
    return DXO(dxo.data_kind, data=data, meta=meta)


class PackedHEModelEncryptor(HEModelEncryptor):
    """HEModelEncryptor that sends every entry in the compact format: two values per CKKS slot, seeded
    symmetric encryption, serialised bytes without a context (he_wire.py; the stock filter sends one real
    value per slot, both ciphertext halves and a copy of the context with every entry: ~18x the plaintext).
    Like the stock filter with weigh_by_local_iter, each entry is multiplied by the studio's pair count first.
    """

    def __init__(self, tenseal_context_file: str = CLIENT_CONTEXT, weigh_by_local_iter: bool = True):
        super().__init__(tenseal_context_file=tenseal_context_file, weigh_by_local_iter=weigh_by_local_iter)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        """A checked no-op on what the studio encrypted itself (StudioExecutor); encrypts anything else."""
        if is_sealed(dxo):
            self.log_info(fl_ctx, f"the studio encrypted all {len(dxo.data)} entries itself; passing them on")
            return dxo
        return super().process_dxo(dxo, shareable, fl_ctx)

    def encryption(self, params: dict, fl_ctx: FLContext) -> tuple[dict, dict]:
        encrypted = encrypt_entries(self.tenseal_context, params, self.n_iter if self.weigh_by_local_iter else 1.0)
        self.log_info(fl_ctx, f"encrypted {len(encrypted)} entries, {sum(map(len, encrypted.values()))} bytes")
        return encrypted, dict.fromkeys(encrypted, True)


class ShapedHEModelDecryptor(HEModelDecryptor):
    """HEModelDecryptor that gives the client script arrays of the right shape and dtype.

    Why a subclass: the global's entries are packed (he_wire.py), which the stock filter cannot read; it also
    returns flat Python lists and looks every key of the global model up in PROCESSED_KEYS, which raises
    KeyError when only some entries were aggregated. Here entries not marked encrypted pass unchanged and the
    layout sent by ``FedgaiHEShareableGenerator`` restores each entry.
    """

    def __init__(self, tenseal_context_file: str = CLIENT_CONTEXT, change_factor: float = 10.0,
                 change_history: int = 3, first_change_factor: float = 10.0):
        super().__init__(tenseal_context_file=tenseal_context_file)
        self._layout: Mapping[str, Mapping[str, Any]] = {}
        self.check = GlobalCheck(factor=change_factor, history=change_history, first_factor=first_change_factor)

    def decryption(self, params: dict, encrypted_layers: dict, fl_ctx: FLContext) -> dict:
        for key, value in params.items():
            if isinstance(value, bytes):
                if key not in self._layout:
                    raise ValueError(f"{key}: encrypted, but the server sent no shape for it")
                params[key] = decrypt_packed(self.tenseal_context, value, int(np.prod(self._layout[key]["shape"])))
            elif encrypted_layers.get(key, False):
                raise ValueError(f"{key} is marked encrypted but arrived as {type(value).__name__}")
        self.log_info(fl_ctx, f"decrypted {sum(map(bool, encrypted_layers.values()))} of {len(params)} entries")
        return params

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        if fl_ctx.get_prop(FLContextKey.FILTER_DIRECTION) == FilterKey.OUT:
            # A job binding the decryptor to the studio's results would send the studio's update in clear.
            raise UnsafeUpdateError(f"{type(self).__name__} decrypts what the studio receives, never what it sends")
        self._layout = dxo.get_meta_prop(LAYOUT_META_KEY) or {}
        result = super().process_dxo(dxo, shareable, fl_ctx)
        if result is None:  # nothing encrypted (round 0's plaintext seeded D): checked, and the first reference
            result = dxo
        else:
            result.data = restore_layout(result.data, self._layout)
        self._review(result, fl_ctx)
        result.update_shareable(shareable)
        return result

    def _review(self, dxo: DXO, fl_ctx: FLContext) -> None:
        """Refuse a global the check rejects: the studio gets the reason and the last accepted global (none if
        there is none yet) instead, so nothing refused reaches the training script. In a job, the check's memory
        is the site's (global_check.site_check_file), so a restarted studio keeps its bound."""
        job_id = fl_ctx.get_job_id()
        if self.check.state_file is None and job_id:
            root = fl_ctx.get_engine().get_workspace().get_root_dir()
            self.check.state_file = site_check_file(root, job_id, "decryptor")
        reason = self.check.review(dxo.data)
        if reason is None:
            return
        reason = f"refusing the decrypted global model: {reason}; keeping this studio's own D for the round"
        self.log_warning(fl_ctx, reason)
        dxo.data = {key: value.astype(self._layout.get(key, {}).get("dtype", value.dtype))
                    for key, value in (self.check.last or {}).items()}
        dxo.set_meta_prop(GLOBAL_REFUSED_META_KEY, reason)


def load_encrypted_global(npz_file: str | Path, client_context: str | Path, cfg: FedgaiConfig
                          ) -> dict[str, np.ndarray]:
    """Decrypt a ``global-round-NNN.npz`` written by DiscriminatorPersistor (needs a studio's context)."""
    context = ts.context_from(Path(client_context).read_bytes())
    layout = layout_of(initial_global(cfg))
    with np.load(npz_file) as stored:
        values = {key: decrypt_packed(context, stored[key].tobytes(), int(np.prod(layout[key]["shape"])))
                  for key in stored.files}
    return restore_layout(values, layout)
