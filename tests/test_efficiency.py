"""Sample efficiency: crossings, censoring, intervals, ratios, and the levels of the published studies."""

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zoo_rl.efficiency import (MONITOR_EVERY, MONITOR_WINDOW, Level, crossing_step, efficiency_table, format_ratio,
                               format_steps, held_by_every_transfer, median_interval, median_steps, monitor_last_step,
                               monitor_readings, monitor_steps, monitor_steps_to_level, ratio_interval,
                               read_monitor_files, scratch_reference_steps)

ROOT = Path(__file__).resolve().parents[1]
RLZOO_PONG = ROOT / "results" / "rlzoo" / "ppo-PongNoFrameskip-v4_1"


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
    committed = pd.read_csv(ROOT / "results" / "levels-zoo-1m.csv", dtype={"scratch_steps": str})
    rules = script.read_rules()  # its targets: the 1M studies' (later ones join when their scratch is published)
    fresh = script.derive_levels({t: rules[t] for t in committed["target"].unique()}, ROOT / "agents" / "zoo")
    pd.testing.assert_frame_equal(fresh.reset_index(drop=True), committed, check_dtype=False)


def test_published_efficiency_tables_regenerate_exactly():
    """Every published efficiency.csv and .md is what `efficiency.py <study>` writes today, with the levels of the
    study's zoo (the 1M zoo's studies: `--levels results/levels-zoo-1m.csv`; every other: results/levels.csv)."""
    script = load_script()
    rules = script.read_rules()
    studies = sorted(p.parent for p in (ROOT / "results").glob("*/efficiency.csv"))
    assert len(studies) >= 20
    for study in studies:
        zoo = json.loads((study / "study.json").read_text())["zoo"]
        levels = ROOT / "results" / ("levels-zoo-1m.csv" if zoo == ["agents/zoo"] else "levels.csv")
        table, markdown = script.study_efficiency(study, levels, reps=2000, rules=rules)
        pd.testing.assert_frame_equal(table.reset_index(drop=True), pd.read_csv(study / "efficiency.csv"),
                                      check_dtype=False, atol=1e-9, obj=str(study))
        assert markdown + "\n" == (study / "efficiency.md").read_text(), study


def test_study_efficiency_names_a_missing_target(tmp_path):
    script = load_script()
    levels = tmp_path / "levels.csv"
    pd.DataFrame({"target": ["Pong"], "level_name": ["x"], "level": [0.0], "derivation": [""], "scratch_steps": ["1"],
                  "scratch_censored": [False], "scratch_reference": [""]}).to_csv(levels, index=False)
    with pytest.raises(ValueError, match="no levels for target 'Breakout'"):
        script.levels_for("Breakout", levels)
    with pytest.raises(FileNotFoundError, match="efficiency.py levels"):
        script.levels_for("Pong", tmp_path / "none.csv")


def test_a_study_in_progress_counts_its_finished_runs_only(tmp_path):
    """A run still training is in curves.csv but has not had its budget: it is left out, not read as never
    reaching the level."""
    script = load_script()
    levels = tmp_path / "levels.csv"
    pd.DataFrame({"target": ["Pong"], "level_name": ["x"], "level": [-10.0], "derivation": [""],
                  "scratch_steps": ["30000"], "scratch_censored": [False], "scratch_reference": [""]}).to_csv(
        levels, index=False)
    study = tmp_path / "study"
    study.mkdir()
    pd.concat([curve("scratch", 0, [-21, -15, -12, -10]), curve("zoo", 0, [-21, -9, -5, -4]),
               curve("zoo", 1, [-21, -15])]).to_csv(study / "curves.csv", index=False)
    pd.DataFrame({"target": "Pong", "method": ["scratch", "zoo"], "seed": [0, 0], "steps": [30_000, 30_000]}).to_csv(
        study / "results.csv", index=False)
    table, _ = script.study_efficiency(study, levels, reps=100, rules={})
    zoo = table.set_index("method").loc["zoo"]
    assert zoo["reached"] == 1 and zoo["runs"] == 1 and zoo["steps_median"] == 10_000


