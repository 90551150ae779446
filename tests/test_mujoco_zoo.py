"""The MuJoCo zoo: PPO MLP sources under VecNormalize, resumed with their statistics, exported with them folded in."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import VecNormalize

from envs.mujoco import make_mujoco
from envs.tasks import resolve
from zoo_rl.files import CHECKPOINT, VEC_NORMALIZE
from zoo_rl.policy_sources import load_policy_source, read_vec_normalize
from zoo_rl.training import (RunSpec, deterministic_eval, hyperparams_for, load_hyperparams, open_run,
                             sb3_policy_kwargs, train_run, vec_normalize_kwargs)
from zoo_rl.zoo_training import SourceSpec, collect_observations, read_manifest, train_source
from conftest import StopAt

ROOT = Path(__file__).resolve().parents[1]
MUJOCO_ZOO = ROOT / "agents" / "zoo-mujoco"
#: The `mujoco` entry of agents/hyperparams/ppo.yml, made small: short rollouts, one epoch, a narrow network.
TINY_MUJOCO = """\
mujoco:
  policy: MlpPolicy
  normalize: true
  n_envs: 1
  n_steps: 256
  batch_size: 128
  n_epochs: 1
  gamma: 0.98
  learning_rate: 3.0e-4
  policy_kwargs: {log_std_init: -2, ortho_init: false, activation_fn: relu, net_arch: {pi: [32], vf: [32]}}
