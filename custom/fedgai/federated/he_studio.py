"""The studio side of the FedGAI job with homomorphic encryption: the filter that encrypts the studio's update
in the compact format (he_wire.py), the filter that decrypts the global discriminator entries the server
sends, and decrypting a saved encrypted global with a studio's context."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor
from nvflare.app_opt.he.model_encryptor import HEModelEncryptor

from fedgai.config import FedgaiConfig
from fedgai.federated.controller import initial_global
from fedgai.federated.he_keys import CLIENT_CONTEXT, LAYOUT_META_KEY, layout_of, restore_layout
from fedgai.federated.he_wire import decrypt_packed, encrypt_packed


class PackedHEModelEncryptor(HEModelEncryptor):
    """HEModelEncryptor that sends every entry in the compact format: two values per CKKS slot, seeded
    symmetric encryption, serialised bytes without a context (he_wire.py; the stock filter sends one real
    value per slot, both ciphertext halves and a copy of the context with every entry: ~18x the plaintext).
    Like the stock filter with weigh_by_local_iter, each entry is multiplied by the studio's pair count first.
    """

    def __init__(self, tenseal_context_file: str = CLIENT_CONTEXT, weigh_by_local_iter: bool = True):
        super().__init__(tenseal_context_file=tenseal_context_file, weigh_by_local_iter=weigh_by_local_iter)

    def encryption(self, params: dict, fl_ctx: FLContext) -> tuple[dict, dict]:
        weight = np.float64(self.n_iter) if self.weigh_by_local_iter else np.float64(1.0)
        encrypted = {key: encrypt_packed(self.tenseal_context, np.asarray(value, dtype=np.float64) * weight)
                     for key, value in params.items()}
        self.log_info(fl_ctx, f"encrypted {len(encrypted)} entries, {sum(map(len, encrypted.values()))} bytes")
        return encrypted, dict.fromkeys(encrypted, True)


class ShapedHEModelDecryptor(HEModelDecryptor):
    """HEModelDecryptor that gives the client script arrays of the right shape and dtype.

    Why a subclass: the global's entries are packed (he_wire.py), which the stock filter cannot read; it also
    returns flat Python lists and looks every key of the global model up in PROCESSED_KEYS, which raises
    KeyError when only some entries were aggregated. Here entries not marked encrypted pass unchanged and the
    layout sent by ``FedgaiHEShareableGenerator`` restores each entry.
    """

    def __init__(self, tenseal_context_file: str = CLIENT_CONTEXT):
        super().__init__(tenseal_context_file=tenseal_context_file)
        self._layout: Mapping[str, Mapping[str, Any]] = {}

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
        self._layout = dxo.get_meta_prop(LAYOUT_META_KEY) or {}
        result = super().process_dxo(dxo, shareable, fl_ctx)
        if result is None:
            return None
        result.data = restore_layout(result.data, self._layout)
        result.update_shareable(shareable)
        return result


def load_encrypted_global(npz_file: str | Path, client_context: str | Path, cfg: FedgaiConfig
                          ) -> dict[str, np.ndarray]:
    """Decrypt a ``global-round-NNN.npz`` written by DiscriminatorPersistor (needs a studio's context)."""
    context = ts.context_from(Path(client_context).read_bytes())
    layout = layout_of(initial_global(cfg))
    with np.load(npz_file) as stored:
        values = {key: decrypt_packed(context, stored[key].tobytes(), int(np.prod(layout[key]["shape"])))
                  for key in stored.files}
    return restore_layout(values, layout)
