"""Every meta key fedgai puts on NVFlare's wire, and which of them a studio may release.

The studio script (federated/studio/client.py, ``releasable``) and the last filter before the wire
(federated/studio/audit.py) both apply ``release_meta``, so a new key is listed once and the studio's own send path
gates the meta whatever filters a job installs. No torch, no DP machinery: the server reads these without
loading either.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from nvflare.apis.dxo import MetaKey

# server -> studio
CONFIG_META_KEY = "fedgai_config"  # the job's settings (FLModel meta of every task)
VERSION_META_KEY = "fedgai_version"  # the fedgai version a job was exported with (meta.json)
LAYOUT_META_KEY = "fedgai_layout"  # HE: which entry sits where in the packed ciphertext
# studio -> server
FINGERPRINT_META_KEY = "fedgai_feature_space"  # the studio's encoder / image-size fingerprint
DP_EPSILON_META_KEY = "dp_epsilon"
DP_DELTA_META_KEY = "dp_delta"
DP_NOISE_META_KEY = "dp_noise_multiplier"
DP_CLIP_META_KEY = "dp_clip_norm"
BUDGET_EXHAUSTED_KEY = "dp_budget_exhausted"  # the studio's privacy budget is spent: no update follows
# fed.mode fedgai_struct: whether the studio took the received generator stages this round (its style guard's
# one bit; the scores behind it stay at the studio)
TOOK_SHARED_STAGES_KEY = "fedgai_took_shared_stages"
# inside a studio only: the HE decryptor tells the training script it refused the decrypted global
GLOBAL_REFUSED_META_KEY = "fedgai_global_refused"

# Under DP every studio sends this count (NUM_STEPS_CURRENT_ROUND): the true pair count would leak the data set's
# size un-noised, so every studio weighs the same.
DP_WEIGHT = 1

# The DP bookkeeping (client.py, privacy/filter.py): its presence marks a DP result.
DP_META = frozenset({DP_EPSILON_META_KEY, DP_DELTA_META_KEY, DP_NOISE_META_KEY, DP_CLIP_META_KEY,
                     BUDGET_EXHAUSTED_KEY})
# What a DP result may carry: the (equal) weight, the DP bookkeeping (settings, this job's epsilon, the budget
# flag) and the encoder fingerprint (derived from the config, not from the studio's data). Every value is inside
# epsilon or independent of the pairs; the style guard's bit is neither, so under DP it is not sent (issue 24).
DP_RELEASABLE_META = DP_META | {MetaKey.NUM_STEPS_CURRENT_ROUND, FINGERPRINT_META_KEY}
# NVFlare's own records on a result: which filters ran, and what the HE encryptor encrypted (not data).
HE_RECORD_META = frozenset({MetaKey.FILTER_HISTORY, MetaKey.PROCESSED_KEYS, MetaKey.PROCESSED_ALGORITHM})
# Everything a result's meta may carry across the wire: the weight, the metrics (not under DP), the encoder
# fingerprint, the DP bookkeeping, the style guard's bit, NVFlare's filter history and the HE encryptor's record of
# what it encrypted.
RELEASABLE_META = DP_META | HE_RECORD_META | {MetaKey.NUM_STEPS_CURRENT_ROUND, MetaKey.INITIAL_METRICS,
                                              FINGERPRINT_META_KEY, TOOK_SHARED_STAGES_KEY}


def release_meta(meta: dict, dp: bool) -> tuple[dict, list[str]]:
    """(the meta that may leave, the keys dropped): only RELEASABLE_META; under DP (``dp`` or DP bookkeeping in
    the meta) only DP_RELEASABLE_META and NVFlare's filter records (no metrics, no style bit) and a weight of 1."""
    dp = dp or bool(DP_META & set(meta))
    allowed = DP_RELEASABLE_META | HE_RECORD_META if dp else RELEASABLE_META
    kept = {k: v for k, v in meta.items() if k in allowed}
    if dp:
        kept[MetaKey.NUM_STEPS_CURRENT_ROUND] = DP_WEIGHT
    return kept, sorted(str(k) for k in set(meta) - set(kept))


def config_hash(config: Mapping[str, Any]) -> str:
    """A job config's short hash (the dict under CONFIG_META_KEY): the studio checks every task's against the
    config it accepted, and both sides key resume state by it."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