def test_a_target_without_levels_reads_scratch_final_from_its_own_scratch(tmp_path):
    """A study of a target that levels.csv does not hold (a new body or flavour) still gets its efficiency table:
    scratch-final from its own scratch runs, said under the table; without scratch runs it is refused."""
    script = load_script()
    levels = tmp_path / "levels.csv"
    pd.DataFrame({"target": ["Pong"], "level_name": ["x"], "level": [0.0], "derivation": [""], "scratch_steps": ["1"],
                  "scratch_censored": [False], "scratch_reference": [""]}).to_csv(levels, index=False)
    study = tmp_path / "study"
    study.mkdir()
    pd.concat([curve("scratch", 0, [0, 100, 300, 400]), curve("scratch", 1, [0, 50, 100, 200]),
               curve("zoo", 0, [0, 400, 500, 500])]).to_csv(study / "curves.csv", index=False)
    pd.DataFrame({"target": "mujoco-cheetah", "method": ["scratch", "scratch", "zoo"], "seed": [0, 1, 0],
                  "steps": 30_000, "final_return": [400.0, 200.0, 500.0]}).to_csv(study / "results.csv", index=False)
    table, markdown = script.study_efficiency(study, levels, reps=100, rules={})
    assert list(table["level_name"].unique()) == ["scratch-final"] and table["level"].iloc[0] == pytest.approx(300.0)
    assert table.set_index("method").loc["zoo", "steps_median"] == 10_000
    assert "has no levels in levels.csv" in markdown and "this study's own scratch runs" in markdown
    # the same table as with the level fixed in levels.csv by the rules (`efficiency.py levels`)
    fixed = tmp_path / "fixed.csv"
    script.derive_levels({"mujoco-cheetah": {"scratch": "study"}}, zoo=tmp_path, root=tmp_path).to_csv(fixed, index=False)
    same, other_markdown = script.study_efficiency(study, fixed, reps=100, rules={})
    pd.testing.assert_frame_equal(table.drop(columns="scratch_reference"), same.drop(columns="scratch_reference"))
    assert table["scratch_reference"].iloc[0] == "this study's scratch (2 seeds, 30,000 steps)"
    assert "has no levels" not in other_markdown
    results = pd.read_csv(study / "results.csv")
    results[results["method"] != "scratch"].to_csv(study / "results.csv", index=False)
    with pytest.raises(ValueError, match="no levels for target 'mujoco-cheetah'"):
        script.study_efficiency(study, levels, reps=100, rules={})


def test_levels_of_some_targets_join_those_fixed_before(tmp_path):
    script = load_script()
    out = tmp_path / "levels.csv"
    zoo = str(ROOT / "agents" / "zoo")
    script.main(["levels", "--zoo", zoo, "--targets", "Pong", "--out", str(out)])
    first = pd.read_csv(out)
    pong = out.read_text().splitlines()[1:]
    script.main(["levels", "--zoo", zoo, "--targets", "Breakout", "--out", str(out)])
    assert out.read_text().splitlines()[1:len(pong) + 1] == pong  # the rows kept, digit for digit
    script.main(["levels", "--zoo", zoo, "--targets", "Breakout,Pong", "--out", str(out)])
    both = pd.read_csv(out)
    assert set(first["target"]) == {"Pong"} and set(both["target"]) == {"Pong", "Breakout"}
    assert len(both) == len(first) + 1  # Pong's rows replaced, not repeated; Breakout has no related source
    with pytest.raises(SystemExit, match="not in"):
        script.main(["levels", "--zoo", zoo, "--targets", "Tetris", "--out", str(out)])
    rules = tmp_path / "rules.yml"
    rules.write_text("Pong: {scratch: results/pong-500k}\nSeaquest: {scratch: results/no-such-study}\n")
    with pytest.raises(SystemExit, match="(?s)no-such-study.*Nothing written"):
        script.main(["levels", "--zoo", zoo, "--rules", str(rules), "--out", str(out)])
    assert pd.read_csv(out).equals(both)  # the levels fixed before are untouched


def write_monitor(folder, rank, episodes, t_start=1000.0):
    """An SB3 Monitor file as SB3 writes it: the JSON comment line, then csv rows ending in CRLF."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{r:.1f},{length},{i + 1.5:.6f}\r\n" for i, (r, length) in enumerate(episodes))
    (folder / f"{rank}.monitor.csv").write_bytes(
        (f'#{{"t_start": {t_start}, "env_id": "PongNoFrameskip-v4"}}\n' + "r,l,t\r\n" + rows).encode())


@pytest.fixture
def two_envs(tmp_path):
    """Env 0 ends games at 400, 800 and 1,600 frames; env 1 at 600, 800 and 1,800. With 2 environments and 4
    frames per step the run's steps are 2 x frames / 4: env 0 at 200, 400, 800; env 1 at 300, 400, 900."""
    folder = tmp_path / "log"
    write_monitor(folder, 0, [(-21, 400), (-19, 400), (-10, 800)])
    write_monitor(folder, 1, [(-20, 600), (-21, 200), (-5, 1000)])
    return folder


def test_monitor_steps_by_hand(two_envs):
    episodes = read_monitor_files(two_envs)
    assert episodes.groupby("env").size().tolist() == [3, 3]
    ordered = monitor_steps(episodes)
    assert ordered["steps"].tolist() == [200, 300, 400, 400, 800, 900]
    assert ordered["env"].tolist() == [0, 1, 0, 1, 0, 1]  # a tie in environment order
    assert monitor_steps(episodes, n_envs=4)["steps"].tolist() == [400, 600, 800, 800, 1600, 1800]
    assert monitor_steps(episodes, frame_skip=1)["steps"].max() == 3600
    with pytest.raises(ValueError, match="holds 2 environments"):
        monitor_steps(episodes, n_envs=1)