"""


@pytest.fixture
def hyper(tmp_path: Path) -> Path:
    folder = tmp_path / "hyper"
    folder.mkdir()
    (folder / "ppo.yml").write_text(TINY_MUJOCO)
    return folder


def load_train_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "agents" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_mujoco_entry_is_the_rl_zoo_halfcheetah_ppo():
    params = load_hyperparams(ROOT / "agents" / "hyperparams" / "ppo.yml", "mujoco:halfcheetah+mass=2", family="mujoco")
    assert params["policy"] == "MlpPolicy" and params["normalize"] is True and params["n_envs"] == 1
    assert (params["n_steps"], params["batch_size"], params["n_epochs"], params["gamma"]) == (512, 64, 20, 0.98)
    assert params["learning_rate"] == pytest.approx(2.0633e-05) and params["vf_coef"] == pytest.approx(0.58096)
    kwargs = sb3_policy_kwargs(params["policy_kwargs"])
    assert kwargs == {"log_std_init": -2, "ortho_init": False, "activation_fn": torch.nn.ReLU,
                      "net_arch": {"pi": [256, 256], "vf": [256, 256]}}
    assert vec_normalize_kwargs(params) == {"norm_obs": True, "norm_reward": True, "gamma": 0.98}
    with pytest.raises(ValueError, match="no `mujoco` entry"):
        load_hyperparams(ROOT / "agents" / "hyperparams" / "a2c.yml", "mujoco:halfcheetah", family="mujoco")


def test_normalize_takes_the_rl_zoo_forms():
    assert vec_normalize_kwargs({}) is None and vec_normalize_kwargs({"normalize": False}) is None
    assert vec_normalize_kwargs({"normalize": {"norm_obs": False, "norm_reward": True}}) == {
        "norm_obs": False, "norm_reward": True, "gamma": 0.99}
    assert vec_normalize_kwargs({"normalize": {"norm_obs": False, "norm_reward": False}}) is None


@pytest.mark.parametrize("call, message", [
    (lambda: sb3_policy_kwargs({"activation_fn": "nn.ReLU"}), r"not one of the accepted names: .*relu \(torch.nn.ReLU\)"),
    (lambda: sb3_policy_kwargs("dict(log_std_init=-2, activation_fn=nn.ReLU)"), "must be a YAML mapping"),
    (lambda: vec_normalize_kwargs({"normalize": "yes"}), "write true"),
    (lambda: vec_normalize_kwargs({"normalize": {"norm_obs": False, "clip": 5}}), r"unknown keys \['clip'\]"),
    (lambda: vec_normalize_kwargs({"normalize": {"norm_obs": "no"}}), "norm_obs='no' must be true or false"),
    (lambda: vec_normalize_kwargs({"normalize": {"clip_obs": "10"}}), "clip_obs='10' must be a positive number"),
], ids=["activation", "policy_kwargs-as-code", "normalize-string", "normalize-key", "normalize-flag", "normalize-clip"])
def test_bad_hyperparameters_are_refused_with_what_is_accepted(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_bad_file_fails_before_any_environment_is_built(tmp_path):
    (tmp_path / "ppo.yml").write_text(TINY_MUJOCO.replace("activation_fn: relu", "activation_fn: swish"))
    with pytest.raises(ValueError, match="activation_fn 'swish'"):
        hyperparams_for(tmp_path / "ppo.yml", resolve("mujoco:halfcheetah"))


@pytest.mark.parametrize("algo, space, deterministic", [
    ("ppo", gym.spaces.Box(-1, 1, (6,)), True),
    ("a2c", gym.spaces.Box(-1, 1, (6,)), True),
    ("ppo", gym.spaces.Discrete(6), False),
    ("a2c", gym.spaces.Discrete(6), False),
    ("dqn", gym.spaces.Discrete(6), True),
    ("qrdqn", gym.spaces.Discrete(6), True),
])
def test_continuous_actions_are_evaluated_deterministically(algo, space, deterministic):
    assert deterministic_eval(algo, space) is deterministic


def test_the_manifest_lists_halfcheetah_variants():
    specs = read_manifest(MUJOCO_ZOO / "manifest.yml")
    tasks = [s.task for s in specs]
    assert len(specs) == 6 and all(t.family == "mujoco" and t.body == "halfcheetah" for t in tasks)
    assert all(s.steps == 1_000_000 and s.eval_every == 50_000 and s.eval_episodes == 10 for s in specs)
    assert resolve("mujoco:halfcheetah") in tasks and any(t.direction == "backward" for t in tasks)
    assert len({s.source_name for s in specs}) == 6 and all("+" not in s.source_name for s in specs)


def test_monitor_returns_stay_raw_under_vec_normalize(tmp_path, hyper):
    task = resolve("mujoco:halfcheetah")
    params, _, _ = hyperparams_for(hyper / "ppo.yml", task)
    envs = open_run(tmp_path, task, n_envs=1, seed=0, backend="gym", eval_episodes=1, record={},
                    normalize=vec_normalize_kwargs(params))
    env, rng, raw = envs.env, np.random.default_rng(0), 0.0
    assert isinstance(env, VecNormalize) and isinstance(envs.eval_env, VecNormalize) and not envs.eval_env.training
    env.reset()
    while True:
        _, _, dones, infos = env.step(rng.uniform(-1, 1, (1, 6)).astype(np.float32))
        raw += float(env.get_original_reward()[0])
        if dones[0]:
            break
    assert infos[0]["episode"]["r"] == pytest.approx(raw, rel=1e-5)
    envs.close()


def test_a_killed_run_resumes_with_the_statistics_of_its_checkpoint(tmp_path, hyper):
    task = resolve("mujoco:halfcheetah")
    params, n_envs, policy = hyperparams_for(hyper / "ppo.yml", task)
    normalize = vec_normalize_kwargs(params)
    spec = RunSpec(run_dir=tmp_path, algo="ppo", total_steps=1024, hyperparams=params, policy=policy,
                   checkpoint_every=256, device="cpu")

    def opened():
        return open_run(tmp_path, task, n_envs=n_envs, seed=0, backend="gym", eval_episodes=1, record={},
                        normalize=normalize)

    with pytest.raises(ValueError, match="has no VecNormalize"):  # the hyperparameters ask for it
        train_run(spec, make_mujoco(task, 1))
    envs = opened()
    with pytest.raises(KeyboardInterrupt):
        train_run(spec, envs.env, callbacks=[StopAt(600)])
    killed_stats = envs.env.obs_rms.count  # in memory, past the checkpoint
    envs.close()
    assert json.loads((tmp_path / "status.json").read_text())["num_timesteps"] == 512
    checkpoint_stats = read_vec_normalize(tmp_path / VEC_NORMALIZE)
    resumed = opened()
    saved_mean, saved_count = resumed.env.obs_rms.mean.copy(), float(resumed.env.obs_rms.count)
    assert resumed.resumed and 512 < saved_count < killed_stats  # the checkpoint's statistics, not fresh ones
    np.testing.assert_array_equal(saved_mean, checkpoint_stats.obs_mean)
    model, _ = train_run(spec, resumed.env)
    assert model.num_timesteps == 1024 and model.get_vec_normalize_env() is resumed.env
    assert resumed.env.obs_rms.count > saved_count + 512  # the saved statistics went on counting
    again = VecNormalize.load(str(tmp_path / VEC_NORMALIZE), make_mujoco(task, 1))
    np.testing.assert_array_equal(again.obs_rms.mean, resumed.env.obs_rms.mean)  # saved with the last checkpoint
    resumed.close()
    with pytest.raises(ValueError, match="no normalisation"):
        open_run(tmp_path, task, n_envs=1, seed=0, backend="gym", eval_episodes=1, record={})
    (tmp_path / VEC_NORMALIZE).unlink()
    with pytest.raises(ValueError, match="no VecNormalize statistics"):
        opened()


def test_park_and_unpark_carry_the_statistics(tmp_path):
    train = load_train_script()
    spec = SourceSpec(game="mujoco:halfcheetah", name="halfcheetah")
    runs, parked = tmp_path / "runs", tmp_path / "zoo" / "_inprogress"
    run = runs / "halfcheetah"
    run.mkdir(parents=True)
    with zipfile.ZipFile(run / CHECKPOINT, "w") as archive:
        archive.writestr("policy.pth", b"weights")
    (run / VEC_NORMALIZE).write_bytes(b"statistics")
    train.park(runs, parked, tmp_path / "zoo", [spec])
    assert (parked / "halfcheetah" / VEC_NORMALIZE).read_bytes() == b"statistics"
    train.unpark(tmp_path / "fresh", parked, spec)
    assert (tmp_path / "fresh" / "halfcheetah" / VEC_NORMALIZE).read_bytes() == b"statistics"


def test_the_export_holds_the_whole_policy_reading_raw_observations(tmp_path, hyper):
    spec = SourceSpec(game="mujoco:halfcheetah+mass=2", steps=1024, eval_every=1024, eval_episodes=1,
                      name="halfcheetah-mass2")
    zoo, runs = tmp_path / "zoo", tmp_path / "runs"
    meta = train_source(spec, zoo_dir=zoo, runs_dir=runs, hyperparams_dir=hyper, checkpoint_every=512, device="cpu",
                        verbose=0)
    assert meta["steps"] == 1024 and meta["eval_deterministic"] and meta["dtype"] == "float32"
    assert meta["action_space"] == {"type": "Box", "shape": [6], "low": [-1.0] * 6, "high": [1.0] * 6}
    assert "n_actions" not in meta and meta["architecture"] == {"net_arch": {"pi": [32], "vf": [32]},
                                                                 "activation": "relu"}
    assert meta["vec_normalize_folded"] and len(meta["vec_normalize"]["obs_mean"]) == 17
    assert meta["normalize"] == {"norm_obs": True, "norm_reward": True, "gamma": 0.98}
    assert meta["fold_max_action_diff"] < 1e-3 and meta["fold_check_observations"] > 256

    # the trained model on normalised observations, the exported source in a plain MlpPolicy on raw ones
    task = spec.task
    stats = VecNormalize.load(str(runs / spec.source_name / VEC_NORMALIZE), make_mujoco(task, 1))
    model = PPO.load(runs / spec.source_name / CHECKPOINT, device="cpu")
    source = load_policy_source(zoo / spec.source_name)
    plain = ActorCriticPolicy(model.observation_space, model.action_space, lambda _: 0.0,
                              **sb3_policy_kwargs({"activation_fn": "relu", "net_arch": {"pi": [32], "vf": [32]}}))
    plain.load_state_dict(source.state)
    raw = collect_observations(make_mujoco(task, 4, seed=7), 256)
    inside = np.all(np.abs((raw - stats.obs_rms.mean) / np.sqrt(stats.obs_rms.var + stats.epsilon)) < stats.clip_obs, 1)
    assert inside.sum() > 128
    expected, _ = model.predict(stats.normalize_obs(raw)[inside], deterministic=True)
    actions, _ = plain.predict(raw[inside], deterministic=True)
    np.testing.assert_allclose(actions, expected, atol=1e-4)
    with torch.no_grad():
        values = plain.predict_values(torch.as_tensor(raw[inside], dtype=torch.float32)).numpy()
        scaled = model.policy.predict_values(torch.as_tensor(stats.normalize_obs(raw)[inside], dtype=torch.float32))
    np.testing.assert_allclose(values, scaled.numpy() * np.sqrt(stats.ret_rms.var + stats.epsilon), rtol=1e-3, atol=1e-3)
