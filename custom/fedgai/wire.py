"""Every meta key fedgai puts on NVFlare's wire, and which of them a studio may release.

The studio script (federated/client.py, ``releasable``) and the last filter before the wire
(federated/audit.py, ``release_meta``) both read their allow-lists here, so a new key is listed once. No
torch, no DP machinery: the server reads these without loading either.
"""

from __future__ import annotations

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
# What the studio script lets a DP result carry: the (equal) weight, epsilon, the budget flag, the encoder
# fingerprint (derived from the config, not from the studio's data) and the style guard's bit (not covered by
# epsilon: docs/privacy.md).
DP_RELEASABLE_META = frozenset({MetaKey.NUM_STEPS_CURRENT_ROUND, DP_EPSILON_META_KEY, BUDGET_EXHAUSTED_KEY,
                                FINGERPRINT_META_KEY, TOOK_SHARED_STAGES_KEY})
# Everything a result's meta may carry across the wire: the weight, the metrics (not under DP), the encoder
# fingerprint, the DP bookkeeping, the style guard's bit, NVFlare's filter history and the HE encryptor's record of
# what it encrypted.
RELEASABLE_META = DP_META | {MetaKey.NUM_STEPS_CURRENT_ROUND, MetaKey.INITIAL_METRICS, FINGERPRINT_META_KEY,
                             MetaKey.FILTER_HISTORY, MetaKey.PROCESSED_KEYS, MetaKey.PROCESSED_ALGORITHM,
                             TOOK_SHARED_STAGES_KEY}