def test_monitor_crossing_by_hand(two_envs):
    # window 2 after each step with an ending: 300 -> mean(-21, -20) = -20.5; 400, once both games that end
    # there are in, -> mean(-19, -21) = -20 (never env 0's game alone: mean(-20, -19) = -19.5); 800 -> -15.5; 900 -> -7.5
    readings = monitor_readings(two_envs, window=2, every=None)
    assert readings["steps"].tolist() == [300, 400, 800, 900]
    assert readings["mean_return"].tolist() == [-20.5, -20.0, -15.5, -7.5]
    assert monitor_steps_to_level(two_envs, -19.5, window=2, every=None) == 800
    assert monitor_steps_to_level(two_envs, -7.5, window=2, every=None) == 900  # at the level counts
    assert monitor_steps_to_level(two_envs, -20.5, window=1, every=None) == 300  # env 1's -20 at 300
    # read every 100 steps: the same crossing, on the grid
    assert monitor_steps_to_level(two_envs, -19.5, window=2, every=100) == 800
    # read every 250 steps (250, 500, 750): the mean at 500 and 750 is -20, and there is no reading at 900
    assert monitor_readings(two_envs, window=2, every=250)["steps"].tolist() == [500, 750]
    assert monitor_steps_to_level(two_envs, -19.5, window=2, every=250) == math.inf


def test_monitor_level_never_reached_is_censored(two_envs):
    assert monitor_steps_to_level(two_envs, -5.0, window=2, every=None) == math.inf
    assert monitor_last_step(two_envs) == 900  # what a censored reading stands in with
    with pytest.raises(ValueError, match="between 1 and the log's 6 episodes"):
        monitor_readings(two_envs, window=7)
    with pytest.raises(ValueError, match="finite return"):
        monitor_steps_to_level(two_envs, math.nan, window=2)


def test_monitor_files_are_checked(tmp_path, two_envs):
    with pytest.raises(FileNotFoundError, match="no \\*.monitor.csv"):
        read_monitor_files(tmp_path / "log" / "..")
    bad = tmp_path / "bad"
    write_monitor(bad, 0, [(-21, 400)])
    (bad / "0.monitor.csv").rename(bad / "monitor.csv")
    with pytest.raises(ValueError, match="<rank>.monitor.csv"):
        read_monitor_files([bad / "monitor.csv"])
    (bad / "3.monitor.csv").write_text("r,l,t\n-21,400,1.0\n")
    with pytest.raises(ValueError, match="first line"):
        read_monitor_files([bad / "3.monitor.csv"])
    write_monitor(bad, 4, [(-21, 0)])
    with pytest.raises(ValueError, match="positive integer"):
        read_monitor_files([bad / "4.monitor.csv"])


def test_committed_rlzoo_log_parses_completely():
    """Every row of the RL Zoo's Pong log, as results/rlzoo/.../README.md counts them, and the crossings that
    docs/studies.md quotes."""
    episodes = read_monitor_files(RLZOO_PONG)
    counts = episodes.groupby("env").size().to_dict()
    readme = (RLZOO_PONG / "README.md").read_text()
    stated = {int(m[1]): int(m[2]) for m in re.finditer(r"^\| `(\d)\.monitor\.csv` \|[^|]*\|[^|]*\| (\d+) \|", readme, re.M)}
    assert stated == counts == {0: 724, 1: 722, 2: 722, 3: 724, 4: 724, 5: 723, 6: 721, 7: 722}
    assert len(episodes) == 5782 and "5,782 episodes" in readme
    for env, g in episodes.groupby("env"):
        assert (np.diff(g["t"].to_numpy()) > 0).all()  # the rows of one environment, in the order they ended
        assert g["r"].iloc[-1] == 21.0 and 122_000 < g["t"].iloc[-1] < 122_500  # the file's last row is there
        first = (RLZOO_PONG / f"{env}.monitor.csv").read_text().splitlines()[0]
        assert json.loads(first[1:])["env_id"] == "PongNoFrameskip-v4"
    assert episodes["r"].between(-21, 21).all()
    # every environment's frames: 10,000,384 steps x 4 / 8 plus reset frames, less the unfinished last game
    frames = episodes.groupby("env")["l"].sum()
    assert frames.between(5_000_192, 5_000_192 + 724 * 38).all()
    assert (MONITOR_WINDOW, MONITOR_EVERY) == (8, 25_000)
    assert monitor_steps_to_level(episodes, -2.5) == 1_250_000
    assert monitor_steps_to_level(episodes, -14.2) == 650_000
    assert monitor_steps_to_level(episodes, -19.816666666666666) == 400_000
    assert monitor_steps_to_level(episodes, -2.5, window=100, every=None) == 1_476_382
    assert monitor_steps_to_level(episodes, -2.5, window=8, every=None) == 1_000_966


