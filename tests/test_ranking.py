"""Source ranking: action mapping by meaning, the probe's arithmetic, a ranking on real Atari, and whole-policy
sources on a MuJoCo target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

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


# Whole-policy sources on a MuJoCo target: PPO MlpPolicies (ReLU, as the MuJoCo zoo's) built on the target's
# body, untrained, with actors set by hand so that their play differs measurably: "rest" always takes the zero
# action (no control cost: clearly better than random flailing), "bound" pushes every joint to its bound (the
# most control cost), "wild" is an untrained actor scaled up (it acts, and its means leave the bounds).
MUJOCO_TARGET = "mujoco:halfcheetah+mass=1.25"
MUJOCO_STEPS, MUJOCO_ENVS = 2048, 4


def mujoco_source(folder, name, seed, env):
    from stable_baselines3 import PPO
    from torch import nn

    from zoo_rl.sources import write_compact

    model = PPO("MlpPolicy", env, policy_kwargs=dict(net_arch=dict(pi=[16, 16], vf=[16]), activation_fn=nn.ReLU),
                seed=seed, n_steps=64, batch_size=64, device="cpu")
    with torch.no_grad():
        action_net = model.policy.action_net
        if name == "rest":
            action_net.weight.zero_(), action_net.bias.zero_()
        elif name == "bound":
            action_net.weight.zero_(), action_net.bias.fill_(5.0)
        else:
            action_net.weight.mul_(300.0)
    write_compact(folder / name, {}, model.policy.state_dict(),
                  {"name": name, "game": "mujoco:halfcheetah", "architecture": {"net_arch": model.policy.net_arch,
                                                                                 "activation": "relu"}})
    model.save(folder / f"{name}.zip")
    return str(folder / name)


@pytest.fixture(scope="module")
def mujoco_zoo(tmp_path_factory):
    from envs.tasks import make_env, resolve

    root = tmp_path_factory.mktemp("mujoco-zoo")
    env = make_env(resolve(MUJOCO_TARGET), 1, seed=0)
    try:
        return [mujoco_source(root, name, seed, env) for seed, name in enumerate(("wild", "bound", "rest"))]
    finally:
        env.close()


@pytest.fixture(scope="module")
def mujoco_ranking(mujoco_zoo):
    return rank_sources(MUJOCO_TARGET, mujoco_zoo, steps=MUJOCO_STEPS, n_envs=MUJOCO_ENVS)



def test_whole_policy_sources_rank_by_zero_shot_play_then_probe(mujoco_ranking):
    table = mujoco_ranking
    assert list(table.columns) == RANKING_COLUMNS and sorted(table["rank"]) == [1, 2, 3]
    by_source = table.set_index("source")
    assert table.loc[0, "source"] == "rest" and by_source.loc["rest", "basis"] == "zero-shot"
    assert by_source.loc["rest", "zero_shot_z"] >= 2 and by_source.loc["bound", "zero_shot_z"] <= -2
    assert (by_source["basis"].drop("rest") == "probe").all()
    assert (by_source["shared_actions"] == 6).all() and (by_source["agent_steps"] == MUJOCO_STEPS).all()
    # 512 steps per environment: no 1000-step episode ends, so the rate per step is the score
    assert (by_source["zero_shot_episodes"] == 0).all() and by_source["zero_shot_return"].isna().all()
    assert np.isfinite(table["probe_r2"]).all() and np.isfinite(table["zero_shot_rate"]).all()
    assert table["random_rate"].nunique() == 1 and table["random_rate"].iloc[0] < -0.1  # flailing costs control


def test_whole_policy_zero_shot_rate_is_the_deterministic_play_of_the_source(mujoco_zoo, mujoco_ranking):
    """The rate equals a hand rollout of the same source by SB3's own policy, ``predict(deterministic=True)`` (the
    mean, clipped to the action bounds), on the same seeded environments, in raw (unclipped) rewards."""
    from stable_baselines3 import PPO

    from envs.tasks import make_env, resolve

    model = PPO.load(mujoco_zoo[0] + ".zip", device="cpu")  # "wild"
    env = make_env(resolve(MUJOCO_TARGET), MUJOCO_ENVS, seed=0)
    obs, rewards, clipped = env.reset(), [], False
    for _ in range(MUJOCO_STEPS // MUJOCO_ENVS):
        actions, _ = model.predict(obs, deterministic=True)
        with torch.no_grad():
            mean = model.policy.get_distribution(torch.as_tensor(obs).float()).distribution.mean.numpy()
        clipped |= bool((np.abs(mean) > 1).any())
        obs, reward, _, _ = env.step(actions)
        rewards.append(reward)
    env.close()
    rewards = np.array(rewards)
    assert clipped and not np.allclose(rewards, np.sign(rewards))  # bounds reached; raw rewards
    row = mujoco_ranking.set_index("source").loc["wild"]
    per_env = rewards.mean(axis=0)
    assert row["zero_shot_rate"] == pytest.approx(per_env.mean(), rel=1e-6)
    assert row["zero_shot_se"] == pytest.approx(per_env.std(ddof=1) / np.sqrt(MUJOCO_ENVS), rel=1e-5)


def test_whole_policy_ranking_resumes_from_scored_rows(mujoco_zoo, mujoco_ranking):
    from zoo_rl.ranking import SCORE_COLUMNS

    full = mujoco_ranking
    kept = full[full["source"] == "rest"][SCORE_COLUMNS]
    scored, played = [], set()
    again = rank_sources(MUJOCO_TARGET, mujoco_zoo, steps=MUJOCO_STEPS, n_envs=MUJOCO_ENVS, scored=kept,
                         on_scored=scored.append, on_play=lambda name, done, steps: played.add(name))
    assert sorted(r["source"] for r in scored) == ["bound", "wild"] and "rest" not in played
    columns = [c for c in RANKING_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(again[columns], full[columns])
    played.clear()
    rank_sources(MUJOCO_TARGET, mujoco_zoo, steps=MUJOCO_STEPS, n_envs=MUJOCO_ENVS, scored=full[SCORE_COLUMNS],
                 on_play=lambda name, done, steps: played.add(name))
    assert not played  # every source kept: nothing is played, not even the random policy


def test_whole_policy_sources_of_other_spaces_or_algorithms_are_refused(mujoco_zoo, tmp_path):
    from stable_baselines3 import PPO, SAC

    PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), device="cpu").save(tmp_path / "pendulum.zip")
    SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), device="cpu").save(tmp_path / "sac.zip")
    played = []
    with pytest.raises(ValueError) as info:
        rank_sources(MUJOCO_TARGET, [mujoco_zoo[0], str(tmp_path / "pendulum.zip")], steps=64, n_envs=2,
                     on_play=lambda *args: played.append(args))
    message = str(info.value)
    assert "Source 'pendulum'" in message and "does not fit this target's ranking" in message
    assert "mlp_extractor.policy_net.0.weight: (8, 3) reads 3 values" in message and "flattened, give 17" in message
    assert "action_net.weight: (1, 8) gives 1 values per action" in message and "need 6" in message
    assert "another body" in message and not played  # refused before anything plays
    with pytest.raises(ValueError, match=r"Source 'sac' .* is a SAC policy: the whole-policy ranking scores "
                                         r"actor-critic sources"):
        rank_sources(MUJOCO_TARGET, [str(tmp_path / "sac.zip")], steps=64, n_envs=2)
