"""The utility curve's membership audit (benchmarks/dp_curve.py): members are exactly the pairs a studio trained on,
non-members pairs it never trained on, as many of each, and the AUC comes with its standard error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fedgai.config import profile
from fedgai.evaluation.membership import hanley_mcneil_se
from fedgai.trainer import StudioTrainer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def dp_curve(monkeypatch):
    """benchmarks/dp_curve.py as a module (benchmarks/ is not a package; it imports its sibling federation_value)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("dp_curve_benchmark", BENCHMARKS / "dp_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_members_are_the_trained_pairs_and_nonmembers_were_never_trained_on(dp_curve, studio_dir, tmp_path):
    trainer = StudioTrainer(profile("test").with_overrides({"train.max_pairs": 6}), studio_dir, tmp_path)
    members, nonmembers = dp_curve.membership_sets(trainer)
    trained = {photo.stem for photo, _ in trainer.dataset.pairs}
    member_stems = {photo.stem for photo, _ in members.pairs}
    outside = {photo.stem for photo, _ in nonmembers.pairs}
    assert member_stems == trained and len(members) == len(nonmembers) == 6
    assert not outside & trained  # held-out or beyond max_pairs: never in a gradient
    audit = dp_curve.membership(trainer)
    assert 0 <= audit["mia_auc"] <= 1 and audit["members"] == audit["nonmembers"] == 6
    assert audit["mia_se"] == pytest.approx(hanley_mcneil_se(audit["mia_auc"], 6, 6))


def test_the_auc_standard_error_with_two_dozen_pairs_a_side_is_about_0_08():
    assert hanley_mcneil_se(0.5, 24, 24) == pytest.approx(0.0842, abs=1e-4)
    assert hanley_mcneil_se(0.9, 24, 24) < hanley_mcneil_se(0.5, 24, 24)  # a clear signal is known better
