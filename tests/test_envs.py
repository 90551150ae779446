"""Atari environments on the RL Baselines3 Zoo protocol, flavours, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from envs.atari import AtariTask, available_flavours, make_atari, resolve_task


@pytest.mark.parametrize("name, game", [("Pong", "Pong"), ("pong", "Pong"), ("BreakoutNoFrameskip-v4", "Breakout"),
                                        ("ALE/SpaceInvaders-v5", "SpaceInvaders")])
def test_names_resolve(name, game):
    assert resolve_task(name).game == game


def test_slug_round_trip():
    task = resolve_task("Pong", mode=1, difficulty=2)
    assert task.slug == "Pong-m1-d2"
    assert resolve_task(task.slug) == task
    assert task.env_kwargs == {"mode": 1, "difficulty": 2}
    assert AtariTask("Pong").same_task(AtariTask("Pong", 0, 0))
    assert not AtariTask("Pong").same_task(AtariTask("Pong", 1))


def test_unknown_game_lists_closest_names():
    with pytest.raises(ValueError, match="Did you mean: Pong"):
        resolve_task("Pongg")


def test_unsupported_flavour_lists_valid_ones():
    modes, difficulties = available_flavours("Pong")
    with pytest.raises(ValueError, match=r"valid modes: \[0, 1\]"):
        resolve_task("Pong", mode=7)
    with pytest.raises(ValueError, match="valid difficulties"):
        resolve_task("Pong", difficulty=max(difficulties) + 1)
    assert modes == (0, 1)


@pytest.mark.parametrize("game, mode", [("Pong", None), ("Breakout", None), ("Pong", 1)])
def test_observations_and_unclipped_returns(game, mode, tmp_path):
    env = make_atari(game, n_envs=2, seed=0, mode=mode, monitor_dir=str(tmp_path))
    obs = env.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    for _ in range(50):
        obs, rewards, dones, infos = env.step(rng.integers(env.action_space.n, size=2))
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0}  # clipped for training
    assert obs.shape == (2, 84, 84, 4)
    assert len(list(tmp_path.glob("*.monitor.csv"))) == 2
    env.close()


def test_flavour_reaches_the_emulator():
    env = make_atari("Pong", n_envs=1, seed=0, mode=1, difficulty=1)
    atari = env.venv.envs[0].unwrapped  # ale-py's AtariEnv sets these on the emulator at reset
    assert (atari._game_mode, atari._game_difficulty) == (1, 1)


def test_subprocess_workers_register_ale():
    env = make_atari("Pong", n_envs=2, seed=0, subproc=True)
    try:
        assert env.reset().shape == (2, 84, 84, 4)
        env.step(np.zeros(2, dtype=int))
    finally:
        env.close()


def test_bad_env_count():
    with pytest.raises(ValueError, match="n_envs"):
        make_atari("Pong", n_envs=0)


def test_sharded_workers_equal_dummy_step_by_step(tmp_path):
    """Environments split over 2 worker processes give DummyVecEnv's results exactly (seeds included)."""
    from stable_baselines3.common.monitor import Monitor

    plain = make_atari("Breakout", n_envs=3, seed=5)
    sharded = make_atari("Breakout", n_envs=3, seed=5, workers=2, monitor_dir=str(tmp_path))
    try:
        assert [len(s) for s in sharded.venv.shards] == [2, 1]
        assert (plain.reset() == sharded.reset()).all()
        rng = np.random.default_rng(0)
        episodes = 0
        for _ in range(400):
            actions = rng.integers(0, 4, size=3)
            (o1, r1, d1, i1), (o2, r2, d2, i2) = plain.step(actions), sharded.step(actions)
            assert (o1 == o2).all() and (r1 == r2).all() and (d1 == d2).all()
            for a, b in zip(i1, i2):
                assert a.keys() == b.keys()
                if "terminal_observation" in a:
                    assert (a["terminal_observation"] == b["terminal_observation"]).all()
                if "episode" in a:
                    assert a["episode"]["r"] == b["episode"]["r"] and a["episode"]["l"] == b["episode"]["l"]
                    episodes += 1
        assert episodes > 0  # episode ends (and the resets behind them) were compared too
        assert sharded.env_is_wrapped(Monitor) == [True] * 3
        assert sharded.get_attr("spec", indices=[2])[0].id == "BreakoutNoFrameskip-v4"
        assert len(list(tmp_path.glob("*.monitor.csv"))) == 3  # the workers write the Monitor files
    finally:
        plain.close()
        sharded.close()


def test_bad_worker_settings():
    with pytest.raises(ValueError, match="workers"):
        make_atari("Pong", n_envs=2, workers=-1)
    with pytest.raises(ValueError, match="Choose one"):
        make_atari("Pong", n_envs=2, workers=2, subproc=True)


def test_restart_games_makes_the_next_reset_start_a_new_game():
    """SB3's EpisodicLifeEnv turns reset() into a no-op step while lives remain (SB3 issue #1389):
    an evaluation would continue the last one's games. restart_games makes reset() real."""
    from envs.atari import restart_games

    env = make_atari("Breakout", n_envs=2, seed=0, backend="gym")
    ale = env.venv.envs[0].unwrapped.ale
    env.reset()
    rng = np.random.default_rng(0)
    for _ in range(2000):  # until env 0 loses a life (a training episode ends, the game goes on)
        _, _, dones, infos = env.step(rng.integers(env.action_space.n, size=2))
        if dones[0] and "episode" not in infos[0]:
            break
    assert 0 < ale.lives() < 5
    env.reset()
    assert 0 < ale.lives() < 5, "a plain reset() continues the game"
    restart_games(env)
    env.reset()
    assert ale.lives() == 5 and ale.getEpisodeFrameNumber() < 200  # a new game (no-op start, FIRE)
    env.close()


def test_restart_games_leaves_other_vector_envs_alone():
    from envs.atari import restart_games

    env = make_atari("Pong", n_envs=2, seed=0, backend="ale")
    env.reset()
    still = np.zeros(2, dtype=np.int64)
    for _ in range(50):
        env.step(still)
    before = env._frames.copy()  # each game's frame counter
    restart_games(env)  # no Python wrappers: nothing to do, no error
    env.step(still)
    assert (env._frames == before + 4).all()  # the games went on: restart_games touched nothing
    env.reset()
    assert (env._frames < before).all()  # and its reset() restarts them by itself
    env.close()
