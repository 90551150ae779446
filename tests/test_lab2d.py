"""Lab2D levels in the Atari observation format: construction, actions, seeding, errors, training."""

from __future__ import annotations

import numpy as np
import pytest

from envs.lab2d import Lab2DEnv, available_levels, discrete_actions, make_lab2d


def test_shipped_levels_are_listed():
    assert {"pushbox", "running_with_scissors", "commons_harvest"} <= set(available_levels())


@pytest.mark.parametrize("level", ["pushbox", "running_with_scissors", "commons_harvest"])
def test_observations_match_atari_format(level):
    env = make_lab2d(level, n_envs=2, seed=0)
    obs = env.reset()
    assert obs.shape == (2, 84, 84, 4) and obs.dtype == np.uint8
    obs, rewards, dones, infos = env.step(np.zeros(2, dtype=int))
    assert obs.shape == (2, 84, 84, 4) and rewards.dtype == np.float32
    env.close()


def test_composite_actions_become_one_discrete_set():
    class Bounded:
        def __init__(self, lo, hi):
            self.minimum, self.maximum = lo, hi

    actions = discrete_actions({"1.move": Bounded(0, 4), "1.turn": Bounded(-1, 1), "1.fireZap": Bounded(0, 1)})
    assert actions[0] == {"1.move": 0, "1.turn": 0, "1.fireZap": 0}
    assert len(actions) == 1 + 1 + 4 + 2  # no-op, zap, 4 moves, 2 turns
    assert {"1.move": 0, "1.turn": -1, "1.fireZap": 0} in actions
    assert Lab2DEnv("running_with_scissors").action_space.n == 8


def test_same_seed_same_episode():
    def rollout(seed):
        env = Lab2DEnv("chase_eat")
        frames = [env.reset(seed=seed)[0]]
        rng = np.random.default_rng(0)
        for _ in range(20):
            frames.append(env.step(int(rng.integers(env.action_space.n)))[0])
        return np.stack(frames)

    np.testing.assert_array_equal(rollout(3), rollout(3))


def test_episodes_are_capped():
    env = Lab2DEnv("running_with_scissors", max_episode_steps=5)
    env.reset(seed=0)
    ends = [env.step(0)[3] for _ in range(5)]
    assert ends == [False] * 4 + [True]


def test_unknown_level_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="the shipped levels are: .*pushbox"):
        Lab2DEnv("labyrinth")


@pytest.mark.slow
def test_short_training_run(tmp_path):
    from stable_baselines3 import PPO

    from zoo_rl.policies import FastCnnPolicy

    env = make_lab2d("pushbox", n_envs=2, seed=0, monitor_dir=str(tmp_path))
    model = PPO(FastCnnPolicy, env, n_steps=64, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(256)
    assert model.num_timesteps >= 256
    assert list(tmp_path.glob("*.monitor.csv"))


def test_tasks_resolve_both_families():
    from envs.tasks import Lab2DTask, make_env, resolve

    task = resolve("lab2d:pushbox")
    assert task == Lab2DTask("pushbox") and task.slug == "lab2d-pushbox" and task.family == "lab2d"
    assert resolve(task.slug) == task
    assert resolve("Pong").family == "atari"
    assert not task.same_task(resolve("Pong"))
    assert make_env(task, 1, seed=0).reset().shape == (1, 84, 84, 4)
    with pytest.raises(ValueError, match="no ALE mode"):
        resolve("lab2d:pushbox", mode=1)
    with pytest.raises(ValueError, match="shipped levels"):
        resolve("lab2d:maze")


@pytest.mark.slow
def test_lab2d_source_training_and_study_plan(tmp_path):
    from zoo_rl.sources import load_source
    from zoo_rl.study import StudyConfig, plan
    from zoo_rl.zoo_training import SourceSpec, train_source

    meta = train_source(SourceSpec(game="lab2d:pushbox", steps=1024), zoo_dir=tmp_path / "zoo",
                        runs_dir=tmp_path / "runs", eval_every=1024, eval_episodes=1, checkpoint_every=512,
                        verbose=0)
    assert meta["game"] == "lab2d:pushbox" and meta["steps"] >= 1024
    assert "--game lab2d:pushbox" in meta["command"]
    source = tmp_path / "zoo" / "lab2d-pushbox"
    load_source(source)
    # a Lab2D target with a zoo mixing a Lab2D source: planned and checked before training
    jobs = plan(StudyConfig(target="lab2d:chase_eat", zoo=[str(source)], methods=["scratch", "zoo-lite"],
                            seeds=1, out=tmp_path / "study"))
    assert [j.method for j in jobs] == ["scratch", "zoo-lite"]


def test_a_level_argument_picks_a_map_and_round_trips_through_the_slug():
    from envs.tasks import resolve

    task = resolve("lab2d:commons_harvest:probabilistic_apples")
    assert task.slug == "lab2d-commons_harvest-probabilistic_apples"
    assert resolve(task.slug) == task and not task.same_task(resolve("lab2d:commons_harvest"))
    default, apples = Lab2DEnv("commons_harvest"), Lab2DEnv("commons_harvest:probabilistic_apples")
    assert not np.array_equal(default.reset(seed=0)[0], apples.reset(seed=0)[0])


def test_bad_level_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="<level>:<argument>"):
        Lab2DEnv("commons_harvest:")
    with pytest.raises(ValueError, match="failed to load"):
        Lab2DEnv("commons_harvest:no_such_map")


