"""HE key tooling and what both sides of the ``fedgai_he`` job agree on: the CKKS parameters, the TenSEAL
context files, and the layout that turns a flat decrypted vector back into a D entry.

Keys: in production the TenSEAL contexts come from provisioning (``HEBuilder``) inside each startup kit; for
the simulator ``prepare_simulator_he`` writes throw-away contexts - NOT FOR PRODUCTION. The server's context
has no secret key, so it can neither read an update nor the global model.

The job's parts by side: he_server.py (cloud), he_studio.py (studio filters); he_job.py assembles them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts
from nvflare.lighter.constants import ProvFileName
from nvflare.lighter.impl.he import HEBuilder

# DXO meta key (server -> studio): {wire key: {"shape": [...], "dtype": "float32"}} of the global entries.
SERVER_CONTEXT = ProvFileName.SERVER_CONTEXT_TENSEAL
CLIENT_CONTEXT = ProvFileName.CLIENT_CONTEXT_TENSEAL
# CKKS parameters for aggregation by additions and one plaintext multiplication (why: he_wire.py), used by
# provisioning (project.yml, nvflare's HEBuilder) and the simulator alike. 128-bit security by the HE standard.
HE_PARAMS: dict[str, Any] = {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": [50, 40, 19], "scale_bits": 40}
SIMULATOR_MARKER = "NOT_FOR_PRODUCTION.txt"

logger = logging.getLogger(__name__)


class SecretKeyFound(ValueError):
    """A TenSEAL context that must be public (the server's) holds a secret key."""


def check_no_secret_key(context_file: str | Path) -> None:
    """Raise SecretKeyFound if the context file could decrypt; the server's must not be able to."""
    context = ts.context_from(Path(context_file).read_bytes())
    if context.is_private() or context.has_secret_key():
        raise SecretKeyFound(f"{context_file} holds a TenSEAL secret key; a server context must be public")


def make_contexts(params: Mapping[str, Any] = HE_PARAMS) -> tuple[bytes, bytes]:
    """(server context, client context) made exactly as provisioning makes them (nvflare's HEBuilder)."""
    builder = HEBuilder(**params)
    # HEBuilder.initialize only creates the TenSEAL context; it reads neither the project nor the provision ctx.
    builder.initialize(None, None)
    return builder.get_serialized_context(is_client=False), builder.get_serialized_context(is_client=True)


def prepare_simulator_he(workspace: Path) -> None:
    """Write throw-away HE contexts into ``<workspace>/startup/`` for NVFlare's simulator. NOT FOR PRODUCTION.

    The simulator copies that folder to every site, so every simulated site (the server too) can read the
    client context with its secret key; only provisioned startup kits keep it away from the server.
    """
    startup = Path(workspace) / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    server, client = make_contexts()
    (startup / SERVER_CONTEXT).write_bytes(server)
    (startup / CLIENT_CONTEXT).write_bytes(client)
    (startup / SIMULATOR_MARKER).write_text(
        "NOT FOR PRODUCTION: throw-away TenSEAL contexts for NVFlare's simulator, written by\n"
        "fedgai.federated.he_keys.prepare_simulator_he. In the simulator every site sees the secret key.\n"
        "Real deployments get their contexts from `nvflare provision` (HEBuilder), see docs/deployment.md.\n"
    )
    check_no_secret_key(startup / SERVER_CONTEXT)
    logger.warning("HE contexts for the simulator written to %s - NOT FOR PRODUCTION", startup)


def layout_of(params: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """{key: {"shape", "dtype"}}: what a studio needs to turn a flat decrypted vector back into the entry."""
    return {key: {"shape": list(value.shape), "dtype": str(value.dtype)} for key, value in params.items()}


def restore_layout(params: Mapping[str, Any], layout: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Reshape and cast decrypted entries to their layout; entries without a layout must already be arrays."""
    out = {}
    for key, value in params.items():
        if key in layout:
            out[key] = np.asarray(value, dtype=layout[key]["dtype"]).reshape(layout[key]["shape"])
        elif isinstance(value, np.ndarray):
            out[key] = value
        else:
            raise ValueError(f"{key}: decrypted to {type(value).__name__} but the server sent no shape for it")
    return out
