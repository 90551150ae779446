"""Sample efficiency: crossings, censoring, intervals, ratios, and the levels of the published studies."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo_rl.efficiency import (Level, crossing_step, efficiency_table, format_ratio, format_steps,
                               held_by_every_transfer, median_interval, median_steps, ratio_interval,
                               scratch_reference_steps)

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("efficiency_script", ROOT / "experiments" / "efficiency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def curve(method, seed, returns, every=10_000):
    return pd.DataFrame({"method": method, "seed": seed, "steps": np.arange(len(returns)) * every,
                         "return": returns})


def test_crossing_is_the_first_evaluation_at_or_above_the_level():
    steps = np.array([0, 10, 20, 30])
    assert crossing_step(steps, np.array([-21, -19, -20, -15]), -19) == 10  # at the level counts, a later dip does not undo it
    assert crossing_step(steps, np.array([-18, -21, -21, -21]), -19) == 0  # held before training
    assert crossing_step(steps, np.array([-21, -21, -20, -20]), -19) == math.inf  # censored
    assert crossing_step(steps[::-1], np.array([-15, -20, -19, -21]), -19) == 10  # any order of evaluations


def test_crossing_refuses_bad_input():
    with pytest.raises(ValueError, match="one value per evaluation"):
        crossing_step(np.array([0, 1]), np.array([0.0]), 0)
    with pytest.raises(ValueError, match="finite return"):
        crossing_step(np.array([0]), np.array([0.0]), math.nan)


def test_median_keeps_censored_seeds_as_sample_values():
    assert median_steps(np.array([30, math.inf, 10])) == 30
    assert median_steps(np.array([math.inf, math.inf, 10])) == math.inf
    assert median_steps(np.array([10, 20])) == 10  # the lower middle value
    point, low, high = median_interval(np.array([10.0, 20.0, math.inf]), reps=500)
    assert (point, low, high) == (20.0, 10.0, math.inf)  # no NaN from interpolating with inf


def test_ratio_by_hand():
    # every resample of identical seeds gives the same medians: the interval collapses onto the point
    assert ratio_interval(np.array([20.0, 20.0, 20.0]), np.array([100.0, 100.0, 100.0]), reps=200) == (0.2, 0.2, 0.2)
    # one number from a longer reference: only the method's seeds are resampled
    point, low, high = ratio_interval(np.array([10.0, 20.0, 30.0]), 100.0, reps=2000)
    assert point == 0.2 and low == 0.1 and high == 0.3
    assert ratio_interval(np.array([math.inf] * 3), 100.0, reps=10)[0] == math.inf
    assert ratio_interval(np.array([0.0] * 3), 100.0, reps=10)[0] == 0.0
    with pytest.raises(ValueError, match="positive and finite"):
        ratio_interval(np.array([1.0]), np.array([math.inf]))


def test_table_reads_crossings_censoring_and_the_ratio_to_scratch():
    curves = pd.concat([
        curve("scratch", 0, [-21, -21, -20, -19]), curve("scratch", 1, [-21, -20, -19, -19]),
        curve("scratch", 2, [-21, -21, -21, -20]),  # never reaches -19: censored at its budget (30k)
        curve("zoo", 0, [-18, -15, -10, -5]), curve("zoo", 1, [-21, -18, -12, -8]),
        curve("zoo", 2, [-20, -19, -16, -10]),
    ])
    table = efficiency_table(curves, [Level("low", -19.0), Level("high", -9.0)], reps=500)
    low = table[table["level_name"] == "low"].set_index("method")
    assert low.loc["scratch", "reached"] == 2 and low.loc["scratch", "steps_median"] == 30_000
    assert bool(low.loc["zoo", "scratch_censored"])  # scratch seed 2 stands in with its budget
    assert low.loc["zoo", "held_at_start"] == 1 and low.loc["zoo", "steps_median"] == 10_000
    assert low.loc["zoo", "ratio"] == pytest.approx(10_000 / 30_000)
    assert math.isnan(low.loc["scratch", "ratio"])  # the reference has no ratio
    high = table[table["level_name"] == "high"].set_index("method")
    assert high.loc["zoo", "reached"] == 2 and high.loc["zoo", "steps_median"] == 30_000
    assert high.loc["scratch", "steps_median"] == math.inf
    assert not held_by_every_transfer(table, "low")
    assert held_by_every_transfer(efficiency_table(curves, [Level("floor", -22.0)], reps=10), "floor")


def test_a_given_reference_replaces_the_study_scratch():
    curves = pd.concat([curve("scratch", 0, [-21, -21]), curve("zoo", 0, [-21, -10])])
    table = efficiency_table(curves, [Level("high", -10.0, scratch_steps=(2_000_000.0,),
                                            scratch_reference="a published log")], reps=10)
    zoo = table.set_index("method").loc["zoo"]
    assert zoo["ratio"] == pytest.approx(10_000 / 2_000_000) and zoo["scratch_reference"] == "a published log"


def test_scratch_reference_steps_censors_at_the_budget():
    curves = pd.concat([curve("scratch", 0, [-21, -15]), curve("scratch", 1, [-21, -21])])
    assert scratch_reference_steps(curves, -15.0) == ((10_000.0, 10_000.0), True)
    assert scratch_reference_steps(curves, -15.0, {1: 500_000.0}) == ((10_000.0, 500_000.0), True)
    with pytest.raises(ValueError, match="no scratch runs"):
        scratch_reference_steps(curves.assign(method="zoo"), -15.0)


def test_formats():
    assert format_steps(40_000, 20_000, 60_000, 100_000) == "40k [20k, 60k]"
    assert format_steps(math.inf, 1, math.inf, 100_352) == "> 100k"
    assert format_steps(2_500_000, 1_000_000, math.inf, 10_000_000) == "2.50M [1.00M, > budget]"
    assert format_ratio(0.2, 0.1, 0.4, False) == "0.20 [0.10, 0.40]"
    assert format_ratio(0.2, 0.1, math.inf, True) == "≤ 0.20 [0.10, inf]"
    assert format_ratio(math.inf, 1, math.inf, False) == "not reached"
    assert format_ratio(math.nan, 1, 1, False) == "n/a"


def test_levels_follow_their_rules(tmp_path):
    script = load_script()
    study = tmp_path / "results" / "target-100k"
    study.mkdir(parents=True)
    pd.DataFrame({"target": "Pong", "method": "scratch", "seed": [0, 1], "steps": 100_352,
                  "final_return": [-20.0, -19.0]}).to_csv(study / "results.csv", index=False)
    pd.concat([curve("scratch", 0, [-21, -20]), curve("scratch", 1, [-21, -19])]).to_csv(study / "curves.csv", index=False)
    zoo = tmp_path / "zoo" / "pong-m1"
    zoo.mkdir(parents=True)
    (zoo / "meta.json").write_text(json.dumps({"eval_return_mean": 15.0, "random_return_mean": -21.0, "steps": 3}))
    rules = {"Pong": {"scratch": "results/target-100k", "source": "pong-m1"}}
    levels = script.derive_levels(rules, tmp_path / "zoo", root=tmp_path).set_index("level_name")
    assert levels.loc["scratch-final", "level"] == -19.5
    assert levels.loc["half-source", "level"] == -3.0  # halfway from random (-21) to the source (+15)
    assert levels.loc["half-source", "scratch_steps"] == "100352;100352" and levels.loc["half-source", "scratch_censored"]
    assert levels.loc["scratch-final", "scratch_steps"] == "100352;10000"
    with pytest.raises(FileNotFoundError, match="train the source first"):
        script.derive_levels({"Pong": {"scratch": "results/target-100k", "source": "nope"}}, tmp_path / "zoo",
                             root=tmp_path)
    (tmp_path / "rules.yml").write_text("Pong: {source: pong-m1}\n")
    with pytest.raises(ValueError, match="needs 'scratch'"):
        script.read_rules(tmp_path / "rules.yml")


def test_published_levels_are_the_rules_applied_to_the_committed_files(tmp_path):
    """results/levels-zoo-1m.csv is what `efficiency.py levels --zoo agents/zoo` writes today."""
    script = load_script()
    fresh = script.derive_levels(script.read_rules(), ROOT / "agents" / "zoo")
    committed = pd.read_csv(ROOT / "results" / "levels-zoo-1m.csv", dtype={"scratch_steps": str})
    pd.testing.assert_frame_equal(fresh.reset_index(drop=True), committed, check_dtype=False)


def test_study_efficiency_names_a_missing_target(tmp_path):
    script = load_script()
    levels = tmp_path / "levels.csv"
    pd.DataFrame({"target": ["Pong"], "level_name": ["x"], "level": [0.0], "derivation": [""], "scratch_steps": ["1"],
                  "scratch_censored": [False], "scratch_reference": [""]}).to_csv(levels, index=False)
    with pytest.raises(ValueError, match="no levels for target 'Breakout'"):
        script.levels_for("Breakout", levels)
    with pytest.raises(FileNotFoundError, match="efficiency.py levels"):
        script.levels_for("Pong", tmp_path / "none.csv")


def test_levels_of_some_targets_join_those_fixed_before(tmp_path):
    script = load_script()
    out = tmp_path / "levels.csv"
    zoo = str(ROOT / "agents" / "zoo")
    script.main(["levels", "--zoo", zoo, "--targets", "Pong", "--out", str(out)])
    first = pd.read_csv(out)
    script.main(["levels", "--zoo", zoo, "--targets", "Breakout,Pong", "--out", str(out)])
    both = pd.read_csv(out)
    assert set(first["target"]) == {"Pong"} and set(both["target"]) == {"Pong", "Breakout"}
    assert len(both) == len(first) + 1  # Pong's rows replaced, not repeated; Breakout has no related source
    with pytest.raises(SystemExit, match="not in"):
        script.main(["levels", "--zoo", zoo, "--targets", "Tetris", "--out", str(out)])