def test_level_settings_round_trip_through_the_name_and_slug_and_reach_the_level():
    from envs.tasks import Lab2DTask, make_env, resolve

    task = resolve("lab2d:clean_up+simulation.thresholdDepletion=1+simulation.mudSpawnProbability=0")
    # settings are kept sorted, so the order they are written in does not make another task
    assert task == resolve("lab2d:clean_up+simulation.mudSpawnProbability=0+simulation.thresholdDepletion=1")
    assert task.settings == (("simulation.mudSpawnProbability", "0"), ("simulation.thresholdDepletion", "1"))
    assert task.slug == "lab2d-clean_up+simulation.mudSpawnProbability=0+simulation.thresholdDepletion=1"
    assert resolve(task.slug) == task and resolve(task.game) == task
    assert not task.same_task(Lab2DTask("clean_up")) and task.same_task(resolve(task.slug))
    negative = resolve("lab2d:pushbox+stepCost=-0.5")  # a hyphen in a value is not a level separator
    assert resolve(negative.slug) == negative and negative.settings == (("stepCost", "-0.5"),)
    # the settings reach the Lua level: with no depletion threshold, apples grow from the start
    # (the default clean_up grows none until the river is cleaned)
    rng = np.random.default_rng(0)
    rewards = {}
    for name in ("lab2d:clean_up", task.game):
        env = make_env(resolve(name), 4, seed=0)
        env.reset()
        rewards[name] = sum(float(env.step(rng.integers(env.action_space.n, size=4))[1].sum()) for _ in range(300))
    assert rewards["lab2d:clean_up"] == 0 and rewards[task.game] > 0


def test_bad_level_settings_are_clear_errors():
    from envs.tasks import resolve

    for bad in ("lab2d:clean_up+thresholdDepletion", "lab2d:clean_up+", "lab2d:clean_up+a=1+a=2", "lab2d:clean_up+a=b c"):
        with pytest.raises(ValueError, match="Lab2D setting"):
            resolve(bad)
    with pytest.raises(ValueError, match="Invalid setting"):
        Lab2DEnv("clean_up", {"simulation.noSuchKey": "1"})


def test_lab2d_tasks_take_any_backend_and_their_resolved_one():
    from envs.tasks import env_backend, make_env, resolve

    task = resolve("lab2d:chase_eat")
    assert {env_backend(task, b) for b in ("auto", "gym", "ale", "lab2d")} == {"lab2d"}
    # what a study or the source trainer does: resolve once, then build with the resolved name
    assert make_env(task, 1, seed=0, backend=env_backend(task, "auto")).reset().shape == (1, 84, 84, 4)
    with pytest.raises(ValueError, match="Unknown environment backend"):
        env_backend(task, "envpool")


def test_a_recorded_task_is_the_task_again():
    import json
    from dataclasses import asdict

    from envs.tasks import resolve, task_from_record

    for name in ("lab2d:clean_up+simulation.thresholdDepletion=1", "lab2d:commons_harvest:probabilistic_apples"):
        task = resolve(name)
        assert task_from_record(json.loads(json.dumps(asdict(task)))) == task  # through config.json
    flavoured = resolve("Pong", mode=1)
    assert task_from_record(asdict(flavoured)) == flavoured
