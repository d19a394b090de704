"""The unpaired-photo grid (benchmarks/federation_value.py --unpaired): each federation is compared with the local
run of the same seed, and the issue's target is judged from those paired changes."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def fv(monkeypatch):
    """benchmarks/federation_value.py as a module (benchmarks/ is not a package; it imports its sibling _pool)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("federation_value_benchmark", BENCHMARKS / "federation_value.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(variant: str, seed: int, small_fd: float, large_fd: float, small_style: float = 1.0) -> dict:
    """A scored run: one small (40 pairs) and one large (200 pairs) studio, every grid metric."""
    def scores(fd: float, style: float, pairs: int) -> dict:
        return {"FD-EffNetLite0": fd, "FD-Style": style, "Gram_dist": 0.1, "style_acc": 0.5, "SSIM": 0.5,
                "n_pairs": pairs}
    return {"variant": variant, "seed": seed,
            "studios": {"small": scores(small_fd, small_style, 40), "large": scores(large_fd, 1.0, 200)}}


def test_levels_parse_with_their_own_seeds_and_refuse_nonsense(fv):
    assert fv.grid_level("400") == (400, None)
    assert fv.grid_level("100:0,1") == (100, [0, 1])
    for bad in ("-1", "x", "100:a"):
        with pytest.raises(argparse.ArgumentTypeError):
            fv.grid_level(bad)
    assert fv.level_data(Path("runs/g/data"), 100) == Path("runs/g/data-u100")


def test_each_federation_is_compared_with_its_own_seeds_local_twin(fv):
    # Seed 0: the federation is 20 % better for the small studio; seed 1: equal. Seed 2 has no local twin: ignored.
    results = [run("local", 0, 100, 100), run("fed", 0, 80, 100, 0.8),
               run("local", 1, 200, 100), run("fed", 1, 200, 100),
               run("fed", 2, 10, 10)]
    change = fv.twin_changes(results, "fed", "local")
    assert change["small FD-EffNetLite0"]["seeds"] == 2
    assert change["small FD-EffNetLite0"]["mean"] == pytest.approx(0.10)
    assert change["small FD-EffNetLite0"]["std"] == pytest.approx(0.10)
    assert change["large FD-EffNetLite0"]["mean"] == pytest.approx(0.0)
    assert change["small style_acc"]["mean"] == pytest.approx(0.0)  # points: no change


def test_target_needs_both_small_gains_and_holds_the_large_studios(fv):
    met = [run("local", 0, 100, 100), run("fed", 0, 85, 104, 0.85)]
    assert fv.meets_target(fv.twin_changes(met, "fed", "local"))
    fd_only = [run("local", 0, 100, 100), run("fed", 0, 85, 100, 0.95)]  # FD-Style gain 5 %: short of 10 %
    assert not fv.meets_target(fv.twin_changes(fd_only, "fed", "local"))
    large_lose = [run("local", 0, 100, 100), run("fed", 0, 85, 106, 0.85)]  # large 6 % worse
    assert not fv.meets_target(fv.twin_changes(large_lose, "fed", "local"))


def test_set_is_parsed_as_the_cli_parses_it_and_null_is_applied(fv):
    args = fv.parse_args(["train", "--profile", "test", "--set", "model.image_size=64", "fed.mode=local",
                          "--set", "train.max_pairs=null"])
    base = fv.base_config(args)
    assert base["model"]["image_size"] == 64 and base["fed"]["mode"] == "local"  # JSON, or else text (cli.setting)
    assert base["train"]["max_pairs"] is None
    with pytest.raises(SystemExit):
        fv.parse_args(["train", "--set", "no_section"])
