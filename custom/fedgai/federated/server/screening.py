"""Screening of what a studio sends in clear, shared by the plain and the HE server (no NVFlare here).

Both servers read the same clear meta of a contribution - pair count, epsilon, metrics, feature-space
fingerprint - and must judge it alike; under HE it is all the server can judge. ``screen_meta`` turns it into
plain JSON values and the first problem; ``adopt_feature_space`` fixes the federation's feature space from the
first round's fitting contributions and names every contribution from another one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedgai.config import FedgaiConfig
from fedgai.federated import fingerprint as fp
from fedgai.federated.server.server_state import Federation
from fedgai.federated.server.validation import clean_epsilon, clean_metrics, sample_count


@dataclass
class ClearMeta:
    """A contribution's clear meta after screening: summary fields (JSON values only), and the first problem."""

    record: dict[str, Any]
    count: int | None
    feature_space: dict[str, Any] | None
    problem: str | None


def screen_meta(count: Any, epsilon: Any, metrics: Any, space: Any, *, count_required: bool,
                space_required: bool = True) -> ClearMeta:
    """Check the clear meta a studio controls. ``count_required``: the pair count weighs the update (no DP);
    ``space_required``: the update is in a feature space (fed.mode local shares nothing)."""
    clean_count, count_problem = sample_count(count)
    clean_eps, epsilon_problem = clean_epsilon(epsilon)
    clean, nonfinite = clean_metrics(metrics)
    parsed, space_problem = fp.parse(space) if space_required else (None, None)
    record = {"num_samples": clean_count, "dp_epsilon": clean_eps, "metrics": clean, "nonfinite_metrics": nonfinite}
    problem = (count_problem if count_required else None) or epsilon_problem or space_problem
    return ClearMeta(record, clean_count, parsed, problem)


def adopt_feature_space(federation: Federation, spaces: Mapping[str, Any], cfg: FedgaiConfig) -> dict[str, str]:
    """site -> why its feature space does not fit the federation's, for the sites in ``spaces``.

    Until the federation has one, the majority of the spaces that fit the config is adopted (when one exists).
    """
    expected_by_config = fp.config_expectations(cfg)
    if federation.feature_space is None:
        fitting = {site: space for site, space in spaces.items()
                   if fp.update_problem(space, expected_by_config) is None}
        if fitting:
            federation.feature_space = fp.majority(fitting)
            if federation.feature_space is None:  # a tie: no space wins, so no update is taken this round
                return {site: fp.update_problem(space, None) for site, space in spaces.items()}
    expected = federation.feature_space or expected_by_config
    problems = {site: fp.update_problem(space, expected) for site, space in spaces.items()}
    return {site: problem for site, problem in problems.items() if problem}
