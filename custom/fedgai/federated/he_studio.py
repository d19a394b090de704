"""The studio side of the FedGAI job with homomorphic encryption: the filter that decrypts the global
discriminator entries the server sends (NVFlare's HEModelEncryptor encrypts the studio's update as it is),
and decrypting a saved encrypted global with a studio's context."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tenseal as ts
from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_opt.he.homomorphic_encrypt import deserialize_nested_dict
from nvflare.app_opt.he.model_decryptor import HEModelDecryptor

from fedgai.config import FedgaiConfig
from fedgai.federated.controller import initial_global
from fedgai.federated.he_keys import LAYOUT_META_KEY, layout_of, restore_layout


class ShapedHEModelDecryptor(HEModelDecryptor):
    """HEModelDecryptor that gives the client script arrays of the right shape and dtype.

    Why a subclass: the stock filter returns flat Python lists (ciphertexts are flat vectors) and looks every
    key of the global model up in PROCESSED_KEYS, which raises KeyError when only some entries were
    aggregated. Here entries not marked encrypted pass unchanged and the layout sent by
    ``FedgaiHEShareableGenerator`` restores each entry.
    """

    def decryption(self, params: dict, encrypted_layers: dict, fl_ctx: FLContext) -> dict:
        deserialize_nested_dict(params, context=self.tenseal_context)
        for key, value in params.items():
            if isinstance(value, ts.CKKSVector):
                params[key] = np.asarray(value.decrypt(secret_key=self.tenseal_context.secret_key()))
            elif encrypted_layers.get(key, False):
                raise ValueError(f"{key} is marked encrypted but arrived as {type(value).__name__}")
        self.log_info(fl_ctx, f"decrypted {sum(map(bool, encrypted_layers.values()))} of {len(params)} entries")
        return params

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        layout = dxo.get_meta_prop(LAYOUT_META_KEY) or {}
        result = super().process_dxo(dxo, shareable, fl_ctx)
        if result is None:
            return None
        result.data = restore_layout(result.data, layout)
        result.update_shareable(shareable)
        return result


def load_encrypted_global(npz_file: str | Path, client_context: str | Path, cfg: FedgaiConfig
                          ) -> dict[str, np.ndarray]:
    """Decrypt a ``global-round-NNN.npz`` written by DiscriminatorPersistor (needs a studio's context)."""
    context = ts.context_from(Path(client_context).read_bytes())
    layout = layout_of(initial_global(cfg))
    with np.load(npz_file) as stored:
        vectors = {key: ts.ckks_vector_from(context, stored[key].tobytes()) for key in stored.files}
    return restore_layout({key: vector.decrypt() for key, vector in vectors.items()}, layout)
