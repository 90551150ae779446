"""ale-py's vector environment behind SB3's VecEnv contract (envs/ale_vector.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from envs.ale_vector import AleVectorVecEnv, rom_name
from envs.atari import atari_backend, make_atari, resolve_task


def rollout(env, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = [env.reset()]
    for _ in range(steps):
        obs, reward, done, infos = env.step(rng.integers(env.action_space.n, size=env.num_envs))
        out.append((obs, reward, done, infos))
    return out


def test_same_contract_as_the_gym_pipeline():
    ale, gym_env = make_atari("Pong", 3, seed=0, backend="ale"), make_atari("Pong", 3, seed=0, backend="gym")
    assert isinstance(ale, AleVectorVecEnv)
    assert ale.observation_space == gym_env.observation_space  # (84, 84, 4) uint8
    assert ale.action_space == gym_env.action_space
    obs = ale.reset()
    assert obs.shape == (3, 84, 84, 4) and obs.dtype == np.uint8 and obs.flags.c_contiguous
    assert ale.env_is_wrapped(__import__("stable_baselines3.common.monitor", fromlist=["Monitor"]).Monitor) == [True] * 3


def test_seeding_is_reproducible():
    a = rollout(AleVectorVecEnv("Pong", 2, seed=7), 30)
    b = rollout(AleVectorVecEnv("Pong", 2, seed=7), 30)
    c = rollout(AleVectorVecEnv("Pong", 2, seed=8), 30)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a[1:], b[1:]))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a[1:], c[1:]))
    env = AleVectorVecEnv("Pong", 2, seed=None)
    env.seed(7)
    assert np.array_equal(env.reset(), a[0])  # VecEnv.seed() then reset(), as SB3 does


def test_lives_games_and_unclipped_returns(tmp_path):
    """Breakout: a lost life ends the training episode but not the game (the next observation goes
    on from the terminal one); a game over resets in the same step and reports the unclipped return
    of the whole game, like SB3's Monitor inside the wrappers, also in the Monitor files."""
    env = AleVectorVecEnv("Breakout", 2, seed=0, monitor_dir=str(tmp_path))
    rng = np.random.default_rng(0)
    env.reset()
    raw = np.zeros(2)
    life_losses = games = 0
    while games < 2:
        actions = rng.integers(env.action_space.n, size=2)
        actions[rng.random(2) < 0.3] = 1  # FIRE often, so that games end quickly
        obs, reward, done, infos = env.step(actions)
        assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}
        raw += np.abs(reward)  # lower bound of the raw return (Breakout bricks are worth 1 to 7)
        for i in np.flatnonzero(done):
            assert infos[i]["terminal_observation"].shape == (84, 84, 4)
            if "episode" in infos[i]:
                games += 1
                assert infos[i]["episode"]["r"] >= raw[i]
                raw[i] = 0
                assert infos[i]["episode"]["l"] > 0
            else:
                life_losses += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"], obs[i])  # no reset
    assert life_losses >= 4 * games  # 5 lives a game: 4 lost lives end episodes before the game over
    env.close()
    rows = pd.concat([pd.read_csv(f, skiprows=1) for f in sorted(tmp_path.glob("*.monitor.csv"))])
    assert len(rows) == games and list(rows.columns[:3]) == ["r", "l", "t"]


def test_unclipped_training_rewards_and_full_game_returns():
    """Seaquest (a sub is worth 20): clipped training rewards are the sign of the raw ones, and a
    finished game's info["episode"]["r"] is the sum of its raw rewards, not of the clipped ones."""
    raw_env, env = AleVectorVecEnv("Seaquest", 4, seed=0, clip_reward=False), AleVectorVecEnv("Seaquest", 4, seed=0)
    raw_env.reset(), env.reset()
    rng = np.random.default_rng(0)
    raw_sum, clipped_sum, games = np.zeros(4), np.zeros(4), []
    while len(games) < 2:
        actions = rng.integers(env.action_space.n, size=4)
        _, raw, _, _ = raw_env.step(actions)
        _, clipped, _, infos = env.step(actions)
        np.testing.assert_array_equal(clipped, np.sign(raw))
        raw_sum += raw
        clipped_sum += clipped
        for i, info in enumerate(infos):
            if "episode" in info:
                games.append((info["episode"]["r"], raw_sum[i], clipped_sum[i]))
                raw_sum[i] = clipped_sum[i] = 0
    for episode_return, raw_return, clipped_return in games:
        assert episode_return == raw_return
    assert any(r > c for r, _, c in games)  # some game scored more than one point per reward


def test_frames_are_the_gym_pipelines():
    """Same start (no no-ops, no FIRE), same actions: Pong's newest frame in the stack matches SB3's
    MaxAndSkip + WarpFrame to within the resize's rounding, step after step."""
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import MaxAndSkipEnv, WarpFrame

    from envs.atari import _register_ale

    _register_ale()
    ale = AleVectorVecEnv("Pong", 1, seed=0, noop_max=0, fire_reset=False, terminal_on_life_loss=False)
    ref = WarpFrame(MaxAndSkipEnv(gym.make("PongNoFrameskip-v4"), skip=4))
    np.testing.assert_array_equal(ale.reset()[0, :, :, -1], ref.reset(seed=0)[0][:, :, 0])
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(300):
        action = int(rng.integers(ale.action_space.n))
        obs, reward, *_ = ale.step(np.array([action]))
        frame, ref_reward, *_ = ref.step(action)
        assert reward[0] == ref_reward
        diffs.append(np.abs(obs[0, :, :, -1].astype(int) - frame[:, :, 0].astype(int)))
    diffs = np.stack(diffs)
    assert diffs.mean() < 0.1 and diffs.max() <= 32


def test_backend_choice_and_errors():
    pong, flavoured = resolve_task("Pong"), resolve_task("Pong-m1")
    assert atari_backend(pong, "auto") == "ale" and atari_backend(flavoured, "auto") == "gym"
    assert atari_backend(pong, "auto", in_process=False) == "gym"
    # SB3 presses FIRE after Breakout's lost lives and ale-py does not: auto keeps the gym protocol
    assert atari_backend(resolve_task("Breakout"), "auto") == "gym"
    assert atari_backend(resolve_task("Breakout"), "auto", terminal_on_life_loss=False) == "ale"
    assert atari_backend(resolve_task("Breakout"), "ale") == "ale"  # forced: the v5-like protocol
    with pytest.raises(ValueError, match="no ALE modes"):
        make_atari("Pong-m1", 1, backend="ale")
    with pytest.raises(ValueError, match="Unknown Atari backend"):
        make_atari("Pong", 1, backend="envpool")
    with pytest.raises(ValueError, match="drop subproc"):
        make_atari("Pong", 2, backend="ale", workers=2)
    assert rom_name("RoadRunner") == "road_runner" and rom_name("Pong") == "pong"


@pytest.mark.slow
def test_ppo_trains_on_it_with_the_fast_policy(tmp_path):
    from stable_baselines3 import PPO

    from zoo_rl.policies import FastCnnPolicy, algo_kwargs

    env = make_atari("Pong", 4, seed=0, backend="ale", monitor_dir=str(tmp_path))
    model = PPO(FastCnnPolicy, env, n_steps=64, batch_size=128, n_epochs=1, seed=0, device="cpu",
                **algo_kwargs(FastCnnPolicy))
    model.learn(512)
    assert model.num_timesteps == 512
