"""Differential privacy for fedgai: client-level DP-FedAvg (a result filter) and record-level DP-SGD on D.

See docs/privacy.md for the threat model, what each mode covers, and the sizing table.
"""

from fedgai.privacy.accountant import (
    ACCOUNTANTS,
    CLIENT_LEVEL_SAMPLE_RATE,
    LedgerError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    Step,
    calibrate_noise,
    compute_epsilon,
    record_level_schedule,
)
from fedgai.privacy.dpsgd import (
    attach_dpsgd,
    fresh_noise_generator,
    make_dp_compatible,
    norm_layer_types,
    strip_spectral_norm,
)
from fedgai.privacy.filter import (
    BUDGET_EXHAUSTED_KEY,
    LEDGER_FILE,
    GaussianDPFilter,
    budget_allows_next_round,
    site_ledger_path,
)
from fedgai.privacy.mechanism import (
    UnsafeUpdateError,
    check_parameters,
    clip_and_noise,
    secure_rng,
    update_norm,
    validate_update,
)

__all__ = [
    "ACCOUNTANTS",
    "BUDGET_EXHAUSTED_KEY",
    "CLIENT_LEVEL_SAMPLE_RATE",
    "LEDGER_FILE",
    "GaussianDPFilter",
    "LedgerError",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "Step",
    "UnsafeUpdateError",
    "attach_dpsgd",
    "fresh_noise_generator",
    "budget_allows_next_round",
    "calibrate_noise",
    "check_parameters",
    "clip_and_noise",
    "compute_epsilon",
    "site_ledger_path",
    "make_dp_compatible",
    "norm_layer_types",
    "record_level_schedule",
    "secure_rng",
    "strip_spectral_norm",
    "update_norm",
    "validate_update",
]
