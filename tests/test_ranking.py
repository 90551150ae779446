"""Source ranking: action mapping by meaning, the probe's arithmetic, and a ranking on real Atari."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from zoo_rl.ranking import RANKING_COLUMNS, action_map, probe_r2, rank_sources, ranking_order, returns_to_go
from zoo_rl.study import DEFAULT_ZOO_DIR

PONG = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]
BREAKOUT = ["NOOP", "FIRE", "RIGHT", "LEFT"]
SEAQUEST = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
            "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]


def test_actions_map_by_meaning_then_by_their_largest_part():
    mapping, shared = action_map(PONG, BREAKOUT)
    assert mapping.tolist() == [0, 1, 2, 3, 2, 3] and shared == 3  # RIGHTFIRE -> RIGHT
    mapping, shared = action_map(SEAQUEST, PONG)
    named = [PONG[i] for i in mapping]
    assert named[SEAQUEST.index("UP")] == "NOOP" and named[SEAQUEST.index("UPRIGHTFIRE")] == "RIGHTFIRE"
    assert named[SEAQUEST.index("DOWNLEFT")] == "LEFT" and shared == 5
    mapping, shared = action_map(["NOOP", "1.move=1"], PONG)  # another family: nothing shared but NOOP
    assert mapping.tolist() == [0, 0] and shared == 0


def test_returns_to_go_stop_at_episode_ends():
    rewards = np.array([[0.0], [1.0], [0.0], [1.0]])
    dones = np.array([[False], [True], [False], [False]])
    np.testing.assert_allclose(returns_to_go(rewards, dones, gamma=0.5)[:, 0], [0.5, 1.0, 0.5, 1.0])


def test_probe_scores_linear_targets_high_and_noise_near_zero():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(200, 4, 16))
    linear = feats @ rng.normal(size=16)
    assert probe_r2(feats, linear, ridge=1.0) > 0.99
    assert probe_r2(feats, rng.normal(size=(200, 4)), ridge=1.0) < 0.05


def test_ranking_order_names_zoo_indices_and_rejects_another_zoo():
    ranking = pd.DataFrame({"rank": [2, 1], "source": ["a", "b"]})
    assert ranking_order(ranking, ["a", "b"]) == [1, 0]
    with pytest.raises(ValueError, match="ranking.csv"):
        ranking_order(ranking, ["a", "c"])


@pytest.mark.slow
def test_rank_sources_on_atari_plays_the_sources_that_have_heads(zoo_paths):
    zoo = [str(DEFAULT_ZOO_DIR / "pong-m1"), str(DEFAULT_ZOO_DIR / "breakout"), zoo_paths[0]]
    table = rank_sources("Pong", zoo, steps=32, n_envs=4)
    assert list(table.columns) == RANKING_COLUMNS and sorted(table["rank"]) == [1, 2, 3]
    by_source = table.set_index("source")
    assert by_source.loc["pong-m1", "shared_actions"] == 5 and by_source.loc["breakout", "shared_actions"] == 3
    assert by_source.loc["pong-m1", "agent_steps"] == 32
    # A bare extractor (no game in its metadata) cannot play: it is ranked by the probe alone.
    assert by_source.loc["src0", "basis"] == "probe" and np.isnan(by_source.loc["src0", "zero_shot_rate"])
    assert np.isfinite(table["probe_r2"]).all()
    with pytest.raises(ValueError, match="at least 2 x n_envs"):
        rank_sources("Pong", zoo, steps=4, n_envs=4)


@pytest.mark.slow
def test_rank_script_writes_the_ranking_where_the_study_reads_it(tmp_path, capsys):

    import rank

    rank.main(["--target", "Breakout", "--mode", "4", "--steps", "16", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "ranking.csv")
    assert sorted(table["source"]) == ["breakout", "enduro", "pong-m1", "roadrunner", "seaquest"]
    assert "cost: " in printed and "agent steps" in printed and str(tmp_path / "ranking.csv") in printed
    with pytest.raises(SystemExit, match="error: .*Unknown"):
        rank.main(["--target", "NoSuchGame", "--out", str(tmp_path)])