def scratch_log_root(tmp_path):
    """A scratch study that reaches -20.5 but not -7.5, and a 2-environment log whose games of 50,000 frames end
    together every 25,000 steps: 4 at -21 each, then 4 at -5 each. Read over 8 games every 25,000 steps: -21 at
    100k, -17 at 125k, -13 at 150k, -9 at 175k, -5 at 200k."""
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    pd.DataFrame({"target": "Pong", "method": "scratch", "seed": [0, 1], "steps": 100_352,
                  "final_return": [-20.0, -20.0]}).to_csv(study / "results.csv", index=False)
    pd.concat([curve("scratch", 0, [-21, -20]), curve("scratch", 1, [-21, -20])]).to_csv(study / "curves.csv", index=False)
    for rank in (0, 1):
        write_monitor(tmp_path / "logs" / "run", rank, [(-21, 50_000)] * 4 + [(-5, 50_000)] * 4)
    return tmp_path


def test_scratch_log_serves_only_levels_scratch_never_reaches(tmp_path):
    script = load_script()
    root = scratch_log_root(tmp_path)
    rule = {"scratch": "results/s", "scratch_log": {"path": "logs/run", "reference": "a published log"}}
    levels = [Level("low", -20.5, (10_000.0, 10_000.0)), Level("high", -7.5, (100_352.0, 100_352.0), True, "s scratch"),
              Level("top", -4.0, (100_352.0, 100_352.0), True, "s scratch")]
    low, high, top = script.apply_scratch_log(levels, "Pong", rule, root=root)
    assert low == levels[0]  # scratch's own runs reach it: they stay the reference
    assert high.scratch_steps == (200_000.0,) and not high.scratch_censored and high.scratch_log
    assert high.scratch_reference.startswith("a published log, logs/run: one run")
    assert top.scratch_steps == (200_000.0,) and top.scratch_censored  # the log never reaches -4: a bound
    assert script.apply_scratch_log(levels, "Pong", {"scratch": "results/s"}, root=root) == levels

    curves = pd.concat([curve("scratch", 0, [-21, -20]), curve("zoo", 0, [-21, -10, -7, -5]),
                        curve("zoo", 1, [-21, -7, -6, -5])])
    table = efficiency_table(curves, [high], reps=200)
    zoo = table.set_index("method").loc["zoo"]
    assert zoo["steps_median"] == 10_000 and zoo["ratio"] == pytest.approx(10_000 / 200_000)
    assert bool(zoo["scratch_log"]) and zoo["scratch_steps"] == 200_000
    markdown = script.efficiency_markdown(table, "Pong")
    assert "* Scratch's steps to this level (200k) come from a published training log" in markdown
    assert "| zoo | 2/2 | 0/2 | " in markdown and " *" in markdown.split("| zoo |")[1].splitlines()[0]


def test_scratch_log_rules_are_checked(tmp_path):
    script = load_script()
    (tmp_path / "both.yml").write_text("Pong: {scratch: results/s, scratch_steps: {steps: 1}, scratch_log: logs/run}\n")
    with pytest.raises(ValueError, match="both 'scratch_steps' and 'scratch_log'"):
        script.read_rules(tmp_path / "both.yml")
    (tmp_path / "odd.yml").write_text("Pong: {scratch: results/s, scratch_log: {folder: logs/run}}\n")
    with pytest.raises(ValueError, match="'scratch_log' is a folder"):
        script.read_rules(tmp_path / "odd.yml")
    assert script.scratch_log_of({"scratch_log": "logs/run"}) == ("logs/run", "training log logs/run")
    pong = script.read_rules()["Pong"]
    assert (ROOT / script.scratch_log_of(pong)[0]).resolve() == RLZOO_PONG.resolve()


def test_log_report_prints_each_reading_and_the_studies_scratch(tmp_path, capsys):
    script = load_script()
    root = scratch_log_root(tmp_path)
    assert script.main(["log", str(root / "logs" / "run"), "--level=-7.5", "--level=-4",
                        "--studies", str(root / "results" / "s")]) == 0
    out = capsys.readouterr().out
    assert "2 environments, 16 episodes (env 0: 8, env 1: 8), last episode ending at 200,000 agent steps" in out
    table = out.split("than the window):")[1]
    assert table.splitlines()[2].split()[2] == "200,000"  # level -7.5, the tables' reading
    assert "never" in table.splitlines()[3]  # level -4
    assert "level -7.5: seed 0 > 100,352, seed 1 > 100,352 (median > budget)" in out
