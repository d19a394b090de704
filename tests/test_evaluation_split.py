"""The held-out split: deterministic, disjoint, stable when pairs are added, and never trained on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedgai.data import load_studio
from fedgai.data.split import SplitError, StudioSplit, run_split, split_counts, split_studio
from fedgai.trainer import StudioTrainer


def test_split_is_deterministic_disjoint_and_covers_every_pair(studio_dir):
    studio = load_studio(studio_dir)
    a, b = split_studio(studio, 0, 0.1, 0.2), split_studio(studio, 0, 0.1, 0.2)
    assert a == b
    sides = [set(a.train), set(a.val), set(a.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert set().union(*sides) == {p.stem for p, _ in studio.pairs}
    assert len(a.test) == round(0.2 * len(studio.pairs)) and len(a.val) >= 1
    assert split_studio(studio, 1, 0.1, 0.2).test != a.test  # the seed changes which pairs are held out


def test_adding_pairs_keeps_every_old_test_pair_on_its_side(studio_dir, tmp_path):
    """A pair's side depends on (seed, stem) only: new photos never move an old test pair into training."""
    small = tmp_path / "small"
    for kind in ("photos", "sketches"):
        (small / kind).mkdir(parents=True)
        for f in sorted((studio_dir / kind).iterdir())[:20]:
            shutil.copy(f, small / kind / f.name)
    before = split_studio(load_studio(small), 3, 0.1, 0.2)
    after = split_studio(load_studio(studio_dir), 3, 0.1, 0.2)
    assert not set(before.test) & set(after.train)


def test_too_few_pairs_is_a_clear_error():
    with pytest.raises(SplitError, match="too few"):
        split_counts(3, 0.1, 0.2)
    assert split_counts(10, 0.0, 0.2) == (0, 2)


def test_stored_split_round_trips_and_refuses_another_setting(studio_dir, tmp_path):
    studio = load_studio(studio_dir)
    first = run_split(studio, tmp_path, 0, 0.1, 0.2)
    assert StudioSplit.load(tmp_path / "split.json") == first
    assert run_split(studio, tmp_path, 0, 0.1, 0.2) == first
    with pytest.raises(SplitError, match="new run folder"):
        run_split(studio, tmp_path, 1, 0.1, 0.2)


def test_trainer_never_sees_test_pairs(test_cfg, studio_dir, tmp_path):
    trainer = StudioTrainer(test_cfg, studio_dir, tmp_path / "run")
    trained = {Path(p).stem for p, _ in trainer.dataset.pairs}
    assert trained <= set(trainer.split.train) and len(trained) == test_cfg.train.max_pairs
    assert not trained & set(trainer.split.test) and not trained & set(trainer.split.val)
    assert {Path(p).stem for p, _ in trainer.val.pairs} == set(trainer.split.val)
    assert set(trainer.quality()) == {"val_l1", "val_gram", "val_ink_iou"}
