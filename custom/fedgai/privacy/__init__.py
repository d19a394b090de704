"""Differential privacy for fedgai: client-level DP-FedAvg (a result filter) and record-level DP on G and D.

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
from fedgai.privacy.filter import LEDGER_FILE, GaussianDPFilter, budget_allows_next_round, site_ledger_path
from fedgai.privacy.mechanism import (
    UnsafeUpdateError,
    check_parameters,
    clip_and_noise,
    secure_rng,
    update_norm,
    validate_update,
)
from fedgai.privacy.record import RecordLevelDP, fresh_noise_generator, noised_mean, noised_sum, statistics_sum
from fedgai.wire import BUDGET_EXHAUSTED_KEY

__all__ = [
    "ACCOUNTANTS",
    "BUDGET_EXHAUSTED_KEY",
    "CLIENT_LEVEL_SAMPLE_RATE",
    "LEDGER_FILE",
    "GaussianDPFilter",
    "LedgerError",
    "PrivacyBudgetExceeded",
    "PrivacyLedger",
    "RecordLevelDP",
    "Step",
    "UnsafeUpdateError",
    "fresh_noise_generator",
    "budget_allows_next_round",
    "calibrate_noise",
    "check_parameters",
    "clip_and_noise",
    "compute_epsilon",
    "noised_mean",
    "noised_sum",
    "site_ledger_path",
    "record_level_schedule",
    "secure_rng",
    "statistics_sum",
    "update_norm",
    "validate_update",
]
